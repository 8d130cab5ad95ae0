package kprobes

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"sync"
	"testing"

	"github.com/hvprobe/hvprobe/vmm"
	"golang.org/x/arch/x86/x86asm"
)

// The fake guest: a []byte of guest-physical memory, a few linear VA
// ranges, a symbol table, vCPUs with a register file and a single-step
// flag, and a small interpreter standing in for the CPU.

const (
	textVA    = 0xffffffff81000000
	textGPA   = 0x1000
	textSize  = 0x10000
	dataVA    = 0xffffffff82000000
	dataGPA   = 0x11000
	dataSize  = 0x1000
	stackVA   = 0xffffc90000010000
	stackGPA  = 0x12000
	stackSize = 0x4000
	slotAVA   = 0xffffffffa0000000
	slotAGPA  = 0x16000
	slotASize = 0x4000
	idtVA     = 0xffffffff83000000
	idtGPA    = 0x1a000
	spareGPA  = 0x1b000 // one page no mapping uses yet
	memSize   = 0x1c000

	kernelCS   = 0x10
	sentinel   = 0xffffffff8100f000 // return address of the outermost call; the run ends there
	pfVector   = 14
	unmappedVA = 0xffff888000000000
)

var errOutOfRange = errors.New("fake: out of range")

type fakeMem struct{ b []byte }

func (f *fakeMem) ReadPhys(gpa uint64, p []byte) error {
	if gpa+uint64(len(p)) > uint64(len(f.b)) || gpa+uint64(len(p)) < gpa {
		return fmt.Errorf("reading gpa %#x: %w", gpa, errOutOfRange)
	}
	copy(p, f.b[gpa:])
	return nil
}

func (f *fakeMem) WritePhys(gpa uint64, p []byte) error {
	if gpa+uint64(len(p)) > uint64(len(f.b)) || gpa+uint64(len(p)) < gpa {
		return fmt.Errorf("writing gpa %#x: %w", gpa, errOutOfRange)
	}
	copy(f.b[gpa:], p)
	return nil
}

type mapping struct{ va, gpa, size uint64 }

type sym struct {
	name     string
	va, size uint64
}

type fakeKernel struct {
	mem  *fakeMem
	maps []mapping
	syms []sym
	// onRead, when set, runs before each ReadVirt.
	onRead func(va uint64)
	// reserved, when set, is Reserved; fixups are the addresses with an
	// exception-table entry.
	reserved func(va, n uint64) error
	fixups   map[uint64]bool
	// entries are where exception fixups and jump labels land (Entered).
	entries []uint64
	// entryText, when set, starts .entry.text, which runs to the end of
	// text.
	entryText uint64
	// readOnly pages (by VA) refuse StoreVirt, as a walk without R/W.
	readOnly map[uint64]bool
	// stores logs every StoreVirt, virtWrites counts WriteVirt calls
	// (vCPUs run concurrently in the SMP tests).
	logMu      sync.Mutex
	stores     []hostStore
	virtWrites int
}

// hostStore is one StoreVirt: in the fake, one store of size bytes.
type hostStore struct {
	va   uint64
	size int
}

func (k *fakeKernel) Resolve(name string, off uint64) (uint64, error) {
	for _, s := range k.syms {
		if s.name == name {
			return s.va + off, nil
		}
	}
	return 0, fmt.Errorf("fake: no symbol %q", name)
}

func (k *fakeKernel) SymbolAt(va uint64) (string, uint64, uint64, bool) {
	for _, s := range k.syms {
		if va >= s.va && va < s.va+s.size {
			return s.name, va - s.va, s.size, true
		}
	}
	return "", 0, 0, false
}

func (k *fakeKernel) InText(va uint64) bool { return va >= textVA && va < textVA+textSize }
func (k *fakeKernel) InEntryText(va uint64) bool {
	return k.entryText != 0 && va >= k.entryText && va < textVA+textSize
}

func (k *fakeKernel) Describe(va uint64) string {
	return fmt.Sprintf("outside the fake's functions (%#x)", va)
}

func (k *fakeKernel) Translate(va uint64) (uint64, error) {
	for _, m := range k.maps {
		if va >= m.va && va-m.va < m.size {
			return m.gpa + va - m.va, nil
		}
	}
	return 0, fmt.Errorf("fake: %#x not mapped", va)
}

func (k *fakeKernel) access(va uint64, p []byte, write bool) error {
	for i := range p {
		gpa, err := k.Translate(va + uint64(i))
		if err != nil {
			return err
		}
		if write {
			k.mem.b[gpa] = p[i]
		} else {
			p[i] = k.mem.b[gpa]
		}
	}
	return nil
}

func (k *fakeKernel) ReadVirt(va uint64, p []byte) error {
	if k.onRead != nil {
		k.onRead(va)
	}
	return k.access(va, p, false)
}
func (k *fakeKernel) WriteVirt(va uint64, p []byte) error {
	k.logMu.Lock()
	k.virtWrites++
	k.logMu.Unlock()
	return k.access(va, p, true)
}

// atomicSpan is the RAM behind an AtomicVirt access, as the real
// implementation finds it: one translation, inside one page.
func (k *fakeKernel) atomicSpan(va uint64, size int) ([]byte, error) {
	if size != 1 && size != 2 && size != 4 && size != 8 || va%pageSize+uint64(size) > pageSize {
		return nil, fmt.Errorf("fake: %d-byte atomic access at %#x", size, va)
	}
	gpa, err := k.Translate(va)
	if err != nil {
		return nil, err
	}
	if gpa+uint64(size) > uint64(len(k.mem.b)) {
		return nil, fmt.Errorf("fake: gpa %#x: %w", gpa, errOutOfRange)
	}
	return k.mem.b[gpa : gpa+uint64(size)], nil
}

func (k *fakeKernel) LoadVirt(va uint64, size int) (uint64, error) {
	b, err := k.atomicSpan(va, size)
	if err != nil {
		return 0, err
	}
	var w [8]byte
	copy(w[:], b)
	return binary.LittleEndian.Uint64(w[:]), nil
}

func (k *fakeKernel) StoreVirt(va uint64, size int, v uint64) error {
	b, err := k.atomicSpan(va, size)
	if err != nil {
		return err
	}
	if k.readOnly[va&^(pageSize-1)] {
		return fmt.Errorf("fake: %#x is read-only", va)
	}
	var w [8]byte
	binary.LittleEndian.PutUint64(w[:], v)
	copy(b, w[:size])
	k.logMu.Lock()
	k.stores = append(k.stores, hostStore{va, size})
	k.logMu.Unlock()
	return nil
}

type fakeVM struct {
	mem    *fakeMem
	hook   vmm.DebugHook
	n      int
	pauses int      // WithAllPaused calls (fast_test.go)
	rips   []uint64 // where WithAllPausedAt says the vCPUs stand
}

func (v *fakeVM) Mem() vmm.PhysMem             { return v.mem }
func (v *fakeVM) SetDebugHook(h vmm.DebugHook) { v.hook = h }
func (v *fakeVM) NumCPUs() int                 { return v.n }

type fakeCPU struct {
	id    int
	regs  vmm.Regs
	sregs vmm.Sregs
	ss    bool
}

func (c *fakeCPU) ID() int                     { return c.id }
func (c *fakeCPU) Regs() (vmm.Regs, error)     { return c.regs, nil }
func (c *fakeCPU) SetRegs(r vmm.Regs) error    { c.regs = r; return nil }
func (c *fakeCPU) Sregs() (vmm.Sregs, error)   { return c.sregs, nil }
func (c *fakeCPU) MSR(uint32) (uint64, error)  { return 0, nil }
func (c *fakeCPU) SetSingleStep(on bool) error { c.ss = on; return nil }

type env struct {
	t    *testing.T
	mem  *fakeMem
	k    *fakeKernel
	vm   *fakeVM
	m    *Manager
	cpu  *fakeCPU
	next uint64 // next free text address
	// exits counts debug events delivered to the hook.
	exits int
}

func newEnv(t *testing.T) *env {
	t.Helper()
	mem := &fakeMem{b: make([]byte, memSize)}
	k := &fakeKernel{mem: mem, maps: []mapping{
		{textVA, textGPA, textSize}, {dataVA, dataGPA, dataSize},
		{stackVA, stackGPA, stackSize}, {slotAVA, slotAGPA, slotASize}, {idtVA, idtGPA, 256 * 16},
	}}
	vm := &fakeVM{mem: mem, n: 1}
	e := &env{t: t, mem: mem, k: k, vm: vm, next: textVA + 0x100}
	for i := range textSize {
		mem.b[textGPA+i] = 0x90 // text between functions: nops, never int3
	}
	// A page-fault handler: a nop, drop the error code, iretq.
	pf := e.fn("asm_exc_page_fault", 0x90, 0x48, 0x83, 0xc4, 0x08, 0x48, 0xcf)
	gate := make([]byte, 16)
	binary.LittleEndian.PutUint16(gate[0:], uint16(pf))
	binary.LittleEndian.PutUint16(gate[2:], kernelCS)
	binary.LittleEndian.PutUint16(gate[6:], uint16(pf>>16))
	binary.LittleEndian.PutUint32(gate[8:], uint32(pf>>32))
	copy(mem.b[idtGPA+16*pfVector:], gate)
	m, err := NewManager(vm, k, SlotArea{VA: slotAVA, GPA: slotAGPA, Size: slotASize})
	if err != nil {
		t.Fatal(err)
	}
	if vm.hook != m {
		t.Fatal("NewManager did not install itself as the debug hook")
	}
	e.m = m
	e.cpu = &fakeCPU{}
	e.cpu.sregs.IDT = vmm.DTable{Base: idtVA, Limit: 256*16 - 1}
	e.reset()
	return e
}

// fn places a function's bytes in text and names it.
func (e *env) fn(name string, code ...byte) uint64 {
	va := e.next
	copy(e.mem.b[textGPA+va-textVA:], code)
	e.k.syms = append(e.k.syms, sym{name, va, uint64(len(code))})
	e.next += uint64(len(code)+15) &^ 15
	return va
}

// reset puts the vCPU at the start of a call: RSP just below the top of
// the stack with the sentinel return address, IF set.
func (e *env) reset() {
	e.cpu.regs = vmm.Regs{RSP: stackVA + stackSize - 0x200, RFLAGS: 0x202,
		RAX: 0x1111, RBX: 0x2222, RCX: 0x3333, RDX: 0x4444, RSI: 0x5555, RDI: 0x6666,
		RBP: 0x7777, R8: 0x8888, R12: 0xcccc}
	writeU64(e.k, e.cpu.regs.RSP, sentinel)
}

func readU64(k Kernel, va uint64) uint64 {
	var b [8]byte
	if err := k.ReadVirt(va, b[:]); err != nil {
		panic(err)
	}
	return binary.LittleEndian.Uint64(b[:])
}

func writeU64(k Kernel, va, v uint64) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	if err := k.WriteVirt(va, b[:]); err != nil {
		panic(err)
	}
}

// call runs the function at va from a fresh call until it returns to the
// sentinel.
func (e *env) call(va uint64) {
	e.t.Helper()
	e.cpu.regs.RIP = va
	e.run(sentinel, 10000)
}

// run executes the guest until rip == stop.
func (e *env) run(stop uint64, limit int) {
	e.t.Helper()
	for i := 0; e.cpu.regs.RIP != stop; i++ {
		if i == limit {
			e.t.Fatalf("guest did not reach %#x in %d steps (rip %#x)", stop, limit, e.cpu.regs.RIP)
		}
		e.stepGuest()
	}
}

// stepGuest executes one instruction on the env's vCPU (see exec).
func (e *env) stepGuest() {
	e.t.Helper()
	n, err := e.exec(e.cpu)
	e.exits += n
	if err != nil {
		e.t.Fatal(err)
	}
}

// exec executes one instruction on c as the CPU (and KVM) would: an int3
// becomes a breakpoint event, and with single-step on a step event follows
// the instruction (or the entry of an exception handler). It returns the
// debug events delivered. It touches only c and guest memory, so several
// vCPUs may run it concurrently.
func (e *env) exec(c *fakeCPU) (exits int, err error) {
	var code [15]byte
	if err := e.k.ReadVirt(c.regs.RIP, code[:1]); err != nil {
		return 0, fmt.Errorf("vCPU %d: fetch at %#x: %w", c.id, c.regs.RIP, err)
	}
	if code[0] == opInt3 {
		if !e.m.HandleDebug(c, vmm.DebugEvent{Kind: vmm.DebugBreakpoint, RIP: c.regs.RIP}) {
			return 1, fmt.Errorf("vCPU %d: int3 at %#x not handled: the guest would get #BP", c.id, c.regs.RIP)
		}
		return 1, nil
	}
	for i := 1; i < len(code); i++ {
		if e.k.ReadVirt(c.regs.RIP+uint64(i), code[i:i+1]) != nil {
			break
		}
	}
	stepping := c.ss
	if err := execInsn(e.k, &c.regs, &c.sregs, code[:], stepping); err != nil {
		var pf *pageFault
		if !errors.As(err, &pf) {
			return 0, fmt.Errorf("vCPU %d: at %#x: %w", c.id, c.regs.RIP, err)
		}
		if err := e.deliverPF(c); err != nil {
			return 0, err
		}
	}
	if stepping {
		e.m.HandleDebug(c, vmm.DebugEvent{Kind: vmm.DebugSingleStep, RIP: c.regs.RIP})
		return 1, nil
	}
	return 0, nil
}

// deliverPF enters the page-fault handler on c as the CPU does: the frame
// with the error code, RIP at the faulting instruction, IF and TF cleared.
func (e *env) deliverPF(c *fakeCPU) error {
	r := &c.regs
	frame := []uint64{2, r.RIP, kernelCS, r.RFLAGS | boolFlag(c.ss, vmm.FlagTF), r.RSP, 0x18}
	sp := (r.RSP - uint64(8*len(frame))) &^ 15
	for i, v := range frame {
		writeU64(e.k, sp+uint64(8*i), v)
	}
	r.RSP = sp
	r.RFLAGS &^= vmm.FlagIF | vmm.FlagTF
	var gate [16]byte
	if err := e.k.ReadVirt(idtVA+16*pfVector, gate[:]); err != nil {
		return err
	}
	r.RIP = uint64(binary.LittleEndian.Uint16(gate[0:])) | uint64(binary.LittleEndian.Uint16(gate[6:]))<<16 |
		uint64(binary.LittleEndian.Uint32(gate[8:]))<<32
	return nil
}

func boolFlag(b bool, f uint64) uint64 {
	if b {
		return f
	}
	return 0
}

type pageFault struct{ va uint64 }

func (p *pageFault) Error() string { return fmt.Sprintf("page fault at %#x", p.va) }

// regField is the interpreter's own view of a register: the 64-bit field
// holding it, the bit offset and the width (AH..BH are bits 8-15).
func regField(r *vmm.Regs, a x86asm.Reg) (*uint64, uint, uint) {
	file := [16]*uint64{&r.RAX, &r.RCX, &r.RDX, &r.RBX, &r.RSP, &r.RBP, &r.RSI, &r.RDI,
		&r.R8, &r.R9, &r.R10, &r.R11, &r.R12, &r.R13, &r.R14, &r.R15}
	switch {
	case a >= x86asm.AL && a <= x86asm.BL:
		return file[a-x86asm.AL], 0, 8
	case a >= x86asm.AH && a <= x86asm.BH:
		return file[a-x86asm.AH], 8, 8
	case a >= x86asm.SPB && a <= x86asm.R15B:
		return file[a-x86asm.SPB+4], 0, 8
	case a >= x86asm.AX && a <= x86asm.R15W:
		return file[a-x86asm.AX], 0, 16
	case a >= x86asm.EAX && a <= x86asm.R15L:
		return file[a-x86asm.EAX], 0, 32
	case a >= x86asm.RAX && a <= x86asm.R15:
		return file[a-x86asm.RAX], 0, 64
	}
	panic("interpreter: register " + a.String())
}

func mask(bits uint) uint64 {
	if bits >= 64 {
		return ^uint64(0)
	}
	return 1<<bits - 1
}

func signExtend(v uint64, bits uint) uint64 { return uint64(int64(v<<(64-bits)) >> (64 - bits)) }

// execInsn is the test's CPU: it executes the instruction at the start of
// code on regs, for the instructions the tests use. Flags, conditions and
// string iterations are computed independently of the engine's emulator.
// tf is the trap flag the hardware would have set while single-stepping
// (visible to pushf); sr gives the FS and GS bases. A repeated string instruction does one iteration per
// call and leaves rip on itself until it is done, as the CPU does between
// interruptible iterations (and single-step traps).
func execInsn(k Kernel, r *vmm.Regs, sr *vmm.Sregs, code []byte, tf bool) error {
	inst, ok := decode(code)
	if !ok {
		return fmt.Errorf("interpreter: undecodable % x", code[:4])
	}
	code = code[:inst.Len]
	next := r.RIP + uint64(inst.Len)
	addr := func(m x86asm.Mem) uint64 {
		a := uint64(int64(int32(m.Disp))) // x86asm zero-extends disp32
		switch {
		case m.Base == x86asm.RIP:
			a += next
		case m.Base != 0:
			p, _, _ := regField(r, m.Base)
			a += *p
		}
		if m.Index != 0 {
			p, _, _ := regField(r, m.Index)
			a += *p * uint64(m.Scale)
		}
		switch m.Segment {
		case x86asm.FS:
			a += sr.FS.Base
		case x86asm.GS:
			a += sr.GS.Base
		}
		return a
	}
	memBytes := inst.MemBytes
	if memBytes == 0 {
		memBytes = inst.DataSize / 8
	}
	load := func(va uint64, n int) (uint64, error) {
		var b [8]byte
		if k.ReadVirt(va, b[:n]) != nil {
			return 0, &pageFault{va}
		}
		return binary.LittleEndian.Uint64(b[:]), nil
	}
	store := func(va, v uint64, n int) error {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], v)
		if k.WriteVirt(va, b[:n]) != nil {
			return &pageFault{va}
		}
		return nil
	}
	width := func(a x86asm.Arg) uint {
		if reg, ok := a.(x86asm.Reg); ok {
			_, _, w := regField(r, reg)
			return w
		}
		return uint(memBytes * 8)
	}
	read := func(a x86asm.Arg) (uint64, error) {
		switch a := a.(type) {
		case x86asm.Reg:
			p, sh, w := regField(r, a)
			return *p >> sh & mask(w), nil
		case x86asm.Imm:
			return uint64(int64(a)), nil
		case x86asm.Mem:
			return load(addr(a), memBytes)
		}
		return 0, fmt.Errorf("interpreter: operand %v", a)
	}
	write := func(a x86asm.Arg, v uint64) error {
		switch a := a.(type) {
		case x86asm.Reg:
			p, sh, w := regField(r, a)
			if w == 32 {
				*p = uint64(uint32(v)) // a 32-bit write zero-extends
			} else {
				*p = *p&^(mask(w)<<sh) | (v&mask(w))<<sh
			}
			return nil
		case x86asm.Mem:
			return store(addr(a), v, memBytes)
		}
		return fmt.Errorf("interpreter: operand %v", a)
	}
	// push and pop move DataSize bits: 16 with a 0x66 prefix, else 64.
	stackBytes := 8
	if inst.DataSize == 16 {
		stackBytes = 2
	}
	push := func(v uint64) error {
		if err := store(r.RSP-uint64(stackBytes), v, stackBytes); err != nil {
			return err
		}
		r.RSP -= uint64(stackBytes)
		return nil
	}
	pop := func() (uint64, error) {
		v, err := load(r.RSP, stackBytes)
		if err != nil {
			return 0, err
		}
		r.RSP += uint64(stackBytes)
		return v, nil
	}
	target := func(a x86asm.Arg) (uint64, error) {
		if rel, ok := a.(x86asm.Rel); ok {
			return next + uint64(int64(rel)), nil
		}
		return read(a)
	}
	setFlags := func(f uint64) { r.RFLAGS = r.RFLAGS&^arithFlags | f }
	logic := func(res uint64, bits uint) {
		_, f := refArith(false, res, 0, int(bits/8))
		setFlags(f &^ flagAF)
	}
	args := inst.Args
	switch inst.Op {
	case x86asm.NOP, x86asm.PAUSE:
	case x86asm.OUT: // no devices: the write goes nowhere
	case x86asm.MOV:
		v, err := read(args[1])
		if err != nil {
			return err
		}
		if err := write(args[0], v); err != nil {
			return err
		}
	case x86asm.MOVZX, x86asm.MOVSX, x86asm.MOVSXD:
		v, err := read(args[1])
		if err != nil {
			return err
		}
		if inst.Op != x86asm.MOVZX {
			v = signExtend(v, width(args[1]))
		}
		if err := write(args[0], v); err != nil {
			return err
		}
	case x86asm.LEA:
		m := args[1].(x86asm.Mem)
		m.Segment = 0 // lea takes no segment base
		_ = write(args[0], addr(m))
	case x86asm.ADD, x86asm.SUB, x86asm.CMP:
		a, err := read(args[0])
		if err != nil {
			return err
		}
		b, err := read(args[1])
		if err != nil {
			return err
		}
		res, f := refArith(inst.Op == x86asm.ADD, a, b, int(width(args[0])/8))
		setFlags(f)
		if inst.Op != x86asm.CMP {
			if err := write(args[0], res); err != nil {
				return err
			}
		}
	case x86asm.TEST, x86asm.XOR, x86asm.AND, x86asm.OR:
		a, err := read(args[0])
		if err != nil {
			return err
		}
		b, _ := read(args[1])
		res := a & b
		switch inst.Op {
		case x86asm.XOR:
			res = a ^ b
		case x86asm.OR:
			res = a | b
		}
		logic(res, width(args[0]))
		if inst.Op != x86asm.TEST {
			if err := write(args[0], res); err != nil {
				return err
			}
		}
	case x86asm.INC, x86asm.DEC:
		a, err := read(args[0])
		if err != nil {
			return err
		}
		res, f := refArith(inst.Op == x86asm.INC, a, 1, int(width(args[0])/8))
		setFlags(f&^flagCF | r.RFLAGS&flagCF)
		if err := write(args[0], res); err != nil {
			return err
		}
	case x86asm.XCHG:
		a, err := read(args[0])
		if err != nil {
			return err
		}
		b, _ := read(args[1])
		if err := write(args[0], b); err != nil {
			return err
		}
		_ = write(args[1], a)
	case x86asm.XADD:
		a, err := read(args[0])
		if err != nil {
			return err
		}
		b, _ := read(args[1])
		res, f := refArith(true, a, b, int(width(args[0])/8))
		if err := write(args[0], res); err != nil {
			return err
		}
		setFlags(f)
		_ = write(args[1], a)
	case x86asm.CMPXCHG:
		dst, err := read(args[0])
		if err != nil {
			return err
		}
		w := width(args[0])
		acc := r.RAX & mask(w)
		_, f := refArith(false, acc, dst, int(w/8))
		setFlags(f)
		if acc == dst {
			src, _ := read(args[1])
			if err := write(args[0], src); err != nil {
				return err
			}
		} else {
			p, _, _ := regField(r, x86asm.RAX)
			if w == 32 {
				*p = dst
			} else {
				*p = *p&^mask(w) | dst
			}
		}
	case x86asm.CMOVA, x86asm.CMOVAE, x86asm.CMOVB, x86asm.CMOVBE, x86asm.CMOVE, x86asm.CMOVG, x86asm.CMOVGE, x86asm.CMOVL,
		x86asm.CMOVLE, x86asm.CMOVNE, x86asm.CMOVNO, x86asm.CMOVNP, x86asm.CMOVNS, x86asm.CMOVO, x86asm.CMOVP, x86asm.CMOVS:
		v, err := read(args[1])
		if err != nil {
			return err
		}
		if !refCC(opcodeAfter0F(code)&0xf, r.RFLAGS) {
			v, _ = read(args[0]) // written back: a 32-bit one still zero-extends
		}
		_ = write(args[0], v)
	case x86asm.SETA, x86asm.SETAE, x86asm.SETB, x86asm.SETBE, x86asm.SETE, x86asm.SETG, x86asm.SETGE, x86asm.SETL,
		x86asm.SETLE, x86asm.SETNE, x86asm.SETNO, x86asm.SETNP, x86asm.SETNS, x86asm.SETO, x86asm.SETP, x86asm.SETS:
		if err := write(args[0], boolFlag(refCC(opcodeAfter0F(code)&0xf, r.RFLAGS), 1)); err != nil {
			return err
		}
	case x86asm.PUSH:
		v, err := read(args[0]) // a %rsp-based operand is read before the push
		if err != nil {
			return err
		}
		if err := push(v); err != nil {
			return err
		}
	case x86asm.POP:
		v, err := pop() // a %rsp-based destination is addressed after the pop
		if err != nil {
			return err
		}
		if err := write(args[0], v); err != nil {
			return err
		}
	case x86asm.LEAVE:
		sp := r.RSP
		r.RSP = r.RBP
		v, err := pop()
		if err != nil {
			r.RSP = sp
			return err
		}
		r.RBP = v
	case x86asm.PUSHFQ:
		// The image has RF (bit 16) and VM (bit 17) clear.
		if err := push((r.RFLAGS | boolFlag(tf, vmm.FlagTF)) &^ 0x30000); err != nil {
			return err
		}
	case x86asm.POPFQ:
		v, err := pop()
		if err != nil {
			return err
		}
		// CPL 0: bits 0-21 change but reserved 1, 3, 5, 15, RF (16,
		// cleared) and VM, VIF, VIP (17, 19, 20, kept); bit 1 is set.
		const fixed = 1<<1 | 1<<3 | 1<<5 | 1<<15 | 1<<16 | 1<<17 | 1<<19 | 1<<20
		r.RFLAGS = r.RFLAGS&(1<<17|1<<19|1<<20) | v&(0x3fffff&^fixed) | 2
	case x86asm.CLI:
		r.RFLAGS &^= vmm.FlagIF
	case x86asm.STI:
		r.RFLAGS |= vmm.FlagIF
	case x86asm.CLD:
		r.RFLAGS &^= flagDF
	case x86asm.STD:
		r.RFLAGS |= flagDF
	case x86asm.CALL:
		t, err := target(args[0])
		if err != nil {
			return err
		}
		if err := push(next); err != nil {
			return err
		}
		next = t
	case x86asm.JMP:
		t, err := target(args[0])
		if err != nil {
			return err
		}
		next = t
	case x86asm.RET:
		t, err := pop()
		if err != nil {
			return err
		}
		if imm, ok := args[0].(x86asm.Imm); ok {
			r.RSP += uint64(imm)
		}
		next = t
	case x86asm.IRETQ:
		next, _ = pop()
		pop() // cs
		r.RFLAGS, _ = pop()
		r.RSP, _ = pop()
	case x86asm.MOVSB, x86asm.MOVSW, x86asm.MOVSD, x86asm.MOVSQ,
		x86asm.STOSB, x86asm.STOSW, x86asm.STOSD, x86asm.STOSQ,
		x86asm.LODSB, x86asm.LODSW, x86asm.LODSD, x86asm.LODSQ,
		x86asm.CMPSB, x86asm.CMPSW, x86asm.CMPSD, x86asm.CMPSQ,
		x86asm.SCASB, x86asm.SCASW, x86asm.SCASD, x86asm.SCASQ:
		done, err := stringIter(r, code, inst.DataSize, load, store)
		if err != nil || !done {
			return err // rip stays on the instruction
		}
	default:
		if _, ok := args[0].(x86asm.Rel); !ok {
			return fmt.Errorf("interpreter: %v not implemented", inst.Op)
		}
		taken, err := refCond(code, inst.PCRel, r)
		if err != nil {
			return err
		}
		if taken {
			next, _ = target(args[0])
		}
	}
	r.RIP = next
	return nil
}

// stringIter does one iteration of the string instruction code (opcode
// last, after its prefixes) and reports whether the instruction is done.
func stringIter(r *vmm.Regs, code []byte, dataSize int, load func(uint64, int) (uint64, error), store func(uint64, uint64, int) error) (bool, error) {
	op := code[len(code)-1]
	var rep byte // the last of f2/f3 among the prefixes
	for _, p := range code[:len(code)-1] {
		switch p {
		case 0x67:
			return false, fmt.Errorf("interpreter: 32-bit string addressing")
		case 0xf2, 0xf3:
			rep = p
		}
	}
	if rep != 0 && r.RCX == 0 {
		return true, nil
	}
	n := dataSize / 8
	if op&1 == 0 {
		n = 1
	}
	step := uint64(n)
	if r.RFLAGS&flagDF != 0 {
		step = -step
	}
	bits := uint(8 * n)
	acc := r.RAX & mask(bits)
	compare := false
	switch op &^ 1 {
	case 0xa4: // movs
		v, err := load(r.RSI, n)
		if err != nil {
			return false, err
		}
		if err := store(r.RDI, v, n); err != nil {
			return false, err
		}
		r.RSI += step
		r.RDI += step
	case 0xaa: // stos
		if err := store(r.RDI, acc, n); err != nil {
			return false, err
		}
		r.RDI += step
	case 0xac: // lods
		v, err := load(r.RSI, n)
		if err != nil {
			return false, err
		}
		if n == 4 {
			r.RAX = v
		} else {
			r.RAX = r.RAX&^mask(bits) | v
		}
		r.RSI += step
	case 0xa6: // cmps: [rsi] - [rdi]
		a, err := load(r.RSI, n)
		if err != nil {
			return false, err
		}
		b, err := load(r.RDI, n)
		if err != nil {
			return false, err
		}
		_, f := refArith(false, a, b, n)
		r.RFLAGS = r.RFLAGS&^arithFlags | f
		r.RSI += step
		r.RDI += step
		compare = true
	case 0xae: // scas: acc - [rdi]
		b, err := load(r.RDI, n)
		if err != nil {
			return false, err
		}
		_, f := refArith(false, acc, b, n)
		r.RFLAGS = r.RFLAGS&^arithFlags | f
		r.RDI += step
		compare = true
	default:
		return false, fmt.Errorf("interpreter: string opcode %#x", op)
	}
	if rep == 0 {
		return true, nil
	}
	r.RCX--
	zf := r.RFLAGS&flagZF != 0
	return r.RCX == 0 || compare && (rep == 0xf3) != zf, nil
}

// refCond decides a conditional branch from its opcode's condition code
// (jcc rel8 0x70+cc, rel32 0x0f 0x80+cc; loop* and jrcxz 0xe0-0xe3).
func refCond(code []byte, pcRel int, r *vmm.Regs) (bool, error) {
	n := len(code)
	var op byte
	switch {
	case pcRel == 1 && (code[n-2]&0xf0 == 0x70 || code[n-2] >= 0xe0 && code[n-2] <= 0xe3):
		op = code[n-2]
	case pcRel == 4 && n >= 6 && code[n-6] == 0x0f && code[n-5]&0xf0 == 0x80:
		op = code[n-5] - 0x10
	default:
		return false, fmt.Errorf("interpreter: branch % x not implemented", code)
	}
	f := r.RFLAGS
	zf := f&flagZF != 0
	switch op {
	case 0xe3:
		return r.RCX == 0, nil
	case 0xe0, 0xe1, 0xe2:
		r.RCX--
		return r.RCX != 0 && (op == 0xe2 || zf == (op == 0xe1)), nil
	}
	return refCC(op&0xf, f), nil
}

// refCC evaluates condition code cc (the low nibble of jcc, cmovcc and
// setcc opcodes) on flags f.
func refCC(cc byte, f uint64) bool {
	cf, zf, sf, of, pf := f&flagCF != 0, f&flagZF != 0, f&flagSF != 0, f&flagOF != 0, f&flagPF != 0
	c := [8]bool{of, cf, zf, cf || zf, sf, pf, sf != of, zf || sf != of}[cc>>1]
	return c != (cc&1 == 1)
}

// opcodeAfter0F is the byte after the 0x0f escape, past the prefixes.
func opcodeAfter0F(code []byte) byte {
	i := 0
	for i < len(code) && (bytes.IndexByte([]byte{0x66, 0x67, 0xf2, 0xf3, 0x2e, 0x3e, 0x26, 0x36, 0x64, 0x65, 0xf0}, code[i]) >= 0 || code[i]&0xf0 == 0x40) {
		i++
	}
	return code[i+1]
}

// refArith is the interpreter's own add/sub (computed on sign-extended
// values and nibble sums, not the engine's formulas).
func refArith(add bool, a, b uint64, size int) (uint64, uint64) {
	w := uint(size * 8)
	mask := uint64(1)<<w - 1
	if w == 64 {
		mask = ^uint64(0)
	}
	a, b = a&mask, b&mask
	var res uint64
	var carry bool
	if add {
		res = (a + b) & mask
		_, c := bits.Add64(a, b, 0)
		carry = (w == 64 && c != 0) || (w < 64 && a+b > mask)
	} else {
		res = (a - b) & mask
		carry = a < b
	}
	sx := func(v uint64) int64 { return int64(v<<(64-w)) >> (64 - w) }
	var f uint64
	if carry {
		f |= flagCF
	}
	if res == 0 {
		f |= flagZF
	}
	if sx(res) < 0 {
		f |= flagSF
	}
	if bits.OnesCount64(res&0xff)&1 == 0 {
		f |= flagPF
	}
	var nib int64
	if add {
		nib = int64(a&0xf) + int64(b&0xf)
	} else {
		nib = int64(a&0xf) - int64(b&0xf)
	}
	if nib > 0xf || nib < 0 {
		f |= flagAF
	}
	sa, sb, sr := sx(a), sx(b), sx(res)
	if add && (sa >= 0) == (sb >= 0) && (sr >= 0) != (sa >= 0) {
		f |= flagOF
	}
	if !add && (sa >= 0) != (sb >= 0) && (sr >= 0) != (sa >= 0) {
		f |= flagOF
	}
	return res, f
}

// Reserved and HasFixup: the fake kernel patches nothing unless a test
// says so.
func (k *fakeKernel) Reserved(va, n uint64) error {
	if k.reserved != nil {
		return k.reserved(va, n)
	}
	return nil
}

func (k *fakeKernel) HasFixup(va uint64) bool { return k.fixups[va] }

func (k *fakeKernel) Entered(va, n uint64) bool {
	return slices.ContainsFunc(k.entries, func(t uint64) bool { return t > va && t < va+n })
}
