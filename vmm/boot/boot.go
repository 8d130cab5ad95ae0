package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/hvprobe/hvprobe/kimage"
)

// Guest-physical layout of what the VMM writes before the first KVM_RUN.
// Everything sits below 1 MiB, in RAM the kernel may reuse once booted,
// except setup_data, which the kernel reserves itself.
const (
	GDTAddr       = 0x500
	ZeroPageAddr  = 0x7000
	setupDataAddr = 0x8000
	PML4Addr      = 0x9000
	PDPTAddr      = 0xa000
	PDAddr        = 0xb000 // four page directories: 4 GiB identity map
	cmdlineAddr   = 0x20000
	cmdlineMax    = 4096
	BootStackTop  = 0x6ff0

	lowRAMEnd       = 0x9fc00 // classic PC: EBDA and BIOS area above
	highRAMStart    = 0x100000
	initrdAddrMax   = 0x7fffffff
	kernelAlignment = 0x200000
)

// boot_params offsets outside the setup header, which is kimage.SetupHeader
// (arch/x86/include/uapi/asm/bootparam.h).
const (
	bpExtRamdiskImage = 0x0c0
	bpExtRamdiskSize  = 0x0c4
	bpExtCmdLinePtr   = 0x0c8
	bpE820Entries     = 0x1e8
	bpE820Table       = 0x2d0
	e820MaxEntries    = 128

	setupRNGSeed = 9
	// setupHVProbe is the setup_data type of hvprobe's private region; the
	// kernel reserves every setup_data node and ignores unknown types.
	setupHVProbe = 0x48565052 // "HVPR"
	bootProtocol = 0x020f

	e820RAM      = 1
	e820Reserved = 2
)

// E820Entry is one entry of the memory map given to the guest.
type E820Entry struct {
	Addr, Size uint64
	Type       uint32
}

// Spec is everything Write needs, already loaded and
// checked by the caller.
type Spec struct {
	MemSize  uint64
	Reserved uint64 // bytes at the top of RAM kept from the guest (e820 reserved)
	Cmdline  string
	Initrd   []byte
	RNGSeed  []byte // SETUP_RNG_SEED payload; empty = none
	KASLR    bool   // tell the kernel its placement was randomized
}

// ErrBoot wraps every boot-layout failure.
var ErrBoot = errors.New("boot")

// e820Map is the memory map: low RAM, the BIOS hole, high RAM.
//
// hvprobe's private region at the top of RAM stays RAM in the map and is
// wrapped in a setup_data node instead (Write): the kernel then
// reserves it (E820_TYPE_RESERVED_KERN) yet keeps it in its direct map.
// That matters because the region holds page tables hvprobe links into
// the kernel's own, and kernel code that walks those (debug_checkwx,
// ptdump, set_memory_*) reads them through the direct map; an
// e820-reserved region is not mapped there and such a walk oopses.
func e820Map(memSize uint64) []E820Entry {
	return []E820Entry{
		{0, lowRAMEnd, e820RAM},
		{lowRAMEnd, highRAMStart - lowRAMEnd, e820Reserved},
		{highRAMStart, memSize - highRAMStart, e820RAM},
	}
}

// reservedGap is plain RAM kept above the private region. Linux sizes its
// direct map by the highest E820_TYPE_RAM page (max_pfn), computed after
// setup_data regions become RESERVED_KERN; a region at the very top of RAM
// would fall outside the direct map.
const reservedGap = 2 << 20

// ReservedStart is where the private region begins.
func ReservedStart(memSize, reserved uint64) uint64 {
	return memSize - reservedGap - reserved
}

// initrdPlacement puts the initrd at the highest page-aligned address that
// fits below the reserved top and initrd_addr_max.
func initrdPlacement(memSize, reserved uint64, size int, kernelEnd uint64) (uint64, error) {
	limit := ReservedStart(memSize, reserved)
	if limit > initrdAddrMax+1 {
		limit = initrdAddrMax + 1
	}
	if uint64(size) > limit {
		return 0, fmt.Errorf("placing a %d-byte initrd: %w: larger than guest RAM", size, ErrBoot)
	}
	addr := (limit - uint64(size)) &^ 0xfff
	if addr < kernelEnd {
		return 0, fmt.Errorf("placing a %d-byte initrd above the kernel (ends at %#x) in %d MiB of RAM: %w: too little memory",
			size, kernelEnd, memSize>>20, ErrBoot)
	}
	return addr, nil
}

// Write fills the zero page, cmdline, setup_data, GDT and the
// identity page tables that the 64-bit boot protocol requires.
// kernelEnd is the first byte above the loaded kernel image.
func Write(ram []byte, spec Spec, kernelEnd uint64) error {
	if len(spec.Cmdline)+1 > cmdlineMax {
		return fmt.Errorf("kernel command line is %d bytes, at most %d: %w", len(spec.Cmdline), cmdlineMax-1, ErrBoot)
	}
	if uint64(len(ram)) != spec.MemSize {
		return fmt.Errorf("RAM is %d bytes, spec says %d: %w", len(ram), spec.MemSize, ErrBoot)
	}
	zp := ram[ZeroPageAddr : ZeroPageAddr+4096]
	// The kernel proper reads only the loader-filled fields below; a
	// bzImage's own setup header is for its real-mode and decompressor
	// stages, which hvprobe skips.
	clear(zp)
	le := binary.LittleEndian
	hdr := kimage.SetupHeader{
		BootFlag: 0xaa55, Header: kimage.HdrSMagic, Version: bootProtocol, TypeOfLoader: 0xff,
		LoadFlags:  kimage.LoadedHigh | kimage.CanUseHeap,
		HeapEndPtr: 0xfe00, KernelAlignment: kernelAlignment, RelocatableKernel: 1,
		InitrdAddrMax: initrdAddrMax, CmdLinePtr: cmdlineAddr, CmdlineSize: cmdlineMax - 1,
	}
	if spec.KASLR {
		hdr.LoadFlags |= kimage.KASLRFlag
	}

	clear(ram[cmdlineAddr : cmdlineAddr+cmdlineMax])
	copy(ram[cmdlineAddr:], spec.Cmdline)
	le.PutUint32(zp[bpExtCmdLinePtr:], 0)

	if len(spec.Initrd) > 0 {
		addr, err := initrdPlacement(spec.MemSize, spec.Reserved, len(spec.Initrd), kernelEnd)
		if err != nil {
			return err
		}
		copy(ram[addr:], spec.Initrd)
		hdr.RamdiskImage, hdr.RamdiskSize = uint32(addr), uint32(len(spec.Initrd))
		le.PutUint32(zp[bpExtRamdiskImage:], uint32(addr>>32))
		le.PutUint32(zp[bpExtRamdiskSize:], uint32(uint64(len(spec.Initrd))>>32))
	}

	next := uint64(0)
	if spec.Reserved > 0 {
		// struct setup_data { u64 next; u32 type; u32 len; u8 data[]; }
		at := ReservedStart(spec.MemSize, spec.Reserved)
		h := ram[at : at+16]
		le.PutUint64(h[0:], 0)
		le.PutUint32(h[8:], setupHVProbe)
		le.PutUint32(h[12:], uint32(spec.Reserved-16))
		next = at
	}
	if len(spec.RNGSeed) > 0 {
		// struct setup_data { u64 next; u32 type; u32 len; u8 data[]; }
		sd := ram[setupDataAddr:]
		if 16+len(spec.RNGSeed) > 0x1000 {
			return fmt.Errorf("RNG seed of %d bytes: %w: too large", len(spec.RNGSeed), ErrBoot)
		}
		le.PutUint64(sd[0:], next)
		le.PutUint32(sd[8:], setupRNGSeed)
		le.PutUint32(sd[12:], uint32(len(spec.RNGSeed)))
		copy(sd[16:], spec.RNGSeed)
		next = setupDataAddr
	}
	hdr.SetupData = next
	var hb bytes.Buffer
	binary.Write(&hb, binary.LittleEndian, &hdr)
	copy(zp[kimage.SetupHeaderOffset:], hb.Bytes())

	m := e820Map(spec.MemSize)
	zp[bpE820Entries] = uint8(len(m))
	for i, e := range m {
		off := bpE820Table + 20*i
		le.PutUint64(zp[off:], e.Addr)
		le.PutUint64(zp[off+8:], e.Size)
		le.PutUint32(zp[off+16:], e.Type)
	}

	// GDT: null, null, __BOOT_CS (0x10, 64-bit code), __BOOT_DS (0x18).
	gdt := []uint64{0, 0, 0x00af9b000000ffff, 0x00cf93000000ffff}
	for i, d := range gdt {
		le.PutUint64(ram[GDTAddr+8*i:], d)
	}

	// Identity map of the first 4 GiB with 2 MiB pages: the kernel's
	// startup_64 only needs its own image and the zero page mapped.
	clear(ram[PML4Addr : PDAddr+4*0x1000])
	le.PutUint64(ram[PML4Addr:], PDPTAddr|0x3)
	for i := uint64(0); i < 4; i++ {
		le.PutUint64(ram[PDPTAddr+8*i:], (PDAddr+i*0x1000)|0x3)
		for j := uint64(0); j < 512; j++ {
			pa := (i*512 + j) << 21
			le.PutUint64(ram[PDAddr+i*0x1000+8*j:], pa|0x83) // present, writable, 2 MiB
		}
	}
	return nil
}
