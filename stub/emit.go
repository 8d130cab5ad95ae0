package stub

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/arch/x86/x86asm"
)

// emitter is a minimal x86-64 assembler for the forms the stub needs.
// Registers are x86asm's 64-bit GPR names (x86asm.RAX … x86asm.R15); every
// instruction goes through one ModRM/SIB/REX encoder (modrm), and the
// opcode bytes are the Intel SDM's for each form, named at each method.
// The generated code is checked by decoding it back with x86asm
// (Stub does, and the tests compare the decoded text).
type emitter struct {
	b      []byte
	labels map[string]int // bound label -> offset
	fixups map[int]string // offset of a rel32 -> label it targets
	insns  []int          // start offset of each instruction, for the self-check
}

func newEmitter() *emitter {
	return &emitter{labels: map[string]int{}, fixups: map[int]string{}}
}

// num is a GPR's hardware number (0-15).
func num(r x86asm.Reg) byte {
	if r < x86asm.RAX || r > x86asm.R15 {
		panic(fmt.Sprintf("stub emitter: %v is not a 64-bit GPR", r))
	}
	return byte(r - x86asm.RAX)
}

// mem is a memory operand: [base + index*1 + disp], or an absolute disp32
// when base is 0 (only used with a segment prefix: %gs:disp32).
type mem struct {
	base, index x86asm.Reg
	disp        int32
}

// operand is either a register (reg != 0) or a memory operand.
type operand struct {
	reg x86asm.Reg
	m   mem
}

func r(x x86asm.Reg) operand             { return operand{reg: x} }
func m(base x86asm.Reg, d int32) operand { return operand{m: mem{base: base, disp: d}} }
func abs(d int32) operand                { return operand{m: mem{disp: d}} }
func mi(base, index x86asm.Reg, d int32) operand {
	return operand{m: mem{base: base, index: index, disp: d}}
}

// start records an instruction boundary.
func (e *emitter) start() { e.insns = append(e.insns, len(e.b)) }

// op emits prefixes, REX, opcode and ModRM/SIB/displacement for an
// instruction whose ModRM reg field is reg (a register number or an opcode
// extension /digit) and whose r/m operand is rm. w sets REX.W.
func (e *emitter) op(prefixes []byte, w bool, opcode []byte, reg byte, rm operand) {
	e.start()
	e.b = append(e.b, prefixes...)
	rex := byte(0x40)
	if w {
		rex |= 8
	}
	if reg >= 8 {
		rex |= 4
	}
	var modrm, sib []byte
	var disp []byte
	if rm.reg != 0 {
		n := num(rm.reg)
		if n >= 8 {
			rex |= 1
		}
		modrm = []byte{0xc0 | (reg&7)<<3 | n&7}
	} else {
		mm := rm.m
		switch {
		case mm.base == 0 && mm.index == 0: // absolute disp32: SIB with no base, no index
			modrm = []byte{0x00 | (reg&7)<<3 | 4}
			sib = []byte{0x25}
			disp = binary.LittleEndian.AppendUint32(nil, uint32(mm.disp))
		default:
			b := num(mm.base)
			if b >= 8 {
				rex |= 1
			}
			var mod byte
			switch {
			case mm.disp == 0 && b&7 != 5: // [rbp]/[r13] always take a displacement
				mod = 0
			case mm.disp >= -128 && mm.disp <= 127:
				mod, disp = 1, []byte{byte(int8(mm.disp))}
			default:
				mod, disp = 2, binary.LittleEndian.AppendUint32(nil, uint32(mm.disp))
			}
			switch {
			case mm.index != 0:
				x := num(mm.index)
				if x == 4 {
					panic("stub emitter: %rsp cannot be an index")
				}
				if x >= 8 {
					rex |= 2
				}
				modrm = []byte{mod<<6 | (reg&7)<<3 | 4}
				sib = []byte{(x&7)<<3 | b&7}
			case b&7 == 4: // [rsp]/[r12] need a SIB with no index
				modrm = []byte{mod<<6 | (reg&7)<<3 | 4}
				sib = []byte{0x24}
			default:
				modrm = []byte{mod<<6 | (reg&7)<<3 | b&7}
			}
		}
	}
	if rex != 0x40 {
		e.b = append(e.b, rex)
	}
	e.b = append(e.b, opcode...)
	e.b = append(e.b, modrm...)
	e.b = append(e.b, sib...)
	e.b = append(e.b, disp...)
}

func (e *emitter) imm32(v int32) { e.b = binary.LittleEndian.AppendUint32(e.b, uint32(v)) }

// Instructions without operands.
func (e *emitter) pushfq() { e.start(); e.b = append(e.b, 0x9c) }
func (e *emitter) popfq()  { e.start(); e.b = append(e.b, 0x9d) }
func (e *emitter) cli()    { e.start(); e.b = append(e.b, 0xfa) }
func (e *emitter) cld()    { e.start(); e.b = append(e.b, 0xfc) }

// rep movsq: F3 REX.W A5.
func (e *emitter) repMovsq() { e.start(); e.b = append(e.b, 0xf3, 0x48, 0xa5) }

// mov $imm32, r32: C7 /0 id (zero-extends).
func (e *emitter) movImm32(dst x86asm.Reg, v int32) { e.storeImm(false, r(dst), v) }

func (e *emitter) rdtsc() { e.start(); e.b = append(e.b, 0x0f, 0x31) }

// push r64: 50+rd (REX.B for r8-r15); pop r64: 58+rd.
func (e *emitter) push(x x86asm.Reg) { e.pushPop(0x50, x) }
func (e *emitter) pop(x x86asm.Reg)  { e.pushPop(0x58, x) }
func (e *emitter) pushPop(base byte, x x86asm.Reg) {
	e.start()
	n := num(x)
	if n >= 8 {
		e.b = append(e.b, 0x41)
	}
	e.b = append(e.b, base+n&7)
}

// movabs $imm64, r64: REX.W B8+rd io.
func (e *emitter) movabs(dst x86asm.Reg, v uint64) {
	e.start()
	n := num(dst)
	rex := byte(0x48)
	if n >= 8 {
		rex |= 1
	}
	e.b = append(e.b, rex, 0xb8+n&7)
	e.b = binary.LittleEndian.AppendUint64(e.b, v)
}

// load: mov r/m, r (8B /r); store: mov r, r/m (89 /r). w: 64-bit, else 32.
func (e *emitter) load(pfx []byte, w bool, dst x86asm.Reg, src operand) {
	e.op(pfx, w, []byte{0x8b}, num(dst), src)
}
func (e *emitter) store(w bool, src x86asm.Reg, dst operand) {
	e.op(nil, w, []byte{0x89}, num(src), dst)
}

// mov r64, r64 (89 /r).
func (e *emitter) mov(src, dst x86asm.Reg) { e.store(true, src, r(dst)) }

// storeImm: mov $imm32, r/m (C7 /0 id; sign-extended with REX.W).
func (e *emitter) storeImm(w bool, dst operand, v int32) {
	e.op(nil, w, []byte{0xc7}, 0, dst)
	e.imm32(v)
}

// ALU with an imm32: 81 /digit id (add /0, or /1, and /4, sub /5, cmp /7).
func (e *emitter) aluImm(w bool, digit byte, dst operand, v int32) {
	e.op(nil, w, []byte{0x81}, digit, dst)
	e.imm32(v)
}

// ALU register forms: add r, r/m (01 /r); or r, r/m (09 /r); sub r/m, r (2B /r).
func (e *emitter) add(src, dst x86asm.Reg)            { e.op(nil, true, []byte{0x01}, num(src), r(dst)) }
func (e *emitter) or(src, dst x86asm.Reg)             { e.op(nil, true, []byte{0x09}, num(src), r(dst)) }
func (e *emitter) subMem(src operand, dst x86asm.Reg) { e.op(nil, true, []byte{0x2b}, num(dst), src) }

// imul $imm32, r/m64, r64: REX.W 69 /r id.
func (e *emitter) imul(dst, src x86asm.Reg, v int32) {
	e.op(nil, true, []byte{0x69}, num(dst), r(src))
	e.imm32(v)
}

// lea m, r64: REX.W 8D /r.
func (e *emitter) lea(dst x86asm.Reg, src operand) { e.op(nil, true, []byte{0x8d}, num(dst), src) }

// shl $imm8, r64: REX.W C1 /4 ib.
func (e *emitter) shl(dst x86asm.Reg, n byte) {
	e.op(nil, true, []byte{0xc1}, 4, r(dst))
	e.b = append(e.b, n)
}

// inc r/m64: REX.W FF /0; lock inc: F0 prefix.
func (e *emitter) inc(dst x86asm.Reg)  { e.op(nil, true, []byte{0xff}, 0, r(dst)) }
func (e *emitter) lockInc(dst operand) { e.op([]byte{0xf0}, true, []byte{0xff}, 0, dst) }

// 32-bit forms: xor r, r/m (31 /r); test r, r/m (85 /r); cmp r, r/m (39
// /r: flags of r/m - r); inc r/m32 (FF /0); lea m, r32 (8D /r).
func (e *emitter) xor32(src, dst x86asm.Reg)  { e.op(nil, false, []byte{0x31}, num(src), r(dst)) }
func (e *emitter) test32(src, dst x86asm.Reg) { e.op(nil, false, []byte{0x85}, num(src), r(dst)) }
func (e *emitter) cmp32(src, dst x86asm.Reg)  { e.op(nil, false, []byte{0x39}, num(src), r(dst)) }
func (e *emitter) inc32(dst operand)          { e.op(nil, false, []byte{0xff}, 0, dst) }
func (e *emitter) lea32(dst x86asm.Reg, src operand) {
	e.op(nil, false, []byte{0x8d}, num(dst), src)
}

// 64-bit register forms: test (REX.W 85 /r), cmp (REX.W 39 /r), and r,
// r/m (REX.W 21 /r).
func (e *emitter) test(src, dst x86asm.Reg) { e.op(nil, true, []byte{0x85}, num(src), r(dst)) }
func (e *emitter) cmp(src, dst x86asm.Reg)  { e.op(nil, true, []byte{0x39}, num(src), r(dst)) }
func (e *emitter) and(src, dst x86asm.Reg)  { e.op(nil, true, []byte{0x21}, num(src), r(dst)) }

// cmp r64, m64 (REX.W 39 /r: flags of m - r); lock cmpxchg r64, m64
// (F0 REX.W 0F B1 /r); dec r32 (FF /1); ud2 (0F 0B).
func (e *emitter) cmpMem(src x86asm.Reg, dst operand) { e.op(nil, true, []byte{0x39}, num(src), dst) }
func (e *emitter) lockCmpxchg(src x86asm.Reg, dst operand) {
	e.op([]byte{0xf0}, true, []byte{0x0f, 0xb1}, num(src), dst)
}
func (e *emitter) dec32(dst x86asm.Reg) { e.op(nil, false, []byte{0xff}, 1, r(dst)) }
func (e *emitter) ud2()                 { e.start(); e.b = append(e.b, 0x0f, 0x0b) }

// test $imm32, r/m: F7 /0 id.
func (e *emitter) testImm(w bool, dst operand, v int32) {
	e.op(nil, w, []byte{0xf7}, 0, dst)
	e.imm32(v)
}

// Byte forms, for the low byte of rax, rcx, rdx or rbx only (no REX
// needed): movzbl m8, r32 (0F B6 /r); mov r8, m8 (88 /r); test r8, r/m8
// (84 /r).
func (e *emitter) movzxb(dst x86asm.Reg, src operand) {
	e.op(nil, false, []byte{0x0f, 0xb6}, num(dst), src)
}
func (e *emitter) storeByte(src x86asm.Reg, dst operand) {
	e.op(nil, false, []byte{0x88}, lowByte(src), dst)
}
func (e *emitter) testByte(src, dst x86asm.Reg) {
	e.op(nil, false, []byte{0x84}, lowByte(src), r(dst))
}

func lowByte(x x86asm.Reg) byte {
	if n := num(x); n < 4 {
		return n
	}
	panic(fmt.Sprintf("stub emitter: %v's low byte needs a REX prefix", x))
}

// shr and sar $imm8, r64: REX.W C1 /5 and /7 ib.
func (e *emitter) shr(dst x86asm.Reg, n byte) {
	e.op(nil, true, []byte{0xc1}, 5, r(dst))
	e.b = append(e.b, n)
}
func (e *emitter) sar(dst x86asm.Reg, n byte) {
	e.op(nil, true, []byte{0xc1}, 7, r(dst))
	e.b = append(e.b, n)
}

// mov %cr3, r64: 0F 20 /3 (register form only).
func (e *emitter) movFromCR3(dst x86asm.Reg) { e.op(nil, false, []byte{0x0f, 0x20}, 3, r(dst)) }

// call rel32 (E8 cd) to label; ret (C3).
func (e *emitter) call(label string) {
	e.start()
	e.b = append(e.b, 0xe8)
	e.fixups[len(e.b)] = label
	e.b = append(e.b, 0, 0, 0, 0)
}
func (e *emitter) ret() { e.start(); e.b = append(e.b, 0xc3) }

// Condition codes of jcc rel32 (0F 80+cc cd).
const (
	ccAE = 0x3 // unsigned >=
	ccE  = 0x4
	ccNE = 0x5
	ccA  = 0x7 // unsigned >
)

// jcc rel32 to label.
func (e *emitter) jcc(cc byte, label string) {
	e.start()
	e.b = append(e.b, 0x0f, 0x80+cc)
	e.fixups[len(e.b)] = label
	e.b = append(e.b, 0, 0, 0, 0)
}

// jmp rel32 (E9 cd) to label.
func (e *emitter) jmp(label string) {
	e.start()
	e.b = append(e.b, 0xe9)
	e.fixups[len(e.b)] = label
	e.b = append(e.b, 0, 0, 0, 0)
}

// jmpAbs is jmp rel32 to an absolute address; the code will run at base.
func (e *emitter) jmpAbs(base, target uint64) error {
	e.start()
	e.b = append(e.b, 0xe9)
	rel, ok := rel32(base+uint64(len(e.b))+4, target)
	if !ok {
		return fmt.Errorf("stub: jmp from %#x to %#x does not fit a rel32", base+uint64(len(e.b))-1, target)
	}
	e.imm32(rel)
	return nil
}

// raw emits bytes as one instruction (the displaced one).
func (e *emitter) raw(b []byte) { e.start(); e.b = append(e.b, b...) }

func (e *emitter) bind(label string) { e.labels[label] = len(e.b) }

// finish resolves the labels.
func (e *emitter) finish() ([]byte, error) {
	for at, l := range e.fixups {
		to, ok := e.labels[l]
		if !ok {
			return nil, fmt.Errorf("stub emitter: label %q never bound", l)
		}
		binary.LittleEndian.PutUint32(e.b[at:], uint32(int32(to-(at+4))))
	}
	return e.b, nil
}

// rel32 is the displacement from next (the address after the rel32) to
// target, if it fits.
func rel32(next, target uint64) (int32, bool) {
	d := int64(target - next)
	return int32(d), d == int64(int32(d))
}
