package vmm

import (
	"encoding/binary"

	"golang.org/x/arch/x86/x86asm"
)

// Reg names a general register the way ftrace's fetch args do ("ax",
// "r8", "ip", "flags"; see regs_query_register_offset) and returns it in r.
func (r *Regs) Reg(name string) (*uint64, bool) {
	switch name {
	case "ip":
		return &r.RIP, true
	case "flags":
		return &r.RFLAGS, true
	}
	for i, n := range gprNames {
		if n == name {
			return r.GPRNum(i), true
		}
	}
	return nil, false
}

// GPRNamed is the 64-bit general register ftrace calls name ("ax" …
// "r15"), if it is one.
func GPRNamed(name string) (x86asm.Reg, bool) {
	for i, n := range gprNames {
		if n == name {
			return x86asm.RAX + x86asm.Reg(i), true
		}
	}
	return 0, false
}

// GPR returns the 64-bit general register reg (x86asm.RAX…R15) in r.
// Callers map sub-registers (EAX…) to their 64-bit register first.
func (r *Regs) GPR(reg x86asm.Reg) (*uint64, bool) {
	if reg < x86asm.RAX || reg > x86asm.R15 {
		return nil, false
	}
	return r.GPRNum(int(reg - x86asm.RAX)), true
}

// gprNames are the general registers in encoding order (GPRNum).
var gprNames = [16]string{"ax", "cx", "dx", "bx", "sp", "bp", "si", "di",
	"r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"}

// GPRNum is the general register with encoding number i (0 rax, 1 rcx,
// ... 7 rdi, 8-15 r8-r15), as ModRM/REX number them.
func (r *Regs) GPRNum(i int) *uint64 {
	return [16]*uint64{&r.RAX, &r.RCX, &r.RDX, &r.RBX, &r.RSP, &r.RBP, &r.RSI, &r.RDI,
		&r.R8, &r.R9, &r.R10, &r.R11, &r.R12, &r.R13, &r.R14, &r.R15}[i]
}

// IDTGateSize is the size of a 64-bit IDT gate descriptor.
const IDTGateSize = 16

// GateOffset is the handler address of the 64-bit IDT gate at g[0:16]
// (offset bits 0-15 at 0, 16-31 at 6, 32-63 at 8).
func GateOffset(g []byte) uint64 {
	le := binary.LittleEndian
	return uint64(le.Uint16(g[0:])) | uint64(le.Uint16(g[6:]))<<16 | uint64(le.Uint32(g[8:]))<<32
}

// SetGateOffset points the 64-bit IDT gate at g[0:16] at off.
func SetGateOffset(g []byte, off uint64) {
	le := binary.LittleEndian
	le.PutUint16(g[0:], uint16(off))
	le.PutUint16(g[6:], uint16(off>>16))
	le.PutUint32(g[8:], uint32(off>>32))
}
