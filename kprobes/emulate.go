package kprobes

import (
	"encoding/binary"
	"math/bits"

	"github.com/hvprobe/hvprobe/vmm"
	"golang.org/x/arch/x86/x86asm"
)

// Arithmetic flags in RFLAGS.
const (
	flagCF = 1 << 0
	flagPF = 1 << 2
	flagAF = 1 << 4
	flagZF = 1 << 6
	flagSF = 1 << 7
	flagOF = 1 << 11

	arithFlags = flagCF | flagPF | flagAF | flagZF | flagSF | flagOF
)

// gpr returns the vmm.Regs field holding the 64-bit register that r (a
// 32- or 64-bit GPR) names.
func gpr(regs *vmm.Regs, r x86asm.Reg) *uint64 {
	if isGPR32(r) {
		r = r - x86asm.EAX + x86asm.RAX
	}
	switch r {
	case x86asm.RAX:
		return &regs.RAX
	case x86asm.RCX:
		return &regs.RCX
	case x86asm.RDX:
		return &regs.RDX
	case x86asm.RBX:
		return &regs.RBX
	case x86asm.RSP:
		return &regs.RSP
	case x86asm.RBP:
		return &regs.RBP
	case x86asm.RSI:
		return &regs.RSI
	case x86asm.RDI:
		return &regs.RDI
	case x86asm.R8:
		return &regs.R8
	case x86asm.R9:
		return &regs.R9
	case x86asm.R10:
		return &regs.R10
	case x86asm.R11:
		return &regs.R11
	case x86asm.R12:
		return &regs.R12
	case x86asm.R13:
		return &regs.R13
	case x86asm.R14:
		return &regs.R14
	case x86asm.R15:
		return &regs.R15
	}
	panic("kprobes: gpr called with non-GPR " + r.String())
}

// resultFlags computes ZF, SF and PF of a 64-bit result.
func resultFlags(res uint64) uint64 {
	var f uint64
	if res == 0 {
		f |= flagZF
	}
	if res>>63 != 0 {
		f |= flagSF
	}
	if bits.OnesCount8(uint8(res))%2 == 0 {
		f |= flagPF
	}
	return f
}

// addFlags returns a+b and the arithmetic flags a 64-bit ADD sets.
func addFlags(a, b uint64) (uint64, uint64) {
	res, carry := bits.Add64(a, b, 0)
	f := resultFlags(res)
	if carry != 0 {
		f |= flagCF
	}
	if (^(a^b)&(a^res))>>63 != 0 {
		f |= flagOF
	}
	if (a^b^res)&0x10 != 0 {
		f |= flagAF
	}
	return res, f
}

// subFlags returns a-b and the arithmetic flags a 64-bit SUB sets.
func subFlags(a, b uint64) (uint64, uint64) {
	res, borrow := bits.Sub64(a, b, 0)
	f := resultFlags(res)
	if borrow != 0 {
		f |= flagCF
	}
	if ((a^b)&(a^res))>>63 != 0 {
		f |= flagOF
	}
	if (a^b^res)&0x10 != 0 {
		f |= flagAF
	}
	return res, f
}

// emulate executes an emulable instruction on regs (and, for push, on the
// guest stack through k), as the CPU would at addr. It returns false, with
// regs untouched, when it cannot (the stack write failed): the caller then
// executes the instruction in a slot so that the guest takes the fault the
// CPU would have raised.
func emulate(in *insn, addr uint64, regs *vmm.Regs, k Kernel) bool {
	next := addr + uint64(in.inst.Len)
	switch in.emul {
	case emulNop:
	case emulPush:
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], *gpr(regs, in.src))
		if k.WriteVirt(regs.RSP-8, b[:]) != nil {
			return false
		}
		regs.RSP -= 8
	case emulMov:
		v := *gpr(regs, in.src)
		if isGPR32(in.dst) {
			v = uint64(uint32(v)) // a 32-bit write zero-extends
		}
		*gpr(regs, in.dst) = v
	case emulAdd, emulSub:
		d := gpr(regs, in.dst)
		var res, f uint64
		if in.emul == emulAdd {
			res, f = addFlags(*d, in.imm)
		} else {
			res, f = subFlags(*d, in.imm)
		}
		*d = res
		regs.RFLAGS = regs.RFLAGS&^arithFlags | f
	case emulXorSelf:
		*gpr(regs, in.dst) = 0
		// Logical ops clear CF and OF; AF is architecturally undefined and
		// cleared by current CPUs.
		regs.RFLAGS = regs.RFLAGS&^arithFlags | resultFlags(0)
	default:
		return false
	}
	regs.RIP = next
	return true
}
