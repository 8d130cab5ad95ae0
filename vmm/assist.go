package vmm

import (
	"encoding/binary"
	"fmt"

	"github.com/hvprobe/hvprobe/internal/x86dec"
	"golang.org/x/arch/x86/x86asm"
)

// The assists complete instructions an emulating KVM (ENVIRONMENT.md:
// PVM) hands back as emulation failures. On hardware KVM none of this
// runs: the CPU executes these instructions itself.

// emulationFailure handles KVM_EXIT_INTERNAL_ERROR / emulation.
func (h *exitHandler) emulationFailure(c cpuOps, in internalExit) (StopReason, error) {
	regs, err := c.Regs()
	if err != nil {
		return StopError, fmt.Errorf("reading registers after an emulation failure: %w", err)
	}
	code := emulationInsn(in)
	fail := func(insn string) (StopReason, error) {
		e := &EmulationError{RIP: regs.RIP, Bytes: code, Insn: insn}
		if h.symbolize != nil {
			e.Symbol = h.symbolize(regs.RIP)
		}
		return StopError, e
	}
	if len(code) == 0 {
		return fail("(no instruction bytes reported)")
	}
	if code[0] == 0xcc {
		// A probe's int3 arrives this way with rip at the int3 itself,
		// the same event as KVM_EXIT_DEBUG/#BP on hardware KVM.
		h.stats.Breakpoint.Add(1)
		if h.dispatch(c, DebugEvent{Kind: DebugBreakpoint, RIP: regs.RIP}) {
			return 0, nil
		}
		// Not ours (the kernel's int3 self-test, a guest debugger): the
		// guest's #BP handler expects rip after the int3.
		regs.RIP++
		if err := c.SetRegs(regs); err != nil {
			return StopError, err
		}
		return 0, h.injectException(c, 3)
	}
	inst, err := x86dec.Decode(code)
	if err != nil {
		return fail("(undecodable)")
	}
	switch inst.Op {
	case x86asm.FWAIT:
		// No x87 exception can be pending in a guest that never unmasks
		// them; fwait is then a no-op.
		h.stats.Assists.Add(1)
		regs.RIP += uint64(inst.Len)
		return 0, c.SetRegs(regs)
	case x86asm.LDMXCSR, x86asm.STMXCSR:
		h.stats.Assists.Add(1)
		if err := h.mxcsr(c, &regs, inst); err != nil {
			return StopError, fmt.Errorf("assisting %v at %#x: %w", inst, regs.RIP, err)
		}
		return 0, nil
	}
	return fail(inst.String())
}

// mxcsr emulates ldmxcsr/stmxcsr m32 through the vCPU's FPU state.
func (h *exitHandler) mxcsr(c cpuOps, regs *Regs, inst x86asm.Inst) error {
	m, ok := inst.Args[0].(x86asm.Mem)
	if !ok {
		return fmt.Errorf("operand %v is not memory", inst.Args[0])
	}
	va, err := effectiveAddress(c, regs, inst, m)
	if err != nil {
		return err
	}
	gpa, ok, err := c.translate(va)
	if err != nil {
		return err
	}
	if !ok || (va&0xfff) > 0xffc {
		return fmt.Errorf("operand at %#x is not mapped or crosses a page", va)
	}
	fpu, err := c.fpu()
	if err != nil {
		return err
	}
	var b [4]byte
	if inst.Op == x86asm.LDMXCSR {
		if err := h.mem.ReadPhys(gpa, b[:]); err != nil {
			return err
		}
		fpu.MXCSR = binary.LittleEndian.Uint32(b[:])
		if err := c.setFPU(fpu); err != nil {
			return err
		}
	} else {
		binary.LittleEndian.PutUint32(b[:], fpu.MXCSR)
		if err := h.mem.WritePhys(gpa, b[:]); err != nil {
			return err
		}
	}
	regs.RIP += uint64(inst.Len)
	return c.SetRegs(*regs)
}

// effectiveAddress computes a 64-bit memory operand's linear address.
func effectiveAddress(c cpuOps, regs *Regs, inst x86asm.Inst, m x86asm.Mem) (uint64, error) {
	var a uint64
	if m.Base == x86asm.RIP {
		a = regs.RIP + uint64(inst.Len)
	} else if m.Base != 0 {
		v, ok := regs.GPR(m.Base)
		if !ok {
			return 0, fmt.Errorf("unsupported base register %v", m.Base)
		}
		a = *v
	}
	if m.Index != 0 {
		v, ok := regs.GPR(m.Index)
		if !ok {
			return 0, fmt.Errorf("unsupported index register %v", m.Index)
		}
		a += *v * uint64(m.Scale)
	}
	a += uint64(m.Disp)
	if m.Segment == x86asm.FS || m.Segment == x86asm.GS {
		s, err := c.Sregs()
		if err != nil {
			return 0, err
		}
		if m.Segment == x86asm.FS {
			a += s.FS.Base
		} else {
			a += s.GS.Base
		}
	}
	return a, nil
}
