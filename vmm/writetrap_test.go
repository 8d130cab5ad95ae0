package vmm

import (
	"bytes"
	"slices"
	"sync"
	"testing"
)

func TestTrapPages(t *testing.T) {
	got := trapPages([]writeTrap{
		{start: 0x1000, end: 0x1008},   // one page
		{start: 0x1ff8, end: 0x2008},   // across 0x2000: pages 1 and 2, merged
		{start: 0x5000, end: 0x6000},   // exactly page 5
		{start: 0x5800, end: 0x5801},   // inside page 5
		{start: 0x7fff, end: 0x9001},   // pages 7..9
		{start: 0xa000, end: 0xa001},   // adjacent to 9: merged
		{start: 0x20000, end: 0x20001}, // alone
	})
	want := []pageRange{{0x1000, 0x3000}, {0x5000, 0x6000}, {0x7000, 0xb000}, {0x20000, 0x21000}}
	if !slices.Equal(got, want) {
		t.Fatalf("trapPages = %#x, want %#x", got, want)
	}
	s := &trapSet{traps: []writeTrap{{id: 1, start: 0x1004, end: 0x1008}, {id: 2, start: 0x1010, end: 0x1011}}}
	for _, c := range []struct {
		gpa  uint64
		n    int
		id   TrapID
		want bool
	}{
		{0x1000, 4, 0, false}, // just below
		{0x1000, 5, 1, true},  // last byte touches
		{0x1007, 8, 1, true},
		{0x1008, 8, 0, false}, // between the two
		{0x1009, 8, 2, true},
		{0x1011, 1, 0, false},
	} {
		id, ok := s.hit(c.gpa, c.n)
		if ok != c.want || id != c.id {
			t.Errorf("hit(%#x, %d) = %d %v, want %d %v", c.gpa, c.n, id, ok, c.id, c.want)
		}
	}
	if _, ok := (*trapSet)(nil).hit(0, 8); ok {
		t.Error("a nil set hit")
	}
}

func TestMemslotLayoutTraps(t *testing.T) {
	const size = 64 << 20
	text := &dirtyRange{start: 0x1000000, end: 0x1e00000}
	cases := []struct {
		name string
		w    *dirtyRange
		ro   []pageRange
		want []memslot
	}{
		{"no traps is memslotLayout", text, nil, memslotLayout(size, text)},
		{"one trap, no watch", nil, []pageRange{{0x2000000, 0x2001000}}, []memslot{
			{id: 0, gpa: 0, size: 0x2000000},
			{id: 2, gpa: 0x2000000, size: 0x1000, flags: memReadonly},
			{id: 3, gpa: 0x2001000, size: size - 0x2001000},
		}},
		{"traps below and above the watch", text, []pageRange{{0, 0x1000}, {0x1e00000, 0x1e02000}, {size - 0x1000, size}}, []memslot{
			{id: 0, gpa: 0, size: 0x1000, flags: memReadonly},
			{id: 2, gpa: 0x1000, size: 0x1000000 - 0x1000},
			{id: slotWatched, gpa: 0x1000000, size: 0xe00000, flags: memLogDirtyPages},
			{id: 3, gpa: 0x1e00000, size: 0x2000, flags: memReadonly},
			{id: 4, gpa: 0x1e02000, size: size - 0x1000 - 0x1e02000},
			{id: 5, gpa: size - 0x1000, size: 0x1000, flags: memReadonly},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := memslotLayoutTraps(size, c.w, c.ro)
			if !slices.Equal(got, c.want) {
				t.Fatalf("memslotLayoutTraps =\n%+v, want\n%+v", got, c.want)
			}
			checkTiling(t, got, size, func(s memslot) {
				ro := slices.ContainsFunc(c.ro, func(r pageRange) bool { return r.start == s.gpa && r.end == s.gpa+s.size })
				if ro != (s.flags&memReadonly != 0) {
					t.Errorf("slot %+v: read-only flag wrong", s)
				}
			})
		})
	}
}

// TestCompleteWriteSynthetic: the VMM completes a store exit into RAM
// and reports it only when it touches trapped bytes; a store outside RAM
// is left to the MMIO path.
func TestCompleteWriteSynthetic(t *testing.T) {
	ram := make([]byte, 0x4000)
	ram[0x1100] = 0x11
	mem := NewMemoryFromBytes(ram)
	h := newTestHandler(nil, mem, nil)
	h.writes.set.Store(&trapSet{traps: []writeTrap{{id: 7, start: 0x1100, end: 0x1104}}})
	rec := &recordWrites{}
	h.writes.hook.Store(&writeHookBox{rec})
	c := &fakeCPU{regs: Regs{RIP: 0xffffffff81234567}}
	mmio := func(gpa uint64, data ...byte) exitInfo {
		e := exitInfo{reason: exitMMIO, mmio: mmioExit{PhysAddr: gpa, Len: uint32(len(data)), IsWrite: 1}}
		copy(e.mmio.Data[:], data)
		return e
	}
	for _, e := range []exitInfo{mmio(0x10fe, 1, 2, 3, 4), mmio(0x1200, 9), mmio(0x9000, 5)} {
		if _, err := h.handle(c, &e); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(ram[0x10fe:0x1102], []byte{1, 2, 3, 4}) || ram[0x1200] != 9 {
		t.Fatalf("stores not completed: % x, %#x", ram[0x10fe:0x1102], ram[0x1200])
	}
	want := WriteEvent{Trap: 7, RIP: 0xffffffff81234567, GPA: 0x10fe, Size: 4, Old: [8]byte{0, 0, 0x11}, New: [8]byte{1, 2, 3, 4}}
	if len(rec.evs) != 1 || rec.evs[0] != want {
		t.Fatalf("events %+v, want [%+v]", rec.evs, want)
	}
	if ex, ev := h.writes.exits.Load(), h.writes.events.Load(); ex != 2 || ev != 1 {
		t.Errorf("exits %d events %d, want 2 and 1 (the store outside RAM is not one)", ex, ev)
	}
}

// recordWrites is a WriteHook that keeps every event.
type recordWrites struct {
	mu  sync.Mutex
	evs []WriteEvent
}

func (r *recordWrites) HandleWrite(_ CPU, ev WriteEvent) {
	r.mu.Lock()
	r.evs = append(r.evs, ev)
	r.mu.Unlock()
}

func (r *recordWrites) take() []WriteEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.evs
	r.evs = nil
	return e
}
