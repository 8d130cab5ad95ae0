package introspect

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/hvprobe/hvprobe/kimage"
	"github.com/hvprobe/hvprobe/vmm"
)

// Symbols looks up unslid System.map addresses. Per-cpu symbols come back
// as their offsets into the per-cpu area.
type Symbols interface {
	Address(name string) (uint64, error)
}

// Registers is the part of a stopped vCPU this package reads; vmm.CPU
// satisfies it.
type Registers interface {
	Sregs() (vmm.Sregs, error)
	MSR(index uint32) (uint64, error)
}

// MSRs and Linux constants the detection relies on.
const (
	MSRLSTAR        = 0xC000_0082 // SYSCALL target: entry_SYSCALL_64
	MSRKernelGSBase = 0xC000_0102 // the kernel's GS base while in user mode

	cr0PG      = 1 << 31
	cr4PAE     = 1 << 5
	cr4LA57    = 1 << 12
	eferLMA    = 1 << 10
	kernelHalf = 1 << 63
	// ptiUserPGD is PTI's PTI_USER_PGTABLE_BIT: the user-mode PGD is the
	// kernel PGD's 8 KiB-aligned pair plus 4 KiB.
	ptiUserPGD = 1 << 12
)

var bannerPrefix = []byte("Linux version ")

// CPL is the vCPU's current privilege level.
func CPL(s vmm.Sregs) int { return int(s.CS.Selector & 3) }

// KernelView returns guest-virtual memory as the kernel sees it on a vCPU
// in state s, with anchor a slid VA that only the kernel's page tables map
// (linux_banner, init_task, ...). It uses CR3 when anchor translates
// through it. Otherwise, if the vCPU is in user mode under page-table
// isolation, CR3 holds the user PGD, which maps almost none of the kernel;
// the kernel PGD is then CR3 with bit 12 cleared, used only if anchor
// translates through it.
func KernelView(mem vmm.PhysMem, s vmm.Sregs, anchor uint64) (*VirtMem, error) {
	if s.CR0&cr0PG == 0 || s.CR4&cr4PAE == 0 || s.EFER&eferLMA == 0 {
		return nil, fmt.Errorf("finding kernel page tables (CR0 %#x CR4 %#x EFER %#x): %w", s.CR0, s.CR4, s.EFER, ErrNotLongMode)
	}
	la57 := s.CR4&cr4LA57 != 0
	vm := NewVirtMem(mem, s.CR3, la57)
	_, err := vm.Translate(anchor)
	if err == nil {
		return vm, nil
	}
	if CPL(s) == 3 && s.CR3&ptiUserPGD != 0 && errors.Is(err, ErrNotMapped) {
		k := NewVirtMem(mem, s.CR3&^ptiUserPGD, la57)
		if _, kerr := k.Translate(anchor); kerr == nil {
			return k, nil
		}
	}
	return nil, fmt.Errorf("finding kernel page tables: anchor VA %#x: %w", anchor, err)
}

// KASLR is where the running kernel sits relative to its link addresses.
type KASLR struct {
	// Slide is added to an unslid System.map address to get the running
	// VA. Zero with nokaslr.
	Slide uint64
	// PhysOffset is the physical displacement of the image from its link
	// address: PA(_text) - (_text - __START_KERNEL_map), modulo 2^64.
	// Zero when the image sits at its linked physical address.
	PhysOffset uint64
}

// Addr returns the running address of an unslid, non-per-cpu symbol.
func (k KASLR) Addr(unslid uint64) uint64 { return unslid + k.Slide }

// DetectKASLR recovers the slide and physical offset of the kernel on a
// stopped vCPU. The slide is LSTAR minus entry_SYSCALL_64 (the kernel
// points LSTAR at it in syscall_init, so the vCPU must be past early boot);
// it must be a multiple of 2 MiB within the 1 GiB image window. It is then
// confirmed by reading "Linux version " at the slid linux_banner, and the
// physical offset comes from translating the slid _text.
func DetectKASLR(cpu Registers, mem vmm.PhysMem, syms Symbols) (KASLR, error) {
	s, err := cpu.Sregs()
	if err != nil {
		return KASLR{}, fmt.Errorf("detecting KASLR: reading sregs: %w", err)
	}
	lstar, err := cpu.MSR(MSRLSTAR)
	if err != nil {
		return KASLR{}, fmt.Errorf("detecting KASLR: reading LSTAR: %w", err)
	}
	addrs, err := lookup(syms, "entry_SYSCALL_64", "linux_banner", "_text")
	if err != nil {
		return KASLR{}, fmt.Errorf("detecting KASLR: %w", err)
	}
	entry, banner, text := addrs[0], addrs[1], addrs[2]
	slide := lstar - entry
	switch {
	case entry < kimage.StartKernelMap || text < kimage.StartKernelMap:
		return KASLR{}, fmt.Errorf("detecting KASLR: entry_SYSCALL_64 %#x or _text %#x below __START_KERNEL_map: %w", entry, text, ErrBadSlide)
	case slide%kimage.PhysicalAlign != 0 || slide >= kimage.KernelImageSize:
		return KASLR{}, fmt.Errorf("detecting KASLR: LSTAR %#x - entry_SYSCALL_64 %#x = %#x, not a 2 MiB multiple below 1 GiB: %w", lstar, entry, slide, ErrBadSlide)
	}
	k := KASLR{Slide: slide}
	vm, err := KernelView(mem, s, k.Addr(banner))
	if err != nil {
		return KASLR{}, fmt.Errorf("detecting KASLR with slide %#x: %w", slide, err)
	}
	got := make([]byte, len(bannerPrefix))
	if err := vm.Read(k.Addr(banner), got); err != nil {
		return KASLR{}, fmt.Errorf("detecting KASLR with slide %#x: reading linux_banner: %w", slide, err)
	}
	if !bytes.Equal(got, bannerPrefix) {
		return KASLR{}, fmt.Errorf("detecting KASLR with slide %#x: linux_banner at %#x reads %q: %w", slide, k.Addr(banner), got, ErrBannerMismatch)
	}
	t, err := vm.Translate(k.Addr(text))
	if err != nil {
		return KASLR{}, fmt.Errorf("detecting KASLR with slide %#x: translating _text: %w", slide, err)
	}
	k.PhysOffset = t.PA - (text - kimage.StartKernelMap)
	return k, nil
}

func lookup(syms Symbols, names ...string) ([]uint64, error) {
	out := make([]uint64, len(names))
	for i, n := range names {
		a, err := syms.Address(n)
		if err != nil {
			return nil, fmt.Errorf("looking up %s: %w", n, err)
		}
		out[i] = a
	}
	return out, nil
}

// GSBase returns the kernel's per-cpu base for a stopped vCPU: GS.base in
// kernel mode, MSR_KERNEL_GS_BASE in user mode (SWAPGS keeps the kernel's
// value there). Limit: in the few instructions between kernel entry and
// SWAPGS (and SWAPGS and exit) the vCPU is at CPL 0 with the user's GS, and
// the answer is wrong; a stop at a kprobe in ordinary kernel code is never
// there.
func GSBase(cpu Registers) (uint64, error) {
	s, err := cpu.Sregs()
	if err != nil {
		return 0, fmt.Errorf("reading GS base: %w", err)
	}
	base := s.GS.Base
	if CPL(s) != 0 {
		if base, err = cpu.MSR(MSRKernelGSBase); err != nil {
			return 0, fmt.Errorf("reading GS base: MSR_KERNEL_GS_BASE: %w", err)
		}
	}
	if base == 0 {
		return 0, fmt.Errorf("reading GS base (CPL %d): zero, per-cpu areas not set up: %w", CPL(s), ErrNoPerCPU)
	}
	return base, nil
}

// PerCPUAddr returns the address of a per-cpu variable given the CPU's GS
// base and the variable's System.map value, which on x86-64 SMP kernels is
// an offset from the per-cpu base and does not slide. A kernel-half value
// means the symbol is not zero-based per-cpu (e.g. a !SMP kernel).
func PerCPUAddr(gsbase, offset uint64) (uint64, error) {
	if offset&kernelHalf != 0 {
		return 0, fmt.Errorf("per-cpu symbol value %#x is an address, not an offset: %w", offset, ErrNoPerCPU)
	}
	return gsbase + offset, nil
}
