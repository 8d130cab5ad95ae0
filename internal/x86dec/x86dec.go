// Package x86dec decodes one 64-bit x86 instruction: x86asm's decoder,
// plus the one table of the encodings x86asm does not know that kernels
// put in their text (CLAC and STAC from the SMAP alternatives, endbr64,
// RDPID in the entry code, the PKRU and hypercall instructions, ...).
// Every decoder in hvprobe goes through Decode, so an instruction known
// here is known everywhere.
package x86dec

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/arch/x86/x86asm"
)

// Ops of the instructions x86asm does not know. They lie past x86asm's
// own opcodes, so a switch on x86asm.Op never confuses them.
const (
	CLAC x86asm.Op = 1<<16 + iota
	STAC
	RDPKRU
	WRPKRU
	SERIALIZE
	RDPID
	VMCALL
	VMMCALL
	CLZERO
	RDPRU
	STGI
	CLGI
	VMRUN
	VMLOAD
	VMSAVE
	INVLPGA
	SKINIT
	VMGEXIT
	MONITORX
	MWAITX
	ENCLS
	PVALIDATE
	RMPADJUST
	TILERELEASE
	RDSEED
	TPAUSE
	UMWAIT
	UMONITOR
)

var opNames = map[x86asm.Op]string{
	CLAC:        "clac",
	STAC:        "stac",
	RDPKRU:      "rdpkru",
	WRPKRU:      "wrpkru",
	SERIALIZE:   "serialize",
	RDPID:       "rdpid",
	VMCALL:      "vmcall",
	VMMCALL:     "vmmcall",
	CLZERO:      "clzero",
	RDPRU:       "rdpru",
	STGI:        "stgi",
	CLGI:        "clgi",
	VMRUN:       "vmrun",
	VMLOAD:      "vmload",
	VMSAVE:      "vmsave",
	INVLPGA:     "invlpga",
	SKINIT:      "skinit",
	VMGEXIT:     "vmgexit",
	MONITORX:    "monitorx",
	MWAITX:      "mwaitx",
	ENCLS:       "encls",
	PVALIDATE:   "pvalidate",
	RMPADJUST:   "rmpadjust",
	TILERELEASE: "tilerelease",
	RDSEED:      "rdseed",
	TPAUSE:      "tpause",
	UMWAIT:      "umwait",
	UMONITOR:    "umonitor",
}

// fixed are the table's encodings without operands, matched byte for byte
// after any legacy prefixes x86asm would accept. endbr64 and endbr32 are
// no-ops outside an indirect-branch target check, so they decode as NOP
// (x86asm sees a lone rep prefix).
var fixed = []struct {
	code []byte
	op   x86asm.Op
}{
	{[]byte{0xf3, 0x0f, 0x1e, 0xfa}, x86asm.NOP}, // endbr64
	{[]byte{0xf3, 0x0f, 0x1e, 0xfb}, x86asm.NOP}, // endbr32
	{[]byte{0x0f, 0x01, 0xca}, CLAC},
	{[]byte{0x0f, 0x01, 0xcb}, STAC},
	{[]byte{0x0f, 0x01, 0xee}, RDPKRU},
	{[]byte{0x0f, 0x01, 0xef}, WRPKRU},
	{[]byte{0x0f, 0x01, 0xe8}, SERIALIZE},
	{[]byte{0x0f, 0x01, 0xc1}, VMCALL},
	{[]byte{0x0f, 0x01, 0xd9}, VMMCALL},
	{[]byte{0x0f, 0x01, 0xfc}, CLZERO},
	{[]byte{0x0f, 0x01, 0xfd}, RDPRU},
	// SVM, in the kernel's own KVM (kvm_amd) and SEV guest code.
	{[]byte{0x0f, 0x01, 0xd8}, VMRUN},
	{[]byte{0x0f, 0x01, 0xda}, VMLOAD},
	{[]byte{0x0f, 0x01, 0xdb}, VMSAVE},
	{[]byte{0x0f, 0x01, 0xdc}, STGI},
	{[]byte{0x0f, 0x01, 0xdd}, CLGI},
	{[]byte{0x0f, 0x01, 0xde}, SKINIT},
	{[]byte{0x0f, 0x01, 0xdf}, INVLPGA},
	{[]byte{0xf3, 0x0f, 0x01, 0xd9}, VMGEXIT},
	{[]byte{0xf2, 0x0f, 0x01, 0xff}, PVALIDATE},
	{[]byte{0xf3, 0x0f, 0x01, 0xfe}, RMPADJUST},
	{[]byte{0x0f, 0x01, 0xfa}, MONITORX},
	{[]byte{0x0f, 0x01, 0xfb}, MWAITX},
	{[]byte{0x0f, 0x01, 0xcf}, ENCLS},                   // SGX
	{[]byte{0xc4, 0xe2, 0x78, 0x49, 0xc0}, TILERELEASE}, // AMX
}

// withReg are the table's encodings with one register operand in ModRM.rm
// (mod 11): prefix, optional REX, 0f, op, ModRM with reg = ext.
var withReg = []struct {
	prefix, op, ext byte
	inst            x86asm.Op
}{
	{0xf3, 0xc7, 7, RDPID},
	{0, 0xc7, 7, RDSEED}, // x86asm has rdrand (/6) but not rdseed (/7)
	{0x66, 0xae, 6, TPAUSE},
	{0xf2, 0xae, 6, UMWAIT},
	{0xf3, 0xae, 6, UMONITOR},
}

// ErrUnknown: the bytes are not an instruction Decode knows.
var ErrUnknown = errors.New("unknown instruction")

// Decode decodes the one 64-bit instruction at the start of code.
func Decode(code []byte) (x86asm.Inst, error) {
	if inst, ok := decodeTable(code); ok {
		return inst, nil
	}
	inst, err := x86asm.Decode(code, 64)
	if err == nil && (inst.Op == 0 || inst.Len == 0) {
		err = ErrUnknown
	}
	if err != nil {
		return x86asm.Inst{}, fmt.Errorf("% x: %w", code[:min(len(code), 15)], err)
	}
	return inst, nil
}

func decodeTable(code []byte) (x86asm.Inst, bool) {
	for _, f := range fixed {
		if len(code) >= len(f.code) && string(code[:len(f.code)]) == string(f.code) {
			return x86asm.Inst{Op: f.op, Len: len(f.code), Mode: 64}, true
		}
	}
	for _, w := range withReg {
		at := 0
		if w.prefix != 0 {
			if len(code) == 0 || code[0] != w.prefix {
				continue
			}
			at = 1
		}
		rex := byte(0)
		if at < len(code) && code[at]&0xf0 == 0x40 {
			rex, at = code[at], at+1
		}
		if len(code) < at+3 || code[at] != 0x0f || code[at+1] != w.op || code[at+2]>>6 != 3 || (code[at+2]>>3)&7 != w.ext {
			continue
		}
		n := int(code[at+2] & 7)
		if rex&1 != 0 {
			n += 8
		}
		inst := x86asm.Inst{Op: w.inst, Len: at + 3, Mode: 64}
		// The operand is 64 bits with REX.W, else 32; rdpid's is always 64.
		switch {
		case w.inst == RDPID || rex&8 != 0:
			inst.Args[0] = x86asm.RAX + x86asm.Reg(n)
		default:
			inst.Args[0] = x86asm.EAX + x86asm.Reg(n)
		}
		return inst, true
	}
	return x86asm.Inst{}, false
}

// Name is op's mnemonic.
func Name(op x86asm.Op) string {
	if n, ok := opNames[op]; ok {
		return n
	}
	return strings.ToLower(op.String())
}

// Syntax is the instruction in GNU syntax, as objdump prints it.
func Syntax(inst x86asm.Inst) string {
	name, ok := opNames[inst.Op]
	if !ok {
		return x86asm.GNUSyntax(inst, 0, nil)
	}
	if r, ok := inst.Args[0].(x86asm.Reg); ok {
		return fmt.Sprintf("%s %%%s", name, regName(r))
	}
	return name
}

func regName(r x86asm.Reg) string { return strings.ToLower(r.String()) }
