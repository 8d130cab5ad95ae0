package kprobes

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/hvprobe/hvprobe/vmm"
)

// Kretprobe probes a function's returns. On entry the return address on
// the stack is replaced with the trampoline (an int3 in hvprobe's slot
// area shared by all kretprobes); when the function returns there, Handler
// runs and the vCPU continues at the real return address.
//
// Consequences, as in the seeds: while a probed call is active its frame's
// return address reads as the trampoline, so __builtin_return_address(0)
// and stack unwinders inside the guest see TrampolineVA instead of the
// caller; hvprobe's own stack traces should pass such values through
// Manager.RealReturnAddress.
//
// A Kretprobe must not be copied or modified while registered.
type Kretprobe struct {
	Symbol string
	Addr   uint64 // the function's entry; set by RegisterKretprobe
	// Handler runs at each return. Writes to the registers stand, except
	// RIP, which the engine sets to the real return address.
	Handler func(*RetContext)
	// EntryHandler, when set, runs at entry once an instance is taken;
	// returning true skips this call (no return probe, not counted as
	// missed). It may set RetContext.Data for Handler.
	EntryHandler func(*RetContext) bool
	// MaxActive is how many calls can be probed at once (recursion, other
	// vCPUs, sleeping tasks). ≤ 0 means max(10, 2·NumCPUs).
	MaxActive int

	c      counters
	sym    string
	addr   uint64
	active int         // instances allocated
	free   []*instance // under Manager.retMu
	used   map[*instance]struct{}
}

// NMissed counts calls whose return was not probed: no free instance, or
// an entry hit while the vCPU was inside another probe hit.
func (rp *Kretprobe) NMissed() uint64 { return rp.c.nmissed.Load() }

// Hits counts entries of the probed function.
func (rp *Kretprobe) Hits() uint64 { return rp.c.hits.Load() }

// RetContext is what a kretprobe's handlers see. At a return, the embedded
// Context's Addr and Symbol name the probed function and its Time is the
// return's.
type RetContext struct {
	*Context
	ReturnAddress uint64 // the real return address
	EntryTime     time.Time
	Duration      time.Duration // return time minus EntryTime; zero at entry
	Data          any           // set by EntryHandler, seen by Handler
}

// RetVal is the function's return value (%rax).
func (r *RetContext) RetVal() uint64 { return r.Regs().RAX }

// instance is one probed call in flight (the seeds' kretprobe_instance).
type instance struct {
	rp    *Kretprobe // nil once rp is unregistered: complete silently
	ret   uint64     // the return address the trampoline replaced
	slot  uint64     // stack address holding the return address (rsp at entry)
	entry time.Time
	data  any
	live  bool // in retTable.live: armed, its slot is meaningful
}

// graveyardCap bounds the remembered return addresses of reclaimed
// instances.
const graveyardCap = 4096

// retTable tracks probed calls in flight, under Manager.retMu. Instances
// are keyed by their stack slot: kernel stacks are distinct kernel VAs, so
// the slot identifies the frame without CR3 or the task; several
// instances share a slot when several kretprobes hook the same call.
type retTable struct {
	live map[uint64][]*instance
	// graveyard keeps the real return address of instances reclaimed as
	// stale, in case the frame was alive after all (another return hook,
	// such as ftrace's graph tracer, had replaced our trampoline address
	// and later returns into it).
	graveyard  map[uint64]uint64
	graveOrder []uint64
}

func newRetTable() retTable {
	return retTable{live: make(map[uint64][]*instance), graveyard: make(map[uint64]uint64)}
}

func (t *retTable) bury(slot, ret uint64) {
	if _, ok := t.graveyard[slot]; !ok {
		t.graveOrder = append(t.graveOrder, slot)
	}
	t.graveyard[slot] = ret
	for len(t.graveOrder) > graveyardCap {
		delete(t.graveyard, t.graveOrder[0])
		t.graveOrder = t.graveOrder[1:]
	}
}

// RegisterKretprobe arms rp at its function's entry (offset 0 only). On
// error nothing has changed.
func (m *Manager) RegisterKretprobe(rp *Kretprobe) error {
	addr, name, err := m.resolve(rp.Symbol, 0, rp.Addr)
	if err != nil {
		return err
	}
	if err := checkEntry(m.k, addr, name); err != nil {
		return err
	}
	n := rp.MaxActive
	if n <= 0 {
		n = max(10, 2*m.vm.NumCPUs())
	}
	m.retMu.Lock()
	if rp.used != nil {
		m.retMu.Unlock()
		return probeErr(name, ErrAlreadyRegistered, "this kretprobe is already registered")
	}
	rp.active, rp.free, rp.used = n, make([]*instance, n), make(map[*instance]struct{})
	for i := range rp.free {
		rp.free[i] = &instance{}
	}
	m.retMu.Unlock()
	sym, _, _, _ := m.k.SymbolAt(addr)
	rp.sym, rp.addr = sym, addr
	mb := &member{kind: "kretprobe", owner: rp, name: name, c: &rp.c,
		pre: func(ctx *Context) bool { return m.kretEntry(rp, ctx) }}
	prev := rp.Addr
	rp.Addr = addr
	if err := m.add(mb, addr); err != nil {
		rp.Addr = prev
		m.retMu.Lock()
		rp.free, rp.used = nil, nil
		m.retMu.Unlock()
		return err
	}
	return nil
}

// UnregisterKretprobe removes rp. Calls still in flight return through the
// trampoline (which lives as long as the Manager) and are completed
// silently: the real return address is restored, Handler is not called.
func (m *Manager) UnregisterKretprobe(rp *Kretprobe) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	mb := m.members[rp]
	if mb == nil {
		return fmt.Errorf("unregistering kretprobe %s: %w", inputName(rp.Symbol, 0, rp.Addr), ErrNotRegistered)
	}
	m.orphanInstances(rp)
	return m.removeLocked(mb)
}

// orphanInstances detaches rp's calls in flight. Callers hold mu.
func (m *Manager) orphanInstances(rp *Kretprobe) {
	m.retMu.Lock()
	defer m.retMu.Unlock()
	for in := range rp.used {
		in.rp = nil
	}
	rp.free, rp.used = nil, nil
}

// take returns a free instance of rp, or nil. Callers hold retMu.
func (rp *Kretprobe) take() *instance {
	n := len(rp.free)
	if n == 0 {
		return nil
	}
	in := rp.free[n-1]
	rp.free = rp.free[:n-1]
	rp.used[in] = struct{}{}
	in.rp = rp
	return in
}

// put recycles in. Callers hold retMu.
func (m *Manager) put(in *instance) {
	rp := in.rp
	*in = instance{}
	if rp != nil && rp.used != nil {
		delete(rp.used, in)
		rp.free = append(rp.free, in)
	}
}

// unlink removes in from the live table. Callers hold retMu.
func (m *Manager) unlink(in *instance) {
	l := m.rets.live[in.slot]
	for i, x := range l {
		if x == in {
			l = append(l[:i:i], l[i+1:]...)
			break
		}
	}
	if len(l) == 0 {
		delete(m.rets.live, in.slot)
	} else {
		m.rets.live[in.slot] = l
	}
}

// reclaimStale frees rp's instances whose frame is gone: their stack slot
// no longer holds the trampoline address (the task exited or the stack was
// unwound without returning). Callers hold retMu.
func (m *Manager) reclaimStale(rp *Kretprobe) {
	var b [8]byte
	for in := range rp.used {
		if !in.live {
			continue // being armed, or its return completed, by another vCPU
		}
		if m.k.ReadVirt(in.slot, b[:]) == nil && binary.LittleEndian.Uint64(b[:]) == m.tramp {
			continue
		}
		m.unlink(in)
		if in.ret != m.tramp {
			m.rets.bury(in.slot, in.ret)
		}
		m.put(in)
		m.st.reclaimed.Add(1)
	}
}

// kretEntry is a kretprobe's pre handler (the seeds' arch_prepare_kretprobe).
func (m *Manager) kretEntry(rp *Kretprobe, ctx *Context) bool {
	slot := ctx.regs.RSP
	var b [8]byte
	if err := m.k.ReadVirt(slot, b[:]); err != nil {
		rp.c.nmissed.Add(1)
		m.noteErr(fmt.Errorf("kretprobe %s: reading return address at %#x: %w", rp.sym, slot, err))
		return false
	}
	ret := binary.LittleEndian.Uint64(b[:])
	m.retMu.Lock()
	if ret != m.tramp {
		// A new frame at this slot: whatever was recorded here is dead.
		for _, in := range m.rets.live[slot] {
			m.put(in)
		}
		delete(m.rets.live, slot)
		delete(m.rets.graveyard, slot)
	}
	var in *instance
	if rp.used != nil {
		if in = rp.take(); in == nil {
			m.reclaimStale(rp)
			in = rp.take()
		}
	}
	m.retMu.Unlock()
	if in == nil {
		rp.c.nmissed.Add(1)
		return false
	}
	rc := &RetContext{Context: ctx, ReturnAddress: ret, EntryTime: ctx.Time}
	if rp.EntryHandler != nil && rp.EntryHandler(rc) {
		m.retMu.Lock()
		m.put(in)
		m.retMu.Unlock()
		return false
	}
	binary.LittleEndian.PutUint64(b[:], m.tramp)
	if err := m.k.WriteVirt(slot, b[:]); err != nil {
		m.retMu.Lock()
		m.put(in)
		m.retMu.Unlock()
		rp.c.nmissed.Add(1)
		m.noteErr(fmt.Errorf("kretprobe %s: writing trampoline at %#x: %w", rp.sym, slot, err))
		return false
	}
	m.retMu.Lock()
	// in.rp is nil if rp was unregistered meanwhile: complete silently.
	*in = instance{rp: in.rp, ret: ret, slot: slot, entry: ctx.Time, data: rc.Data, live: true}
	m.rets.live[slot] = append(m.rets.live[slot], in)
	m.retMu.Unlock()
	return false
}

// onReturn handles the trampoline's int3: a probed function returned (its
// ret popped the trampoline address, so the frame's slot is RSP-8).
func (m *Manager) onReturn(cpu vmm.CPU, now time.Time) bool {
	regs, err := cpu.Regs()
	if err != nil {
		m.noteErr(fmt.Errorf("kretprobe return on vCPU %d: reading registers: %w", cpu.ID(), err))
		return true
	}
	slot := regs.RSP - 8
	m.retMu.Lock()
	list := m.rets.live[slot]
	delete(m.rets.live, slot)
	var real uint64
	for _, in := range list {
		if in.ret != m.tramp {
			real = in.ret
			break
		}
	}
	if real == 0 {
		real = m.rets.graveyard[slot]
	}
	delete(m.rets.graveyard, slot)
	type done struct {
		rp *Kretprobe
		in instance
	}
	calls := make([]done, len(list))
	for i, in := range list {
		// Still this call's until put below, though its slot may already
		// have been overwritten: reclaimStale must leave it alone.
		in.live = false
		calls[i] = done{in.rp, *in}
	}
	m.retMu.Unlock()

	m.st.returns.Add(1)
	if real == 0 {
		// No record of this frame: the engine cannot know where to go.
		// This needs a return address hvprobe never saw (a guest restored
		// from a snapshot with returns outstanding under another Manager)
		// or one the guest rewrote on a live frame. The guest gets its #BP.
		m.st.orphanReturns.Add(1)
		m.noteErr(fmt.Errorf("kretprobe trampoline hit on vCPU %d with no instance for stack slot %#x", cpu.ID(), slot))
		m.retMu.Lock()
		for _, in := range list {
			m.put(in)
		}
		m.retMu.Unlock()
		return false
	}
	if len(list) == 0 {
		m.st.recoveredReturns.Add(1)
	}
	// Most recent first, as the seeds walk their instance list.
	for i := len(calls) - 1; i >= 0; i-- {
		c := calls[i]
		if c.rp == nil {
			continue
		}
		c.rp.c.exits.Add(1)
		if c.rp.Handler != nil {
			ctx := &Context{CPU: cpu.ID(), Addr: c.rp.addr, Symbol: c.rp.sym, Time: now, regs: &regs, k: m.k, cpu: cpu}
			c.rp.Handler(&RetContext{Context: ctx, ReturnAddress: real, EntryTime: c.in.entry,
				Duration: now.Sub(c.in.entry), Data: c.in.data})
		}
	}
	regs.RIP = real
	m.setRegs(cpu, &regs)
	m.retMu.Lock()
	for _, in := range list {
		m.put(in)
	}
	m.retMu.Unlock()
	return true
}

// RealReturnAddress undoes the trampoline for stack walkers: va is a
// return address read from stack address slot; if it is the trampoline,
// the real return address of that frame is returned, else va.
func (m *Manager) RealReturnAddress(slot, va uint64) uint64 {
	if va != m.tramp {
		return va
	}
	m.retMu.Lock()
	defer m.retMu.Unlock()
	for _, in := range m.rets.live[slot] {
		if in.ret != m.tramp {
			return in.ret
		}
	}
	if ret, ok := m.rets.graveyard[slot]; ok {
		return ret
	}
	return va
}
