package kimage

import (
	"fmt"
)

// Kind is the container an image came in.
type Kind int

const (
	// BzImage is the boot-sector-plus-setup format with a compressed
	// payload (arch/x86/boot/bzImage).
	BzImage Kind = iota + 1
	// ELF is an uncompressed vmlinux.
	ELF
)

func (k Kind) String() string {
	switch k {
	case BzImage:
		return "bzImage"
	case ELF:
		return "ELF"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Image is a parsed kernel image. Its slices alias the bytes given to Open
// (ELF kind) or the decompressed payload (bzImage kind); treat them as
// read-only.
type Image struct {
	Kind Kind
	// Setup is the bzImage's setup header; nil for an ELF.
	Setup *SetupHeader
	// Compression names the bzImage payload compression ("lz4", ...).
	Compression string
	// Version is the kernel release ("6.1.0-28-cloud-amd64"): from the
	// ELF's linux_banner when found, else from the setup header.
	Version string
	// Banner is the linux_banner line found in the ELF, without the
	// trailing newline; "" when the ELF has none.
	Banner string
	// ELF is the vmlinux ELF file, without the relocation table.
	ELF []byte
	// Entry is the ELF entry point: the physical address of startup_64.
	Entry uint64
	// Segments are the PT_LOAD segments in program-header order.
	Segments []Segment
	// Relocs is the KASLR relocation table appended to the payload's
	// ELF, nil when the image has none.
	Relocs *Relocs

	sections []section
}

// Open parses a bzImage or an ELF vmlinux. A bzImage payload is
// decompressed and split into its ELF and relocation table.
func Open(data []byte) (*Image, error) {
	switch {
	case isBzImage(data):
		return openBzImage(data)
	case isELF(data):
		img := &Image{Kind: ELF}
		if err := img.setELF(data); err != nil {
			return nil, fmt.Errorf("parsing vmlinux: %w", err)
		}
		return img, nil
	}
	return nil, formatErr("kernel image", 0, "neither a bzImage (no \"HdrS\" at 0x202) nor an ELF file (%d bytes)", len(data))
}

func openBzImage(data []byte) (*Image, error) {
	h, payload, err := parseSetup(data)
	if err != nil {
		return nil, fmt.Errorf("parsing bzImage setup header: %w", err)
	}
	blob, method, err := decompress(payload)
	if err != nil {
		return nil, fmt.Errorf("extracting bzImage payload: %w", err)
	}
	img := &Image{Kind: BzImage, Setup: h, Compression: method}
	if err := img.setELF(blob); err != nil {
		return nil, fmt.Errorf("parsing vmlinux in the %s payload: %w", method, err)
	}
	if tail := blob[len(img.ELF):]; len(tail) > 0 {
		if img.Relocs, err = parseRelocs(tail); err != nil {
			return nil, fmt.Errorf("parsing relocation table after the vmlinux in the payload: %w", err)
		}
	}
	if img.Version == "" {
		img.Version = setupVersion(data, h)
	}
	return img, nil
}

// setELF parses the ELF at the start of data and fills the ELF fields.
func (img *Image) setELF(data []byte) error {
	f, err := parseELF(data)
	if err != nil {
		return err
	}
	img.ELF = data[:f.length:f.length]
	img.Entry = f.entry
	img.Segments = f.segments
	img.sections = f.sections
	if rodata, err := img.Section(".rodata"); err == nil {
		img.Banner = findBanner(rodata)
	}
	if img.Banner == "" {
		for _, s := range img.Segments {
			if img.Banner = findBanner(s.Data); img.Banner != "" {
				break
			}
		}
	}
	img.Version = BannerRelease(img.Banner)
	return nil
}

// Section returns the contents of the named ELF section, e.g. ".BTF".
// The error wraps ErrNoSection when there is none or it has no file
// contents (SHT_NOBITS).
func (img *Image) Section(name string) ([]byte, error) {
	for _, s := range img.sections {
		if s.name == name && s.typ != shtNobits {
			return img.ELF[s.offset : s.offset+s.size], nil
		}
	}
	return nil, fmt.Errorf("section %q: %w", name, ErrNoSection)
}

// SectionHeader returns the named ELF section's link-time virtual address
// and size, for tables whose entries hold addresses relative to their own
// location (the kernel's .altinstructions, .smp_locks, ...), which Section's
// bytes alone cannot resolve. ok is false when there is no such section; a
// SHT_NOBITS section (.bss) is reported, though it has no file bytes.
func (img *Image) SectionHeader(name string) (addr, size uint64, ok bool) {
	for _, s := range img.sections {
		if s.name == name && name != "" {
			return s.addr, s.size, true
		}
	}
	return 0, 0, false
}

// ReadVirt returns the file bytes backing [vaddr, vaddr+n) at link-time
// virtual addresses, when a single PT_LOAD segment holds all of them in
// its file part.
func (img *Image) ReadVirt(vaddr uint64, n int) ([]byte, bool) {
	for _, s := range img.Segments {
		if vaddr < s.Vaddr {
			continue
		}
		off := vaddr - s.Vaddr
		if end, ok := span(off, uint64(n), uint64(len(s.Data))); ok && n >= 0 {
			return s.Data[off:end], true
		}
	}
	return nil, false
}
