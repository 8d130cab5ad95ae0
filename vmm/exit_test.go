package vmm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/hvprobe/hvprobe/vmm/devices"
)

// fakeCPU is a register file and event state standing in for a vCPU.
type fakeCPU struct {
	regs     Regs
	sregs    Sregs
	ev       VCPUEvents
	fpuState FPU
	stepping bool
	setEvs   int
	xlate    map[uint64]uint64 // page VA -> page GPA
}

func (f *fakeCPU) ID() int                      { return 0 }
func (f *fakeCPU) Regs() (Regs, error)          { return f.regs, nil }
func (f *fakeCPU) SetRegs(r Regs) error         { f.regs = r; return nil }
func (f *fakeCPU) Sregs() (Sregs, error)        { return f.sregs, nil }
func (f *fakeCPU) MSR(uint32) (uint64, error)   { return 0, nil }
func (f *fakeCPU) SetSingleStep(on bool) error  { f.stepping = on; return nil }
func (f *fakeCPU) events() (VCPUEvents, error)  { return f.ev, nil }
func (f *fakeCPU) setEvents(e VCPUEvents) error { f.ev = e; f.setEvs++; return nil }
func (f *fakeCPU) fpu() (FPU, error)            { return f.fpuState, nil }
func (f *fakeCPU) setFPU(x FPU) error           { f.fpuState = x; return nil }
func (f *fakeCPU) singleStepping() bool         { return f.stepping }
func (f *fakeCPU) translate(va uint64) (uint64, bool, error) {
	pa, ok := f.xlate[va&^0xfff]
	return pa | va&0xfff, ok, nil
}

type recordingHook struct {
	events []DebugEvent
	claim  bool
}

func (h *recordingHook) HandleDebug(_ CPU, ev DebugEvent) bool {
	h.events = append(h.events, ev)
	return h.claim
}

func newTestHandler(hook DebugHook, mem PhysMem, out *bytes.Buffer) *exitHandler {
	return &exitHandler{
		bus:       &devices.Bus{Serial: devices.NewSerial(out, nil), Reset: func() {}},
		mem:       mem,
		hook:      func() DebugHook { return hook },
		symbolize: func(a uint64) string { return "somefunc+0x4" },
		stats:     &ExitStats{},
	}
}

// emuExit builds an emulation-failure exit in kvm.h's layout.
func emuExit(code ...byte) exitInfo {
	var raw [128]byte
	raw[0] = 1 // flags: instruction bytes valid
	raw[8] = byte(len(code))
	copy(raw[9:], code)
	in := internalExit{Suberror: internalErrorEmulation, NData: 4}
	for i := range in.Data {
		in.Data[i] = binary.LittleEndian.Uint64(raw[8*i:])
	}
	return exitInfo{reason: exitInternalError, internal: in}
}

func TestEmulationInsnLayouts(t *testing.T) {
	e := emuExit(0x0f, 0xae, 0x55, 0xfc)
	if got := emulationInsn(e.internal); !bytes.Equal(got, []byte{0x0f, 0xae, 0x55, 0xfc}) {
		t.Errorf("kvm.h layout: got % x", got)
	}
	// Size as a whole u64 in data[1], bytes from data[2].
	in := internalExit{Suberror: 1, NData: 4}
	in.Data[0] = 1
	in.Data[1] = 1
	in.Data[2] = 0xcc
	if got := emulationInsn(in); !bytes.Equal(got, []byte{0xcc}) {
		t.Errorf("u64-size layout: got % x", got)
	}
	in.Data[0] = 0 // no bytes reported
	if got := emulationInsn(in); got != nil {
		t.Errorf("flags=0: got % x, want nothing", got)
	}
}

func TestInt3ViaEmulationFailure(t *testing.T) {
	for _, claim := range []bool{true, false} {
		hook := &recordingHook{claim: claim}
		h := newTestHandler(hook, NewMemoryFromBytes(make([]byte, 4096)), nil)
		c := &fakeCPU{regs: Regs{RIP: 0xffffffff81001234}}
		e := emuExit(0xcc)
		if r, err := h.handle(c, &e); r != 0 || err != nil {
			t.Fatalf("claim=%v: handle = %v, %v", claim, r, err)
		}
		if len(hook.events) != 1 || hook.events[0] != (DebugEvent{DebugBreakpoint, 0xffffffff81001234}) {
			t.Fatalf("claim=%v: hook saw %+v", claim, hook.events)
		}
		if claim {
			if c.setEvs != 0 || c.regs.RIP != 0xffffffff81001234 {
				t.Errorf("claimed int3 was also given to the guest: %+v rip=%#x", c.ev, c.regs.RIP)
			}
			continue
		}
		if c.regs.RIP != 0xffffffff81001235 || c.ev.Exception.Injected != 1 || c.ev.Exception.Nr != 3 {
			t.Errorf("unclaimed int3: rip=%#x exception=%+v, want rip past int3 and #BP injected", c.regs.RIP, c.ev.Exception)
		}
	}
}

func TestDebugExitBreakpointAndStep(t *testing.T) {
	hook := &recordingHook{claim: false}
	h := newTestHandler(hook, nil, nil)
	c := &fakeCPU{regs: Regs{RIP: 0x1000}}
	e := exitInfo{reason: exitDebug, debug: debugExit{Exception: 3, PC: 0x1000}}
	if _, err := h.handle(c, &e); err != nil {
		t.Fatal(err)
	}
	// Hardware path: KVM re-injects #BP as a soft exception; rip untouched.
	if c.regs.RIP != 0x1000 || c.ev.Exception.Nr != 3 || c.ev.Exception.Injected != 1 {
		t.Fatalf("unclaimed #BP: rip=%#x ev=%+v", c.regs.RIP, c.ev.Exception)
	}
	// A #DB while single-stepping is the hook's; otherwise the guest's.
	c.stepping = true
	e = exitInfo{reason: exitDebug, debug: debugExit{Exception: 1, PC: 0x1005}}
	h.handle(c, &e)
	if n := len(hook.events); n != 2 || hook.events[1] != (DebugEvent{DebugSingleStep, 0x1005}) {
		t.Fatalf("step event not dispatched: %+v", hook.events)
	}
	c.stepping, c.setEvs = false, 0
	h.handle(c, &e)
	if len(hook.events) != 2 || c.setEvs != 1 || c.ev.Exception.Nr != 1 {
		t.Fatalf("guest #DB: hook events %d, injected %+v", len(hook.events), c.ev.Exception)
	}
}

func TestAssists(t *testing.T) {
	mem := NewMemoryFromBytes(make([]byte, 0x10000))
	binary.LittleEndian.PutUint32(mem.b[0x3010:], 0x1fa0)
	h := newTestHandler(nil, mem, nil)

	c := &fakeCPU{regs: Regs{RIP: 0x500}}
	e := emuExit(0x9b)
	if r, err := h.handle(c, &e); r != 0 || err != nil || c.regs.RIP != 0x501 {
		t.Fatalf("fwait: %v %v rip=%#x", r, err, c.regs.RIP)
	}

	// ldmxcsr 0x10(%rbp): the operand is read through KVM_TRANSLATE.
	c = &fakeCPU{regs: Regs{RIP: 0x600, RBP: 0xffff888000003000}, xlate: map[uint64]uint64{0xffff888000003000: 0x3000}}
	e = emuExit(0x0f, 0xae, 0x55, 0x10)
	if r, err := h.handle(c, &e); r != 0 || err != nil {
		t.Fatalf("ldmxcsr: %v %v", r, err)
	}
	if c.fpuState.MXCSR != 0x1fa0 || c.regs.RIP != 0x604 {
		t.Fatalf("ldmxcsr: mxcsr=%#x rip=%#x", c.fpuState.MXCSR, c.regs.RIP)
	}
	// stmxcsr 0x14(%rbp)
	c.fpuState.MXCSR = 0x1f80
	e = emuExit(0x0f, 0xae, 0x5d, 0x14)
	if _, err := h.handle(c, &e); err != nil {
		t.Fatal(err)
	}
	if got := binary.LittleEndian.Uint32(mem.b[0x3014:]); got != 0x1f80 || c.regs.RIP != 0x608 {
		t.Fatalf("stmxcsr stored %#x, rip=%#x", got, c.regs.RIP)
	}

	// An instruction nobody can complete stops the VM with a precise report.
	c = &fakeCPU{regs: Regs{RIP: 0xffffffff81000010}}
	e = emuExit(0x0f, 0x01, 0xca) // clac
	r, err := h.handle(c, &e)
	var ee *EmulationError
	if r != StopError || !errors.As(err, &ee) || !errors.Is(err, ErrEmulation) {
		t.Fatalf("clac: %v %v", r, err)
	}
	if ee.RIP != 0xffffffff81000010 || ee.Symbol != "somefunc+0x4" || ee.Insn == "" {
		t.Fatalf("report: %+v", ee)
	}
}

func TestPortIOExit(t *testing.T) {
	var out bytes.Buffer
	h := newTestHandler(nil, nil, &out)
	data := []byte("OK")
	e := exitInfo{reason: exitIO, io: ioExit{Direction: ioDirOut, Size: 1, Port: 0x3f8, Count: 2}, ioData: data}
	if _, err := h.handle(&fakeCPU{}, &e); err != nil {
		t.Fatal(err)
	}
	if out.String() != "OK" {
		t.Fatalf("rep outsb to COM1 gave %q", out.String())
	}
	in := []byte{0}
	e = exitInfo{reason: exitIO, io: ioExit{Direction: ioDirIn, Size: 1, Port: 0x3f8 + 5, Count: 1}, ioData: in} // COM1 LSR
	h.handle(&fakeCPU{}, &e)
	if in[0]&0x20 == 0 { // THRE
		t.Fatalf("LSR read %#x", in[0])
	}
}

func TestStopExits(t *testing.T) {
	h := newTestHandler(nil, nil, nil)
	for _, c := range []struct {
		e    exitInfo
		want StopReason
	}{
		{exitInfo{reason: exitShutdown}, StopReset},
		{exitInfo{reason: exitHLT}, StopHalted},
		{exitInfo{reason: exitSystemEvent, system: systemEventExit{Type: systemEventReset}}, StopReset},
		{exitInfo{reason: exitSystemEvent, system: systemEventExit{Type: systemEventShutdown}}, StopShutdown},
		{exitInfo{reason: 99}, StopError},
	} {
		if r, _ := h.handle(&fakeCPU{}, &c.e); r != c.want {
			t.Errorf("exit %d: %v, want %v", c.e.reason, r, c.want)
		}
	}
}

// TestTripleFaultState: a shutdown exit keeps where the vCPU stood and
// what KVM had in hand, for the reset's report; the first one wins.
func TestTripleFaultState(t *testing.T) {
	h := newTestHandler(nil, nil, nil)
	c := &fakeCPU{regs: Regs{RIP: 0xffffffff81001234, RSP: 0xffffc90000003f00, RFLAGS: 0x46}}
	c.sregs.CR2, c.sregs.IDT.Base, c.sregs.CS.Selector = 0xdead000, 0xfffffe0000000000, 0x10
	c.ev.Exception.Injected, c.ev.Exception.Nr, c.ev.Exception.ErrorCode = 1, 14, 2
	h.handle(c, &exitInfo{reason: exitShutdown})
	c.regs.RIP = 1
	h.handle(c, &exitInfo{reason: exitShutdown})
	f := h.fault.Load()
	if f == nil {
		t.Fatal("no triple fault kept")
	}
	want := "triple fault on vCPU 0 at rip=0xffffffff81001234 (somefunc+0x4) rsp=0xffffc90000003f00 rflags=0x46 cs=0x10 ss=0x0 cr0=0x0 cr2=0xdead000 cr3=0x0 cr4=0x0 idt=0xfffffe0000000000/0x0 exception 14 (error code 0x2)"
	if got := f.String(); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestInt3Doorbell(t *testing.T) {
	const stackVA, stackPA = 0xffffc90000003f00, 0x3f00
	const entry, handler, bp = 0xffffffffa0001000, 0xffffffff81c00ba0, 0xffffffff81001234
	for _, claim := range []bool{true, false} {
		mem := NewMemoryFromBytes(make([]byte, 0x10000))
		le := binary.LittleEndian
		frame := []uint64{bp + 1, 0x10, 0x246, 0xffffc90000003ff8, 0x18}
		for i, v := range frame {
			le.PutUint64(mem.b[stackPA+8*i:], v)
		}
		hook := &recordingHook{claim: claim}
		h := newTestHandler(hook, mem, nil)
		h.doorbell.Store(&int3Doorbell{entry: entry, handler: handler})
		c := &fakeCPU{regs: Regs{RIP: entry + doorbellOut, RSP: stackVA, RFLAGS: 0x46, RAX: 7}, xlate: map[uint64]uint64{stackVA &^ 0xfff: stackPA &^ 0xfff}}
		e := exitInfo{reason: exitIO, io: ioExit{Direction: ioDirOut, Size: 1, Port: DoorbellPort, Count: 1}, ioData: []byte{7}}
		if _, err := h.handle(c, &e); err != nil {
			t.Fatal(err)
		}
		if len(hook.events) != 1 || hook.events[0] != (DebugEvent{DebugBreakpoint, bp}) {
			t.Fatalf("claim=%v: events %+v", claim, hook.events)
		}
		if claim {
			// The iret was done by the VMM: back at the int3's context.
			if c.regs.RIP != bp || c.regs.RSP != frame[3] || c.regs.RFLAGS != 0x246 || c.regs.RAX != 7 {
				t.Errorf("claimed: regs %+v", c.regs)
			}
		} else if c.regs.RIP != handler || c.regs.RSP != stackVA {
			t.Errorf("unclaimed: rip=%#x rsp=%#x, want the guest handler with the frame intact", c.regs.RIP, c.regs.RSP)
		}
	}
	// An out to 0xe9 from elsewhere is plain port I/O.
	h := newTestHandler(&recordingHook{}, NewMemoryFromBytes(make([]byte, 4096)), nil)
	h.doorbell.Store(&int3Doorbell{entry: entry, handler: handler})
	c := &fakeCPU{regs: Regs{RIP: 0x1234}}
	e := exitInfo{reason: exitIO, io: ioExit{Direction: ioDirOut, Size: 1, Port: DoorbellPort, Count: 1}, ioData: []byte{'x'}}
	if _, err := h.handle(c, &e); err != nil || c.regs.RIP != 0x1234 {
		t.Fatalf("stray out: %v rip=%#x", err, c.regs.RIP)
	}
}
