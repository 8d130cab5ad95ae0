package vmm

import (
	"errors"
	"strings"
	"testing"
)

func TestHWBreakpointCheck(t *testing.T) {
	for _, c := range []struct {
		slot int
		bp   HWBreakpoint
		ok   bool
	}{
		{0, HWBreakpoint{Kind: HWExecute, Addr: 0xffffffff81000003}, true},
		{3, HWBreakpoint{Kind: HWExecute, Addr: 0x1001, Len: 1}, true},
		{1, HWBreakpoint{Kind: HWWrite, Addr: 0x1000, Len: 8}, true},
		{2, HWBreakpoint{Kind: HWReadWrite, Addr: 0x1002, Len: 2}, true},
		{2, HWBreakpoint{Kind: HWWrite, Addr: 0x1003, Len: 1}, true},
		{4, HWBreakpoint{Kind: HWExecute, Addr: 0x1000}, false},
		{-1, HWBreakpoint{Kind: HWExecute, Addr: 0x1000}, false},
		{0, HWBreakpoint{Kind: HWExecute, Addr: 0x1000, Len: 4}, false},
		{0, HWBreakpoint{Kind: HWWrite, Addr: 0x1004, Len: 8}, false},
		{0, HWBreakpoint{Kind: HWWrite, Addr: 0x1001, Len: 2}, false},
		{0, HWBreakpoint{Kind: HWWrite, Addr: 0x1000, Len: 3}, false},
		{0, HWBreakpoint{Kind: HWWrite, Addr: 0x1000, Len: 0}, false},
		{0, HWBreakpoint{Kind: 7, Addr: 0x1000, Len: 1}, false},
	} {
		err := c.bp.check(c.slot)
		if (err == nil) != c.ok {
			t.Errorf("slot %d %+v: %v, want ok=%v", c.slot, c.bp, err, c.ok)
		}
		if err != nil && !errors.Is(err, ErrHWBreakpoint) {
			t.Errorf("slot %d %+v: %v is not ErrHWBreakpoint", c.slot, c.bp, err)
		}
	}
}

func TestDR7Bits(t *testing.T) {
	for _, c := range []struct {
		slot int
		bp   HWBreakpoint
		want uint64
	}{
		{0, HWBreakpoint{Kind: HWExecute}, 1},
		{1, HWBreakpoint{Kind: HWWrite, Len: 1}, 1<<2 | 1<<20},
		{1, HWBreakpoint{Kind: HWWrite, Len: 4}, 1<<2 | 1<<20 | 3<<22},
		{2, HWBreakpoint{Kind: HWReadWrite, Len: 2}, 1<<4 | 3<<24 | 1<<26},
		{3, HWBreakpoint{Kind: HWWrite, Len: 8}, 1<<6 | 1<<28 | 2<<30},
	} {
		if got := dr7Bits(c.slot, c.bp); got != c.want {
			t.Errorf("slot %d %+v: DR7 bits %#x, want %#x", c.slot, c.bp, got, c.want)
		}
	}
	if m := guestEnabled(0x400 | 1<<3 | 1<<6); m != 0b1010 {
		t.Errorf("guestEnabled = %#b, want DR1 and DR3", m)
	}
}

// fakeHWCPU is a vCPU with debug registers and KVM_SET_GUEST_DEBUG
// recorded, for synthetic debug exits.
type fakeHWCPU struct {
	fakeCPU
	hw      hwBreakState
	guest   debugRegs
	ctl     uint32
	dr      [8]uint64
	applies int
}

func (f *fakeHWCPU) hwBreak() *hwBreakState        { return &f.hw }
func (f *fakeHWCPU) guestDRs() (debugRegs, error)  { return f.guest, nil }
func (f *fakeHWCPU) setGuestDRs(d debugRegs) error { f.guest = d; return nil }
func (f *fakeHWCPU) SetSingleStep(on bool) error   { f.stepping = on; return f.applyDebug() }
func (f *fakeHWCPU) applyDebug() error {
	f.ctl, f.dr = f.hw.compose()
	if f.stepping {
		f.ctl |= guestDbgEnable | guestDbgSingleStep
	}
	f.applies++
	return nil
}

type recordHW struct{ evs []HWBreakEvent }

func (r *recordHW) HandleHWBreak(_ CPU, ev HWBreakEvent) { r.evs = append(r.evs, ev) }

func debugExitInfo(pc, dr6 uint64) exitInfo {
	return exitInfo{reason: exitDebug, debug: debugExit{Exception: 1, PC: pc, DR6: dr6}}
}

// TestHWDataWatchpointSyntheticExit: a write watchpoint's #DB (a trap,
// rip after the store) is one event naming the slot; nothing is injected
// and no step-over starts. This is the data path hardware KVM takes and
// PVM never does (docs/QUIRKS.md #38).
func TestHWDataWatchpointSyntheticExit(t *testing.T) {
	h := newTestHandler(nil, nil, nil)
	rec := &recordHW{}
	h.writes.hwHook.Store(&hwHookBox{rec})
	c := &fakeHWCPU{fakeCPU: fakeCPU{regs: Regs{RIP: 0xffffffff81000107}}}
	bp := HWBreakpoint{Kind: HWWrite, Addr: 0xffffffff82001000, Len: 8}
	if err := setHWBreakpoint(c, 2, &bp); err != nil {
		t.Fatal(err)
	}
	if c.ctl != guestDbgEnable|guestDbgUseHWBP || c.dr[2] != bp.Addr || c.dr[7] != dr7Reserved|dr7LE|dr7GE|dr7Bits(2, bp) {
		t.Fatalf("KVM_SET_GUEST_DEBUG got ctl %#x dr %#x", c.ctl, c.dr)
	}
	e := debugExitInfo(0xffffffff81000107, dr6Fixed|1<<2)
	if _, err := h.handle(c, &e); err != nil {
		t.Fatal(err)
	}
	want := HWBreakEvent{CPU: 0, Slot: 2, Kind: HWWrite, Addr: bp.Addr, RIP: 0xffffffff81000107}
	if len(rec.evs) != 1 || rec.evs[0] != want {
		t.Fatalf("events %+v, want [%+v]", rec.evs, want)
	}
	if c.hw.stepping || c.setEvs != 0 {
		t.Errorf("a data watchpoint started a step-over (%v) or injected (%d)", c.hw.stepping, c.setEvs)
	}
	if err := setHWBreakpoint(c, 2, nil); err != nil {
		t.Fatal(err)
	}
	if c.ctl != 0 {
		t.Errorf("with no slot left, guest debug control %#x, want 0 (the guest's own DRs)", c.ctl)
	}
}

// TestHWExecSyntheticStepOver: an execute breakpoint's #DB (a fault, rip
// at the instruction) gives one event, then a single-step with hvprobe's
// slots off, then the slots back, with no second event.
func TestHWExecSyntheticStepOver(t *testing.T) {
	h := newTestHandler(nil, nil, nil)
	rec := &recordHW{}
	h.writes.hwHook.Store(&hwHookBox{rec})
	c := &fakeHWCPU{fakeCPU: fakeCPU{regs: Regs{RIP: 0x1009}}}
	c.hw.blockIRQ = true
	if err := setHWBreakpoint(c, 0, &HWBreakpoint{Kind: HWExecute, Addr: 0x1009}); err != nil {
		t.Fatal(err)
	}
	armed := c.dr
	e := debugExitInfo(0x1009, dr6Fixed|1)
	if _, err := h.handle(c, &e); err != nil {
		t.Fatal(err)
	}
	if len(rec.evs) != 1 || rec.evs[0].Slot != 0 || rec.evs[0].Kind != HWExecute || rec.evs[0].RIP != 0x1009 {
		t.Fatalf("events %+v", rec.evs)
	}
	if !c.hw.stepping || c.ctl&guestDbgSingleStep == 0 || c.ctl&guestDbgBlockIRQ == 0 || c.dr[7]&3 != 0 {
		t.Fatalf("step-over not started: ctl %#x dr7 %#x", c.ctl, c.dr[7])
	}
	c.regs.RIP = 0x100a
	e = debugExitInfo(0x100a, dr6Fixed|dr6BS)
	hook := &recordingHook{}
	h.hook = func() DebugHook { return hook }
	if _, err := h.handle(c, &e); err != nil {
		t.Fatal(err)
	}
	if c.hw.stepping || c.dr != armed || c.ctl&guestDbgSingleStep != 0 {
		t.Errorf("after the step: stepping %v ctl %#x dr %#x, want the breakpoint re-armed %#x", c.hw.stepping, c.ctl, c.dr, armed)
	}
	if len(rec.evs) != 1 || len(hook.events) != 0 {
		t.Errorf("the step-over's own #DB was reported: %+v %+v", rec.evs, hook.events)
	}
	// A step the engine asked for too is still the engine's.
	c.stepping = true
	e = debugExitInfo(0x1009, dr6Fixed|1)
	h.handle(c, &e)
	e = debugExitInfo(0x100a, dr6Fixed|dr6BS)
	h.handle(c, &e)
	if len(hook.events) != 1 || hook.events[0].Kind != DebugSingleStep {
		t.Errorf("the engine's single-step was lost: %+v", hook.events)
	}
}

// TestHWGuestSlots: the guest's own enabled slots are refused by name,
// merged into what KVM runs with, and their #DB goes to the guest with its
// DR6 bit; the guest's register values are never changed by hvprobe.
func TestHWGuestSlots(t *testing.T) {
	h := newTestHandler(nil, nil, nil)
	rec := &recordHW{}
	h.writes.hwHook.Store(&hwHookBox{rec})
	c := &fakeHWCPU{fakeCPU: fakeCPU{regs: Regs{RIP: 0x2000}}}
	c.guest = debugRegs{DB: [4]uint64{0, 0x5000, 0, 0}, DR6: dr6Fixed, DR7: dr7Reserved | 1<<2 | 1<<20 | 3<<22}
	err := setHWBreakpoint(c, 1, &HWBreakpoint{Kind: HWExecute, Addr: 0x3000})
	var gse *GuestSlotError
	if !errors.As(err, &gse) || gse.Slot != 1 || !strings.Contains(err.Error(), "DR1") || !errors.Is(err, ErrGuestSlot) {
		t.Fatalf("slot the guest uses: %v, want a GuestSlotError for DR1", err)
	}
	if err := setHWBreakpoint(c, 0, &HWBreakpoint{Kind: HWExecute, Addr: 0x3000}); err != nil {
		t.Fatal(err)
	}
	if c.dr[1] != 0x5000 || c.dr[7]&(3<<2|0xf<<20) != 1<<2|1<<20|3<<22 || c.dr[0] != 0x3000 || c.dr[7]&3 != 1 {
		t.Fatalf("merged debug registers %#x: want the guest's DR1 and hvprobe's DR0", c.dr)
	}
	guestBefore := c.guest
	e := debugExitInfo(0x2000, dr6Fixed|1<<1)
	if _, err := h.handle(c, &e); err != nil {
		t.Fatal(err)
	}
	if len(rec.evs) != 0 {
		t.Errorf("the guest's watchpoint was reported as hvprobe's: %+v", rec.evs)
	}
	if c.ev.Exception.Injected != 1 || c.ev.Exception.Nr != 1 || c.guest.DR6&0xf != 1<<1 {
		t.Errorf("guest #DB not reflected: events %+v, guest DR6 %#x", c.ev.Exception, c.guest.DR6)
	}
	if c.guest.DB != guestBefore.DB || c.guest.DR7 != guestBefore.DR7 {
		t.Errorf("guest DRs changed: %+v, was %+v", c.guest, guestBefore)
	}
}
