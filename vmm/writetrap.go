package vmm

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
)

// Write traps: page-granular write watch over guest-physical ranges of
// any size (a cred struct, an ops table, sys_call_table, the IDT), for
// what four debug registers cannot cover and on hosts whose KVM does not
// deliver data watchpoints (docs/QUIRKS.md #38, #40, #41).
//
// The pages covering a trapped range are split out of RAM into a
// KVM_MEM_READONLY memslot over the same host mapping: the guest reads
// them at full speed, and each guest store there exits as KVM_EXIT_MMIO
// (is_write, phys_addr, len <= 8, data) with the store not done. The VMM
// completes it into the mapping itself, so RAM holds exactly what the
// guest wrote, and reports it (old bytes read just before) when it touches
// a trapped byte; a store to an untrapped byte of the same page costs the
// exit and is written unchanged. The guest resumes after the instruction:
// KVM has already advanced rip past a plain store when it exits (measured
// on PVM, and x86_emulate_instruction's writeback on hardware KVM); a rep
// string store exits once per element with rip at the instruction, the
// last element included (measured on PVM). A store that crosses a page or is wider than 8 bytes arrives
// as several exits (fragments), each reported on its own.
//
// The guest cannot see a trap by reading its memory (nothing in RAM
// changes); it could only notice the time a store takes.
//
// Limits (hardware KVM, from its design; not measurable on PVM, where
// guest kernel mode is emulated anyway): a store KVM's instruction
// emulator cannot decode (SSE/AVX) to a trapped page ends in an emulation
// failure; and structures the CPU itself writes (page tables' accessed and
// dirty bits, the TSS busy bit in the GDT) must not be on trapped pages.

// Errors of write traps.
var (
	// ErrNoReadonlyMem: this KVM has no KVM_CAP_READONLY_MEM.
	ErrNoReadonlyMem = errors.New("KVM read-only memslots are not available")
	// ErrTrapRefused: the range overlaps the dirty-logged range of
	// LogDirty (whose memslot must not be re-created: its log would be
	// lost), or the trap id is unknown.
	ErrTrapRefused = errors.New("write trap refused")
)

// TrapID names one TrapWrites range.
type TrapID uint64

// WriteEvent is one guest store that touched trapped bytes, already
// completed into guest memory when the hook sees it. Old and New are the
// Size bytes at GPA before and after (the whole store, trapped or not).
type WriteEvent struct {
	Trap TrapID // the first trap the store touched
	CPU  int
	RIP  uint64 // as KVM left it: after the store (at it for a rep string store)
	GPA  uint64
	Size int
	Old  [8]byte
	New  [8]byte
}

// WriteHook receives write-trap events, on the writing vCPU's thread,
// while that vCPU is stopped after its store (CPU is valid during the
// call, as for DebugHook). Keep it short: every trapped store waits.
type WriteHook interface {
	HandleWrite(cpu CPU, ev WriteEvent)
}

// writeTrap is one trapped byte range.
type writeTrap struct {
	id         TrapID
	start, end uint64 // [start, end) guest-physical bytes
}

// trapSet is the traps in force, immutable once published: the exit
// path reads it without a lock.
type trapSet struct {
	traps []writeTrap // by start
	pages []pageRange // read-only pages: merged, sorted
}

// pageRange is a page-aligned guest-physical range [start, end).
type pageRange struct{ start, end uint64 }

// trapPages is the merged page ranges covering traps.
func trapPages(traps []writeTrap) []pageRange {
	var out []pageRange
	for _, t := range traps {
		r := pageRange{t.start &^ (pageSize - 1), (t.end + pageSize - 1) &^ (pageSize - 1)}
		if n := len(out); n > 0 && r.start <= out[n-1].end {
			out[n-1].end = max(out[n-1].end, r.end)
			continue
		}
		out = append(out, r)
	}
	return out
}

// hit returns the first trap overlapping [gpa, gpa+n).
func (s *trapSet) hit(gpa uint64, n int) (TrapID, bool) {
	if s == nil {
		return 0, false
	}
	for _, t := range s.traps {
		if t.start < gpa+uint64(n) && gpa < t.end {
			return t.id, true
		}
	}
	return 0, false
}

// watchState is the exit handler's part of the memory watches: the write
// traps and the hooks of both kinds of watch.
type watchState struct {
	set    atomic.Pointer[trapSet]
	hook   atomic.Pointer[writeHookBox]
	hwHook atomic.Pointer[hwHookBox] // hwbreak.go
	// mu serializes completing stores, so old -> new pairs of two vCPUs'
	// stores to the same bytes chain.
	mu sync.Mutex
	// Exits counts trapped-page store exits, Events those that touched
	// trapped bytes (reported to the hook when one is set).
	exits, events atomic.Uint64
	seq           atomic.Uint64 // last TrapID
}

type writeHookBox struct{ h WriteHook }

// WriteTrapStats are the write-trap counters.
type WriteTrapStats struct {
	Exits  uint64 // store exits completed by the VMM (trapped pages, any byte)
	Events uint64 // of which touched trapped bytes
}

// completeWrite handles a KVM_EXIT_MMIO store: if it lies in guest RAM it
// can only be a store to a read-only (trapped) page, or a fragment of one
// that KVM decoded before the trap was removed, and it is completed into
// RAM. It reports false for a store outside RAM (left to the MMIO path).
func (h *exitHandler) completeWrite(c cpuOps, m mmioExit) (bool, error) {
	st := &h.writes
	n := int(m.Len)
	if n < 1 || n > 8 || h.mem == nil {
		return false, nil
	}
	var cur [8]byte
	st.mu.Lock()
	if err := h.mem.ReadPhys(m.PhysAddr, cur[:n]); err != nil {
		st.mu.Unlock()
		return false, nil // not RAM: a real MMIO hole
	}
	old := cur
	err := storeBytes(h.mem, m.PhysAddr, m.Data[:n])
	st.mu.Unlock()
	if err != nil {
		return true, fmt.Errorf("completing a guest store of %d bytes at %#x: %w", n, m.PhysAddr, err)
	}
	st.exits.Add(1)
	id, ok := st.set.Load().hit(m.PhysAddr, n)
	if !ok {
		return true, nil
	}
	st.events.Add(1)
	box := st.hook.Load()
	if box == nil {
		return true, nil
	}
	r, err := c.Regs()
	if err != nil {
		return true, err
	}
	ev := WriteEvent{Trap: id, CPU: c.ID(), RIP: r.RIP, GPA: m.PhysAddr, Size: n, Old: old}
	copy(ev.New[:], m.Data[:n])
	box.h.HandleWrite(c, ev)
	return true, nil
}

// storeBytes writes p at gpa as one store of its width when aligned
// (AtomicPhys), so other vCPUs reading the page never see half of it.
func storeBytes(mem PhysMem, gpa uint64, p []byte) error {
	if a, ok := mem.(AtomicPhys); ok && checkAtomicSize(len(p)) == nil && gpa%uint64(len(p)) == 0 {
		var b [8]byte
		copy(b[:], p)
		v := uint64(0)
		for i := len(p) - 1; i >= 0; i-- {
			v = v<<8 | uint64(b[i])
		}
		return a.StorePhys(gpa, len(p), v)
	}
	return mem.WritePhys(gpa, p)
}

// memslotLayoutTraps is memslotLayout with read-only pages split out:
// RAM [0,size) is cut at the dirty watch's and the read-only ranges'
// bounds; the dirty-logged piece keeps slotWatched (its id and range never
// change, so its log survives re-layouts), read-only pieces carry
// KVM_MEM_READONLY, the other ids are 0, 2, 3, ... in address order. ro
// must be sorted, merged, page-aligned, inside RAM and outside the watch.
// Without ro it is memslotLayout. Pure: unit-tested.
func memslotLayoutTraps(size uint64, w *dirtyRange, ro []pageRange) []memslot {
	if len(ro) == 0 {
		return memslotLayout(size, w)
	}
	type piece struct {
		start, end uint64
		flags      uint32
		dirty      bool
	}
	var special []piece
	for _, r := range ro {
		special = append(special, piece{r.start, r.end, memReadonly, false})
	}
	if w != nil {
		special = append(special, piece{w.start, w.end, memLogDirtyPages, true})
	}
	slices.SortFunc(special, func(a, b piece) int {
		switch {
		case a.start < b.start:
			return -1
		case a.start > b.start:
			return 1
		}
		return 0
	})
	var out []memslot
	next := uint32(0)
	id := func() uint32 {
		i := next
		next++
		if next == slotWatched {
			next++
		}
		return i
	}
	at := uint64(0)
	for _, p := range special {
		if p.start > at {
			out = append(out, memslot{id: id(), gpa: at, size: p.start - at})
		}
		s := memslot{gpa: p.start, size: p.end - p.start, flags: p.flags}
		if p.dirty {
			s.id = slotWatched
		} else {
			s.id = id()
		}
		out = append(out, s)
		at = p.end
	}
	if at < size {
		out = append(out, memslot{id: id(), gpa: at, size: size - at})
	}
	return out
}

// applyMemslotsDiff changes KVM's slots to want touching only those that
// differ: a slot equal in id, range and flags (the dirty-logged one) is
// kept with its log. Deletions come first (KVM refuses overlaps and id
// reuse). vm.slots tracks KVM after every ioctl.
func (vm *VM) applyMemslotsDiff(want []memslot) error {
	for i := len(vm.slots) - 1; i >= 0; i-- {
		s := vm.slots[i]
		if slices.Contains(want, s) {
			continue
		}
		d := s
		d.size = 0
		if err := vm.setUserMemoryRegion(d); err != nil {
			return err
		}
		vm.slots = slices.Delete(vm.slots, i, i+1)
	}
	for _, s := range want {
		if slices.Contains(vm.slots, s) {
			continue
		}
		if err := vm.setUserMemoryRegion(s); err != nil {
			return err
		}
		vm.slots = append(vm.slots, s)
	}
	return nil
}

// relayout puts the memslots for traps in place. Precondition: every
// vCPU paused (or none running) and vm.slotMu held, since a vCPU must
// never see the hole between a slot's deletion and its replacement. On
// an error the previous slots are restored.
func (vm *VM) relayout(set *trapSet) error {
	want := memslotLayoutTraps(vm.mem.Size(), vm.watch, set.pages)
	if n := vm.checkExtension(capNRMemslots); n < len(want) {
		return fmt.Errorf("%w: KVM offers %d memslots (KVM_CAP_NR_MEMSLOTS), the traps need %d", ErrTrapRefused, n, len(want))
	}
	prev := slices.Clone(vm.slots)
	if err := vm.applyMemslotsDiff(want); err != nil {
		if rerr := vm.applyMemslots(prev); rerr != nil {
			return fmt.Errorf("%w; restoring the previous memslots: %v", err, rerr)
		}
		return err
	}
	vm.handler.writes.set.Store(set)
	return nil
}

// withSlots runs f with every vCPU paused and vm.slotMu held, in the
// lock order (pause.go).
func (vm *VM) withSlots(f func() error) error {
	return vm.WithAllPaused(func() error {
		vm.slotMu.Lock()
		defer vm.slotMu.Unlock()
		return f()
	})
}

// TrapWrites traps the guest's stores to the guest-physical bytes [gpa,
// gpa+size): the pages covering them become read-only to the guest, the
// VMM completes every store there itself, and each store touching the
// range is reported to the WriteHook (SetWriteHook) with its old and new
// bytes. Callable before Run or while the guest runs (every vCPU is
// paused for the memslot change, the others only from a vCPU's own
// thread). The range must lie in RAM and outside a LogDirty
// range (ErrTrapRefused). Snapshots do not record traps.
func (vm *VM) TrapWrites(gpa, size uint64) (TrapID, error) {
	if !vm.life.enter() {
		return 0, ErrClosed
	}
	defer vm.life.exit()
	end := gpa + size
	switch {
	case size == 0:
		return 0, fmt.Errorf("%w: trapping an empty range at %#x", ErrBadConfig, gpa)
	case end < gpa || end > vm.mem.Size():
		return 0, fmt.Errorf("trapping [%#x,%#x) (RAM is %#x bytes): %w", gpa, end, vm.mem.Size(), ErrOutOfRange)
	}
	if vm.checkExtension(capReadonlyMem) <= 0 {
		return 0, ErrNoReadonlyMem
	}
	var id TrapID
	err := vm.withSlots(func() error {
		if w := vm.watch; w != nil {
			ps, pe := gpa&^(pageSize-1), (end+pageSize-1)&^(pageSize-1)
			if ps < w.end && w.start < pe {
				return fmt.Errorf("%w: pages [%#x,%#x) overlap the dirty-logged range [%#x,%#x)", ErrTrapRefused, ps, pe, w.start, w.end)
			}
		}
		old := vm.handler.writes.set.Load()
		var traps []writeTrap
		if old != nil {
			traps = slices.Clone(old.traps)
		}
		t := writeTrap{id: TrapID(vm.handler.writes.seq.Add(1)), start: gpa, end: end}
		traps = append(traps, t)
		slices.SortFunc(traps, func(a, b writeTrap) int { return cmp.Compare(a.start, b.start) })
		id = t.id
		return vm.relayout(&trapSet{traps: traps, pages: trapPages(traps)})
	})
	if err != nil {
		return 0, err
	}
	return id, nil
}

// UntrapWrites removes a trap; pages no other trap covers become plain
// RAM again (same mapping, so memory is byte-identical to what the guest
// wrote). Same calling rules as TrapWrites.
func (vm *VM) UntrapWrites(id TrapID) error {
	if !vm.life.enter() {
		return ErrClosed
	}
	defer vm.life.exit()
	return vm.withSlots(func() error {
		old := vm.handler.writes.set.Load()
		if old == nil {
			return fmt.Errorf("%w: no trap %d", ErrTrapRefused, id)
		}
		traps := slices.DeleteFunc(slices.Clone(old.traps), func(t writeTrap) bool { return t.id == id })
		if len(traps) == len(old.traps) {
			return fmt.Errorf("%w: no trap %d", ErrTrapRefused, id)
		}
		return vm.relayout(&trapSet{traps: traps, pages: trapPages(traps)})
	})
}

// SetWriteHook installs (nil: removes) the write-trap hook. Safe while
// the VM runs.
func (vm *VM) SetWriteHook(h WriteHook) {
	if h == nil {
		vm.handler.writes.hook.Store(nil)
		return
	}
	vm.handler.writes.hook.Store(&writeHookBox{h})
}

// WriteTrapStats reads the write-trap counters.
func (vm *VM) WriteTrapStats() WriteTrapStats {
	return WriteTrapStats{Exits: vm.handler.writes.exits.Load(), Events: vm.handler.writes.events.Load()}
}

// trapPagesLocked is the read-only pages in force (vm.slotMu held).
func (vm *VM) trapPagesLocked() []pageRange {
	if s := vm.handler.writes.set.Load(); s != nil {
		return s.pages
	}
	return nil
}

// checkWatchVsTraps refuses a LogDirty range over trapped pages
// (vm.slotMu held): one memslot cannot be both dirty-logged and read-only.
func (vm *VM) checkWatchVsTraps(start, end uint64) error {
	for _, r := range vm.trapPagesLocked() {
		if r.start < end && start < r.end {
			return fmt.Errorf("%w: [%#x,%#x) overlaps the write-trapped pages [%#x,%#x)", ErrDirtyLogRefused, start, end, r.start, r.end)
		}
	}
	return nil
}
