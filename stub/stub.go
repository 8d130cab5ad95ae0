package stub

import (
	"bytes"
	"errors"
	"fmt"
	"slices"

	"github.com/hvprobe/hvprobe/internal/x86dec"
	"golang.org/x/arch/x86/x86asm"
)

// JmpLen is the size of the jmp rel32 that replaces the probed instruction.
const JmpLen = 5

// ErrRefused wraps every reason Stub or Entry refuses a probe.
var ErrRefused = errors.New("stub: probe refused")

// StubParams describe one exit-less probe.
type StubParams struct {
	Layout Layout
	Probe  uint32 // probe id: the record's id and the lost counter's index
	// Per-CPU offsets (the %gs displacement Linux's this_cpu_read uses):
	// cpu_number (u32) and current_task (u64). Each must be a sign-extended
	// 32-bit value, as both zero-based offsets and kernel addresses are.
	CPUNumberOff uint64
	CurrentOff   uint64
	// StubAddr is the guest-virtual address the stub will run at;
	// ProbeAddr the probed instruction's, whose bytes are Displaced.
	StubAddr  uint64
	ProbeAddr uint64
	Displaced []byte
	// CountOnly: the stub only increments the probe's hit counter
	// (Layout.CountVA): no record, no ring, nothing lost.
	CountOnly bool
	// Captures are the memory reads each record keeps (at most
	// Layout.Data bytes of them: DataSize). They need the kernel's
	// direct-map base (the VA of gpa 0), the end of guest RAM (no read
	// at or above it), and whether the guest pages with five levels.
	Captures  []Capture
	DirectMap uint64
	PhysLimit uint64
	LA57      bool
}

// checkCaptures refuses captures the record cannot hold or the stub
// cannot evaluate.
func checkCaptures(p StubParams) error {
	if len(p.Captures) == 0 {
		return nil
	}
	if p.CountOnly {
		return refused("a count-only stub records no memory")
	}
	if n := DataSize(p.Captures); n > p.Layout.Data {
		return refused("the fetch args read %d bytes with headers; a record holds %d", n, p.Layout.Data)
	}
	if p.PhysLimit == 0 {
		return refused("memory captures need the end of guest RAM")
	}
	for i, c := range p.Captures {
		switch {
		case c.Size <= 0 || c.Size > MaxCaptureSize:
			return refused("capture %d reads %d bytes", i, c.Size)
		case c.Current && c.Reg != 0:
			return refused("capture %d starts from both the task and %v", i, c.Reg)
		case c.Reg == 0, c.Reg == x86asm.RSP:
		case !slices.Contains(saved, c.Reg):
			return refused("capture %d starts from %v, which the stub does not save", i, c.Reg)
		}
	}
	return nil
}

func refused(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, a...))
}

// simm32 converts a per-CPU offset to the disp32 the CPU sign-extends.
func simm32(v uint64, what string) (int32, error) {
	if int64(v) != int64(int32(v)) {
		return 0, refused("%s %#x is not a sign-extended 32-bit displacement", what, v)
	}
	return int32(v), nil
}

// MaxRun is the most bytes a jmp displaces: instructions shorter than
// the jmp, then the one that reaches JmpLen bytes.
const MaxRun = JmpLen - 1 + 15

// CheckDisplaced decodes the probed instruction and refuses what cannot
// run unchanged at another address, or does not leave room for the jmp:
// anything with a %rip-relative operand or a relative target, control
// transfers, and instructions that trap or change privilege by design.
func CheckDisplaced(code []byte) (x86asm.Inst, error) {
	inst, err := checkOne(code, true)
	if err == nil && inst.Len < JmpLen {
		err = refused("%s is %d bytes, shorter than the %d-byte jmp", text(inst), inst.Len, JmpLen)
	}
	return inst, err
}

// CheckRun decodes code as the run of instructions a jmp displaces (at
// least JmpLen bytes, at most MaxRun, the last one reaching JmpLen), each
// of which must run unchanged elsewhere as CheckDisplaced requires. Where
// else the run may be entered is the caller's to check.
func CheckRun(code []byte) ([]x86asm.Inst, error) {
	if len(code) < JmpLen || len(code) > MaxRun {
		return nil, refused("a run of %d bytes: want %d to %d", len(code), JmpLen, MaxRun)
	}
	var insts []x86asm.Inst
	for at := 0; at < len(code); {
		if at >= JmpLen {
			return nil, refused("% x: the run goes on past the %d bytes the jmp needs", code, JmpLen)
		}
		inst, err := checkOne(code[at:], false)
		if err != nil {
			return nil, err
		}
		insts = append(insts, inst)
		at += inst.Len
	}
	return insts, nil
}

// checkOne decodes one displaced instruction at the start of code (all
// of code if whole).
func checkOne(code []byte, whole bool) (x86asm.Inst, error) {
	inst, err := x86dec.Decode(code)
	switch {
	case err != nil:
		return inst, refused("undecodable instruction bytes % x", code)
	case whole && inst.Len != len(code):
		return inst, refused("% x is %d bytes of instruction and %d more", code, inst.Len, len(code)-inst.Len)
	case inst.PCRel != 0:
		return inst, refused("%s is %%rip-relative", text(inst))
	}
	// It must decode the same followed by other bytes (the stub's jmp).
	if again, err := x86dec.Decode(append(bytes.Clone(code[:inst.Len]), 0xe9, 0, 0, 0, 0)); err != nil ||
		again.Op != inst.Op || again.Len != inst.Len || again.Args != inst.Args {
		return inst, refused("% x decodes differently when followed by other bytes", code[:inst.Len])
	}
	for _, a := range inst.Args {
		switch a := a.(type) {
		case x86asm.Rel:
			return inst, refused("%s has a relative target", text(inst))
		case x86asm.Mem:
			if a.Base == x86asm.RIP {
				return inst, refused("%s is %%rip-relative", text(inst))
			}
		case x86asm.Reg:
			if a == x86asm.RIP || a == x86asm.SS || a == x86asm.CS {
				return inst, refused("%s uses %v", text(inst), a)
			}
		}
	}
	switch inst.Op {
	case x86asm.CALL, x86asm.JMP, x86asm.RET, x86asm.LCALL, x86asm.LJMP, x86asm.LRET,
		x86asm.IRET, x86asm.IRETD, x86asm.IRETQ,
		x86asm.INT, x86asm.INTO, x86asm.ICEBP, x86asm.UD0, x86asm.UD1, x86asm.UD2,
		x86asm.SYSCALL, x86asm.SYSRET, x86asm.SYSENTER, x86asm.SYSEXIT,
		x86asm.HLT, x86asm.MWAIT, x86asm.RSM, x86asm.XBEGIN, x86asm.XABORT, x86asm.XEND,
		x86asm.LOOP, x86asm.LOOPE, x86asm.LOOPNE, x86asm.JRCXZ, x86asm.JECXZ, x86asm.JCXZ,
		x86asm.POPF, x86asm.POPFD, x86asm.POPFQ, x86asm.CLI, x86asm.STI, x86asm.LSS:
		return inst, refused("%s is a control transfer, traps, or changes the interrupt flag", text(inst))
	}
	return inst, nil
}

func text(inst x86asm.Inst) string { return x86asm.GNUSyntax(inst, 0, nil) }

// Stub generates the exit-less probe stub (see the package doc for what it
// does). The code is position dependent: it runs at p.StubAddr only.
func Stub(p StubParams) ([]byte, error) {
	code, _, err := stub(p)
	return code, err
}

// Stub register use, after everything is saved:
//
//	rax  cpu, then scratch
//	rbx  the ring header
//	rcx  head, then the rep count
//	rdx  scratch, then head
//	rsi  the frame (rep movsq source)
//	rdi  the record
const (
	labelLost     = "lost"
	labelLostBusy = "lost_busy"
	labelOut      = "out"
)

// saved is the push order; the frame in a record is its reverse.
var saved = []x86asm.Reg{
	x86asm.RAX, x86asm.RCX, x86asm.RDX, x86asm.RBX, x86asm.RBP, x86asm.RSI, x86asm.RDI,
	x86asm.R8, x86asm.R9, x86asm.R10, x86asm.R11, x86asm.R12, x86asm.R13, x86asm.R14, x86asm.R15,
}

func stub(p StubParams) ([]byte, []int, error) {
	l := p.Layout
	if err := l.Check(); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrRefused, err)
	}
	if p.Probe >= uint32(l.Probes) {
		return nil, nil, refused("probe id %d: the layout has %d lost counters", p.Probe, l.Probes)
	}
	cpuOff, err := simm32(p.CPUNumberOff, "cpu_number offset")
	if err != nil {
		return nil, nil, err
	}
	curOff, err := simm32(p.CurrentOff, "current_task offset")
	if err != nil {
		return nil, nil, err
	}
	insts, err := CheckRun(p.Displaced)
	if err != nil {
		return nil, nil, err
	}
	if err := checkCaptures(p); err != nil {
		return nil, nil, err
	}
	rax, e := x86asm.RAX, newEmitter()
	if p.CountOnly {
		// lock inc sets the flags: they are saved around it.
		e.pushfq()
		e.push(rax)
		e.movabs(rax, l.CountVA(p.Probe))
		e.lockInc(m(rax, 0))
		e.pop(rax)
		e.popfq()
		return finishStub(e, p, insts, nil)
	}
	e.saveAll()
	var tail func()
	record(e, p, cpuOff, curOff, frameBytes, 0, func() { tail = captures(e, p, RecDataOff, frameBytes) })
	e.restoreAll()
	return finishStub(e, p, insts, tail)
}

// saveAll pushes the flags and the 15 GPRs, interrupts off; restoreAll
// pops them.
func (e *emitter) saveAll() {
	e.pushfq()
	e.cli()
	for _, x := range saved {
		e.push(x)
	}
}

func (e *emitter) restoreAll() {
	for i := len(saved) - 1; i >= 0; i-- {
		e.pop(saved[i])
	}
	e.popfq()
}

// record writes one record of probe p.Probe into this CPU's ring (or
// counts it lost), with everything saved by saveAll; frameTop is the
// distance from %rsp to the probe's %rsp (the record's RSP), kind the
// record's kind (RecKindOff). fill runs after the frame copy, with rdi
// at the record's RecNCapOff, rbx the ring header and rdx head, which it
// must keep. It ends at labelOut, every register but rsp clobbered.
func record(e *emitter, p StubParams, cpuOff, curOff, frameTop int32, kind int32, fill func()) {
	const gs = 0x65
	l := p.Layout
	rax, rbx, rcx, rdx, rdi, rsp := x86asm.RAX, x86asm.RBX, x86asm.RCX, x86asm.RDX, x86asm.RDI, x86asm.RSP
	// The ring: rbx = base + cpu*stride, if cpu < CPUs.
	e.load([]byte{gs}, false, rax, abs(cpuOff)) // mov %gs:cpu_number, %eax (zero-extends)
	e.aluImm(false, 7, r(rax), int32(l.CPUs))   // cmp $CPUs, %eax
	e.jcc(ccAE, labelLost)
	e.imul(rbx, rax, int32(l.RingStride()))
	e.movabs(rdx, l.VA)
	e.add(rdx, rbx)
	// Reentrance guard: interrupts are off, so only an NMI (or #MC) can
	// nest here, and it finishes before we go on; a plain check-then-set
	// suffices.
	e.aluImm(true, 7, m(rbx, BusyOff), 0) // cmpq $0, busy
	e.jcc(ccNE, labelLost)
	e.storeImm(true, m(rbx, BusyOff), 1)
	// Full if head - tail >= Records.
	e.load(nil, true, rcx, m(rbx, HeadOff))
	e.mov(rcx, rdx)
	e.subMem(m(rbx, TailOff), rdx)
	e.aluImm(true, 7, r(rdx), int32(l.Records))
	e.jcc(ccAE, labelLostBusy)
	// The record: rdi = rbx + HeaderSize + (head & (Records-1)) * RecordSize.
	e.mov(rcx, rdi)
	e.aluImm(true, 4, r(rdi), int32(l.Records-1)) // and
	e.imul(rdi, rdi, int32(l.RecordSize()))
	e.lea(rdi, mi(rbx, rdi, HeaderSize))
	e.storeImm(false, m(rdi, RecProbeOff), int32(p.Probe))
	e.store(false, rax, m(rdi, RecCPUOff))
	e.rdtsc()
	e.shl(rdx, 32)
	e.or(rdx, rax)
	e.store(true, rax, m(rdi, RecTSCOff))
	e.load([]byte{gs}, true, rax, abs(curOff))
	e.store(true, rax, m(rdi, RecCurrentOff))
	e.lea(rax, m(rsp, frameTop))
	e.store(true, rax, m(rdi, RecRSPOff))
	// The frame: rep movsq from the stack (one instruction for sixteen
	// loads and stores; DF is the guest's until popfq, so cld first).
	e.mov(rcx, rdx)
	e.lea(rdi, m(rdi, RecFrameOff))
	e.mov(rsp, x86asm.RSI)
	e.movImm32(rcx, FrameQwords)
	e.cld()
	e.repMovsq()
	// rep movsq left rdi at the capture count, after the frame.
	e.storeImm(true, m(rdi, 0), 0)
	if kind != 0 {
		e.storeImm(false, m(rdi, RecKindOff-RecNCapOff), kind)
	}
	fill()
	// Publish: the record's stores, rep movsq's included, are ordered
	// before head's (x86 TSO; stores across a string operation are not
	// reordered: Intel SDM vol. 3, "Fast-String Operation and Out-of-Order
	// Stores").
	e.inc(rdx)
	e.store(true, rdx, m(rbx, HeadOff))
	e.storeImm(true, m(rbx, BusyOff), 0)
	e.jmp(labelOut)
	e.bind(labelLostBusy)
	e.storeImm(true, m(rbx, BusyOff), 0)
	e.bind(labelLost)
	e.movabs(rax, l.LostVA(p.Probe))
	e.lockInc(m(rax, 0))
	e.bind(labelOut)
}

// finishStub appends the displaced instructions, the jmp back, and tail
// (the capture subroutines) if any.
func finishStub(e *emitter, p StubParams, insts []x86asm.Inst, tail func()) ([]byte, []int, error) {
	at := 0
	for _, inst := range insts {
		// A nop's effect is nothing: it is not copied (ftrace's 5-byte
		// fentry nop is the common site).
		if inst.Op != x86asm.NOP {
			e.raw(p.Displaced[at : at+inst.Len])
		}
		at += inst.Len
	}
	if err := e.jmpAbs(p.StubAddr, p.ProbeAddr+uint64(at)); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrRefused, err)
	}
	if tail != nil {
		tail()
	}
	code, err := e.finish()
	if err != nil {
		return nil, nil, err
	}
	if err := selfCheck(code, e.insns); err != nil {
		return nil, nil, err
	}
	return code, e.insns, nil
}

// selfCheck decodes the stub back: every instruction must decode at the
// boundary it was emitted at with the length emitted.
func selfCheck(code []byte, starts []int) error {
	for i, at := range starts {
		end := len(code)
		if i+1 < len(starts) {
			end = starts[i+1]
		}
		inst, err := x86dec.Decode(code[at:])
		if err != nil || inst.Len != end-at {
			return fmt.Errorf("stub: generated instruction % x at +%#x does not decode back (%v, length %d)", code[at:end], at, err, inst.Len)
		}
	}
	return nil
}

// Entry is the bytes that replace the probed instruction at probeAddr
// (length bytes long): jmp rel32 to the stub, then int3 over the rest of
// the instruction's bytes, which nothing executes.
func Entry(probeAddr, stubAddr uint64, length int) ([]byte, error) {
	if length < JmpLen || length > MaxRun {
		return nil, refused("a %d-byte instruction cannot hold the %d-byte jmp", length, JmpLen)
	}
	rel, ok := rel32(probeAddr+JmpLen, stubAddr)
	if !ok {
		return nil, refused("stub at %#x is out of jmp rel32 reach of %#x", stubAddr, probeAddr)
	}
	e := newEmitter()
	e.b = append(e.b, 0xe9)
	e.imm32(rel)
	e.b = append(e.b, bytes.Repeat([]byte{0xcc}, length-JmpLen)...)
	return e.b, nil
}
