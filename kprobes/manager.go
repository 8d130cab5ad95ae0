package kprobes

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/hvprobe/hvprobe/vmm"
)

// Kprobe is a probe on one kernel instruction. Give either Symbol (plus
// Offset) or Addr. Handlers run on the host, on the thread of the vCPU that
// hit the probe; several vCPUs may run the same handler concurrently.
//
// What a handler's register writes (through Context.Regs) do:
//   - PreHandler returning false: the writes stand, as with the seeds'
//     pt_regs (later handlers at the same address see them, and the probed
//     instruction executes with them) — except RIP, which the engine sets to
//     execute the probed instruction.
//   - PreHandler returning true: the handler has set the vCPU up itself
//     ("I changed rip, skip the single-step"): the registers, RIP included,
//     are written back as they are, the probed instruction is not executed
//     and no other handler at the address runs.
//   - PostHandler: sees the state after the instruction, with the
//     out-of-line fixups already applied (RIP as if it had executed in
//     place); its writes, RIP included, stand.
//   - FaultHandler: sees the registers of the hit; writes are ignored (the
//     guest is already in its exception handler).
//
// A Kprobe must not be copied or modified while registered.
type Kprobe struct {
	Symbol string
	Offset uint64
	Addr   uint64 // resolved address; set by Register when Symbol is used

	PreHandler func(*Context) bool
	// PostHandler runs after the probed instruction. Its presence forces
	// emulation or a single-step: the instruction is never boosted.
	PostHandler func(*Context)
	// FaultHandler runs when the out-of-line instruction faulted: the guest
	// has entered its exception handler, which the engine has redirected to
	// see the fault at the probe's own address (so exception-table fixups
	// work and the instruction re-executes there, hitting the probe again).
	// Returning true stops the other probes' FaultHandlers at this address;
	// the guest's handler runs either way.
	FaultHandler func(*Context, Fault) bool

	c counters
}

// Hits is how often the probe's address was hit while it was registered.
func (p *Kprobe) Hits() uint64 { return p.c.hits.Load() }

// NMissed counts hits whose handlers were not run because the vCPU was
// already in the middle of a probe hit (re-entry).
func (p *Kprobe) NMissed() uint64 { return p.c.nmissed.Load() }

// Fault describes an exception raised by an instruction executing out of
// line.
type Fault struct {
	Addr uint64 // the probe's address (where the guest now sees the fault)
	// Vector is the exception vector, found by matching the guest's handler
	// entry against its IDT; -1 when it matches no gate.
	Vector       int
	ErrorCode    uint64
	HasErrorCode bool
	HandlerRIP   uint64 // where the guest's exception handler starts
}

type counters struct {
	hits, nmissed, exits atomic.Uint64
}

// member is one registered probe at a site: a kprobe, a jprobe or a
// kretprobe's entry hook, seen uniformly.
type member struct {
	kind  string
	owner any // the *Kprobe, *Jprobe or *Kretprobe
	name  string
	pre   func(*Context) bool
	post  func(*Context)
	fault func(*Context, Fault) bool
	c     *counters
	site  *site
}

// site is one armed address. Several members share it (aggregate probe).
type site struct {
	addr, gpa uint64
	sym       string
	off       uint64
	orig      byte // the byte the int3 replaced
	in        *insn
	slot      uint64 // slot index
	slotVA    uint64
	// members is copy-on-write under Manager.mu, read lock-free by hits.
	members atomic.Pointer[[]*member]
	// inflight counts hits between lookup and the end of their use of the
	// slot (the step), so an unregistered site's slot is freed only after.
	inflight    atomic.Int32
	everBoosted atomic.Bool
	garbage     atomic.Bool // unregistered; free the slot when inflight drops to 0
	freed       bool        // under Manager.mu
}

// Manager owns every probe of one guest: the armed int3 sites, the slot
// area, the per-vCPU hit state and the kretprobe instances. It is the VM's
// vmm.DebugHook.
type Manager struct {
	vm  VM
	mem vmm.PhysMem
	k   Kernel

	mu      sync.RWMutex
	closed  bool
	sites   map[uint64]*site // by GPA: the int3 bookkeeping
	byVA    map[uint64]*site // by VA: the hit path's lookup
	members map[any]*member  // by registered probe value
	slots   slotAlloc
	cpus    []*cpuState

	tramp   uint64 // kretprobe trampoline VA (an int3 in slot 0)
	retMu   sync.Mutex
	rets    retTable
	st      globalCounters
	errMu   sync.Mutex
	lastErr error
	fast    *fastState // exit-less probes, once EnableFast has run
}

// NewManager prepares the engine over slots and installs it as vm's debug
// hook. Slot 0 becomes the kretprobe trampoline.
func NewManager(vm VM, k Kernel, slots SlotArea) (*Manager, error) {
	if slots.Size < 2*slotSize || slots.VA%16 != 0 {
		return nil, fmt.Errorf("creating probe manager: slot area %#x+%#x: need at least %d bytes, 16-byte aligned", slots.VA, slots.Size, 2*slotSize)
	}
	m := &Manager{
		vm:      vm,
		mem:     vm.Mem(),
		k:       k,
		sites:   make(map[uint64]*site),
		byVA:    make(map[uint64]*site),
		members: make(map[any]*member),
		slots:   newSlotAlloc(slots),
		rets:    newRetTable(),
	}
	for i := 0; i < vm.NumCPUs(); i++ {
		m.cpus = append(m.cpus, &cpuState{})
	}
	ts, _ := m.slots.alloc()
	m.tramp = m.slots.va(ts)
	img := make([]byte, slotSize)
	for i := range img {
		img[i] = opInt3
	}
	if err := m.mem.WritePhys(m.slots.gpa(ts), img); err != nil {
		return nil, fmt.Errorf("creating probe manager: writing the kretprobe trampoline: %w", err)
	}
	vm.SetDebugHook(m)
	return m, nil
}

// TrampolineVA is the address kretprobes write over return addresses; a
// stack trace showing it should be resolved with RealReturnAddress.
func (m *Manager) TrampolineVA() uint64 { return m.tramp }

func (p *Kprobe) member() *member {
	return &member{kind: "kprobe", owner: p, pre: p.PreHandler, post: p.PostHandler, fault: p.FaultHandler, c: &p.c}
}

// Register resolves and arms p; p.Addr is set to the resolved address. On
// error nothing has changed.
func (m *Manager) Register(p *Kprobe) error {
	addr, name, err := m.resolve(p.Symbol, p.Offset, p.Addr)
	if err != nil {
		return err
	}
	mb := p.member()
	mb.name = name
	// Addr is set before the int3 goes in, so handlers may read it.
	prev := p.Addr
	p.Addr = addr
	if err := m.add(mb, addr); err != nil {
		p.Addr = prev
		return err
	}
	return nil
}

// Unregister disarms p (the int3 goes when the last probe at its address
// goes). It is safe while p is being hit: a vCPU mid-step keeps its slot
// until the step is over. A *TextModifiedError means p is unregistered but
// the guest had rewritten the probed byte, which was left as it was.
func (m *Manager) Unregister(p *Kprobe) error {
	return m.remove(p)
}

// inputName renders a probe's input for error messages.
func inputName(sym string, off, addr uint64) string {
	if sym != "" {
		return fmt.Sprintf("%s+%#x", sym, off)
	}
	return fmt.Sprintf("%#x", addr)
}

// resolve turns a probe's Symbol+Offset or Addr into an address, with the
// name errors and stats use.
func (m *Manager) resolve(sym string, off, addr uint64) (uint64, string, error) {
	in := inputName(sym, off, addr)
	switch {
	case sym == "" && addr == 0:
		return 0, "", probeErr(in, ErrBadProbe, "no Symbol and no Addr")
	case sym != "":
		va, err := m.k.Resolve(sym, off)
		if err != nil {
			return 0, "", fmt.Errorf("resolving %s: %w", in, err)
		}
		// Addr may be set from an earlier registration of the same probe.
		if addr != 0 && addr != va {
			return 0, "", probeErr(in, ErrBadProbe, "Symbol resolves to %#x but Addr is %#x", va, addr)
		}
		return va, in, nil
	}
	if s, o, _, ok := m.k.SymbolAt(addr); ok {
		in = fmt.Sprintf("%#x (%s+%#x)", addr, s, o)
	}
	return addr, in, nil
}

// add registers mb at addr, arming a new site when addr has none.
func (m *Manager) add(mb *member, addr uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.closed:
		return fmt.Errorf("registering %s: %w", mb.name, ErrClosed)
	case m.members[mb.owner] != nil:
		return probeErr(mb.name, ErrAlreadyRegistered, "this %s is already registered", mb.kind)
	}
	s := m.byVA[addr]
	if s == nil {
		var err error
		if s, err = m.arm(addr, mb.name); err != nil {
			return err
		}
		s.members.Store(&[]*member{})
		m.sites[s.gpa] = s
		m.byVA[s.addr] = s
	}
	mb.site = s
	ms := append(slices.Clone(*s.members.Load()), mb)
	s.members.Store(&ms)
	m.members[mb.owner] = mb
	return nil
}

// arm checks addr, prepares its slot and writes the int3. Callers hold mu.
func (m *Manager) arm(addr uint64, name string) (*site, error) {
	if f := m.fastInside(addr); f != nil {
		return nil, probeErr(name, ErrBadProbe, "%#x is inside the jmp of the exit-less probe at %#x", addr, f.addr)
	}
	in, sym, off, err := check(m.k, m.readText, addr, name)
	if err != nil {
		return nil, err
	}
	gpa, err := m.k.Translate(addr)
	if err != nil {
		return nil, fmt.Errorf("registering %s: translating %#x: %w", name, addr, err)
	}
	var orig [1]byte
	if err := m.mem.ReadPhys(gpa, orig[:]); err != nil {
		return nil, fmt.Errorf("registering %s: reading gpa %#x: %w", name, gpa, err)
	}
	if orig[0] != in.raw[0] {
		return nil, fmt.Errorf("registering %s: gpa %#x holds %#02x, the kernel VA shows %#02x: %w", name, gpa, orig[0], in.raw[0], ErrTextModified)
	}
	s := &site{addr: addr, gpa: gpa, sym: sym, off: off, orig: orig[0], in: in}
	// Every site gets a slot, emulated ones too: emulation falls back to
	// it when it cannot complete (a push to an unmapped stack), and a
	// re-entered hit may step it.
	idx, ok := m.slots.alloc()
	if !ok {
		return nil, probeErr(name, ErrNoSlots, "slot area (%d slots) exhausted", m.slots.n)
	}
	s.slot, s.slotVA = idx, m.slots.va(idx)
	img, r := in.slotImage(addr, s.slotVA, in.boostable)
	if r != nil {
		m.slots.release(idx)
		return nil, probeErr(name, r.kind, "%s", r.reason)
	}
	if err := m.mem.WritePhys(m.slots.gpa(idx), img); err != nil {
		m.slots.release(idx)
		return nil, fmt.Errorf("registering %s: writing slot: %w", name, err)
	}
	// The slot is complete before the int3 can send a vCPU to it.
	if err := m.mem.WritePhys(gpa, []byte{opInt3}); err != nil {
		m.slots.release(s.slot)
		return nil, fmt.Errorf("registering %s: writing int3 at gpa %#x: %w", name, gpa, err)
	}
	return s, nil
}

// readText reads kernel text as the guest kernel wrote it: the bytes of
// hvprobe's own armed int3s and exit-less jmps are replaced by the
// originals. Callers hold mu.
func (m *Manager) readText(va uint64, n int) ([]byte, error) {
	b, err := readKernelText(m.k, va, n)
	if err != nil {
		return nil, err
	}
	for a, s := range m.byVA {
		if a >= va && a-va < uint64(len(b)) {
			b[a-va] = s.orig
		}
	}
	m.fastOriginal(va, b)
	return b, nil
}

// remove unregisters the probe value owner.
func (m *Manager) remove(owner any) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	mb := m.members[owner]
	if mb == nil {
		return fmt.Errorf("unregistering %T: %w", owner, ErrNotRegistered)
	}
	return m.removeLocked(mb)
}

func (m *Manager) removeLocked(mb *member) error {
	delete(m.members, mb.owner)
	s := mb.site
	ms := slices.DeleteFunc(slices.Clone(*s.members.Load()), func(x *member) bool { return x == mb })
	s.members.Store(&ms)
	if len(ms) > 0 {
		return nil
	}
	delete(m.sites, s.gpa)
	delete(m.byVA, s.addr)
	err := m.disarm(s)
	s.garbage.Store(true)
	if s.inflight.Load() == 0 {
		m.freeSlotLocked(s)
	}
	if err != nil {
		return fmt.Errorf("unregistering %s: %w", mb.name, err)
	}
	return nil
}

// disarm puts the original byte back, unless the guest replaced the int3.
func (m *Manager) disarm(s *site) error {
	var cur [1]byte
	if err := m.mem.ReadPhys(s.gpa, cur[:]); err != nil {
		return fmt.Errorf("reading gpa %#x: %w", s.gpa, err)
	}
	if cur[0] != opInt3 {
		return &TextModifiedError{Addr: s.addr, GPA: s.gpa, Original: s.orig, Found: cur[0]}
	}
	if err := m.mem.WritePhys(s.gpa, []byte{s.orig}); err != nil {
		return fmt.Errorf("restoring gpa %#x: %w", s.gpa, err)
	}
	return nil
}

// freeSlotLocked releases an unregistered site's slot once. Boosted slots
// stay quarantined (see slotAlloc).
func (m *Manager) freeSlotLocked(s *site) {
	if s.freed {
		return
	}
	s.freed = true
	if !s.everBoosted.Load() {
		m.slots.release(s.slot)
	}
}

// release ends one hit's use of s.
func (m *Manager) release(s *site) {
	if s.inflight.Add(-1) == 0 && s.garbage.Load() {
		m.mu.Lock()
		if s.inflight.Load() == 0 {
			m.freeSlotLocked(s)
		}
		m.mu.Unlock()
	}
}

// UnregisterAll removes every probe. The debug hook stays installed: steps
// in flight and kretprobe instances still outstanding complete through it
// (silently). Remove the hook only once the guest is stopped for good.
// Registering afterwards fails with ErrClosed.
func (m *Manager) UnregisterAll() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	var errs []error
	for _, mb := range m.members {
		if rp, ok := mb.owner.(*Kretprobe); ok {
			m.orphanInstances(rp)
		}
		if err := m.removeLocked(mb); err != nil {
			errs = append(errs, err)
		}
	}
	if m.fast != nil {
		var list []*FastProbe
		for _, s := range m.fast.sites {
			if !s.pending {
				list = append(list, s.p)
			}
		}
		for _, p := range list { // each unlocks mu to pause the vCPUs
			errs = append(errs, m.unregisterFastLocked(p))
		}
	}
	return errors.Join(errs...)
}

// noteErr records an error met on a vCPU thread, where there is no caller
// to return it to.
func (m *Manager) noteErr(err error) {
	m.st.errors.Add(1)
	m.errMu.Lock()
	m.lastErr = err
	m.errMu.Unlock()
}

// Err returns the last error met while handling a debug event (a register
// or guest-memory access that failed on a vCPU thread), or nil.
func (m *Manager) Err() error {
	m.errMu.Lock()
	defer m.errMu.Unlock()
	return m.lastErr
}
