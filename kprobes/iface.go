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
	// InEntryText reports whether va lies in .entry.text, which
	// exceptions, interrupts and system calls enter.
	InEntryText(va uint64) bool
	// Describe says where va is, for an error about an address that no
	// function contains: in which symbol of any type, or outside them all.
	Describe(va uint64) string
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
	// Entered reports whether the kernel's tables send control into
	// (va, va+n) other than through va: an exception fixup or a jump
	// label's target lands there. Code replacing several instructions
	// at va must not be entered in its middle.
	Entered(va, n uint64) bool
}

// SlotArea is the guest region reserved for hvprobe's instruction slots:
// Size bytes at guest-physical GPA, mapped read+exec at kernel VA, linearly
// (VA+i maps to GPA+i), within ±2 GiB of kernel text so that
// %rip-relative displacements and the slots' jmp rel32 reach.
type SlotArea struct {
	VA, GPA, Size uint64
}

// AtomicVirt is kernel virtual memory accessed as the CPU accesses it. A
// Kernel that implements it lets the engine emulate instructions with data
// memory operands (mov, arithmetic, push/pop m64, movs/stos), post handlers
// included, in the hit's one exit; without it those run from their slot.
// ReadVirt and WriteVirt are copies (memmove) that may tear a value, which
// another vCPU reading a pointer with READ_ONCE must never see.
//
// Both take size 1, 2, 4 or 8 and a va whose [va, va+size) lies in one
// 4 KiB page; va is translated through the kernel's page tables as
// ReadVirt does. The access fails, touching nothing, when va is not
// mapped or translates outside guest RAM (MMIO); StoreVirt also fails
// when the walk does not grant a write at every level (R/W clear: the
// CPU would fault, CR0.WP being set in a Linux kernel). When va is a
// multiple of size, the access is one host load or store of that width on
// the RAM mapping, single-copy atomic against the running vCPUs. Values
// are little-endian: the low size bytes of v, zero-extended on load.
type AtomicVirt interface {
	LoadVirt(va uint64, size int) (uint64, error)
	StoreVirt(va uint64, size int, v uint64) error
}
