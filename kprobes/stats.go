package kprobes

import (
	"cmp"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/hvprobe/hvprobe/internal/x86dec"
	"golang.org/x/arch/x86/x86asm"
)

type globalCounters struct {
	hits, skipped, emulated, emulatedBranches, boosted, stepped atomic.Uint64
	reentered, repIterations, faults, lostSteps, raced          atomic.Uint64
	guardSteps                                                  atomic.Uint64
	exits1, exits2, exitsMore, errors                           atomic.Uint64
	returns, orphanReturns, recoveredReturns, reclaimed         atomic.Uint64
	jprobeRestores                                              atomic.Uint64
	steppedOps                                                  sync.Map // mnemonic → *atomic.Uint64
}

// countStepped counts a stepped hit by the instruction's mnemonic.
func (g *globalCounters) countStepped(in *insn) {
	c, ok := g.steppedOps.Load(in.inst.Op)
	if !ok {
		c, _ = g.steppedOps.LoadOrStore(in.inst.Op, new(atomic.Uint64))
	}
	c.(*atomic.Uint64).Add(1)
}

// Stats is a snapshot of the engine's counters.
type Stats struct {
	Probes []ProbeStats // registered probes, by address then kind

	Hits uint64 // int3 hits at armed addresses (trampoline returns excluded)
	// ExitsPerHit: how many hits cost 1 exit (emulated, boosted, or handled
	// by a pre handler that set rip), how many 2 (stepped), and under key 3
	// how many cost more: a rep string instruction stepped costs one exit
	// per iteration (ProbeStats.Exits has the exact sums).
	ExitsPerHit map[int]uint64
	Emulated    uint64 // displaced instruction executed by the host
	// EmulatedBranches: of Emulated, the control transfers (jmp, jcc,
	// loop, call, ret).
	EmulatedBranches uint64
	Boosted          uint64 // ran from a slot with a jmp back, no step
	Stepped          uint64 // single-stepped in a slot
	// SteppedOps counts Stepped by mnemonic ("mov", "cmpxchg"): the
	// instruction classes that still cost two exits or more.
	SteppedOps map[string]uint64
	// RepIterations: iteration traps of rep string instructions stepped in
	// a slot (one exit each, beyond the step's own).
	RepIterations uint64
	Skipped       uint64 // a pre handler returned true
	Reentered     uint64 // hit while the vCPU was mid-step (handlers not run)
	Faults        uint64 // out-of-line instruction faulted; frame redirected
	LostSteps     uint64 // step ended where the engine could not account for
	// GuardSteps: steps whose trap never came, ended by the int3 after
	// the instruction in its slot (PVM after port I/O, docs/QUIRKS.md #47).
	GuardSteps uint64
	// Raced: an int3 removed by Unregister after a vCPU had hit it; the
	// vCPU re-executed the original instruction.
	Raced uint64

	Returns          uint64 // trampoline hits
	OrphanReturns    uint64 // trampoline hits with no record (guest got #BP)
	RecoveredReturns uint64 // trampoline hits resolved from reclaimed records
	Reclaimed        uint64 // kretprobe instances reclaimed as stale

	JprobeRestores uint64 // jprobe handlers whose writes to regs/stack were undone
	Errors         uint64 // errors met on vCPU threads (see Manager.Err)
}

// ProbeStats are one registered probe's counters.
type ProbeStats struct {
	Kind    string // "kprobe", "jprobe" or "kretprobe"
	Name    string // as given: "vfs_read+0x0", or the address and its symbol
	Addr    uint64
	Hits    uint64
	NMissed uint64
	Exits   uint64 // VM exits spent on this probe's hits (and returns)
}

// Stats returns a snapshot of the counters.
func (m *Manager) Stats() Stats {
	g := &m.st
	s := Stats{
		Hits:             g.hits.Load(),
		ExitsPerHit:      map[int]uint64{1: g.exits1.Load(), 2: g.exits2.Load(), 3: g.exitsMore.Load()},
		Emulated:         g.emulated.Load(),
		EmulatedBranches: g.emulatedBranches.Load(),
		Boosted:          g.boosted.Load(),
		Stepped:          g.stepped.Load(),
		RepIterations:    g.repIterations.Load(),
		Skipped:          g.skipped.Load(),
		Reentered:        g.reentered.Load(),
		Faults:           g.faults.Load(),
		LostSteps:        g.lostSteps.Load(),
		GuardSteps:       g.guardSteps.Load(),
		Raced:            g.raced.Load(),
		Returns:          g.returns.Load(),
		OrphanReturns:    g.orphanReturns.Load(),
		RecoveredReturns: g.recoveredReturns.Load(),
		Reclaimed:        g.reclaimed.Load(),
		JprobeRestores:   g.jprobeRestores.Load(),
		Errors:           g.errors.Load(),
		SteppedOps:       map[string]uint64{},
	}
	g.steppedOps.Range(func(op, c any) bool {
		s.SteppedOps[x86dec.Name(op.(x86asm.Op))] = c.(*atomic.Uint64).Load()
		return true
	})
	m.mu.RLock()
	for _, mb := range m.members {
		s.Probes = append(s.Probes, ProbeStats{Kind: mb.kind, Name: mb.name, Addr: mb.site.addr,
			Hits: mb.c.hits.Load(), NMissed: mb.c.nmissed.Load(), Exits: mb.c.exits.Load()})
	}
	m.mu.RUnlock()
	slices.SortFunc(s.Probes, func(a, b ProbeStats) int {
		return cmp.Or(cmp.Compare(a.Addr, b.Addr), cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Name, b.Name))
	})
	return s
}
