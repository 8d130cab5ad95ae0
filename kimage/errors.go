package kimage

import (
	"errors"
	"fmt"
)

var (
	// ErrFormat: the input is not a well-formed kernel image (bad magic,
	// truncated, inconsistent header or payload).
	ErrFormat = errors.New("malformed kernel image")
	// ErrUnsupported: the image is well-formed but uses something this
	// package does not handle (old boot protocol, compression method).
	ErrUnsupported = errors.New("unsupported kernel image")
	// ErrNoSection: the ELF has no section of the requested name.
	ErrNoSection = errors.New("no such ELF section")
	// ErrNoRelocs: a virtual relocation was asked of an image that carries
	// no relocation table.
	ErrNoRelocs = errors.New("kernel image has no relocation table")
	// ErrMisaligned: a load or relocation delta is not a multiple of
	// PhysicalAlign.
	ErrMisaligned = errors.New("delta not aligned to CONFIG_PHYSICAL_ALIGN")
	// ErrOutOfRange: loading would write outside guest RAM or outside the
	// loaded kernel.
	ErrOutOfRange = errors.New("out of range")
)

// FormatError says what is wrong where in the input. It is ErrFormat.
type FormatError struct {
	What string // the structure being read, e.g. "setup header"
	Off  uint64 // byte offset in that structure's container
	Msg  string
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("%s at offset %#x: %s", e.What, e.Off, e.Msg)
}

// Is makes errors.Is(err, ErrFormat) true.
func (e *FormatError) Is(target error) bool { return target == ErrFormat }

func formatErr(what string, off uint64, format string, args ...any) error {
	return &FormatError{What: what, Off: off, Msg: fmt.Sprintf(format, args...)}
}

// UnsupportedCompressionError names a payload compression this package
// cannot decompress. It is ErrUnsupported.
type UnsupportedCompressionError struct {
	Method string // "bzip2", "lzma", "lzo", "xz with x86 BCJ filter", ...
}

func (e *UnsupportedCompressionError) Error() string {
	return "unsupported compression " + e.Method
}

// Is makes errors.Is(err, ErrUnsupported) true.
func (e *UnsupportedCompressionError) Is(target error) bool { return target == ErrUnsupported }

// RelocError locates a relocation that Load refused. It wraps the reason
// (ErrOutOfRange).
type RelocError struct {
	Kind  RelocKind
	Index int    // position in the Relocs list of that kind
	Addr  uint64 // the relocation's virtual address
	Err   error
}

func (e *RelocError) Error() string {
	return fmt.Sprintf("%s relocation %d (%#x): %v", e.Kind, e.Index, e.Addr, e.Err)
}

func (e *RelocError) Unwrap() error { return e.Err }
