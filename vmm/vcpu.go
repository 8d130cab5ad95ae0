package vmm

import (
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// ErrStopped: the vCPU has left its run loop.
var ErrStopped = errors.New("vCPU stopped")

// VCPU is one virtual CPU. Its run loop is one goroutine locked to one OS
// thread for the vCPU's whole life; every ioctl on the vCPU fd happens on
// that thread. Other goroutines ask through Do.
type VCPU struct {
	id      int
	fd      int
	runBuf  []byte
	run     runView
	tid     atomic.Int32
	reqs    chan request
	done    chan struct{}
	debug   uint32 // current KVM_GUESTDBG_* control word
	swBP    bool
	stepped bool
}

type request struct {
	f     func(CPU) error
	reply chan error
}

// ID is the vCPU index (and its APIC ID).
func (v *VCPU) ID() int { return v.id }

// Regs reads the general registers (KVM_GET_REGS).
func (v *VCPU) Regs() (Regs, error) {
	var r Regs
	err := ioctlPtr(v.fd, kvmGetRegs, &r)
	return r, wrap("KVM_GET_REGS", err)
}

// SetRegs writes the general registers (KVM_SET_REGS).
func (v *VCPU) SetRegs(r Regs) error { return wrap("KVM_SET_REGS", ioctlPtr(v.fd, kvmSetRegs, &r)) }

// Sregs reads the segment and control registers.
func (v *VCPU) Sregs() (Sregs, error) {
	var s Sregs
	err := ioctlPtr(v.fd, kvmGetSregs, &s)
	return s, wrap("KVM_GET_SREGS", err)
}

// SetSregs writes the segment and control registers.
func (v *VCPU) SetSregs(s Sregs) error { return wrap("KVM_SET_SREGS", ioctlPtr(v.fd, kvmSetSregs, &s)) }

// MSR reads one MSR.
func (v *VCPU) MSR(index uint32) (uint64, error) {
	e := []MSREntry{{Index: index}}
	n, err := msrIoctl(v.fd, kvmGetMSRs, e)
	if err != nil {
		return 0, wrap("KVM_GET_MSRS", err)
	}
	if n != 1 {
		return 0, fmt.Errorf("reading MSR %#x: %w", index, errShortMSR)
	}
	return e[0].Data, nil
}

// SetSingleStep turns single-stepping on or off for the next KVM_RUN.
func (v *VCPU) SetSingleStep(on bool) error {
	v.stepped = on
	return v.applyDebug()
}

func (v *VCPU) singleStepping() bool { return v.stepped }

// setSoftwareBreakpoints makes every guest int3 exit to the VMM.
func (v *VCPU) setSoftwareBreakpoints(on bool) error {
	v.swBP = on
	return v.applyDebug()
}

func (v *VCPU) applyDebug() error {
	var ctl uint32
	if v.swBP {
		ctl |= guestDbgEnable | guestDbgUseSWBP
	}
	if v.stepped {
		ctl |= guestDbgEnable | guestDbgSingleStep
	}
	if ctl == v.debug {
		return nil
	}
	d := guestDebug{Control: ctl}
	if err := ioctlPtr(v.fd, kvmSetGuestDebug, &d); err != nil {
		return wrap("KVM_SET_GUEST_DEBUG", err)
	}
	v.debug = ctl
	return nil
}

func (v *VCPU) events() (VCPUEvents, error) {
	var e VCPUEvents
	err := ioctlPtr(v.fd, kvmGetVCPUEvents, &e)
	return e, wrap("KVM_GET_VCPU_EVENTS", err)
}

func (v *VCPU) setEvents(e VCPUEvents) error {
	return wrap("KVM_SET_VCPU_EVENTS", ioctlPtr(v.fd, kvmSetVCPUEvents, &e))
}

func (v *VCPU) fpu() (FPU, error) {
	var f FPU
	err := ioctlPtr(v.fd, kvmGetFPU, &f)
	return f, wrap("KVM_GET_FPU", err)
}

func (v *VCPU) setFPU(f FPU) error { return wrap("KVM_SET_FPU", ioctlPtr(v.fd, kvmSetFPU, &f)) }

// Translate asks KVM to translate a guest virtual address with the vCPU's
// current paging mode (KVM_TRANSLATE): the reference introspect's page
// walker is checked against.
func (v *VCPU) Translate(va uint64) (gpa uint64, ok bool, err error) { return v.translate(va) }

func (v *VCPU) translate(va uint64) (uint64, bool, error) {
	t := translation{LinearAddress: va}
	if err := ioctlPtr(v.fd, kvmTranslate, &t); err != nil {
		return 0, false, wrap("KVM_TRANSLATE", err)
	}
	return t.PhysicalAddress, t.Valid != 0, nil
}

func (v *VCPU) lapic() (LAPICState, error) {
	var l LAPICState
	err := ioctlPtr(v.fd, kvmGetLAPIC, &l)
	return l, wrap("KVM_GET_LAPIC", err)
}

func (v *VCPU) setLAPIC(l LAPICState) error {
	return wrap("KVM_SET_LAPIC", ioctlPtr(v.fd, kvmSetLAPIC, &l))
}

// Do runs f on the vCPU's thread while the vCPU is out of KVM_RUN and
// waits for it. The request is queued before the kick, so the loop finds
// it whether the kick interrupts KVM_RUN or makes the next one return at
// once. It must not be called from that thread (a debug hook
// already is on it).
func (v *VCPU) Do(f func(CPU) error) error {
	r := request{f: f, reply: make(chan error, 1)}
	select {
	case v.reqs <- r:
	case <-v.done:
		return ErrStopped
	}
	v.kick()
	select {
	case err := <-r.reply:
		return err
	case <-v.done:
		return ErrStopped
	}
}

func (v *VCPU) serveRequests() {
	for {
		select {
		case r := <-v.reqs:
			r.reply <- r.f(v)
		default:
			return
		}
	}
}

// loop runs the vCPU until a stop. It returns the reason and the error.
func (v *VCPU) loop(h *exitHandler, stop *atomic.Bool) (StopReason, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	v.tid.Store(int32(unix.Gettid()))
	defer v.tid.Store(0)
	hdr := v.run.run()
	for {
		v.serveRequests()
		if stop.Load() {
			return StopRequested, nil
		}
		_, err := ioctl(v.fd, kvmRun, 0)
		if err != nil {
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
				atomic.StoreUint32((*uint32)(v.run.p), 0)
				continue
			}
			return StopError, wrap("KVM_RUN", err)
		}
		h.stats.Total.Add(1)
		e := v.decode(hdr)
		reason, err := h.handle(v, &e)
		if e.reason == exitMMIO && e.mmio.IsWrite == 0 {
			copy(v.run.union()[8:16], e.mmio.Data[:])
		}
		if reason != 0 || err != nil {
			if reason == 0 {
				reason = StopError
			}
			return reason, err
		}
	}
}

func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", op, err)
}
