package introspect

import (
	"errors"
	"testing"

	"github.com/hvprobe/hvprobe/vmm"
)

func TestVirtMemLoadStore(t *testing.T) {
	ram := vmm.NewMemoryFromBytes(make([]byte, 1<<24))
	a := &pageAlloc{next: 0x10_0000}
	alloc := func() (uint64, error) { return a.page() }
	root, _ := a.page()
	const base = 0xffff_c900_0001_0000
	for _, m := range []struct {
		va, pa uint64
		flags  PTEFlags
	}{{base, 0x40_0000, FlagWritable}, {base + 0x1000, 0x40_1000, 0}, {base + 0x2000, 1 << 40, FlagWritable}} {
		if err := MapPage(ram, root, false, m.va, m.pa, m.flags, alloc); err != nil {
			t.Fatal(err)
		}
	}
	v := NewVirtMem(ram, root, false)
	for _, c := range []struct {
		off  uint64
		size int
		val  uint64
	}{{0x10, 8, 0x1122334455667788}, {0x20, 4, 0xdeadbeef}, {0x24, 2, 0xcafe}, {0x27, 1, 0x5a}, {0x31, 8, 0x0102030405060708}} {
		if err := v.Store(base+c.off, c.size, c.val); err != nil {
			t.Fatalf("Store %d bytes at +%#x: %v", c.size, c.off, err)
		}
		got, err := v.Load(base+c.off, c.size)
		if err != nil || got != c.val {
			t.Fatalf("Load %d bytes at +%#x = %#x, %v; want %#x", c.size, c.off, got, err, c.val)
		}
		var b [8]byte
		if err := ram.ReadPhys(0x40_0000+c.off, b[:c.size]); err != nil || b[0] != byte(c.val) || b[c.size-1] != byte(c.val>>(8*(c.size-1))) {
			t.Fatalf("RAM at +%#x holds % x", c.off, b[:c.size])
		}
	}
	if err := v.Store(base+0x1000, 4, 1); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("store to a read-only page: %v", err)
	}
	if _, err := v.Load(base+0x1000, 4); err != nil {
		t.Fatalf("load from a read-only page: %v", err)
	}
	if _, err := v.Load(base+0xffc, 8); err == nil {
		t.Fatal("a load crossing a page succeeded")
	}
	if _, err := v.Load(base+0x2000, 8); !errors.Is(err, vmm.ErrOutOfRange) {
		t.Fatalf("load outside RAM: %v", err)
	}
	if _, err := v.Load(base+0x3000, 8); !errors.Is(err, ErrNotMapped) {
		t.Fatalf("load from an unmapped page: %v", err)
	}
	if _, err := v.Load(base, 3); err == nil {
		t.Fatal("a 3-byte load succeeded")
	}
	if _, err := NewVirtMem(newFakeMem(1<<24), root, false).Load(base, 8); err == nil {
		t.Fatal("memory without atomic access gave a load")
	}
}
