package x86dec

import (
	"testing"

	"golang.org/x/arch/x86/x86asm"
)

func TestDecode(t *testing.T) {
	for _, tc := range []struct {
		code []byte
		op   x86asm.Op
		len  int
		text string
	}{
		{[]byte{0x0f, 0x01, 0xca}, CLAC, 3, "clac"},
		{[]byte{0x0f, 0x01, 0xcb}, STAC, 3, "stac"},
		{[]byte{0x0f, 0x01, 0xee}, RDPKRU, 3, "rdpkru"},
		{[]byte{0x0f, 0x01, 0xef}, WRPKRU, 3, "wrpkru"},
		{[]byte{0x0f, 0x01, 0xe8}, SERIALIZE, 3, "serialize"},
		{[]byte{0x0f, 0x01, 0xc1}, VMCALL, 3, "vmcall"},
		{[]byte{0x0f, 0x01, 0xd9}, VMMCALL, 3, "vmmcall"},
		{[]byte{0xf3, 0x0f, 0xc7, 0xf8}, RDPID, 4, "rdpid %rax"},
		{[]byte{0xf3, 0x0f, 0xc7, 0xfb}, RDPID, 4, "rdpid %rbx"},
		{[]byte{0xf3, 0x41, 0x0f, 0xc7, 0xf8}, RDPID, 5, "rdpid %r8"},
		{[]byte{0xf3, 0x0f, 0x1e, 0xfa}, x86asm.NOP, 4, "nop"},
		{[]byte{0x48, 0x0f, 0xc7, 0xf8}, RDSEED, 4, "rdseed %rax"},
		{[]byte{0x0f, 0xc7, 0xf9}, RDSEED, 3, "rdseed %ecx"},
		{[]byte{0x66, 0x0f, 0xae, 0xf1}, TPAUSE, 4, "tpause %ecx"},
		{[]byte{0x0f, 0x01, 0xdc}, STGI, 3, "stgi"},
		{[]byte{0xf3, 0x0f, 0x01, 0xd9}, VMGEXIT, 4, "vmgexit"},
		{[]byte{0x0f, 0x01, 0xcf}, ENCLS, 3, "encls"},
		{[]byte{0xc4, 0xe2, 0x78, 0x49, 0xc0}, TILERELEASE, 5, "tilerelease"},
		// x86asm's own, unchanged: swapgs, lfence, verw, rdrand %eax.
		{[]byte{0x0f, 0x01, 0xf8}, x86asm.SWAPGS, 3, "swapgs"},
		{[]byte{0x0f, 0xae, 0xe8}, x86asm.LFENCE, 3, "lfence"},
		{[]byte{0x0f, 0x00, 0xe8}, x86asm.VERW, 3, "verw %ax"},
		{[]byte{0x0f, 0xc7, 0xf0}, x86asm.RDRAND, 3, "rdrand %eax"},
	} {
		// Followed by other bytes, as in kernel text.
		code := append(append([]byte(nil), tc.code...), 0xcc, 0x90, 0x0f, 0x0b)
		inst, err := Decode(code)
		if err != nil {
			t.Errorf("% x: %v", tc.code, err)
			continue
		}
		if inst.Op != tc.op || inst.Len != tc.len || Syntax(inst) != tc.text {
			t.Errorf("% x: got %v len %d %q, want %v len %d %q", tc.code, inst.Op, inst.Len, Syntax(inst), tc.op, tc.len, tc.text)
		}
	}
}

func TestDecodeUnknown(t *testing.T) {
	for _, code := range [][]byte{
		{0x0f, 0x04},       // not an instruction
		{0xf3},             // a lone prefix
		{0x0f, 0x01},       // truncated
		{0xf3, 0x0f, 0xc7}, // truncated rdpid
		{},
	} {
		if inst, err := Decode(code); err == nil {
			t.Errorf("% x decoded as %s", code, Syntax(inst))
		}
	}
}

// The table's ops must not collide with x86asm's.
func TestOpsBeyondX86asm(t *testing.T) {
	for op := range opNames {
		if s := op.String(); s[:3] != "Op(" {
			t.Errorf("op %d is x86asm's %s", op, s)
		}
	}
}
