package kprobes

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"

	"github.com/hvprobe/hvprobe/internal/x86dec"
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

// decode decodes the one 64-bit instruction at the start of code.
func decode(code []byte) (x86asm.Inst, bool) {
	inst, err := x86dec.Decode(code)
	return inst, err == nil
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
// slot, post handlers in the same exit), which a step would cost two exits.
type emulKind int

const (
	emulNone    emulKind = iota
	emulNop              // nop/nopl/nopw of any length, pause, endbr
	emulPush             // push %r64
	emulPop              // pop %r64
	emulPushImm          // push $imm8/$imm32 (sign-extended)
	emulPushMem          // push m64
	emulPopMem           // pop m64
	emulLeave            // leave
	emulMove             // mov, movzx, movsx, movsxd, lea: GPRs of any width, any addressing
	emulALU              // add, sub, and, or, xor, cmp, test, inc, dec: exact flags
	emulPushf            // pushfq
	emulPopf             // popfq (ring 0)
	emulCli              // cli
	emulString           // movs*, stos*, repeated or not
	emulCmov             // cmovcc
	emulSetcc            // setcc
	// Control transfers from here on (Stats.EmulatedBranches).
	emulJmp     // jmp rel8/rel32
	emulJcc     // jcc rel8/rel32, jrcxz, loop/loope/loopne
	emulCall    // call rel32
	emulJmpInd  // jmp *%r64 / jmp *disp(%rip)
	emulCallInd // call *%r64 / call *disp(%rip)
	emulRet     // ret / ret $imm16
)

func (k emulKind) branch() bool { return k >= emulJmp }

// insn is one analysed instruction at a probe address.
type insn struct {
	raw    []byte // the original bytes, len(raw) == inst.Len
	inst   x86asm.Inst
	fix    fixup
	branch bool // the step may legitimately end anywhere
	ifMod  bool // cli, sti, popf: IF after the step is the instruction's own
	ripMem bool // a %rip-relative memory operand; its disp32 is at inst.PCRelOff
	// boostable: may run from a slot followed by a jmp back. analyze
	// judges the instruction; check clears it where the kernel has an
	// exception-table entry.
	boostable bool
	// rep: a repeated string instruction; a step traps after each
	// iteration with rip still on it. repMask is its count register
	// (%rcx, or %ecx with an address-size prefix).
	rep      bool
	repMask  uint64
	emul     emulKind
	dst, src x86asm.Reg // register operands of push, pop, indirect branches
	imm      uint64     // push's sign-extended immediate, ret's imm16
	rel      int64      // displacement of an emulated relative branch
	mem      x86asm.Mem // memory operand of emulPushMem, emulPopMem, emulJmpInd, emulCallInd
	// data: the emulation reads or writes memory other than the stack
	// and %rip-relative code pointers, which takes AtomicVirt.
	data bool
}

// emulated reports whether a hit emulates the instruction. A data access
// is emulated only when a post handler must run (or the instruction may
// not be boosted): without one the boosted slot costs the same one exit
// and no page walk on the host (measured: see dataForm).
func (in *insn) emulated(hasPost bool) bool {
	return in.emul != emulNone && (hasPost || !in.data || !in.boostable)
}

func (in *insn) String() string {
	return fmt.Sprintf("%s (% x)", x86dec.Syntax(in.inst), in.raw)
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
	case x86dec.VMRUN:
		return unsafe("enters a guest of the guest's own hypervisor, where the step's trap would land")
	case x86dec.SKINIT:
		return unsafe("reinitializes the CPU")
	case x86asm.HLT, x86asm.MWAIT, x86dec.MWAITX:
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
	case x86asm.MOVSB, x86asm.MOVSW, x86asm.MOVSD, x86asm.MOVSQ,
		x86asm.STOSB, x86asm.STOSW, x86asm.STOSD, x86asm.STOSQ,
		x86asm.LODSB, x86asm.LODSW, x86asm.LODSD, x86asm.LODSQ,
		x86asm.CMPSB, x86asm.CMPSW, x86asm.CMPSD, x86asm.CMPSQ,
		x86asm.SCASB, x86asm.SCASW, x86asm.SCASD, x86asm.SCASQ,
		x86asm.INSB, x86asm.INSW, x86asm.INSD, x86asm.OUTSB, x86asm.OUTSW, x86asm.OUTSD:
		if in.hasPrefix(0xf3) || in.hasPrefix(0xf2) {
			in.rep, in.repMask = true, math.MaxUint64
			if in.hasPrefix(x86asm.PrefixAddrSize) {
				in.repMask = math.MaxUint32
			}
		}
	default:
		// Conditional and counted branches: relative, fixed like
		// straight-line code.
		if _, rel := in.inst.Args[0].(x86asm.Rel); rel {
			in.branch = true
		}
	}
}

// boostOps are the instructions whose effect does not depend on where they
// execute, so they may run from a slot followed by a jmp back, without a
// step. The seeds' can_boost admits a similar set by opcode; branches,
// calls, rets, pushf/popf and cli/sti are left to emulation or the step,
// whose fixups handle them. String instructions, repeated or not, run to
// completion in the slot (an interrupt between iterations returns there).
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
	x86asm.MOVSB: true, x86asm.MOVSW: true, x86asm.MOVSD: true, x86asm.MOVSQ: true,
	x86asm.STOSB: true, x86asm.STOSW: true, x86asm.STOSD: true, x86asm.STOSQ: true,
	x86asm.LODSB: true, x86asm.LODSW: true, x86asm.LODSD: true, x86asm.LODSQ: true,
	x86asm.CMPSB: true, x86asm.CMPSW: true, x86asm.CMPSD: true, x86asm.CMPSQ: true,
	x86asm.SCASB: true, x86asm.SCASW: true, x86asm.SCASD: true, x86asm.SCASQ: true,
	x86asm.DIV: true, x86asm.IDIV: true, x86asm.POPCNT: true, x86asm.TZCNT: true, x86asm.LZCNT: true,
	x86asm.MOVBE: true, x86asm.CRC32: true, x86asm.RDTSCP: true, x86asm.MOVNTI: true,
	x86asm.PREFETCHT0: true, x86asm.PREFETCHT1: true, x86asm.PREFETCHT2: true,
	x86asm.PREFETCHNTA: true, x86asm.PREFETCHW: true,
	// SSE moves and the register-zeroing idioms (kernel_fpu_begin
	// sections, crypto, RAID, copy routines).
	x86asm.MOVDQA: true, x86asm.MOVDQU: true, x86asm.MOVAPS: true, x86asm.MOVUPS: true,
	x86asm.MOVAPD: true, x86asm.MOVUPD: true, x86asm.MOVQ: true, x86asm.MOVD: true,
	x86asm.MOVNTDQ: true, x86asm.PXOR: true, x86asm.XORPS: true,
	x86asm.CMOVA: true, x86asm.CMOVAE: true, x86asm.CMOVB: true, x86asm.CMOVBE: true,
	x86asm.CMOVE: true, x86asm.CMOVG: true, x86asm.CMOVGE: true, x86asm.CMOVL: true,
	x86asm.CMOVLE: true, x86asm.CMOVNE: true, x86asm.CMOVNO: true, x86asm.CMOVNP: true,
	x86asm.CMOVNS: true, x86asm.CMOVO: true, x86asm.CMOVP: true, x86asm.CMOVS: true,
	x86asm.SETA: true, x86asm.SETAE: true, x86asm.SETB: true, x86asm.SETBE: true,
	x86asm.SETE: true, x86asm.SETG: true, x86asm.SETGE: true, x86asm.SETL: true,
	x86asm.SETLE: true, x86asm.SETNE: true, x86asm.SETNO: true, x86asm.SETNP: true,
	x86asm.SETNS: true, x86asm.SETO: true, x86asm.SETP: true, x86asm.SETS: true,
	// The SMAP alternatives' clac/stac, which x86asm does not know. Not
	// the table's others (rdpid, the PKRU pair, serialize): an emulating
	// KVM may exit on them, losing the step's trap (docs/QUIRKS.md #47),
	// which only a stepped slot's guard int3 survives.
	x86dec.CLAC: true, x86dec.STAC: true,
}

// canBoost judges the instruction alone. Its memory operands may be
// anything: a fault in the slot reaches the guest with the slot's address,
// which matters only to an exception-table lookup, and check refuses to
// boost where the kernel has an entry. Without one the fault is an oops
// in the slot as in place, and a fault the guest resolves (a lazy or
// spurious page fault) returns to the slot and re-executes there.
func (in *insn) canBoost() bool {
	if !boostOps[in.inst.Op] {
		return false
	}
	// As in the seeds: no CS override, no address-size override.
	if in.hasPrefix(x86asm.PrefixCS) || in.hasPrefix(x86asm.PrefixAddrSize) {
		return false
	}
	for _, a := range in.inst.Args {
		if r, ok := a.(x86asm.Reg); ok && !isGPR(r) && !isXMM(r) {
			return false // segment, control, debug, x87, MMX registers
		}
	}
	return true
}

func isXMM(r x86asm.Reg) bool { return r >= x86asm.X0 && r <= x86asm.X15 }

// hasPrefix reports whether the instruction carries the prefix byte p.
func (in *insn) hasPrefix(p x86asm.Prefix) bool {
	for _, q := range in.inst.Prefix {
		if q == 0 {
			return false
		}
		if q&0xff == p&0xff {
			return true
		}
	}
	return false
}

func isGPR(r x86asm.Reg) bool {
	return (r >= x86asm.AL && r <= x86asm.R15B) || (r >= x86asm.AX && r <= x86asm.R15W) ||
		(r >= x86asm.EAX && r <= x86asm.R15L) || (r >= x86asm.RAX && r <= x86asm.R15)
}

func isGPR64(r x86asm.Reg) bool { return r >= x86asm.RAX && r <= x86asm.R15 }

// condOf names the condition of a cmovcc or setcc by its jcc.
var condOf = map[x86asm.Op]x86asm.Op{
	x86asm.CMOVA: x86asm.JA, x86asm.CMOVAE: x86asm.JAE, x86asm.CMOVB: x86asm.JB, x86asm.CMOVBE: x86asm.JBE,
	x86asm.CMOVE: x86asm.JE, x86asm.CMOVG: x86asm.JG, x86asm.CMOVGE: x86asm.JGE, x86asm.CMOVL: x86asm.JL,
	x86asm.CMOVLE: x86asm.JLE, x86asm.CMOVNE: x86asm.JNE, x86asm.CMOVNO: x86asm.JNO, x86asm.CMOVNP: x86asm.JNP,
	x86asm.CMOVNS: x86asm.JNS, x86asm.CMOVO: x86asm.JO, x86asm.CMOVP: x86asm.JP, x86asm.CMOVS: x86asm.JS,
	x86asm.SETA: x86asm.JA, x86asm.SETAE: x86asm.JAE, x86asm.SETB: x86asm.JB, x86asm.SETBE: x86asm.JBE,
	x86asm.SETE: x86asm.JE, x86asm.SETG: x86asm.JG, x86asm.SETGE: x86asm.JGE, x86asm.SETL: x86asm.JL,
	x86asm.SETLE: x86asm.JLE, x86asm.SETNE: x86asm.JNE, x86asm.SETNO: x86asm.JNO, x86asm.SETNP: x86asm.JNP,
	x86asm.SETNS: x86asm.JNS, x86asm.SETO: x86asm.JO, x86asm.SETP: x86asm.JP, x86asm.SETS: x86asm.JS,
}

// jccOps are the conditional relative branches the host emulates.
var jccOps = map[x86asm.Op]bool{
	x86asm.JO: true, x86asm.JNO: true, x86asm.JB: true, x86asm.JAE: true,
	x86asm.JE: true, x86asm.JNE: true, x86asm.JBE: true, x86asm.JA: true,
	x86asm.JS: true, x86asm.JNS: true, x86asm.JP: true, x86asm.JNP: true,
	x86asm.JL: true, x86asm.JGE: true, x86asm.JLE: true, x86asm.JG: true,
	x86asm.JRCXZ: true, x86asm.LOOP: true, x86asm.LOOPE: true, x86asm.LOOPNE: true,
}

func (in *insn) emulation() emulKind {
	// A locked read-modify-write would need an atomic RMW of the guest's
	// memory from the host, a CAS of 1 to 8 bytes on the RAM mapping
	// (sync/atomic has none below 32 bits); it stays in its slot, boosted
	// (one exit) or stepped with a post handler.
	if in.hasPrefix(x86asm.PrefixLOCK) {
		return emulNone
	}
	args := in.inst.Args
	// Operand size (16-bit push/ret/branch) and address size (%ecx counts,
	// 32-bit addresses) are not modelled by the stack and branch forms:
	// those go to the slot. FS/GS bases are, for data operands (a
	// per-cpu access, %gs:, is among the commonest in kernel text).
	plain := !in.hasPrefix(x86asm.PrefixDataSize) && !in.hasPrefix(x86asm.PrefixAddrSize) &&
		!in.hasPrefix(x86asm.PrefixFS) && !in.hasPrefix(x86asm.PrefixGS)
	switch op := in.inst.Op; op {
	case x86asm.NOP, x86asm.PAUSE:
		return emulNop
	case x86asm.PUSH:
		switch a := args[0].(type) {
		case x86asm.Reg:
			if isGPR64(a) {
				in.src = a
				return emulPush
			}
		case x86asm.Imm:
			if plain {
				in.imm = uint64(int64(a))
				return emulPushImm
			}
		case x86asm.Mem:
			if in.dataForm() && in.inst.MemBytes == 8 {
				in.mem = a
				return emulPushMem
			}
		}
	case x86asm.POP:
		switch a := args[0].(type) {
		case x86asm.Reg:
			if isGPR64(a) {
				in.dst = a
				return emulPop
			}
		case x86asm.Mem:
			if in.dataForm() && in.inst.MemBytes == 8 {
				in.mem = a
				return emulPopMem
			}
		}
	case x86asm.MOV, x86asm.MOVZX, x86asm.MOVSX, x86asm.MOVSXD, x86asm.LEA:
		if in.dataForm() {
			return emulMove
		}
	case x86asm.ADD, x86asm.SUB, x86asm.AND, x86asm.OR, x86asm.XOR, x86asm.CMP, x86asm.TEST, x86asm.INC, x86asm.DEC:
		if in.dataForm() {
			return emulALU
		}
	case x86asm.PUSHFQ:
		if plain {
			return emulPushf
		}
	case x86asm.CMOVA, x86asm.CMOVAE, x86asm.CMOVB, x86asm.CMOVBE, x86asm.CMOVE, x86asm.CMOVG, x86asm.CMOVGE, x86asm.CMOVL,
		x86asm.CMOVLE, x86asm.CMOVNE, x86asm.CMOVNO, x86asm.CMOVNP, x86asm.CMOVNS, x86asm.CMOVO, x86asm.CMOVP, x86asm.CMOVS:
		if in.dataForm() {
			return emulCmov
		}
	case x86asm.SETA, x86asm.SETAE, x86asm.SETB, x86asm.SETBE, x86asm.SETE, x86asm.SETG, x86asm.SETGE, x86asm.SETL,
		x86asm.SETLE, x86asm.SETNE, x86asm.SETNO, x86asm.SETNP, x86asm.SETNS, x86asm.SETO, x86asm.SETP, x86asm.SETS:
		if in.dataForm() {
			return emulSetcc
		}
	case x86asm.POPFQ:
		if plain {
			return emulPopf
		}
	case x86asm.CLI:
		return emulCli
	// sti stays stepped: it sets IF with a one-instruction interrupt
	// shadow (the sti;hlt idiom relies on it), which KVM_SET_REGS cannot
	// set; the shadow is in the VMCS interruptibility state.
	case x86asm.MOVSB, x86asm.MOVSW, x86asm.MOVSD, x86asm.MOVSQ, x86asm.STOSB, x86asm.STOSW, x86asm.STOSD, x86asm.STOSQ:
		// Only the ES:RDI / DS:RSI forms with 64-bit addresses.
		if !in.hasPrefix(x86asm.PrefixAddrSize) && !in.hasPrefix(x86asm.PrefixFS) && !in.hasPrefix(x86asm.PrefixGS) {
			in.data = true
			return emulString
		}
	case x86asm.LEAVE:
		if plain {
			return emulLeave
		}
	case x86asm.RET:
		if !plain {
			break
		}
		if i, ok := args[0].(x86asm.Imm); ok {
			in.imm = uint64(i)
		}
		return emulRet
	case x86asm.JMP, x86asm.CALL:
		if !plain {
			break
		}
		direct, indirect := emulJmp, emulJmpInd
		if op == x86asm.CALL {
			direct, indirect = emulCall, emulCallInd
		}
		switch a := args[0].(type) {
		case x86asm.Rel:
			in.rel = int64(a)
			return direct
		case x86asm.Reg:
			if isGPR64(a) {
				in.src = a
				return indirect
			}
		case x86asm.Mem:
			// A pointer in a global is an aligned word the kernel writes
			// whole, read as the legacy ReadVirt does; any other operand
			// (ops->fn(), a jump table) takes an atomic load.
			if a.Base == x86asm.RIP && a.Index == 0 && a.Segment == 0 && in.inst.MemBytes == 8 {
				in.mem = a
				return indirect
			}
			if in.dataForm() && in.inst.MemBytes == 8 {
				in.mem = a
				return indirect
			}
		}
	default:
		if rel, ok := args[0].(x86asm.Rel); ok && jccOps[op] && plain {
			in.rel = int64(rel)
			return emulJcc
		}
	}
	return emulNone
}

// dataForm reports whether every operand is one the data emulation
// handles: a GPR of any width, an immediate, or a memory operand of 1, 2,
// 4 or 8 bytes addressed by 64-bit base and index GPRs or %rip, with at
// most an FS/GS override (other segments have base 0 in 64-bit mode). It
// sets in.data when there is a memory access (lea has none).
//
// Without a post handler such an instruction is boosted when it may be
// (insn.emulated): both cost one exit, and the exit dominates. Measured
// with hvprobe bench on the mini kernel (PVM host, one vCPU, 2000 calls,
// two runs, bare exit 66 and 103 µs): hvwl_target_mix's
// mov hvwl_mix_val(%rip),%rax boosted 66.6 and 34.4 µs/hit, emulated
// (post handler) 60.7 and 87.6 µs/hit: no difference beyond the noise.
// BenchmarkEmulateLoad puts the emulation itself at ~50 ns over the fake
// (a few hundred over real page tables), so emulating gains nothing, and
// the slot keeps the CPU's own TLB, accessed/dirty bits and ordering.
func (in *insn) dataForm() bool {
	if in.hasPrefix(x86asm.PrefixAddrSize) || in.hasPrefix(x86asm.PrefixREP) || in.hasPrefix(x86asm.PrefixREPN) {
		return false // 32-bit addresses; xacquire/xrelease and bnd hints
	}
	mem := false
	for _, a := range in.inst.Args {
		switch a := a.(type) {
		case nil:
		case x86asm.Reg:
			if !isGPR(a) {
				return false
			}
		case x86asm.Imm:
		case x86asm.Mem:
			if a.Base != 0 && a.Base != x86asm.RIP && !isGPR64(a.Base) || a.Index != 0 && !isGPR64(a.Index) {
				return false
			}
			if in.inst.Op == x86asm.LEA {
				continue
			}
			if n := in.inst.MemBytes; n != 1 && n != 2 && n != 4 && n != 8 {
				return false
			}
			mem = true
		default:
			return false
		}
	}
	in.data = mem
	return true
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
