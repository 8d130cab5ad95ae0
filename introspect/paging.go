package introspect

import (
	"encoding/binary"
	"fmt"

	"github.com/hvprobe/hvprobe/vmm"
)

// PTEFlags are paging-structure entry bits at their hardware positions
// (Intel SDM vol. 3A, 4.5). In a Translation they are the effective flags
// of the whole walk.
type PTEFlags uint64

const (
	FlagPresent  PTEFlags = 1 << 0
	FlagWritable PTEFlags = 1 << 1
	FlagUser     PTEFlags = 1 << 2
	FlagGlobal   PTEFlags = 1 << 8
	FlagNX       PTEFlags = 1 << 63
)

func (f PTEFlags) String() string {
	b := []byte("-----")
	for i, c := range []struct {
		bit PTEFlags
		ch  byte
	}{{FlagPresent, 'P'}, {FlagWritable, 'W'}, {FlagUser, 'U'}, {FlagGlobal, 'G'}, {FlagNX, 'X'}} {
		if f&c.bit != 0 {
			b[i] = c.ch
		}
	}
	return string(b)
}

// PageSize is the size of the page a translation ends in.
type PageSize uint64

const (
	Size4K PageSize = 1 << 12
	Size2M PageSize = 1 << 21
	Size1G PageSize = 1 << 30
)

var pageSizeNames = map[PageSize]string{Size4K: "4K", Size2M: "2M", Size1G: "1G"}

func (s PageSize) String() string {
	if n, ok := pageSizeNames[s]; ok {
		return n
	}
	return fmt.Sprintf("%#x-byte", uint64(s))
}

const (
	// addrMask selects bits 51:12: the next table or page frame in an entry
	// and the root table in CR3. It drops CR3's PCID/PWT/PCD and LAM bits,
	// and an entry's flags, XD (63) and protection key (62:59).
	addrMask = 0x000f_ffff_ffff_f000
	bitPS    = 1 << 7
	// bitAccessed is set in tables MapPage creates so the CPU need not
	// write it back during a walk.
	bitAccessed = 1 << 5
	entrySize   = 8
	maxLevels   = 5
	pageShift   = 12
)

// Entry is one paging-structure entry read during a walk.
type Entry struct {
	Level int    // 5 = PML5, 4 = PML4, 3 = PDPT, 2 = PD, 1 = PT
	Addr  uint64 // guest-physical address of the entry
	Value uint64
}

// Translation is the result of a successful walk.
type Translation struct {
	VA   uint64
	PA   uint64
	Size PageSize
	// Flags are the effective permissions: Present always; Writable and User
	// only if every level grants them; NX if any level sets it (the CPU's
	// combination, ignoring CR0.WP, SMEP/SMAP and EFER.NXE); Global from the
	// leaf entry.
	Flags PTEFlags
	// Walk holds the entries visited, top level first; Steps of them are
	// valid. A fixed array keeps Translate free of per-call slice growth.
	Walk  [maxLevels]Entry
	Steps int
}

// Visited returns the entries read during the walk, top level first.
func (t *Translation) Visited() []Entry { return t.Walk[:t.Steps] }

// Leaf returns the entry that mapped the page.
func (t *Translation) Leaf() Entry { return t.Walk[t.Steps-1] }

func topLevel(la57 bool) int {
	if la57 {
		return 5
	}
	return 4
}

// index returns the 9-bit table index va selects at level.
func index(va uint64, level int) uint64 {
	return (va >> (pageShift + 9*(level-1))) & 0x1ff
}

// Canonical reports whether va is sign-extended from bit 47, or from bit 56
// under LA57.
func Canonical(va uint64, la57 bool) bool {
	bits := 48
	if la57 {
		bits = 57
	}
	top := int64(va) >> (bits - 1)
	return top == 0 || top == -1
}

func readEntry(mem vmm.PhysMem, buf []byte, gpa uint64) (uint64, error) {
	if err := mem.ReadPhys(gpa, buf[:entrySize]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(buf), nil
}

func writeEntry(mem vmm.PhysMem, gpa, v uint64) error {
	var b [entrySize]byte
	binary.LittleEndian.PutUint64(b[:], v)
	return mem.WritePhys(gpa, b[:])
}

// Translate walks the page tables rooted at cr3 for va as the CPU would for
// a supervisor data access, with 5 levels if la57 (CR4.LA57) is set.
//
// Errors: ErrNonCanonical; *NotMappedError at the first non-present entry;
// *ReservedBitError for PS set in a PML5E/PML4E; or a wrapped PhysMem
// error if a table lies outside guest memory.
func Translate(mem vmm.PhysMem, cr3 uint64, la57 bool, va uint64) (Translation, error) {
	t := Translation{VA: va}
	if !Canonical(va, la57) {
		return t, fmt.Errorf("translating VA %#x: %w", va, ErrNonCanonical)
	}
	var buf [entrySize]byte
	table := cr3 & addrMask
	eff := FlagWritable | FlagUser
	// The loop has no condition: level 1 always returns.
	for level := topLevel(la57); ; level-- {
		ea := table + index(va, level)*entrySize
		e, err := readEntry(mem, buf[:], ea)
		if err != nil {
			return t, fmt.Errorf("translating VA %#x: reading %s entry at GPA %#x: %w", va, levelName(level), ea, err)
		}
		t.Walk[t.Steps] = Entry{Level: level, Addr: ea, Value: e}
		t.Steps++
		if e&uint64(FlagPresent) == 0 {
			return t, &NotMappedError{VA: va, Level: level}
		}
		eff &= PTEFlags(e) | ^(FlagWritable | FlagUser)
		eff |= PTEFlags(e) & FlagNX
		var size PageSize
		switch {
		case level == 1:
			// Bit 7 of a PTE is PAT, not PS.
			size = Size4K
		case e&bitPS == 0:
			table = e & addrMask
			continue
		case level == 3:
			size = Size1G
		case level == 2:
			size = Size2M
		default:
			return t, &ReservedBitError{VA: va, Level: level, Entry: e}
		}
		off := uint64(size) - 1
		t.PA = (e & addrMask &^ off) | (va & off)
		t.Size = size
		t.Flags = eff | FlagPresent | PTEFlags(e)&FlagGlobal
		return t, nil
	}
}
