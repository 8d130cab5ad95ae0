package kprobes

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"

	"golang.org/x/arch/x86/x86asm"
)

const (
	maxInsnLen = 15
	// slotSize holds the longest instruction plus the 5-byte jmp back,
	// rounded up so slots stay 16-byte aligned.
	slotSize  = 32
	jmpLen    = 5
	opInt3    = 0xcc
	opJmpRel  = 0xe9
	pageSize  = 4096
	stackSnap = 64 // the seeds' MIN_STACK_SIZE for jprobes
)

// endbr64 and endbr32 are unknown to x86asm (it decodes them as a lone
// prefix), so they are the one encoding matched by bytes here. Both are
// no-ops outside an indirect-branch target check.
var (
	endbr64 = []byte{0xf3, 0x0f, 0x1e, 0xfa}
	endbr32 = []byte{0xf3, 0x0f, 0x1e, 0xfb}
)

// decode decodes the one 64-bit instruction at the start of code.
func decode(code []byte) (x86asm.Inst, bool) {
	if bytes.HasPrefix(code, endbr64) || bytes.HasPrefix(code, endbr32) {
		return x86asm.Inst{Op: x86asm.NOP, Len: 4, Mode: 64}, true
	}
	inst, err := x86asm.Decode(code, 64)
	if err != nil || inst.Op == 0 || inst.Len == 0 {
		return x86asm.Inst{}, false
	}
	return inst, true
}

// fixup is how the state after an out-of-line step is corrected: the
// seeds' resume_execution cases.
type fixup int

const (
	// fixRIP: rip = orig + (rip - slot). Straight-line code, and relative
	// jmp/jcc/loop, whose targets the CPU computed from the slot.
	fixRIP fixup = iota
	// fixCallRel: call rel32; the pushed return address and rip are both
	// slot-relative.
	fixCallRel
	// fixCallAbs: indirect call; the pushed return address is
	// slot-relative, rip is the real target.
	fixCallAbs
	// fixNone: ret, indirect jmp: rip is already right.
	fixNone
	// fixPushf: pushf pushed the flags with the step's TF and cleared IF.
	fixPushf
)

// emulKind names the instructions the host executes itself (one exit, no
// slot): the usual function-entry instructions.
type emulKind int

const (
	emulNone    emulKind = iota
	emulNop              // nop/nopl/nopw of any length, pause, endbr
	emulPush             // push %r64
	emulMov              // mov %r64,%r64 / mov %r32,%r32
	emulAdd              // add $imm,%r64
	emulSub              // sub $imm,%r64
	emulXorSelf          // xor %r32,%r32 / xor %r64,%r64 (same register)
)

// insn is one analysed instruction at a probe address.
type insn struct {
	raw       []byte // the original bytes, len(raw) == inst.Len
	inst      x86asm.Inst
	fix       fixup
	branch    bool // the step may legitimately end anywhere
	ifMod     bool // cli, sti, popf: IF after the step is the instruction's own
	ripMem    bool // a %rip-relative memory operand; its disp32 is at inst.PCRelOff
	boostable bool
	emul      emulKind
	dst, src  x86asm.Reg // operands of emulated instructions
	imm       uint64     // sign-extended immediate of emulAdd/emulSub
}

func (in *insn) String() string {
	return fmt.Sprintf("%s (% x)", x86asm.GNUSyntax(in.inst, 0, nil), in.raw)
}

// refusal is why analyze rejects an instruction; the caller names the probe.
type refusal struct {
	kind   error
	reason string
}

// analyze decodes code (at least the instruction's bytes; up to 15) and
// decides how the instruction can be executed on a probe hit.
func analyze(code []byte) (*insn, *refusal) {
	if len(code) > maxInsnLen {
		code = code[:maxInsnLen]
	}
	inst, ok := decode(code)
	if !ok {
		return nil, &refusal{ErrUndecodable, fmt.Sprintf("undecodable instruction bytes % x", code)}
	}
	in := &insn{raw: append([]byte(nil), code[:inst.Len]...), inst: inst}
	// The slot holds the instruction followed by other bytes; it must
	// decode the same there (x86asm's view of some encodings depends on
	// bytes past the length it reports).
	if again, ok := decode(append(bytes.Clone(in.raw), bytes.Repeat([]byte{opInt3}, maxInsnLen)...)); !ok ||
		again.Op != inst.Op || again.Len != inst.Len || again.Args != inst.Args {
		return nil, &refusal{ErrUndecodable, fmt.Sprintf("instruction bytes % x decode differently in isolation", in.raw)}
	}
	if r := in.refuse(); r != nil {
		return nil, r
	}
	for _, a := range inst.Args {
		if m, ok := a.(x86asm.Mem); ok && m.Base == x86asm.RIP {
			if inst.PCRel != 4 {
				return nil, &refusal{ErrUnsafeInstruction, fmt.Sprintf("%s: cannot locate its %%rip-relative displacement", in)}
			}
			in.ripMem = true
		}
	}
	in.classify()
	in.boostable = in.canBoost()
	in.emul = in.emulation()
	return in, nil
}

// refuse rejects instructions that cannot run out of line: they trap by
// design, change privilege or CS, stop the CPU (a step with IF clear would
// never end), or suppress the single-step trap.
func (in *insn) refuse() *refusal {
	unsafe := func(why string) *refusal {
		return &refusal{ErrUnsafeInstruction, fmt.Sprintf("%s: %s", in, why)}
	}
	switch in.inst.Op {
	case x86asm.INT:
		if in.raw[0] == opInt3 {
			return unsafe("an int3 is already there and it is not hvprobe's (a debugger, or the kernel's own)")
		}
		return unsafe("int n raises an exception by design")
	case x86asm.INTO, x86asm.ICEBP:
		return unsafe("raises an exception by design")
	case x86asm.UD0, x86asm.UD1, x86asm.UD2:
		return unsafe("raises #UD by design (BUG/WARN); the guest's handler looks the address up in its bug table, which a slot address is not in")
	case x86asm.IRET, x86asm.IRETD, x86asm.IRETQ:
		return unsafe("iret reloads CS, RFLAGS and the stack")
	case x86asm.SYSCALL, x86asm.SYSRET, x86asm.SYSENTER, x86asm.SYSEXIT:
		return unsafe("changes privilege level")
	case x86asm.LCALL, x86asm.LJMP, x86asm.LRET:
		return unsafe("far control transfer reloads CS")
	case x86asm.HLT, x86asm.MWAIT:
		return unsafe("stops the CPU; stepped with interrupts disabled it would never wake")
	case x86asm.RSM, x86asm.XBEGIN, x86asm.XABORT:
		return unsafe("not steppable out of line")
	case x86asm.MOV, x86asm.POP:
		if in.inst.Args[0] == x86asm.SS {
			return unsafe("loading SS suppresses the single-step trap of the next instruction")
		}
	}
	return nil
}

func (in *insn) classify() {
	switch op := in.inst.Op; op {
	case x86asm.CALL:
		if _, rel := in.inst.Args[0].(x86asm.Rel); rel {
			in.fix = fixCallRel
		} else {
			in.fix = fixCallAbs
		}
		in.branch = true
	case x86asm.RET:
		in.fix, in.branch = fixNone, true
	case x86asm.JMP:
		if _, rel := in.inst.Args[0].(x86asm.Rel); rel {
			in.fix = fixRIP
		} else {
			in.fix = fixNone
		}
		in.branch = true
	case x86asm.PUSHF, x86asm.PUSHFD, x86asm.PUSHFQ:
		in.fix = fixPushf
	case x86asm.POPF, x86asm.POPFD, x86asm.POPFQ, x86asm.CLI, x86asm.STI:
		in.ifMod = true
	default:
		// Conditional and counted branches: relative, fixed like
		// straight-line code.
		if _, rel := in.inst.Args[0].(x86asm.Rel); rel {
			in.branch = true
		}
	}
}

// boostOps are the instructions whose effect does not depend on where they
// execute and which cannot trap into an exception-table fixup by
// themselves, so they may run from a slot followed by a jmp back, without a
// step. The seeds' can_boost admits a similar set by opcode; branches,
// calls, rets, pushf/popf and cli/sti are left to the step, whose fixups
// handle them.
var boostOps = map[x86asm.Op]bool{
	x86asm.MOV: true, x86asm.MOVZX: true, x86asm.MOVSX: true, x86asm.MOVSXD: true,
	x86asm.LEA: true, x86asm.ADD: true, x86asm.SUB: true, x86asm.ADC: true,
	x86asm.SBB: true, x86asm.AND: true, x86asm.OR: true, x86asm.XOR: true,
	x86asm.CMP: true, x86asm.TEST: true, x86asm.INC: true, x86asm.DEC: true,
	x86asm.NEG: true, x86asm.NOT: true, x86asm.SHL: true, x86asm.SHR: true,
	x86asm.SAR: true, x86asm.ROL: true, x86asm.ROR: true, x86asm.SHLD: true,
	x86asm.SHRD: true, x86asm.IMUL: true, x86asm.MUL: true, x86asm.XCHG: true,
	x86asm.CMPXCHG: true, x86asm.XADD: true, x86asm.BT: true, x86asm.BTS: true,
	x86asm.BTR: true, x86asm.BTC: true, x86asm.BSF: true, x86asm.BSR: true,
	x86asm.BSWAP: true, x86asm.CBW: true, x86asm.CWDE: true, x86asm.CDQE: true,
	x86asm.CWD: true, x86asm.CDQ: true, x86asm.CQO: true, x86asm.PUSH: true,
	x86asm.POP: true, x86asm.LEAVE: true, x86asm.NOP: true, x86asm.PAUSE: true,
	x86asm.LFENCE: true, x86asm.MFENCE: true, x86asm.SFENCE: true,
	x86asm.RDTSC: true, x86asm.CLC: true, x86asm.STC: true, x86asm.CMC: true,
	x86asm.CLD: true, x86asm.STD: true,
	x86asm.CMOVA: true, x86asm.CMOVAE: true, x86asm.CMOVB: true, x86asm.CMOVBE: true,
	x86asm.CMOVE: true, x86asm.CMOVG: true, x86asm.CMOVGE: true, x86asm.CMOVL: true,
	x86asm.CMOVLE: true, x86asm.CMOVNE: true, x86asm.CMOVNO: true, x86asm.CMOVNP: true,
	x86asm.CMOVNS: true, x86asm.CMOVO: true, x86asm.CMOVP: true, x86asm.CMOVS: true,
	x86asm.SETA: true, x86asm.SETAE: true, x86asm.SETB: true, x86asm.SETBE: true,
	x86asm.SETE: true, x86asm.SETG: true, x86asm.SETGE: true, x86asm.SETL: true,
	x86asm.SETLE: true, x86asm.SETNE: true, x86asm.SETNO: true, x86asm.SETNP: true,
	x86asm.SETNS: true, x86asm.SETO: true, x86asm.SETP: true, x86asm.SETS: true,
}

func (in *insn) canBoost() bool {
	if !boostOps[in.inst.Op] {
		return false
	}
	for _, p := range in.inst.Prefix {
		if p == 0 {
			break
		}
		// As in the seeds: no CS override, no address-size override.
		if p&0xff == x86asm.PrefixCS || p&0xff == x86asm.PrefixAddrSize {
			return false
		}
	}
	for _, a := range in.inst.Args {
		switch a := a.(type) {
		case x86asm.Mem:
			if in.inst.Op == x86asm.LEA {
				continue // address arithmetic only: lea never accesses memory
			}
			// A fault in a boosted slot would reach the guest with the
			// slot's address, which no exception-table entry names; so only
			// operands that cannot be user or fixup-guarded accesses:
			// globals (%rip-relative or absolute, incl. %gs: per-cpu) and
			// the stack.
			if a.Index != 0 {
				return false
			}
			if a.Base != 0 && a.Base != x86asm.RIP && a.Base != x86asm.RSP {
				return false
			}
			if a.Segment != 0 && a.Segment != x86asm.GS && a.Segment != x86asm.FS {
				return false
			}
		case x86asm.Reg:
			if !isGPR(a) {
				return false // segment, control, debug registers
			}
		}
	}
	return true
}

func isGPR(r x86asm.Reg) bool {
	return (r >= x86asm.AL && r <= x86asm.R15B) || (r >= x86asm.AX && r <= x86asm.R15W) ||
		(r >= x86asm.EAX && r <= x86asm.R15L) || (r >= x86asm.RAX && r <= x86asm.R15)
}

func isGPR64(r x86asm.Reg) bool { return r >= x86asm.RAX && r <= x86asm.R15 }
func isGPR32(r x86asm.Reg) bool { return r >= x86asm.EAX && r <= x86asm.R15L }

func (in *insn) emulation() emulKind {
	args := in.inst.Args
	for _, p := range in.inst.Prefix {
		if p == 0 {
			break
		}
		if p&0xff == x86asm.PrefixLOCK {
			return emulNone
		}
	}
	switch in.inst.Op {
	case x86asm.NOP, x86asm.PAUSE:
		return emulNop
	case x86asm.PUSH:
		if r, ok := args[0].(x86asm.Reg); ok && isGPR64(r) {
			in.src = r
			return emulPush
		}
	case x86asm.MOV:
		d, ok1 := args[0].(x86asm.Reg)
		s, ok2 := args[1].(x86asm.Reg)
		if ok1 && ok2 && ((isGPR64(d) && isGPR64(s)) || (isGPR32(d) && isGPR32(s))) {
			in.dst, in.src = d, s
			return emulMov
		}
	case x86asm.ADD, x86asm.SUB:
		d, ok1 := args[0].(x86asm.Reg)
		i, ok2 := args[1].(x86asm.Imm)
		if ok1 && ok2 && isGPR64(d) {
			in.dst, in.imm = d, uint64(int64(i))
			if in.inst.Op == x86asm.ADD {
				return emulAdd
			}
			return emulSub
		}
	case x86asm.XOR:
		d, ok1 := args[0].(x86asm.Reg)
		s, ok2 := args[1].(x86asm.Reg)
		if ok1 && ok2 && d == s && (isGPR64(d) || isGPR32(d)) {
			in.dst = d
			return emulXorSelf
		}
	}
	return emulNone
}

// slotImage builds the slot contents for the instruction originally at
// addr, placed at slotVA: the instruction with its %rip-relative
// displacement re-based (the seeds' fix_riprel), then for a boosted slot a
// jmp rel32 to addr+len. The rest is int3 so that a stray execution traps
// instead of running garbage.
func (in *insn) slotImage(addr, slotVA uint64, boost bool) ([]byte, *refusal) {
	img := bytes.Repeat([]byte{opInt3}, slotSize)
	n := copy(img, in.raw)
	if in.ripMem {
		off := in.inst.PCRelOff
		disp := int64(int32(binary.LittleEndian.Uint32(in.raw[off:])))
		// Same target from the slot: addr+len+disp == slot+len+newDisp.
		newDisp := disp + int64(addr-slotVA)
		if newDisp < math.MinInt32 || newDisp > math.MaxInt32 {
			return nil, &refusal{ErrOutOfReach, fmt.Sprintf("%s: %%rip-relative operand at %#x is beyond ±2 GiB of the slot at %#x",
				in, addr+uint64(n)+uint64(disp), slotVA)}
		}
		binary.LittleEndian.PutUint32(img[off:], uint32(int32(newDisp)))
	}
	if boost {
		rel := int64((addr + uint64(n)) - (slotVA + uint64(n) + jmpLen))
		if rel < math.MinInt32 || rel > math.MaxInt32 {
			return nil, &refusal{ErrOutOfReach, fmt.Sprintf("slot at %#x is beyond ±2 GiB of %#x", slotVA, addr)}
		}
		img[n] = opJmpRel
		binary.LittleEndian.PutUint32(img[n+1:], uint32(int32(rel)))
	}
	return img, nil
}
