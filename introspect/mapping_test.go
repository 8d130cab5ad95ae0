package introspect

import (
	"errors"
	"testing"
)

func TestMapPageBuildsTablesAndTranslates(t *testing.T) {
	for _, la57 := range []bool{false, true} {
		m := newFakeMem(1 << 30)
		a := &pageAlloc{next: 0x10000}
		root, _ := a.page()
		// Stale bytes in pages the allocator hands out must not leak into
		// the new tables.
		for p := uint64(0x11000); p < 0x20000; p += 8 {
			m.putU64(t, p, 0xdead_beef_0000_0fff)
		}
		m.writes = nil
		const va = 0xffff_ffff_c000_5000
		if err := MapPage(m, root|0x123, la57, va, 0x7000, FlagWritable|FlagGlobal|FlagNX, a.page); err != nil {
			t.Fatalf("la57=%v: %v", la57, err)
		}
		if a.n != topLevel(la57) { // the root plus one table per lower level
			t.Fatalf("la57=%v: %d pages allocated, want %d", la57, a.n, topLevel(la57))
		}
		// The root-level entry is written last, publishing a finished chain.
		if last := m.writes[len(m.writes)-1]; last != root+index(va, topLevel(la57))*8 {
			t.Fatalf("la57=%v: last write at %#x, want the root entry", la57, last)
		}
		tr, err := Translate(m, root, la57, va+0x80)
		if err != nil {
			t.Fatal(err)
		}
		if tr.PA != 0x7080 || tr.Size != Size4K || tr.Flags != FlagPresent|FlagWritable|FlagGlobal|FlagNX {
			t.Fatalf("la57=%v: got PA %#x size %v flags %v", la57, tr.PA, tr.Size, tr.Flags)
		}
		// A neighbour in the same 2 MiB reuses the tables.
		n := a.n
		if err := MapPage(m, root, la57, va+0x1000, 0x8000, 0, a.page); err != nil {
			t.Fatal(err)
		}
		if a.n != n {
			t.Fatalf("la57=%v: neighbour allocated %d tables", la57, a.n-n)
		}
		tr, err = Translate(m, root, la57, va+0x1000)
		if err != nil || tr.PA != 0x8000 || tr.Flags != FlagPresent {
			t.Fatalf("la57=%v: neighbour: %+v %v", la57, tr, err)
		}
		// Untouched slots in the new tables are empty.
		if _, err := Translate(m, root, la57, va+0x2000); !errors.Is(err, ErrNotMapped) {
			t.Fatalf("la57=%v: unmapped neighbour: %v", la57, err)
		}
	}
}

func TestMapPageUserIntermediates(t *testing.T) {
	m := newFakeMem(1 << 30)
	a := &pageAlloc{next: 0x10000}
	root, _ := a.page()
	if err := MapPage(m, root, false, 0x40_0000, 0x5000, FlagUser, a.page); err != nil {
		t.Fatal(err)
	}
	tr, err := Translate(m, root, false, 0x40_0000)
	if err != nil || tr.Flags != FlagPresent|FlagUser {
		t.Fatalf("%+v %v", tr, err)
	}
}

func TestMapPageRefusals(t *testing.T) {
	const va = 0xffff_ffff_8120_0000
	setup := func(t *testing.T) (*fakeMem, *pageAlloc, uint64, map[int]uint64) {
		m := newFakeMem(1 << 30)
		a := &pageAlloc{next: 0x10000}
		root, _ := a.page()
		e := path(t, m, a, root, false, va, 1, map[int]uint64{4: kP | kW, 3: kP | kW, 2: kP | kW}, 0x3000, kP)
		return m, a, root, e
	}
	for _, tc := range []struct {
		name   string
		modify func(t *testing.T, m *fakeMem, e map[int]uint64)
		va, pa uint64
		flags  PTEFlags
		want   []error
		reject []error
	}{
		{name: "already mapped", va: va, pa: 0x9000, want: []error{ErrAlreadyMapped}, reject: []error{ErrLargePage}},
		{name: "inside 2M page", va: va + 0x5000, pa: 0x9000,
			modify: func(t *testing.T, m *fakeMem, e map[int]uint64) { m.putU64(t, e[2], 0x20_0000|kP|kW|kPS) },
			want:   []error{ErrAlreadyMapped, ErrLargePage}},
		{name: "inside 1G page", va: va + 0x5000, pa: 0x9000,
			modify: func(t *testing.T, m *fakeMem, e map[int]uint64) { m.putU64(t, e[3], 0x4000_0000|kP|kW|kPS) },
			want:   []error{ErrLargePage}},
		{name: "NX above executable", va: va + 0x1000, pa: 0x9000,
			modify: func(t *testing.T, m *fakeMem, e map[int]uint64) { m.putU64(t, e[3], m.u64(t, e[3])|kNX) },
			want:   []error{ErrPermConflict}},
		{name: "read-only above writable", va: va + 0x1000, pa: 0x9000, flags: FlagWritable | FlagNX,
			modify: func(t *testing.T, m *fakeMem, e map[int]uint64) { m.putU64(t, e[2], m.u64(t, e[2])&^kW) },
			want:   []error{ErrPermConflict}},
		{name: "supervisor above user", va: va + 0x1000, pa: 0x9000, flags: FlagUser, want: []error{ErrPermConflict}},
		{name: "unaligned VA", va: va + 0x1001, pa: 0x9000, want: []error{ErrBadArgument}},
		{name: "unaligned PA", va: va + 0x1000, pa: 0x9010, want: []error{ErrBadArgument}},
		{name: "PA above bit 51", va: va + 0x1000, pa: 1 << 52, want: []error{ErrBadArgument}},
		{name: "PAT flag", va: va + 0x1000, pa: 0x9000, flags: 1 << 7, want: []error{ErrBadArgument}},
		{name: "non-canonical", va: 0x8000_0000_0000, pa: 0x9000, want: []error{ErrNonCanonical}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, a, root, e := setup(t)
			if tc.modify != nil {
				tc.modify(t, m, e)
			}
			before := m.snapshot()
			n := a.n
			err := MapPage(m, root, false, tc.va, tc.pa, tc.flags, a.page)
			for _, w := range tc.want {
				if !errors.Is(err, w) {
					t.Fatalf("err %v, want %v", err, w)
				}
			}
			for _, r := range tc.reject {
				if errors.Is(err, r) {
					t.Fatalf("err %v should not match %v", err, r)
				}
			}
			if !m.equal(before) || a.n != n {
				t.Fatal("refused MapPage changed memory or allocated")
			}
		})
	}
}

func TestMapPageAllocFailureLinksNothing(t *testing.T) {
	m := newFakeMem(1 << 30)
	a := &pageAlloc{next: 0x10000}
	root, _ := a.page()
	a.limit = a.next + 2*4096 // two of the three tables
	rootEntry := root + index(0xffff_ffff_c000_0000, 4)*8
	err := MapPage(m, root, false, 0xffff_ffff_c000_0000, 0x5000, 0, a.page)
	if !errors.Is(err, errNoPages) {
		t.Fatalf("err %v, want the allocator's error", err)
	}
	if got := m.u64(t, rootEntry); got != 0 {
		t.Fatalf("root entry %#x, want untouched", got)
	}
}

func TestUnmapPage(t *testing.T) {
	m := newFakeMem(1 << 30)
	a := &pageAlloc{next: 0x10000}
	root, _ := a.page()
	const va = 0xffff_ffff_c000_5000
	if err := MapPage(m, root, false, va, 0x7000, FlagWritable, a.page); err != nil {
		t.Fatal(err)
	}
	pa, err := UnmapPage(m, root, false, va+0x10)
	if err != nil || pa != 0x7000 {
		t.Fatalf("UnmapPage = %#x, %v; want 0x7000", pa, err)
	}
	var nm *NotMappedError
	if _, err := Translate(m, root, false, va); !errors.As(err, &nm) || nm.Level != 1 {
		t.Fatalf("after unmap: %v, want not mapped at PT", err)
	}
	if _, err := UnmapPage(m, root, false, va); !errors.Is(err, ErrNotMapped) {
		t.Fatalf("second unmap: %v", err)
	}
	// The tables stay, so the VA can be mapped again without allocating.
	n := a.n
	if err := MapPage(m, root, false, va, 0x9000, 0, a.page); err != nil || a.n != n {
		t.Fatalf("remap: %v, %d allocations", err, a.n-n)
	}

	path(t, m, a, root, false, 0x20_0000, 2, nil, 0x20_0000, kP|kW)
	if _, err := UnmapPage(m, root, false, 0x20_0000); !errors.Is(err, ErrLargePage) {
		t.Fatalf("unmapping a 2M page: %v", err)
	}
}

func TestMapPageBadTablePages(t *testing.T) {
	for _, tc := range []struct {
		name string
		gpa  uint64
		want error
	}{
		{"unaligned", 0x10010, ErrBadArgument},
		{"outside RAM", 1 << 40, errOutOfRange},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newFakeMem(1 << 30)
			alloc := func() (uint64, error) { return tc.gpa, nil }
			err := MapPage(m, 0x1000, false, 0x40_0000, 0x5000, 0, alloc)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
			if got := m.u64(t, 0x1000); got != 0 {
				t.Fatalf("root entry %#x, want untouched", got)
			}
		})
	}
}

func TestErrorAndFlagText(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{(&NotMappedError{VA: 0x1000, Level: 3}).Error(), "VA 0x1000 not mapped: PDPT entry not present"},
		{(&ReservedBitError{VA: 0x2000, Level: 5, Entry: 0x83}).Error(), "VA 0x2000: PML5 entry 0x83 sets a reserved bit"},
		{(&MappedError{VA: 0x3000, Level: 2, Size: Size2M}).Error(), "VA 0x3000 already mapped by a 2M page at the PD level"},
		{(&MappedError{VA: 0x4000, Level: 1, Size: Size4K}).Error(), "VA 0x4000 already mapped by a 4K page at the PT level"},
		{Size1G.String(), "1G"},
		{PageSize(0x3000).String(), "0x3000-byte"},
		{(FlagPresent | FlagWritable | FlagNX).String(), "PW--X"},
		{(FlagPresent | FlagUser | FlagGlobal).String(), "P-UG-"},
		{levelName(4), "PML4"},
		{levelName(7), "level-7"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}
