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
		{code: b(0x66, 0x55), boost: true},                                // 16-bit push: not emulated
		{code: b(0x6a, 0xff), emul: emulPushImm, boost: true},             // push $-1
		{code: b(0x66, 0x6a, 0xff), boost: true},                          // pushw $-1
		{code: b(0xff, 0x74, 0x24, 0x08), emul: emulPushMem, boost: true}, // push 8(%rsp)
		{code: b(0x65, 0xff, 0x34, 0x25, 0, 0, 0, 0), boost: true},        // push %gs:0: no segment bases
		{code: b(0xc9), emul: emulLeave, boost: true},                     // leave
		{code: b(0xf0, 0x48, 0x01, 0x05, 1, 0, 0, 0), boost: true},        // lock add %rax,rip: boostable
		{code: b(0x48, 0x8b, 0x07), boost: true},                          // via %rdi: check decides by the fixup
		{code: b(0x65, 0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0), boost: true},
		{code: b(0x2e, 0x48, 0x8b, 0x05, 0, 0, 0, 0)}, // CS override: seeds don't boost
		{code: b(0x67, 0x48, 0x8b, 0x05, 0, 0, 0, 0)}, // address size: seeds don't boost
		{code: b(0x48, 0xa5), boost: true},            // movsq
		{code: b(0xf3, 0x48, 0xab), boost: true, rep: true},
		{code: b(0xf2, 0xae), boost: true, rep: true}, // repne scasb
		{code: b(0xf3, 0x6c), rep: true},              // rep insb: port I/O, stepped
		{code: b(0x0f, 0x22, 0xd8)},                   // mov %rax,%cr3
		{code: b(0xe8, 0, 0, 0, 0), emul: emulCall, fix: fixCallRel, branch: true},
		{code: b(0xff, 0xd0), emul: emulCallInd, fix: fixCallAbs, branch: true},
		{code: b(0x66, 0xff, 0xd0), fix: fixCallAbs, branch: true},
		{code: b(0xff, 0x15, 0, 0, 0, 0), emul: emulCallInd, fix: fixCallAbs, branch: true},
		{code: b(0xff, 0x53, 0x08), fix: fixCallAbs, branch: true}, // call *8(%rbx)
		{code: b(0xc3), emul: emulRet, fix: fixNone, branch: true},
		{code: b(0xc2, 8, 0), emul: emulRet, fix: fixNone, branch: true},
		{code: b(0x66, 0xc3), fix: fixNone, branch: true}, // retw
		{code: b(0xff, 0xe0), emul: emulJmpInd, fix: fixNone, branch: true},
		{code: b(0xff, 0x24, 0xc5, 0, 0, 0, 0), fix: fixNone, branch: true}, // jmp *table(,%rax,8)
		{code: b(0xeb, 0), emul: emulJmp, fix: fixRIP, branch: true},
		{code: b(0x0f, 0x84, 0, 0, 0, 0), emul: emulJcc, fix: fixRIP, branch: true},
		{code: b(0xe2, 0xfe), emul: emulJcc, fix: fixRIP, branch: true}, // loop
		{code: b(0x67, 0xe3, 0x00), fix: fixRIP, branch: true},          // jecxz
		{code: b(0x9c), fix: fixPushf},
		{code: b(0x9d), ifMod: true},
		{code: b(0xfa), ifMod: true},
		{code: b(0xfb), ifMod: true},
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

func TestSlotImageOutOfReach(t *testing.T) {
	in, r := analyze(b(0x48, 0x8b, 0x05, 0, 0, 0, 0x7f)) // disp near +2 GiB
	if r != nil {
		t.Fatal(r.reason)
	}
	if _, r := in.slotImage(textVA, textVA-0x10000000, true); r == nil || r.kind != ErrOutOfReach {
		t.Errorf("got %v, want ErrOutOfReach", r)
	}
}

// TestEmulatedFlags checks add/sub against the interpreter's independent
// arithmetic over edge and random operands.
func TestEmulatedFlags(t *testing.T) {
	edge := []uint64{0, 1, 0xf, 0x10, 0x7f, 0x80, 0xff, 0x7fffffffffffffff, 0x8000000000000000, ^uint64(0), 0xfffffffffffffff0}
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
	for _, o := range ops {
		r1, f1 := addFlags(o[0], o[1])
		r2, f2 := refArith(true, o[0], o[1], 8)
		if r1 != r2 || f1 != f2 {
			t.Fatalf("add %#x+%#x: %#x/%#x, want %#x/%#x", o[0], o[1], r1, f1, r2, f2)
		}
		r1, f1 = subFlags(o[0], o[1])
		r2, f2 = refArith(false, o[0], o[1], 8)
		if r1 != r2 || f1 != f2 {
			t.Fatalf("sub %#x-%#x: %#x/%#x, want %#x/%#x", o[0], o[1], r1, f1, r2, f2)
		}
	}
	// Known values: 0x7fff...ff + 1 overflows into the sign with AF, PF.
	if _, f := addFlags(0x7fffffffffffffff, 1); f != flagOF|flagSF|flagAF|flagPF {
		t.Errorf("flags %#x", f)
	}
	// A push whose stack write fails is not emulated: the slot runs it.
	in, _ := analyze(b(0x55))
	regs := vmm.Regs{RSP: unmappedVA, RIP: textVA}
	k := &fakeKernel{mem: &fakeMem{b: make([]byte, 16)}}
	if emulate(in, textVA, &regs, k) || regs.RSP != unmappedVA || regs.RIP != textVA {
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
