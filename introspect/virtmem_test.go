package introspect

import (
	"bytes"
	"errors"
	"testing"
)

// vmFixture maps VA pages base, base+4K and base+12K to scattered PAs;
// base+8K is a hole. base+16K maps a PA outside guest RAM.
type vmFixture struct {
	m    *fakeMem
	vm   *VirtMem
	base uint64
	pas  [3]uint64
	bad  uint64
}

func newVMFixture(t *testing.T) *vmFixture {
	t.Helper()
	f := &vmFixture{m: newFakeMem(1 << 26), base: 0xffff_c900_0001_0000, pas: [3]uint64{0x50_3000, 0x40_1000, 0x60_0000}}
	a := &pageAlloc{next: 0x10_0000}
	root, _ := a.page()
	for i, off := range []uint64{0, 0x1000, 0x3000} {
		if err := MapPage(f.m, root, false, f.base+off, f.pas[i], FlagWritable|FlagNX, a.page); err != nil {
			t.Fatal(err)
		}
	}
	f.bad = f.base + 0x4000
	if err := MapPage(f.m, root, false, f.bad, 1<<40, FlagWritable|FlagNX, a.page); err != nil {
		t.Fatal(err)
	}
	f.vm = NewVirtMem(f.m, root, false)
	return f
}

func TestVirtMemReadWriteAcrossPages(t *testing.T) {
	f := newVMFixture(t)
	data := []byte("0123456789abcdef")
	va := f.base + 0x1000 - 6
	if err := f.vm.Write(va, data); err != nil {
		t.Fatal(err)
	}
	if got := f.m.bytes(t, f.pas[0]+0xffa, 6); !bytes.Equal(got, data[:6]) {
		t.Fatalf("first page holds %q", got)
	}
	if got := f.m.bytes(t, f.pas[1], 10); !bytes.Equal(got, data[6:]) {
		t.Fatalf("second page holds %q", got)
	}
	got := make([]byte, len(data))
	if err := f.vm.Read(va, got); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("Read = %q, %v", got, err)
	}
	u64, err := f.vm.ReadU64(va + 2)
	if err != nil || u64 != 0x3938373635343332 {
		t.Fatalf("ReadU64 = %#x, %v", u64, err)
	}
	u32, err := f.vm.ReadU32(va + 4)
	if err != nil || u32 != 0x37363534 {
		t.Fatalf("ReadU32 = %#x, %v", u32, err)
	}
	u16, err := f.vm.ReadU16(va + 5)
	if err != nil || u16 != 0x3635 {
		t.Fatalf("ReadU16 = %#x, %v", u16, err)
	}
}

func TestVirtMemUnmappedNamesPage(t *testing.T) {
	f := newVMFixture(t)
	err := f.vm.Read(f.base+0x1ff0, make([]byte, 0x20))
	var nm *NotMappedError
	if !errors.As(err, &nm) || nm.VA != f.base+0x2000 || nm.Level != 1 {
		t.Fatalf("err %v, want not mapped at VA %#x", err, f.base+0x2000)
	}
}

func TestVirtMemWriteAllOrNothing(t *testing.T) {
	f := newVMFixture(t)
	// Into the hole: the mapped first page must stay untouched.
	before := f.m.snapshot()
	err := f.vm.Write(f.base+0x1ff0, bytes.Repeat([]byte{0xcc}, 0x20))
	var nm *NotMappedError
	if !errors.As(err, &nm) || nm.VA != f.base+0x2000 {
		t.Fatalf("err %v, want not mapped at the hole", err)
	}
	// Into a page whose PA is outside RAM: caught before anything is written.
	if err := f.vm.Write(f.bad-8, bytes.Repeat([]byte{0xcc}, 16)); !errors.Is(err, errOutOfRange) {
		t.Fatalf("err %v, want the PhysMem error", err)
	}
	if !f.m.equal(before) {
		t.Fatal("failed Write changed memory")
	}
	// A physical write that fails after earlier pages were written: they
	// are restored.
	f.m.putU64(t, f.pas[0]+0xff8, 0x1122334455667788)
	before = f.m.snapshot()
	f.m.failWrite[f.pas[1]] = true
	if err := f.vm.Write(f.base+0xff8, bytes.Repeat([]byte{0xcc}, 16)); !errors.Is(err, errOutOfRange) {
		t.Fatalf("err %v, want the injected failure", err)
	}
	if !f.m.equal(before) {
		t.Fatalf("first page not restored: %#x", f.m.u64(t, f.pas[0]+0xff8))
	}
}

func TestVirtMemLargePage(t *testing.T) {
	m := newFakeMem(1 << 26)
	a := &pageAlloc{next: 0x10000}
	root, _ := a.page()
	const va = 0xffff_8880_0020_0000
	path(t, m, a, root, false, va, 2, nil, 0x20_0000, kP|kW)
	vm := NewVirtMem(m, root, false)
	data := bytes.Repeat([]byte("xy"), 0x1000) // spans two 4K frames of the 2M page
	if err := vm.Write(va+0x800, data); err != nil {
		t.Fatal(err)
	}
	if got := m.bytes(t, 0x20_0800, len(data)); !bytes.Equal(got, data) {
		t.Fatal("2M page content mismatch")
	}
}

func TestReadCString(t *testing.T) {
	f := newVMFixture(t)
	write := func(va uint64, s string) {
		if err := f.vm.Write(va, []byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	write(f.base+0x10, "swapper/0\x00junk")
	write(f.base+0xffc, "kworker\x00") // crosses into the second page
	write(f.base+0x1ffb, "edge\x00")   // NUL is the last byte before the hole
	write(f.base+0x3ff8, "nonulnon")
	write(f.base+0x100, "0123456789abcdefghij\x00")
	for _, tc := range []struct {
		name string
		va   uint64
		max  int
		want string
		err  error
	}{
		{"simple", f.base + 0x10, 64, "swapper/0", nil},
		{"across pages", f.base + 0xffc, 64, "kworker", nil},
		{"NUL before unmapped page", f.base + 0x1ffb, 4096, "edge", nil},
		{"truncated", f.base + 0x100, 16, "0123456789abcdef", ErrTruncated},
		{"exactly fits", f.base + 0x100, 20, "0123456789abcdefghij", ErrTruncated},
		{"fits with NUL", f.base + 0x100, 21, "0123456789abcdefghij", nil},
		{"ends at page end", f.base + 0x1ffc, 64, "dge", nil},
		{"runs into bad PA", f.base + 0x3ff8, 64, "nonulnon", errOutOfRange},
		{"zero max", f.base + 0x10, 0, "", ErrTruncated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := f.vm.ReadCString(tc.va, tc.max)
			if got != tc.want || !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
				t.Fatalf("got %q, %v; want %q, %v", got, err, tc.want, tc.err)
			}
		})
	}
	// No NUL before the hole.
	write(f.base+0x1ff0, "0123456789abcdef")
	if got, err := f.vm.ReadCString(f.base+0x1ff0, 64); got != "0123456789abcdef" || !errors.Is(err, ErrNotMapped) {
		t.Fatalf("got %q, %v; want the prefix and ErrNotMapped", got, err)
	}
}
