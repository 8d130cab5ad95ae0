package kimage

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Boot protocol constants (Documentation/arch/x86/boot.rst).
const (
	// SetupHeaderOffset is where struct setup_header starts in a bzImage
	// and in struct boot_params (the zero page).
	SetupHeaderOffset = 0x1f1
	// SetupHeaderSize is sizeof(struct setup_header), packed.
	SetupHeaderSize = 0x7b
	// HdrSMagic is setup_header.header, "HdrS" read little-endian.
	HdrSMagic = 0x53726448
	// MinProtocol is the oldest boot protocol with the 64-bit entry and
	// xloadflags (2.12).
	MinProtocol = 0x020c

	// XLFKernel64 (xloadflags): the kernel has the legacy 64-bit entry
	// point at startup_32 + 0x200.
	XLFKernel64 = 1 << 0
	// LoadedHigh (loadflags): protected-mode code loads at 0x100000.
	LoadedHigh = 1 << 0
	// KASLRFlag (loadflags): the loader randomized the kernel's placement.
	KASLRFlag = 1 << 1
	// CanUseHeap (loadflags): heap_end_ptr is valid.
	CanUseHeap = 1 << 7
)

// SetupHeader mirrors struct setup_header
// (arch/x86/include/uapi/asm/bootparam.h). The C struct is packed; this
// mirror has no padding either, so encoding/binary reads and writes it
// byte-for-byte (binary.Size(SetupHeader{}) == SetupHeaderSize).
type SetupHeader struct {
	SetupSects          uint8
	RootFlags           uint16
	Syssize             uint32
	RAMSize             uint16
	VidMode             uint16
	RootDev             uint16
	BootFlag            uint16
	Jump                uint16
	Header              uint32
	Version             uint16
	RealmodeSwtch       uint32
	StartSysSeg         uint16
	KernelVersion       uint16
	TypeOfLoader        uint8
	LoadFlags           uint8
	SetupMoveSize       uint16
	Code32Start         uint32
	RamdiskImage        uint32
	RamdiskSize         uint32
	BootsectKludge      uint32
	HeapEndPtr          uint16
	ExtLoaderVer        uint8
	ExtLoaderType       uint8
	CmdLinePtr          uint32
	InitrdAddrMax       uint32
	KernelAlignment     uint32
	RelocatableKernel   uint8
	MinAlignment        uint8
	XLoadFlags          uint16
	CmdlineSize         uint32
	HardwareSubarch     uint32
	HardwareSubarchData uint64
	PayloadOffset       uint32
	PayloadLength       uint32
	SetupData           uint64
	PrefAddress         uint64
	InitSize            uint32
	HandoverOffset      uint32
	KernelInfoOffset    uint32
}

// ProtectedModeOffset is the file offset of the protected-mode kernel:
// the boot sector plus setup_sects sectors (0 meaning 4, for old images).
func (h *SetupHeader) ProtectedModeOffset() uint64 {
	sects := uint64(h.SetupSects)
	if sects == 0 {
		sects = 4
	}
	return (sects + 1) * 512
}

// isBzImage reports whether data starts like a bzImage: "HdrS" at 0x202.
func isBzImage(data []byte) bool {
	return len(data) >= 0x206 && binary.LittleEndian.Uint32(data[0x202:]) == HdrSMagic
}

// parseSetup reads and checks the setup header and returns it with the
// compressed payload it points to.
func parseSetup(data []byte) (*SetupHeader, []byte, error) {
	if len(data) < SetupHeaderOffset+SetupHeaderSize {
		return nil, nil, formatErr("bzImage", uint64(len(data)), "file ends inside the setup header (%d bytes, need %d)", len(data), SetupHeaderOffset+SetupHeaderSize)
	}
	var h SetupHeader
	if err := binary.Read(bytes.NewReader(data[SetupHeaderOffset:]), binary.LittleEndian, &h); err != nil {
		return nil, nil, fmt.Errorf("reading setup header: %w", err)
	}
	if h.Version < MinProtocol {
		return nil, nil, fmt.Errorf("boot protocol %d.%02d, need %d.%02d for 64-bit boot: %w",
			h.Version>>8, h.Version&0xff, MinProtocol>>8, MinProtocol&0xff, ErrUnsupported)
	}
	if h.XLoadFlags&XLFKernel64 == 0 {
		return nil, nil, fmt.Errorf("xloadflags %#x lacks XLF_KERNEL_64 (not a 64-bit kernel): %w", h.XLoadFlags, ErrUnsupported)
	}
	pm := h.ProtectedModeOffset()
	start := pm + uint64(h.PayloadOffset)
	end := start + uint64(h.PayloadLength)
	if h.PayloadLength < 4 || end > uint64(len(data)) {
		return nil, nil, formatErr("bzImage", start, "payload [%#x, %#x) does not fit in the %d-byte file", start, end, len(data))
	}
	return &h, data[start:end], nil
}

// setupVersion returns the kernel release named by setup_header's
// kernel_version pointer (an offset from 0x200 to a NUL-terminated string
// whose first word is the release), or "" when there is none.
func setupVersion(data []byte, h *SetupHeader) string {
	if h.KernelVersion == 0 {
		return ""
	}
	off := 0x200 + int(h.KernelVersion)
	if off >= len(data) {
		return ""
	}
	s := data[off:min(len(data), off+256)]
	if i := bytes.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	if f := bytes.Fields(s); len(f) > 0 {
		return string(f[0])
	}
	return ""
}
