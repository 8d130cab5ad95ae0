package kprobes

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"github.com/hvprobe/hvprobe/vmm"
)

// TestRepFaultMidway: a rep stosq runs into an unmapped page after two
// iterations. With a fixup the host emulates the two, then steps the rest
// in the slot: the fault is redirected to the probe's address with IF
// restored and the instruction resumes there with the count it had (and
// is emulated to the end); boosted, the fault names the slot and the
// guest's handler returns into it. Either way it completes exactly once.
func TestRepFaultMidway(t *testing.T) {
	for _, stepped := range []bool{true, false} {
		name := map[bool]string{true: "stepped", false: "boosted"}[stepped]
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			f := e.fn("clear", 0xf3, 0x48, 0xab, 0xc3) // rep stosq; ret
			var faults []Fault
			posts := 0
			p := &Kprobe{Symbol: "clear", FaultHandler: func(_ *Context, f Fault) bool { faults = append(faults, f); return false }}
			if stepped {
				e.k.fixups = map[uint64]bool{f: true}
				p.PostHandler = func(c *Context) {
					posts++
					if c.Regs().RCX != 0 || c.Regs().RIP != f+3 {
						t.Errorf("post handler sees rcx %d rip %#x", c.Regs().RCX, c.Regs().RIP)
					}
				}
			}
			if err := e.m.Register(p); err != nil {
				t.Fatal(err)
			}
			slot := e.m.byVA[f].slotVA
			const pattern = 0x5a5a5a5a_a5a5a5a5
			r := &e.cpu.regs
			r.RDI, r.RCX, r.RAX, r.RIP = dataVA+dataSize-16, 4, pattern, f
			rsp := r.RSP
			e.stepGuest() // int3: to the slot
			if stepped {
				// The host did the two iterations that reach mapped memory.
				if r.RIP != slot || r.RCX != 2 || r.RDI != dataVA+dataSize || !e.cpu.ss || r.RFLAGS&vmm.FlagIF != 0 {
					t.Fatalf("after emulating: rip %#x rcx %d rdi %#x single-step %v rflags %#x", r.RIP, r.RCX, r.RDI, e.cpu.ss, r.RFLAGS)
				}
			}
			for i := uint64(1); i <= 2 && !stepped; i++ {
				e.stepGuest()
				if r.RIP != slot || r.RCX != 4-i {
					t.Fatalf("after iteration %d: rip %#x rcx %d", i, r.RIP, r.RCX)
				}
			}
			e.stepGuest() // the third store faults: the guest enters its #PF handler
			wantFrame := slot
			if stepped {
				wantFrame = f
				if len(faults) != 1 || faults[0].Addr != f || faults[0].Vector != pfVector {
					t.Fatalf("faults %+v", faults)
				}
			}
			if got := readU64(e.k, r.RSP+8); got != wantFrame {
				t.Fatalf("frame rip %#x, want %#x", got, wantFrame)
			}
			if fl := readU64(e.k, r.RSP+24); fl&vmm.FlagIF == 0 || fl&vmm.FlagTF != 0 {
				t.Errorf("frame rflags %#x: want IF set, TF clear", fl)
			}
			if e.cpu.ss {
				t.Error("single-step left on in the guest's handler")
			}
			// The guest's handler maps the page and returns.
			e.k.maps = append(e.k.maps, mapping{dataVA + dataSize, spareGPA, pageSize})
			e.run(sentinel, 50)
			if r.RCX != 0 || r.RDI != dataVA+dataSize+16 || r.RSP != rsp+8 || r.RFLAGS&vmm.FlagIF == 0 {
				t.Errorf("end: rcx %d rdi %#x rsp %#x rflags %#x", r.RCX, r.RDI, r.RSP, r.RFLAGS)
			}
			for _, va := range []uint64{dataVA + dataSize - 16, dataVA + dataSize - 8, dataVA + dataSize, dataVA + dataSize + 8} {
				if v := readU64(e.k, va); v != pattern {
					t.Errorf("%#x holds %#x", va, v)
				}
			}
			st := e.m.Stats()
			wantHits := map[bool]uint64{true: 2, false: 1}[stepped]
			if p.Hits() != wantHits || posts != map[bool]int{true: 1}[stepped] || st.LostSteps != 0 || st.Errors != 0 {
				t.Errorf("hits %d (want %d), posts %d, stats %+v, err %v", p.Hits(), wantHits, posts, st, e.m.Err())
			}
		})
	}
}

// TestEmulatedBranchIntoTrampoline: a ret or jmp *%reg the host emulates
// lands on the kretprobe trampoline like the CPU's own: its int3 fires,
// the return handler sees the same state and the call returns to its real
// return address. So does a kretprobe on a function that is one tail-call
// jmp. (ret $imm16 is left out: the trampoline finds its frame at rsp-8,
// which a callee-pops return moves.)
func TestEmulatedBranchIntoTrampoline(t *testing.T) {
	movRAX42 := b(0x48, 0xc7, 0xc0, 0x2a, 0, 0, 0)
	cases := []struct {
		name string
		code func(e *env) uint64 // places the kretprobed function
		off  uint64              // the emulated branch in it
	}{
		{"ret", func(e *env) uint64 { return e.fn("f", cat(movRAX42, b(0xc3))...) }, 7},
		{"jmp reg", func(e *env) uint64 { return e.fn("f", cat(b(0x59), movRAX42, b(0xff, 0xe1))...) }, 8}, // pop %rcx; ...; jmp *%rcx
		{"jmp rel32 tail call", func(e *env) uint64 {
			g := e.fn("g", cat(movRAX42, b(0xc3))...)
			return e.fn("f", cat(b(0xe9), rel32(e.next+5, g))...)
		}, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ref := newEnv(t)
			ref.call(c.code(ref))
			var want vmm.Regs // the kretprobe-only run's
			var seen []vmm.Regs
			for _, withKprobe := range []bool{false, true} {
				e := newEnv(t)
				f := c.code(e)
				var rets int
				rp := &Kretprobe{Symbol: "f", Handler: func(r *RetContext) {
					rets++
					if r.RetVal() != 42 || r.ReturnAddress != sentinel {
						t.Errorf("kprobe=%v: return handler: rax %d, return address %#x", withKprobe, r.RetVal(), r.ReturnAddress)
					}
					seen = append(seen, *r.Regs())
				}}
				if err := e.m.RegisterKretprobe(rp); err != nil {
					t.Fatal(err)
				}
				if withKprobe {
					if err := e.m.Register(&Kprobe{Addr: f + c.off, PostHandler: func(*Context) {}}); err != nil {
						t.Fatal(err)
					}
				}
				e.call(f)
				if r, u := e.cpu.regs, ref.cpu.regs; r.RAX != u.RAX || r.RSP != u.RSP || r.RFLAGS != u.RFLAGS {
					t.Errorf("kprobe=%v: rax %#x rsp %#x rflags %#x, unprobed %#x %#x %#x", withKprobe, r.RAX, r.RSP, r.RFLAGS, u.RAX, u.RSP, u.RFLAGS)
				}
				if !withKprobe {
					want = e.cpu.regs
				} else if e.cpu.regs != want {
					t.Errorf("final registers\n got  %+v\n want %+v", e.cpu.regs, want)
				}
				st := e.m.Stats()
				if rets != 1 || st.Returns != 1 || st.OrphanReturns != 0 || st.Errors != 0 {
					t.Errorf("kprobe=%v: %d handler calls, stats %+v, err %v", withKprobe, rets, st, e.m.Err())
				}
				if withKprobe && st.EmulatedBranches != 1 {
					t.Errorf("branch not emulated: %+v", st)
				}
			}
			if len(seen) == 2 && seen[0] != seen[1] {
				t.Errorf("the return handler saw different registers:\n plain   %+v\n emulated %+v", seen[0], seen[1])
			}
		})
	}
}

// TestEmulationUsesPreHandlerRegs: a branch is emulated from the registers
// the pre handlers left.
func TestEmulationUsesPreHandlerRegs(t *testing.T) {
	e := newEnv(t)
	h := e.fn("h", 0x48, 0xc7, 0xc3, 0x07, 0, 0, 0, 0xc3)     // mov $7,%rbx; ret
	je := e.fn("je", cat(b(0x74, 0x07), movRBX1, b(0xc3))...) // taken only with ZF
	jmp := e.fn("jmp", 0xff, 0xe0)                            // jmp *%rax
	call := e.fn("call", 0xff, 0xd0, 0xc3)                    // call *%rax
	set := func(f func(r *vmm.Regs)) func(*Context) bool {
		return func(c *Context) bool { f(c.Regs()); return false }
	}
	for _, p := range []*Kprobe{
		{Addr: je, PreHandler: set(func(r *vmm.Regs) { r.RFLAGS |= flagZF })},
		{Addr: jmp, PreHandler: set(func(r *vmm.Regs) { r.RAX = h })},
		{Addr: call, PreHandler: set(func(r *vmm.Regs) { r.RAX = h })},
	} {
		if err := e.m.Register(p); err != nil {
			t.Fatal(err)
		}
	}
	e.call(je)
	if e.cpu.regs.RBX != 0x2222 {
		t.Errorf("je: rbx %#x: the pre handler's ZF was not used", e.cpu.regs.RBX)
	}
	for _, f := range []uint64{jmp, call} {
		e.reset()
		e.cpu.regs.RAX = sentinel
		e.call(f)
		if e.cpu.regs.RBX != 7 {
			t.Errorf("%#x: rbx %#x: the pre handler's rax was not used", f, e.cpu.regs.RBX)
		}
	}
	if st := e.m.Stats(); st.EmulatedBranches != 3 || st.Stepped != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestEmulateFallsBack: when a memory access fails or a target is not
// canonical, emulate changes nothing and says so, for the slot to run the
// instruction and the guest to take the CPU's fault.
func TestEmulateFallsBack(t *testing.T) {
	const userVA, mmioVA, roVA = 0x1000, 0xffffc90000200000, 0xffffc90000300000
	newK := func() *fakeKernel {
		k := &fakeKernel{mem: &fakeMem{b: make([]byte, 0x2000)},
			maps: []mapping{{userVA, 0, 0x1000}, {stackVA, 0x1000, 0x1000}}}
		writeU64(k, stackVA+0x100, 0x0000800000000000) // a non-canonical return address
		k.maps = append(k.maps, mapping{mmioVA, 0x10000, 0x1000})
		k.maps = append(k.maps, mapping{roVA, 0x1000, 0x1000}) // the stack page, read-only
		k.readOnly = map[uint64]bool{roVA: true}
		return k
	}
	top := uint64(stackVA + 0x100)
	cases := []struct {
		name string
		code []byte
		regs vmm.Regs
	}{
		{"call rel32, stack unmapped", b(0xe8, 0, 0, 0, 0), vmm.Regs{RSP: unmappedVA + 8}},
		{"call reg, stack unmapped", b(0xff, 0xd0), vmm.Regs{RSP: unmappedVA + 8, RAX: textVA}},
		{"call rip mem, pointer unmapped", b(0xff, 0x15, 0, 0, 0, 0), vmm.Regs{RSP: top}},
		{"jmp rip mem, pointer unmapped", b(0xff, 0x25, 0, 0, 0, 0), vmm.Regs{RSP: top}},
		{"push imm, stack unmapped", b(0x6a, 0x01), vmm.Regs{RSP: unmappedVA + 8}},
		{"push mem, operand unmapped", b(0xff, 0x37), vmm.Regs{RSP: top, RDI: unmappedVA}},
		{"push mem, user operand", b(0xff, 0x37), vmm.Regs{RSP: top, RDI: userVA}},
		{"pop, stack unmapped", b(0x5d), vmm.Regs{RSP: unmappedVA}},
		{"leave, frame unmapped", b(0xc9), vmm.Regs{RSP: top, RBP: unmappedVA}},
		{"ret, stack unmapped", b(0xc3), vmm.Regs{RSP: unmappedVA}},
		{"ret, non-canonical target", b(0xc3), vmm.Regs{RSP: top}},
		{"jmp reg, non-canonical target", b(0xff, 0xe0), vmm.Regs{RAX: 1 << 63}},
		{"call reg, non-canonical target", b(0xff, 0xd0), vmm.Regs{RSP: top, RAX: 1 << 63}},
		{"call reg mem, pointer unmapped", b(0xff, 0x53, 0x08), vmm.Regs{RSP: top, RBX: unmappedVA}},
		{"mov load, unmapped", b(0x48, 0x8b, 0x07), vmm.Regs{RDI: unmappedVA}},
		{"mov load, user address", b(0x48, 0x8b, 0x07), vmm.Regs{RDI: userVA}},
		{"mov load, non-canonical", b(0x48, 0x8b, 0x07), vmm.Regs{RDI: 0x8000_0000_0000_1000}},
		{"mov load, crossing a page", b(0x48, 0x8b, 0x07), vmm.Regs{RDI: stackVA + 0xffc}},
		{"mov store, MMIO (beyond RAM)", b(0x48, 0x89, 0x07), vmm.Regs{RDI: mmioVA}},
		{"mov store, read-only page", b(0x48, 0x89, 0x07), vmm.Regs{RDI: roVA + 0x800}},
		{"mov gs load, base 0: a user address", b(0x65, 0x48, 0x8b, 0x04, 0x25, 0x28, 0, 0, 0), vmm.Regs{}},
		{"add to memory, unmapped", b(0x48, 0x01, 0x07), vmm.Regs{RDI: unmappedVA}},
		{"incl, read-only page", b(0xff, 0x07), vmm.Regs{RDI: roVA + 0x800}},
		{"pop m64, destination unmapped", b(0x8f, 0x07), vmm.Regs{RSP: top, RDI: unmappedVA}},
		{"pop m64, stack unmapped", b(0x8f, 0x07), vmm.Regs{RSP: unmappedVA, RDI: top}},
		{"pushf, stack unmapped", b(0x9c), vmm.Regs{RSP: unmappedVA + 8}},
		{"popf, stack unmapped", b(0x9d), vmm.Regs{RSP: unmappedVA}},
		{"mov load, TF set", b(0x48, 0x8b, 0x07), vmm.Regs{RDI: top, RFLAGS: vmm.FlagTF}},
		{"nop, TF set", b(0x90), vmm.Regs{RFLAGS: vmm.FlagTF | 2}},
		{"rep movsb, source unmapped", b(0xf3, 0xa4), vmm.Regs{RCX: 8, RSI: unmappedVA, RDI: top}},
		{"rep movsb, overlapping", b(0xf3, 0xa4), vmm.Regs{RCX: 8, RSI: top, RDI: top + 4}},
		{"rep movsb, beyond a page", b(0xf3, 0xa4), vmm.Regs{RCX: pageSize + 1, RSI: stackVA, RDI: top}},
		{"rep stosb, first store read-only", b(0xf3, 0xaa), vmm.Regs{RCX: 16, RDI: roVA + 0x800}},
		{"rep stosq, unaligned", b(0xf3, 0x48, 0xab), vmm.Regs{RCX: 2, RDI: top + 1}},
		{"rep stosb, user address", b(0xf3, 0xaa), vmm.Regs{RCX: 2, RDI: userVA}},
		{"std rep stosb, wrapping below", b(0xf3, 0xaa), vmm.Regs{RCX: 16, RDI: 1<<63 + 4, RFLAGS: flagDF}},
		{"rep movsb, 32-bit addresses", b(0x67, 0xf3, 0xa4), vmm.Regs{RCX: 8, RSI: top, RDI: top + 64}},
	}
	for _, c := range cases {
		in, r := analyze(c.code)
		if r != nil {
			t.Fatalf("%s: %v", c.name, r)
		}
		k := newK()
		mem := bytes.Clone(k.mem.b)
		regs := c.regs
		regs.RIP = textVA
		before := regs
		if emulate(in, textVA, &regs, newMachine(k, &fakeCPU{})) {
			t.Errorf("%s: emulated", c.name)
		}
		if regs != before || !bytes.Equal(mem, k.mem.b) {
			t.Errorf("%s: state changed", c.name)
		}
	}
}

// TestEmulationFallbackFaults: a push whose operand is unmapped runs from
// the slot instead. With a fixup it is stepped and the guest takes the
// fault at the probe's address; without one it is boosted and the fault
// names the slot, where the guest's handler returns. Once the handler has
// fixed things the push completes, exactly once.
func TestEmulationFallbackFaults(t *testing.T) {
	for _, fixup := range []bool{true, false} {
		e := newEnv(t)
		f := e.fn("f1", 0xff, 0x37, 0x58, 0xc3) // push (%rdi); pop %rax; ret
		writeU64(e.k, dataVA, 0xabcdef)
		e.k.fixups = map[uint64]bool{f: fixup}
		var faults []Fault
		p := &Kprobe{Symbol: "f1", FaultHandler: func(_ *Context, f Fault) bool { faults = append(faults, f); return false }}
		if err := e.m.Register(p); err != nil {
			t.Fatal(err)
		}
		e.cpu.regs.RDI, e.cpu.regs.RIP = unmappedVA, f
		e.stepGuest() // emulation fails: to the slot
		e.stepGuest() // the read faults
		frame, wantFrame, wantFaults := readU64(e.k, e.cpu.regs.RSP+8), e.m.byVA[f].slotVA, 0
		if fixup {
			wantFrame, wantFaults = f, 1
		}
		if len(faults) != wantFaults || frame != wantFrame || e.cpu.ss {
			t.Fatalf("fixup=%v: faults %+v, frame rip %#x (want %#x), single-step %v", fixup, faults, frame, wantFrame, e.cpu.ss)
		}
		e.cpu.regs.RDI = dataVA // what the guest's handler would have fixed
		e.run(sentinel, 20)
		st := e.m.Stats()
		hits, emulated := map[bool]uint64{true: 2, false: 1}[fixup], map[bool]uint64{true: 1}[fixup]
		if e.cpu.regs.RAX != 0xabcdef || p.Hits() != hits || st.Emulated != emulated || st.Errors != 0 {
			t.Errorf("fixup=%v: rax %#x hits %d stats %+v", fixup, e.cpu.regs.RAX, p.Hits(), st)
		}
	}
}

// TestEmulateMatchesInterpreter runs every emulated encoding from random
// registers and flags, emulated and interpreted, and requires the same
// registers and memory.
func TestEmulateMatchesInterpreter(t *testing.T) {
	const at = textVA + 0x800
	ptr := rel32(at+6, dataVA+0x10) // from a 6-byte %rip-relative instruction at at
	codes := [][]byte{
		b(0x90), b(0x55), b(0x41, 0x54), b(0x5d), b(0x5c), b(0x41, 0x5f), b(0x54),
		b(0x6a, 0x80), b(0x68, 0x00, 0x00, 0x00, 0x80), b(0xff, 0x74, 0x24, 0x08), b(0xff, 0x34, 0x24),
		b(0x41, 0xff, 0x72, 0xf8), cat(b(0xff, 0x35), ptr), b(0xc9),
		b(0x89, 0xc8), b(0x48, 0x89, 0xe5), b(0x48, 0x83, 0xc0, 0x80), b(0x48, 0x81, 0xe9, 0, 0, 0, 0x80), b(0x31, 0xdb),
		b(0xeb, 0x80), b(0xe9, 0x00, 0xf0, 0xff, 0xff), b(0xe8, 0x10, 0x00, 0x00, 0x00), b(0xe8, 0x00, 0x00, 0x00, 0x80),
		b(0xff, 0xd0), b(0x41, 0xff, 0xd3), b(0xff, 0xd4), b(0xff, 0xe0), b(0xf2, 0x41, 0xff, 0xe3),
		cat(b(0xff, 0x15), ptr), cat(b(0xff, 0x25), ptr),
		b(0xc3), b(0xf3, 0xc3), b(0xc2, 0x18, 0x00), b(0xc2, 0xff, 0xff),
		b(0xe0, 0xfe), b(0xe1, 0x10), b(0xe2, 0x80), b(0xe3, 0x7f),
		// Data forms on random %rdx/%rbx, and on memory at %r10.
		b(0x01, 0xda), b(0x48, 0x29, 0xda), b(0x66, 0x01, 0xda), b(0x00, 0xda), b(0x28, 0xfe), b(0x38, 0xda),
		b(0x48, 0x39, 0xda), b(0x66, 0x39, 0xda), b(0x84, 0xda), b(0x48, 0x85, 0xda), b(0x21, 0xda), b(0x66, 0x09, 0xda),
		b(0x48, 0x31, 0xda), b(0x30, 0xf2), b(0xfe, 0xc2), b(0x66, 0xff, 0xca), b(0xff, 0xc2), b(0x48, 0xff, 0xca),
		b(0x80, 0xc2, 0x80), b(0x66, 0x83, 0xea, 0x7f), b(0x48, 0x81, 0xf2, 0x00, 0x00, 0x00, 0x80), b(0x24, 0x0f),
		b(0x49, 0x01, 0x12), b(0x41, 0x03, 0x12), b(0x41, 0x80, 0x02, 0x80), b(0x66, 0x41, 0xff, 0x0a), b(0x41, 0xf6, 0x02, 0x81),
		b(0x49, 0x83, 0x3a, 0xff), b(0x41, 0x30, 0x32), b(0x41, 0x8a, 0x12), b(0x66, 0x41, 0x8b, 0x12), b(0x41, 0x8b, 0x12),
		b(0x49, 0x89, 0x1a), b(0x41, 0x88, 0x3a), b(0x49, 0x0f, 0xbe, 0x12), b(0x49, 0x63, 0x12), b(0x41, 0x0f, 0xb7, 0x12),
		b(0x48, 0x0f, 0xbf, 0xd3), b(0x0f, 0xb6, 0xd7), b(0x48, 0x8d, 0x54, 0x5a, 0x80), b(0x89, 0xda), b(0x88, 0xf2),
		b(0x41, 0x8f, 0x02), b(0x9c), b(0x9d), b(0xfa),
	}
	for cc := byte(0); cc < 16; cc++ {
		codes = append(codes, b(0x70+cc, 0x85), b(0x0f, 0x80+cc, 0x34, 0x12, 0, 0),
			b(0x48, 0x0f, 0x40+cc, 0xda), b(0x0f, 0x40+cc, 0xda), b(0x66, 0x41, 0x0f, 0x40+cc, 0x12), // cmovcc
			b(0x0f, 0x90+cc, 0xc2), b(0x0f, 0x90+cc, 0xc6), b(0x41, 0x0f, 0x90+cc, 0x02)) // setcc %dl, %dh, (%r10)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for _, c := range codes {
		in, r := analyze(c)
		if r != nil || in.emul == emulNone {
			t.Fatalf("% x: not emulated (%v)", c, r)
		}
		for range 100 {
			mem := &fakeMem{b: make([]byte, dataSize+stackSize)}
			k := &fakeKernel{mem: mem, maps: []mapping{{dataVA, 0, dataSize}, {stackVA, dataSize, stackSize}}}
			// Words on the stack and in data are kernel text addresses,
			// so that popped or loaded targets are canonical.
			for i := 0; i < len(mem.b); i += 8 {
				binary.LittleEndian.PutUint64(mem.b[i:], textVA+rng.Uint64N(textSize))
			}
			regs := vmm.Regs{RIP: at, RSP: stackVA + 0x1000 + 8*rng.Uint64N(0x100), RBP: stackVA + 0x2000 + 8*rng.Uint64N(0x100),
				RAX: textVA + rng.Uint64N(textSize), RCX: rng.Uint64N(3), RDX: rng.Uint64(), RBX: rng.Uint64(),
				R10: stackVA + 0x3000, R11: textVA + rng.Uint64N(textSize),
				RFLAGS: 0x202 | rng.Uint64()&arithFlags}
			if rng.IntN(4) == 0 {
				regs.RCX = rng.Uint64()
			}
			ref, refMem := regs, bytes.Clone(mem.b)
			rk := &fakeKernel{mem: &fakeMem{b: refMem}, maps: k.maps}
			if err := execInsn(rk, &ref, &vmm.Sregs{}, c, false); err != nil {
				t.Fatalf("% x: interpreter: %v", c, err)
			}
			if !emulate(in, at, &regs, newMachine(k, &fakeCPU{})) {
				t.Fatalf("% x from %+v: not emulated", c, ref)
			}
			if regs != ref || !bytes.Equal(mem.b, refMem) {
				t.Fatalf("% x: emulated\n %+v\n interpreted\n %+v\n memory equal %v", c, regs, ref, bytes.Equal(mem.b, refMem))
			}
		}
	}
}

// TestEmulateRepStopsMidway: a rep stos whose stores reach a read-only
// page after two iterations stops there as the CPU does between
// iterations: the two elements written, RCX and RDI saying so, RIP still
// on the instruction, which the slot then finishes (and faults).
func TestEmulateRepStopsMidway(t *testing.T) {
	for _, df := range []bool{false, true} {
		k := &fakeKernel{mem: &fakeMem{b: make([]byte, 0x2000)},
			maps: []mapping{{stackVA, 0, 0x2000}}, readOnly: map[uint64]bool{stackVA + 0x1000: true}}
		in, _ := analyze(b(0xf3, 0x48, 0xab)) // rep stosq
		regs := vmm.Regs{RIP: textVA, RCX: 4, RDI: stackVA + 0x1000 - 16, RAX: 0x5a5a, RFLAGS: 2}
		wantRDI := uint64(stackVA + 0x1000)
		if df {
			// Down from the read-only page's second word: that one and
			// the first fail at once.
			regs.RDI, regs.RFLAGS = stackVA+0x1000+8, 2|flagDF
			wantRDI = regs.RDI
		}
		if emulate(in, textVA, &regs, newMachine(k, &fakeCPU{})) {
			t.Fatalf("df=%v: emulated into a read-only page", df)
		}
		wantRCX := map[bool]uint64{false: 2, true: 4}[df]
		if regs.RIP != textVA || regs.RCX != wantRCX || regs.RDI != wantRDI {
			t.Errorf("df=%v: rip %#x rcx %d rdi %#x, want %#x %d %#x", df, regs.RIP, regs.RCX, regs.RDI, uint64(textVA), wantRCX, wantRDI)
		}
		if !df && (readU64(k, stackVA+0x1000-16) != 0x5a5a || readU64(k, stackVA+0x1000-8) != 0x5a5a) {
			t.Error("the iterations before the read-only page were not written")
		}
	}
}

// TestEmulatedStoresAreSingle: an emulated aligned store of 1, 2, 4 or 8
// bytes is one StoreVirt of that width (one host store, which the CPU's
// store is to other vCPUs), never a byte copy through WriteVirt; string
// instructions store in aligned pieces of up to 8 bytes.
func TestEmulatedStoresAreSingle(t *testing.T) {
	type st = hostStore
	const d = memVA
	for _, c := range []struct {
		name string
		code []byte
		regs func(r *vmm.Regs)
		want []hostStore
	}{
		{"mov store64", b(0x48, 0x89, 0x07), nil, []st{{d, 8}}},
		{"mov store32", b(0x89, 0x47, 0x04), nil, []st{{d + 4, 4}}},
		{"mov store16", b(0x66, 0x89, 0x47, 0x02), nil, []st{{d + 2, 2}}},
		{"mov store8", b(0x88, 0x47, 0x03), nil, []st{{d + 3, 1}}},
		{"movq imm", b(0x48, 0xc7, 0x07, 1, 0, 0, 0), nil, []st{{d, 8}}},
		{"incq rmw", b(0x48, 0xff, 0x07), nil, []st{{d, 8}}},
		{"orb rmw", b(0x80, 0x4f, 0x09, 0x80), nil, []st{{d + 9, 1}}},
		{"cmp: no store", b(0x48, 0x39, 0x07), nil, nil},
		{"mov gs store64", b(0x65, 0x48, 0x89, 0x04, 0x25, 0x08, 0, 0, 0), nil, []st{{d + 8, 8}}},
		{"push", b(0x55), nil, []st{{stackVA + 0x1000 - 8, 8}}},
		{"pushf", b(0x9c), nil, []st{{stackVA + 0x1000 - 8, 8}}},
		{"call reg", b(0xff, 0xd0), func(r *vmm.Regs) { r.RAX = textVA }, []st{{stackVA + 0x1000 - 8, 8}}},
		{"pop m64", b(0x8f, 0x47, 0x08), nil, []st{{d + 8, 8}}},
		{"rep stosq", b(0xf3, 0x48, 0xab), func(r *vmm.Regs) { r.RCX = 2 }, []st{{d, 8}, {d + 8, 8}}},
		{"rep movsb 13", b(0xf3, 0xa4), func(r *vmm.Regs) { r.RCX, r.RSI = 13, d+0x101 },
			[]st{{d, 8}, {d + 8, 4}, {d + 12, 1}}},
		{"std rep stosw", b(0xf3, 0x66, 0xab), func(r *vmm.Regs) { r.RCX, r.RDI, r.RFLAGS = 6, d+10, 2|flagDF },
			[]st{{d + 8, 4}, {d, 8}}},
	} {
		e := newEnv(t)
		f := e.fn("f", append(bytes.Clone(c.code), 0xc3)...)
		e.cpu.regs.RDI, e.cpu.regs.RSP = d, stackVA+0x1000
		e.cpu.sregs.GS.Base = d
		if c.regs != nil {
			c.regs(&e.cpu.regs)
		}
		if err := e.m.Register(&Kprobe{Symbol: "f", PostHandler: func(*Context) {}}); err != nil {
			t.Fatal(err)
		}
		e.k.stores, e.k.virtWrites = nil, 0
		e.cpu.regs.RIP = f
		e.stepGuest()
		if st := e.m.Stats(); st.Emulated != 1 {
			t.Fatalf("%s: not emulated: %+v", c.name, st)
		}
		if e.k.virtWrites != 0 || !slicesEqual(e.k.stores, c.want) {
			t.Errorf("%s: stores %v and %d WriteVirt calls, want %v and none", c.name, e.k.stores, e.k.virtWrites, c.want)
		}
	}
}

// TestDataEmulationNeedsAtomicVirt: a Kernel without AtomicVirt gets its
// data operands run from the slot (stepped with a post handler); stack
// and branch emulation go on through ReadVirt/WriteVirt.
func TestDataEmulationNeedsAtomicVirt(t *testing.T) {
	e := newEnv(t)
	mov := e.fn("mov", 0x48, 0x8b, 0x07, 0xc3) // mov (%rdi),%rax
	push := e.fn("push", 0x55, 0x5d, 0xc3)
	type plainKernel struct{ Kernel }
	m, err := NewManager(e.vm, plainKernel{e.k}, SlotArea{VA: slotAVA, GPA: slotAGPA, Size: slotASize})
	if err != nil {
		t.Fatal(err)
	}
	e.m = m
	for _, s := range []string{"mov", "push"} {
		if err := m.Register(&Kprobe{Symbol: s, PostHandler: func(*Context) {}}); err != nil {
			t.Fatal(err)
		}
	}
	writeU64(e.k, dataVA, 0x1234567890)
	e.cpu.regs.RDI = dataVA
	e.call(mov)
	rax := e.cpu.regs.RAX
	e.reset()
	e.call(push)
	if st := m.Stats(); st.Stepped != 1 || st.Emulated != 1 || st.SteppedOps["mov"] != 1 || rax != 0x1234567890 {
		t.Errorf("stats %+v, rax %#x", st, rax)
	}
}

// BenchmarkEmulateLoad is the host side of an emulated mov (%rdi),%rax
// over the fake: the part a boosted slot does not pay (see dataForm).
func BenchmarkEmulateLoad(b *testing.B) {
	in, _ := analyze([]byte{0x48, 0x8b, 0x07})
	k := &fakeKernel{mem: &fakeMem{b: make([]byte, dataSize)}, maps: []mapping{{dataVA, 0, dataSize}}}
	g := newMachine(k, &fakeCPU{})
	for b.Loop() {
		regs := vmm.Regs{RIP: textVA, RDI: dataVA + 8, RFLAGS: 2}
		if !emulate(in, textVA, &regs, g) {
			b.Fatal("not emulated")
		}
	}
}

// TestStepEndedByGuard: when the single-step trap never comes (PVM loses
// it after an instruction that exits for port I/O), the vCPU runs on to
// the int3 after the instruction in its slot; the engine ends the step
// there: post handler, the instruction's effect, the guest back after
// the probed instruction with single-step off.
func TestStepEndedByGuard(t *testing.T) {
	e := newEnv(t)
	// Neither boosted (its slot ends in int3s) nor emulated: stepped.
	f := e.fn("cmos", 0xe6, 0x70, 0xc3) // out %al,$0x70; ret
	posts := 0
	if err := e.m.Register(&Kprobe{Symbol: "cmos", PostHandler: func(c *Context) { posts++ }}); err != nil {
		t.Fatal(err)
	}
	r := &e.cpu.regs
	r.RIP = f
	r.RFLAGS |= vmm.FlagIF
	e.stepGuest() // the int3: to the slot, single-step on
	slot := e.m.byVA[f].slotVA
	if r.RIP != slot || !e.cpu.ss {
		t.Fatalf("after the hit: rip %#x (slot %#x), single-step %v", r.RIP, slot, e.cpu.ss)
	}
	e.cpu.ss = false // the trap is lost
	e.stepGuest()    // the out, no step event
	e.stepGuest()    // the int3 after it
	if st := e.m.Stats(); r.RIP != f+2 || e.cpu.ss || r.RFLAGS&vmm.FlagIF == 0 || posts != 1 || st.GuardSteps != 1 || st.Stepped != 1 || st.LostSteps != 0 {
		t.Fatalf("rip %#x (want %#x) single-step %v rflags %#x posts %d stats %+v", r.RIP, f+2, e.cpu.ss, r.RFLAGS, posts, st)
	}
}
