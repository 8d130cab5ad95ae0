package kprobes

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/hvprobe/hvprobe/vmm"
	"golang.org/x/arch/x86/x86asm"
)

func TestAnalyze(t *testing.T) {
	cases := []struct {
		code   []byte
		emul   emulKind
		boost  bool
		fix    fixup
		branch bool
		ifMod  bool
		rep    bool
		refuse error
	}{
		{code: b(0x90), emul: emulNop, boost: true},
		{code: b(0xf3, 0x0f, 0x1e, 0xfa), emul: emulNop, boost: true},
		{code: b(0x41, 0x57), emul: emulPush, boost: true},
		{code: b(0x41, 0x5f), emul: emulPop, boost: true},
		{code: b(0x66, 0x55), boost: true},                                            // 16-bit push: not emulated
		{code: b(0x6a, 0xff), emul: emulPushImm, boost: true},                         // push $-1
		{code: b(0x66, 0x6a, 0xff), boost: true},                                      // pushw $-1
		{code: b(0xff, 0x74, 0x24, 0x08), emul: emulPushMem, boost: true},             // push 8(%rsp)
		{code: b(0x65, 0xff, 0x34, 0x25, 0, 0, 0, 0), emul: emulPushMem, boost: true}, // push %gs:0
		{code: b(0xc9), emul: emulLeave, boost: true},                                 // leave
		{code: b(0xf0, 0x48, 0x01, 0x05, 1, 0, 0, 0), boost: true},                    // lock add %rax,rip: boostable
		{code: b(0x48, 0x8b, 0x07), emul: emulMove, boost: true},                      // via %rdi: check decides by the fixup
		{code: b(0x65, 0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0), emul: emulMove, boost: true},
		{code: b(0x2e, 0x48, 0x8b, 0x05, 0, 0, 0, 0), emul: emulMove},              // CS override: seeds don't boost
		{code: b(0x8f, 0x07), emul: emulPopMem, boost: true},                       // pop (%rdi)
		{code: b(0x48, 0xa1, 1, 2, 3, 4, 5, 6, 7, 8), emul: emulMove, boost: true}, // movabs moffs,%rax
		{code: b(0x48, 0x8d, 0x04, 0xf7), emul: emulMove, boost: true},             // lea (%rdi,%rsi,8),%rax
		{code: b(0x80, 0x4f, 0x01, 0x80), emul: emulALU, boost: true},              // orb $0x80,1(%rdi)
		{code: b(0x41, 0xff, 0x44, 0x24, 0x08), emul: emulALU, boost: true},        // incl 8(%r12)
		{code: b(0xf0, 0xff, 0x07), boost: true},                                   // lock incl: no atomic RMW
		{code: b(0xf3, 0x48, 0x89, 0x07), boost: true},                             // xrelease-style rep prefix
		{code: b(0x67, 0x8b, 0x07)},                                                // mov (%edi): 32-bit address
		{code: b(0x0f, 0x6f, 0x07)},                                                // movq (%rdi),%mm0: MMX
		{code: b(0xf3, 0x0f, 0x6f, 0x07), boost: true},                             // movdqu (%rdi),%xmm0
		{code: b(0x66, 0x0f, 0xef, 0xc0), boost: true},                             // pxor %xmm0,%xmm0
		{code: b(0x67, 0x48, 0x8b, 0x05, 0, 0, 0, 0)},                              // address size: seeds don't boost
		{code: b(0x48, 0xa5), emul: emulString, boost: true},                       // movsq
		{code: b(0xf3, 0x48, 0xab), emul: emulString, boost: true, rep: true},
		{code: b(0x67, 0xf3, 0xa4), rep: true},        // rep movsb with %ecx/%esi/%edi
		{code: b(0xf2, 0xae), boost: true, rep: true}, // repne scasb
		{code: b(0xf3, 0x6c), rep: true},              // rep insb: port I/O, stepped
		{code: b(0x0f, 0x22, 0xd8)},                   // mov %rax,%cr3
		{code: b(0xe8, 0, 0, 0, 0), emul: emulCall, fix: fixCallRel, branch: true},
		{code: b(0xff, 0xd0), emul: emulCallInd, fix: fixCallAbs, branch: true},
		{code: b(0x66, 0xff, 0xd0), fix: fixCallAbs, branch: true},
		{code: b(0xff, 0x15, 0, 0, 0, 0), emul: emulCallInd, fix: fixCallAbs, branch: true},
		{code: b(0xff, 0x53, 0x08), emul: emulCallInd, fix: fixCallAbs, branch: true}, // call *8(%rbx)
		{code: b(0xc3), emul: emulRet, fix: fixNone, branch: true},
		{code: b(0xc2, 8, 0), emul: emulRet, fix: fixNone, branch: true},
		{code: b(0x66, 0xc3), fix: fixNone, branch: true}, // retw
		{code: b(0xff, 0xe0), emul: emulJmpInd, fix: fixNone, branch: true},
		{code: b(0xff, 0x24, 0xc5, 0, 0, 0, 0), emul: emulJmpInd, fix: fixNone, branch: true}, // jmp *table(,%rax,8)
		{code: b(0xeb, 0), emul: emulJmp, fix: fixRIP, branch: true},
		{code: b(0x0f, 0x84, 0, 0, 0, 0), emul: emulJcc, fix: fixRIP, branch: true},
		{code: b(0xe2, 0xfe), emul: emulJcc, fix: fixRIP, branch: true}, // loop
		{code: b(0x67, 0xe3, 0x00), fix: fixRIP, branch: true},          // jecxz
		{code: b(0x9c), emul: emulPushf, fix: fixPushf},
		{code: b(0x9d), emul: emulPopf, ifMod: true},
		{code: b(0xfa), emul: emulCli, ifMod: true},
		{code: b(0xfb), ifMod: true},             // sti: stepped (its interrupt shadow)
		{code: b(0x0f, 0x01, 0xca), boost: true}, // clac
		{code: b(0x0f, 0x01, 0xcb), boost: true}, // stac
		{code: b(0xf3, 0x41, 0x0f, 0xc7, 0xf9)},  // rdpid %r9: stepped
		{code: b(0x0f, 0x01, 0xef)},              // wrpkru: stepped
		{code: b(0x0f, 0x01, 0xe8)},              // serialize: stepped (PVM exits on it, QUIRKS #47)
		{code: b(0x0f, 0x01, 0xc1)},              // vmcall: stepped
		{code: b(0x0f, 0x01, 0xf8)},              // swapgs: stepped
		{code: b(0xcc), refuse: ErrUnsafeInstruction},
		{code: b(0xcd, 0x80), refuse: ErrUnsafeInstruction},
		{code: b(0xf4), refuse: ErrUnsafeInstruction},
		{code: b(0x0f, 0x01, 0xc9), refuse: ErrUnsafeInstruction}, // mwait
		{code: b(0x0f, 0x07), refuse: ErrUnsafeInstruction},       // sysret
		{code: b(0xff, 0x1f), refuse: ErrUnsafeInstruction},       // lcall
		{code: b(0x0f, 0x0b), refuse: ErrUnsafeInstruction},
		{code: b(0x0f, 0x04), refuse: ErrUndecodable},
		{code: b(0xf3), refuse: ErrUndecodable},
	}
	for _, c := range cases {
		in, r := analyze(c.code)
		if c.refuse != nil {
			if r == nil || !errors.Is(c.refuse, r.kind) {
				t.Errorf("% x: got %v, want refusal %v", c.code, r, c.refuse)
			}
			continue
		}
		if r != nil {
			t.Errorf("% x: refused: %s", c.code, r.reason)
			continue
		}
		if in.emul != c.emul || in.boostable != c.boost || in.fix != c.fix || in.branch != c.branch || in.ifMod != c.ifMod || in.rep != c.rep {
			t.Errorf("% x (%s): emul %d boost %v fix %d branch %v ifMod %v rep %v", c.code, in, in.emul, in.boostable, in.fix, in.branch, in.ifMod, in.rep)
		}
	}
}

// TestBootVariantsArm: what the kernel's boot-time patching other than
// alternatives (whose replacements are read from the image and judged
// one by one before boot) can put at a site is armable.
func TestBootVariantsArm(t *testing.T) {
	for _, v := range []struct {
		what string
		code []byte
	}{
		{"retpoline: call *%rax", b(0xff, 0xd0)},
		{"retpoline: call *%r11", b(0x41, 0xff, 0xd3)},
		{"retpoline: jmp *%rax; int3", b(0xff, 0xe0, 0xcc)},
		{"retpoline: lfence; call *%rax", b(0x0f, 0xae, 0xe8, 0xff, 0xd0)},
		{"retpoline: jcc over an indirect jmp", b(0x75, 0x03, 0x41, 0xff, 0xe3)},
		{"return thunk: ret; int3", b(0xc3, 0xcc, 0xcc, 0xcc, 0xcc)},
		{"paravirt: cli", b(0xfa)},
		{"paravirt: sti", b(0xfb)},
		{"paravirt: pushf; pop %rax", b(0x9c, 0x58)},
		{"paravirt: push %rdi; popf", b(0x57, 0x9d)},
		{"paravirt: mov %cr2,%rax", b(0x0f, 0x20, 0xd0)},
		{"paravirt: mov %cr3,%rax", b(0x0f, 0x20, 0xd8)},
		{"paravirt: mov %rdi,%cr3", b(0x0f, 0x22, 0xdf)},
		{"paravirt: mov %rdi,%rax", b(0x48, 0x89, 0xf8)},
		{"paravirt: direct call", b(0xe8, 0, 0, 0, 0)},
		{"SMP lock prefix: ds inc", b(0x3e, 0x48, 0xff, 0x07)},
		{"sealed endbr: nopl", b(0x0f, 0x1f, 0x40, 0xd6)},
		{"ftrace mcount: nopl", b(0x0f, 0x1f, 0x44, 0x00, 0x00)},
	} {
		if _, err := CheckCode(v.code); err != nil {
			t.Errorf("%s (% x): %v", v.what, v.code, err)
		}
	}
}

func TestSlotImageOutOfReach(t *testing.T) {
	in, r := analyze(b(0x48, 0x8b, 0x05, 0, 0, 0, 0x7f)) // disp near +2 GiB
	if r != nil {
		t.Fatal(r.reason)
	}
	if _, r := in.slotImage(textVA, textVA-0x10000000, true); r == nil || r.kind != ErrOutOfReach {
		t.Errorf("got %v, want ErrOutOfReach", r)
	}
}

// TestEmulatedFlags checks add/sub at every width against the
// interpreter's independent arithmetic over edge and random operands, and
// the flags of every ALU op against values worked out by hand from the
// SDM's definitions.
func TestEmulatedFlags(t *testing.T) {
	edge := []uint64{0, 1, 0xf, 0x10, 0x7f, 0x80, 0xff, 0x7fff, 0x8000, 0xffff, 0x7fffffff, 0x80000000, 0xffffffff,
		0x7fffffffffffffff, 0x8000000000000000, ^uint64(0), 0xfffffffffffffff0}
	rng := rand.New(rand.NewPCG(1, 2))
	var ops [][2]uint64
	for _, a := range edge {
		for _, b := range edge {
			ops = append(ops, [2]uint64{a, b})
		}
	}
	for range 2000 {
		ops = append(ops, [2]uint64{rng.Uint64(), rng.Uint64()})
	}
	for _, w := range []uint{8, 16, 32, 64} {
		for _, o := range ops {
			for _, sub := range []bool{false, true} {
				r1, f1 := arith(sub, o[0], o[1], w)
				r2, f2 := refArith(!sub, o[0], o[1], int(w/8))
				if r1 != r2 || f1 != f2 {
					t.Fatalf("w=%d sub=%v %#x,%#x: %#x/%#x, want %#x/%#x", w, sub, o[0], o[1], r1, f1, r2, f2)
				}
			}
		}
	}
	const cf, pf, af, zf, sf, of = flagCF, flagPF, flagAF, flagZF, flagSF, flagOF
	for _, c := range []struct {
		op         x86asm.Op
		a, b       uint64
		w          uint
		in         uint64 // incoming flags
		res, flags uint64
	}{
		{x86asm.ADD, 0x7f, 1, 8, 0, 0x80, of | sf | af},           // 0x80 has one bit: PF clear
		{x86asm.ADD, 0xff, 1, 8, 0, 0, cf | zf | pf | af},         // carry out of bit 7
		{x86asm.ADD, 0x80, 0x80, 8, 0, 0, cf | of | zf | pf},      // -128 + -128
		{x86asm.ADD, 0x1ff, 1, 8, 0, 0, cf | zf | pf | af},        // only the low byte counts
		{x86asm.ADD, 0x7fff, 1, 16, 0, 0x8000, of | sf | af | pf}, // low byte 0x00: PF set
		{x86asm.ADD, 0xffff, 1, 16, 0, 0, cf | zf | pf | af},      // carry out of bit 15
		{x86asm.ADD, 0x7fffffff, 1, 32, 0, 0x80000000, of | sf | af | pf},
		{x86asm.ADD, 0xffffffff, 1, 32, 0, 0, cf | zf | pf | af},
		{x86asm.ADD, 0x7fffffffffffffff, 1, 64, 0, 1 << 63, of | sf | af | pf},
		{x86asm.ADD, 3, 4, 64, 0, 7, 0},                      // 0b111: three bits, PF clear
		{x86asm.ADD, 8, 8, 32, 0, 0x10, af},                  // carry out of bit 3
		{x86asm.SUB, 0, 1, 8, 0, 0xff, cf | sf | af | pf},    // borrow; 0xff has 8 bits
		{x86asm.SUB, 0x80, 1, 8, 0, 0x7f, of | af},           // -128 - 1
		{x86asm.SUB, 0x8000, 1, 16, 0, 0x7fff, of | af | pf}, // low byte 0xff: PF set
		{x86asm.SUB, 0x80000000, 1, 32, 0, 0x7fffffff, of | af | pf},
		{x86asm.SUB, 1 << 63, 1, 64, 0, 1<<63 - 1, of | af | pf},
		{x86asm.SUB, 0x10, 0x7f, 64, 0, 0xffffffffffffff91, cf | sf | af},
		{x86asm.CMP, 5, 5, 32, cf, 5, zf | pf},             // cmp: result not written
		{x86asm.CMP, 1, 2, 16, 0, 1, cf | sf | af | pf},    // 0xffff
		{x86asm.INC, 0xff, 0, 8, cf, 0, cf | zf | pf | af}, // CF kept set
		{x86asm.INC, 0xff, 0, 8, 0, 0, zf | pf | af},       // CF kept clear
		{x86asm.INC, 0x7fffffff, 0, 32, 0, 0x80000000, of | sf | af | pf},
		{x86asm.DEC, 0, 0, 64, 0, ^uint64(0), sf | af | pf},        // CF not set by the borrow
		{x86asm.DEC, 0x8000, 0, 16, cf, 0x7fff, cf | of | af | pf}, // CF kept
		{x86asm.DEC, 1, 0, 8, 0, 0, zf | pf},
		{x86asm.AND, 0xf0, 0x0f, 8, cf | of | af, 0, zf | pf}, // CF, OF, AF cleared
		{x86asm.AND, 0x8000, 0xffff, 16, 0, 0x8000, sf | pf},
		{x86asm.TEST, 1 << 63, 1 << 63, 64, 0, 1 << 63, sf | pf},
		{x86asm.OR, 0x1, 0x2, 32, cf, 3, pf},
		{x86asm.OR, 0x80000000, 0, 32, 0, 0x80000000, sf | pf},
		{x86asm.XOR, 0xff, 0xfe, 8, of, 1, 0},
		{x86asm.XOR, 0x1234, 0x1234, 64, cf | sf, 0, zf | pf},
	} {
		res, f, _ := alu(c.op, c.a, c.b, c.w, 0x202|c.in)
		if c.op == x86asm.CMP || c.op == x86asm.TEST {
			res = c.a
		}
		if res != c.res || f != 0x202|c.flags {
			t.Errorf("%v %#x,%#x (%d bits, flags in %#x): %#x flags %#x, want %#x flags %#x",
				c.op, c.a, c.b, c.w, c.in, res, f, c.res, 0x202|c.flags)
		}
	}
	// A push whose stack write fails is not emulated: the slot runs it.
	in, _ := analyze(b(0x55))
	regs := vmm.Regs{RSP: unmappedVA, RIP: textVA}
	k := &fakeKernel{mem: &fakeMem{b: make([]byte, 16)}}
	if emulate(in, textVA, &regs, newMachine(k, &fakeCPU{})) || regs.RSP != unmappedVA || regs.RIP != textVA {
		t.Error("failed push emulated")
	}
}

// FuzzPrepareSlot: whatever decodes either is refused or yields a slot
// that decodes to the same instruction, %rip-relative operand re-based to
// reach the same address, followed by a jmp back (boosted) or by int3
// padding (stepped).
func FuzzPrepareSlot(f *testing.F) {
	for _, c := range hitCases {
		f.Add(c.code(func(int, uint64) []byte { return b(0x10, 0x20, 0x30, 0x00) }), uint32(0x1000))
	}
	f.Add(b(0x83, 0x3d, 1, 2, 3, 4, 5), uint32(0x7fff0000))
	f.Add(b(0x48, 0xc7, 0x05, 1, 2, 3, 4, 5, 6, 7, 8), uint32(0))
	f.Fuzz(func(t *testing.T, code []byte, dist uint32) {
		in, r := analyze(code)
		if r != nil {
			if r.kind == nil || r.reason == "" {
				t.Fatalf("empty refusal for % x", code)
			}
			return
		}
		const addr = textVA + 0x1234
		slot := slotAVA + uint64(dist&^15)
		for _, boost := range []bool{false, true} {
			if boost && !in.boostable {
				continue
			}
			img, r := in.slotImage(addr, slot, boost)
			if r != nil {
				if r.kind != ErrOutOfReach {
					t.Fatalf("% x: %v", code, r.reason)
				}
				continue
			}
			got, ok := decode(img)
			if !ok || got.Op != in.inst.Op || got.Len != in.inst.Len {
				t.Fatalf("% x: slot decodes to %v, want %v", code, got, in.inst)
			}
			for i, a := range in.inst.Args {
				m, isMem := a.(x86asm.Mem)
				if !isMem || m.Base != x86asm.RIP {
					if got.Args[i] != a {
						t.Fatalf("% x: arg %d %v -> %v", code, i, a, got.Args[i])
					}
					continue
				}
				n := uint64(in.inst.Len)
				gm := got.Args[i].(x86asm.Mem)
				if addr+n+uint64(int64(int32(m.Disp))) != slot+n+uint64(int64(int32(gm.Disp))) {
					t.Fatalf("% x: rip-relative target moved", code)
				}
			}
			tail := img[in.inst.Len:]
			if boost {
				j, ok := decode(tail)
				if !ok || j.Op != x86asm.JMP || j.Len != jmpLen {
					t.Fatalf("% x: no jmp after boosted insn", code)
				}
				to := slot + uint64(in.inst.Len) + jmpLen + uint64(int64(int32(binary.LittleEndian.Uint32(tail[1:]))))
				if to != addr+uint64(in.inst.Len) {
					t.Fatalf("% x: jmp to %#x, want %#x", code, to, addr+uint64(in.inst.Len))
				}
			} else if tail[0] != opInt3 {
				t.Fatalf("% x: stepped slot not followed by int3", code)
			}
		}
	})
}
