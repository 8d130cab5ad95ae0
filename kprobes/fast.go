package kprobes

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/arch/x86/x86asm"

	"github.com/hvprobe/hvprobe/internal/x86dec"
	"github.com/hvprobe/hvprobe/stub"
)

// ErrNotFast: a probe cannot take the exit-less path (package stub);
// the reason says why, and the int3 path is the caller's fallback.
var ErrNotFast = errors.New("not exit-less")

// FastProbe is an exit-less probe (issue 14): the probed instruction is
// replaced by a jmp rel32 to a stub in the slot area that records the
// registers into the hitting vCPU's ring in guest memory, with no VM exit,
// then runs the instruction and jumps back. Records reach the host when it
// drains the rings (Manager.DrainFast). Give Symbol (plus Offset) or Addr.
// There are no handlers: what a hit yields is a stub.Record, decoded
// from data the guest can write.
type FastProbe struct {
	Symbol string
	Offset uint64
	Addr   uint64 // resolved address; set by RegisterFast
	// Captures are the guest memory each hit records (fetch args that
	// read memory); they need FastConfig.Data. For a Return probe they
	// are made at the return.
	Captures []stub.Capture
	// Return makes it a return probe (a kretprobe without exits): Symbol
	// or Addr is the function's entry (Offset 0), the jmp goes on its
	// first instruction of 5 bytes or more after an endbr64 and a frame
	// setup, and a record is made at each return (stub.RetEntry).
	// MaxActive is how many calls can be in flight at once: ≤ 0 means
	// max(10, 2·NumCPUs), as for Kretprobe.
	Return    bool
	MaxActive int

	id      uint32
	site    *fastSite
	hits    atomic.Uint64 // records drained
	lost    atomic.Uint64 // the guest's lost counter, as last read
	nmissed atomic.Uint64 // for Return: calls not probed (no free instance), as last read
}

// NMissed is how many calls of a Return probe found no free instance
// (or entered a frame already hooked), as of the last drain.
func (p *FastProbe) NMissed() uint64 { return p.nmissed.Load() }

// Hits is how many records of the probe were drained.
func (p *FastProbe) Hits() uint64 { return p.hits.Load() }

// Lost is how many hits found their ring full (or busy) and were counted
// instead of recorded, as of the last drain: ftrace's lost events.
func (p *FastProbe) Lost() uint64 { return p.lost.Load() }

// Insn is the displaced instruction (set once registered).
func (p *FastProbe) Insn() string {
	if p.site == nil {
		return ""
	}
	return p.site.desc
}

// fastSite is one patched instruction.
type fastSite struct {
	p      *FastProbe
	addr   uint64
	gpas   []physRange // where the instruction's bytes are, page by page
	in     *insn       // the first instruction displaced
	raw    []byte      // every displaced byte: in's, or a run's (fastRun)
	desc   string      // what was displaced, for notices
	entry  []byte      // the jmp and its int3 padding, as written
	stubVA uint64
	// pending: being patched or unpatched (under Manager.mu; the bytes
	// may be either).
	pending bool
}

type physRange struct {
	gpa uint64
	n   int
}

// FastConfig turns exit-less probes on (Manager.EnableFast).
type FastConfig struct {
	// Records per vCPU ring: a power of two. A hit that finds its ring
	// full is counted as lost.
	Records int
	// Probes bounds how many exit-less probes the Manager ever registers:
	// ids are never reused, because a task preempted in a stub may still
	// finish its record after the probe is gone.
	Probes int
	// CPUNumberOff and CurrentOff are the %gs offsets of the kernel's
	// per-CPU cpu_number and current_task.
	CPUNumberOff, CurrentOff uint64
	// DirectMap is the kernel address the guest writes gpa at (its direct
	// map): the stubs store their records there, and read captured
	// memory there.
	DirectMap func(gpa uint64) (uint64, error)
	// Data is each record's room for memory captures (a multiple of 8;
	// 0: probes with Captures are refused). Captures read nothing at or
	// above PhysLimit, the end of guest RAM, and walk five levels of page
	// tables if LA57.
	Data      int
	PhysLimit uint64
	LA57      bool
}

// Pauser is a VM that can run f with every vCPU out of guest mode, so no
// vCPU executes a half-written instruction.
type Pauser interface {
	WithAllPaused(f func() error) error
}

// fastState is the exit-less part of a Manager.
type fastState struct {
	cfg       FastConfig
	layout    stub.Layout
	directMap uint64 // the VA of gpa 0
	// drainMu serializes drains: the drainer holds the host's tails.
	drainMu sync.Mutex
	drainer *stub.Drainer
	// Under Manager.mu:
	sites  map[uint64]*fastSite // by VA
	byID   []*FastProbe         // by id; entries stay after unregistering
	nextID uint32
	// Guest data the drains found wrong (a hostile or buggy guest).
	overrun, invalid atomic.Uint64
}

// EnableFast places the rings of cfg at the start of the free slot area
// and makes RegisterFast available. The rings, like every stub, are never
// reused while the guest lives.
func (m *Manager) EnableFast(cfg FastConfig) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fast != nil {
		return fmt.Errorf("enabling exit-less probes: already enabled")
	}
	if _, ok := m.vm.(Pauser); !ok {
		return fmt.Errorf("enabling exit-less probes: %w: the VM cannot pause its vCPUs", ErrNotFast)
	}
	l := stub.Layout{CPUs: m.vm.NumCPUs(), Records: cfg.Records, Probes: cfg.Probes, Data: cfg.Data}
	if err := l.Check(); err != nil {
		return fmt.Errorf("enabling exit-less probes: %w", err)
	}
	first, ok := m.slots.allocPages(l.Size())
	if !ok {
		return fmt.Errorf("enabling exit-less probes: %w: %d bytes of rings do not fit the slot area", ErrNoSlots, l.Size())
	}
	l.GPA = m.slots.gpa(first)
	va, err := cfg.DirectMap(l.GPA)
	if err == nil {
		var gpa uint64
		if gpa, err = m.k.Translate(va); err == nil && gpa != l.GPA {
			err = fmt.Errorf("%#x maps gpa %#x, not %#x", va, gpa, l.GPA)
		}
	}
	if err != nil {
		return fmt.Errorf("enabling exit-less probes: the rings' kernel address: %w", err)
	}
	l.VA = va
	base, err := cfg.DirectMap(0)
	if err != nil {
		return fmt.Errorf("enabling exit-less probes: the direct map: %w", err)
	}
	d, err := stub.NewDrainer(m.mem, l)
	if err != nil {
		return fmt.Errorf("enabling exit-less probes: %w", err)
	}
	m.fast = &fastState{cfg: cfg, layout: l, directMap: base, drainer: d, sites: map[uint64]*fastSite{}}
	return nil
}

// FastLayout is where the rings are, once EnableFast has run.
func (m *Manager) FastLayout() (stub.Layout, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.fast == nil {
		return stub.Layout{}, false
	}
	return m.fast.layout, true
}

func notFast(name, format string, a ...any) error {
	return probeErr(name, ErrNotFast, format, a...)
}

// RegisterFast checks p's instruction and patches it with the jmp to a new
// stub, every vCPU paused. It refuses (ErrNotFast, or the int3 path's own
// errors such as ErrNotBoundary or ErrNotYetPatched) what the exit-less
// path cannot take: an instruction shorter than the jmp, one that cannot
// run elsewhere unchanged (stub.CheckDisplaced), one with an
// exception-table entry, an address that already has an int3 probe. On
// error nothing has changed.
func (m *Manager) RegisterFast(p *FastProbe) error {
	addr, name, err := m.resolve(p.Symbol, p.Offset, p.Addr)
	if err != nil {
		return err
	}
	s, interior, err := m.placeFast(p, addr, name)
	if err != nil {
		return err
	}
	// The site is listed (so nothing else claims the address) but
	// patched without mu: a vCPU taking an int3 hit needs mu to get
	// there and park.
	if interior == nil {
		err = m.vm.(Pauser).WithAllPaused(func() error { return m.patch(s, s.raw, s.entry) })
	} else {
		err = m.patchRun(s, interior, name)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	s.pending = false
	if err != nil {
		delete(m.fast.sites, s.addr)
		p.site = nil
		m.fast.byID[p.id] = nil
		return fmt.Errorf("registering %s: %w", name, err)
	}
	if m.closed { // UnregisterAll ran meanwhile and could not see it
		return errors.Join(fmt.Errorf("registering %s: %w", name, ErrClosed), m.unregisterFastLocked(p))
	}
	return nil
}

// placeFast checks p at addr, writes its stub and lists its site, still
// pending (unpatched), under mu. It returns the site and, for a run of
// several instructions, the run's interior boundaries.
func (m *Manager) placeFast(p *FastProbe, addr uint64, name string) (*fastSite, []uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f := m.fast
	switch {
	case m.closed:
		return nil, nil, fmt.Errorf("registering %s: %w", name, ErrClosed)
	case f == nil:
		return nil, nil, notFast(name, "exit-less probes are not enabled")
	case p.site != nil:
		return nil, nil, probeErr(name, ErrAlreadyRegistered, "this exit-less probe is already registered")
	case m.byVA[addr] != nil:
		return nil, nil, notFast(name, "an int3 probe is armed at %#x", addr)
	case f.sites[addr] != nil:
		return nil, nil, notFast(name, "another exit-less probe patches %#x", addr)
	case f.nextID >= uint32(f.layout.Probes):
		return nil, nil, notFast(name, "all %d exit-less probe ids are used", f.layout.Probes)
	}
	fn := addr
	in, retOff, err := m.fastInsn(p, &addr, name)
	if err != nil {
		return nil, nil, err
	}
	switch {
	case m.byVA[addr] != nil:
		return nil, nil, notFast(name, "an int3 probe is armed at %#x", addr)
	case m.fastInside(addr) != nil: // a run's interior is a boundary too
		return nil, nil, notFast(name, "another exit-less probe patches %#x", addr)
	}
	if m.k.HasFixup(addr) {
		return nil, nil, notFast(name, "%s has an exception-table entry: a fault must be at its own address", in)
	}
	raw, desc, interior := in.raw, in.String(), []uint64(nil)
	if len(raw) < stub.JmpLen && !p.Return {
		if raw, desc, interior, err = m.fastRun(in, addr, name); err != nil {
			return nil, nil, err
		}
	} else if _, err := stub.CheckDisplaced(raw); err != nil {
		return nil, nil, notFast(name, "%v", err)
	}
	gpas, err := m.physRanges(addr, len(raw))
	if err != nil {
		return nil, nil, fmt.Errorf("registering %s: %w", name, err)
	}
	// f.nextID is taken below, under mu throughout.
	params := stub.StubParams{Layout: f.layout, Probe: f.nextID, CPUNumberOff: f.cfg.CPUNumberOff,
		CurrentOff: f.cfg.CurrentOff, StubAddr: m.slots.va(m.slots.next), ProbeAddr: addr, Displaced: raw,
		Captures: p.Captures, DirectMap: f.directMap, PhysLimit: f.cfg.PhysLimit, LA57: f.cfg.LA57}
	var stubVA uint64
	if p.Return {
		stubVA, err = m.placeReturn(p, params, retOff, name)
	} else {
		stubVA, err = m.placeCode(name, func(va uint64) ([]byte, error) {
			params.StubAddr = va
			return stub.Stub(params)
		})
	}
	if err != nil {
		return nil, nil, err
	}
	entry, err := stub.Entry(addr, stubVA, len(raw))
	if err != nil {
		return nil, nil, notFast(name, "%v", err)
	}
	s := &fastSite{p: p, addr: addr, gpas: gpas, in: in, raw: raw, desc: desc, entry: entry, stubVA: stubVA, pending: true}
	f.sites[addr] = s
	p.Addr, p.site, p.id = fn, s, f.nextID
	p.hits.Store(0)
	p.lost.Store(0)
	p.nmissed.Store(0)
	f.byID = append(f.byID, p) // the id is taken even if patching fails
	f.nextID++
	return s, interior, nil
}

// fastRun is the run of instructions from first (at addr, shorter than
// the jmp) that the jmp displaces, as Linux's optprobes do: each one
// must run unchanged elsewhere, and nothing may enter the run past its
// first byte. The function is decoded whole and refused if a branch in
// it targets the run or it has an indirect jmp (a jump table's targets
// are unknown); the kernel's tables may not land there (Entered). Where
// vCPUs and interrupted tasks stand is checked at the patch (patchRun).
// It returns the bytes, their description and the interior boundaries.
func (m *Manager) fastRun(first *insn, addr uint64, name string) ([]byte, string, []uint64, error) {
	sym, off, size, ok := m.k.SymbolAt(addr)
	if !ok || size == 0 {
		return nil, "", nil, notFast(name, "no symbol bounds %#x: the function cannot be decoded whole", addr)
	}
	fn, end := addr-off, addr-off+size
	raw, desc := bytes.Clone(first.raw), []string{first.String()}
	var interior []uint64
	for next := addr + uint64(len(raw)); len(raw) < stub.JmpLen; next = addr + uint64(len(raw)) {
		if next >= end {
			return nil, "", nil, notFast(name, "%s ends %d bytes after %#x, before the %d bytes of the jmp", sym, end-addr, addr, stub.JmpLen)
		}
		in, _, _, err := check(m.k, m.readText, next, name)
		if err != nil {
			return nil, "", nil, notFast(name, "the jmp would displace the instruction at %#x too: %v", next, err)
		}
		if m.k.HasFixup(next) || m.byVA[next] != nil || m.fastInside(next) != nil {
			return nil, "", nil, notFast(name, "the jmp would displace %s at %#x, which has an exception-table entry or a probe", in, next)
		}
		interior = append(interior, next)
		raw = append(raw, in.raw...)
		desc = append(desc, in.String())
	}
	if _, err := stub.CheckRun(raw); err != nil {
		return nil, "", nil, notFast(name, "%v", err)
	}
	text, err := m.readText(fn, int(size))
	if err != nil {
		return nil, "", nil, notFast(name, "reading %s: %v", sym, err)
	}
	runEnd := addr + uint64(len(raw))
	for pos := 0; pos < len(text); {
		inst, err := x86dec.Decode(text[pos:])
		if err != nil {
			return nil, "", nil, notFast(name, "%s+%#x does not decode (% x): its branches cannot all be seen", sym, pos, text[pos:min(pos+4, len(text))])
		}
		at := fn + uint64(pos)
		pos += inst.Len
		if inst.Op == x86asm.JMP {
			if _, rel := inst.Args[0].(x86asm.Rel); !rel {
				return nil, "", nil, notFast(name, "%s has an indirect jmp at %#x (a jump table?): its targets cannot be known", sym, at)
			}
		}
		rel, ok := inst.Args[0].(x86asm.Rel)
		if !ok {
			continue
		}
		target := at + uint64(inst.Len) + uint64(int64(rel))
		if target > addr && target < runEnd {
			return nil, "", nil, notFast(name, "%s at %#x branches into the run of %s, at %#x", x86dec.Syntax(inst), at, strings.Join(desc, "; "), target)
		}
		if t, _, _, ok := m.k.SymbolAt(target); ok && inst.Op == x86asm.JMP && strings.HasPrefix(t, "__x86_indirect_") {
			return nil, "", nil, notFast(name, "%s jumps through %s at %#x (a jump table?): its targets cannot be known", sym, t, at)
		}
	}
	if m.k.Entered(addr, uint64(len(raw))) {
		return nil, "", nil, notFast(name, "an exception fixup or a jump label lands inside the run of %s", strings.Join(desc, "; "))
	}
	return raw, strings.Join(desc, "; "), interior, nil
}

// PauserAt is a Pauser that also tells where every vCPU will resume
// (vmm.VM.WithAllPausedAt); a run of several instructions is patched
// only with it.
type PauserAt interface {
	WithAllPausedAt(f func(rips []uint64) error) error
}

// patchRun patches a run with every vCPU paused, if none of them, and no
// interrupted task, is inside it: a vCPU's rip at an interior boundary,
// or that address anywhere in guest RAM as an aligned qword (the iret
// frame of a task interrupted or preempted there) refuses the patch. A
// stale qword on some stack refuses it too: the check errs on the safe
// side. It runs without mu, as patch does for RegisterFast.
func (m *Manager) patchRun(s *fastSite, interior []uint64, name string) error {
	pa, ok := m.vm.(PauserAt)
	limit := m.fast.cfg.PhysLimit
	if !ok || limit == 0 {
		return notFast(name, "the VM cannot tell where its vCPUs stand, or guest RAM's end is unknown: a run of instructions is not patched")
	}
	return pa.WithAllPausedAt(func(rips []uint64) error {
		for cpu, rip := range rips {
			if slices.Contains(interior, rip) {
				return notFast(name, "vCPU %d is inside the run, at %#x", cpu, rip)
			}
		}
		if gpa, found := m.scanRAM(limit, interior); found {
			return notFast(name, "guest RAM holds an address inside the run at gpa %#x (a task interrupted there?)", gpa)
		}
		return m.patch(s, s.raw, s.entry)
	})
}

// scanRAM looks for any of vals as an aligned qword in guest RAM below
// limit.
func (m *Manager) scanRAM(limit uint64, vals []uint64) (uint64, bool) {
	const chunk = 1 << 20
	buf := make([]byte, chunk)
	for base := uint64(0); base < limit; base += chunk {
		b := buf[:min(chunk, limit-base)]
		if err := m.mem.ReadPhys(base, b); err != nil {
			continue // a hole: nothing of the guest's is there
		}
		for i := 0; i+8 <= len(b); i += 8 {
			if slices.Contains(vals, binary.LittleEndian.Uint64(b[i:])) {
				return base + uint64(i), true
			}
		}
	}
	return 0, false
}

// fastInsn is the instruction the jmp replaces, at *addr: the probed
// one, or for a Return probe the function's first of 5 bytes or more,
// after which the return address is retOff bytes above %rsp.
func (m *Manager) fastInsn(p *FastProbe, addr *uint64, name string) (*insn, int32, error) {
	in, _, _, err := check(m.k, m.readText, *addr, name)
	if err != nil || !p.Return {
		return in, 0, err
	}
	if err := checkEntry(m.k, *addr, name); err != nil {
		return nil, 0, err
	}
	if p.Offset != 0 {
		return nil, 0, probeErr(name, ErrBadProbe, "a return probe goes on the function's entry, not at offset %#x", p.Offset)
	}
	retOff := int32(0)
	// What may come first: endbr64, then push %rbp; mov %rsp,%rbp.
	for _, pre := range [][]byte{{0xf3, 0x0f, 0x1e, 0xfa}, {0x55}, {0x48, 0x89, 0xe5}} {
		if len(in.raw) >= stub.JmpLen || !bytes.Equal(in.raw, pre) {
			continue
		}
		if pre[0] == 0x55 {
			retOff += 8
		}
		*addr += uint64(len(in.raw))
		if in, _, _, err = check(m.k, m.readText, *addr, name); err != nil {
			return nil, 0, err
		}
	}
	if len(in.raw) < stub.JmpLen {
		return nil, 0, notFast(name, "%s at %#x is %d bytes, shorter than the %d-byte jmp, before the function has its 5 bytes", in, *addr, len(in.raw), stub.JmpLen)
	}
	return in, retOff, nil
}

// placeCode writes code made for the address it runs at into a new run
// of slots and returns that address. Code's length must not depend on
// where it runs: it is made once to size the run, then at its place. The
// slots stay used whatever happens: nothing goes there before the
// entry's jmp is written, but a run is never given back.
func (m *Manager) placeCode(name string, gen func(va uint64) ([]byte, error)) (uint64, error) {
	code, err := gen(m.slots.va(m.slots.next))
	if err != nil {
		return 0, notFast(name, "%v", err)
	}
	first, ok := m.slots.allocRun((uint64(len(code)) + slotSize - 1) / slotSize)
	if !ok {
		return 0, probeErr(name, ErrNoSlots, "slot area (%d slots) exhausted", m.slots.n)
	}
	va := m.slots.va(first)
	if code, err = gen(va); err != nil {
		return 0, notFast(name, "%v", err)
	}
	if err := m.mem.WritePhys(m.slots.gpa(first), code); err != nil {
		return 0, fmt.Errorf("registering %s: writing exit-less code: %w", name, err)
	}
	return va, nil
}

// placeReturn writes a Return probe's instance pool (zeroed, written by
// the guest through the direct map), trampoline and entry stub, and
// returns the entry stub's address.
func (m *Manager) placeReturn(p *FastProbe, params stub.StubParams, retOff int32, name string) (uint64, error) {
	f := m.fast
	n := p.MaxActive
	if n <= 0 {
		n = max(10, 2*m.vm.NumCPUs())
	}
	rp := stub.RetParams{StubParams: params, RetOff: retOff, MaxActive: n}
	if _, err := stub.RetEntry(rp); err != nil { // refuse before taking slots
		return 0, notFast(name, "%v", err)
	}
	size := uint64(n * stub.InstanceSize)
	first, ok := m.slots.allocPages(size)
	if !ok {
		return 0, probeErr(name, ErrNoSlots, "slot area (%d slots) exhausted", m.slots.n)
	}
	if err := m.mem.WritePhys(m.slots.gpa(first), make([]byte, size)); err != nil {
		return 0, fmt.Errorf("registering %s: clearing the instance pool: %w", name, err)
	}
	va, err := f.cfg.DirectMap(m.slots.gpa(first))
	if err != nil {
		return 0, fmt.Errorf("registering %s: the instance pool's kernel address: %w", name, err)
	}
	rp.Pool = va
	if rp.Trampoline, err = m.placeCode(name, func(va uint64) ([]byte, error) {
		rp.Trampoline = va
		return stub.RetTrampoline(rp)
	}); err != nil {
		return 0, err
	}
	return m.placeCode(name, func(va uint64) ([]byte, error) {
		rp.StubAddr = va
		return stub.RetEntry(rp)
	})
}

// physRanges is where [va, va+n) is in guest RAM, page by page.
func (m *Manager) physRanges(va uint64, n int) ([]physRange, error) {
	var out []physRange
	for n > 0 {
		gpa, err := m.k.Translate(va)
		if err != nil {
			return nil, fmt.Errorf("translating %#x: %w", va, err)
		}
		k := min(n, int(pageSize-va%pageSize))
		out = append(out, physRange{gpa, k})
		va, n = va+uint64(k), n-k
	}
	return out, nil
}

func (s *fastSite) read(m *Manager) ([]byte, error) {
	var b []byte
	for _, r := range s.gpas {
		part := make([]byte, r.n)
		if err := m.mem.ReadPhys(r.gpa, part); err != nil {
			return nil, fmt.Errorf("reading gpa %#x: %w", r.gpa, err)
		}
		b = append(b, part...)
	}
	return b, nil
}

// patch replaces want with to at s, if the guest still holds want there.
// Callers pause every vCPU.
func (m *Manager) patch(s *fastSite, want, to []byte) error {
	cur, err := s.read(m)
	if err != nil {
		return err
	}
	if !bytes.Equal(cur, want) {
		return &FastTextError{Addr: s.addr, Want: want, Found: cur}
	}
	for _, r := range s.gpas {
		if err := m.mem.WritePhys(r.gpa, to[:r.n]); err != nil {
			return fmt.Errorf("writing gpa %#x: %w", r.gpa, err)
		}
		to = to[r.n:]
	}
	return nil
}

// FastTextError: the bytes at an exit-less probe are not what hvprobe
// expected (the guest rewrote them); they are left as found.
type FastTextError struct {
	Addr        uint64
	Want, Found []byte
}

func (e *FastTextError) Error() string {
	return fmt.Sprintf("exit-less probe at %#x: the guest's bytes are % x, not % x; left as the guest wrote them", e.Addr, e.Found, e.Want)
}

// Is matches ErrTextModified.
func (e *FastTextError) Is(target error) bool { return target == ErrTextModified }

// UnregisterFast puts the original instruction back, every vCPU paused.
// Its stub stays (a task may be inside it); records it still writes are
// drained and counted for p. A *FastTextError means p is unregistered but
// the guest had rewritten the jmp, which was left as it was.
func (m *Manager) UnregisterFast(p *FastProbe) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.unregisterFastLocked(p)
}

func (m *Manager) unregisterFastLocked(p *FastProbe) error {
	if m.fast == nil || p.site == nil || m.fast.sites[p.site.addr] != p.site || p.site.pending {
		return fmt.Errorf("unregistering exit-less probe at %#x: %w", p.Addr, ErrNotRegistered)
	}
	s := p.site
	s.pending = true
	m.mu.Unlock() // as in RegisterFast
	err := m.vm.(Pauser).WithAllPaused(func() error { return m.patch(s, s.entry, s.raw) })
	m.mu.Lock()
	delete(m.fast.sites, s.addr)
	p.site = nil
	if err != nil {
		return fmt.Errorf("unregistering exit-less probe %s: %w", inputName(p.Symbol, p.Offset, p.Addr), err)
	}
	return nil
}

// FastDrain is what one DrainFast found.
type FastDrain struct {
	Records int
	// Overrun and Invalid are records the guest's ring data made
	// unreadable or implausible (see stub.Drain): zero unless guest
	// code wrote the rings.
	Overrun uint64
	Invalid int
}

// DrainFast reads every vCPU's ring, in ring order per vCPU, and gives
// each record to f with its probe; the probes' Lost counts are updated.
// It runs beside the guest (no exit, no pause). f must not call into the
// Manager.
func (m *Manager) DrainFast(f func(*FastProbe, stub.Record)) (FastDrain, error) {
	m.mu.RLock()
	st := m.fast
	var byID []*FastProbe
	if st != nil {
		byID = slices.Clone(st.byID)
	}
	m.mu.RUnlock()
	var out FastDrain
	if st == nil {
		return out, nil
	}
	st.drainMu.Lock()
	defer st.drainMu.Unlock()
	var errs []error
	var recs []stub.Record
	for cpu := range st.layout.CPUs {
		res, err := st.drainer.Drain(cpu, recs[:0])
		errs = append(errs, err)
		out.Overrun += res.Overrun
		out.Invalid += res.Invalid
		for _, r := range res.Records {
			if int(r.Probe) >= len(byID) || byID[r.Probe] == nil {
				out.Invalid++ // an id no stub was ever given
				continue
			}
			p := byID[r.Probe]
			p.hits.Add(1)
			out.Records++
			f(p, r)
		}
		recs = res.Records
	}
	lost, err := st.drainer.Lost()
	errs = append(errs, err)
	missed, merr := st.drainer.Counts() // a Return probe's calls missed
	errs = append(errs, merr)
	for id, p := range byID {
		if err == nil && p != nil {
			p.lost.Store(lost[id])
		}
		if merr == nil && p != nil && p.Return {
			p.nmissed.Store(missed[id])
		}
	}
	st.overrun.Add(out.Overrun)
	st.invalid.Add(uint64(out.Invalid))
	return out, errors.Join(errs...)
}

// fastOriginal puts the original bytes of the exit-less sites into b, read
// at va (readText's view of the text). Callers hold mu.
func (m *Manager) fastOriginal(va uint64, b []byte) {
	if m.fast == nil {
		return
	}
	for _, s := range m.fast.sites {
		for i, c := range s.raw {
			if a := s.addr + uint64(i); a >= va && a-va < uint64(len(b)) {
				b[a-va] = c
			}
		}
	}
}

// fastInside is the exit-less site whose patched bytes hold va, if any.
// Callers hold mu.
func (m *Manager) fastInside(va uint64) *fastSite {
	if m.fast == nil {
		return nil
	}
	for _, s := range m.fast.sites {
		if va >= s.addr && va-s.addr < uint64(len(s.entry)) {
			return s
		}
	}
	return nil
}

// recheckFast retires the exit-less sites on written pages whose jmp the
// guest replaced. Callers hold mu.
func (m *Manager) recheckFast(written map[uint64]bool) []TextChange {
	if m.fast == nil {
		return nil
	}
	var out []TextChange
	for _, s := range m.fast.sites {
		on := false
		for _, r := range s.gpas {
			on = on || written[r.gpa&^(pageSize-1)]
		}
		if !on || s.pending {
			continue
		}
		cur, err := s.read(m)
		if err != nil || bytes.Equal(cur, s.entry) {
			continue
		}
		delete(m.fast.sites, s.addr)
		s.p.site = nil
		name := inputName(s.p.Symbol, s.p.Offset, s.p.Addr)
		out = append(out, TextChange{Addr: s.addr, Probes: []string{name}, Owners: []any{s.p}, Old: s.desc,
			New: fmt.Sprintf("% x", cur), Err: &FastTextError{Addr: s.addr, Want: s.entry, Found: cur}})
	}
	slices.SortFunc(out, func(a, b TextChange) int { return cmp.Compare(a.Addr, b.Addr) })
	return out
}
