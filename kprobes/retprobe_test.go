package kprobes

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/hvprobe/hvprobe/vmm"
)

// TestJprobeArgsAndRestore: Entry sees the arguments (six in registers, the
// seventh on the stack) and whatever it writes to the registers and the
// 64-byte argument area is undone; other writes stay.
func TestJprobeArgsAndRestore(t *testing.T) {
	e := newEnv(t)
	f := e.fn("do_sys_open", 0x55, 0x5d, 0x48, 0x8b, 0x44, 0x24, 0x08, 0xc3) // push;pop;mov 8(%rsp),%rax;ret
	copy(e.mem.b[dataGPA+0x100:], "/etc/passwd\x00")
	r := &e.cpu.regs
	r.RDI, r.RSI, r.RDX, r.RCX, r.R8, r.R9 = 10, 11, 12, 13, 14, 15
	r.RSP -= 8 // the caller's seventh argument sits above the return address
	writeU64(e.k, r.RSP, sentinel)
	writeU64(e.k, r.RSP+8, 16)
	var args []uint64
	var name string
	var kp, rp bool
	jp := &Jprobe{Symbol: "do_sys_open", Entry: func(j *JprobeContext) {
		for i := 0; i < 7; i++ {
			v, err := j.Arg(i)
			if err != nil {
				t.Error(err)
			}
			args = append(args, v)
		}
		var err error
		if name, err = j.ReadString(dataVA+0x100, 64); err != nil {
			t.Error(err)
		}
		j.Regs().RAX, j.Regs().RDI, j.Regs().RIP, j.Regs().RSP = 1, 2, 3, 4
		if err := j.WriteVirt(j.Regs().RSP, []byte{0xff}); err == nil {
			t.Error("wrote through a bogus rsp")
		}
		if err := j.WriteVirt(r.RSP+8, []byte{0xee, 0xee}); err != nil { // the argument area
			t.Error(err)
		}
		if err := j.WriteVirt(dataVA, []byte{0xaa}); err != nil { // not restored
			t.Error(err)
		}
	}}
	if err := e.m.RegisterJprobe(jp); err != nil {
		t.Fatal(err)
	}
	// A kprobe and a kretprobe on the same function coexist with it.
	if err := e.m.Register(&Kprobe{Symbol: "do_sys_open", PreHandler: func(*Context) bool { kp = true; return false }}); err != nil {
		t.Fatal(err)
	}
	if err := e.m.RegisterKretprobe(&Kretprobe{Symbol: "do_sys_open", Handler: func(*RetContext) { rp = true }}); err != nil {
		t.Fatal(err)
	}
	stackBefore := bytes.Clone(e.mem.b[stackGPA : stackGPA+stackSize])
	regsBefore := *r
	regsBefore.RIP = f
	e.cpu.regs.RIP = f
	e.stepGuest()
	if want := []uint64{10, 11, 12, 13, 14, 15, 16}; !slicesEqual(args, want) || name != "/etc/passwd" {
		t.Errorf("args %v name %q", args, name)
	}
	regsAfter := regsBefore
	regsAfter.RSP -= 8
	regsAfter.RIP = f + 1
	if *r != regsAfter {
		t.Errorf("registers after the jprobe:\n got  %+v\n want %+v", *r, regsAfter)
	}
	// The push wrote rbp below rsp and the kretprobe the trampoline at
	// [rsp]; the argument area above is as before.
	top := regsBefore.RSP - stackVA
	if !bytes.Equal(stackBefore[top+8:top+64], e.mem.b[stackGPA+top+8:stackGPA+top+64]) {
		t.Error("argument area not restored")
	}
	if e.mem.b[dataGPA] != 0xaa || e.m.Stats().JprobeRestores != 1 {
		t.Errorf("other memory restored too, or restore not counted (%d)", e.m.Stats().JprobeRestores)
	}
	e.run(sentinel, 20)
	if !kp || !rp || r.RAX != 16 || jp.Hits() != 1 {
		t.Errorf("kprobe %v kretprobe %v rax %d hits %d", kp, rp, r.RAX, jp.Hits())
	}
}

func TestJprobeNotAtEntry(t *testing.T) {
	e := newEnv(t)
	f := e.fn("f1", 0x55, 0x5d, 0xc3)
	err := e.m.RegisterJprobe(&Jprobe{Addr: f + 1, Entry: func(*JprobeContext) {}})
	if !errors.Is(err, ErrBadProbe) {
		t.Errorf("got %v", err)
	}
}

func TestKretprobeBasic(t *testing.T) {
	e := newEnv(t)
	f := e.fn("f1", 0x48, 0xc7, 0xc0, 0x2a, 0, 0, 0, 0xc3) // mov $42,%rax; ret
	var got []*RetContext
	rp := &Kretprobe{Symbol: "f1", Handler: func(r *RetContext) {
		if r.RetVal() != 42 || r.ReturnAddress != sentinel || r.Addr != f || r.Data != "x" || r.Duration < 0 {
			t.Errorf("return context %+v", r)
		}
		got = append(got, r)
	}, EntryHandler: func(r *RetContext) bool { r.Data = "x"; return false }}
	if err := e.m.RegisterKretprobe(rp); err != nil {
		t.Fatal(err)
	}
	slot := e.cpu.regs.RSP
	e.cpu.regs.RIP = f
	e.stepGuest()
	if readU64(e.k, slot) != e.m.TrampolineVA() || e.m.RealReturnAddress(slot, e.m.TrampolineVA()) != sentinel {
		t.Fatal("return address not replaced, or not recoverable")
	}
	e.run(sentinel, 20)
	if len(got) != 1 || rp.NMissed() != 0 || e.m.Stats().Returns != 1 {
		t.Errorf("handler ran %d times, nmissed %d", len(got), rp.NMissed())
	}
	// EntryHandler returning true skips the call.
	rp2 := &Kretprobe{Symbol: "f1", EntryHandler: func(*RetContext) bool { return true }}
	if err := e.m.UnregisterKretprobe(rp); err != nil {
		t.Fatal(err)
	}
	if err := e.m.RegisterKretprobe(rp2); err != nil {
		t.Fatal(err)
	}
	e.reset()
	e.call(f)
	if e.m.Stats().Returns != 1 || rp2.NMissed() != 0 {
		t.Error("skipped call was probed")
	}
}

// recursive is rec(n): if n == 0 return; rec(n-1).
//
//	test %rdi,%rdi; je done; dec %rdi; call rec; done: ret
func recursive(e *env) uint64 {
	va := e.next
	return e.fn("rec", cat(b(0x48, 0x85, 0xff, 0x74, 0x08, 0x48, 0xff, 0xcf, 0xe8), rel32(va+13, va), b(0xc3))...)
}

// TestKretprobeMaxActive: recursion depth d means d+1 frames of rec are
// active at the innermost call. Instances are taken outermost first and
// held until their frame returns, so the first m frames get one and the
// innermost d+1-m are missed: nmissed = max(0, d+1-m), handlers run
// min(d+1, m) times.
func TestKretprobeMaxActive(t *testing.T) {
	for _, c := range []struct{ d, m int }{{0, 1}, {3, 2}, {4, 5}, {5, 10}, {9, 3}, {2, 3}} {
		e := newEnv(t)
		rec := recursive(e)
		n := 0
		rp := &Kretprobe{Symbol: "rec", MaxActive: c.m, Handler: func(*RetContext) { n++ }}
		if err := e.m.RegisterKretprobe(rp); err != nil {
			t.Fatal(err)
		}
		e.cpu.regs.RDI = uint64(c.d)
		e.call(rec)
		if want := max(0, c.d+1-c.m); rp.NMissed() != uint64(want) || n != min(c.d+1, c.m) {
			t.Errorf("d=%d m=%d: nmissed %d (want %d), handlers %d", c.d, c.m, rp.NMissed(), want, n)
		}
		if e.cpu.regs.RSP != stackVA+stackSize-0x200+8 {
			t.Errorf("d=%d m=%d: stack unbalanced", c.d, c.m)
		}
	}
}

func TestKretprobeDefaultMaxActive(t *testing.T) {
	e := newEnv(t)
	e.vm.n = 8
	recursive(e)
	rp := &Kretprobe{Symbol: "rec"}
	if err := e.m.RegisterKretprobe(rp); err != nil {
		t.Fatal(err)
	}
	if rp.active != 16 {
		t.Errorf("default maxactive %d, want max(10, 2*8)", rp.active)
	}
}

// TestKretprobeStaleReclaim: a frame that died without returning frees its
// instance for the next call; if the frame turns out to be alive after all
// the return still goes to the right place.
func TestKretprobeStaleReclaim(t *testing.T) {
	e := newEnv(t)
	f := e.fn("f1", 0x90, 0xc3)
	n := 0
	rp := &Kretprobe{Symbol: "f1", MaxActive: 1, Handler: func(*RetContext) { n++ }}
	if err := e.m.RegisterKretprobe(rp); err != nil {
		t.Fatal(err)
	}
	deadSlot := e.cpu.regs.RSP
	e.cpu.regs.RIP = f
	e.stepGuest() // entry: the only instance is taken
	// The task dies; its stack slot is reused for something else.
	writeU64(e.k, deadSlot, 0x1234)
	e.reset()
	e.cpu.regs.RSP -= 0x100
	writeU64(e.k, e.cpu.regs.RSP, sentinel)
	e.call(f)
	if n != 1 || rp.NMissed() != 0 || e.m.Stats().Reclaimed != 1 {
		t.Errorf("handlers %d nmissed %d reclaimed %d", n, rp.NMissed(), e.m.Stats().Reclaimed)
	}
	// The "dead" frame returns through the trampoline after all (its slot
	// had been overwritten by another return hook): recovered.
	e.cpu.regs.RSP = deadSlot + 8
	e.cpu.regs.RIP = e.m.TrampolineVA()
	if !e.m.HandleDebug(e.cpu, vmm.DebugEvent{Kind: vmm.DebugBreakpoint, RIP: e.cpu.regs.RIP}) || e.cpu.regs.RIP != sentinel {
		t.Errorf("recovered return went to %#x", e.cpu.regs.RIP)
	}
	if e.m.Stats().RecoveredReturns != 1 {
		t.Error("recovery not counted")
	}
	// A trampoline hit nobody knows of goes to the guest as #BP.
	e.cpu.regs.RSP = stackVA + 0x800
	if e.m.HandleDebug(e.cpu, vmm.DebugEvent{Kind: vmm.DebugBreakpoint, RIP: e.m.TrampolineVA()}) || e.m.Stats().OrphanReturns != 1 {
		t.Error("orphan trampoline hit claimed")
	}
}

// TestKretprobeUnregisterInFlight: a call in flight when its kretprobe goes
// returns to the right place without the handler.
func TestKretprobeUnregisterInFlight(t *testing.T) {
	e := newEnv(t)
	f := e.fn("f1", 0x48, 0xc7, 0xc0, 0x2a, 0, 0, 0, 0xc3)
	orig := textBytes(e)
	called := false
	rp := &Kretprobe{Symbol: "f1", Handler: func(*RetContext) { called = true }}
	if err := e.m.RegisterKretprobe(rp); err != nil {
		t.Fatal(err)
	}
	e.cpu.regs.RIP = f
	e.stepGuest()
	if err := e.m.UnregisterKretprobe(rp); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(orig, textBytes(e)) {
		t.Error("text not restored")
	}
	e.run(sentinel, 20)
	if called || e.cpu.regs.RAX != 42 || e.m.Stats().Returns != 1 {
		t.Errorf("handler called %v, rax %d", called, e.cpu.regs.RAX)
	}
	if err := e.m.UnregisterKretprobe(rp); !errors.Is(err, ErrNotRegistered) {
		t.Errorf("second unregister: %v", err)
	}
}

func TestUnregisterAll(t *testing.T) {
	e := newEnv(t)
	f := e.fn("f1", 0x55, 0x5d, 0xc3)
	orig := textBytes(e)
	if err := e.m.Register(&Kprobe{Symbol: "f1"}); err != nil {
		t.Fatal(err)
	}
	if err := e.m.RegisterKretprobe(&Kretprobe{Symbol: "f1"}); err != nil {
		t.Fatal(err)
	}
	e.cpu.regs.RIP = f
	e.stepGuest()
	if err := e.m.UnregisterAll(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(orig, textBytes(e)) {
		t.Error("text not restored")
	}
	e.run(sentinel, 20)
	if err := e.m.Register(&Kprobe{Symbol: "f1"}); !errors.Is(err, ErrClosed) {
		t.Errorf("register after UnregisterAll: %v", err)
	}
}

// TestReturnProbesRefusedInEntryText: at an exception or interrupt entry
// %rsp points at the CPU's frame, so a kretprobe or jprobe there would
// take the interrupted rip for a return address; both are refused, and
// a kprobe there is still armed.
func TestReturnProbesRefusedInEntryText(t *testing.T) {
	e := newEnv(t)
	e.k.entryText = e.next
	f := e.fn("asm_exc_int3", 0x90, 0xc3)
	if err := e.m.RegisterKretprobe(&Kretprobe{Addr: f, Handler: func(*RetContext) {}}); !errors.Is(err, ErrUnsafeContext) || !strings.Contains(err.Error(), "asm_exc_int3 is in .entry.text") {
		t.Errorf("kretprobe on an exception entry: %v", err)
	}
	if err := e.m.RegisterJprobe(&Jprobe{Addr: f, Entry: func(*JprobeContext) {}}); !errors.Is(err, ErrUnsafeContext) {
		t.Errorf("jprobe on an exception entry: %v", err)
	}
	if err := e.m.Register(&Kprobe{Addr: f}); err != nil {
		t.Errorf("kprobe on an exception entry: %v", err)
	}
}
