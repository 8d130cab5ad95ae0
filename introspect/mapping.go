package introspect

import (
	"fmt"

	"github.com/hvprobe/hvprobe/vmm"
)

// mappable are the flags MapPage accepts; the rest (PWT, PCD, PAT,
// protection keys, software bits) are Linux's business.
const mappable = FlagPresent | FlagWritable | FlagUser | FlagGlobal | FlagNX

// MapPage installs a 4 KiB translation va→pa with flags (Present is
// implied) in the page tables rooted at cr3.
//
// Where the walk meets a non-present upper entry, MapPage takes the
// remaining tables from allocTable, which returns the GPA of a 4 KiB page
// the caller owns; MapPage zeroes each. The new chain is filled bottom-up
// and linked into the existing hierarchy by one final entry write, so the
// guest never sees a half-built chain. If allocTable fails, nothing was
// linked; pages it already returned stay the caller's. New upper entries
// are Present|Writable|Accessed (plus User if flags has it): the leaf alone
// decides write and execute rights.
//
// MapPage refuses, without writing, when va is already mapped or lies
// inside a large page (*MappedError), when an existing upper entry would
// deny a requested right (ErrPermConflict), and for unaligned or
// out-of-range addresses or other flags (ErrBadArgument).
//
// No TLB flush is needed: x86 never caches a non-present translation, and
// MapPage only ever turns non-present entries present. The mapping lands in
// the hierarchy rooted at cr3. Below the top level, Linux shares kernel-half
// tables between all page-table roots, so a kernel VA whose top-level entry
// already exists becomes visible in every address space; a top-level entry
// MapPage creates exists only under this cr3.
//
// Precondition: vCPUs that could walk these tables are stopped.
func MapPage(mem vmm.PhysMem, cr3 uint64, la57 bool, va, pa uint64, flags PTEFlags, allocTable func() (uint64, error)) error {
	if err := checkMapArgs(va, pa, flags, la57); err != nil {
		return fmt.Errorf("mapping VA %#x to PA %#x: %w", va, pa, err)
	}
	flags |= FlagPresent
	upper := uint64(FlagPresent|FlagWritable|bitAccessed) | uint64(flags&FlagUser)
	var buf [entrySize]byte
	table := cr3 & addrMask
	for level := topLevel(la57); ; level-- {
		ea := table + index(va, level)*entrySize
		e, err := readEntry(mem, buf[:], ea)
		if err != nil {
			return fmt.Errorf("mapping VA %#x: reading %s entry at GPA %#x: %w", va, levelName(level), ea, err)
		}
		present := e&uint64(FlagPresent) != 0
		switch {
		case level == 1 && present:
			return &MappedError{VA: va, Level: 1, Size: Size4K}
		case level == 1:
			if err := writeEntry(mem, ea, pa|uint64(flags)); err != nil {
				return fmt.Errorf("mapping VA %#x: writing PTE at GPA %#x: %w", va, ea, err)
			}
			return nil
		case !present:
			return installChain(mem, va, pa, flags, upper, level, ea, allocTable)
		case e&bitPS != 0 && level == 3:
			return &MappedError{VA: va, Level: 3, Size: Size1G}
		case e&bitPS != 0 && level == 2:
			return &MappedError{VA: va, Level: 2, Size: Size2M}
		case e&bitPS != 0:
			return &ReservedBitError{VA: va, Level: level, Entry: e}
		}
		if err := checkUpper(PTEFlags(e), flags); err != nil {
			return fmt.Errorf("mapping VA %#x: %s entry %#x: %w", va, levelName(level), e, err)
		}
		table = e & addrMask
	}
}

func checkMapArgs(va, pa uint64, flags PTEFlags, la57 bool) error {
	switch {
	case !Canonical(va, la57):
		return ErrNonCanonical
	case va&(uint64(Size4K)-1) != 0:
		return fmt.Errorf("VA not 4 KiB aligned: %w", ErrBadArgument)
	case pa&^addrMask != 0:
		return fmt.Errorf("PA not 4 KiB aligned or above bit 51: %w", ErrBadArgument)
	case flags&^mappable != 0:
		return fmt.Errorf("unsupported flags %#x: %w", uint64(flags&^mappable), ErrBadArgument)
	}
	return nil
}

// checkUpper reports whether an existing upper entry e denies a right the
// new leaf asks for; the CPU ANDs R/W and U/S and ORs XD across levels.
func checkUpper(e, want PTEFlags) error {
	switch {
	case want&FlagWritable != 0 && e&FlagWritable == 0:
		return fmt.Errorf("not writable: %w", ErrPermConflict)
	case want&FlagUser != 0 && e&FlagUser == 0:
		return fmt.Errorf("not user-accessible: %w", ErrPermConflict)
	case want&FlagNX == 0 && e&FlagNX != 0:
		return fmt.Errorf("execute-disabled: %w", ErrPermConflict)
	}
	return nil
}

// installChain allocates tables for levels below level, fills them bottom-up
// and finally links the top one at ea, the non-present entry of level.
func installChain(mem vmm.PhysMem, va, pa uint64, flags PTEFlags, upper uint64, level int, ea uint64, allocTable func() (uint64, error)) error {
	// tables[l] is the new table for level l (1..level-1).
	var tables [maxLevels]uint64
	zero := make([]byte, Size4K)
	for l := level - 1; l >= 1; l-- {
		gpa, err := allocTable()
		if err != nil {
			return fmt.Errorf("mapping VA %#x: allocating %s table: %w", va, levelName(l), err)
		}
		if gpa&^addrMask != 0 {
			return fmt.Errorf("mapping VA %#x: allocated table GPA %#x: %w", va, gpa, ErrBadArgument)
		}
		if err := mem.WritePhys(gpa, zero); err != nil {
			return fmt.Errorf("mapping VA %#x: zeroing %s table at GPA %#x: %w", va, levelName(l), gpa, err)
		}
		tables[l] = gpa
	}
	if err := writeEntry(mem, tables[1]+index(va, 1)*entrySize, pa|uint64(flags)); err != nil {
		return fmt.Errorf("mapping VA %#x: writing PTE: %w", va, err)
	}
	for l := 2; l < level; l++ {
		if err := writeEntry(mem, tables[l]+index(va, l)*entrySize, tables[l-1]|upper); err != nil {
			return fmt.Errorf("mapping VA %#x: writing %s entry: %w", va, levelName(l), err)
		}
	}
	if err := writeEntry(mem, ea, tables[level-1]|upper); err != nil {
		return fmt.Errorf("mapping VA %#x: linking %s entry at GPA %#x: %w", va, levelName(level), ea, err)
	}
	return nil
}

// UnmapPage clears the 4 KiB PTE that maps va and returns the page frame it
// pointed to. Intermediate tables stay in place (the caller owns them and
// may map more pages through them). It refuses large pages (ErrLargePage)
// and VAs that are not mapped (*NotMappedError).
//
// TLB: UnmapPage flushes nothing. For a page installed with MapPage that
// the guest never touched this is exact, since no translation for it can be
// cached. Once the guest has used the page (e.g. executed an instruction
// slot), any vCPU may keep a stale translation until its TLB is flushed;
// with FlagGlobal even a CR3 switch does not flush it. So until every vCPU
// has been flushed the caller must not give the PA a new use nor map the VA
// to a different PA.
//
// Precondition: vCPUs that could walk these tables are stopped.
func UnmapPage(mem vmm.PhysMem, cr3 uint64, la57 bool, va uint64) (pa uint64, err error) {
	t, err := Translate(mem, cr3, la57, va&^(uint64(Size4K)-1))
	if err != nil {
		return 0, fmt.Errorf("unmapping VA %#x: %w", va, err)
	}
	if t.Size != Size4K {
		return 0, fmt.Errorf("unmapping VA %#x: %s page: %w", va, t.Size, ErrLargePage)
	}
	leaf := t.Leaf()
	if err := writeEntry(mem, leaf.Addr, 0); err != nil {
		return 0, fmt.Errorf("unmapping VA %#x: clearing PTE at GPA %#x: %w", va, leaf.Addr, err)
	}
	return leaf.Value & addrMask, nil
}
