package vmm

import (
	"errors"
	"fmt"
	"math/bits"
	"slices"

	"golang.org/x/sys/unix"
)

// Guest RAM is one host mapping (Memory) covered by KVM memslots. Without
// a write watch that is one slot; LogDirty splits it into [0,start),
// [start,end) with KVM_MEM_LOG_DIRTY_PAGES and [end,size), all three over
// the same mapping at offset = guest-physical address, so nothing but KVM
// knows there are three. KVM logs the guest's writes (a write fault on a
// write-protected page, Intel PML, or its instruction emulator's stores);
// hvprobe's own stores through the mapping (ReadPhys/WritePhys, its int3
// bytes) never pass through KVM and are never logged.

// Errors of the write watch.
var (
	// ErrNoDirtyLog: this KVM cannot log guest writes to a memslot.
	ErrNoDirtyLog = errors.New("KVM dirty-page logging is not available")
	// ErrDirtyLogRefused: LogDirty was called a second time, or after the
	// vCPUs first ran; the memslot layout is then fixed.
	ErrDirtyLogRefused = errors.New("write watch refused")
	// ErrNotWatching: DirtyPages on a VM without a write watch.
	ErrNotWatching = errors.New("no guest-physical range is watched")
)

// Slot ids. A watch that starts at 0 or ends at the top of RAM leaves
// slotLow or slotHigh out.
const (
	slotLow     = 0 // [0, start); all of RAM without a watch
	slotWatched = 1 // [start, end), dirty-logged
	slotHigh    = 2 // [end, size)
)

// memslot is one KVM_SET_USER_MEMORY_REGION slot over guest RAM; its host
// address is the RAM mapping's plus gpa.
type memslot struct {
	id    uint32
	gpa   uint64
	size  uint64
	flags uint32
}

// dirtyRange is the dirty-logged range and KVM_GET_DIRTY_LOG's buffer
// (allocated once, on the heap, reused under VM.slotMu).
type dirtyRange struct {
	start, end uint64
	bitmap     []uint64
}

func (w *dirtyRange) pages() uint64 { return (w.end - w.start) / pageSize }

// memslotLayout is the slots that cover RAM of size bytes: one, or with a
// watch up to three (empty pieces are left out). Pure: unit-tested.
func memslotLayout(size uint64, w *dirtyRange) []memslot {
	if w == nil {
		return []memslot{{id: slotLow, gpa: 0, size: size}}
	}
	var s []memslot
	if w.start > 0 {
		s = append(s, memslot{id: slotLow, gpa: 0, size: w.start})
	}
	s = append(s, memslot{id: slotWatched, gpa: w.start, size: w.end - w.start, flags: memLogDirtyPages})
	if w.end < size {
		s = append(s, memslot{id: slotHigh, gpa: w.end, size: size - w.end})
	}
	return s
}

// checkDirtyRange validates a LogDirty range against RAM of size bytes.
func checkDirtyRange(start, end, size uint64) error {
	switch {
	case start%pageSize != 0 || end%pageSize != 0:
		return fmt.Errorf("%w: watch range [%#x,%#x) is not page-aligned", ErrBadConfig, start, end)
	case end <= start:
		return fmt.Errorf("%w: watch range [%#x,%#x) is empty", ErrBadConfig, start, end)
	case end > size:
		return fmt.Errorf("watching [%#x,%#x) (RAM is %#x bytes): %w", start, end, size, ErrOutOfRange)
	}
	return nil
}

// bitmapWords is how many u64 words KVM's dirty bitmap of pages pages has
// (kvm_dirty_bitmap_bytes: the page count rounded up to a multiple of 64).
func bitmapWords(pages uint64) int { return int((pages + 63) / 64) }

// dirtyGPAs decodes a KVM dirty bitmap (bit i of word w = page 64w+i of
// the slot) into the guest-physical addresses of the dirty pages, in
// ascending order. Bits past the slot's last page are ignored.
func dirtyGPAs(bitmap []uint64, base, pages uint64) []uint64 {
	var out []uint64
	for w, word := range bitmap {
		for word != 0 {
			b := uint64(bits.TrailingZeros64(word))
			word &= word - 1
			page := uint64(w)*64 + b
			if page >= pages {
				return out
			}
			out = append(out, base+page*pageSize)
		}
	}
	return out
}

// LogDirty makes KVM log the guest's writes to the guest-physical range
// [start,end) (page-aligned, within RAM); DirtyPages reads the log. Call it
// once, before Run: after the kernel is placed (New) or after Restore (a
// restored VM starts without a watch; snapshots do not record one). It
// refuses (ErrDirtyLogRefused) a second call or a call once the vCPUs have
// run, since re-laying out memslots under running vCPUs would show them a
// hole. ErrNoDirtyLog: this KVM cannot do it; RAM is left as it was.
//
// Writes by hvprobe itself (WritePhys) are not logged.
func (vm *VM) LogDirty(start, end uint64) error {
	if !vm.life.enter() {
		return ErrClosed
	}
	defer vm.life.exit()
	if err := checkDirtyRange(start, end, vm.mem.Size()); err != nil {
		return err
	}
	vm.slotMu.Lock()
	defer vm.slotMu.Unlock()
	switch {
	case vm.watch != nil:
		return fmt.Errorf("%w: [%#x,%#x) is already watched (the memslot layout is set once)", ErrDirtyLogRefused, vm.watch.start, vm.watch.end)
	case vm.ran.Load():
		return fmt.Errorf("%w: the vCPUs have run (re-laying out memslots under them would show them a hole)", ErrDirtyLogRefused)
	}
	if err := vm.checkWatchVsTraps(start, end); err != nil {
		return err
	}
	w := &dirtyRange{start: start, end: end}
	w.bitmap = make([]uint64, bitmapWords(w.pages()))
	want := memslotLayoutTraps(vm.mem.Size(), w, vm.trapPagesLocked())
	// KVM_GET_DIRTY_LOG is basic API with no capability of its own; what
	// a host can lack is enough slots, or the flag (refused with EINVAL).
	if n := vm.checkExtension(capNRMemslots); n < len(want) {
		return fmt.Errorf("%w: KVM offers %d memslots (KVM_CAP_NR_MEMSLOTS), the watch needs %d", ErrNoDirtyLog, n, len(want))
	}
	if err := vm.setMemslots(want); err != nil {
		if errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("%w: %w", ErrNoDirtyLog, err)
		}
		return fmt.Errorf("watching writes to [%#x,%#x): %w", start, end, err)
	}
	// The first read of the log is empty; a KVM that fails it cannot log.
	if err := getDirtyLog(vm.vmFD, slotWatched, w.bitmap); err != nil {
		err = fmt.Errorf("%w: KVM_GET_DIRTY_LOG: %w", ErrNoDirtyLog, err)
		if rerr := vm.setMemslots(memslotLayoutTraps(vm.mem.Size(), nil, vm.trapPagesLocked())); rerr != nil {
			return fmt.Errorf("%w; restoring the single memslot: %v", err, rerr)
		}
		return err
	}
	vm.watch = w
	return nil
}

// DirtyPages returns the guest-physical addresses (page-aligned, ascending)
// of the watched pages the guest wrote since the previous call (or since
// LogDirty); KVM write-protects them again before it returns, so a
// later write is reported by a later call. Safe from any goroutine while
// the vCPUs run (KVM_GET_DIRTY_LOG is a VM ioctl; calls are serialized).
//
// What a report means: "re-read this page". A write that races with the
// call is reported by this call or the next. A page can also be reported
// that the guest only read or executed, on its first access since the
// watch began, when KVM maps it writable then (it logs a page when it
// creates a writable mapping: on hardware KVM for pages the host wrote,
// in the nested KVM for others too, docs/QUIRKS.md #51); a page the guest
// wrote is never left out.
func (vm *VM) DirtyPages() ([]uint64, error) {
	if !vm.life.enter() {
		return nil, ErrClosed
	}
	defer vm.life.exit()
	vm.slotMu.Lock()
	defer vm.slotMu.Unlock()
	w := vm.watch
	if w == nil {
		return nil, ErrNotWatching
	}
	clear(w.bitmap)
	if err := getDirtyLog(vm.vmFD, slotWatched, w.bitmap); err != nil {
		return nil, fmt.Errorf("KVM_GET_DIRTY_LOG: %w", err)
	}
	return dirtyGPAs(w.bitmap, w.start, w.pages()), nil
}

// setMemslots is the one place guest RAM's memslots are set: VM creation
// (New and Restore, through create) and LogDirty. It deletes the
// current slots, then adds want: KVM refuses overlapping slots and does
// not resize one in place. On an error it puts the previous slots back, so
// RAM is not left with a hole. Precondition: no vCPU runs (vm.slotMu held,
// or the VM still being created).
func (vm *VM) setMemslots(want []memslot) error {
	prev := slices.Clone(vm.slots)
	err := vm.applyMemslots(want)
	if err == nil {
		return nil
	}
	if rerr := vm.applyMemslots(prev); rerr != nil {
		return fmt.Errorf("%w; restoring the previous memslots: %v", err, rerr)
	}
	return err
}

// applyMemslots makes KVM's slots want, keeping vm.slots equal to what
// KVM has after every ioctl.
func (vm *VM) applyMemslots(want []memslot) error {
	for len(vm.slots) > 0 {
		s := vm.slots[len(vm.slots)-1]
		s.size = 0 // memory_size 0 deletes the slot
		if err := vm.setUserMemoryRegion(s); err != nil {
			return err
		}
		vm.slots = vm.slots[:len(vm.slots)-1]
	}
	for _, s := range want {
		if err := vm.setUserMemoryRegion(s); err != nil {
			return err
		}
		vm.slots = append(vm.slots, s)
	}
	return nil
}

func (vm *VM) setUserMemoryRegion(s memslot) error {
	r := userspaceMemoryRegion{
		Slot: s.id, Flags: s.flags, GuestPhysAddr: s.gpa, MemorySize: s.size,
		UserspaceAddr: uint64(bytesAddr(vm.mem.b)) + s.gpa,
	}
	if err := ioctlPtr(vm.vmFD, kvmSetUserMemoryRegion, &r); err != nil {
		return fmt.Errorf("KVM_SET_USER_MEMORY_REGION slot %d [%#x,+%#x) flags %#x: %w", s.id, s.gpa, s.size, s.flags, err)
	}
	return nil
}
