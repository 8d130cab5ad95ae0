package vmm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/hvprobe/hvprobe/vmm/devices"
)

// StopReason says why the guest stopped running.
type StopReason int

const (
	// StopReset: the guest asked for a reset (i8042 pulse, triple fault,
	// KVM system event). With reboot=k and panic=-1 this is how a Linux
	// guest ends; the caller tells power-off from panic by the console.
	StopReset StopReason = iota + 1
	// StopShutdown: KVM reported a system shutdown event.
	StopShutdown
	// StopHalted: a vCPU executed HLT that KVM handed to user space.
	StopHalted
	// StopRequested: Stop was called (timeout, Ctrl-C, test end).
	StopRequested
	// StopError: the VMM could not go on; Err says why.
	StopError
)

func (r StopReason) String() string {
	switch r {
	case StopReset:
		return "guest reset"
	case StopShutdown:
		return "guest shutdown"
	case StopHalted:
		return "guest halted"
	case StopRequested:
		return "stopped by request"
	case StopError:
		return "error"
	}
	return "unknown"
}

// Exit decoding errors.
var (
	ErrEmulation     = errors.New("KVM could not emulate a guest instruction")
	ErrInternal      = errors.New("KVM internal error")
	ErrFailEntry     = errors.New("KVM failed to enter the guest")
	ErrUnhandledExit = errors.New("unhandled KVM exit")
)

// EmulationError describes an instruction the emulating KVM gave back.
type EmulationError struct {
	RIP    uint64
	Bytes  []byte
	Insn   string // decoded mnemonic, when decodable
	Symbol string // symbol+offset, when a symbolizer is configured
}

func (e *EmulationError) Error() string {
	s := fmt.Sprintf("KVM could not emulate %q (bytes % x) at rip %#x", e.Insn, e.Bytes, e.RIP)
	if e.Symbol != "" {
		s += " (" + e.Symbol + ")"
	}
	return s
}

func (e *EmulationError) Is(target error) bool { return target == ErrEmulation }

// cpuOps is a vCPU as the exit handler drives it: the CPU the debug hook
// sees plus the ioctls the assists need. Tests substitute a fake.
type cpuOps interface {
	CPU
	events() (VCPUEvents, error)
	setEvents(VCPUEvents) error
	fpu() (FPU, error)
	setFPU(FPU) error
	translate(va uint64) (gpa uint64, ok bool, err error)
	singleStepping() bool
}

// exitInfo is one decoded exit, copied out of the kvm_run page.
type exitInfo struct {
	reason   uint32
	io       ioExit
	ioData   []byte // the run page's data area for this I/O exit
	debug    debugExit
	internal internalExit
	system   systemEventExit
	mmio     mmioExit
}

// exitHandler turns exits into device accesses, debug events and assists.
// It is shared by all vCPUs; everything it touches is safe for that.
type exitHandler struct {
	bus       *devices.Bus
	mem       PhysMem
	hook      func() DebugHook
	symbolize func(uint64) string
	stats     *ExitStats
	doorbell  atomic.Pointer[int3Doorbell]
	fault     atomic.Pointer[TripleFault] // the first triple fault seen
	writes    watchState                  // write traps and hardware breakpoints (writetrap.go, hwbreak.go)
}

// handle processes one exit. A non-zero StopReason ends the vCPU's loop.
func (h *exitHandler) handle(c cpuOps, e *exitInfo) (StopReason, error) {
	switch e.reason {
	case exitIO:
		h.stats.IO.Add(1)
		if e.io.Port == DoorbellPort && e.io.Direction == ioDirOut {
			if done, err := h.doorbellExit(c); done || err != nil {
				return 0, err
			}
		}
		return 0, h.pio(e)
	case exitMMIO:
		h.stats.MMIO.Add(1)
		if e.mmio.IsWrite != 0 {
			// A store to a write-trapped page (writetrap.go).
			if done, err := h.completeWrite(c, e.mmio); done || err != nil {
				return 0, err
			}
		}
		if h.bus.MMIO(e.mmio.PhysAddr, e.mmio.Data[:min(e.mmio.Len, 8)], e.mmio.IsWrite != 0) {
			return 0, nil // a device's BAR
		}
		if e.mmio.IsWrite == 0 {
			// Nothing is mapped there: reads float high.
			for i := range e.mmio.Data {
				e.mmio.Data[i] = 0xff
			}
		}
		return 0, nil
	case exitIntr:
		return 0, nil
	case exitDebug:
		h.stats.Debug.Add(1)
		return 0, h.debug(c, e.debug)
	case exitHLT:
		return StopHalted, nil
	case exitShutdown:
		h.fault.CompareAndSwap(nil, h.tripleFault(c))
		return StopReset, nil // a triple fault resets a PC
	case exitSystemEvent:
		if e.system.Type == systemEventReset {
			return StopReset, nil
		}
		return StopShutdown, nil
	case exitInternalError:
		if e.internal.Suberror == internalErrorEmulation {
			h.stats.Emulation.Add(1)
			return h.emulationFailure(c, e.internal)
		}
		return StopError, fmt.Errorf("%w: suberror %d, data % x", ErrInternal, e.internal.Suberror, e.internal.Data[:min(e.internal.NData, 16)])
	case exitFailEntry:
		return StopError, fmt.Errorf("%w: hardware reason %#x", ErrFailEntry, e.internal.Suberror)
	}
	return StopError, fmt.Errorf("%w: reason %d", ErrUnhandledExit, e.reason)
}

func (h *exitHandler) pio(e *exitInfo) error {
	size := int(e.io.Size)
	for i := 0; i < int(e.io.Count); i++ {
		buf := e.ioData[i*size : (i+1)*size]
		for j := range buf {
			if e.io.Direction == ioDirOut {
				h.bus.Out(e.io.Port+uint16(j), buf[j])
			} else {
				buf[j] = h.bus.In(e.io.Port + uint16(j))
			}
		}
	}
	return nil
}

// debug handles KVM_EXIT_DEBUG: #BP from KVM_GUESTDBG_USE_SW_BP, #DB from
// single-step.
func (h *exitHandler) debug(c cpuOps, d debugExit) error {
	switch d.Exception {
	case 3:
		if h.dispatch(c, DebugEvent{Kind: DebugBreakpoint, RIP: d.PC}) {
			return nil
		}
		// Not ours: give the guest its #BP. rip still points at the int3;
		// KVM injects #BP as a soft exception with the exit's instruction
		// length, so the guest sees rip after the int3, as on bare metal.
		return h.injectException(c, 3)
	case 1:
		if hc, ok := c.(hwCPU); ok {
			// Hardware breakpoints and their step-overs (hwbreak.go).
			if done, err := h.hwDebug(hc, d); done || err != nil {
				return err
			}
		}
		if c.singleStepping() {
			h.dispatch(c, DebugEvent{Kind: DebugSingleStep, RIP: d.PC})
			return nil
		}
		return h.injectException(c, 1)
	}
	return fmt.Errorf("%w: debug exit for exception %d at %#x", ErrUnhandledExit, d.Exception, d.PC)
}

func (h *exitHandler) dispatch(c cpuOps, ev DebugEvent) bool {
	hook := h.hook()
	if hook == nil {
		return false
	}
	return hook.HandleDebug(c, ev)
}

func (h *exitHandler) injectException(c cpuOps, vector uint8) error {
	ev, err := c.events()
	if err != nil {
		return fmt.Errorf("injecting exception %d: %w", vector, err)
	}
	ev.Exception.Injected = 1
	ev.Exception.Nr = vector
	ev.Exception.HasErrorCode = 0
	ev.Exception.Pending = 0
	ev.Flags = 0
	if err := c.setEvents(ev); err != nil {
		return fmt.Errorf("injecting exception %d: %w", vector, err)
	}
	return nil
}

// emulationInsn extracts the instruction bytes of an emulation-failure
// exit. kvm.h lays them out as flags (data[0]), then insn_size (one byte)
// and insn_bytes[15]; an emulating KVM was seen reporting the size as a
// whole u64 in data[1] with the bytes from data[2]. Both are accepted.
func emulationInsn(in internalExit) []byte {
	if in.NData < 2 || in.Data[0]&1 == 0 {
		return nil
	}
	var raw [8 * 16]byte
	for i, d := range in.Data {
		binary.LittleEndian.PutUint64(raw[8*i:], d)
	}
	if n := in.Data[1]; n >= 1 && n <= 15 && in.NData >= 3 {
		return raw[16 : 16+n]
	}
	n := int(raw[8])
	if n < 1 || n > 15 {
		return nil
	}
	return raw[9 : 9+n]
}

// TripleFault is where a vCPU stood when the guest triple-faulted
// (KVM_EXIT_SHUTDOWN): a reset that printed nothing is otherwise
// undiagnosable.
type TripleFault struct {
	CPU                int
	RIP, RSP, RFLAGS   uint64
	CR0, CR2, CR3, CR4 uint64
	CS, SS             uint16
	IDTBase            uint64
	IDTLimit           uint16
	Symbol             string // RIP's symbol+offset, when a symbolizer is configured
	Pending            string // the exception or interrupt KVM had in hand
	Err                error  // reading the state failed
}

func (f *TripleFault) String() string {
	if f.Err != nil {
		return fmt.Sprintf("triple fault on vCPU %d (state unreadable: %v)", f.CPU, f.Err)
	}
	return fmt.Sprintf("triple fault on vCPU %d at rip=%#x%s rsp=%#x rflags=%#x cs=%#x ss=%#x cr0=%#x cr2=%#x cr3=%#x cr4=%#x idt=%#x/%#x%s",
		f.CPU, f.RIP, cond(f.Symbol != "", " ("+f.Symbol+")"), f.RSP, f.RFLAGS, f.CS, f.SS, f.CR0, f.CR2, f.CR3, f.CR4, f.IDTBase, f.IDTLimit,
		cond(f.Pending != "", " "+f.Pending))
}

func cond(ok bool, s string) string {
	if ok {
		return s
	}
	return ""
}

func (h *exitHandler) tripleFault(c cpuOps) *TripleFault {
	f := &TripleFault{CPU: c.ID()}
	regs, err := c.Regs()
	if err != nil {
		f.Err = err
		return f
	}
	sr, err := c.Sregs()
	if err != nil {
		f.Err = err
		return f
	}
	f.RIP, f.RSP, f.RFLAGS = regs.RIP, regs.RSP, regs.RFLAGS
	f.CR0, f.CR2, f.CR3, f.CR4 = sr.CR0, sr.CR2, sr.CR3, sr.CR4
	f.CS, f.SS = sr.CS.Selector, sr.SS.Selector
	f.IDTBase, f.IDTLimit = sr.IDT.Base, sr.IDT.Limit
	if h.symbolize != nil {
		f.Symbol = h.symbolize(regs.RIP)
	}
	if ev, err := c.events(); err == nil {
		switch {
		case ev.Exception.Injected != 0 || ev.Exception.Pending != 0:
			f.Pending = fmt.Sprintf("exception %d (error code %#x)", ev.Exception.Nr, ev.Exception.ErrorCode)
		case ev.Interrupt.Injected != 0:
			f.Pending = fmt.Sprintf("interrupt %d", ev.Interrupt.Nr)
		}
	}
	return f
}
