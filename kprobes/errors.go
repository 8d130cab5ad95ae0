package kprobes

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error the package returns for a refused probe is a
// *ProbeError whose Is matches one of these.
var (
	// ErrBadProbe: the probe description is inconsistent (no address and
	// no symbol, both, a nil handler where one is required, ...).
	ErrBadProbe = errors.New("invalid probe")
	// ErrNotInText: the address is not in the kernel's executable text.
	ErrNotInText = errors.New("address not in kernel text")
	// ErrNotBoundary: the address is inside an instruction.
	ErrNotBoundary = errors.New("not on an instruction boundary")
	// ErrUndecodable: the instruction at the address does not decode.
	ErrUndecodable = errors.New("undecodable instruction")
	// ErrUnsafeInstruction: the instruction decodes but cannot be executed
	// out of line safely.
	ErrUnsafeInstruction = errors.New("instruction cannot be probed")
	// ErrOutOfReach: a %rip-relative operand cannot be re-addressed from
	// the slot area (more than ±2 GiB away).
	ErrOutOfReach = errors.New("operand out of reach of the slot area")
	// ErrNoSlots: the slot area is exhausted.
	ErrNoSlots = errors.New("no free instruction slot")
	// ErrAlreadyRegistered: this very probe value is registered already.
	ErrAlreadyRegistered = errors.New("probe already registered")
	// ErrNotRegistered: the probe is not registered with this manager.
	ErrNotRegistered = errors.New("probe not registered")
	// ErrClosed: the manager has been closed.
	ErrClosed = errors.New("probe manager closed")
	// ErrTextModified: the guest rewrote the byte where hvprobe's int3 was.
	ErrTextModified = errors.New("guest modified probed text")
	// ErrPatchedText: the kernel rewrites these bytes itself (jump label,
	// static call, inside a boot-time patch site).
	ErrPatchedText = errors.New("text the kernel patches itself")
	// ErrNotYetPatched: the kernel rewrites these bytes at boot and has not
	// done so yet; a probe there can be armed once it has.
	ErrNotYetPatched = errors.New("text not yet patched by the kernel")
	// ErrUnsafeContext: the kernel runs this text in a state where a
	// probe hit cannot be taken (the user's stack at the syscall entry).
	ErrUnsafeContext = errors.New("text where a probe hit cannot be taken")
)

// ProbeError says why one probe could not be registered. Probe names the
// input as the caller gave it ("vfs_read+0x3", or the address with its
// symbol+offset when given by address).
type ProbeError struct {
	Probe  string
	Kind   error // one of the sentinels above
	Reason string
}

func (e *ProbeError) Error() string { return e.Probe + ": " + e.Reason }

// Is matches the sentinel the error is a kind of.
func (e *ProbeError) Is(target error) bool { return target == e.Kind }

func probeErr(probe string, kind error, format string, args ...any) *ProbeError {
	return &ProbeError{Probe: probe, Kind: kind, Reason: fmt.Sprintf(format, args...)}
}

// TextModifiedError is returned when disarming finds that the guest has
// rewritten the byte where hvprobe's int3 was (jump labels, static calls,
// alternatives, text_poke). The engine then leaves the guest's byte alone:
// writing the saved original back would undo the guest's own patch.
type TextModifiedError struct {
	Addr     uint64 // kernel VA of the probe
	GPA      uint64
	Original byte // the byte hvprobe saved when arming
	Found    byte // what is there now instead of 0xcc
}

func (e *TextModifiedError) Error() string {
	return fmt.Sprintf("disarming probe at %#x (gpa %#x): guest rewrote the int3 as %#02x (original %#02x); left as the guest wrote it",
		e.Addr, e.GPA, e.Found, e.Original)
}

// Is matches ErrTextModified.
func (e *TextModifiedError) Is(target error) bool { return target == ErrTextModified }

// ReservedError is a Kernel.Reserved answer: Kind is ErrPatchedText or
// ErrNotYetPatched, Reason says what the kernel does with the bytes.
type ReservedError struct {
	Kind   error
	Reason string
}

func (e *ReservedError) Error() string { return e.Reason }

// Is matches Kind.
func (e *ReservedError) Is(target error) bool { return target == e.Kind }

// Reserved makes a *ReservedError.
func Reserved(kind error, format string, args ...any) error {
	return &ReservedError{Kind: kind, Reason: fmt.Sprintf(format, args...)}
}
