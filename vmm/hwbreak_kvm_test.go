//go:build kvm

package vmm

import (
	"errors"
	"slices"
	"testing"
)

// hwExecLoop: 5 times through a nop at +5 (the breakpoint), then out.
var hwExecLoop = []byte{
	0xb9, 0x05, 0x00, // mov $5, %cx
	0x90, 0x90, // +3, +4
	0x90,       // +5: 1: nop   (breakpoint)
	0x40,       // inc %ax
	0xe2, 0xfc, // loop 1b
	0xe6, tinyPort, 0xf4,
}

// TestHWExecBreakpointTinyGuest: an execute breakpoint on this host's KVM
// fires exactly once per execution, with rip at the instruction, resumes
// by stepping over it, changes no guest memory, and leaves the guest's own
// debug registers as the guest set them.
func TestHWExecBreakpointTinyGuest(t *testing.T) {
	requireHWExec(t)
	vm := newTinyVM(t, tinyMem)
	copy(vm.mem.b[tinyCode:], hwExecLoop)
	v := vm.vcpus[0]
	guest := debugRegs{DB: [4]uint64{0, 0, 0, 0x7777}, DR6: dr6Fixed, DR7: dr7Reserved | 1<<6 | 1<<28 | 3<<30}
	if err := v.Do(func(CPU) error { return v.setGuestDRs(guest) }); err != nil {
		t.Fatal(err)
	}
	rec := &recordHW{}
	vm.SetHWBreakHook(rec)
	err := vm.SetHWBreakpoint(0, 3, HWBreakpoint{Kind: HWExecute, Addr: tinyCode + 5})
	var gse *GuestSlotError
	if !errors.As(err, &gse) || gse.Slot != 3 {
		t.Fatalf("DR3, which the guest enables: %v, want GuestSlotError", err)
	}
	t.Logf("refusal: %v", err)
	code := slices.Clone(vm.mem.b[tinyCode : tinyCode+len(hwExecLoop)])
	if err := vm.SetHWBreakpoint(0, 0, HWBreakpoint{Kind: HWExecute, Addr: tinyCode + 5}); err != nil {
		t.Fatal(err)
	}
	runHandled(t, vm, tinyCode)
	if len(rec.evs) != 5 {
		t.Fatalf("%d events, want 5: %+v", len(rec.evs), rec.evs)
	}
	for i, ev := range rec.evs {
		if ev != (HWBreakEvent{CPU: 0, Slot: 0, Kind: HWExecute, Addr: tinyCode + 5, RIP: tinyCode + 5}) {
			t.Errorf("event %d = %+v", i, ev)
		}
	}
	r, got := regsAndGuestDRs(t, v)
	if r.RCX&0xffff != 0 {
		t.Errorf("loop counter %#x: an iteration was skipped or repeated", r.RCX)
	}
	if !slices.Equal(code, vm.mem.b[tinyCode:tinyCode+len(hwExecLoop)]) {
		t.Error("the breakpoint changed guest memory")
	}
	if got.DB != guest.DB || got.DR7 != guest.DR7 {
		t.Errorf("guest DRs with hvprobe's breakpoint: %#x dr7 %#x, want %#x dr7 %#x", got.DB, got.DR7, guest.DB, guest.DR7)
	}
	if err := vm.ClearHWBreakpoint(0, 0); err != nil {
		t.Fatal(err)
	}
	rec.evs = nil
	runHandled(t, vm, tinyCode)
	if len(rec.evs) != 0 {
		t.Errorf("%d events after clearing", len(rec.evs))
	}
	if err := v.Do(func(CPU) error { var err error; got, err = v.guestDRs(); return err }); err != nil {
		t.Fatal(err)
	}
	if got.DB != guest.DB || got.DR7 != guest.DR7 {
		t.Errorf("guest DRs after clearing: %#x dr7 %#x", got.DB, got.DR7)
	}
}

// TestHWGuestBreakpointKeepsWorking: the guest's own execute breakpoint
// (its DR1) still reaches the guest's #DB handler, with its DR6 bit, while
// hvprobe holds DR0 on the same vCPU.
func TestHWGuestBreakpointKeepsWorking(t *testing.T) {
	requireHWExec(t)
	vm := newTinyVM(t, tinyMem)
	copy(vm.mem.b[tinyCode:], probeRealCode)
	copy(vm.mem.b[4:], []byte{0x00, 0x05, 0x00, 0x00}) // IVT[1] = 0000:0500
	copy(vm.mem.b[0x500:], []byte{0xe6, tinyPort, 0xf4})
	v := vm.vcpus[0]
	guest := debugRegs{DB: [4]uint64{1: tinyCode + 9}, DR6: dr6Fixed, DR7: dr7Reserved | 1<<2}
	if err := v.Do(func(CPU) error { return v.setGuestDRs(guest) }); err != nil {
		t.Fatal(err)
	}
	rec := &recordHW{}
	vm.SetHWBreakHook(rec)
	if err := vm.SetHWBreakpoint(0, 0, HWBreakpoint{Kind: HWExecute, Addr: tinyCode}); err != nil {
		t.Fatal(err)
	}
	runHandled(t, vm, tinyCode)
	if len(rec.evs) != 1 || rec.evs[0].RIP != tinyCode || rec.evs[0].Slot != 0 {
		t.Errorf("hvprobe's events %+v, want one at %#x", rec.evs, tinyCode)
	}
	r, got := regsAndGuestDRs(t, v)
	frameIP := uint64(vm.mem.b[0x800-6]) | uint64(vm.mem.b[0x800-5])<<8
	if r.RIP != 0x503 && r.RIP != 0x502 || frameIP != tinyCode+9 {
		t.Errorf("the guest's #DB handler did not run for its DR1: rip %#x, frame ip %#x", r.RIP, frameIP)
	}
	if got.DR6&0xf != 1<<1 || got.DB != guest.DB || got.DR7 != guest.DR7 {
		t.Errorf("guest DRs %+v: want DR6.B1 and its DR1/DR7 unchanged", got)
	}
}

// TestHWExecBreakpointLongMode: the same in 64-bit mode at CPL 0.
func TestHWExecBreakpointLongMode(t *testing.T) {
	requireHWExec(t)
	vm := newTinyVM(t, tinyMem)
	setupLongMode(t, vm)
	code := []byte{
		0xb9, 0x03, 0x00, 0x00, 0x00, // mov $3, %ecx
		0x48, 0xff, 0xc0, // 1: inc %rax   (+5, breakpoint)
		0xe2, 0xfb, // loop 1b
		0xe6, tinyPort, 0xf4,
	}
	copy(vm.mem.b[tinyCode:], code)
	rec := &recordHW{}
	vm.SetHWBreakHook(rec)
	if err := vm.SetHWBreakpoint(0, 1, HWBreakpoint{Kind: HWExecute, Addr: tinyCode + 5}); err != nil {
		t.Fatal(err)
	}
	runHandled(t, vm, tinyCode)
	var r Regs
	vm.Do(0, func(c CPU) error { var err error; r, err = c.Regs(); return err })
	if len(rec.evs) != 3 || r.RAX != 3 {
		t.Fatalf("%d events (%+v), rax %d; want 3 and 3", len(rec.evs), rec.evs, r.RAX)
	}
	for _, ev := range rec.evs {
		if ev.Slot != 1 || ev.RIP != tinyCode+5 {
			t.Errorf("event %+v", ev)
		}
	}
}

// regsAndGuestDRs reads v's registers and the guest's own debug registers.
func regsAndGuestDRs(t *testing.T, v *VCPU) (Regs, debugRegs) {
	t.Helper()
	var r Regs
	var got debugRegs
	if err := v.Do(func(CPU) error {
		var err error
		if r, err = v.Regs(); err != nil {
			return err
		}
		got, err = v.guestDRs()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return r, got
}
