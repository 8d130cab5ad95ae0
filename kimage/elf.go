package kimage

import (
	"bytes"
	"encoding/binary"
)

// ELF64 layout constants (System V gABI, x86-64 psABI).
const (
	ehdrSize    = 64
	phdrSize    = 56
	shdrSize    = 64
	elfClass64  = 2
	elfDataLSB  = 1
	emX86_64    = 62
	ptLoad      = 1
	shtNobits   = 8
	shnLoReserv = 0xff00
)

// Segment is one PT_LOAD program header with its file bytes.
type Segment struct {
	Paddr uint64 // link-time physical load address
	Vaddr uint64 // link-time virtual address
	Memsz uint64 // size in memory; bytes past len(Data) are zero (bss)
	Data  []byte // p_filesz bytes of the file
}

type section struct {
	name   string
	typ    uint32
	addr   uint64
	offset uint64
	size   uint64
}

// elfFile is the little that Image needs from an ELF64 x86-64 file.
type elfFile struct {
	entry    uint64
	segments []Segment
	sections []section
	length   uint64 // bytes the file really occupies
}

func isELF(data []byte) bool {
	return len(data) >= 4 && bytes.Equal(data[:4], []byte("\x7fELF"))
}

// parseELF reads an ELF64 little-endian x86-64 file from the start of data.
// data may continue past the ELF (the relocation table of a bzImage
// payload); length says where the ELF really ends: the furthest of its
// headers, section contents and segment contents.
func parseELF(data []byte) (*elfFile, error) {
	const what = "ELF header"
	if len(data) < ehdrSize {
		return nil, formatErr(what, uint64(len(data)), "file ends inside the ELF header (%d bytes)", len(data))
	}
	if !isELF(data) {
		return nil, formatErr(what, 0, "no ELF magic")
	}
	if data[4] != elfClass64 || data[5] != elfDataLSB {
		return nil, formatErr(what, 4, "not a little-endian ELF64 file (class %d, data %d)", data[4], data[5])
	}
	le := binary.LittleEndian
	if m := le.Uint16(data[18:]); m != emX86_64 {
		return nil, formatErr(what, 18, "machine %d is not x86-64", m)
	}
	f := &elfFile{entry: le.Uint64(data[24:]), length: ehdrSize}
	phoff, shoff := le.Uint64(data[32:]), le.Uint64(data[40:])
	phentsize, phnum := le.Uint16(data[54:]), uint64(le.Uint16(data[56:]))
	shentsize, shnum := le.Uint16(data[58:]), uint64(le.Uint16(data[60:]))
	shstrndx := uint64(le.Uint16(data[62:]))
	size := uint64(len(data))

	if phnum > 0 && phentsize != phdrSize {
		return nil, formatErr(what, 54, "program header size %d, want %d", phentsize, phdrSize)
	}
	phEnd, ok := span(phoff, phnum*phdrSize, size)
	if !ok {
		return nil, formatErr("program headers", phoff, "%d headers do not fit in %d bytes", phnum, size)
	}
	f.length = max(f.length, phEnd)
	for i := range phnum {
		p := data[phoff+i*phdrSize:]
		if le.Uint32(p) != ptLoad {
			continue
		}
		off, filesz, memsz := le.Uint64(p[8:]), le.Uint64(p[32:]), le.Uint64(p[40:])
		end, ok := span(off, filesz, size)
		if !ok {
			return nil, formatErr("program header", phoff+i*phdrSize, "segment %d [%#x, +%#x) lies outside the %d-byte file", i, off, filesz, size)
		}
		if filesz > memsz {
			return nil, formatErr("program header", phoff+i*phdrSize, "segment %d has filesz %#x > memsz %#x", i, filesz, memsz)
		}
		f.length = max(f.length, end)
		f.segments = append(f.segments, Segment{
			Vaddr: le.Uint64(p[16:]),
			Paddr: le.Uint64(p[24:]),
			Memsz: memsz,
			Data:  data[off:end:end],
		})
	}

	if shnum == 0 {
		return f, nil
	}
	if shentsize != shdrSize {
		return nil, formatErr(what, 58, "section header size %d, want %d", shentsize, shdrSize)
	}
	shEnd, ok := span(shoff, shnum*shdrSize, size)
	if !ok {
		return nil, formatErr("section headers", shoff, "%d headers do not fit in %d bytes", shnum, size)
	}
	f.length = max(f.length, shEnd)
	f.sections = make([]section, shnum)
	for i := range shnum {
		s := data[shoff+i*shdrSize:]
		sec := section{
			typ:    le.Uint32(s[4:]),
			addr:   le.Uint64(s[16:]),
			offset: le.Uint64(s[24:]),
			size:   le.Uint64(s[32:]),
		}
		if sec.typ != shtNobits && i != 0 {
			end, ok := span(sec.offset, sec.size, size)
			if !ok {
				return nil, formatErr("section header", shoff+i*shdrSize, "section %d [%#x, +%#x) lies outside the %d-byte file", i, sec.offset, sec.size, size)
			}
			f.length = max(f.length, end)
		}
		f.sections[i] = sec
	}
	if shstrndx >= shnum || shstrndx >= shnLoReserv {
		return nil, formatErr(what, 62, "section name table index %d out of %d sections", shstrndx, shnum)
	}
	strtab := f.sections[shstrndx]
	if strtab.typ == shtNobits {
		return nil, formatErr("section header", shoff+shstrndx*shdrSize, "section name table has no contents")
	}
	names := data[strtab.offset : strtab.offset+strtab.size]
	for i := range f.sections {
		off := uint64(le.Uint32(data[shoff+uint64(i)*shdrSize:]))
		if off >= uint64(len(names)) {
			if i == 0 {
				continue
			}
			return nil, formatErr("section header", shoff+uint64(i)*shdrSize, "section %d name offset %#x outside the name table", i, off)
		}
		n := names[off:]
		if j := bytes.IndexByte(n, 0); j >= 0 {
			n = n[:j]
		}
		f.sections[i].name = string(n)
	}
	return f, nil
}

// span returns off+n when [off, off+n) fits in size bytes, without
// overflowing.
func span(off, n, size uint64) (uint64, bool) {
	if off > size || n > size-off {
		return 0, false
	}
	return off + n, true
}

// bannerPrefix starts linux_banner (init/version-timestamp.c).
var bannerPrefix = []byte("Linux version ")

// findBanner returns a "Linux version <digit>..." line in b, up to its
// newline or NUL; the digit check skips format strings such as
// linux_proc_banner's "%s version %s". A 6.1+ kernel keeps two banners:
// init/version.c's weak one with a bare "#" and the linux_banner of
// init/version-timestamp.c with "#<build number>"; the latter wins.
func findBanner(b []byte) string {
	first := ""
	for {
		i := bytes.Index(b, bannerPrefix)
		if i < 0 {
			return first
		}
		b = b[i:]
		if c := b[min(len(b)-1, len(bannerPrefix))]; c < '0' || c > '9' {
			b = b[len(bannerPrefix):]
			continue
		}
		end := bytes.IndexAny(b, "\n\x00")
		if end < 0 {
			end = len(b)
		}
		banner := string(b[:min(end, 512)])
		if hasBuildNumber(banner) {
			return banner
		}
		if first == "" {
			first = banner
		}
		b = b[end:]
	}
}

// hasBuildNumber reports whether banner has "#<digit>".
func hasBuildNumber(banner string) bool {
	for i := 0; i+1 < len(banner); i++ {
		if banner[i] == '#' && banner[i+1] >= '0' && banner[i+1] <= '9' {
			return true
		}
	}
	return false
}

// BannerRelease returns the kernel release in a linux_banner line: the
// word after "Linux version ".
func BannerRelease(banner string) string {
	f := bytes.Fields([]byte(banner))
	if len(f) < 3 || string(f[0]) != "Linux" || string(f[1]) != "version" {
		return ""
	}
	return string(f[2])
}
