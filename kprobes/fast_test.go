package kprobes

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"strings"
	"testing"

	"golang.org/x/arch/x86/x86asm"

	"github.com/hvprobe/hvprobe/stub"
)

// WithAllPaused makes the fake VM a Pauser: its one vCPU runs only when
// the test steps it, so f runs as if every vCPU were paused.
func (v *fakeVM) WithAllPaused(f func() error) error {
	v.pauses++
	return f()
}

// WithAllPausedAt makes it a PauserAt, its vCPUs at v.rips.
func (v *fakeVM) WithAllPausedAt(f func([]uint64) error) error {
	v.pauses++
	return f(v.rips)
}

func enableFast(t *testing.T, e *env) stub.Layout {
	t.Helper()
	err := e.m.EnableFast(FastConfig{Records: 2, Probes: 4, CPUNumberOff: 0x10, CurrentOff: 0x20,
		DirectMap: func(gpa uint64) (uint64, error) { return slotAVA + gpa - slotAGPA, nil }})
	if err != nil {
		t.Fatal(err)
	}
	l, ok := e.m.FastLayout()
	if !ok {
		t.Fatal("FastLayout: not enabled")
	}
	return l
}

func (e *env) textAt(va uint64, n int) []byte {
	return bytes.Clone(e.mem.b[textGPA+va-textVA:][:n])
}

func TestFastRegister(t *testing.T) {
	e := newEnv(t)
	l := enableFast(t, e)
	add := []byte{0x48, 0x05, 0x78, 0x56, 0x34, 0x12} // add $0x12345678,%rax
	fn := e.fn("fastfn", append(append([]byte{0x55}, add...), 0x5d, 0xc3)...)
	before := e.textAt(fn, 9)

	p := &FastProbe{Symbol: "fastfn", Offset: 1}
	if err := e.m.RegisterFast(p); err != nil {
		t.Fatal(err)
	}
	if p.Addr != fn+1 || p.Insn() == "" {
		t.Fatalf("registered at %#x (%q), want %#x", p.Addr, p.Insn(), fn+1)
	}
	got := e.textAt(fn+1, 6)
	if got[0] != 0xe9 || got[5] != opInt3 {
		t.Fatalf("patched bytes % x: want jmp rel32 and one int3", got)
	}
	tgt := fn + 1 + 5 + uint64(int32(binary.LittleEndian.Uint32(got[1:])))
	if tgt < slotAVA || tgt >= slotAVA+slotASize {
		t.Fatalf("jmp goes to %#x, outside the slot area", tgt)
	}
	if e.vm.pauses != 1 {
		t.Fatalf("%d pauses to patch, want 1", e.vm.pauses)
	}
	// The engine's own view of the text is the guest's.
	if b, err := e.m.readText(fn, 9); err != nil || !bytes.Equal(b, before) {
		t.Fatalf("readText = % x, %v; want % x", b, err, before)
	}
	if err := e.m.Quiescent(); !errors.Is(err, ErrBusy) {
		t.Fatalf("Quiescent with an exit-less probe = %v, want ErrBusy", err)
	}

	// Conflicts are refused and change nothing.
	for _, c := range []struct {
		name string
		reg  func() error
		want error
	}{
		{"int3 at the same address", func() error { return e.m.Register(&Kprobe{Addr: fn + 1}) }, ErrBadProbe},
		{"int3 inside the jmp", func() error { return e.m.Register(&Kprobe{Addr: fn + 3}) }, ErrBadProbe},
		{"second exit-less probe", func() error { return e.m.RegisterFast(&FastProbe{Addr: fn + 1}) }, ErrNotFast},
		{"same probe again", func() error { return e.m.RegisterFast(p) }, ErrAlreadyRegistered},
		{"one-byte instruction", func() error { return e.m.RegisterFast(&FastProbe{Addr: fn}) }, ErrNotFast},
		{"mid-instruction", func() error { return e.m.RegisterFast(&FastProbe{Addr: fn + 2}) }, ErrNotBoundary},
	} {
		if err := c.reg(); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	if !bytes.Equal(e.textAt(fn+1, 6), got) {
		t.Fatal("a refused registration changed the text")
	}

	// A record as the stub writes it reaches the probe.
	rec := make([]byte, l.RecordSize())
	binary.LittleEndian.PutUint32(rec[stub.RecProbeOff:], 0)
	binary.LittleEndian.PutUint64(rec[stub.RecFrameOff+8*14:], 0xabcd) // rax
	ring := l.RingGPA(0)
	copy(e.mem.b[ring+stub.HeaderSize:], rec)
	binary.LittleEndian.PutUint64(e.mem.b[ring+stub.HeadOff:], 1)
	binary.LittleEndian.PutUint64(e.mem.b[l.LostGPA(0):], 7)
	var seen []uint64
	d, err := e.m.DrainFast(func(q *FastProbe, r stub.Record) {
		if q != p {
			t.Errorf("record for %v, want %v", q, p)
		}
		seen = append(seen, r.Regs.RAX)
	})
	if err != nil || d.Records != 1 || len(seen) != 1 || seen[0] != 0xabcd || p.Hits() != 1 || p.Lost() != 7 {
		t.Fatalf("drain %+v, %v: rax %x, hits %d lost %d", d, err, seen, p.Hits(), p.Lost())
	}

	if err := e.m.UnregisterFast(p); err != nil {
		t.Fatal(err)
	}
	if after := e.textAt(fn, 9); !bytes.Equal(after, before) {
		t.Fatalf("after removal % x, want % x", after, before)
	}
	if err := e.m.UnregisterFast(p); !errors.Is(err, ErrNotRegistered) {
		t.Fatalf("second UnregisterFast = %v", err)
	}
	if err := e.m.Quiescent(); err != nil {
		t.Fatal(err)
	}
	// The address takes an int3 probe again.
	k := &Kprobe{Addr: fn + 1}
	if err := e.m.Register(k); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Unregister(k); err != nil {
		t.Fatal(err)
	}
}

// A guest that rewrites the jmp retires the probe, and its bytes stay.
func TestFastGuestRewrite(t *testing.T) {
	e := newEnv(t)
	enableFast(t, e)
	fn := e.fn("fastfn2", 0x48, 0x05, 0x01, 0x00, 0x00, 0x00, 0xc3)
	p := &FastProbe{Addr: fn}
	if err := e.m.RegisterFast(p); err != nil {
		t.Fatal(err)
	}
	guest := []byte{0x0f, 0x1f, 0x44, 0x00, 0x00, 0x90}
	copy(e.mem.b[textGPA+fn-textVA:], guest)
	ch := e.m.Recheck([]uint64{textGPA + fn - textVA})
	if len(ch) != 1 || ch[0].Rearmed || !errors.Is(ch[0].Err, ErrTextModified) || ch[0].Owners[0] != p {
		t.Fatalf("Recheck = %+v", ch)
	}
	if err := e.m.UnregisterFast(p); !errors.Is(err, ErrNotRegistered) {
		t.Fatalf("UnregisterFast after retirement = %v", err)
	}
	if !bytes.Equal(e.textAt(fn, 6), guest) {
		t.Fatal("the guest's bytes were not left alone")
	}
}

// Without EnableFast, and for an instruction that cannot move, the
// probe is refused with ErrNotFast: the caller falls back to int3.
func TestFastRefused(t *testing.T) {
	e := newEnv(t)
	fn := e.fn("fastfn3", 0x48, 0x8b, 0x05, 0x00, 0x10, 0x00, 0x00, 0xc3) // mov 0x1000(%rip),%rax
	if err := e.m.RegisterFast(&FastProbe{Addr: fn}); !errors.Is(err, ErrNotFast) {
		t.Fatalf("before EnableFast: %v", err)
	}
	enableFast(t, e)
	if err := e.m.RegisterFast(&FastProbe{Addr: fn}); !errors.Is(err, ErrNotFast) {
		t.Fatalf("rip-relative: %v", err)
	}
	if e.vm.pauses != 0 {
		t.Fatal("a refused probe paused the guest")
	}
}

// TestFastCapturesNeedRoom: a probe whose captures do not fit the
// records (here FastConfig.Data is 0) is refused as not exit-less, text
// untouched.
func TestFastCapturesNeedRoom(t *testing.T) {
	e := newEnv(t)
	enableFast(t, e)
	fn := e.fn("capfn", 0x48, 0x05, 0x78, 0x56, 0x34, 0x12, 0xc3) // add $0x12345678,%rax; ret
	before := e.textAt(fn, 7)
	p := &FastProbe{Addr: fn, Captures: []stub.Capture{{Reg: x86asm.RDI, Size: 8}}}
	if err := e.m.RegisterFast(p); !errors.Is(err, ErrNotFast) || !strings.Contains(err.Error(), "a record holds 0") {
		t.Fatalf("RegisterFast = %v, want ErrNotFast for the captures", err)
	}
	if !bytes.Equal(e.textAt(fn, 7), before) || e.vm.pauses != 0 {
		t.Fatal("a refused registration changed the text or paused the guest")
	}
}

// TestFastReturnRegister: a return probe's jmp goes on the function's
// first 5-byte instruction after its frame setup; a function without
// one, or an offset, is refused, text untouched.
func TestFastReturnRegister(t *testing.T) {
	e := newEnv(t)
	err := e.m.EnableFast(FastConfig{Records: 2, Probes: 4, CPUNumberOff: 0x10, CurrentOff: 0x20,
		DirectMap: func(gpa uint64) (uint64, error) { return slotAVA + gpa - slotAGPA, nil }, Data: stub.RetDataSize})
	if err != nil {
		t.Fatal(err)
	}
	nop := []byte{0x0f, 0x1f, 0x44, 0x00, 0x00}
	fn := e.fn("retfn", append(append([]byte{0x55, 0x48, 0x89, 0xe5}, nop...), 0x5d, 0xc3)...)
	short := e.fn("shortfn", 0x55, 0x48, 0x89, 0xe5, 0x5d, 0xc3, 0x90, 0x90, 0x90)
	before := e.textAt(short, 9)
	for _, c := range []struct {
		name string
		p    *FastProbe
		want error
	}{
		{"no 5-byte instruction", &FastProbe{Symbol: "shortfn", Return: true}, ErrNotFast},
		{"an offset", &FastProbe{Symbol: "retfn", Offset: 4, Return: true}, ErrBadProbe},
	} {
		if err := e.m.RegisterFast(c.p); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	if !bytes.Equal(e.textAt(short, 9), before) {
		t.Fatal("a refused registration changed the text")
	}
	p := &FastProbe{Symbol: "retfn", Return: true, MaxActive: 3}
	if err := e.m.RegisterFast(p); err != nil {
		t.Fatal(err)
	}
	if got := e.textAt(fn+4, 5); p.Addr != fn || got[0] != 0xe9 || !bytes.Equal(e.textAt(fn, 4), []byte{0x55, 0x48, 0x89, 0xe5}) {
		t.Fatalf("registered at %#x, bytes % x at +4; want the function %#x, a jmp after its frame setup", p.Addr, got, fn)
	}
	if err := e.m.UnregisterFast(p); err != nil || !bytes.Equal(e.textAt(fn+4, 5), nop) {
		t.Fatalf("unregistering: %v; bytes % x", err, e.textAt(fn+4, 5))
	}
}

// TestAllocPages: data the guest writes gets whole pages of its own,
// away from code in the slots before and after it.
func TestAllocPages(t *testing.T) {
	a := newSlotAlloc(SlotArea{VA: slotAVA, GPA: slotAGPA, Size: 4 * pageSize})
	if _, ok := a.allocRun(3); !ok { // code
		t.Fatal("allocRun")
	}
	first, ok := a.allocPages(100)
	if !ok || a.gpa(first)%pageSize != 0 || a.gpa(first) != slotAGPA+pageSize || a.next*slotSize != 2*pageSize {
		t.Fatalf("100 bytes at slot %d (gpa %#x), next slot %d: want the second page to itself", first, a.gpa(first), a.next)
	}
	if _, ok := a.allocPages(3 * pageSize); ok {
		t.Fatal("3 pages fit in the 2 left")
	}
	if first, ok := a.allocPages(2 * pageSize); !ok || a.gpa(first) != slotAGPA+2*pageSize {
		t.Fatalf("2 pages at %#x, %v", a.gpa(first), ok)
	}
}

// TestFastRun: an instruction shorter than the jmp takes the run of
// instructions up to 5 bytes with it, unless something may enter the
// run past its start: a branch of the function, an indirect jmp, an
// exception fixup or jump label, a vCPU, or an interrupted task (its
// address in guest RAM). A refusal changes nothing.
func TestFastRun(t *testing.T) {
	// push %rbp; mov %rsp,%rbp; lea (%rdi,%rsi),%rax; pop %rbp; ret
	body := []byte{0x55, 0x48, 0x89, 0xe5, 0x48, 0x8d, 0x04, 0x37, 0x5d, 0xc3}
	for _, c := range []struct {
		name  string
		code  []byte
		setup func(e *env, fn uint64)
		want  string // "" when it is armed
	}{
		{"armed", body, nil, ""},
		{"a branch into the run", append(slices.Clone(body), 0xeb, 0xf5), nil, "branches into the run"}, // jmp fn+1
		{"an indirect jmp", append(slices.Clone(body), 0xff, 0xe0), nil, "indirect jmp"},                // jmp *%rax
		{"a fixup target", body, func(e *env, fn uint64) { e.k.entries = []uint64{fn + 4} }, "lands inside the run"},
		{"a vCPU inside", body, func(e *env, fn uint64) { e.vm.rips = []uint64{fn + 1} }, "vCPU 0 is inside the run"},
		{"a task interrupted inside", body, func(e *env, fn uint64) { writeU64(e.k, dataVA+64, fn+4) }, "guest RAM holds an address inside the run"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			if err := e.m.EnableFast(FastConfig{Records: 2, Probes: 4, CPUNumberOff: 0x10, CurrentOff: 0x20,
				DirectMap: func(gpa uint64) (uint64, error) { return slotAVA + gpa - slotAGPA, nil }, PhysLimit: memSize}); err != nil {
				t.Fatal(err)
			}
			fn := e.fn("runfn", c.code...)
			if c.setup != nil {
				c.setup(e, fn)
			}
			before := e.textAt(fn, len(c.code))
			p := &FastProbe{Symbol: "runfn"}
			err := e.m.RegisterFast(p)
			if c.want != "" {
				if !errors.Is(err, ErrNotFast) || !strings.Contains(err.Error(), c.want) {
					t.Fatalf("RegisterFast = %v, want ErrNotFast saying %q", err, c.want)
				}
				if !bytes.Equal(e.textAt(fn, len(c.code)), before) {
					t.Fatal("a refused run changed the text")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := e.textAt(fn, 9)
			if got[0] != 0xe9 || !bytes.Equal(got[5:8], []byte{opInt3, opInt3, opInt3}) || got[8] != 0x5d ||
				p.Insn() != "push %rbp (55); mov %rsp,%rbp (48 89 e5); lea (%rdi,%rsi),%rax (48 8d 04 37)" {
				t.Fatalf("patched % x (%q): want a jmp and 3 int3s over the first 8 bytes", got, p.Insn())
			}
			// The run's interior boundaries are taken.
			for _, va := range []uint64{fn + 1, fn + 4} {
				if err := e.m.RegisterFast(&FastProbe{Addr: va}); !errors.Is(err, ErrNotFast) {
					t.Errorf("exit-less probe at %#x inside the run: %v, want ErrNotFast", va, err)
				}
				if err := e.m.Register(&Kprobe{Addr: va}); err == nil {
					t.Errorf("int3 probe at %#x inside the run was armed", va)
				}
			}
			if err := e.m.UnregisterFast(p); err != nil || !bytes.Equal(e.textAt(fn, len(c.code)), before) {
				t.Fatalf("unregistering: %v; text % x", err, e.textAt(fn, len(c.code)))
			}
		})
	}
}
