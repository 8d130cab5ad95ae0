package kprobes

import "github.com/hvprobe/hvprobe/vmm"

// VM is what the engine needs from the virtual machine. The lead's
// concrete VM type satisfies it.
type VM interface {
	// Mem is guest-physical memory; the engine writes int3 bytes and slot
	// contents through it.
	Mem() vmm.PhysMem
	// SetDebugHook installs (or, with nil, removes) the hook that receives
	// every breakpoint and single-step event of every vCPU.
	SetDebugHook(vmm.DebugHook)
	// NumCPUs is the number of vCPUs; it sizes per-vCPU state and the
	// default kretprobe MaxActive.
	NumCPUs() int
}

// Kernel is the running guest kernel as seen from the host, with KASLR
// already applied by the implementation. All addresses are kernel virtual
// addresses.
type Kernel interface {
	// Resolve returns the address of sym plus off.
	Resolve(sym string, off uint64) (va uint64, err error)
	// SymbolAt names the symbol containing va, with va's offset into it
	// and the symbol's size.
	SymbolAt(va uint64) (name string, off, size uint64, ok bool)
	// InText reports whether va lies in the kernel's executable text.
	InText(va uint64) bool
	// Translate walks the guest's page tables: kernel VA to GPA.
	Translate(va uint64) (gpa uint64, err error)
	ReadVirt(va uint64, p []byte) error
	WriteVirt(va uint64, p []byte) error
	// Reserved says why the instruction bytes [va, va+n) must not get an
	// int3 now — text the kernel rewrites itself (jump labels, static
	// calls, boot-time alternatives), as Linux's jump_label_text_reserved
	// and static_call_text_reserved say — or nil. The error wraps
	// ErrPatchedText, or ErrNotYetPatched when the kernel has yet to
	// rewrite the bytes at boot and the probe can be armed afterwards.
	Reserved(va, n uint64) error
	// HasFixup reports whether the instruction at va has an exception-table
	// entry: a fault there is handled by looking va up, so the instruction
	// must fault at va, never in a slot.
	HasFixup(va uint64) bool
}

// SlotArea is the guest region reserved for hvprobe's instruction slots:
// Size bytes at guest-physical GPA, mapped read+exec at kernel VA, linearly
// (VA+i maps to GPA+i), within ±2 GiB of kernel text so that
// %rip-relative displacements and the slots' jmp rel32 reach.
type SlotArea struct {
	VA, GPA, Size uint64
}
