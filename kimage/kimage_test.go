package kimage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestSetupHeaderLayout(t *testing.T) {
	if got := binary.Size(SetupHeader{}); got != SetupHeaderSize {
		t.Fatalf("binary.Size(SetupHeader) = %#x, want %#x", got, SetupHeaderSize)
	}
	// Offsets from Documentation/arch/x86/boot.rst, relative to 0x1f1.
	offsets := map[string]int{
		"SetupSects": 0x1f1, "Syssize": 0x1f4, "BootFlag": 0x1fe, "Jump": 0x200,
		"Header": 0x202, "Version": 0x206, "KernelVersion": 0x20e,
		"LoadFlags": 0x211, "Code32Start": 0x214, "CmdLinePtr": 0x228,
		"KernelAlignment": 0x230, "RelocatableKernel": 0x234, "XLoadFlags": 0x236,
		"CmdlineSize": 0x238, "PayloadOffset": 0x248, "PayloadLength": 0x24c,
		"SetupData": 0x250, "PrefAddress": 0x258, "InitSize": 0x260,
		"HandoverOffset": 0x264, "KernelInfoOffset": 0x268,
	}
	typ := reflect.TypeFor[SetupHeader]()
	off := SetupHeaderOffset
	for i := range typ.NumField() {
		f := typ.Field(i)
		if want, ok := offsets[f.Name]; ok && want != off {
			t.Errorf("%s at %#x, want %#x", f.Name, off, want)
		}
		off += int(f.Type.Size())
	}
}

func TestOpenBzImage(t *testing.T) {
	for _, method := range []string{"lz4", "gzip", "zstd", "xz"} {
		t.Run(method, func(t *testing.T) {
			elf := synthELF(t)
			img, err := Open(synthBzImage(compressPayload(t, method, synthBlob(t))))
			if err != nil {
				t.Fatal(err)
			}
			if img.Kind != BzImage || img.Compression != method {
				t.Errorf("kind %v compression %q", img.Kind, img.Compression)
			}
			if img.Setup == nil || img.Setup.Version != 0x020f {
				t.Errorf("setup header %+v", img.Setup)
			}
			if !bytes.Equal(img.ELF, elf) {
				t.Errorf("ELF is %d bytes, want the %d-byte original", len(img.ELF), len(elf))
			}
			if img.Version != fixRelease || img.Banner != fixBanner {
				t.Errorf("version %q banner %q", img.Version, img.Banner)
			}
			want := &Relocs{
				Rel32: []uint64{fixVBase + fixRel32Off},
				Inv32: []uint64{fixVBase + fixInv32Off},
				Rel64: []uint64{fixVBase + fixRel64Off},
			}
			if !reflect.DeepEqual(img.Relocs, want) {
				t.Errorf("relocs %+v, want %+v", img.Relocs, want)
			}
			checkFixtureELF(t, img)
		})
	}
}

func checkFixtureELF(t *testing.T, img *Image) {
	t.Helper()
	if img.Entry != fixBase {
		t.Errorf("entry %#x", img.Entry)
	}
	if len(img.Segments) != 2 {
		t.Fatalf("%d segments", len(img.Segments))
	}
	s := img.Segments[1]
	if s.Paddr != fixBase+fixTextSize || s.Vaddr != fixVBase+fixTextSize || s.Memsz != fixDataSize+fixBssSize || len(s.Data) != fixDataSize {
		t.Errorf("segment 1: paddr %#x vaddr %#x memsz %#x filesz %#x", s.Paddr, s.Vaddr, s.Memsz, len(s.Data))
	}
	btf, err := img.Section(".BTF")
	if err != nil || !bytes.Equal(btf, fixBTF) {
		t.Errorf(".BTF = %q, %v", btf, err)
	}
	if _, err := img.Section(".bss"); !errors.Is(err, ErrNoSection) {
		t.Errorf(".bss (NOBITS): %v, want ErrNoSection", err)
	}
	if _, err := img.Section(".nope"); !errors.Is(err, ErrNoSection) {
		t.Errorf(".nope: %v, want ErrNoSection", err)
	}
	if addr, size, ok := img.SectionHeader(".rodata"); !ok || addr != fixVBase+fixTextSize || size != fixDataSize {
		t.Errorf("SectionHeader(.rodata) = %#x, %#x, %v", addr, size, ok)
	}
	if addr, size, ok := img.SectionHeader(".bss"); !ok || addr != fixVBase+fixTextSize+fixDataSize || size != fixBssSize {
		t.Errorf("SectionHeader(.bss) = %#x, %#x, %v", addr, size, ok)
	}
	if addr, size, ok := img.SectionHeader(".BTF"); !ok || addr != 0 || size != uint64(len(fixBTF)) {
		t.Errorf("SectionHeader(.BTF) = %#x, %#x, %v", addr, size, ok)
	}
	if _, _, ok := img.SectionHeader(".nope"); ok {
		t.Error("SectionHeader(.nope) found a section")
	}
	b, ok := img.ReadVirt(fixVBase+fixTextSize+fixBannerOff, len(fixBanner))
	if !ok || string(b) != fixBanner {
		t.Errorf("ReadVirt banner = %q, %v", b, ok)
	}
	if _, ok := img.ReadVirt(fixVBase+fixTextSize+fixDataSize-2, 4); ok {
		t.Error("ReadVirt across the end of file data succeeded")
	}
}

func TestOpenELF(t *testing.T) {
	img, err := Open(synthELF(t))
	if err != nil {
		t.Fatal(err)
	}
	if img.Kind != ELF || img.Setup != nil || img.Relocs != nil || img.Version != fixRelease {
		t.Errorf("kind %v setup %v relocs %v version %q", img.Kind, img.Setup, img.Relocs, img.Version)
	}
	checkFixtureELF(t, img)
}

func TestSetupVersionFallback(t *testing.T) {
	elf := synthELF(t)
	// Blank out the banner: Version must come from kernel_version.
	for _, b := range []string{fixBanner, strings.Replace(fixBanner, "#1", "#", 1)} {
		i := bytes.Index(elf, []byte(b))
		copy(elf[i:], bytes.Repeat([]byte{'x'}, len(b)))
	}
	img, err := Open(synthBzImage(compressPayload(t, "gzip", elf)))
	if err != nil {
		t.Fatal(err)
	}
	if img.Version != fixRelease || img.Banner != "" || img.Relocs != nil {
		t.Errorf("version %q banner %q relocs %v", img.Version, img.Banner, img.Relocs)
	}
}

func TestOpenErrors(t *testing.T) {
	blob := synthBlob(t)
	lz := compressPayload(t, "lz4", blob)
	setHdr := func(img []byte, f func(h *SetupHeader)) []byte {
		var h SetupHeader
		binary.Read(bytes.NewReader(img[SetupHeaderOffset:]), binary.LittleEndian, &h)
		f(&h)
		var b bytes.Buffer
		binary.Write(&b, binary.LittleEndian, &h)
		copy(img[SetupHeaderOffset:], b.Bytes())
		return img
	}
	elfWith := func(off int, v []byte) []byte {
		e := synthELF(t)
		copy(e[off:], v)
		return e
	}
	tests := []struct {
		name  string
		in    []byte
		want  error
		unsup string
	}{
		{"empty", nil, ErrFormat, ""},
		{"garbage", bytes.Repeat([]byte{0xAA}, 4096), ErrFormat, ""},
		{"old protocol", setHdr(synthBzImage(lz), func(h *SetupHeader) { h.Version = 0x020a }), ErrUnsupported, ""},
		{"32-bit only", setHdr(synthBzImage(lz), func(h *SetupHeader) { h.XLoadFlags = 0 }), ErrUnsupported, ""},
		{"payload past end", setHdr(synthBzImage(lz), func(h *SetupHeader) { h.PayloadLength += 1 }), ErrFormat, ""},
		{"bzip2", synthBzImage([]byte("BZh91AY&SY\x00\x00\x00\x10")), ErrUnsupported, "bzip2"},
		{"lzma", synthBzImage([]byte{0x5d, 0, 0, 0x80, 0, 1, 2, 3, 4}), ErrUnsupported, "lzma"},
		{"lzo", synthBzImage([]byte("\x89LZO\x00\r\n\x1a\n\x10\x00\x00\x00")), ErrUnsupported, "lzo"},
		{"xz bcj", synthBzImage(xzBCJHeader()), ErrUnsupported, "xz with the x86 BCJ filter"},
		{"xz huge dictionary", synthBzImage(xzHugeDict()), ErrFormat, ""},
		{"unknown magic", synthBzImage([]byte("hello world!")), ErrFormat, ""},
		{"size trailer lies", synthBzImage(append(lz[:len(lz)-4:len(lz)-4], 1, 0, 0, 0)), ErrFormat, ""},
		{"payload not ELF", synthBzImage(compressPayload(t, "zstd", []byte("not an elf at all, sorry"))), ErrFormat, ""},
		{"odd reloc table", synthBzImage(compressPayload(t, "gzip", append(synthELF(t), 1, 2))), ErrFormat, ""},
		{"unterminated relocs", synthBzImage(compressPayload(t, "gzip", append(synthELF(t), 1, 0, 0, 0))), ErrFormat, ""},
		{"ELF32", elfWith(4, []byte{1}), ErrFormat, ""},
		{"ELF big-endian", elfWith(5, []byte{2}), ErrFormat, ""},
		{"ELF aarch64", elfWith(18, []byte{183, 0}), ErrFormat, ""},
		{"ELF phoff huge", elfWith(32, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}), ErrFormat, ""},
		{"ELF segment offset past end", elfWith(ehdrSize+8, []byte{0, 0, 0, 0x10}), ErrFormat, ""},
		{"ELF filesz > memsz", elfWith(ehdrSize+32, []byte{1}), ErrFormat, ""},
		{"ELF shstrndx", elfWith(62, []byte{9}), ErrFormat, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Open(tc.in)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Open error = %v, want %v", err, tc.want)
			}
			var ue *UnsupportedCompressionError
			if tc.unsup != "" && (!errors.As(err, &ue) || ue.Method != tc.unsup) {
				t.Errorf("error %v does not name compression %q", err, tc.unsup)
			}
		})
	}
}

// xzBCJHeader is the start of an `xz --x86 --lzma2` stream: stream header,
// then a block header whose first filter is 0x04 (x86 BCJ).
func xzBCJHeader() []byte {
	return []byte{0xfd, '7', 'z', 'X', 'Z', 0, 0, 1, 0x69, 0x22, 0xde, 0x36,
		0x03, 0x01, 0x04, 0x00, 0x21, 0x01, 0x16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
}

// xzHugeDict is an xz stream header and block header whose LZMA2
// filter asks for a 3 GiB dictionary, with a footer magic at the end.
func xzHugeDict() []byte {
	b := xzBCJHeader()
	b[14], b[15], b[16] = xzFilterLZMA2, 1, 39
	return append(b, 'Y', 'Z')
}

func TestTruncated(t *testing.T) {
	for _, method := range []string{"lz4", "gzip", "zstd", "xz"} {
		payload := compressPayload(t, method, synthBlob(t))
		// Cut the stream but keep the size trailer, so the header stays
		// consistent and the decompressor sees the short stream.
		for n := 0; n < len(payload)-4; n++ {
			p := append(append([]byte(nil), payload[:n]...), payload[len(payload)-4:]...)
			if img, err := Open(synthBzImage(p)); err == nil {
				t.Fatalf("%s stream cut to %d of %d bytes: Open succeeded (%d-byte ELF)", method, n, len(payload)-4, len(img.ELF))
			}
		}
	}
	bz := synthBzImage(compressPayload(t, "lz4", synthBlob(t)))
	for n := range len(bz) {
		if _, err := Open(bz[:n]); err == nil {
			t.Fatalf("bzImage cut to %d of %d bytes: Open succeeded", n, len(bz))
		}
	}
	elf := synthELF(t)
	for n := range len(elf) {
		if _, err := Open(elf[:n]); err == nil {
			t.Fatalf("ELF cut to %d of %d bytes: Open succeeded", n, len(elf))
		}
	}
}

func TestLZ4Legacy(t *testing.T) {
	blob := bytes.Repeat([]byte("0123456789abcdef"), 4096)
	one := lz4Legacy(t, blob, 1<<14) // several chunks
	tests := []struct {
		name    string
		in      []byte
		want    []byte
		wantErr bool
	}{
		{"chunks", one, blob, false},
		// Concatenated streams: the repeated magic is skipped.
		{"concatenated", append(append([]byte(nil), one...), lz4Legacy(t, []byte("tail"), 16)...), append(append([]byte(nil), blob...), "tail"...), false},
		// Fewer than 4 bytes left end the stream.
		{"short trailing", append(append([]byte(nil), one...), 7, 7, 7), blob, false},
		// A zero chunk size ends it too; what follows is never read.
		{"zero padding", append(append([]byte(nil), one...), 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 9), blob, false},
		{"chunk past end", append(append([]byte(nil), one...), 0x10, 0, 0, 0, 1), nil, true},
		{"bad magic", append([]byte{0x03}, one[1:]...), nil, true},
		{"corrupt block", append(append([]byte(nil), one[:8]...), bytes.Repeat([]byte{0xff}, 64)...), nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "corrupt block" {
				binary.LittleEndian.PutUint32(tc.in[4:], 64)
			}
			got, err := unlz4(tc.in, uint32(len(tc.want)))
			if tc.wantErr {
				if err == nil {
					t.Fatalf("unlz4 succeeded with %d bytes", len(got))
				}
				return
			}
			if err != nil || !bytes.Equal(got, tc.want) {
				t.Fatalf("unlz4 = %d bytes, %v; want %d bytes", len(got), err, len(tc.want))
			}
		})
	}
}

func TestParseRelocs(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want *Relocs
	}{
		{"all kinds", synthRelocs([]uint64{0xffffffff81000010, 0xffffffff81000020}, []uint64{0xffffffff82000000}, []uint64{0xffffffff81000030}),
			&Relocs{Rel32: []uint64{0xffffffff81000010, 0xffffffff81000020}, Inv32: []uint64{0xffffffff82000000}, Rel64: []uint64{0xffffffff81000030}}},
		{"empty lists", synthRelocs(nil, nil, nil), &Relocs{}},
		// Leading bytes before the 64-bit terminator are never read.
		{"leading junk", append([]byte{9, 9, 9, 9}, synthRelocs([]uint64{0xffffffff81000010}, nil, nil)...),
			&Relocs{Rel32: []uint64{0xffffffff81000010}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseRelocs(tc.in)
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("parseRelocs = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
	for n := 0; n < 12; n += 4 {
		if _, err := parseRelocs(make([]byte, n)[:n]); n < 12 && !errors.Is(err, ErrFormat) {
			t.Errorf("%d zero bytes: %v, want ErrFormat", n, err)
		}
	}
}

func TestLoad(t *testing.T) {
	img, err := Open(synthBzImage(compressPayload(t, "lz4", synthBlob(t))))
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	const ramSize = 16 << 20
	tests := []struct {
		name                string
		phys, virt          uint64
		rel32, inv32, rel64 uint64
	}{
		{"in place", 0, 0, fixRel32Val, fixInv32Val, fixRel64Val},
		{"physical only", 4 << 20, 0, fixRel32Val, fixInv32Val, fixRel64Val},
		{"virtual only", 0, 64 << 20, fixRel32Val + 64<<20, (fixInv32Val - 64<<20) & 0xffffffff, fixRel64Val + 64<<20},
		{"both", 6 << 20, 2 << 20, fixRel32Val + 2<<20, (fixInv32Val - 2<<20) & 0xffffffff, fixRel64Val + 2<<20},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ram := bytes.Repeat([]byte{0xee}, ramSize)
			entry, err := img.Load(ram, tc.phys, tc.virt)
			if err != nil {
				t.Fatal(err)
			}
			base := fixBase + tc.phys
			if entry != base {
				t.Errorf("entry %#x, want %#x", entry, base)
			}
			if got := le.Uint32(ram[base+fixRel32Off:]); got != uint32(tc.rel32) {
				t.Errorf("32-bit field %#x, want %#x", got, uint32(tc.rel32))
			}
			if got := le.Uint32(ram[base+fixInv32Off:]); got != uint32(tc.inv32) {
				t.Errorf("inverse field %#x, want %#x", got, uint32(tc.inv32))
			}
			if got := le.Uint64(ram[base+fixRel64Off:]); got != tc.rel64 {
				t.Errorf("64-bit field %#x, want %#x", got, tc.rel64)
			}
			if ram[base] != 0x90 || ram[base-1] != 0xee {
				t.Errorf("text start %#x, byte before %#x", ram[base], ram[base-1])
			}
			bss := ram[base+fixTextSize+fixDataSize : base+fixTextSize+fixDataSize+fixBssSize]
			if !bytes.Equal(bss, make([]byte, fixBssSize)) {
				t.Error("bss not zeroed")
			}
			if end := base + fixTextSize + fixDataSize + fixBssSize; ram[end] != 0xee {
				t.Error("wrote past the end of bss")
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	bz, err := Open(synthBzImage(compressPayload(t, "lz4", synthBlob(t))))
	if err != nil {
		t.Fatal(err)
	}
	elf, err := Open(synthELF(t))
	if err != nil {
		t.Fatal(err)
	}
	bad := *bz
	bad.Relocs = &Relocs{Rel64: []uint64{fixVBase + 0x10, fixVBase + fixTextSize + fixDataSize + fixBssSize - 4}}
	tests := []struct {
		name       string
		img        *Image
		ram        int
		phys, virt uint64
		want       error
		kind       RelocKind
		index      int
	}{
		{"misaligned phys", bz, 16 << 20, 0x1000, 0, ErrMisaligned, 0, -1},
		{"misaligned virt", bz, 16 << 20, 0, 0x1000, ErrMisaligned, 0, -1},
		{"no relocs", elf, 16 << 20, 0, 2 << 20, ErrNoRelocs, 0, -1},
		{"ram too small", bz, fixBase + 0x100, 0, 0, ErrOutOfRange, 0, -1},
		{"wraps around", bz, 16 << 20, ^uint64(2*PhysicalAlign - 1), 0, ErrOutOfRange, 0, -1},
		{"beyond KERNEL_IMAGE_SIZE", bz, 16 << 20, 0, KernelImageSize, ErrOutOfRange, 0, -1},
		{"reloc straddles end", &bad, 16 << 20, 0, 2 << 20, ErrOutOfRange, Reloc64, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ram := bytes.Repeat([]byte{0xee}, tc.ram)
			_, err := tc.img.Load(ram, tc.phys, tc.virt)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Load = %v, want %v", err, tc.want)
			}
			var re *RelocError
			if tc.index >= 0 && (!errors.As(err, &re) || re.Kind != tc.kind || re.Index != tc.index) {
				t.Errorf("error %v does not name %v relocation %d", err, tc.kind, tc.index)
			}
			if !bytes.Equal(ram, bytes.Repeat([]byte{0xee}, tc.ram)) {
				t.Error("RAM written despite the error")
			}
		})
	}
}
