package kimage

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"
)

// The synthesized kernel: linked at physical 2 MiB like a tiny kernel
// with CONFIG_PHYSICAL_START=0x200000, two PT_LOADs (text; rodata+data
// with bss), a .BTF section outside the segments.
const (
	fixBase      = 0x200000
	fixVBase     = StartKernelMap + fixBase
	fixTextSize  = 0x3000
	fixDataSize  = 0x1000
	fixBssSize   = 0x1000
	fixBanner    = "Linux version 6.1.0-99-test (tester@example) (gcc 12) #1 SMP"
	fixRelease   = "6.1.0-99-test"
	fixBannerOff = 0x100 // in the data segment

	// Relocated fields inside the text segment (offsets from fixBase).
	fixRel32Off = 0x100
	fixInv32Off = 0x200
	fixRel64Off = 0x300
	fixRel32Val = 0x80200500 // low half of a kernel address, as in mov $sym, %eax
	fixInv32Val = 0x00012345
	fixRel64Val = fixVBase + 0x600
)

var fixBTF = []byte("\x9f\xeb\x01\x00fake btf")

type elfSec struct {
	name       string
	typ        uint32
	addr, off  uint64
	size       uint64
	data       []byte // appended to the file when off == 0 and typ != NOBITS
	inSegments bool
}

// synthELF builds an ELF64 x86-64 vmlinux look-alike.
func synthELF(t testing.TB) []byte {
	le := binary.LittleEndian
	text := make([]byte, fixTextSize)
	for i := range text {
		text[i] = 0x90
	}
	le.PutUint32(text[fixRel32Off:], fixRel32Val)
	le.PutUint32(text[fixInv32Off:], fixInv32Val)
	le.PutUint64(text[fixRel64Off:], fixRel64Val)
	data := make([]byte, fixDataSize)
	copy(data[0x10:], "%s version %s (\x00") // linux_proc_banner-like decoy
	// 6.1's weak banner without a build number comes first.
	copy(data[0x40:], strings.Replace(fixBanner, "#1", "#", 1)+"\n\x00")
	copy(data[fixBannerOff:], fixBanner+"\n\x00")

	const phoff = ehdrSize
	const textOff = 0x1000
	dataOff := uint64(textOff + fixTextSize)
	btfOff := dataOff + fixDataSize
	shstr := []byte("\x00.text\x00.rodata\x00.bss\x00.BTF\x00.shstrtab\x00")
	shstrOff := btfOff + uint64(len(fixBTF))
	shoff := (shstrOff + uint64(len(shstr)) + 7) &^ 7

	out := make([]byte, shoff+6*shdrSize)
	copy(out, "\x7fELF")
	out[4], out[5], out[6] = elfClass64, elfDataLSB, 1
	le.PutUint16(out[16:], 2) // ET_EXEC
	le.PutUint16(out[18:], emX86_64)
	le.PutUint32(out[20:], 1)
	le.PutUint64(out[24:], fixBase) // entry: startup_64, physical
	le.PutUint64(out[32:], phoff)
	le.PutUint64(out[40:], shoff)
	le.PutUint16(out[52:], ehdrSize)
	le.PutUint16(out[54:], phdrSize)
	le.PutUint16(out[56:], 2)
	le.PutUint16(out[58:], shdrSize)
	le.PutUint16(out[60:], 6)
	le.PutUint16(out[62:], 5)
	ph := func(i int, off, va, filesz, memsz uint64) {
		p := out[phoff+i*phdrSize:]
		le.PutUint32(p, ptLoad)
		le.PutUint32(p[4:], 5)
		le.PutUint64(p[8:], off)
		le.PutUint64(p[16:], va)
		le.PutUint64(p[24:], va-StartKernelMap)
		le.PutUint64(p[32:], filesz)
		le.PutUint64(p[40:], memsz)
		le.PutUint64(p[48:], PhysicalAlign)
	}
	ph(0, textOff, fixVBase, fixTextSize, fixTextSize)
	ph(1, dataOff, fixVBase+fixTextSize, fixDataSize, fixDataSize+fixBssSize)
	copy(out[textOff:], text)
	copy(out[dataOff:], data)
	copy(out[btfOff:], fixBTF)
	copy(out[shstrOff:], shstr)
	sh := func(i int, name, typ uint32, addr, off, size uint64) {
		s := out[shoff+uint64(i)*shdrSize:]
		le.PutUint32(s, name)
		le.PutUint32(s[4:], typ)
		le.PutUint64(s[16:], addr)
		le.PutUint64(s[24:], off)
		le.PutUint64(s[32:], size)
	}
	idx := func(n string) uint32 { return uint32(bytes.Index(shstr, []byte("\x00"+n+"\x00")) + 1) }
	sh(1, idx(".text"), 1, fixVBase, textOff, fixTextSize)
	sh(2, idx(".rodata"), 1, fixVBase+fixTextSize, dataOff, fixDataSize)
	sh(3, idx(".bss"), shtNobits, fixVBase+fixTextSize+fixDataSize, dataOff+fixDataSize, fixBssSize)
	sh(4, idx(".BTF"), 1, 0, btfOff, uint64(len(fixBTF)))
	sh(5, idx(".shstrtab"), 3, 0, shstrOff, uint64(len(shstr)))
	return out
}

// synthRelocs builds the table as arch/x86/tools/relocs emits it:
// 0, 64-bit..., 0, inverse 32-bit..., 0, 32-bit....
func synthRelocs(rel32, inv32, rel64 []uint64) []byte {
	var b []byte
	put := func(v uint64) { b = binary.LittleEndian.AppendUint32(b, uint32(v)) }
	put(0)
	for _, v := range rel64 {
		put(v)
	}
	put(0)
	for _, v := range inv32 {
		put(v)
	}
	put(0)
	for _, v := range rel32 {
		put(v)
	}
	return b
}

func fixRelocs() []byte {
	return synthRelocs(
		[]uint64{fixVBase + fixRel32Off},
		[]uint64{fixVBase + fixInv32Off},
		[]uint64{fixVBase + fixRel64Off})
}

// compressPayload compresses blob as the kernel build does, with the
// decompressed size appended (gzip carries it as ISIZE already).
func compressPayload(t testing.TB, method string, blob []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	switch method {
	case "gzip":
		w := gzip.NewWriter(&buf)
		w.Write(blob)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	case "xz":
		w, err := xz.NewWriter(&buf)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(blob)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	case "zstd":
		enc, err := zstd.NewWriter(nil)
		if err != nil {
			t.Fatal(err)
		}
		buf.Write(enc.EncodeAll(blob, nil))
	case "lz4":
		buf.Write(lz4Legacy(t, blob, lz4ChunkSize))
	default:
		t.Fatalf("no compressor %q", method)
	}
	return binary.LittleEndian.AppendUint32(buf.Bytes(), uint32(len(blob)))
}

// lz4Legacy writes the legacy LZ4 format (lz4 -l) with the given chunk size.
func lz4Legacy(t testing.TB, blob []byte, chunk int) []byte {
	out := binary.LittleEndian.AppendUint32(nil, lz4LegacyMagic)
	for len(blob) > 0 {
		n := min(chunk, len(blob))
		dst := make([]byte, lz4.CompressBlockBound(n))
		c, err := lz4.CompressBlock(blob[:n], dst, nil)
		if err != nil || c == 0 {
			t.Fatalf("lz4 compress: %d, %v", c, err)
		}
		out = binary.LittleEndian.AppendUint32(out, uint32(c))
		out = append(out, dst[:c]...)
		blob = blob[n:]
	}
	return out
}

const fixSetupVersion = "6.1.0-99-test (tester@example) #1 SMP"

// synthBzImage wraps a payload in a boot sector and setup header
// (protocol 2.15, setup_sects 1).
func synthBzImage(payload []byte) []byte {
	const setupSects = 1
	pm := (setupSects + 1) * 512
	out := make([]byte, pm+0x100+len(payload))
	h := SetupHeader{
		SetupSects:    setupSects,
		BootFlag:      0xaa55,
		Jump:          0x66eb,
		Header:        HdrSMagic,
		Version:       0x020f,
		KernelVersion: 0x300 - 0x200,
		LoadFlags:     LoadedHigh,
		XLoadFlags:    XLFKernel64,
		PayloadOffset: 0x100,
		PayloadLength: uint32(len(payload)),
		InitSize:      0x800000,
	}
	var hb bytes.Buffer
	binary.Write(&hb, binary.LittleEndian, &h)
	copy(out[SetupHeaderOffset:], hb.Bytes())
	copy(out[0x300:], fixSetupVersion+"\x00")
	copy(out[pm+0x100:], payload)
	return out
}

func synthBlob(t testing.TB) []byte {
	return append(synthELF(t), fixRelocs()...)
}
