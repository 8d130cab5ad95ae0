package introspect

import (
	"encoding/binary"
	"fmt"

	"github.com/hvprobe/hvprobe/vmm"
)

// VirtMem is guest-virtual memory as seen through one page-table root.
// It caches no translation, so it always reflects the tables as they are
// now; it is as safe for concurrent use as the PhysMem under it.
type VirtMem struct {
	mem  vmm.PhysMem
	cr3  uint64
	la57 bool
}

// NewVirtMem binds mem to the page tables rooted at cr3 (flag and PCID bits
// are ignored), 5-level if la57.
func NewVirtMem(mem vmm.PhysMem, cr3 uint64, la57 bool) *VirtMem {
	return &VirtMem{mem: mem, cr3: cr3 & addrMask, la57: la57}
}

// CR3 returns the physical address of the root table.
func (v *VirtMem) CR3() uint64 { return v.cr3 }

// LA57 reports whether the walk has 5 levels.
func (v *VirtMem) LA57() bool { return v.la57 }

// Translate translates va through v's page tables.
func (v *VirtMem) Translate(va uint64) (Translation, error) {
	return Translate(v.mem, v.cr3, v.la57, va)
}

// span is one physically contiguous piece of a virtual range.
type span struct {
	va, pa uint64
	n      int
}

// spanAt translates va and returns how much of want bytes from va lie in
// the same page.
func (v *VirtMem) spanAt(va uint64, want int) (span, error) {
	t, err := v.Translate(va)
	if err != nil {
		return span{}, err
	}
	n := uint64(t.Size) - va&(uint64(t.Size)-1)
	if n > uint64(want) {
		n = uint64(want)
	}
	return span{va: va, pa: t.PA, n: int(n)}, nil
}

// Read fills p from guest-virtual address va, translating each page
// separately. On error p holds an unspecified prefix of the data; a
// *NotMappedError names the VA of the first unmapped page.
func (v *VirtMem) Read(va uint64, p []byte) error {
	for done := 0; done < len(p); {
		s, err := v.spanAt(va+uint64(done), len(p)-done)
		if err != nil {
			return fmt.Errorf("reading %d bytes at VA %#x: %w", len(p), va, err)
		}
		if err := v.mem.ReadPhys(s.pa, p[done:done+s.n]); err != nil {
			return fmt.Errorf("reading %d bytes at VA %#x: VA %#x (PA %#x): %w", len(p), va, s.va, s.pa, err)
		}
		done += s.n
	}
	return nil
}

// Write copies p to guest-virtual address va, all or nothing: every page is
// translated first and its old contents saved (which also proves each PA is
// inside guest RAM), then the pages are written; if a physical write still
// fails, the pages already written are restored. Write ignores the R/W bit,
// as a debugger's poke does.
func (v *VirtMem) Write(va uint64, p []byte) error {
	var spans []span
	for done := 0; done < len(p); {
		s, err := v.spanAt(va+uint64(done), len(p)-done)
		if err != nil {
			return fmt.Errorf("writing %d bytes at VA %#x: %w", len(p), va, err)
		}
		spans = append(spans, s)
		done += s.n
	}
	saved := make([]byte, len(p))
	off := 0
	for _, s := range spans {
		if err := v.mem.ReadPhys(s.pa, saved[off:off+s.n]); err != nil {
			return fmt.Errorf("writing %d bytes at VA %#x: VA %#x (PA %#x): %w", len(p), va, s.va, s.pa, err)
		}
		off += s.n
	}
	off = 0
	for i, s := range spans {
		if err := v.mem.WritePhys(s.pa, p[off:off+s.n]); err != nil {
			v.restore(spans[:i], saved)
			return fmt.Errorf("writing %d bytes at VA %#x: VA %#x (PA %#x): %w", len(p), va, s.va, s.pa, err)
		}
		off += s.n
	}
	return nil
}

// restore puts back saved bytes over spans. Those PAs were just written
// successfully, so writing them again is not expected to fail, and a
// failure here could not be reported better than the original one.
func (v *VirtMem) restore(spans []span, saved []byte) {
	off := 0
	for _, s := range spans {
		_ = v.mem.WritePhys(s.pa, saved[off:off+s.n])
		off += s.n
	}
}

// Load reads the size-byte (1, 2, 4 or 8) value at va, which must not
// cross a 4 KiB page, as the CPU would: when va is aligned, one load of
// that width (vmm.AtomicPhys).
func (v *VirtMem) Load(va uint64, size int) (uint64, error) {
	pa, am, err := v.atomicAt(va, size, false)
	if err != nil {
		return 0, err
	}
	return am.LoadPhys(pa, size)
}

// Store writes the low size bytes of x at va as the CPU would (see Load).
// Unlike Write it honours the R/W bit: a Linux kernel runs with CR0.WP
// set, so the CPU would fault on a page the walk does not grant writes.
func (v *VirtMem) Store(va uint64, size int, x uint64) error {
	pa, am, err := v.atomicAt(va, size, true)
	if err != nil {
		return err
	}
	return am.StorePhys(pa, size, x)
}

func (v *VirtMem) atomicAt(va uint64, size int, write bool) (uint64, vmm.AtomicPhys, error) {
	am, ok := v.mem.(vmm.AtomicPhys)
	if !ok {
		return 0, nil, fmt.Errorf("accessing VA %#x: the memory under these page tables has no atomic access", va)
	}
	if va&(uint64(Size4K)-1)+uint64(size) > uint64(Size4K) {
		return 0, nil, fmt.Errorf("accessing %d bytes at VA %#x: the access crosses a page", size, va)
	}
	t, err := v.Translate(va)
	if err != nil {
		return 0, nil, fmt.Errorf("accessing %d bytes at VA %#x: %w", size, va, err)
	}
	if write && t.Flags&FlagWritable == 0 {
		return 0, nil, fmt.Errorf("writing %d bytes at VA %#x: %w", size, va, ErrReadOnly)
	}
	return t.PA, am, nil
}

// ReadU16 reads a little-endian uint16 at va.
func (v *VirtMem) ReadU16(va uint64) (uint16, error) {
	var b [2]byte
	err := v.Read(va, b[:])
	return binary.LittleEndian.Uint16(b[:]), err
}

// ReadU32 reads a little-endian uint32 at va.
func (v *VirtMem) ReadU32(va uint64) (uint32, error) {
	var b [4]byte
	err := v.Read(va, b[:])
	return binary.LittleEndian.Uint32(b[:]), err
}

// ReadU64 reads a little-endian uint64 at va.
func (v *VirtMem) ReadU64(va uint64) (uint64, error) {
	var b [8]byte
	err := v.Read(va, b[:])
	return binary.LittleEndian.Uint64(b[:]), err
}

// ReadCString reads a NUL-terminated string of at most max bytes (NUL not
// included) at va. It reads page by page and stops at the NUL, so a string
// that ends just before an unmapped page reads fine. If there is no NUL
// within max bytes it returns the max bytes read together with an error
// wrapping ErrTruncated, so callers that accept a clipped string (a comm
// field is exactly 16 bytes with no room for a NUL in some layouts) can keep
// it.
func (v *VirtMem) ReadCString(va uint64, max int) (string, error) {
	if max < 0 {
		max = 0
	}
	buf := make([]byte, 0, min(max, int(Size4K)))
	for len(buf) < max {
		cur := va + uint64(len(buf))
		// Never read past the 4 KiB page: the next one may be unmapped.
		n := min(max-len(buf), int(uint64(Size4K)-cur&(uint64(Size4K)-1)))
		chunk := make([]byte, n)
		if err := v.Read(cur, chunk); err != nil {
			return string(buf), fmt.Errorf("reading C string at VA %#x: %w", va, err)
		}
		for i, c := range chunk {
			if c == 0 {
				return string(append(buf, chunk[:i]...)), nil
			}
		}
		buf = append(buf, chunk...)
	}
	return string(buf), fmt.Errorf("reading C string at VA %#x: %d bytes: %w", va, max, ErrTruncated)
}
