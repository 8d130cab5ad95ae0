package kprobes

import (
	"bytes"
	"encoding/binary"
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
	mode  string // "emulate", "boost" or "step" for a probe without post handler
}

func code(c ...byte) func(func(int, uint64) []byte) []byte {
	return func(func(int, uint64) []byte) []byte { return c }
}

func setRegs(f func(r *vmm.Regs)) func(e *env) { return func(e *env) { f(&e.cpu.regs) } }

var hitCases = []hitCase{
	{name: "nop", code: code(0x90, 0xc3), mode: "emulate"},
	{name: "nopl", code: code(0x0f, 0x1f, 0x44, 0, 0, 0xc3), mode: "emulate"},
	{name: "nopw9", code: code(0x66, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0, 0xc3), mode: "emulate"},
	{name: "cs nopw", code: code(0x2e, 0x66, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0, 0xc3), mode: "emulate"},
	{name: "endbr64", code: code(0xf3, 0x0f, 0x1e, 0xfa, 0xc3), mode: "emulate"},
	{name: "push rbp", code: code(0x55, 0x5d, 0xc3), mode: "emulate"},
	{name: "push r12", code: code(0x41, 0x54, 0x41, 0x5c, 0xc3), mode: "emulate"},
	{name: "push rsp", code: code(0x54, 0x5b, 0xc3), mode: "emulate"},
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
	{name: "mov rip load", code: func(d func(int, uint64) []byte) []byte {
		return cat(b(0x48, 0x8b, 0x05), d(7, dataVA), b(0xc3))
	}, mode: "boost"},
	{name: "mov rip store", code: func(d func(int, uint64) []byte) []byte {
		return cat(b(0x48, 0x89, 0x05), d(7, dataVA+0x20), b(0xc3))
	}, mode: "boost"},
	{name: "movl imm rip store", code: func(d func(int, uint64) []byte) []byte {
		return cat(b(0xc7, 0x05), d(10, dataVA+0x28), b(0x78, 0x56, 0x34, 0x12, 0xc3))
	}, mode: "boost"},
	{name: "66 mov rip store", code: func(d func(int, uint64) []byte) []byte {
		return cat(b(0x66, 0x89, 0x05), d(7, dataVA+0x30), b(0xc3))
	}, mode: "boost"},
	{name: "cmp imm rip ne", code: func(d func(int, uint64) []byte) []byte {
		return cat(b(0x83, 0x3d), d(7, dataVA), b(0x90, 0x74, 0x07), movRBX1, b(0xc3))
	}, mode: "boost"},
	{name: "cmp imm rip eq", code: func(d func(int, uint64) []byte) []byte {
		return cat(b(0x83, 0x3d), d(7, dataVA+0x38), b(0x90, 0x74, 0x07), movRBX1, b(0xc3))
	}, mode: "boost", setup: func(e *env) { writeU64(e.k, dataVA+0x38, 0xffffff90) }},
	{name: "lea rip", code: func(d func(int, uint64) []byte) []byte {
		return cat(b(0x48, 0x8d, 0x35), d(7, dataVA+0x40), b(0xc3))
	}, mode: "boost"},
	{name: "lea base+index", code: code(0x48, 0x8d, 0x04, 0x37, 0xc3), mode: "boost",
		setup: setRegs(func(r *vmm.Regs) { r.RDI, r.RSI = 0xffff888000001000, 7 })},
	{name: "pop rbp", code: code(0x55, 0x5d, 0xc3), off: 1, mode: "boost"},
	{name: "call rel32", code: func(d func(int, uint64) []byte) []byte {
		return cat(b(0xe8), d(5, gVA), b(0xc3))
	}, mode: "step"},
	{name: "call reg", code: code(0xff, 0xd0, 0xc3), mode: "step",
		setup: setRegs(func(r *vmm.Regs) { r.RAX = gVA })},
	{name: "call rip mem", code: func(d func(int, uint64) []byte) []byte {
		return cat(b(0xff, 0x15), d(6, dataVA+8), b(0xc3))
	}, mode: "step"},
	{name: "call reg mem", code: code(0xff, 0x53, 0x08, 0xc3), mode: "step",
		setup: setRegs(func(r *vmm.Regs) { r.RBX = dataVA })},
	{name: "jmp reg", code: code(0xff, 0xe0), mode: "step",
		setup: setRegs(func(r *vmm.Regs) { r.RAX = hVA })},
	{name: "jmp rip mem", code: func(d func(int, uint64) []byte) []byte {
		return cat(b(0xff, 0x25), d(6, dataVA+16))
	}, mode: "step"},
	{name: "bnd jmp reg", code: code(0xf2, 0xff, 0xe0), mode: "step",
		setup: setRegs(func(r *vmm.Regs) { r.RAX = hVA })},
	{name: "ret", code: code(0xc3), mode: "step"},
	{name: "rep ret", code: code(0xf3, 0xc3), mode: "step"},
	{name: "jmp rel8", code: func(func(int, uint64) []byte) []byte { return cat(b(0xeb, 0x07), movRBX1, b(0xc3)) }, mode: "step"},
	{name: "jmp rel32", code: func(func(int, uint64) []byte) []byte {
		return cat(b(0xe9, 0x07, 0, 0, 0), movRBX1, b(0xc3))
	}, mode: "step"},
	{name: "je taken", code: func(func(int, uint64) []byte) []byte { return cat(b(0x74, 0x07), movRBX1, b(0xc3)) },
		mode: "step", setup: setRegs(func(r *vmm.Regs) { r.RFLAGS |= flagZF })},
	{name: "je not taken", code: func(func(int, uint64) []byte) []byte { return cat(b(0x74, 0x07), movRBX1, b(0xc3)) },
		mode: "step"},
	{name: "jne rel32", code: func(func(int, uint64) []byte) []byte {
		return cat(b(0x0f, 0x85, 0x07, 0, 0, 0), movRBX1, b(0xc3))
	}, mode: "step"},
	{name: "pushf IF=1", code: code(0x9c, 0x58, 0xc3), mode: "step"},
	{name: "pushf IF=0", code: code(0x9c, 0x58, 0xc3), mode: "step",
		setup: setRegs(func(r *vmm.Regs) { r.RFLAGS = 0x2 })},
	{name: "popf IF 0->1", code: code(0x68, 0x46, 0x02, 0, 0, 0x9d, 0xc3), off: 5, mode: "step",
		setup: setRegs(func(r *vmm.Regs) { r.RFLAGS = 0x2 })},
	{name: "popf IF 1->0", code: code(0x68, 0x46, 0x00, 0, 0, 0x9d, 0xc3), off: 5, mode: "step"},
	{name: "cli", code: code(0xfa, 0xc3), mode: "step"},
	{name: "sti", code: code(0xfb, 0xc3), mode: "step",
		setup: setRegs(func(r *vmm.Regs) { r.RFLAGS = 0x2 })},
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

// TestHitsMatchUnprobedExecution runs each function unprobed and probed
// (with and without a post handler) and requires the same final state, the
// expected execution mode and exit count, and a post handler that sees the
// state right after the probed instruction executed in place.
func TestHitsMatchUnprobedExecution(t *testing.T) {
	for _, c := range hitCases {
		t.Run(c.name, func(t *testing.T) {
			ref := layout(t, c)
			addr := fVA + c.off
			ref.cpu.regs.RIP = fVA
			ref.run(addr, 100)
			if err := execInsn(ref.k, &ref.cpu.regs, ref.mem.b[textGPA+addr-textVA:], false); err != nil {
				t.Fatal(err)
			}
			after := ref.snap()
			ref.run(sentinel, 100)
			want := ref.snap()

			for _, withPost := range []bool{false, true} {
				e := layout(t, c)
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
				if withPost && mode == "boost" {
					mode = "step"
				}
				got := map[string]uint64{"emulate": st.Emulated, "boost": st.Boosted, "step": st.Stepped}
				if got[mode] != 1 || st.Emulated+st.Boosted+st.Stepped != 1 {
					t.Errorf("post=%v: want one %s hit, got %+v", withPost, mode, got)
				}
				wantExits := 1
				if mode == "step" {
					wantExits = 2
				}
				if e.exits != wantExits || st.ExitsPerHit[wantExits] != 1 || st.Probes[0].Exits != uint64(wantExits) {
					t.Errorf("exits: %d events, stats %v, probe %d; want %d", e.exits, st.ExitsPerHit, st.Probes[0].Exits, wantExits)
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
