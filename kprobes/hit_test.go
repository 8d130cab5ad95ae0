package kprobes

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/hvprobe/hvprobe/vmm"
)

// Fixed layout of the differential tests: f is the probed function, g a
// callee returning 42 in rax, h a jump target setting rbx and returning.
const (
	fVA = textVA + 0x400
	gVA = textVA + 0x800
	hVA = textVA + 0x900
)

func rel32(from, to uint64) []byte {
	return binary.LittleEndian.AppendUint32(nil, uint32(int32(int64(to-from))))
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func b(x ...byte) []byte { return x }

// movRBX1 is mov $1,%rbx, the 7 bytes the branch cases jump over.
var movRBX1 = b(0x48, 0xc7, 0xc3, 0x01, 0x00, 0x00, 0x00)

type hitCase struct {
	name string
	// code builds f; disp(n, target) is the rel32 from f+n to target.
	code  func(disp func(n int, to uint64) []byte) []byte
	off   uint64 // probe offset in f
	setup func(e *env)
	fixup bool // the probed instruction has an exception-table entry
	// mode is how a hit executes without a post handler: "emulate",
	// "branch" (an emulated control transfer), "boost" or "step"; post
	// with one, when it differs from mode ("" for a boost: "step").
	mode, post string
	// checkPost is Check's ExecPost when the engine decides only at the
	// hit, from the registers, not to emulate.
	checkPost string
	// steps is how many step exits a stepped hit costs (a rep string
	// instruction: one per iteration); 0 means 1.
	steps int
	// rbx, when set, is RBX after the run: which way a branch went.
	rbx uint64
}

func code(c ...byte) func(func(int, uint64) []byte) []byte {
	return func(func(int, uint64) []byte) []byte { return c }
}

// ripOp is an instruction with a %rip-relative operand addressing to:
// pre, the disp32, post, then the rest of f.
func ripOp(pre []byte, to uint64, post []byte, rest ...byte) func(func(int, uint64) []byte) []byte {
	return func(d func(int, uint64) []byte) []byte {
		return cat(pre, d(len(pre)+4+len(post), to), post, rest)
	}
}

func setRegs(f func(r *vmm.Regs)) func(e *env) { return func(e *env) { f(&e.cpu.regs) } }

const (
	// Untouched by layout: rep and other memory rows use these.
	repSrc = dataVA + 0x400
	repDst = dataVA + 0x500
	sxData = dataVA + 0x48 // 0x8786858483828180: sign bits set in every byte
)

var hitCases = append(append(baseCases, dataCases...), jccCases()...)

var baseCases = []hitCase{
	{name: "nop", code: code(0x90, 0xc3), mode: "emulate"},
	{name: "nop5", code: code(0x0f, 0x1f, 0x44, 0, 0, 0xc3), mode: "emulate"},
	{name: "nopw9", code: code(0x66, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0, 0xc3), mode: "emulate"},
	{name: "cs nopw", code: code(0x2e, 0x66, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0, 0xc3), mode: "emulate"},
	{name: "endbr64", code: code(0xf3, 0x0f, 0x1e, 0xfa, 0xc3), mode: "emulate"},
	{name: "push rbp", code: code(0x55, 0x5d, 0xc3), mode: "emulate"},
	{name: "push r12", code: code(0x41, 0x54, 0x41, 0x5c, 0xc3), mode: "emulate"},
	{name: "push rsp", code: code(0x54, 0x5b, 0xc3), mode: "emulate"},
	{name: "pop rbp", code: code(0x55, 0x5d, 0xc3), off: 1, mode: "emulate"},
	{name: "pop r12", code: code(0x41, 0x54, 0x41, 0x5c, 0xc3), off: 2, mode: "emulate"},
	{name: "pop rsp", code: code(0x54, 0x5c, 0xc3), off: 1, mode: "emulate"},
	{name: "push imm8", code: code(0x6a, 0xff, 0x58, 0xc3), mode: "emulate"},
	{name: "push imm32", code: code(0x68, 0x78, 0x56, 0x34, 0x82, 0x58, 0xc3), mode: "emulate"},
	{name: "pushw imm8", code: code(0x66, 0x6a, 0xff, 0x66, 0x58, 0xc3), mode: "boost"}, // 16-bit: not emulated
	{name: "push rsp mem", code: code(0xff, 0x74, 0x24, 0x08, 0x58, 0xc3), mode: "boost", post: "emulate",
		setup: func(e *env) { writeU64(e.k, e.cpu.regs.RSP+8, 0xfeedface) }},
	{name: "push rip mem", code: ripOp(b(0xff, 0x35), dataVA, nil, 0x58, 0xc3), mode: "boost", post: "emulate"},
	{name: "push r10 mem", code: code(0x41, 0xff, 0x72, 0xf8, 0x58, 0xc3), mode: "boost", post: "emulate",
		setup: setRegs(func(r *vmm.Regs) { r.R10 = dataVA + 0x10 })},
	{name: "pop rsp mem", code: code(0x6a, 0x07, 0x8f, 0x44, 0x24, 0x08, 0xc3), off: 2, mode: "boost", post: "emulate"},
	{name: "pop rsp mem fixup", code: code(0x6a, 0x07, 0x8f, 0x44, 0x24, 0x08, 0xc3), off: 2, fixup: true, mode: "emulate"},
	{name: "leave", code: code(0x55, 0x48, 0x89, 0xe5, 0xc9, 0xc3), off: 4, mode: "emulate"},
	{name: "mov rsp,rbp", code: code(0x48, 0x89, 0xe5, 0xc3), mode: "emulate"},
	{name: "mov ecx,eax", code: code(0x89, 0xc8, 0xc3), mode: "emulate",
		setup: setRegs(func(r *vmm.Regs) { r.RCX = 0xdeadbeef_cafef00d })},
	{name: "sub imm8 rsp", code: code(0x48, 0x83, 0xec, 0x10, 0x48, 0x83, 0xc4, 0x10, 0xc3), mode: "emulate"},
	{name: "sub imm32 rsp", code: code(0x48, 0x81, 0xec, 0, 1, 0, 0, 0x48, 0x81, 0xc4, 0, 1, 0, 0, 0xc3), mode: "emulate"},
	{name: "add -8 rsp", code: code(0x48, 0x83, 0xc4, 0xf8, 0x48, 0x83, 0xec, 0xf8, 0xc3), mode: "emulate"},
	{name: "sub borrow", code: code(0x48, 0x83, 0xe8, 0x7f, 0xc3), mode: "emulate",
		setup: setRegs(func(r *vmm.Regs) { r.RAX = 0x10 })},
	{name: "add overflow", code: code(0x48, 0x83, 0xc0, 0x01, 0xc3), mode: "emulate",
		setup: setRegs(func(r *vmm.Regs) { r.RAX = 0x7fffffffffffffff })},
	{name: "add carry zero", code: code(0x48, 0x83, 0xc0, 0x01, 0xc3), mode: "emulate",
		setup: setRegs(func(r *vmm.Regs) { r.RAX = ^uint64(0) })},
	{name: "xor eax", code: code(0x31, 0xc0, 0xc3), mode: "emulate",
		setup: setRegs(func(r *vmm.Regs) { r.RFLAGS |= flagCF | flagOF | flagSF })},
	{name: "xor r8", code: code(0x4d, 0x31, 0xc0, 0xc3), mode: "emulate"},

	// %rip-relative loads of each width, stores, compares.
	{name: "mov rip load8", code: ripOp(b(0x8a, 0x05), sxData, nil, 0xc3), mode: "boost", post: "emulate"},
	{name: "mov rip load16", code: ripOp(b(0x66, 0x8b, 0x05), sxData, nil, 0xc3), mode: "boost", post: "emulate"},
	{name: "mov rip load32", code: ripOp(b(0x8b, 0x05), sxData, nil, 0xc3), mode: "boost", post: "emulate"},
	{name: "mov rip load64", code: ripOp(b(0x48, 0x8b, 0x05), dataVA, nil, 0xc3), mode: "boost", post: "emulate"},
	{name: "mov rip load64 fixup", code: ripOp(b(0x48, 0x8b, 0x05), dataVA, nil, 0xc3), fixup: true, mode: "emulate"},
	{name: "movzbl rip", code: ripOp(b(0x0f, 0xb6, 0x05), sxData, nil, 0xc3), mode: "boost", post: "emulate"},
	{name: "movzwl rip", code: ripOp(b(0x0f, 0xb7, 0x05), sxData, nil, 0xc3), mode: "boost", post: "emulate"},
	{name: "movsbq rip", code: ripOp(b(0x48, 0x0f, 0xbe, 0x05), sxData, nil, 0xc3), mode: "boost", post: "emulate"},
	{name: "movslq rip", code: ripOp(b(0x48, 0x63, 0x05), sxData, nil, 0xc3), mode: "boost", post: "emulate"},
	{name: "mov rip store", code: ripOp(b(0x48, 0x89, 0x05), dataVA+0x20, nil, 0xc3), mode: "boost", post: "emulate"},
	{name: "movl imm rip store", code: ripOp(b(0xc7, 0x05), dataVA+0x28, b(0x78, 0x56, 0x34, 0x12), 0xc3), mode: "boost", post: "emulate"},
	{name: "66 mov rip store", code: ripOp(b(0x66, 0x89, 0x05), dataVA+0x30, nil, 0xc3), mode: "boost", post: "emulate"},
	{name: "cmp imm rip ne", code: ripOp(b(0x83, 0x3d), dataVA, b(0x90), cat(b(0x74, 0x07), movRBX1, b(0xc3))...),
		mode: "boost", post: "emulate", rbx: 1},
	{name: "cmp imm rip eq", code: ripOp(b(0x83, 0x3d), dataVA+0x38, b(0x90), cat(b(0x74, 0x07), movRBX1, b(0xc3))...),
		mode: "boost", post: "emulate", rbx: 0x2222, setup: func(e *env) { writeU64(e.k, dataVA+0x38, 0xffffff90) }},
	{name: "lea rip", code: ripOp(b(0x48, 0x8d, 0x35), dataVA+0x40, nil, 0xc3), mode: "emulate"},
	{name: "lea base+index", code: code(0x48, 0x8d, 0x04, 0x37, 0xc3), mode: "emulate",
		setup: setRegs(func(r *vmm.Regs) { r.RDI, r.RSI = 0xffff888000001000, 7 })},

	// Any addressing is boosted where the kernel has no fixup.
	{name: "mov rdi mem", code: code(0x48, 0x8b, 0x07, 0xc3), mode: "boost", post: "emulate",
		setup: setRegs(func(r *vmm.Regs) { r.RDI = dataVA })},
	{name: "mov rdi mem fixup", code: code(0x48, 0x8b, 0x07, 0xc3), fixup: true, mode: "emulate",
		setup: setRegs(func(r *vmm.Regs) { r.RDI = dataVA })},
	{name: "mov base+index*8 mem", code: code(0x48, 0x8b, 0x04, 0xf7, 0xc3), mode: "boost", post: "emulate",
		setup: setRegs(func(r *vmm.Regs) { r.RDI, r.RSI = dataVA, 2 })},
	{name: "mov r8 store", code: code(0x4c, 0x89, 0x47, 0x08, 0xc3), mode: "boost", post: "emulate",
		setup: setRegs(func(r *vmm.Regs) { r.RDI = repDst })},

	// Locked and implicitly locked read-modify-writes.
	{name: "lock add rip", code: ripOp(b(0xf0, 0x48, 0x01, 0x05), dataVA, nil, 0xc3), mode: "boost"},
	{name: "lock incl", code: code(0xf0, 0xff, 0x07, 0xc3), mode: "boost",
		setup: setRegs(func(r *vmm.Regs) { r.RDI = dataVA })},
	{name: "lock orb", code: code(0xf0, 0x80, 0x0f, 0x01, 0xc3), mode: "boost",
		setup: setRegs(func(r *vmm.Regs) { r.RDI = dataVA + 0x38 })},
	{name: "lock xadd", code: code(0xf0, 0x48, 0x0f, 0xc1, 0x07, 0xc3), mode: "boost",
		setup: setRegs(func(r *vmm.Regs) { r.RDI = dataVA })},
	{name: "lock xadd fixup", code: code(0xf0, 0x48, 0x0f, 0xc1, 0x07, 0xc3), fixup: true, mode: "step",
		setup: setRegs(func(r *vmm.Regs) { r.RDI = dataVA })},
	{name: "lock cmpxchg equal", code: code(0xf0, 0x48, 0x0f, 0xb1, 0x0f, 0xc3), mode: "boost",
		setup: setRegs(func(r *vmm.Regs) { r.RDI, r.RAX, r.RCX = dataVA, 0x1234567890, 0x42 })},
	{name: "lock cmpxchg differ", code: code(0xf0, 0x48, 0x0f, 0xb1, 0x0f, 0xc3), mode: "boost",
		setup: setRegs(func(r *vmm.Regs) { r.RDI, r.RCX = dataVA, 0x42 })},
	{name: "xchg mem", code: code(0x48, 0x87, 0x07, 0xc3), mode: "boost",
		setup: setRegs(func(r *vmm.Regs) { r.RDI = dataVA })},

	// String instructions: repeated ones run to completion from a boosted
	// slot, or are stepped one iteration per exit (post handler, fixup).
	{name: "rep stosq", code: code(0xf3, 0x48, 0xab, 0xc3), mode: "boost", post: "emulate", setup: repRegs(4)},
	{name: "rep stosq rcx=0", code: code(0xf3, 0x48, 0xab, 0xc3), mode: "boost", post: "emulate", setup: repRegs(0)},
	{name: "rep stosq fixup", code: code(0xf3, 0x48, 0xab, 0xc3), fixup: true, mode: "emulate", setup: repRegs(4)},
	{name: "rep stosq rcx=0 fixup", code: code(0xf3, 0x48, 0xab, 0xc3), fixup: true, mode: "emulate", setup: repRegs(0)},
	{name: "rep movsb", code: code(0xf3, 0xa4, 0xc3), mode: "boost", post: "emulate", setup: repRegs(5)},
	{name: "rep movsb fixup", code: code(0xf3, 0xa4, 0xc3), fixup: true, mode: "emulate", setup: repRegs(5)},
	{name: "rep movsb rcx=0", code: code(0xf3, 0xa4, 0xc3), mode: "boost", post: "emulate", setup: repRegs(0)},
	{name: "rep movsb rcx=0 fixup", code: code(0xf3, 0xa4, 0xc3), fixup: true, mode: "emulate", setup: repRegs(0)},
	{name: "std rep movsq fixup", code: code(0xfd, 0xf3, 0x48, 0xa5, 0xfc, 0xc3), off: 1, fixup: true, mode: "emulate",
		setup: func(e *env) { repRegs(3)(e); e.cpu.regs.RSI += 16; e.cpu.regs.RDI += 16 }},
	{name: "repe cmpsb", code: code(0xf3, 0xa6, 0xc3), mode: "boost", steps: 3, setup: repRegs(8)},
	{name: "repe cmpsb fixup", code: code(0xf3, 0xa6, 0xc3), fixup: true, mode: "step", steps: 3, setup: repRegs(8)},
	{name: "repne scasb fixup", code: code(0xf2, 0xae, 0xc3), fixup: true, mode: "step", steps: 4,
		setup: func(e *env) { repRegs(16)(e); e.cpu.regs.RDI, e.cpu.regs.RAX = repSrc, 0x33 }},
	{name: "movsq", code: code(0x48, 0xa5, 0xc3), mode: "boost", post: "emulate", setup: repRegs(9)},
	{name: "lodsq", code: code(0x48, 0xad, 0xc3), mode: "boost", setup: repRegs(9)},

	// Control transfers.
	{name: "call rel32", code: ripOp(b(0xe8), gVA, nil, 0xc3), mode: "branch"},
	{name: "call reg", code: code(0xff, 0xd0, 0xc3), mode: "branch",
		setup: setRegs(func(r *vmm.Regs) { r.RAX = gVA })},
	{name: "call r11", code: code(0x41, 0xff, 0xd3, 0xc3), mode: "branch",
		setup: setRegs(func(r *vmm.Regs) { r.R11 = gVA })},
	{name: "call rip mem", code: ripOp(b(0xff, 0x15), dataVA+8, nil, 0xc3), mode: "branch"},
	{name: "call reg mem", code: code(0xff, 0x53, 0x08, 0xc3), mode: "branch",
		setup: setRegs(func(r *vmm.Regs) { r.RBX = dataVA })},
	{name: "call rsp mem", code: code(0xff, 0x54, 0x24, 0x08, 0xc3), mode: "branch",
		setup: func(e *env) { writeU64(e.k, e.cpu.regs.RSP+8, gVA) }},
	{name: "jmp reg", code: code(0xff, 0xe0), mode: "branch",
		setup: setRegs(func(r *vmm.Regs) { r.RAX = hVA })},
	{name: "jmp r11", code: code(0x41, 0xff, 0xe3), mode: "branch",
		setup: setRegs(func(r *vmm.Regs) { r.R11 = hVA })},
	{name: "jmp rip mem", code: ripOp(b(0xff, 0x25), dataVA+16, nil), mode: "branch"},
	{name: "bnd jmp reg", code: code(0xf2, 0xff, 0xe0), mode: "branch",
		setup: setRegs(func(r *vmm.Regs) { r.RAX = hVA })},
	{name: "notrack jmp reg", code: code(0x3e, 0xff, 0xe0), mode: "branch",
		setup: setRegs(func(r *vmm.Regs) { r.RAX = hVA })},
	{name: "ret", code: code(0xc3), mode: "branch"},
	{name: "rep ret", code: code(0xf3, 0xc3), mode: "branch"},
	{name: "bnd ret", code: code(0xf2, 0xc3), mode: "branch"},
	{name: "ret imm16", code: code(0xc2, 0x10, 0x00), mode: "branch"},
	{name: "jmp rel8", code: code(cat(b(0xeb, 0x07), movRBX1, b(0xc3))...), mode: "branch", rbx: 0x2222},
	{name: "jmp rel32", code: code(cat(b(0xe9, 0x07, 0, 0, 0), movRBX1, b(0xc3))...), mode: "branch", rbx: 0x2222},
	// f: jmp +9 to the probe; mov $1,%rbx; ret; nop; probe: jmp back to the mov.
	{name: "jmp rel8 back", code: code(cat(b(0xeb, 0x09), movRBX1, b(0xc3, 0x90, 0xeb, 0xf5))...), off: 11, mode: "branch", rbx: 1},
	{name: "jmp rel32 back", code: code(cat(b(0xeb, 0x09), movRBX1, b(0xc3, 0x90, 0xe9, 0xf2, 0xff, 0xff, 0xff))...), off: 11, mode: "branch", rbx: 1},
	{name: "jrcxz taken", code: code(cat(b(0xe3, 0x07), movRBX1, b(0xc3))...), mode: "branch", rbx: 0x2222,
		setup: setRegs(func(r *vmm.Regs) { r.RCX = 0 })},
	{name: "jrcxz not taken", code: code(cat(b(0xe3, 0x07), movRBX1, b(0xc3))...), mode: "branch", rbx: 1},
	{name: "loop taken", code: code(cat(b(0xe2, 0x07), movRBX1, b(0xc3))...), mode: "branch", rbx: 0x2222,
		setup: setRegs(func(r *vmm.Regs) { r.RCX = 2 })},
	{name: "loop not taken", code: code(cat(b(0xe2, 0x07), movRBX1, b(0xc3))...), mode: "branch", rbx: 1,
		setup: setRegs(func(r *vmm.Regs) { r.RCX = 1 })},
	{name: "loope taken", code: code(cat(b(0xe1, 0x07), movRBX1, b(0xc3))...), mode: "branch", rbx: 0x2222,
		setup: setRegs(func(r *vmm.Regs) { r.RCX, r.RFLAGS = 2, 0x202|flagZF })},
	{name: "loope not taken", code: code(cat(b(0xe1, 0x07), movRBX1, b(0xc3))...), mode: "branch", rbx: 1,
		setup: setRegs(func(r *vmm.Regs) { r.RCX = 2 })},
	{name: "loopne taken", code: code(cat(b(0xe0, 0x07), movRBX1, b(0xc3))...), mode: "branch", rbx: 0x2222,
		setup: setRegs(func(r *vmm.Regs) { r.RCX = 2 })},
	{name: "loopne not taken", code: code(cat(b(0xe0, 0x07), movRBX1, b(0xc3))...), mode: "branch", rbx: 1,
		setup: setRegs(func(r *vmm.Regs) { r.RCX, r.RFLAGS = 2, 0x202|flagZF })},

	// Flags and IF: stepped, with the seeds' fixups.
	{name: "pushf IF=1", code: code(0x9c, 0x58, 0xc3), mode: "emulate"},
	{name: "pushf IF=0", code: code(0x9c, 0x58, 0xc3), mode: "emulate",
		setup: setRegs(func(r *vmm.Regs) { r.RFLAGS = 0x2 })},
	{name: "popf IF 0->1", code: code(0x68, 0x46, 0x02, 0, 0, 0x9d, 0xc3), off: 5, mode: "emulate",
		setup: setRegs(func(r *vmm.Regs) { r.RFLAGS = 0x2 })},
	{name: "popf IF 1->0", code: code(0x68, 0x46, 0x00, 0, 0, 0x9d, 0xc3), off: 5, mode: "emulate"},
	{name: "cli", code: code(0xfa, 0xc3), mode: "emulate"},
	{name: "sti", code: code(0xfb, 0xc3), mode: "step",
		setup: setRegs(func(r *vmm.Regs) { r.RFLAGS = 0x2 })},
}

func (c hitCase) postMode() string {
	switch {
	case c.post != "":
		return c.post
	case c.mode == "boost":
		return "step"
	}
	return c.mode
}

// memVA holds two words for the data rows (memRegs); memRO is a
// read-only page's word.
const memVA = dataVA + 0x600

// memRegs puts v at memVA and w at memVA+8, points %rdi at memVA and
// fills %rax and %rsi with bits everywhere, so that merges and
// zero-extension show.
func memRegs(v, w uint64) func(e *env) {
	return func(e *env) {
		writeU64(e.k, memVA, v)
		writeU64(e.k, memVA+8, w)
		r := &e.cpu.regs
		r.RDI, r.RAX, r.RSI = memVA, 0xdeadbeef_cafef00d, 0x0123456789abcdef
	}
}

// flagsIn sets RFLAGS (with IF and bit 1) and the registers f asks for.
func flagsIn(fl uint64, f func(r *vmm.Regs)) func(e *env) {
	return setRegs(func(r *vmm.Regs) { r.RFLAGS = 0x202 | fl; f(r) })
}

// dataCases are the instructions with data operands and the flag
// arithmetic the host emulates: boosted without a post handler when they
// touch memory, emulated with one.
var dataCases = []hitCase{
	// mov, every width and direction; 8/16-bit writes merge, 32-bit ones
	// zero-extend.
	{name: "mov load8 merge", code: code(0x8a, 0x47, 0x08, 0xc3), mode: "boost", post: "emulate", setup: memRegs(0, 0xf1)},
	{name: "mov load8 ah", code: code(0x8a, 0x67, 0x08, 0xc3), mode: "boost", post: "emulate", setup: memRegs(0, 0x81)},
	{name: "mov load16 merge", code: code(0x66, 0x8b, 0x47, 0x08, 0xc3), mode: "boost", post: "emulate", setup: memRegs(0, 0x8001)},
	{name: "mov load32 zero-extends", code: code(0x8b, 0x47, 0x08, 0xc3), mode: "boost", post: "emulate", setup: memRegs(0, 0xffffffff_80000001)},
	{name: "mov load64 base+index*8+disp", code: code(0x48, 0x8b, 0x44, 0xcf, 0xf8, 0xc3), mode: "boost", post: "emulate",
		setup: func(e *env) { memRegs(0, 0x1122334455667788)(e); e.cpu.regs.RCX = 2 }},
	{name: "mov load r15 index*4 neg disp", code: code(0x4e, 0x8b, 0x7c, 0xb7, 0xfc, 0xc3), mode: "boost", post: "emulate",
		setup: func(e *env) { memRegs(0, 0x99)(e); e.cpu.regs.R14 = 3 }}, // mov -4(%rdi,%r14,4),%r15
	{name: "mov store8", code: code(0x88, 0x47, 0x03, 0xc3), mode: "boost", post: "emulate", setup: memRegs(^uint64(0), 0)},
	{name: "mov store8 ah", code: code(0x88, 0x67, 0x05, 0xc3), mode: "boost", post: "emulate", setup: memRegs(0, 0)},
	{name: "mov store16", code: code(0x66, 0x89, 0x47, 0x02, 0xc3), mode: "boost", post: "emulate", setup: memRegs(^uint64(0), 0)},
	{name: "mov store32", code: code(0x89, 0x47, 0x04, 0xc3), mode: "boost", post: "emulate", setup: memRegs(^uint64(0), 0)},
	{name: "mov store64 r12", code: code(0x4c, 0x89, 0x67, 0x08, 0xc3), mode: "boost", post: "emulate", setup: memRegs(0, 0)},
	{name: "movb imm store", code: code(0xc6, 0x47, 0x01, 0x80, 0xc3), mode: "boost", post: "emulate", setup: memRegs(0, 0)},
	{name: "movw imm store", code: code(0x66, 0xc7, 0x07, 0x34, 0x92, 0xc3), mode: "boost", post: "emulate", setup: memRegs(^uint64(0), 0)},
	{name: "movq imm32 store sign-extends", code: code(0x48, 0xc7, 0x47, 0x08, 0xfe, 0xff, 0xff, 0xff, 0xc3), mode: "boost", post: "emulate", setup: memRegs(0, 0)},
	{name: "mov imm32 reg sign-extends", code: code(0x48, 0xc7, 0xc0, 0x00, 0x00, 0x00, 0x80, 0xc3), mode: "emulate", setup: memRegs(0, 0)},
	{name: "mov imm32 r32 zero-extends", code: code(0xb8, 0x00, 0x00, 0x00, 0x80, 0xc3), mode: "emulate", setup: memRegs(0, 0)},
	{name: "movabs imm64", code: code(0x49, 0xbb, 1, 2, 3, 4, 5, 6, 7, 0x88, 0xc3), mode: "emulate"},
	{name: "mov imm8 bh", code: code(0xb7, 0x99, 0xc3), mode: "emulate"},
	{name: "mov r8w,r9w", code: code(0x66, 0x45, 0x89, 0xc1, 0xc3), mode: "emulate",
		setup: setRegs(func(r *vmm.Regs) { r.R8, r.R9 = 0xabcd, 0xffffffff_ffffffff })},
	{name: "mov sil,dl", code: code(0x40, 0x88, 0xf2, 0xc3), mode: "emulate"},
	{name: "movabs moffs load", code: code(0x48, 0xa1, 0x00, 0x06, 0x00, 0x82, 0xff, 0xff, 0xff, 0xff, 0xc3), mode: "boost", post: "emulate",
		setup: memRegs(0x5566, 0)},
	{name: "mov gs load", code: code(0x65, 0x48, 0x8b, 0x04, 0x25, 0x08, 0, 0, 0, 0xc3), mode: "boost", post: "emulate",
		setup: func(e *env) { memRegs(0, 0x7777_0000_1234)(e); e.cpu.sregs.GS.Base = memVA }},
	{name: "mov gs store32", code: code(0x65, 0x89, 0x34, 0x25, 0x04, 0, 0, 0, 0xc3), mode: "boost", post: "emulate",
		setup: func(e *env) { memRegs(^uint64(0), 0)(e); e.cpu.sregs.GS.Base = memVA }},
	{name: "mov fs rdi load", code: code(0x64, 0x48, 0x8b, 0x07, 0xc3), mode: "boost", post: "emulate",
		setup: func(e *env) { memRegs(0x42, 0)(e); e.cpu.regs.RDI = 0x600; e.cpu.sregs.FS.Base = dataVA }},
	{name: "mov rip load8 fixup", code: ripOp(b(0x8a, 0x05), sxData, nil, 0xc3), fixup: true, mode: "emulate"},

	// movzx, movsx, movsxd: both signs, each source width.
	{name: "movzbl mem", code: code(0x0f, 0xb6, 0x47, 0x08, 0xc3), mode: "boost", post: "emulate", setup: memRegs(0, 0xf0)},
	{name: "movzwq mem", code: code(0x48, 0x0f, 0xb7, 0x47, 0x08, 0xc3), mode: "boost", post: "emulate", setup: memRegs(0, 0x8765)},
	{name: "movzbw ah", code: code(0x66, 0x0f, 0xb6, 0xd4, 0xc3), mode: "emulate", setup: memRegs(0, 0)}, // movzbw %ah,%dx
	{name: "movsbl negative", code: code(0x0f, 0xbe, 0x47, 0x08, 0xc3), mode: "boost", post: "emulate", setup: memRegs(0, 0x80)},
	{name: "movsbl positive", code: code(0x0f, 0xbe, 0x47, 0x08, 0xc3), mode: "boost", post: "emulate", setup: memRegs(0, 0x7f)},
	{name: "movsbw negative", code: code(0x66, 0x0f, 0xbe, 0x47, 0x08, 0xc3), mode: "boost", post: "emulate", setup: memRegs(0, 0xff)},
	{name: "movswq negative", code: code(0x48, 0x0f, 0xbf, 0x47, 0x08, 0xc3), mode: "boost", post: "emulate", setup: memRegs(0, 0x8000)},
	{name: "movswl positive reg", code: code(0x0f, 0xbf, 0xc6, 0xc3), mode: "emulate", setup: memRegs(0, 0)}, // movswl %si,%eax
	{name: "movslq negative", code: code(0x48, 0x63, 0x47, 0x08, 0xc3), mode: "boost", post: "emulate", setup: memRegs(0, 0x80000000)},
	{name: "movslq positive reg", code: code(0x48, 0x63, 0xc6, 0xc3), mode: "emulate", setup: memRegs(0, 0)}, // movslq %esi,%rax
	{name: "movsbq r10b", code: code(0x49, 0x0f, 0xbe, 0xc2, 0xc3), mode: "emulate",
		setup: setRegs(func(r *vmm.Regs) { r.R10 = 0x1ff })},

	// lea: index*scale, 32-bit destinations truncate and zero-extend.
	{name: "lea disp(base,index,8)", code: code(0x48, 0x8d, 0x44, 0xf7, 0x10, 0xc3), mode: "emulate", setup: memRegs(0, 0)},
	{name: "lea 32-bit", code: code(0x8d, 0x44, 0xf7, 0x10, 0xc3), mode: "emulate", setup: memRegs(0, 0)},
	{name: "lea index*2 no base", code: code(0x48, 0x8d, 0x04, 0x75, 0xf0, 0xff, 0xff, 0xff, 0xc3), mode: "emulate", setup: memRegs(0, 0)},
	{name: "lea gs ignores base", code: code(0x65, 0x48, 0x8d, 0x47, 0x08, 0xc3), mode: "emulate",
		setup: func(e *env) { memRegs(0, 0)(e); e.cpu.sregs.GS.Base = 0x1000 }},

	// add/sub/cmp: carry, overflow, parity and AF at every width.
	{name: "add al carry", code: code(0x04, 0x01, 0xc3), mode: "emulate", setup: flagsIn(0, func(r *vmm.Regs) { r.RAX = 0x12ff })},
	{name: "add al overflow", code: code(0x04, 0x01, 0xc3), mode: "emulate", setup: flagsIn(flagCF, func(r *vmm.Regs) { r.RAX = 0x7f })},
	{name: "add ax carry", code: code(0x66, 0x83, 0xc0, 0x01, 0xc3), mode: "emulate", setup: flagsIn(0, func(r *vmm.Regs) { r.RAX = 0x1ffff })},
	{name: "add ax overflow", code: code(0x66, 0x05, 0x00, 0x80, 0xc3), mode: "emulate", setup: flagsIn(0, func(r *vmm.Regs) { r.RAX = 0x8000 })},
	{name: "add eax overflow", code: code(0x83, 0xc0, 0x01, 0xc3), mode: "emulate", setup: flagsIn(0, func(r *vmm.Regs) { r.RAX = 0xffffffff_7fffffff })},
	{name: "add eax carry", code: code(0x01, 0xf0, 0xc3), mode: "emulate", setup: flagsIn(0, func(r *vmm.Regs) { r.RAX, r.RSI = 0xffffffff, 1 })},
	{name: "add rax,rsi overflow", code: code(0x48, 0x01, 0xf0, 0xc3), mode: "emulate", setup: flagsIn(0, func(r *vmm.Regs) { r.RAX, r.RSI = 1<<63, 1<<63 })},
	{name: "add af only", code: code(0x48, 0x83, 0xc0, 0x08, 0xc3), mode: "emulate", setup: flagsIn(0, func(r *vmm.Regs) { r.RAX = 0x38 })},
	{name: "sub al borrow", code: code(0x2c, 0x01, 0xc3), mode: "emulate", setup: flagsIn(0, func(r *vmm.Regs) { r.RAX = 0x100 })},
	{name: "sub r9w overflow", code: code(0x66, 0x41, 0x83, 0xe9, 0x01, 0xc3), mode: "emulate", setup: flagsIn(0, func(r *vmm.Regs) { r.R9 = 0x8000 })},
	{name: "sub ecx,edx borrow", code: code(0x29, 0xd1, 0xc3), mode: "emulate", setup: flagsIn(0, func(r *vmm.Regs) { r.RCX, r.RDX = 1, 2 })},
	{name: "cmp eq", code: code(0x48, 0x39, 0xf7, 0xc3), mode: "emulate", setup: flagsIn(flagCF, func(r *vmm.Regs) { r.RDI, r.RSI = 5, 5 })},
	{name: "cmp bl,imm signed", code: code(0x80, 0xfb, 0x80, 0xc3), mode: "emulate", setup: flagsIn(0, func(r *vmm.Regs) { r.RBX = 0x7f })},
	{name: "add mem,reg rmw", code: code(0x48, 0x01, 0x37, 0xc3), mode: "boost", post: "emulate", setup: memRegs(^uint64(0), 0)},
	{name: "add reg,mem", code: code(0x48, 0x03, 0x77, 0x08, 0xc3), mode: "boost", post: "emulate", setup: memRegs(0, 1<<63)},
	{name: "addb imm mem overflow", code: code(0x80, 0x47, 0x08, 0x01, 0xc3), mode: "boost", post: "emulate", setup: memRegs(0, 0x7f)},
	{name: "subq imm8 mem", code: code(0x48, 0x83, 0x6f, 0x08, 0x01, 0xc3), mode: "boost", post: "emulate", setup: memRegs(0, 0)},
	{name: "subw mem,reg", code: code(0x66, 0x29, 0x37, 0xc3), mode: "boost", post: "emulate", setup: memRegs(0x1000, 0)},
	{name: "cmpq imm mem", code: ripOp(b(0x48, 0x83, 0x3d), memVA+8, b(0x00), 0xc3), mode: "boost", post: "emulate", setup: memRegs(0, 0)},
	{name: "cmpl mem,reg", code: code(0x3b, 0x47, 0x08, 0xc3), mode: "boost", post: "emulate", setup: memRegs(0, 0xcafef00e)},
	{name: "cmp gs mem", code: code(0x65, 0x48, 0x39, 0x04, 0x25, 0x08, 0, 0, 0, 0xc3), mode: "boost", post: "emulate",
		setup: func(e *env) { memRegs(0, 0xdeadbeef_cafef00d)(e); e.cpu.sregs.GS.Base = memVA }},

	// Logic: CF, OF, AF cleared.
	{name: "test al,al", code: code(0x84, 0xc0, 0xc3), mode: "emulate", setup: flagsIn(flagCF|flagOF|flagAF, func(r *vmm.Regs) { r.RAX = 0x180 })},
	{name: "test rdi,rdi zero", code: code(0x48, 0x85, 0xff, 0xc3), mode: "emulate", setup: flagsIn(flagSF, func(r *vmm.Regs) { r.RDI = 0 })},
	{name: "testb imm mem", code: code(0xf6, 0x47, 0x08, 0x81, 0xc3), mode: "boost", post: "emulate", setup: memRegs(0, 0x80)},
	{name: "and eax imm", code: code(0x25, 0xf0, 0x00, 0x00, 0x80, 0xc3), mode: "emulate", setup: memRegs(0, 0)},
	{name: "and rax sign-extended imm8", code: code(0x48, 0x83, 0xe0, 0xf0, 0xc3), mode: "emulate", setup: memRegs(0, 0)},
	{name: "or ah,bl", code: code(0x08, 0xdc, 0xc3), mode: "emulate", setup: flagsIn(flagCF, func(r *vmm.Regs) { r.RAX, r.RBX = 0x7f00, 0x80 })},
	{name: "xor cx,dx", code: code(0x66, 0x31, 0xd1, 0xc3), mode: "emulate", setup: flagsIn(0, func(r *vmm.Regs) { r.RCX, r.RDX = 0xffff_8001, 1 })},
	{name: "orb imm mem", code: code(0x80, 0x4f, 0x09, 0x80, 0xc3), mode: "boost", post: "emulate", setup: memRegs(0, 0x1122)},
	{name: "andl imm mem", code: code(0x81, 0x67, 0x08, 0x0f, 0x0f, 0x00, 0x00, 0xc3), mode: "boost", post: "emulate", setup: memRegs(0, ^uint64(0))},
	{name: "xor reg,mem 64", code: code(0x48, 0x33, 0x47, 0x08, 0xc3), mode: "boost", post: "emulate", setup: memRegs(0, 0xdeadbeef_cafef00d)},
	{name: "xor mem,reg 32", code: code(0x31, 0x37, 0xc3), mode: "boost", post: "emulate", setup: memRegs(^uint64(0), 0)},

	// inc/dec keep CF, in registers and memory.
	{name: "inc al CF kept", code: code(0xfe, 0xc0, 0xc3), mode: "emulate", setup: flagsIn(flagCF, func(r *vmm.Regs) { r.RAX = 0x2ff })},
	{name: "inc eax overflow", code: code(0xff, 0xc0, 0xc3), mode: "emulate", setup: flagsIn(0, func(r *vmm.Regs) { r.RAX = 0xffffffff_7fffffff })},
	{name: "dec rdi CF kept clear", code: code(0x48, 0xff, 0xcf, 0xc3), mode: "emulate", setup: flagsIn(0, func(r *vmm.Regs) { r.RDI = 0 })},
	{name: "dec r11w overflow", code: code(0x66, 0x41, 0xff, 0xcb, 0xc3), mode: "emulate", setup: flagsIn(flagCF, func(r *vmm.Regs) { r.R11 = 0x8000 })},
	{name: "incl mem", code: code(0xff, 0x47, 0x08, 0xc3), mode: "boost", post: "emulate",
		setup: func(e *env) { memRegs(0, 0xffffffff)(e); e.cpu.regs.RFLAGS |= flagCF }},
	{name: "decq mem", code: code(0x48, 0xff, 0x4f, 0x08, 0xc3), mode: "boost", post: "emulate", setup: memRegs(0, 1)},
	{name: "incb gs mem", code: code(0x65, 0xfe, 0x04, 0x25, 0x08, 0, 0, 0, 0xc3), mode: "boost", post: "emulate",
		setup: func(e *env) { memRegs(0, 0x7f)(e); e.cpu.sregs.GS.Base = memVA }},

	// cmovcc reads its source either way and zero-extends a 32-bit
	// destination even when it does not move; setcc.
	{name: "cmove taken", code: code(0x48, 0x0f, 0x44, 0xc6, 0xc3), mode: "emulate", setup: flagsIn(flagZF, func(r *vmm.Regs) {})},
	{name: "cmove not taken", code: code(0x48, 0x0f, 0x44, 0xc6, 0xc3), mode: "emulate"},
	{name: "cmovl 32-bit not taken zero-extends", code: code(0x0f, 0x4c, 0xc6, 0xc3), mode: "emulate",
		setup: flagsIn(flagSF|flagOF, func(r *vmm.Regs) { r.RAX = 0xdeadbeef_cafef00d })},
	{name: "cmova mem", code: code(0x48, 0x0f, 0x47, 0x47, 0x08, 0xc3), mode: "boost", post: "emulate", setup: memRegs(0, 0x4242)},
	{name: "cmovbe mem not taken", code: code(0x0f, 0x46, 0x47, 0x08, 0xc3), mode: "boost", post: "emulate", setup: memRegs(0, 0x4242)},
	{name: "setne al", code: code(0x0f, 0x95, 0xc0, 0xc3), mode: "emulate"},
	{name: "setg ah", code: code(0x0f, 0x9f, 0xc4, 0xc3), mode: "emulate", setup: flagsIn(flagSF|flagOF, func(r *vmm.Regs) {})},
	{name: "setb mem", code: code(0x0f, 0x92, 0x47, 0x09, 0xc3), mode: "boost", post: "emulate",
		setup: func(e *env) { memRegs(0, ^uint64(0))(e); e.cpu.regs.RFLAGS |= flagCF }},

	// push/pop of memory, pop m64 addressed after the pop.
	{name: "push gs mem", code: code(0x65, 0xff, 0x34, 0x25, 0x08, 0, 0, 0, 0x58, 0xc3), mode: "boost", post: "emulate",
		setup: func(e *env) { memRegs(0, 0x7777)(e); e.cpu.sregs.GS.Base = memVA }},
	{name: "pop m64", code: code(0x6a, 0x07, 0x8f, 0x47, 0x08, 0xc3), off: 2, mode: "boost", post: "emulate", setup: memRegs(0, 0)},
	{name: "pop m64 index", code: code(0x6a, 0x07, 0x8f, 0x04, 0xcf, 0xc3), off: 2, mode: "boost", post: "emulate",
		setup: func(e *env) { memRegs(0, 0)(e); e.cpu.regs.RCX = 1 }},

	// pushf/popf at CPL 0.
	{name: "pushf RF VM cleared", code: code(0x9c, 0x58, 0xc3), mode: "emulate",
		setup: setRegs(func(r *vmm.Regs) { r.RFLAGS = 0x202 | flagCF | flagRF | flagOF })},
	{name: "popf ring-0 bits", code: code(0x68, 0xd5, 0x0e, 0x07, 0x00, 0x9d, 0xc3), off: 5, mode: "emulate"},
	{name: "popf all ones", code: code(0x6a, 0xff, 0x9d, 0x9c, 0x58, 0x6a, 0x02, 0x9d, 0xc3), off: 2, mode: "emulate"},
	{name: "cli IF=0", code: code(0xfa, 0xc3), mode: "emulate", setup: setRegs(func(r *vmm.Regs) { r.RFLAGS = 0x2 })},

	// movs/stos with DF either way; the bounded, non-overlapping ones
	// are emulated with a post handler.
	{name: "rep stosb", code: code(0xf3, 0xaa, 0xc3), mode: "boost", post: "emulate", setup: repRegs(13)},
	{name: "std rep stosb", code: code(0xfd, 0xf3, 0xaa, 0xfc, 0xc3), off: 1, mode: "boost", post: "emulate",
		setup: func(e *env) { repRegs(13)(e); e.cpu.regs.RDI += 20 }},
	{name: "rep stosd", code: code(0xf3, 0xab, 0xc3), mode: "boost", post: "emulate", setup: repRegs(5)},
	{name: "std rep stosw", code: code(0xfd, 0xf3, 0x66, 0xab, 0xfc, 0xc3), off: 1, mode: "boost", post: "emulate",
		setup: func(e *env) { repRegs(7)(e); e.cpu.regs.RDI += 30 }},
	{name: "rep movsb unaligned", code: code(0xf3, 0xa4, 0xc3), mode: "boost", post: "emulate",
		setup: func(e *env) { repRegs(37)(e); e.cpu.regs.RSI += 3; e.cpu.regs.RDI += 1 }},
	{name: "std rep movsb", code: code(0xfd, 0xf3, 0xa4, 0xfc, 0xc3), off: 1, mode: "boost", post: "emulate",
		setup: func(e *env) { repRegs(19)(e); e.cpu.regs.RSI += 40; e.cpu.regs.RDI += 33 }},
	{name: "rep movsd", code: code(0xf3, 0xa5, 0xc3), mode: "boost", post: "emulate", setup: repRegs(9)},
	{name: "rep movsq 512", code: code(0xf3, 0x48, 0xa5, 0xc3), mode: "boost", post: "emulate",
		setup: func(e *env) { repRegs(128)(e); e.cpu.regs.RSI, e.cpu.regs.RDI = dataVA+0x800, dataVA+0xc00 }},
	{name: "stosb", code: code(0xaa, 0xc3), mode: "boost", post: "emulate", setup: repRegs(9)},
	{name: "std movsw", code: code(0xfd, 0x66, 0xa5, 0xfc, 0xc3), off: 1, mode: "boost", post: "emulate", setup: repRegs(9)},
	// Overlapping, unaligned multi-byte, or beyond a page: the slot.
	{name: "rep movsb overlapping", code: code(0xf3, 0xa4, 0xc3), mode: "boost", checkPost: "emulated",
		setup: func(e *env) { repRegs(8)(e); e.cpu.regs.RDI = repSrc + 1 }, steps: 8},
	{name: "rep movsq unaligned", code: code(0xf3, 0x48, 0xa5, 0xc3), mode: "boost", checkPost: "emulated",
		setup: func(e *env) { repRegs(3)(e); e.cpu.regs.RDI++ }, steps: 3},
	{name: "rep stosq beyond a page", code: code(0xf3, 0x48, 0xab, 0xc3), mode: "boost", checkPost: "emulated",
		setup: func(e *env) { repRegs(513)(e); e.cpu.regs.RDI = stackVA }, steps: 513},
}

// repRegs sets up a string instruction over repSrc (bytes 0x30, 0x31, ...)
// and repDst (the same bytes up to the third, which differs) with count n.
func repRegs(n uint64) func(e *env) {
	return func(e *env) {
		for i := range uint64(64) {
			e.mem.b[dataGPA+repSrc-dataVA+i] = byte(0x30 + i)
			e.mem.b[dataGPA+repDst-dataVA+i] = byte(0x30 + i)
		}
		e.mem.b[dataGPA+repDst-dataVA+2] = 0xee
		r := &e.cpu.regs
		r.RCX, r.RSI, r.RDI, r.RAX = n, repSrc, repDst, 0xa5a5a5a5_5a5a5a5a
	}
}

// jccCases: each of the 16 conditions taken and not taken as jcc rel8,
// and once as jcc rel32. f is jcc +7; mov $1,%rbx; ret.
func jccCases() []hitCase {
	names := []string{"o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g"}
	// Flags making each even condition (o, b, e, be, s, p, l, le) true,
	// another set making it true, and one making it false.
	yes := []uint64{flagOF, flagCF, flagZF, flagCF, flagSF, flagPF, flagSF, flagZF}
	yes2 := []uint64{flagOF | flagCF, flagCF | flagSF, flagZF | flagSF, flagZF, flagSF | flagOF | flagZF, flagPF | flagZF, flagOF, flagSF}
	no := []uint64{flagCF, flagZF, flagCF, flagSF, flagZF, 0, flagSF | flagOF, flagSF | flagOF}
	var out []hitCase
	for cc, name := range names {
		t, f := yes[cc/2], no[cc/2]
		if cc%2 == 1 {
			t, f = f, yes[cc/2]
		}
		rel8 := cat(b(0x70+byte(cc), 0x07), movRBX1, b(0xc3))
		rel32 := cat(b(0x0f, 0x80+byte(cc), 0x07, 0, 0, 0), movRBX1, b(0xc3))
		flags := func(f uint64) func(*env) { return setRegs(func(r *vmm.Regs) { r.RFLAGS = 0x202 | f }) }
		out = append(out,
			hitCase{name: "j" + name + " taken", code: code(rel8...), mode: "branch", rbx: 0x2222, setup: flags(t)},
			hitCase{name: "j" + name + " not taken", code: code(rel8...), mode: "branch", rbx: 1, setup: flags(f)})
		t32, rbx := yes2[cc/2], uint64(0x2222)
		if cc%2 == 1 {
			rbx = 1 // the negated condition on the same flags: not taken
		}
		out = append(out, hitCase{name: "j" + name + " rel32", code: code(rel32...), mode: "branch", rbx: rbx, setup: flags(t32)})
	}
	return out
}

// layout builds the fixed guest of a differential run.
func layout(t *testing.T, c hitCase) *env {
	e := newEnv(t)
	place := func(name string, va uint64, code []byte) {
		copy(e.mem.b[textGPA+va-textVA:], code)
		e.k.syms = append(e.k.syms, sym{name, va, uint64(len(code))})
	}
	disp := func(n int, to uint64) []byte { return rel32(fVA+uint64(n), to) }
	place("f", fVA, c.code(disp))
	place("g", gVA, b(0x48, 0xc7, 0xc0, 0x2a, 0, 0, 0, 0xc3))
	place("h", hVA, b(0x48, 0xc7, 0xc3, 0x07, 0, 0, 0, 0xc3))
	writeU64(e.k, dataVA, 0x1234567890)
	writeU64(e.k, dataVA+8, gVA)
	writeU64(e.k, dataVA+16, hVA)
	writeU64(e.k, sxData, 0x8786858483828180)
	if c.fixup {
		e.k.fixups = map[uint64]bool{fVA + c.off: true}
	}
	if c.setup != nil {
		c.setup(e)
	}
	return e
}

type snapshot struct {
	regs        vmm.Regs
	data, stack []byte
}

func (e *env) snap() snapshot {
	return snapshot{e.cpu.regs, bytes.Clone(e.mem.b[dataGPA : dataGPA+dataSize]),
		bytes.Clone(e.mem.b[stackGPA : stackGPA+stackSize])}
}

func (s snapshot) diff(t *testing.T, what string, o snapshot) {
	t.Helper()
	if s.regs != o.regs {
		t.Errorf("%s: registers differ:\n got  %+v\n want %+v", what, o.regs, s.regs)
	}
	if !bytes.Equal(s.data, o.data) {
		t.Errorf("%s: data memory differs", what)
	}
	if !bytes.Equal(s.stack, o.stack) {
		i := 0
		for s.stack[i] == o.stack[i] {
			i++
		}
		t.Errorf("%s: stack differs at %#x", what, stackVA+uint64(i&^7))
	}
}

// TestHitsMatchUnprobedExecution has one row per instruction class. Each
// function runs unprobed and probed (with and without a post handler); the
// probed run must end in the same state, hit once, execute the instruction
// the expected way (as Check predicts) at the expected cost in exits, and
// show the post handler the state right after the instruction executed in
// place.
func TestHitsMatchUnprobedExecution(t *testing.T) {
	verdicts := map[string]string{"emulate": "emulated", "branch": "emulated", "boost": "boosted", "step": "stepped"}
	for _, c := range hitCases {
		t.Run(c.name, func(t *testing.T) {
			ref := layout(t, c)
			addr := fVA + c.off
			ref.cpu.regs.RIP = fVA
			ref.run(addr, 100)
			for i := 0; i == 0 || ref.cpu.regs.RIP == addr; i++ { // every iteration of a rep
				if err := execInsn(ref.k, &ref.cpu.regs, &ref.cpu.sregs, ref.mem.b[textGPA+addr-textVA:], false); err != nil {
					t.Fatal(err)
				}
			}
			after := ref.snap()
			ref.run(sentinel, 100)
			want := ref.snap()
			if c.rbx != 0 && want.regs.RBX != c.rbx {
				t.Fatalf("reference run: rbx %#x, want %#x: the row does not test what it says", want.regs.RBX, c.rbx)
			}

			for _, withPost := range []bool{false, true} {
				e := layout(t, c)
				v, err := Check(e.k, addr, "f")
				if err != nil {
					t.Fatal(err)
				}
				wantPost := verdicts[c.postMode()]
				if c.checkPost != "" {
					wantPost = c.checkPost
				}
				if v.Exec != verdicts[c.mode] || v.ExecPost != wantPost {
					t.Errorf("Check says %s, with a post handler %s; want %s, %s", v.Exec, v.ExecPost, verdicts[c.mode], wantPost)
				}
				var pre, post int
				var seen snapshot
				p := &Kprobe{Symbol: "f", Offset: c.off, PreHandler: func(ctx *Context) bool {
					pre++
					if ctx.Addr != addr || ctx.Symbol != "f" || ctx.Offset != c.off || ctx.Regs().RIP != addr {
						t.Errorf("pre handler context: %+v rip %#x", ctx, ctx.Regs().RIP)
					}
					return false
				}}
				if withPost {
					p.PostHandler = func(ctx *Context) {
						post++
						seen = snapshot{*ctx.Regs(), bytes.Clone(e.mem.b[dataGPA : dataGPA+dataSize]),
							bytes.Clone(e.mem.b[stackGPA : stackGPA+stackSize])}
					}
				}
				if err := e.m.Register(p); err != nil {
					t.Fatal(err)
				}
				e.call(fVA)
				want.diff(t, "final state", e.snap())
				if pre != 1 || p.Hits() != 1 || p.NMissed() != 0 {
					t.Errorf("pre ran %d times, hits %d, nmissed %d", pre, p.Hits(), p.NMissed())
				}
				st := e.m.Stats()
				mode := c.mode
				if withPost {
					mode = c.postMode()
				}
				got := map[string]uint64{"emulate": st.Emulated, "boost": st.Boosted, "step": st.Stepped}
				kind := map[string]string{"branch": "emulate"}[mode]
				if kind == "" {
					kind = mode
				}
				if got[kind] != 1 || st.Emulated+st.Boosted+st.Stepped != 1 {
					t.Errorf("post=%v: want one %s hit, got %+v", withPost, mode, got)
				}
				if wantBr := map[bool]uint64{true: 1}[mode == "branch"]; st.EmulatedBranches != wantBr {
					t.Errorf("post=%v: %d emulated branches, want %d", withPost, st.EmulatedBranches, wantBr)
				}
				wantExits, iters := 1, 0
				if mode == "step" {
					steps := max(c.steps, 1)
					wantExits, iters = 1+steps, steps-1
				}
				if e.exits != wantExits || st.ExitsPerHit[min(wantExits, 3)] != 1 || st.Probes[0].Exits != uint64(wantExits) {
					t.Errorf("post=%v: exits: %d events, stats %v, probe %d; want %d", withPost, e.exits, st.ExitsPerHit, st.Probes[0].Exits, wantExits)
				}
				if st.RepIterations != uint64(iters) || st.LostSteps != 0 || st.Errors != 0 {
					t.Errorf("post=%v: rep iterations %d (want %d), lost steps %d, errors %d (%v)",
						withPost, st.RepIterations, iters, st.LostSteps, st.Errors, e.m.Err())
				}
				if withPost {
					if post != 1 {
						t.Fatalf("post handler ran %d times", post)
					}
					after.diff(t, "state seen by the post handler", seen)
				}
				if e.cpu.ss {
					t.Error("single-step left on")
				}
				if err := e.m.Unregister(p); err != nil {
					t.Fatal(err)
				}
				if e.mem.b[textGPA+addr-textVA] != ref.mem.b[textGPA+addr-textVA] {
					t.Error("original byte not restored")
				}
			}
		})
	}
}

// TestRefusedInstructions: instructions that cannot run out of line are
// refused by Check and Register alike, with the text untouched.
func TestRefusedInstructions(t *testing.T) {
	for _, c := range []struct {
		name string
		code []byte
		kind error
	}{
		{"hlt", b(0xf4, 0xc3), ErrUnsafeInstruction},
		{"sysret", b(0x48, 0x0f, 0x07), ErrUnsafeInstruction},
		{"iret", b(0x48, 0xcf), ErrUnsafeInstruction},
		{"ud2", b(0x0f, 0x0b), ErrUnsafeInstruction},
		{"int3", b(0xcc, 0xc3), ErrUnsafeInstruction},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			f := e.fn("f", c.code...)
			before := textBytes(e)
			if _, err := Check(e.k, f, "f"); !errors.Is(err, c.kind) {
				t.Errorf("Check: %v, want %v", err, c.kind)
			}
			if err := e.m.Register(&Kprobe{Symbol: "f"}); !errors.Is(err, c.kind) {
				t.Errorf("Register: %v, want %v", err, c.kind)
			}
			if !bytes.Equal(before, textBytes(e)) {
				t.Error("text changed")
			}
		})
	}
}
