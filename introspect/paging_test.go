package introspect

import (
	"errors"
	"testing"
)

const (
	kP  = uint64(FlagPresent)
	kW  = uint64(FlagWritable)
	kU  = uint64(FlagUser)
	kG  = uint64(FlagGlobal)
	kNX = uint64(FlagNX)
	kPS = uint64(bitPS)
)

// path builds, by hand and independently of MapPage, the tables for va
// down to leafLevel. upper[l] is the flag set of the level-l entry; the
// leaf entry is leafPA|leafFlags (PS added for large leaves). It returns
// the GPA of each level's entry.
func path(t testing.TB, m *fakeMem, a *pageAlloc, root uint64, la57 bool, va uint64, leafLevel int, upper map[int]uint64, leafPA, leafFlags uint64) map[int]uint64 {
	t.Helper()
	entries := map[int]uint64{}
	table := root
	for level := topLevel(la57); level > leafLevel; level-- {
		ea := table + index(va, level)*8
		entries[level] = ea
		next, _ := a.page()
		f, ok := upper[level]
		if !ok {
			f = kP | kW
		}
		m.putU64(t, ea, next|f)
		table = next
	}
	ea := table + index(va, leafLevel)*8
	entries[leafLevel] = ea
	if leafLevel > 1 {
		leafFlags |= kPS
	}
	m.putU64(t, ea, leafPA|leafFlags)
	return entries
}

func TestTranslatePageSizes(t *testing.T) {
	const va = 0xffff_ffff_8123_4567
	for _, tc := range []struct {
		name  string
		level int
		leaf  uint64
		size  PageSize
		pa    uint64
	}{
		{"4K", 1, 0x0765_4000, Size4K, 0x0765_4567},
		{"2M", 2, 0x4020_0000, Size2M, 0x4020_0000 | (va & 0x1f_ffff)},
		{"1G", 3, 0x8_4000_0000, Size1G, 0x8_4000_0000 | (va & 0x3fff_ffff)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newFakeMem(1 << 30)
			a := &pageAlloc{next: 0x10000}
			root, _ := a.page()
			entries := path(t, m, a, root, false, va, tc.level, nil, tc.leaf, kP|kW|kG)
			// PCID bits and bit 63 of CR3 must not disturb the walk.
			tr, err := Translate(m, root|0x5a5|1<<63, false, va)
			if err != nil {
				t.Fatal(err)
			}
			if tr.PA != tc.pa || tr.Size != tc.size {
				t.Fatalf("PA %#x size %v, want %#x %v", tr.PA, tr.Size, tc.pa, tc.size)
			}
			if want := FlagPresent | FlagWritable | FlagGlobal; tr.Flags != want {
				t.Fatalf("flags %v, want %v", tr.Flags, want)
			}
			if got, want := len(tr.Visited()), 5-tc.level; got != want {
				t.Fatalf("visited %d entries, want %d", got, want)
			}
			for _, e := range tr.Visited() {
				if e.Addr != entries[e.Level] {
					t.Fatalf("level %d entry at %#x, want %#x", e.Level, e.Addr, entries[e.Level])
				}
			}
			if tr.Leaf().Level != tc.level {
				t.Fatalf("leaf level %d, want %d", tr.Leaf().Level, tc.level)
			}
		})
	}
}

func TestTranslateIgnoresHighBits(t *testing.T) {
	m := newFakeMem(1 << 30)
	a := &pageAlloc{next: 0x10000}
	root, _ := a.page()
	const va = 0x7f00_1234_5000
	// Protection key (62:59) and ignored bits (58:52) in every entry, and
	// PAT (bit 7) in the PTE, which is not PS there.
	junk := uint64(0x7ff) << 52
	path(t, m, a, root, false, va, 1, map[int]uint64{4: kP | kW | kU | junk, 3: kP | kW | kU | junk, 2: kP | kW | kU | junk}, 0x0abc_d000, kP|kU|junk|kPS)
	tr, err := Translate(m, root, false, va+0x10)
	if err != nil {
		t.Fatal(err)
	}
	if tr.PA != 0x0abc_d010 || tr.Size != Size4K {
		t.Fatalf("PA %#x size %v, want 0xabcd010 4K", tr.PA, tr.Size)
	}
	if tr.Flags != FlagPresent|FlagUser {
		t.Fatalf("flags %v", tr.Flags)
	}
}

func TestTranslateNotPresentAtEachLevel(t *testing.T) {
	for _, la57 := range []bool{false, true} {
		top := topLevel(la57)
		for level := top; level >= 1; level-- {
			m := newFakeMem(1 << 30)
			a := &pageAlloc{next: 0x10000}
			root, _ := a.page()
			const va = 0xffff_ffff_c000_3000
			entries := path(t, m, a, root, la57, va, 1, nil, 0x5000, kP|kW)
			m.putU64(t, entries[level], m.u64(t, entries[level])&^kP)
			_, err := Translate(m, root, la57, va)
			var nm *NotMappedError
			if !errors.As(err, &nm) || !errors.Is(err, ErrNotMapped) {
				t.Fatalf("la57=%v level %d: err %v, want *NotMappedError", la57, level, err)
			}
			if nm.Level != level || nm.VA != va {
				t.Fatalf("la57=%v: got %+v, want level %d VA %#x", la57, nm, level, uint64(va))
			}
		}
	}
}

func TestTranslatePermissionCombination(t *testing.T) {
	all := kP | kW | kU
	for _, tc := range []struct {
		name  string
		upper map[int]uint64
		leaf  uint64
		want  PTEFlags
	}{
		{"all open", map[int]uint64{4: all, 3: all, 2: all}, all, FlagPresent | FlagWritable | FlagUser},
		{"leaf read-only", map[int]uint64{4: all, 3: all, 2: all}, kP | kU, FlagPresent | FlagUser},
		{"PDPT read-only", map[int]uint64{4: all, 3: kP | kU, 2: all}, all, FlagPresent | FlagUser},
		{"PML4 supervisor", map[int]uint64{4: kP | kW, 3: all, 2: all}, all, FlagPresent | FlagWritable},
		{"PD NX", map[int]uint64{4: all, 3: all, 2: all | kNX}, all, FlagPresent | FlagWritable | FlagUser | FlagNX},
		{"leaf NX global", map[int]uint64{4: all, 3: all, 2: all}, kP | kW | kG | kNX, FlagPresent | FlagWritable | FlagGlobal | FlagNX},
		{"global only counts at leaf", map[int]uint64{4: all | kG, 3: all, 2: all}, all, FlagPresent | FlagWritable | FlagUser},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newFakeMem(1 << 30)
			a := &pageAlloc{next: 0x10000}
			root, _ := a.page()
			const va = 0x40_0000
			path(t, m, a, root, false, va, 1, tc.upper, 0x9000, tc.leaf)
			tr, err := Translate(m, root, false, va)
			if err != nil {
				t.Fatal(err)
			}
			if tr.Flags != tc.want {
				t.Fatalf("flags %v, want %v", tr.Flags, tc.want)
			}
		})
	}
}

func TestTranslateFiveLevel(t *testing.T) {
	m := newFakeMem(1 << 30)
	a := &pageAlloc{next: 0x10000}
	root, _ := a.page()
	// Bits 56:48 select the PML5 slot; canonical only with LA57.
	const va = 0xff11_2233_4455_6789
	entries := path(t, m, a, root, true, va, 2, nil, 0x20_0000, kP|kW)
	tr, err := Translate(m, root, true, va)
	if err != nil {
		t.Fatal(err)
	}
	if tr.PA != 0x20_0000|(va&0x1f_ffff) || tr.Size != Size2M || tr.Steps != 4 {
		t.Fatalf("got PA %#x size %v steps %d", tr.PA, tr.Size, tr.Steps)
	}
	if tr.Walk[0].Level != 5 || tr.Walk[0].Addr != root+index(va, 5)*8 || entries[5] != tr.Walk[0].Addr {
		t.Fatalf("first step %+v", tr.Walk[0])
	}
	if index(va, 5) != 0x111 {
		t.Fatalf("PML5 index %#x, want 0x111", index(va, 5))
	}
	if _, err := Translate(m, root, false, va); !errors.Is(err, ErrNonCanonical) {
		t.Fatalf("4-level walk of a 57-bit VA: %v, want ErrNonCanonical", err)
	}
}

func TestCanonical(t *testing.T) {
	for _, tc := range []struct {
		va         uint64
		four, five bool
	}{
		{0, true, true},
		{0x0000_7fff_ffff_ffff, true, true},
		{0x0000_8000_0000_0000, false, true},
		{0xffff_8000_0000_0000, true, true},
		{0xffff_7fff_ffff_ffff, false, true},
		{0x00ff_ffff_ffff_ffff, false, true},
		{0x0100_0000_0000_0000, false, false},
		{0xff00_0000_0000_0000, false, true},
		{0xfe00_0000_0000_0000, false, false},
		{0x8000_0000_0000_0000, false, false},
	} {
		if got := Canonical(tc.va, false); got != tc.four {
			t.Errorf("Canonical(%#x, 4-level) = %v", tc.va, got)
		}
		if got := Canonical(tc.va, true); got != tc.five {
			t.Errorf("Canonical(%#x, 5-level) = %v", tc.va, got)
		}
	}
}

func TestTranslateReservedPS(t *testing.T) {
	for _, la57 := range []bool{false, true} {
		m := newFakeMem(1 << 30)
		a := &pageAlloc{next: 0x10000}
		root, _ := a.page()
		const va = 0xffff_8880_0000_0000
		entries := path(t, m, a, root, la57, va, 1, nil, 0x3000, kP)
		ea := entries[topLevel(la57)]
		m.putU64(t, ea, m.u64(t, ea)|kPS)
		_, err := Translate(m, root, la57, va)
		var re *ReservedBitError
		if !errors.As(err, &re) || !errors.Is(err, ErrReservedBit) || re.Level != topLevel(la57) {
			t.Fatalf("la57=%v: %v, want *ReservedBitError at the top level", la57, err)
		}
	}
}

func TestTranslateTableOutsideRAM(t *testing.T) {
	m := newFakeMem(1 << 20)
	m.putU64(t, 0x1000+index(0x1000, 4)*8, 0x4000_0000|kP)
	_, err := Translate(m, 0x1000, false, 0x1000)
	if !errors.Is(err, errOutOfRange) || errors.Is(err, ErrNotMapped) {
		t.Fatalf("err %v, want the PhysMem error", err)
	}
}

func BenchmarkTranslate(b *testing.B) {
	m := newFakeMem(1 << 30)
	a := &pageAlloc{next: 0x10000}
	root, _ := a.page()
	const va = 0xffff_ffff_8123_4567
	path(b, m, a, root, false, va, 1, nil, 0x0765_4000, kP|kW)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Translate(m, root, false, va); err != nil {
			b.Fatal(err)
		}
	}
}
