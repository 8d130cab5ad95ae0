package kprobes

import (
	"cmp"
	"fmt"
	"slices"
)

// TextChange is what the engine did about a guest write to the bytes of
// an armed probe's instruction.
type TextChange struct {
	Addr     uint64
	Probes   []string // the probes at Addr, by name
	Owners   []any    // and as registered (*Kprobe, *Jprobe, *Kretprobe)
	Old, New string   // the instruction before and after the write
	// Rearmed: the probes stay registered on the new instruction.
	// Otherwise they were unregistered and Err says why.
	Rearmed bool
	Err     error
}

// Recheck looks again at every armed site on the guest-physical pages the
// guest has written (from the VMM's dirty log). A site whose bytes the
// guest changed gets its instruction decoded anew: re-armed on it (a new
// slot; the old one is kept for vCPUs still in it), or, if the new
// instruction cannot be probed, retired with its probes. So a stale copy
// of an instruction never runs in a slot nor goes back into the text, and
// no probe stops firing without a TextChange saying so.
func (m *Manager) Recheck(pages []uint64) []TextChange {
	written := make(map[uint64]bool, len(pages))
	for _, p := range pages {
		written[p&^(pageSize-1)] = true
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []TextChange
	for _, s := range m.sitesOn(written) {
		if c, changed := m.recheck(s); changed {
			out = append(out, c)
		}
	}
	return append(out, m.recheckFast(written)...)
}

// sitesOn lists the sites with a byte on a written page, in address order.
func (m *Manager) sitesOn(written map[uint64]bool) []*site {
	var list []*site
	for _, s := range m.sites {
		end := s.gpa + uint64(len(s.in.raw)) - 1
		if written[s.gpa&^(pageSize-1)] || written[end&^(pageSize-1)] {
			list = append(list, s)
		}
	}
	slices.SortFunc(list, func(a, b *site) int { return cmp.Compare(a.addr, b.addr) })
	return list
}

// recheck compares s's bytes with what was armed. Callers hold mu.
func (m *Manager) recheck(s *site) (TextChange, bool) {
	var first [1]byte
	if err := m.mem.ReadPhys(s.gpa, first[:]); err != nil {
		return TextChange{}, false
	}
	cur, err := m.readText(s.addr, len(s.in.raw))
	if err != nil {
		return TextChange{}, false
	}
	orig := s.orig
	if first[0] != opInt3 {
		orig = first[0] // the guest wrote over the int3
	}
	cur[0] = orig
	if first[0] == opInt3 && slices.Equal(cur, s.in.raw) {
		return TextChange{}, false
	}
	c := TextChange{Addr: s.addr, Old: s.in.String()}
	for _, mb := range *s.members.Load() {
		c.Probes = append(c.Probes, mb.name)
		c.Owners = append(c.Owners, mb.owner)
	}
	read := func(va uint64, n int) ([]byte, error) {
		b, err := m.readText(va, n)
		if err == nil && s.addr >= va && s.addr-va < uint64(len(b)) {
			b[s.addr-va] = orig
		}
		return b, err
	}
	name := fmt.Sprintf("%#x (%s+%#x)", s.addr, s.sym, s.off)
	in, _, _, err := check(m.k, read, s.addr, name)
	if err == nil {
		c.New = in.String()
		err = m.rearm(s, in, orig, first[0] != opInt3)
	}
	if err == nil {
		c.Rearmed = true
		return c, true
	}
	c.Err = err
	// Retire: the guest's byte stays, or the original goes back under our
	// int3 (disarm writes s.orig only where the int3 still is).
	s.orig = orig
	for _, mb := range *s.members.Load() {
		if rp, ok := mb.owner.(*Kretprobe); ok {
			m.orphanInstances(rp)
		}
		m.removeLocked(mb) // a TextModifiedError here is the expected case
	}
	return c, true
}

// rearm moves s's members to a new site for instruction in, whose first
// byte is orig; the int3 is written again when the guest removed it.
// Callers hold mu.
func (m *Manager) rearm(s *site, in *insn, orig byte, writeInt3 bool) error {
	idx, ok := m.slots.alloc()
	if !ok {
		return probeErr(fmt.Sprintf("%#x", s.addr), ErrNoSlots, "slot area (%d slots) exhausted", m.slots.n)
	}
	ns := &site{addr: s.addr, gpa: s.gpa, sym: s.sym, off: s.off, orig: orig, in: in, slot: idx, slotVA: m.slots.va(idx)}
	img, r := in.slotImage(ns.addr, ns.slotVA, in.boostable)
	if r != nil {
		m.slots.release(idx)
		return probeErr(fmt.Sprintf("%#x", s.addr), r.kind, "%s", r.reason)
	}
	if err := m.mem.WritePhys(m.slots.gpa(idx), img); err != nil {
		m.slots.release(idx)
		return fmt.Errorf("writing slot: %w", err)
	}
	members := *s.members.Load()
	for _, mb := range members {
		mb.site = ns
	}
	ns.members.Store(&members)
	// Hits from here on find the new site; those already holding the old
	// one finish with its slot, which is freed when they are done.
	m.sites[ns.gpa], m.byVA[ns.addr] = ns, ns
	s.garbage.Store(true)
	if s.inflight.Load() == 0 {
		m.freeSlotLocked(s)
	}
	if writeInt3 {
		if err := m.mem.WritePhys(ns.gpa, []byte{opInt3}); err != nil {
			return fmt.Errorf("writing int3 at gpa %#x: %w", ns.gpa, err)
		}
	}
	return nil
}
