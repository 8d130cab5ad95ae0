package vmm

import (
	"errors"
	"fmt"
)

// Hardware breakpoints and watchpoints: hvprobe's use of a vCPU's debug
// registers through KVM_SET_GUEST_DEBUG with KVM_GUESTDBG_USE_HW_BP. They
// never change guest memory, so a guest reading its text or data cannot
// find them (unlike an int3, docs/QUIRKS.md #34).
//
// Two owners share the four slots: the guest (its own DR0-3/DR7, what
// KVM_GET/SET_DEBUGREGS and the guest's mov to/from %drN see) and hvprobe
// (kvm_guest_debug.arch.debugreg, which KVM loads into the hardware
// instead while USE_HW_BP is on). KVM keeps them apart: the guest still
// reads back its own values (measured, QUIRKS #39). So that the guest's
// breakpoints keep firing, the debug registers hvprobe gives KVM are the
// guest's enabled slots plus hvprobe's; a slot the guest has enabled is
// refused (GuestSlotError), and a #DB from a guest slot is reflected into
// the guest with its DR6 bit set. The guest's DR7 is re-read whenever
// hvprobe sets or clears a slot and at each of hvprobe's debug exits; a
// slot the guest enables in between takes effect from then on (KVM gives
// user space no exit on a guest DR write).
//
// An execute breakpoint is a fault: the vCPU stops with rip at the
// instruction. hvprobe resumes it by stepping over it with its own
// breakpoints off (one KVM_GUESTDBG_SINGLESTEP, with BLOCKIRQ when KVM
// offers it), since RFLAGS.RF is ignored by an emulating KVM (PVM, QUIRKS
// #37). A data watchpoint is a trap: rip is after the access.
//
// Hosts differ (ProbeHWBreakpoints): PVM fires execute breakpoints but no
// data watchpoints; the nested KVM under QEMU TCG fires neither (#18).
// There, write traps (writetrap.go) carry the data watches.

// HWBreakKind is what a hardware breakpoint fires on (DR7's RW field).
type HWBreakKind uint8

const (
	// HWExecute: the instruction at Addr is about to execute (RW=00).
	HWExecute HWBreakKind = iota
	// HWWrite: a store touches [Addr, Addr+Len) (RW=01).
	HWWrite
	// HWReadWrite: a load or store touches [Addr, Addr+Len) (RW=11).
	HWReadWrite
)

func (k HWBreakKind) String() string {
	switch k {
	case HWExecute:
		return "execute"
	case HWWrite:
		return "write"
	case HWReadWrite:
		return "read/write"
	}
	return "unknown"
}

// HWBreakpoint is one debug-register slot's setting. Addr is a guest
// linear (virtual) address, as DR0-3 hold.
type HWBreakpoint struct {
	Kind HWBreakKind
	Addr uint64
	// Len is 1, 2, 4 or 8 bytes for a watchpoint, Addr aligned to it
	// (the CPU ignores the low address bits); 1 (or 0) for HWExecute.
	Len int
}

// HWBreakEvent is one of hvprobe's debug-register slots firing.
type HWBreakEvent struct {
	CPU  int
	Slot int // DR0-3
	Kind HWBreakKind
	Addr uint64 // the slot's address
	// RIP: at the instruction for HWExecute, after the accessing
	// instruction for a watchpoint.
	RIP uint64
}

// HWBreakHook receives hvprobe's hardware breakpoint events on the vCPU's
// thread (CPU valid during the call, as for DebugHook).
type HWBreakHook interface {
	HandleHWBreak(cpu CPU, ev HWBreakEvent)
}

// Errors of hardware breakpoints.
var (
	// ErrHWBreakpoint: a setting the debug registers cannot express.
	ErrHWBreakpoint = errors.New("bad hardware breakpoint")
	// ErrGuestSlot: the guest itself has the slot enabled.
	ErrGuestSlot = errors.New("debug register in use by the guest")
)

// GuestSlotError is a slot refused because the guest's DR7 enables it.
type GuestSlotError struct {
	CPU, Slot int
	GuestDR7  uint64
}

func (e *GuestSlotError) Error() string {
	return fmt.Sprintf("vCPU %d: DR%d is in use by the guest (its DR7 = %#x enables it); hvprobe leaves the guest's debug registers alone", e.CPU, e.Slot, e.GuestDR7)
}

func (e *GuestSlotError) Is(target error) bool { return target == ErrGuestSlot }

// DR6/DR7 bits.
const (
	dr6BS       = 1 << 14 // single-step
	dr6Fixed    = 0xffff0ff0
	dr7Reserved = 1 << 10
	dr7LE       = 1 << 8
	dr7GE       = 1 << 9
	// KVM_GUESTDBG_BLOCKIRQ: no interrupt injected during the step-over
	// (offered when KVM_CAP_SET_GUEST_DEBUG2 has the bit).
	guestDbgBlockIRQ = 0x100000
)

// check validates a slot number and setting.
func (bp HWBreakpoint) check(slot int) error {
	if slot < 0 || slot > 3 {
		return fmt.Errorf("%w: slot %d (the debug registers are DR0-DR3)", ErrHWBreakpoint, slot)
	}
	switch bp.Kind {
	case HWExecute:
		if bp.Len > 1 {
			return fmt.Errorf("%w: an execute breakpoint has length 1, not %d", ErrHWBreakpoint, bp.Len)
		}
		return nil
	case HWWrite, HWReadWrite:
	default:
		return fmt.Errorf("%w: kind %d", ErrHWBreakpoint, bp.Kind)
	}
	switch bp.Len {
	case 1, 2, 4, 8:
	default:
		return fmt.Errorf("%w: a %s watchpoint of %d bytes (1, 2, 4 or 8)", ErrHWBreakpoint, bp.Kind, bp.Len)
	}
	if bp.Addr%uint64(bp.Len) != 0 {
		return fmt.Errorf("%w: %s watchpoint at %#x is not aligned to its %d bytes (split it, or use a write trap)", ErrHWBreakpoint, bp.Kind, bp.Addr, bp.Len)
	}
	return nil
}

// dr7Bits is DR7's enable (L), RW and LEN bits for bp in slot.
func dr7Bits(slot int, bp HWBreakpoint) uint64 {
	var rw, ln uint64
	switch bp.Kind {
	case HWWrite:
		rw = 1
	case HWReadWrite:
		rw = 3
	}
	if bp.Kind != HWExecute {
		ln = map[int]uint64{1: 0, 2: 1, 8: 2, 4: 3}[bp.Len]
	}
	return 1<<(2*slot) | rw<<(16+4*slot) | ln<<(18+4*slot)
}

// guestEnabled is the mask (bit n = DRn) of slots a DR7 enables (L or G).
func guestEnabled(dr7 uint64) uint8 {
	var m uint8
	for n := range 4 {
		if dr7>>(2*n)&3 != 0 {
			m |= 1 << n
		}
	}
	return m
}

// hwBreakState is one vCPU's hardware breakpoints, on its thread.
type hwBreakState struct {
	slots    [4]*HWBreakpoint // hvprobe's
	guest    debugRegs        // the guest's own, as last read
	stepping bool             // stepping over an execute breakpoint
	blockIRQ bool             // KVM offers KVM_GUESTDBG_BLOCKIRQ
	applied  [8]uint64        // debugreg last given to KVM
}

func (s *hwBreakState) ours() uint8 {
	var m uint8
	for n, bp := range s.slots {
		if bp != nil {
			m |= 1 << n
		}
	}
	return m
}

// compose is KVM_SET_GUEST_DEBUG's control bits and debugreg[] for the
// slots: none while hvprobe has no slot (KVM then runs the guest on its
// own debug registers); else the guest's enabled slots as the guest set
// them plus hvprobe's (off while stepping over one of them). Pure.
func (s *hwBreakState) compose() (ctl uint32, dr [8]uint64) {
	if s.ours() == 0 {
		return 0, dr
	}
	ctl = guestDbgEnable | guestDbgUseHWBP
	dr7 := uint64(dr7Reserved)
	g := guestEnabled(s.guest.DR7)
	for n := range 4 {
		switch {
		case s.slots[n] != nil:
			if s.stepping {
				continue
			}
			dr[n] = s.slots[n].Addr
			dr7 |= dr7Bits(n, *s.slots[n])
			if s.slots[n].Kind != HWExecute {
				dr7 |= dr7LE | dr7GE
			}
		case g&(1<<n) != 0:
			dr[n] = s.guest.DB[n]
			dr7 |= s.guest.DR7 & (3<<(2*n) | 0xf<<(16+4*n))
			dr7 |= s.guest.DR7 & (dr7LE | dr7GE)
		}
	}
	dr[6] = dr6Fixed
	dr[7] = dr7
	if s.stepping {
		ctl |= guestDbgSingleStep
		if s.blockIRQ {
			ctl |= guestDbgBlockIRQ
		}
	}
	return ctl, dr
}

// hwCPU is a vCPU as the hardware-breakpoint exit path drives it; tests
// substitute a fake with synthetic exits.
type hwCPU interface {
	cpuOps
	hwBreak() *hwBreakState
	applyDebug() error
	guestDRs() (debugRegs, error)
	setGuestDRs(debugRegs) error
}

func (v *VCPU) hwBreak() *hwBreakState { return &v.hw }

func (v *VCPU) guestDRs() (debugRegs, error) {
	var d debugRegs
	err := ioctlPtr(v.fd, kvmGetDebugRegs, &d)
	return d, wrap("KVM_GET_DEBUGREGS", err)
}

func (v *VCPU) setGuestDRs(d debugRegs) error {
	return wrap("KVM_SET_DEBUGREGS", ioctlPtr(v.fd, kvmSetDebugRegs, &d))
}

// setHWBreakpoint arms (bp non-nil) or clears hvprobe's slot, on the
// vCPU's thread.
func setHWBreakpoint(c hwCPU, slot int, bp *HWBreakpoint) error {
	if bp != nil {
		if err := bp.check(slot); err != nil {
			return err
		}
	} else if slot < 0 || slot > 3 {
		return fmt.Errorf("%w: slot %d (the debug registers are DR0-DR3)", ErrHWBreakpoint, slot)
	}
	s := c.hwBreak()
	g, err := c.guestDRs()
	if err != nil {
		return err
	}
	s.guest = g
	if bp != nil && guestEnabled(g.DR7)&(1<<slot) != 0 {
		return &GuestSlotError{CPU: c.ID(), Slot: slot, GuestDR7: g.DR7}
	}
	prev := s.slots[slot]
	prevStepping := s.stepping
	if bp != nil {
		b := *bp
		if b.Kind == HWExecute {
			b.Len = 1
		}
		s.slots[slot] = &b
	} else {
		s.slots[slot] = nil
	}
	if s.ours() == 0 {
		s.stepping = false // no step-over is owed once hvprobe has no slot
	}
	if err := c.applyDebug(); err != nil {
		s.slots[slot], s.stepping = prev, prevStepping
		return err
	}
	return nil
}

// SetHWBreakpoint arms hvprobe's debug-register slot (0-3) on one vCPU.
// Refused: a setting DR7 cannot express (ErrHWBreakpoint: slot, kind,
// length 1/2/4/8, alignment) and a slot the guest's own DR7 enables
// (*GuestSlotError). The guest's debug registers are left as they are.
// Events go to the HWBreakHook. Not from the vCPU's own thread (use
// VCPU methods through Do there: ErrOwnThread).
func (vm *VM) SetHWBreakpoint(cpu, slot int, bp HWBreakpoint) error {
	blockIRQ := vm.checkExtension(capSetGuestDebug2)&guestDbgBlockIRQ != 0
	return vm.Do(cpu, func(c CPU) error {
		v := c.(*VCPU)
		v.hw.blockIRQ = blockIRQ
		return setHWBreakpoint(v, slot, &bp)
	})
}

// ClearHWBreakpoint frees hvprobe's slot on one vCPU; with no slot left
// the vCPU runs on the guest's own debug registers again.
func (vm *VM) ClearHWBreakpoint(cpu, slot int) error {
	return vm.Do(cpu, func(c CPU) error { return setHWBreakpoint(c.(*VCPU), slot, nil) })
}

// SetHWBreakHook installs (nil: removes) the hardware-breakpoint hook.
func (vm *VM) SetHWBreakHook(h HWBreakHook) {
	if h == nil {
		vm.handler.writes.hwHook.Store(nil)
		return
	}
	vm.handler.writes.hwHook.Store(&hwHookBox{h})
}

type hwHookBox struct{ h HWBreakHook }

// hwDebug handles a #DB exit (exception 1) if it is about hardware
// breakpoints: the end of a step-over, hvprobe's slots firing, or the
// guest's own slots (reflected into the guest). handled=false leaves the
// exit to the single-step path.
func (h *exitHandler) hwDebug(c hwCPU, d debugExit) (bool, error) {
	s := c.hwBreak()
	if s.stepping && d.DR6&dr6BS != 0 {
		s.stepping = false
		if err := c.applyDebug(); err != nil {
			return true, err
		}
		// The engine may have asked for this step as well.
		return !c.singleStepping(), nil
	}
	fired := uint8(d.DR6 & 0xf)
	if fired == 0 || s.ours() == 0 {
		return false, nil
	}
	if g, err := c.guestDRs(); err == nil {
		s.guest = g
	}
	ours := fired & s.ours()
	theirs := fired &^ s.ours() & guestEnabled(s.guest.DR7)
	exec := false
	if ours != 0 {
		r, err := c.Regs()
		if err != nil {
			return true, err
		}
		box := h.writes.hwHook.Load()
		for n := range 4 {
			bp := s.slots[n]
			if ours&(1<<n) == 0 || bp == nil {
				continue
			}
			if bp.Kind == HWExecute {
				exec = true
			}
			if box != nil {
				box.h.HandleHWBreak(c, HWBreakEvent{CPU: c.ID(), Slot: n, Kind: bp.Kind, Addr: bp.Addr, RIP: r.RIP})
			}
		}
	}
	if theirs != 0 {
		g := s.guest
		g.DR6 = g.DR6&^0xf | dr6Fixed | uint64(theirs)
		if err := c.setGuestDRs(g); err != nil {
			return true, err
		}
		s.guest = g
		if err := h.injectException(c, 1); err != nil {
			return true, err
		}
	}
	if exec && theirs == 0 {
		s.stepping = true
	}
	return true, c.applyDebug()
}
