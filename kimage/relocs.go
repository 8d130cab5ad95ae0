package kimage

import (
	"encoding/binary"
	"fmt"
)

const (
	// StartKernelMap is __START_KERNEL_map: the virtual address of
	// physical address 0 in the kernel text mapping.
	StartKernelMap = 0xffffffff80000000
	// PhysicalAlign is CONFIG_PHYSICAL_ALIGN on x86-64 (2 MiB), the
	// granularity of both KASLR slides (MIN_KERNEL_ALIGN).
	PhysicalAlign = 2 << 20
	// KernelImageSize is KERNEL_IMAGE_SIZE with RANDOMIZE_BASE: the
	// kernel text mapping must end below StartKernelMap + 1 GiB.
	KernelImageSize = 1 << 30
)

// RelocKind tells how a relocation is applied.
type RelocKind int

const (
	// Reloc32: the 32-bit field gets delta added.
	Reloc32 RelocKind = iota
	// RelocInverse32: the 32-bit field gets delta subtracted (x86-64
	// references from per-CPU data to the kernel).
	RelocInverse32
	// Reloc64: the 64-bit field gets delta added.
	Reloc64
)

func (k RelocKind) String() string {
	switch k {
	case Reloc32:
		return "32-bit"
	case RelocInverse32:
		return "inverse 32-bit"
	case Reloc64:
		return "64-bit"
	}
	return fmt.Sprintf("RelocKind(%d)", int(k))
}

// Relocs is the table arch/x86/tools/relocs appends to vmlinux.bin. Each
// entry is the link-time virtual address of a field to patch (stored as
// 32 bits, sign-extended). Lists are in table order.
type Relocs struct {
	Rel32 []uint64
	Inv32 []uint64
	Rel64 []uint64
}

// parseRelocs reads the table backwards from the end of tail, as
// handle_relocations does: 32-bit relocations up to a zero, then inverse
// 32-bit ones up to a zero, then 64-bit ones up to a zero. Bytes before
// the last terminator are ignored, as the kernel never reads them.
func parseRelocs(tail []byte) (*Relocs, error) {
	if len(tail)%4 != 0 {
		return nil, formatErr("relocation table", 0, "%d bytes is not a whole number of 32-bit entries", len(tail))
	}
	pos := len(tail)
	next := func() (uint32, bool) {
		if pos < 4 {
			return 0, false
		}
		pos -= 4
		return binary.LittleEndian.Uint32(tail[pos:]), true
	}
	var lists [3][]uint64
	for k := range lists {
		for {
			v, ok := next()
			if !ok {
				return nil, formatErr("relocation table", 0, "%d-byte table ends before the terminator of the %s list", len(tail), RelocKind(k))
			}
			if v == 0 {
				break
			}
			lists[k] = append(lists[k], uint64(int64(int32(v))))
		}
	}
	// Read backwards, the lists came out reversed.
	for _, l := range lists {
		for i, j := 0, len(l)-1; i < j; i, j = i+1, j-1 {
			l[i], l[j] = l[j], l[i]
		}
	}
	return &Relocs{Rel32: lists[Reloc32], Inv32: lists[RelocInverse32], Rel64: lists[Reloc64]}, nil
}

// Load copies every PT_LOAD segment to ram[Paddr+physDelta:], zeroes the
// rest of its Memsz (bss), and, when virtDelta != 0, applies the
// relocation table as handle_relocations does on x86-64 for a kernel
// decompressed physDelta above its link address and run virtDelta above
// its link-time virtual address. It returns the physical address of the
// entry point (Entry + physDelta). Both deltas must be multiples of
// PhysicalAlign; offsets are added modulo 2^64.
//
// Everything is checked before ram is written: on error ram is untouched.
func (img *Image) Load(ram []byte, physDelta, virtDelta uint64) (entry uint64, err error) {
	if physDelta%PhysicalAlign != 0 {
		return 0, fmt.Errorf("physical delta %#x: %w", physDelta, ErrMisaligned)
	}
	if virtDelta%PhysicalAlign != 0 {
		return 0, fmt.Errorf("virtual delta %#x: %w", virtDelta, ErrMisaligned)
	}
	if virtDelta != 0 && img.Relocs == nil {
		return 0, fmt.Errorf("relocating by %#x: %w", virtDelta, ErrNoRelocs)
	}
	if len(img.Segments) == 0 {
		return 0, formatErr("program headers", 0, "no PT_LOAD segment to load")
	}
	size := uint64(len(ram))
	lo, hi := ^uint64(0), uint64(0)
	for i, s := range img.Segments {
		dst := s.Paddr + physDelta
		if _, ok := span(dst, s.Memsz, size); !ok {
			return 0, fmt.Errorf("segment %d [%#x, +%#x) with physical delta %#x does not fit in %#x bytes of RAM: %w",
				i, s.Paddr, s.Memsz, physDelta, size, ErrOutOfRange)
		}
		lo, hi = min(lo, dst), max(hi, dst+s.Memsz)
	}
	if virtDelta != 0 {
		// extract_kernel refuses a virtual slide that leaves the mapping.
		if end := lo - physDelta + virtDelta + (hi - lo); end > KernelImageSize || end < virtDelta {
			return 0, fmt.Errorf("virtual delta %#x puts the kernel end at %#x beyond KERNEL_IMAGE_SIZE: %w", virtDelta, end, ErrOutOfRange)
		}
		if err := img.Relocs.check(lo, hi, physDelta); err != nil {
			return 0, err
		}
	}
	for _, s := range img.Segments {
		dst := ram[s.Paddr+physDelta : s.Paddr+physDelta+s.Memsz]
		clear(dst[copy(dst, s.Data):])
	}
	if virtDelta != 0 {
		img.Relocs.apply(ram, physDelta, virtDelta)
	}
	return img.Entry + physDelta, nil
}

func (k RelocKind) width() uint64 {
	if k == Reloc64 {
		return 8
	}
	return 4
}

func (r *Relocs) lists() [3][]uint64 { return [3][]uint64{r.Rel32, r.Inv32, r.Rel64} }

// target is where a relocation's field lies in RAM. map in misc.c is
// delta - __START_KERNEL_map: the link-time virtual address less the
// kernel map base is the unrandomized physical address, moved by the
// physical load delta.
func target(va, physDelta uint64) uint64 { return va - StartKernelMap + physDelta }

// check verifies that every field lies inside the loaded kernel [lo, hi).
func (r *Relocs) check(lo, hi, physDelta uint64) error {
	for k, l := range r.lists() {
		kind := RelocKind(k)
		for i, va := range l {
			p := target(va, physDelta)
			if p < lo || p > hi || hi-p < kind.width() {
				return &RelocError{Kind: kind, Index: i, Addr: va,
					Err: fmt.Errorf("field at physical %#x outside the loaded kernel [%#x, %#x): %w", p, lo, hi, ErrOutOfRange)}
			}
		}
	}
	return nil
}

// apply patches ram; check must have passed.
func (r *Relocs) apply(ram []byte, physDelta, delta uint64) {
	le := binary.LittleEndian
	for _, va := range r.Rel32 {
		p := target(va, physDelta)
		le.PutUint32(ram[p:], le.Uint32(ram[p:])+uint32(delta))
	}
	for _, va := range r.Inv32 {
		p := target(va, physDelta)
		le.PutUint32(ram[p:], le.Uint32(ram[p:])-uint32(delta))
	}
	for _, va := range r.Rel64 {
		p := target(va, physDelta)
		le.PutUint64(ram[p:], le.Uint64(ram[p:])+delta)
	}
}
