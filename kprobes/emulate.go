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

// emulate executes an emulable instruction on regs (and on guest memory
// through k), as the CPU would at addr; regs are those the pre handlers
// left. It returns false, with regs and memory untouched, when it cannot
// (a memory access failed, a target is not canonical): the caller then
// executes the instruction in a slot so that the guest takes the fault the
// CPU would have raised.
func emulate(in *insn, addr uint64, regs *vmm.Regs, k Kernel) bool {
	r := *regs // all or nothing: regs is written only on success
	next := addr + uint64(in.inst.Len)
	r.RIP = next
	// Every case does its reads first and at most one write, last.
	switch in.emul {
	case emulNop:
	case emulPush:
		if !push(k, &r, *gpr(regs, in.src)) {
			return false
		}
	case emulPushImm:
		if !push(k, &r, in.imm) {
			return false
		}
	case emulPushMem:
		// The operand's address uses %rsp from before the push.
		v, ok := load(k, effAddr(in.mem, next, regs))
		if !ok || !push(k, &r, v) {
			return false
		}
	case emulPop:
		v, ok := load(k, r.RSP)
		if !ok {
			return false
		}
		r.RSP += 8
		*gpr(&r, in.dst) = v // pop %rsp loads the popped word
	case emulLeave:
		v, ok := load(k, r.RBP)
		if !ok {
			return false
		}
		r.RSP, r.RBP = r.RBP+8, v
	case emulMov:
		v := *gpr(regs, in.src)
		if isGPR32(in.dst) {
			v = uint64(uint32(v)) // a 32-bit write zero-extends
		}
		*gpr(&r, in.dst) = v
	case emulAdd, emulSub:
		d := gpr(&r, in.dst)
		var res, f uint64
		if in.emul == emulAdd {
			res, f = addFlags(*d, in.imm)
		} else {
			res, f = subFlags(*d, in.imm)
		}
		*d = res
		r.RFLAGS = r.RFLAGS&^arithFlags | f
	case emulXorSelf:
		*gpr(&r, in.dst) = 0
		// Logical ops clear CF and OF; AF is architecturally undefined and
		// cleared by current CPUs.
		r.RFLAGS = r.RFLAGS&^arithFlags | resultFlags(0)
	case emulJmp:
		if !branchTo(&r, next+uint64(in.rel)) {
			return false
		}
	case emulJcc:
		if jccTaken(in.inst.Op, &r) && !branchTo(&r, next+uint64(in.rel)) {
			return false
		}
	case emulCall:
		if !branchTo(&r, next+uint64(in.rel)) || !push(k, &r, next) {
			return false
		}
	case emulJmpInd:
		to, ok := indirectTarget(in, next, regs, k)
		if !ok || !branchTo(&r, to) {
			return false
		}
	case emulCallInd:
		to, ok := indirectTarget(in, next, regs, k)
		if !ok || !branchTo(&r, to) || !push(k, &r, next) {
			return false
		}
	case emulRet:
		to, ok := load(k, r.RSP)
		if !ok || !branchTo(&r, to) {
			return false
		}
		r.RSP += 8 + in.imm
	default:
		return false
	}
	*regs = r
	return true
}

// branchTo sets r.RIP to a branch target. A non-canonical one would fail
// the VM entry; the CPU raises #GP at the branch instead, which the slot
// reproduces, so it is refused.
func branchTo(r *vmm.Regs, to uint64) bool {
	r.RIP = to
	return canonical(to)
}

func indirectTarget(in *insn, next uint64, regs *vmm.Regs, k Kernel) (uint64, bool) {
	if in.src != 0 {
		return *gpr(regs, in.src), true
	}
	return load(k, effAddr(in.mem, next, regs))
}

// jccTaken evaluates a conditional branch's condition on r; loop*
// decrement %rcx first (flags untouched), as the CPU does.
func jccTaken(op x86asm.Op, r *vmm.Regs) bool {
	f := r.RFLAGS
	cf, zf, sf, of, pf := f&flagCF != 0, f&flagZF != 0, f&flagSF != 0, f&flagOF != 0, f&flagPF != 0
	switch op {
	case x86asm.JO:
		return of
	case x86asm.JNO:
		return !of
	case x86asm.JB:
		return cf
	case x86asm.JAE:
		return !cf
	case x86asm.JE:
		return zf
	case x86asm.JNE:
		return !zf
	case x86asm.JBE:
		return cf || zf
	case x86asm.JA:
		return !cf && !zf
	case x86asm.JS:
		return sf
	case x86asm.JNS:
		return !sf
	case x86asm.JP:
		return pf
	case x86asm.JNP:
		return !pf
	case x86asm.JL:
		return sf != of
	case x86asm.JGE:
		return sf == of
	case x86asm.JLE:
		return zf || sf != of
	case x86asm.JG:
		return !zf && sf == of
	case x86asm.JRCXZ:
		return r.RCX == 0
	case x86asm.LOOP:
		r.RCX--
		return r.RCX != 0
	case x86asm.LOOPE:
		r.RCX--
		return r.RCX != 0 && zf
	case x86asm.LOOPNE:
		r.RCX--
		return r.RCX != 0 && !zf
	}
	panic("kprobes: jccTaken called with " + op.String())
}

// effAddr computes a memory operand's address from regs; next is the
// address of the following instruction (the base of %rip-relative ones).
func effAddr(m x86asm.Mem, next uint64, regs *vmm.Regs) uint64 {
	a := uint64(int64(int32(m.Disp))) // x86asm zero-extends a disp32
	switch {
	case m.Base == x86asm.RIP:
		a += next
	case m.Base != 0:
		a += *gpr(regs, m.Base)
	}
	if m.Index != 0 {
		a += *gpr(regs, m.Index) * uint64(m.Scale)
	}
	return a
}

// canonical is the 48-bit rule; a 57-bit address beyond it is left to the
// slot, which is always right.
func canonical(va uint64) bool { return uint64(int64(va<<16)>>16) == va }

// load and push reach guest memory through the kernel's page tables,
// which map the kernel half alike in every mm; a lower-half address is a
// user one only the guest's current mm maps, so it is left to the CPU.
func load(k Kernel, va uint64) (uint64, bool) {
	var b [8]byte
	if va>>63 == 0 || k.ReadVirt(va, b[:]) != nil {
		return 0, false
	}
	return binary.LittleEndian.Uint64(b[:]), true
}

// push stores v below r.RSP and moves r.RSP down.
func push(k Kernel, r *vmm.Regs, v uint64) bool {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	if sp := r.RSP - 8; sp>>63 == 0 || k.WriteVirt(sp, b[:]) != nil {
		return false
	}
	r.RSP -= 8
	return true
}
