package introspect

import (
	"errors"
	"fmt"
)

// Sentinel errors. Typed errors below match them through errors.Is.
var (
	// ErrNotMapped: a paging-structure entry on the walk is not present.
	ErrNotMapped = errors.New("virtual address not mapped")
	// ErrNonCanonical: the address is not sign-extended from bit 47 (bit 56
	// with LA57); the CPU would raise #GP before any walk.
	ErrNonCanonical = errors.New("non-canonical virtual address")
	// ErrReservedBit: an entry sets a bit the CPU requires to be zero (PS in
	// a PML4E or PML5E); the CPU would raise #PF with RSVD set.
	ErrReservedBit = errors.New("reserved bit set in paging-structure entry")
	// ErrAlreadyMapped: MapPage found a present translation for the VA.
	ErrAlreadyMapped = errors.New("virtual address already mapped")
	// ErrLargePage: the VA lies inside a 2 MiB or 1 GiB page, which MapPage
	// and UnmapPage refuse to split.
	ErrLargePage = errors.New("virtual address inside a large page")
	// ErrPermConflict: an existing upper-level entry would deny what the new
	// mapping asks for (write, user or execute access).
	ErrPermConflict = errors.New("upper-level entry restricts requested permissions")
	// ErrBadArgument: unaligned or out-of-range VA/PA, or unsupported flags.
	ErrBadArgument = errors.New("invalid argument")
	// ErrTruncated: ReadCString found no NUL within its bound.
	ErrTruncated = errors.New("string truncated: no NUL within bound")
	// ErrReadOnly: a CPU-like store to a page the walk does not grant
	// writes at every level.
	ErrReadOnly = errors.New("page not writable")
	// ErrNotLongMode: the vCPU is not in IA-32e mode with paging enabled,
	// so there are no 4/5-level page tables to walk.
	ErrNotLongMode = errors.New("vCPU not in long mode with paging")
	// ErrBadSlide: LSTAR and entry_SYSCALL_64 do not give a plausible
	// KASLR slide.
	ErrBadSlide = errors.New("implausible KASLR slide")
	// ErrBannerMismatch: the slid linux_banner does not read "Linux version ".
	ErrBannerMismatch = errors.New("linux_banner check failed")
	// ErrNoPerCPU: the vCPU has no usable per-cpu base, or a symbol given
	// as a per-cpu offset is not one.
	ErrNoPerCPU = errors.New("no per-cpu data")
	// ErrTaskList: the task list is cyclic without returning to its head,
	// or longer than MaxTasks.
	ErrTaskList = errors.New("corrupt task list")
)

// NotMappedError reports the VA whose walk stopped at a non-present entry,
// and the level of that entry (5 = PML5 ... 1 = PT).
type NotMappedError struct {
	VA    uint64
	Level int
}

func (e *NotMappedError) Error() string {
	return fmt.Sprintf("VA %#x not mapped: %s entry not present", e.VA, levelName(e.Level))
}

// Is makes errors.Is(err, ErrNotMapped) true.
func (e *NotMappedError) Is(target error) bool { return target == ErrNotMapped }

// ReservedBitError reports an entry with a must-be-zero bit set.
type ReservedBitError struct {
	VA    uint64
	Level int
	Entry uint64
}

func (e *ReservedBitError) Error() string {
	return fmt.Sprintf("VA %#x: %s entry %#x sets a reserved bit", e.VA, levelName(e.Level), e.Entry)
}

// Is makes errors.Is(err, ErrReservedBit) true.
func (e *ReservedBitError) Is(target error) bool { return target == ErrReservedBit }

// MappedError reports that MapPage found VA already translated, by a 4 KiB
// PTE or by a large page at Level.
type MappedError struct {
	VA    uint64
	Level int
	Size  PageSize
}

func (e *MappedError) Error() string {
	return fmt.Sprintf("VA %#x already mapped by a %s page at the %s level", e.VA, e.Size, levelName(e.Level))
}

// Is matches ErrAlreadyMapped, and ErrLargePage when the mapping is larger
// than 4 KiB.
func (e *MappedError) Is(target error) bool {
	return target == ErrAlreadyMapped || (target == ErrLargePage && e.Size != Size4K)
}

func levelName(level int) string {
	switch level {
	case 5:
		return "PML5"
	case 4:
		return "PML4"
	case 3:
		return "PDPT"
	case 2:
		return "PD"
	case 1:
		return "PT"
	}
	return fmt.Sprintf("level-%d", level)
}
