package boot

import (
	"encoding/binary"
	"errors"
	"testing"
)

// Zero-page offsets from Documentation/arch/x86/boot.rst, typed by hand
// so that the kimage.SetupHeader Write fills is checked against
// the ABI, not against itself.
const (
	hdrBootFlag         = 0x1fe
	hdrHeader           = 0x202
	hdrLoadFlags        = 0x211
	hdrRamdiskImage     = 0x218
	hdrRamdiskSize      = 0x21c
	hdrCmdLinePtr       = 0x228
	hdrSetupData        = 0x250
	loadFlagLoadedHigh  = 1 << 0
	loadFlagKASLRByHand = 1 << 1
)

func TestWriteBootParams(t *testing.T) {
	const mem = 64 << 20
	ram := make([]byte, mem)
	initrd := []byte("070701fake-cpio")
	spec := Spec{MemSize: mem, Reserved: 2 << 20, Cmdline: "console=ttyS0 x=1", Initrd: initrd, RNGSeed: []byte{1, 2, 3, 4}, KASLR: true}
	if err := Write(ram, spec, 0x2000000); err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	zp := ram[ZeroPageAddr:]
	if le.Uint16(zp[hdrBootFlag:]) != 0xaa55 || string(zp[hdrHeader:hdrHeader+4]) != "HdrS" {
		t.Fatal("boot flag / HdrS magic missing")
	}
	if zp[hdrLoadFlags]&loadFlagKASLRByHand == 0 || zp[hdrLoadFlags]&loadFlagLoadedHigh == 0 {
		t.Fatalf("loadflags = %#x", zp[hdrLoadFlags])
	}
	cl := le.Uint32(zp[hdrCmdLinePtr:])
	if got := string(ram[cl : cl+uint32(len(spec.Cmdline))]); got != spec.Cmdline || ram[cl+uint32(len(spec.Cmdline))] != 0 {
		t.Fatalf("cmdline at %#x = %q", cl, got)
	}
	ri, rs := le.Uint32(zp[hdrRamdiskImage:]), le.Uint32(zp[hdrRamdiskSize:])
	if rs != uint32(len(initrd)) || string(ram[ri:ri+rs]) != string(initrd) {
		t.Fatalf("initrd at %#x size %d not in place", ri, rs)
	}
	if ri%4096 != 0 || uint64(ri)+uint64(rs) > mem-(4<<20) {
		t.Fatalf("initrd at %#x+%d overlaps the reserved top or is unaligned", ri, rs)
	}
	sd := le.Uint64(zp[hdrSetupData:])
	if sd != setupDataAddr || le.Uint32(ram[sd+8:]) != setupRNGSeed || le.Uint32(ram[sd+12:]) != 4 || ram[sd+16] != 1 {
		t.Fatal("RNG seed setup_data malformed")
	}
	// The chain goes on to hvprobe's region: 2 MiB below the top 2 MiB of RAM.
	hv := le.Uint64(ram[sd:])
	if hv != mem-(4<<20) || le.Uint32(ram[hv+8:]) != setupHVProbe || le.Uint32(ram[hv+12:]) != 2<<20-16 || le.Uint64(ram[hv:]) != 0 {
		t.Fatalf("private region setup_data at %#x malformed", hv)
	}
	n := int(zp[bpE820Entries])
	var want = []E820Entry{
		{0, lowRAMEnd, e820RAM},
		{lowRAMEnd, highRAMStart - lowRAMEnd, e820Reserved},
		{highRAMStart, mem - highRAMStart, e820RAM},
	}
	if n != len(want) {
		t.Fatalf("%d e820 entries, want %d", n, len(want))
	}
	for i, w := range want {
		off := bpE820Table + 20*i
		got := E820Entry{le.Uint64(zp[off:]), le.Uint64(zp[off+8:]), le.Uint32(zp[off+16:])}
		if got != w {
			t.Errorf("e820[%d] = %+v, want %+v", i, got, w)
		}
	}
	// Identity map: the PD entry for 16 MiB maps 16 MiB as a 2 MiB page.
	pml4 := le.Uint64(ram[PML4Addr:])
	pdpt := le.Uint64(ram[pml4&^0xfff:])
	pde := le.Uint64(ram[(pdpt&^0xfff)+8*8:])
	if pde != 0x1000000|0x83 {
		t.Fatalf("PDE for 16 MiB = %#x", pde)
	}
	if le.Uint64(ram[GDTAddr+16:]) != 0x00af9b000000ffff {
		t.Fatal("GDT entry 2 is not the 64-bit boot code segment")
	}
}

func TestBootParamsErrors(t *testing.T) {
	const mem = 64 << 20
	ram := make([]byte, mem)
	long := make([]byte, cmdlineMax)
	for i := range long {
		long[i] = 'a'
	}
	if err := Write(ram, Spec{MemSize: mem, Cmdline: string(long)}, 0); !errors.Is(err, ErrBoot) {
		t.Errorf("overlong cmdline: err = %v", err)
	}
	big := make([]byte, 40<<20)
	if err := Write(ram, Spec{MemSize: mem, Initrd: big}, 30<<20); !errors.Is(err, ErrBoot) {
		t.Errorf("initrd overlapping the kernel: err = %v", err)
	}
}
