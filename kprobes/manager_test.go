package kprobes

import (
	"bytes"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hvprobe/hvprobe/vmm"
)

func textBytes(e *env) []byte { return bytes.Clone(e.mem.b[textGPA : textGPA+textSize]) }

func TestRegisterRefusals(t *testing.T) {
	e := newEnv(t)
	// vfs_read: push %rbp; mov %rsp,%rbp; ... ; hlt at +0x4? no: +0x4 is
	// a 3-byte mov so +0x3 is inside it.
	e.fn("vfs_read", 0x55, 0x48, 0x89, 0xe5, 0x90, 0xc3)
	e.fn("has_int3", 0xcc, 0xc3)
	e.fn("has_hlt", 0xf4, 0xc3)
	e.fn("has_int", 0xcd, 0x80, 0xc3)
	e.fn("has_syscall", 0x0f, 0x05, 0xc3)
	e.fn("has_ud2", 0x0f, 0x0b)
	e.fn("has_iret", 0x48, 0xcf)
	e.fn("has_movss", 0x8e, 0xd0, 0xc3)
	e.fn("garbage", 0x0f, 0x04, 0xc3)
	before := textBytes(e)
	cases := []struct {
		p    *Kprobe
		kind error
		msg  string
	}{
		{&Kprobe{Symbol: "vfs_read", Offset: 3}, ErrNotBoundary,
			"vfs_read+0x3: not on an instruction boundary (instructions start at +0x0, +0x1, +0x4)"},
		{&Kprobe{Symbol: "has_int3"}, ErrUnsafeInstruction, ""},
		{&Kprobe{Symbol: "has_hlt"}, ErrUnsafeInstruction, ""},
		{&Kprobe{Symbol: "has_int"}, ErrUnsafeInstruction, ""},
		{&Kprobe{Symbol: "has_syscall"}, ErrUnsafeInstruction, ""},
		{&Kprobe{Symbol: "has_ud2"}, ErrUnsafeInstruction, ""},
		{&Kprobe{Symbol: "has_iret"}, ErrUnsafeInstruction, ""},
		{&Kprobe{Symbol: "has_movss"}, ErrUnsafeInstruction, ""},
		{&Kprobe{Symbol: "garbage"}, ErrUndecodable, ""},
		{&Kprobe{Addr: dataVA}, ErrNotInText, ""},
		{&Kprobe{}, ErrBadProbe, ""},
		{&Kprobe{Symbol: "vfs_read", Addr: textVA}, ErrBadProbe, ""}, // Addr contradicts Symbol
	}
	for _, c := range cases {
		err := e.m.Register(c.p)
		if !errors.Is(err, c.kind) {
			t.Errorf("%+v: got %v, want %v", c.p, err, c.kind)
			continue
		}
		var pe *ProbeError
		if !errors.As(err, &pe) {
			t.Errorf("%v is not a *ProbeError", err)
		}
		if c.msg != "" && err.Error() != c.msg {
			t.Errorf("message %q, want %q", err, c.msg)
		}
	}
	if !bytes.Equal(before, textBytes(e)) {
		t.Error("failed registrations changed guest text")
	}
	if len(e.m.Stats().Probes) != 0 || e.m.slots.next != 1 {
		t.Errorf("failed registrations left state: %+v, %d slots used", e.m.Stats().Probes, e.m.slots.next)
	}
	if _, err := e.k.Resolve("vfs_read", 0); err != nil {
		t.Fatal(err)
	}
	// Error text for a probe given by address names the symbol.
	err := e.m.Register(&Kprobe{Addr: e.k.syms[1].va + 3})
	if err == nil || err.Error() != "0xffffffff81000113 (vfs_read+0x3): not on an instruction boundary (instructions start at +0x0, +0x1, +0x4)" {
		t.Errorf("by-address error: %v", err)
	}
}

func TestRegisterTwiceAndUnknown(t *testing.T) {
	e := newEnv(t)
	e.fn("f1", 0x90, 0xc3)
	p := &Kprobe{Symbol: "f1"}
	if err := e.m.Register(p); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Register(p); !errors.Is(err, ErrAlreadyRegistered) {
		t.Errorf("second Register: %v", err)
	}
	if err := e.m.Unregister(&Kprobe{Symbol: "f1"}); !errors.Is(err, ErrNotRegistered) {
		t.Errorf("Unregister of a stranger: %v", err)
	}
	if err := e.m.Unregister(p); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Unregister(p); !errors.Is(err, ErrNotRegistered) {
		t.Errorf("second Unregister: %v", err)
	}
}

// TestAggregate: handlers run in registration order; unregistering one
// keeps the site armed; the last one restores the text byte-exactly.
func TestAggregate(t *testing.T) {
	e := newEnv(t)
	f := e.fn("f1", 0x55, 0x5d, 0xc3)
	orig := textBytes(e)
	var order []int
	mk := func(i int) *Kprobe {
		return &Kprobe{Symbol: "f1", PreHandler: func(*Context) bool { order = append(order, i); return false }}
	}
	ps := []*Kprobe{mk(1), mk(2), mk(3)}
	for _, p := range ps {
		if err := e.m.Register(p); err != nil {
			t.Fatal(err)
		}
	}
	e.call(f)
	if want := []int{1, 2, 3}; !slicesEqual(order, want) {
		t.Errorf("order %v, want %v", order, want)
	}
	if err := e.m.Unregister(ps[1]); err != nil {
		t.Fatal(err)
	}
	if e.mem.b[textGPA+f-textVA] != opInt3 {
		t.Fatal("site disarmed while probes remain")
	}
	order = nil
	e.reset()
	e.call(f)
	if want := []int{1, 3}; !slicesEqual(order, want) {
		t.Errorf("order after unregistering 2: %v, want %v", order, want)
	}
	if ps[0].Hits() != 2 || ps[1].Hits() != 1 {
		t.Errorf("hits %d %d", ps[0].Hits(), ps[1].Hits())
	}
	for _, p := range []*Kprobe{ps[0], ps[2]} {
		if err := e.m.Unregister(p); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(orig, textBytes(e)) {
		t.Error("text not restored byte-exactly")
	}
}

// TestPreHandlerSetsRIP: a pre handler returning true owns the vCPU state.
func TestPreHandlerSetsRIP(t *testing.T) {
	e := newEnv(t)
	f := e.fn("f1", 0x48, 0xc7, 0xc0, 0x01, 0, 0, 0, 0xc3) // mov $1,%rax; ret
	var second bool
	p := &Kprobe{Symbol: "f1", PreHandler: func(c *Context) bool {
		c.Regs().RAX = 99
		c.Regs().RIP = f + 7 // skip the mov
		return true
	}}
	q := &Kprobe{Symbol: "f1", PreHandler: func(*Context) bool { second = true; return false }}
	for _, x := range []*Kprobe{p, q} {
		if err := e.m.Register(x); err != nil {
			t.Fatal(err)
		}
	}
	e.call(f)
	if e.cpu.regs.RAX != 99 || second || e.exits != 1 || e.m.Stats().Skipped != 1 {
		t.Errorf("rax %d, second handler ran %v, exits %d", e.cpu.regs.RAX, second, e.exits)
	}
}

func TestTextModified(t *testing.T) {
	e := newEnv(t)
	f := e.fn("f1", 0x0f, 0x1f, 0x44, 0, 0, 0xc3)
	p := &Kprobe{Symbol: "f1"}
	if err := e.m.Register(p); err != nil {
		t.Fatal(err)
	}
	// The guest patches its own text (a jump label turning the nop into a jmp).
	gpa := textGPA + f - textVA
	copy(e.mem.b[gpa:], []byte{0xe9, 1, 2, 3, 4})
	err := e.m.Unregister(p)
	var tm *TextModifiedError
	if !errors.As(err, &tm) || !errors.Is(err, ErrTextModified) {
		t.Fatalf("got %v, want a *TextModifiedError", err)
	}
	if tm.Found != 0xe9 || tm.Original != 0x0f || tm.Addr != f {
		t.Errorf("%+v", tm)
	}
	if e.mem.b[gpa] != 0xe9 {
		t.Error("guest's byte overwritten")
	}
	if len(e.m.Stats().Probes) != 0 {
		t.Error("probe still registered")
	}
}

// TestFaultInSlot: the probed instruction, which has an exception-table
// entry and so is stepped, reads through an unmapped pointer.
func TestFaultInSlot(t *testing.T) {
	e := newEnv(t)
	f := e.fn("f1", 0x48, 0x8b, 0x07, 0xc3) // mov (%rdi),%rax; ret
	e.k.fixups = map[uint64]bool{f: true}
	var faults []Fault
	p := &Kprobe{Symbol: "f1", FaultHandler: func(_ *Context, f Fault) bool { faults = append(faults, f); return true }}
	if err := e.m.Register(p); err != nil {
		t.Fatal(err)
	}
	e.cpu.regs.RDI = unmappedVA
	e.cpu.regs.RIP = f
	rsp := e.cpu.regs.RSP
	e.stepGuest() // int3 -> step in slot
	e.stepGuest() // the read faults: the step stops at the #PF handler entry
	if len(faults) != 1 || faults[0].Vector != pfVector || !faults[0].HasErrorCode || faults[0].Addr != f {
		t.Fatalf("faults %+v", faults)
	}
	r := e.cpu.regs
	if frameRIP := readU64(e.k, r.RSP+8); frameRIP != f {
		t.Errorf("frame rip %#x, want the probe address %#x", frameRIP, f)
	}
	if fl := readU64(e.k, r.RSP+24); fl&vmm.FlagIF == 0 || fl&vmm.FlagTF != 0 {
		t.Errorf("frame rflags %#x: want IF restored, TF clear", fl)
	}
	if e.cpu.ss || e.m.Stats().Faults != 1 {
		t.Errorf("single-step %v, stats %+v", e.cpu.ss, e.m.Stats())
	}
	// The guest's handler "maps the page" and irets: the instruction
	// re-executes at its own address and the probe fires again.
	e.cpu.regs.RDI = dataVA
	e.run(f, 10)
	if e.cpu.regs.RSP != rsp {
		t.Fatalf("rsp after iret %#x, want %#x", e.cpu.regs.RSP, rsp)
	}
	e.run(sentinel, 10)
	if p.Hits() != 2 || e.cpu.regs.RAX != readU64(e.k, dataVA) || e.cpu.regs.RFLAGS&vmm.FlagIF == 0 {
		t.Errorf("hits %d rax %#x rflags %#x", p.Hits(), e.cpu.regs.RAX, e.cpu.regs.RFLAGS)
	}
}

// TestReenter: a probe hit while the vCPU is mid-step in another probe's
// slot runs no handlers, counts nmissed, and executes its instruction.
func TestReenter(t *testing.T) {
	e := newEnv(t)
	a := e.fn("a", 0x48, 0xad, 0xc3)  // lodsq: stepped
	bn := e.fn("b", 0x90, 0xc3)       // nop: emulated
	bs := e.fn("c", 0x48, 0xad, 0xc3) // lodsq: stepped
	var ran []string
	mk := func(s string) *Kprobe {
		return &Kprobe{Symbol: s, PreHandler: func(*Context) bool { ran = append(ran, s); return false },
			PostHandler: func(*Context) { ran = append(ran, s+" post") }}
	}
	pa, pb, pc := mk("a"), mk("b"), mk("c")
	for _, p := range []*Kprobe{pa, pb, pc} {
		if err := e.m.Register(p); err != nil {
			t.Fatal(err)
		}
	}
	writeU64(e.k, dataVA+8, gVA)
	e.cpu.regs.RIP, e.cpu.regs.RSI = a, dataVA+8
	e.stepGuest() // a: HIT_SS
	outer := e.cpu.regs
	// The step "escapes" (as when an exception entered without a stop) and
	// the vCPU reaches b, then c.
	e.cpu.regs.RIP = bn
	e.stepGuest()
	if e.cpu.regs.RIP != bn+1 || pb.NMissed() != 1 {
		t.Fatalf("emulated re-entry: rip %#x nmissed %d", e.cpu.regs.RIP, pb.NMissed())
	}
	e.cpu.regs.RIP = bs
	e.stepGuest() // c: REENTER, stepped
	e.stepGuest() // c's step completes; a's state comes back
	if e.cpu.regs.RIP != bs+2 || e.cpu.regs.RAX != gVA || pc.NMissed() != 1 {
		t.Fatalf("stepped re-entry: rip %#x rax %#x nmissed %d", e.cpu.regs.RIP, e.cpu.regs.RAX, pc.NMissed())
	}
	if st := e.m.cpus[0]; st.status != statusHitSS || st.site.addr != a || !e.cpu.ss {
		t.Fatalf("outer state not restored: %+v ss=%v", st, e.cpu.ss)
	}
	// a's step now completes.
	e.cpu.regs = outer
	e.stepGuest()
	if e.cpu.regs.RIP != a+2 || e.cpu.regs.RAX != gVA {
		t.Errorf("outer step: rip %#x rax %#x", e.cpu.regs.RIP, e.cpu.regs.RAX)
	}
	if want := []string{"a", "a post"}; !slicesEqual(ran, want) {
		t.Errorf("handlers ran %v, want %v", ran, want)
	}
	if pa.NMissed() != 0 || e.m.Stats().Reentered != 2 {
		t.Errorf("a nmissed %d, reentered %d", pa.NMissed(), e.m.Stats().Reentered)
	}
}

// TestUnregisterMidStep: unregistering while a vCPU is mid-step restores
// the text at once, lets the step finish, and frees the slot only then.
func TestUnregisterMidStep(t *testing.T) {
	e := newEnv(t)
	f := e.fn("f1", 0xfb, 0xc3) // sti (stepped); ret
	e.fn("g1", 0x48, 0x8b, 0x07, 0xc3)
	p := &Kprobe{Symbol: "f1", PostHandler: func(*Context) {}}
	if err := e.m.Register(p); err != nil {
		t.Fatal(err)
	}
	slot := e.m.byVA[f].slotVA
	e.cpu.regs.RIP = f
	e.stepGuest() // hit: stepping in the slot
	if err := e.m.Unregister(p); err != nil {
		t.Fatal(err)
	}
	if e.mem.b[textGPA+f-textVA] != 0xfb {
		t.Fatal("int3 still armed")
	}
	q := &Kprobe{Symbol: "g1", PostHandler: func(*Context) {}}
	if err := e.m.Register(q); err != nil {
		t.Fatal(err)
	}
	if e.m.byVA[e.k.syms[2].va].slotVA == slot {
		t.Fatal("slot reused while a vCPU is mid-step in it")
	}
	e.run(sentinel, 20)
	if e.cpu.ss {
		t.Error("step left on")
	}
	if err := e.m.Unregister(q); err != nil {
		t.Fatal(err)
	}
	r := &Kprobe{Symbol: "g1", PostHandler: func(*Context) {}}
	if err := e.m.Register(r); err != nil {
		t.Fatal(err)
	}
	if got := e.m.byVA[e.k.syms[2].va].slotVA; got != slot && got != e.m.slots.va(2) {
		t.Errorf("freed slots not reused: got %#x", got)
	}
}

// TestBoostedSlotQuarantine: a slot that ran boosted is never reused.
func TestBoostedSlotQuarantine(t *testing.T) {
	e := newEnv(t)
	f := e.fn("f1", 0x48, 0x8b, 0x35, 0, 0, 0, 0, 0xc3) // mov 0(%rip),%rsi
	p := &Kprobe{Symbol: "f1"}
	if err := e.m.Register(p); err != nil {
		t.Fatal(err)
	}
	slot := e.m.byVA[f].slotVA
	e.call(f)
	if e.m.Stats().Boosted != 1 {
		t.Fatal("not boosted")
	}
	if err := e.m.Unregister(p); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		q := &Kprobe{Symbol: "f1"}
		if err := e.m.Register(q); err != nil {
			t.Fatal(err)
		}
		if e.m.byVA[f].slotVA == slot {
			t.Fatal("boosted slot reused")
		}
		if err := e.m.Unregister(q); err != nil {
			t.Fatal(err)
		}
	}
}

func TestStrayBreakpoints(t *testing.T) {
	e := newEnv(t)
	f := e.fn("f1", 0xcc, 0xc3)
	if e.m.HandleDebug(e.cpu, vmm.DebugEvent{Kind: vmm.DebugBreakpoint, RIP: f}) {
		t.Error("the guest's own int3 was claimed")
	}
	if e.m.HandleDebug(e.cpu, vmm.DebugEvent{Kind: vmm.DebugSingleStep, RIP: f}) {
		t.Error("an unrequested single-step was claimed")
	}
	// An int3 removed by Unregister after the vCPU hit it.
	g := e.fn("g1", 0x90, 0xc3)
	if !e.m.HandleDebug(e.cpu, vmm.DebugEvent{Kind: vmm.DebugBreakpoint, RIP: g}) || e.m.Stats().Raced != 1 {
		t.Error("raced int3 not absorbed")
	}
}

// TestRearmDuringStrayCheck: a vCPU hit an int3 whose probe was then
// removed, and the probe is registered again while the engine decides
// whether the int3 is the guest's own. The decision must see either the
// site or the restored byte, never the new int3 without its site (seen in
// the 2-vCPU arm/disarm stress: the guest got a #BP and oopsed).
func TestRearmDuringStrayCheck(t *testing.T) {
	e := newEnv(t)
	g := e.fn("g1", 0x90, 0xc3)
	p := &Kprobe{Symbol: "g1"}
	var fired atomic.Bool
	registered := make(chan error, 1)
	e.k.onRead = func(va uint64) {
		if va != g || !fired.CompareAndSwap(false, true) {
			return
		}
		go func() { registered <- e.m.Register(p) }()
		select {
		case err := <-registered:
			registered <- err // done before the engine reads the byte: the race
		case <-time.After(100 * time.Millisecond): // held off by the engine
		}
	}
	if !e.m.HandleDebug(e.cpu, vmm.DebugEvent{Kind: vmm.DebugBreakpoint, RIP: g}) {
		t.Error("the int3 of a probe armed again during the hit was handed to the guest as its own")
	}
	if err := <-registered; err != nil {
		t.Fatal(err)
	}
}

func slicesEqual[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
