package stub

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/arch/x86/x86asm"
)

// Exit-less return probes: an entry stub at the function's first
// instruction of 5 bytes or more hooks the return as a kretprobe does,
// by replacing the return address on the stack with the trampoline's; the
// trampoline records the return into the ring and returns to the real
// return address. Neither exits.
//
// Calls in flight are instances in a pool in guest memory (MaxActive of
// them, InstanceSize bytes each), claimed and released with lock
// cmpxchg, so any vCPU may return a call another entered:
//
//	+0  state u64: 0 free, 3 being filled (entry), 1 armed, 2 returning
//	+8  slot  u64: the stack address of the return address
//	+16 ret   u64: the real return address
//	+24 tsc   u64: rdtsc at entry
//	+32 task  u64: current at entry
//	+40 rdi rsi rdx rcx r8 r9 at entry (u64 each)
//
// The entry stub, with everything saved and interrupts off:
//
//	slot = %rsp at the site + RetOff; ret = *slot
//	ret == trampoline? -> missed (a tail call into a hooked frame)
//	every armed instance at slot: 1 -> 0 (its frame is dead: a new call
//	                                      pushed its return address there)
//	claim a free instance (0 -> 3), else missed (count[probe] += 1)
//	fill it; *slot = trampoline; state = 1
//
// The trampoline, reached by the function's ret (%rsp = slot + 8):
//
//	lea -8(%rsp),%rsp (flags untouched); save everything
//	find the armed instance at slot and claim it (1 -> 2); none: ud2,
//	  where the int3 path's orphan return gives the guest its #BP
//	*slot = ret; record a KindReturn record: RetData, then the captures
//	state = 0; restore; ret (to the real return address)
//
// A frame abandoned without returning (its task exited inside the
// function) keeps its instance until a call pushes a return address at
// the same slot; until then the pool is one instance smaller.

// Record kinds (RecKindOff).
const (
	KindHit    = 0
	KindReturn = 1
)

// Instance layout.
const (
	InstanceSize = 96
	instState    = 0
	instSlot     = 8
	instRet      = 16
	instTSC      = 24
	instArgs     = 40
	// RetDataSize is the bytes of a return record's data before its
	// captures: instance bytes 16..88 (ret, tsc, task, args).
	RetDataSize = instArgs + 48 - instRet
)

const (
	stateFree      = 0
	stateArmed     = 1
	stateReturning = 2
	stateFilling   = 3
)

// argRegs are SysV's argument registers, in order.
var argRegs = []x86asm.Reg{x86asm.RDI, x86asm.RSI, x86asm.RDX, x86asm.RCX, x86asm.R8, x86asm.R9}

// RetParams describe one exit-less return probe. StubParams gives the
// entry site (StubAddr is the entry stub's address) and the captures
// made at the return; the probe's hit counter (Layout.CountVA) counts
// the calls missed.
type RetParams struct {
	StubParams
	// RetOff is where the return address is, from %rsp at the site: 0 at
	// the function's first instruction, 8 after a push %rbp.
	RetOff int32
	// Trampoline is the address the trampoline runs at, Pool the
	// address of MaxActive zeroed instances.
	Trampoline uint64
	Pool       uint64
	MaxActive  int
}

// MaxActiveLimit bounds RetParams.MaxActive.
const MaxActiveLimit = 4096

func (p RetParams) check() (cpuOff, curOff int32, inst x86asm.Inst, err error) {
	l := p.Layout
	switch {
	case l.Check() != nil:
		return 0, 0, inst, fmt.Errorf("%w: %v", ErrRefused, l.Check())
	case p.Probe >= uint32(l.Probes):
		return 0, 0, inst, refused("probe id %d: the layout has %d lost counters", p.Probe, l.Probes)
	case p.MaxActive <= 0 || p.MaxActive > MaxActiveLimit:
		return 0, 0, inst, refused("maxactive %d: want 1 to %d", p.MaxActive, MaxActiveLimit)
	case p.RetOff < 0 || p.RetOff > 64 || p.RetOff%8 != 0:
		return 0, 0, inst, refused("return address at %d(%%rsp)", p.RetOff)
	case p.CountOnly:
		return 0, 0, inst, refused("a return probe records")
	}
	if n := RetDataSize + DataSize(p.Captures); n > l.Data {
		return 0, 0, inst, refused("a return record needs %d bytes of data; a record holds %d", n, l.Data)
	}
	if cpuOff, err = simm32(p.CPUNumberOff, "cpu_number offset"); err != nil {
		return
	}
	if curOff, err = simm32(p.CurrentOff, "current_task offset"); err != nil {
		return
	}
	if inst, err = CheckDisplaced(p.Displaced); err != nil {
		return
	}
	q := p.StubParams
	q.Layout.Data -= RetDataSize
	err = checkCaptures(q)
	return
}

// RetEntry generates the entry stub of an exit-less return probe: it
// runs at p.StubAddr, and the site's jmp (Entry) goes there.
func RetEntry(p RetParams) ([]byte, error) {
	_, curOff, inst, err := p.check()
	if err != nil {
		return nil, err
	}
	const gs = 0x65
	var (
		rax, rbx, rcx, rdx, rsi = x86asm.RAX, x86asm.RBX, x86asm.RCX, x86asm.RDX, x86asm.RSI
		rsp, r8, r9, r10        = x86asm.RSP, x86asm.R8, x86asm.R9, x86asm.R10
		e                       = newEmitter()
	)
	e.saveAll()
	e.lea(r10, m(rsp, frameBytes+p.RetOff)) // slot
	e.load(nil, true, r8, m(r10, 0))        // ret
	e.movabs(r9, p.Trampoline)
	e.cmp(r9, r8)
	e.jcc(ccE, "missed")
	// Dead frames at this slot.
	e.poolScan(p, rbx, stateArmed, "kill", func() {
		e.movImm32(rax, stateArmed)
		e.movImm32(rsi, stateFree)
		e.lockCmpxchg(rsi, m(rbx, instState))
	})
	// A free instance.
	e.movabs(rbx, p.Pool)
	e.movImm32(rcx, int32(p.MaxActive))
	e.bind("claim")
	e.movImm32(rax, stateFree)
	e.movImm32(rsi, stateFilling)
	e.lockCmpxchg(rsi, m(rbx, instState))
	e.jcc(ccE, "claimed")
	e.aluImm(true, 0, r(rbx), InstanceSize)
	e.dec32(rcx)
	e.jcc(ccNE, "claim")
	e.bind("missed")
	e.movabs(rax, p.Layout.CountVA(p.Probe))
	e.lockInc(m(rax, 0))
	e.jmp(labelOut)
	e.bind("claimed")
	e.store(true, r10, m(rbx, instSlot))
	e.store(true, r8, m(rbx, instRet))
	e.rdtsc()
	e.shl(rdx, 32)
	e.or(rdx, rax)
	e.store(true, rax, m(rbx, instTSC))
	e.load([]byte{gs}, true, rax, abs(curOff))
	e.store(true, rax, m(rbx, instTSC+8))
	for i, reg := range argRegs {
		e.load(nil, true, rax, m(rsp, frameSlot(reg)))
		e.store(true, rax, m(rbx, int32(instArgs+8*i)))
	}
	e.store(true, r9, m(r10, 0)) // the return goes to the trampoline
	// Armed after its fields (x86 TSO).
	e.storeImm(true, m(rbx, instState), stateArmed)
	e.bind(labelOut)
	e.restoreAll()
	code, _, err := finishStub(e, p.StubParams, []x86asm.Inst{inst}, nil)
	return code, err
}

// RetTrampoline generates the trampoline of an exit-less return probe,
// to run at p.Trampoline.
func RetTrampoline(p RetParams) ([]byte, error) {
	cpuOff, curOff, _, err := p.check()
	if err != nil {
		return nil, err
	}
	var (
		rax, rcx, rdi, rsi, rsp = x86asm.RAX, x86asm.RCX, x86asm.RDI, x86asm.RSI, x86asm.RSP
		r10, r15                = x86asm.R10, x86asm.R15
		e                       = newEmitter()
	)
	// The slot the ret popped becomes the word the final ret pops.
	e.lea(rsp, m(rsp, -8))
	e.saveAll()
	const top = frameBytes + 8 // to %rsp as the function's ret left it
	e.lea(r10, m(rsp, frameBytes))
	e.poolScan(p, r15, stateArmed, "find", func() {
		e.movImm32(rax, stateArmed)
		e.movImm32(rsi, stateReturning)
		e.lockCmpxchg(rsi, m(r15, instState))
		e.jcc(ccE, "found")
	})
	e.ud2()
	e.bind("found")
	e.load(nil, true, rax, m(r15, instRet))
	e.store(true, rax, m(rsp, frameBytes))
	var tail func()
	record(e, p.StubParams, cpuOff, curOff, top, KindReturn, func() {
		// RetData: the instance from ret on, then the captures.
		e.lea(rdi, m(rdi, RecDataOff-RecNCapOff))
		e.lea(rsi, m(r15, instRet))
		e.movImm32(rcx, RetDataSize/8)
		e.repMovsq()
		e.lea(rdi, m(rdi, -RecDataOff-RetDataSize+RecNCapOff))
		tail = captures(e, p.StubParams, RecDataOff+RetDataSize, top)
	})
	// The record is written (or lost): free the instance, found again by
	// its slot (every register is clobbered; only this CPU returns
	// through this slot, so one instance is returning there).
	e.lea(r10, m(rsp, frameBytes))
	e.poolScan(p, r15, stateReturning, "free", func() {
		e.storeImm(true, m(r15, instState), stateFree)
		e.jmp("freed")
	})
	e.bind("freed")
	e.restoreAll()
	e.ret()
	if tail != nil {
		tail()
	}
	code, err := e.finish()
	if err != nil {
		return nil, err
	}
	if err := selfCheck(code, e.insns); err != nil {
		return nil, err
	}
	return code, nil
}

// poolScan emits a walk of the pool (in, counted down in rcx) that runs
// match on each instance in state state whose slot is r10; the loop is
// labelled label, and match may leave it.
func (e *emitter) poolScan(p RetParams, in x86asm.Reg, state int32, label string, match func()) {
	next := label + "_next"
	e.movabs(in, p.Pool)
	e.movImm32(x86asm.RCX, int32(p.MaxActive))
	e.bind(label)
	e.aluImm(true, 7, m(in, instState), state)
	e.jcc(ccNE, next)
	e.cmpMem(x86asm.R10, m(in, instSlot))
	e.jcc(ccNE, next)
	match()
	e.bind(next)
	e.aluImm(true, 0, r(in), InstanceSize)
	e.dec32(x86asm.RCX)
	e.jcc(ccNE, label)
}

// RetData is what a return record says of its call.
type RetData struct {
	Ret      uint64    // the real return address
	EntryTSC uint64    // rdtsc at entry
	Task     uint64    // current at entry
	Args     [6]uint64 // rdi rsi rdx rcx r8 r9 at entry
}

// Return decodes r's RetData, if r is a return record.
func (r Record) Return() (RetData, bool) {
	if r.Kind != KindReturn || len(r.Data) < RetDataSize {
		return RetData{}, false
	}
	le := binary.LittleEndian
	d := RetData{Ret: le.Uint64(r.Data), EntryTSC: le.Uint64(r.Data[8:]), Task: le.Uint64(r.Data[16:])}
	for i := range d.Args {
		d.Args[i] = le.Uint64(r.Data[24+8*i:])
	}
	return d, true
}
