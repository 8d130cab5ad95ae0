package vmm

import (
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// VCPUState is where a vCPU is in its life. Every change happens on
// the vCPU's own thread, so a request running there sees a stable state.
type VCPUState int32

const (
	// VCPUCreated: the thread serves requests; the guest has not run.
	VCPUCreated VCPUState = iota
	// VCPURunning: in its exit loop (requests are served between exits).
	VCPURunning
	// VCPUPaused: parked on its thread by a pause request, out of KVM_RUN.
	VCPUPaused
	// VCPUExited: the loop has ended; the thread serves requests until
	// the VM is closed.
	VCPUExited
)

var vcpuStateNames = [...]string{"created", "running", "paused", "exited"}

func (s VCPUState) String() string {
	if s < 0 || int(s) >= len(vcpuStateNames) {
		return "unknown"
	}
	return vcpuStateNames[s]
}

// Errors of vCPU requests.
var (
	// ErrOwnThread: a request made on the vCPU's own thread (a debug hook
	// or a Do callback), which would wait for itself.
	ErrOwnThread = errors.New("request from the vCPU's own thread")
	// ErrVCPUState: the vCPU's state does not allow the request.
	ErrVCPUState = errors.New("request not allowed in the vCPU's state")
)

// StateError is a request the vCPU's state refused.
type StateError struct {
	CPU   int
	Op    string
	State VCPUState
}

func (e *StateError) Error() string {
	return fmt.Sprintf("vCPU %d: %s refused: the vCPU is %s", e.CPU, e.Op, e.State)
}

func (e *StateError) Is(target error) bool { return target == ErrVCPUState }

// VCPU is one virtual CPU: one goroutine locked to one OS thread from
// creation to Close, on which every ioctl on the vCPU fd happens (the run
// loop, and requests before, between and after its exits). Other
// goroutines ask through Do.
type VCPU struct {
	id     int
	fd     int
	runBuf []byte
	run    runView
	life   *lifetime // the VM's: kicks write runBuf, which Close unmaps
	tid    atomic.Int32
	state  atomic.Int32
	reqs   chan request
	runs   chan runStart
	quit   chan struct{}
	gone   chan struct{} // closed when the thread has ended

	debug   uint32 // current KVM_GUESTDBG_* control word
	swBP    bool
	stepped bool
	hw      hwBreakState // hardware breakpoints (hwbreak.go)
}

type request struct {
	f     func(CPU) error
	reply chan error
}

// runStart starts the exit loop; its end is sent on end.
type runStart struct {
	h    *exitHandler
	stop *atomic.Bool
	end  chan<- loopEnd
}

type loopEnd struct {
	reason StopReason
	err    error
}

func newVCPU(id, fd int, runBuf []byte, life *lifetime) *VCPU {
	v := &VCPU{
		id: id, fd: fd, runBuf: runBuf, run: newRunView(runBuf), life: life,
		reqs: make(chan request, 16), runs: make(chan runStart, 1),
		quit: make(chan struct{}), gone: make(chan struct{}),
	}
	ready := make(chan struct{})
	go v.thread(ready)
	<-ready
	return v
}

// thread is the vCPU's one OS thread. It never unlocks: the thread ends
// with the goroutine instead of carrying vCPU state into the scheduler.
func (v *VCPU) thread(ready chan<- struct{}) {
	defer close(v.gone)
	runtime.LockOSThread()
	v.tid.Store(int32(unix.Gettid()))
	close(ready)
	for {
		select {
		case r := <-v.reqs:
			r.reply <- r.f(v)
		case s := <-v.runs:
			reason, err := v.loop(s.h, s.stop)
			v.state.Store(int32(VCPUExited))
			s.end <- loopEnd{reason, err}
		case <-v.quit:
			return
		}
	}
}

// stopThread ends the thread once no request can arrive (VM closed).
func (v *VCPU) stopThread() {
	close(v.quit)
	<-v.gone
}

// State is the vCPU's state now (it may change right after).
func (v *VCPU) State() VCPUState { return VCPUState(v.state.Load()) }

func (v *VCPU) onThread() bool { return int32(unix.Gettid()) == v.tid.Load() }

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
	hwCtl, dr := v.hw.compose()
	ctl |= hwCtl
	if ctl == v.debug && dr == v.hw.applied {
		return nil
	}
	d := guestDebug{Control: ctl, DebugReg: dr}
	if err := ioctlPtr(v.fd, kvmSetGuestDebug, &d); err != nil {
		return wrap("KVM_SET_GUEST_DEBUG", err)
	}
	v.debug = ctl
	v.hw.applied = dr
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
// once; before Run and after the loop the thread serves it directly.
// From the vCPU's own thread it fails with ErrOwnThread, after Close
// with ErrClosed.
func (v *VCPU) Do(f func(CPU) error) error { return v.request("Do", f) }

func (v *VCPU) request(op string, f func(CPU) error) error {
	if v.onThread() {
		return fmt.Errorf("vCPU %d: %s: %w", v.id, op, ErrOwnThread)
	}
	if !v.life.enter() {
		return ErrClosed
	}
	defer v.life.exit()
	r := request{f: f, reply: make(chan error, 1)}
	v.reqs <- r // the thread outlives every request in flight (lifetime)
	v.kick()
	return <-r.reply
}

// pause parks the vCPU on its thread: parked runs there with the vCPU in
// VCPUPaused, and the vCPU goes back to its previous state after it. Only
// a created or running vCPU can be paused.
func (v *VCPU) pause(parked func() error) error {
	return v.request("Pause", func(CPU) error {
		prev := v.State()
		if prev != VCPUCreated && prev != VCPURunning {
			return &StateError{CPU: v.id, Op: "Pause", State: prev}
		}
		v.state.Store(int32(VCPUPaused))
		defer v.state.Store(int32(prev))
		return parked()
	})
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

// loop runs the vCPU until a stop, on its thread. It returns the reason and the error.
func (v *VCPU) loop(h *exitHandler, stop *atomic.Bool) (StopReason, error) {
	v.state.Store(int32(VCPURunning))
	hdr := v.run.run()
	for {
		v.serveRequests()
		if stop.Load() {
			return StopRequested, nil
		}
		_, err := ioctl(v.fd, kvmRun, 0)
		if err != nil {
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
				v.setImmediateExit(false)
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
