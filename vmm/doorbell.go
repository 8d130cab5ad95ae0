package vmm

import (
	"encoding/binary"
	"fmt"
)

// Some KVMs never intercept a guest int3: QEMU's TCG emulating SVM (the
// nested KVM of images/nested) treats int3 as a software interrupt and
// checks only the INTn intercept, so #BP goes straight to the guest's IDT
// (docs/QUIRKS.md). On such a host hvprobe points the guest's vector 3 at
// a doorbell: `out %al,$DoorbellPort` in hvprobe's own page. The exit on
// that port is turned back into the int3 it was: the VMM reads the
// exception frame, performs the iret itself and raises the same
// DebugBreakpoint event the other paths raise. An int3 the hook does not
// claim continues into the guest's real handler with the frame intact, as
// if the CPU had delivered it there.

// DoorbellPort is the I/O port of the int3 doorbell.
const DoorbellPort = 0xe9

// DoorbellCode is the doorbell: endbr64 (exception delivery lands on an
// indirect-branch target under CET IBT; a nop elsewhere), out %al,$0xe9,
// then ud2, which is never reached because the VMM moves rip on the exit.
var DoorbellCode = []byte{0xf3, 0x0f, 0x1e, 0xfa, 0xe6, DoorbellPort, 0x0f, 0x0b}

// doorbellOut is the offset of the out instruction in DoorbellCode.
const doorbellOut = 4

// int3Doorbell is an installed doorbell.
type int3Doorbell struct {
	entry   uint64 // VA where DoorbellCode is mapped
	handler uint64 // the guest's own #BP handler
}

// InstallInt3Doorbell writes DoorbellCode into the reserved region's
// doorbell page, mapped by the caller at entry, and points the 64-bit IDT
// gate at gateGPA (the guest's vector 3) at it once check has accepted the
// guest's own handler there, which then takes the int3s the hook does not
// claim (SetInt3Doorbell).
func (vm *VM) InstallInt3Doorbell(gateGPA, entry uint64, check func(handler uint64) error) error {
	r := vm.Reserved()
	gpa, _ := r.Mapped()
	if err := vm.mem.WritePhys(gpa+r.DoorbellOffset(), DoorbellCode); err != nil {
		return err
	}
	g := make([]byte, IDTGateSize)
	if err := vm.mem.ReadPhys(gateGPA, g); err != nil {
		return err
	}
	handler := GateOffset(g)
	if err := check(handler); err != nil {
		return err
	}
	SetGateOffset(g, entry)
	vm.SetInt3Doorbell(entry, handler)
	return vm.mem.WritePhys(gateGPA, g)
}

// SetInt3Doorbell routes #BP exits arriving at entry (the VA where
// DoorbellCode is mapped) as breakpoint events; handler is the guest's own
// #BP handler for int3s the hook does not claim. The caller points the
// guest's IDT vector 3 at entry.
func (vm *VM) SetInt3Doorbell(entry, handler uint64) {
	vm.handler.doorbell.Store(&int3Doorbell{entry: entry, handler: handler})
}

// doorbellExit handles an OUT to DoorbellPort. It reports false when the
// out did not come from the doorbell (a guest may use port 0xe9 as a
// debug console), which then goes to the port bus.
func (h *exitHandler) doorbellExit(c cpuOps) (bool, error) {
	db := h.doorbell.Load()
	if db == nil {
		return false, nil
	}
	regs, err := c.Regs()
	if err != nil {
		return true, err
	}
	// KVM reports a port-I/O exit with rip still at the out and skips it
	// on the next KVM_RUN only if rip was left there (older KVMs skipped
	// it before exiting); either way rip is rewritten below.
	if out := db.entry + doorbellOut; regs.RIP != out && regs.RIP != out+2 {
		return false, nil
	}
	// 64-bit interrupt frame: rip, cs, rflags, rsp, ss (#BP has no error code).
	var raw [40]byte
	if err := h.readVirt(c, regs.RSP, raw[:]); err != nil {
		return true, fmt.Errorf("reading the #BP frame at %#x: %w", regs.RSP, err)
	}
	le := binary.LittleEndian
	frame := [5]uint64{le.Uint64(raw[0:]), le.Uint64(raw[8:]), le.Uint64(raw[16:]), le.Uint64(raw[24:]), le.Uint64(raw[32:])}
	atHandler := regs
	atHandler.RIP = db.handler
	if frame[1]&3 != 0 {
		// From user mode: never a probe; the guest's handler takes it.
		return true, c.SetRegs(atHandler)
	}
	h.stats.Breakpoint.Add(1)
	interrupted := regs
	interrupted.RIP = frame[0] - 1 // at the int3, as the other paths report it
	interrupted.RFLAGS = frame[2]
	interrupted.RSP = frame[3]
	if err := c.SetRegs(interrupted); err != nil {
		return true, err
	}
	if h.dispatch(c, DebugEvent{Kind: DebugBreakpoint, RIP: interrupted.RIP}) {
		return true, nil
	}
	return true, c.SetRegs(atHandler)
}

// readVirt reads guest-virtual memory through the vCPU's translation.
func (h *exitHandler) readVirt(c cpuOps, va uint64, p []byte) error {
	for len(p) > 0 {
		gpa, ok, err := c.translate(va)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%#x is not mapped", va)
		}
		n := min(len(p), int(0x1000-va&0xfff))
		if err := h.mem.ReadPhys(gpa, p[:n]); err != nil {
			return err
		}
		p, va = p[n:], va+uint64(n)
	}
	return nil
}
