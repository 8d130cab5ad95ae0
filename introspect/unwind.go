package introspect

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/hvprobe/hvprobe/guest"
	"github.com/hvprobe/hvprobe/vmm"
)

// ErrUnwind: a stack walk stopped before the stack's end (no unwind rule,
// an unreadable or looping stack). The frames found so far are still
// returned with it.
var ErrUnwind = errors.New("stack unwind stopped early")

// StackMemory reads guest-virtual memory as the stopped vCPU sees it
// (session's RunningKernel; probedef.Memory has the same method).
type StackMemory interface {
	ReadVirt(va uint64, p []byte) error
}

// DefaultUnwindDepth is PERF_MAX_STACK_DEPTH, the kernel's own bound for
// a callchain.
const DefaultUnwindDepth = 127

// Unwinder walks guest kernel stacks from a stopped vCPU's registers.
// The zero value walks frame pointers with the default bounds.
type Unwinder struct {
	// ORC, when set, is the kernel's ORC table at runtime addresses
	// (guest.ORC.Slid): frames are found as the kernel's ORC unwinder
	// finds them, through interrupt and exception frames. Without it the
	// rbp chain is followed, which needs CONFIG_FRAME_POINTER and misses
	// the caller of a function stopped before its push %rbp.
	ORC *guest.ORC
	// MaxDepth bounds the frames returned; 0 means DefaultUnwindDepth.
	MaxDepth int
	// InText reports whether an address is kernel text; the walk stops
	// at the first address that is not. nil accepts the kernel half
	// (bit 63 set).
	InText func(addr uint64) bool
	// Return maps a return address read from the stack at slot to the
	// real one before it is used: a kretprobe trampoline's address to the
	// return address the probe engine saved for that slot (as the
	// kernel's unwind_recover_ret_addr does). nil keeps addresses as read.
	Return func(addr, slot uint64) uint64
}

// Unwind returns the kernel call chain of a vCPU stopped in kernel mode:
// regs.RIP first, then return addresses, outermost last. It stops cleanly
// at user mode (a pt_regs frame with CS.RPL 3), at the ORC end-of-stack
// hint or a zero rbp, at a non-text address, or at MaxDepth. A walk
// stopped for any other reason returns what it found and an error
// wrapping ErrUnwind.
//
// Precondition: the vCPU is stopped; mem reads through its page tables.
func (u *Unwinder) Unwind(mem StackMemory, regs vmm.Regs) ([]uint64, error) {
	w := walker{u: u, mem: mem, max: u.MaxDepth}
	if w.max <= 0 {
		w.max = DefaultUnwindDepth
	}
	if !w.inText(regs.RIP) {
		return nil, nil
	}
	w.frames = append(w.frames, regs.RIP)
	if u.ORC != nil {
		return w.frames, w.orc(regs)
	}
	return w.frames, w.framePointers(regs.RBP)
}

type walker struct {
	u      *Unwinder
	mem    StackMemory
	max    int
	frames []uint64
}

func (w *walker) inText(addr uint64) bool {
	if w.u.InText != nil {
		return w.u.InText(addr)
	}
	return addr>>63 == 1
}

func (w *walker) ret(addr, slot uint64) uint64 {
	if w.u.Return != nil {
		return w.u.Return(addr, slot)
	}
	return addr
}

func (w *walker) read(va uint64) (uint64, error) {
	var b [8]byte
	if err := w.mem.ReadVirt(va, b[:]); err != nil {
		return 0, fmt.Errorf("reading the stack at %#x: %w: %w", va, ErrUnwind, err)
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// framePointers follows [rbp] = caller's rbp, [rbp+8] = return address.
// Frames must move up the stack, which also ends loops; a stack switch
// (irq stack to task stack) that goes down ends the walk with ErrUnwind.
func (w *walker) framePointers(bp uint64) error {
	for len(w.frames) < w.max {
		if bp == 0 {
			return nil
		}
		if bp&7 != 0 || bp>>63 == 0 {
			return fmt.Errorf("frame pointer %#x is not a kernel stack address: %w", bp, ErrUnwind)
		}
		next, err := w.read(bp)
		if err != nil {
			return err
		}
		ip, err := w.read(bp + 8)
		if err != nil {
			return err
		}
		ip = w.ret(ip, bp+8)
		if !w.inText(ip) {
			return nil
		}
		w.frames = append(w.frames, ip)
		if next != 0 && next <= bp {
			return fmt.Errorf("frame pointer %#x does not move up from %#x: %w", next, bp, ErrUnwind)
		}
		bp = next
	}
	return nil
}

// pt_regs offsets (arch/x86/include/asm/ptrace.h, x86-64).
const (
	ptR13 = 2 * 8
	ptBP  = 4 * 8
	ptR10 = 7 * 8
	ptDX  = 12 * 8
	ptDI  = 14 * 8
	ptIP  = 16 * 8 // IRET_FRAME_OFFSET: the hardware frame starts here
	ptCS  = 17 * 8
	ptSP  = 19 * 8
)

// orcState is the kernel's struct unwind_state, less the stack bounds.
type orcState struct {
	ip, sp, bp uint64
	// regs is the last pt_regs passed (partial: only the iret frame from
	// regs+ptIP on is real), prev the full one before a partial one.
	regs, prev uint64
	// live is the vCPU's own registers, a full set in place of a pt_regs
	// in memory, until a call frame or a full pt_regs replaces them.
	live *vmm.Regs
	full bool
	// signal: ip was interrupted, not returned to, so it is looked up
	// as is rather than as ip-1.
	signal bool
}

// reg is the kernel's get_reg: a register from the full pt_regs the walk
// last passed, or from the one before a partial (iret-only) frame.
func (w *walker) reg(s *orcState, off uint64) (uint64, bool, error) {
	if s.regs == 0 && s.live == nil {
		return 0, false, nil
	}
	at := s.prev
	if s.full {
		at = s.regs
	}
	if at != 0 {
		v, err := w.read(at + off)
		return v, err == nil, err
	}
	if s.live == nil {
		return 0, false, nil
	}
	r := s.live
	switch off {
	case ptR13:
		return r.R13, true, nil
	case ptBP:
		return r.RBP, true, nil
	case ptR10:
		return r.R10, true, nil
	case ptDX:
		return r.RDX, true, nil
	case ptDI:
		return r.RDI, true, nil
	}
	return 0, false, nil
}

// orc is unwind_next_frame of arch/x86/kernel/unwind_orc.c, repeated.
func (w *walker) orc(regs vmm.Regs) error {
	s := &orcState{ip: regs.RIP, sp: regs.RSP, bp: regs.RBP, live: &regs, full: true, signal: true}
	type frame struct{ ip, sp uint64 }
	seen := map[frame]bool{}
	for len(w.frames) < w.max {
		look := s.ip
		if !s.signal {
			look--
		}
		e, ok := w.u.ORC.Lookup(look)
		if !ok {
			return fmt.Errorf("no ORC entry for %#x: %w", s.ip, ErrUnwind)
		}
		switch e.Type {
		case guest.ORCEndOfStack:
			return nil
		case guest.ORCUndefined:
			return fmt.Errorf("ORC has no rule for %#x: %w", s.ip, ErrUnwind)
		}
		sp, err := w.cfa(s, e)
		if err != nil {
			return err
		}
		oldBP := s.bp
		switch e.Type {
		case guest.ORCCall:
			ip, err := w.read(sp - 8)
			if err != nil {
				return err
			}
			*s = orcState{ip: w.ret(ip, sp-8), sp: sp, bp: s.bp, signal: e.Signal}
		case guest.ORCRegs, guest.ORCRegsPartial:
			iret := sp
			if e.Type == guest.ORCRegs {
				iret = sp + ptIP
			}
			ip, err1 := w.read(iret)
			cs, err2 := w.read(iret + ptCS - ptIP)
			nsp, err3 := w.read(iret + ptSP - ptIP)
			if err := errors.Join(err1, err2, err3); err != nil {
				return err
			}
			if cs&3 != 0 {
				return nil // entered from user mode: the kernel stack ends here
			}
			if e.Type == guest.ORCRegs {
				*s = orcState{regs: sp, full: true}
			} else {
				// The full set before this frame stays readable.
				prev, live := s.prev, s.live
				if s.full {
					prev = s.regs
				}
				*s = orcState{regs: iret - ptIP, prev: prev, live: live}
			}
			s.ip, s.sp, s.bp, s.signal = w.ret(ip, iret), nsp, oldBP, true
		}
		switch e.BPReg {
		case guest.ORCRegUndefined:
			v, ok, err := w.reg(s, ptBP)
			if err != nil {
				return err
			}
			if ok {
				s.bp = v
			}
		case guest.ORCRegPrevSP:
			if s.bp, err = w.read(sp + uint64(int64(e.BPOffset))); err != nil {
				return err
			}
		case guest.ORCRegBP:
			if s.bp, err = w.read(oldBP + uint64(int64(e.BPOffset))); err != nil {
				return err
			}
		default:
			return fmt.Errorf("ORC bp rule %s at %#x: %w", e.BPReg, look, ErrUnwind)
		}
		if !w.inText(s.ip) {
			return nil
		}
		f := frame{s.ip, s.sp}
		if seen[f] {
			return fmt.Errorf("frame %#x sp %#x repeats: %w", s.ip, s.sp, ErrUnwind)
		}
		seen[f] = true
		w.frames = append(w.frames, s.ip)
	}
	return nil
}

// cfa finds the previous frame's stack pointer by the entry's sp rule.
func (w *walker) cfa(s *orcState, e guest.ORCEntry) (uint64, error) {
	off := uint64(int64(e.SPOffset))
	switch e.SPReg {
	case guest.ORCRegSP:
		return s.sp + off, nil
	case guest.ORCRegBP:
		return s.bp + off, nil
	case guest.ORCRegSPIndirect:
		v, err := w.read(s.sp)
		return v + off, err
	case guest.ORCRegBPIndirect:
		return w.read(s.bp + off)
	case guest.ORCRegR10, guest.ORCRegR13, guest.ORCRegDI, guest.ORCRegDX:
		pt := map[guest.ORCReg]uint64{guest.ORCRegR10: ptR10, guest.ORCRegR13: ptR13,
			guest.ORCRegDI: ptDI, guest.ORCRegDX: ptDX}[e.SPReg]
		v, ok, err := w.reg(s, pt)
		switch {
		case err != nil:
			return 0, err
		case !ok:
			return 0, fmt.Errorf("ORC sp rule %s at %#x without saved registers: %w", e.SPReg, s.ip, ErrUnwind)
		}
		return v, nil
	}
	return 0, fmt.Errorf("ORC sp rule %s at %#x: %w", e.SPReg, s.ip, ErrUnwind)
}
