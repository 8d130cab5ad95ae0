package stub

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"golang.org/x/arch/x86/x86asm"
)

var testParams = StubParams{
	Layout:       Layout{GPA: 0x7fe00000, VA: 0xffff88807fe00000, CPUs: 2, Records: 4, Probes: 8},
	Probe:        3,
	CPUNumberOff: 0x1f0a0,
	CurrentOff:   0x21c00,
	StubAddr:     0xffffffffc0001000,
	ProbeAddr:    0xffffffff81234560,
	Displaced:    []byte{0x48, 0x05, 0x78, 0x56, 0x34, 0x12}, // add $0x12345678,%rax
}

// disassemble decodes code (running at addr) instruction by instruction
// with x86asm, in GNU syntax.
func disassemble(t *testing.T, code []byte, addr uint64) []string {
	t.Helper()
	var out []string
	for at := 0; at < len(code); {
		in, err := x86asm.Decode(code[at:], 64)
		if err != nil {
			t.Fatalf("+%#x: % x does not decode: %v", at, code[at:min(at+15, len(code))], err)
		}
		out = append(out, x86asm.GNUSyntax(in, addr+uint64(at), nil))
		at += in.Len
	}
	return out
}

// TestStubDecodesBack: the whole generated stub, decoded back with
// x86asm, is exactly the intended instruction sequence.
func TestStubDecodesBack(t *testing.T) {
	code, err := Stub(testParams)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		// save
		"pushfq",
		"cli",
		"push %rax",
		"push %rcx",
		"push %rdx",
		"push %rbx",
		"push %rbp",
		"push %rsi",
		"push %rdi",
		"push %r8",
		"push %r9",
		"push %r10",
		"push %r11",
		"push %r12",
		"push %r13",
		"push %r14",
		"push %r15",
		// the ring of this CPU (cpu >= CPUs: lost)
		"mov %gs:0x1f0a0,%eax",
		"cmp $0x2,%eax",
		"jae 0xffffffffc00010e9",
		"imul $0x2e0,%rax,%rbx",
		"mov $-0x777f80200000,%rdx",
		"add %rdx,%rbx",
		// reentrance guard
		"cmpq $0x0,0x10(%rbx)",
		"jne 0xffffffffc00010e9",
		"movq $0x1,0x10(%rbx)",
		// full if head - tail >= Records
		"mov (%rbx),%rcx",
		"mov %rcx,%rdx",
		"sub 0x8(%rbx),%rdx",
		"cmp $0x4,%rdx",
		"jae 0xffffffffc00010e1",
		// the record: header + (head & 3) * 168
		"mov %rcx,%rdi",
		"and $0x3,%rdi",
		"imul $0xa8,%rdi,%rdi",
		"lea 0x40(%rbx,%rdi),%rdi",
		// probe id, cpu, tsc, current, rsp at the probe
		"movl $0x3,(%rdi)",
		"mov %eax,0x4(%rdi)",
		"rdtsc",
		"shl $0x20,%rdx",
		"or %rdx,%rax",
		"mov %rax,0x8(%rdi)",
		"mov %gs:0x21c00,%rax",
		"mov %rax,0x10(%rdi)",
		"lea 0x80(%rsp),%rax",
		"mov %rax,0x18(%rdi)",
		// the frame, by rep movsq
		"mov %rcx,%rdx",
		"lea 0x20(%rdi),%rdi",
		"mov %rsp,%rsi",
		"mov $0x10,%ecx",
		"cld",
		"rep movsq %ds:(%rsi),%es:(%rdi)",
		// no memory captures, a hit record
		"movq $0x0,(%rdi)",
		// publish head, clear busy
		"inc %rdx",
		"mov %rdx,(%rbx)",
		"movq $0x0,0x10(%rbx)",
		"jmpq 0xffffffffc00010f7",
		"movq $0x0,0x10(%rbx)",
		// lost: (full: busy cleared first) lock inc the probe's counter
		"mov $-0x777f801ffa28,%rax",
		"lock incq (%rax)",
		// restore
		"pop %r15",
		"pop %r14",
		"pop %r13",
		"pop %r12",
		"pop %r11",
		"pop %r10",
		"pop %r9",
		"pop %r8",
		"pop %rdi",
		"pop %rsi",
		"pop %rbp",
		"pop %rbx",
		"pop %rdx",
		"pop %rcx",
		"pop %rax",
		"popfq",
		// the displaced instruction, the jmp back to probe+6
		"add $0x12345678,%rax",
		"jmpq 0xffffffff81234566",
	}
	got := disassemble(t, code, testParams.StubAddr)
	if !slices.Equal(got, want) {
		t.Errorf("stub decodes to\n\t%s\nwant\n\t%s", strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
	}
}

// TestStubNop: ftrace's fentry nop is not copied; the stub ends in the jmp
// back to the instruction after it.
func TestStubNop(t *testing.T) {
	p := testParams
	p.Displaced = []byte{0x0f, 0x1f, 0x44, 0x00, 0x00} // nopl 0x0(%rax,%rax,1)
	code, err := Stub(p)
	if err != nil {
		t.Fatal(err)
	}
	got := disassemble(t, code, p.StubAddr)
	if tail := got[len(got)-2:]; !slices.Equal(tail, []string{"popfq", "jmpq 0xffffffff81234565"}) {
		t.Errorf("stub ends with %q", tail)
	}
}

// TestStubCaptures: a stub with captures (every page-walk level, 5 of
// them under LA57) decodes back, and its capture code reads %cr3.
func TestStubCaptures(t *testing.T) {
	for _, la57 := range []bool{false, true} {
		p := testParams
		p.Layout.Data, p.PhysLimit, p.DirectMap, p.LA57 = 256, 1<<30, 0xffff888000000000, la57
		p.Captures = []Capture{{Reg: x86asm.RSI, Derefs: []int32{8, -16}, Off: 0x1000, Size: 100, String: true},
			{Reg: x86asm.RSP, Off: 8, Size: 8}, {Imm: 0xffffffff82000000, Size: 4}}
		code, err := Stub(p)
		if err != nil {
			t.Fatal(err)
		}
		got := disassemble(t, code, p.StubAddr)
		walks := 0
		for _, in := range got {
			if strings.HasPrefix(in, "shr $0x") {
				walks++
			}
		}
		if want := map[bool]int{false: 4, true: 5}[la57]; walks != want || !slices.Contains(got, "mov %cr3,%r10") {
			t.Errorf("la57=%v: %d levels walked (want %d):\n\t%s", la57, walks, want, strings.Join(got, "\n\t"))
		}
	}
}

// TestStubRun: several displaced instructions (push %rbp; mov
// %rsp,%rbp; lea (%rdi,%rsi),%rax) are copied after the restore, and the
// jmp goes back after the last.
func TestStubRun(t *testing.T) {
	p := testParams
	p.Displaced = []byte{0x55, 0x48, 0x89, 0xe5, 0x48, 0x8d, 0x04, 0x37}
	code, err := Stub(p)
	if err != nil {
		t.Fatal(err)
	}
	got := disassemble(t, code, p.StubAddr)
	want := []string{"popfq", "push %rbp", "mov %rsp,%rbp", "lea (%rdi,%rsi),%rax", "jmpq 0xffffffff81234568"}
	if tail := got[len(got)-5:]; !slices.Equal(tail, want) {
		t.Errorf("stub ends with %q, want %q", tail, want)
	}
	if insts, err := CheckRun(p.Displaced); err != nil || len(insts) != 3 {
		t.Errorf("CheckRun = %d instructions, %v", len(insts), err)
	}
	if _, err := CheckDisplaced(p.Displaced); !errors.Is(err, ErrRefused) {
		t.Errorf("CheckDisplaced took a run: %v", err)
	}
}

// TestStubLargeLayout: offsets past disp8 and imm8 take the long forms and
// still decode back (Stub's self-check and the decoded text).
func TestStubLargeLayout(t *testing.T) {
	p := testParams
	p.Layout = Layout{GPA: 0x1000000, VA: 0x1000000, CPUs: MaxCPUs, Records: MaxRecords, Probes: MaxProbes}
	p.Probe = MaxProbes - 1
	p.CPUNumberOff = 0xffffffff82e1a000 // a kernel address as the per-CPU offset
	code, err := Stub(p)
	if err != nil {
		t.Fatal(err)
	}
	got := disassemble(t, code, p.StubAddr)
	for _, w := range []string{"mov %gs:0x82e1a000,%eax", "cmp $0x200,%eax", "imul $0xa80040,%rax,%rbx", "and $0xffff,%rdi", "movl $0xfffff,(%rdi)"} {
		if !slices.Contains(got, w) {
			t.Errorf("no %q in\n\t%s", w, strings.Join(got, "\n\t"))
		}
	}
}

func TestStubRefuses(t *testing.T) {
	for _, c := range []struct {
		name string
		code []byte
	}{
		{"rip-relative", []byte{0x48, 0x8b, 0x05, 0x10, 0x00, 0x00, 0x00}}, // mov 0x10(%rip),%rax
		{"call", []byte{0xe8, 0, 0, 0, 0}},
		{"jmp rel32", []byte{0xe9, 0, 0, 0, 0}},
		{"jcc rel32", []byte{0x0f, 0x84, 0, 0, 0, 0}},
		{"indirect call", []byte{0xff, 0x14, 0x25, 0, 0x10, 0, 0}}, // call *0x1000
		{"indirect jmp", []byte{0xff, 0x24, 0x25, 0, 0x10, 0, 0}},
		{"short", []byte{0x55}}, // push %rbp
		{"a run past the jmp's bytes", []byte{0x90, 0x90, 0x90, 0x90, 0x90, 0x90}},
		{"a run with a call", []byte{0x55, 0xe8, 0, 0, 0, 0}},
		{"undecodable", []byte{0x0f, 0x0b, 0x0f, 0xff, 0xff}}, // ud2 + junk: length mismatch
		{"ud2-like", []byte{0x0f, 0xb9, 0x04, 0x25, 0, 0, 0, 0}},
		{"empty", nil},
	} {
		p := testParams
		p.Displaced = c.code
		if _, err := Stub(p); !errors.Is(err, ErrRefused) {
			t.Errorf("%s (% x): %v, want ErrRefused", c.name, c.code, err)
		}
	}
	bad := []func(*StubParams){
		func(p *StubParams) { p.Probe = 8 },
		func(p *StubParams) { p.Layout.Records = 3 },
		func(p *StubParams) { p.Layout.CPUs = 0 },
		func(p *StubParams) { p.CPUNumberOff = 0x80000000 },
		func(p *StubParams) { p.CurrentOff = 0xffffffff00000000 },
		func(p *StubParams) { p.StubAddr = 0xffff888000001000 }, // jmp back out of rel32 reach
		// Captures the record cannot hold or the stub cannot make.
		func(p *StubParams) { p.Captures = []Capture{{Reg: x86asm.RDI, Size: 8}} },                    // Data 0
		func(p *StubParams) { p.Layout.Data, p.Captures = 64, []Capture{{Reg: x86asm.RDI, Size: 8}} }, // no PhysLimit
		func(p *StubParams) {
			p.Layout.Data, p.PhysLimit, p.Captures = 64, 1<<30, []Capture{{Reg: x86asm.RDI, Size: 0}}
		},
		func(p *StubParams) {
			p.Layout.Data, p.PhysLimit, p.Captures = 64, 1<<30, []Capture{{Reg: x86asm.RIP, Size: 8}}
		},
		func(p *StubParams) {
			p.Layout.Data, p.PhysLimit, p.CountOnly, p.Captures = 64, 1<<30, true, []Capture{{Reg: x86asm.RDI, Size: 8}}
		},
	}
	for i, f := range bad {
		p := testParams
		f(&p)
		if _, err := Stub(p); !errors.Is(err, ErrRefused) {
			t.Errorf("bad params %d: %v, want ErrRefused", i, err)
		}
	}
}

func TestEntry(t *testing.T) {
	b, err := Entry(0xffffffff81234560, 0xffffffffc0001000, 6)
	if err != nil {
		t.Fatal(err)
	}
	if got := disassemble(t, b, 0xffffffff81234560); !slices.Equal(got, []string{"jmpq 0xffffffffc0001000", "int3"}) {
		t.Errorf("entry = %q", got)
	}
	if _, err := Entry(0xffffffff81234560, 0xffff888000001000, 5); !errors.Is(err, ErrRefused) {
		t.Errorf("out of reach: %v", err)
	}
	if _, err := Entry(0xffffffff81234560, 0xffffffffc0001000, 4); !errors.Is(err, ErrRefused) {
		t.Errorf("4 bytes: %v", err)
	}
}

// TestEmitterForms: the addressing forms with special encodings.
func TestEmitterForms(t *testing.T) {
	e := newEmitter()
	e.load(nil, true, x86asm.R9, m(x86asm.R12, 0))
	e.load(nil, true, x86asm.RAX, m(x86asm.R13, 0))
	e.load(nil, true, x86asm.RAX, m(x86asm.RBP, 0x200))
	e.store(false, x86asm.R10, mi(x86asm.R13, x86asm.R14, -8))
	e.push(x86asm.R15)
	e.lockInc(m(x86asm.RSP, 8))
	e.movabs(x86asm.R11, 1)
	code, err := e.finish()
	if err != nil {
		t.Fatal(err)
	}
	// x86asm's GNU printer shows a SIB byte without an index as %riz
	// (4d 8b 0c 24 is objdump's mov (%r12),%r9).
	want := []string{"mov (%r12,%riz),%r9", "mov (%r13),%rax", "mov 0x200(%rbp),%rax", "mov %r10d,-0x8(%r13,%r14)",
		"push %r15", "lock incq 0x8(%rsp)", "mov $0x1,%r11"}
	if got := disassemble(t, code, 0); !slices.Equal(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

// TestStubCountOnly: a count-only stub is one locked increment of the
// probe's hit counter with the flags and %rax saved around it.
func TestStubCountOnly(t *testing.T) {
	p := testParams
	p.CountOnly = true
	code, err := Stub(p)
	if err != nil {
		t.Fatal(err)
	}
	// Hit counters follow the 8 lost counters: VA + 2*0x2e0 + 8*8 + 3*8.
	want := []string{
		"pushfq",
		"push %rax",
		"mov $-0x777f801ff9e8,%rax",
		"lock incq (%rax)",
		"pop %rax",
		"popfq",
		"add $0x12345678,%rax",
		"jmpq 0xffffffff81234566",
	}
	if got := disassemble(t, code, p.StubAddr); !slices.Equal(got, want) {
		t.Errorf("count-only stub decodes to\n\t%s", strings.Join(got, "\n\t"))
	}
	if va := p.Layout.CountVA(3); va != 0xffff88807fe00000+2*0x2e0+8*8+3*8 || -int64(va) != 0x777f801ff9e8 {
		t.Errorf("CountVA(3) = %#x", va)
	}
}
