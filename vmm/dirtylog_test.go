package vmm

import (
	"errors"
	"slices"
	"testing"
)

func TestDirtyGPAs(t *testing.T) {
	const base = 0x1000000
	cases := []struct {
		name   string
		bitmap []uint64
		pages  uint64
		want   []uint64
	}{
		{"nothing dirty", []uint64{0, 0}, 128, nil},
		{"first page", []uint64{1}, 64, []uint64{base}},
		{"bit 63 is page 63", []uint64{1 << 63}, 64, []uint64{base + 63*pageSize}},
		{"word 1 bit 0 is page 64", []uint64{0, 1}, 128, []uint64{base + 64*pageSize}},
		{"several, ascending", []uint64{0b1010_0001, 1 << 2}, 100,
			[]uint64{base, base + 5*pageSize, base + 7*pageSize, base + 66*pageSize}},
		{"a whole word", []uint64{^uint64(0)}, 64, func() []uint64 {
			var w []uint64
			for i := range uint64(64) {
				w = append(w, base+i*pageSize)
			}
			return w
		}()},
		// The bitmap is rounded up to 64 pages; bits past the slot are not pages.
		{"bits past the last page ignored", []uint64{1<<2 | 1<<3 | 1<<40}, 3, []uint64{base + 2*pageSize}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := dirtyGPAs(c.bitmap, base, c.pages)
			if !slices.Equal(got, c.want) {
				t.Errorf("dirtyGPAs(%#x) = %#x, want %#x", c.bitmap, got, c.want)
			}
		})
	}
}

func TestBitmapWords(t *testing.T) {
	for _, c := range []struct {
		pages uint64
		want  int
	}{{0, 0}, {1, 1}, {63, 1}, {64, 1}, {65, 2}, {4096, 64}, {4097, 65}} {
		if got := bitmapWords(c.pages); got != c.want {
			t.Errorf("bitmapWords(%d) = %d, want %d", c.pages, got, c.want)
		}
	}
}

func TestMemslotLayout(t *testing.T) {
	const size = 512 << 20
	cases := []struct {
		name       string
		start, end uint64 // both 0: no watch
		want       []memslot
	}{
		{"no watch: one slot", 0, 0, []memslot{{id: slotLow, gpa: 0, size: size}}},
		{"kernel text in the middle", 0x1000000, 0x1e00000, []memslot{
			{id: slotLow, gpa: 0, size: 0x1000000},
			{id: slotWatched, gpa: 0x1000000, size: 0xe00000, flags: memLogDirtyPages},
			{id: slotHigh, gpa: 0x1e00000, size: size - 0x1e00000},
		}},
		{"from page 0", 0, 0x2000, []memslot{
			{id: slotWatched, gpa: 0, size: 0x2000, flags: memLogDirtyPages},
			{id: slotHigh, gpa: 0x2000, size: size - 0x2000},
		}},
		{"to the top of RAM", size - 0x1000, size, []memslot{
			{id: slotLow, gpa: 0, size: size - 0x1000},
			{id: slotWatched, gpa: size - 0x1000, size: 0x1000, flags: memLogDirtyPages},
		}},
		{"all of RAM", 0, size, []memslot{
			{id: slotWatched, gpa: 0, size: size, flags: memLogDirtyPages},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var w *dirtyRange
			if c.end != 0 {
				w = &dirtyRange{start: c.start, end: c.end}
			}
			got := memslotLayout(size, w)
			if !slices.Equal(got, c.want) {
				t.Fatalf("memslotLayout = %+v, want %+v", got, c.want)
			}
			checkTiling(t, got, size, func(memslot) {})
		})
	}
}

// checkTiling checks what holds for every layout: the slots tile RAM
// exactly, with distinct ids, and only the watched one logs; each slot
// is also given to more.
func checkTiling(t *testing.T, got []memslot, size uint64, more func(memslot)) {
	t.Helper()
	var next uint64
	ids := map[uint32]bool{}
	for _, s := range got {
		if s.gpa != next || s.size == 0 || ids[s.id] {
			t.Errorf("slot %+v: gap, overlap, empty or duplicate id", s)
		}
		ids[s.id] = true
		next = s.gpa + s.size
		if logs := s.flags&memLogDirtyPages != 0; logs != (s.id == slotWatched) {
			t.Errorf("slot %+v: dirty logging on the wrong slot", s)
		}
		more(s)
	}
	if next != size {
		t.Errorf("slots end at %#x, RAM at %#x", next, size)
	}
}

func TestCheckWatchRange(t *testing.T) {
	const size = 64 << 20
	cases := []struct {
		start, end uint64
		want       error
	}{
		{0x100000, 0x200000, nil},
		{0, size, nil},
		{0x100800, 0x200000, ErrBadConfig},
		{0x100000, 0x200001, ErrBadConfig},
		{0x200000, 0x200000, ErrBadConfig},
		{0x200000, 0x100000, ErrBadConfig},
		{0x100000, size + pageSize, ErrOutOfRange},
	}
	for _, c := range cases {
		err := checkDirtyRange(c.start, c.end, size)
		if (c.want == nil) != (err == nil) || (c.want != nil && !errors.Is(err, c.want)) {
			t.Errorf("checkDirtyRange(%#x, %#x) = %v, want %v", c.start, c.end, err, c.want)
		}
	}
}

// LogDirty refuses before touching KVM: these need no /dev/kvm.
func TestDirtyLogRefusals(t *testing.T) {
	newVM := func() *VM { return &VM{vmFD: -1, mem: NewMemoryFromBytes(make([]byte, 1<<20))} }

	vm := newVM()
	if _, err := vm.DirtyPages(); !errors.Is(err, ErrNotWatching) {
		t.Errorf("DirtyPages without a watch: %v, want ErrNotWatching", err)
	}
	if err := vm.LogDirty(0x1000, 0x1800); !errors.Is(err, ErrBadConfig) {
		t.Errorf("unaligned range: %v, want ErrBadConfig", err)
	}
	if err := vm.LogDirty(0x1000, 2<<20); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("range beyond RAM: %v, want ErrOutOfRange", err)
	}

	vm = newVM()
	vm.watch = &dirtyRange{start: 0x1000, end: 0x2000}
	if err := vm.LogDirty(0x4000, 0x5000); !errors.Is(err, ErrDirtyLogRefused) {
		t.Errorf("second LogDirty: %v, want ErrDirtyLogRefused", err)
	}

	vm = newVM()
	vm.ran.Store(true)
	if err := vm.LogDirty(0x4000, 0x5000); !errors.Is(err, ErrDirtyLogRefused) {
		t.Errorf("LogDirty after Run: %v, want ErrDirtyLogRefused", err)
	}
}
