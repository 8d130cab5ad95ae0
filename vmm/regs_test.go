package vmm

import (
	"testing"

	"golang.org/x/arch/x86/x86asm"
)

func TestRegsByName(t *testing.T) {
	r := Regs{RAX: 1, RCX: 2, RDX: 3, RBX: 4, RSP: 5, RBP: 6, RSI: 7, RDI: 8,
		R8: 9, R9: 10, R10: 11, R11: 12, R12: 13, R13: 14, R14: 15, R15: 16, RIP: 17, RFLAGS: 18}
	for name, want := range map[string]uint64{"ax": 1, "cx": 2, "dx": 3, "bx": 4, "sp": 5, "bp": 6, "si": 7, "di": 8,
		"r8": 9, "r15": 16, "ip": 17, "flags": 18} {
		if p, ok := r.Reg(name); !ok || *p != want {
			t.Errorf("Reg(%q) = %v, %v; want %d", name, p, ok, want)
		}
	}
	if _, ok := r.Reg("eax"); ok {
		t.Error(`Reg("eax") found a register`)
	}
	for reg, want := range map[x86asm.Reg]uint64{x86asm.RAX: 1, x86asm.RBX: 4, x86asm.RDI: 8, x86asm.R12: 13, x86asm.R15: 16} {
		if p, ok := r.GPR(reg); !ok || *p != want {
			t.Errorf("GPR(%v) = %v, %v; want %d", reg, p, ok, want)
		}
	}
	if _, ok := r.GPR(x86asm.EAX); ok {
		t.Error("GPR(EAX) found a register")
	}
	p, _ := r.GPR(x86asm.R9)
	*p = 99
	if r.R9 != 99 {
		t.Error("GPR does not point into Regs")
	}
}

func TestGateOffset(t *testing.T) {
	g := make([]byte, IDTGateSize)
	g[2], g[4], g[5] = 0x10, 0x00, 0x8e // selector, ist, type: untouched
	SetGateOffset(g, 0xffffffff81234567)
	if got := GateOffset(g); got != 0xffffffff81234567 {
		t.Fatalf("GateOffset = %#x", got)
	}
	if g[2] != 0x10 || g[5] != 0x8e {
		t.Fatalf("SetGateOffset touched the selector or type: % x", g)
	}
}
