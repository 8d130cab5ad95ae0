package kprobes

// slotAlloc hands out fixed-size slots of the SlotArea. Callers hold
// Manager.mu.
//
// A slot that has ever run boosted is never handed out again (quarantine):
// a boosted slot is left by a jmp the guest executes on its own, so a vCPU,
// or a task preempted or interrupted inside the slot, may still be about to
// execute it at any later time, and no exit tells the engine when that is
// over. Stepped-only slots are reused once no vCPU is mid-step in them (the
// seeds' garbage-slot rule).
type slotAlloc struct {
	area SlotArea
	n    uint64   // number of slots in the area
	next uint64   // first never-used slot
	free []uint64 // released slots, reused first
}

func newSlotAlloc(a SlotArea) slotAlloc {
	return slotAlloc{area: a, n: a.Size / slotSize}
}

func (a *slotAlloc) alloc() (uint64, bool) {
	if n := len(a.free); n > 0 {
		i := a.free[n-1]
		a.free = a.free[:n-1]
		return i, true
	}
	if a.next >= a.n {
		return 0, false
	}
	a.next++
	return a.next - 1, true
}

// allocRun hands out n contiguous never-used slots, for stubs and rings
// that are never released (what runs there may be entered at any time).
func (a *slotAlloc) allocRun(n uint64) (uint64, bool) {
	if n == 0 || a.n-a.next < n {
		return 0, false
	}
	a.next += n
	return a.next - n, true
}

// allocPages hands out never-used slots for size bytes of data the guest
// writes (rings, instance pools), in whole pages of their own: a store to
// a page that holds code the CPU runs costs a self-modifying-code flush
// (a TCG retranslation in the nested KVM: 17.8 µs per exit-less kretprobe
// hit with its pool beside the trampoline, 2026-12-03). The slots skipped
// to reach a page boundary stay unused.
func (a *slotAlloc) allocPages(size uint64) (uint64, bool) {
	const perPage = pageSize / slotSize
	gap := (perPage - (a.area.GPA/slotSize+a.next)%perPage) % perPage
	pages := (size + pageSize - 1) / pageSize
	if size == 0 || a.n-a.next < gap+pages*perPage {
		return 0, false
	}
	a.next += gap
	return a.allocRun(pages * perPage)
}

func (a *slotAlloc) release(i uint64) { a.free = append(a.free, i) }

func (a *slotAlloc) va(i uint64) uint64  { return a.area.VA + i*slotSize }
func (a *slotAlloc) gpa(i uint64) uint64 { return a.area.GPA + i*slotSize }

// contains reports whether va lies in the slot area.
func (a *slotAlloc) contains(va uint64) bool {
	return va >= a.area.VA && va-a.area.VA < a.n*slotSize
}
