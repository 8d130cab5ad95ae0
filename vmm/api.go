package vmm

// Regs mirrors struct kvm_regs (arch/x86/include/uapi/asm/kvm.h).
type Regs struct {
	RAX, RBX, RCX, RDX uint64
	RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11   uint64
	R12, R13, R14, R15 uint64
	RIP, RFLAGS        uint64
}

// Segment mirrors struct kvm_segment.
type Segment struct {
	Base     uint64
	Limit    uint32
	Selector uint16
	Type     uint8
	Present  uint8
	DPL      uint8
	DB       uint8
	S        uint8
	L        uint8
	G        uint8
	AVL      uint8
	Unusable uint8
	_        uint8
}

// DTable mirrors struct kvm_dtable.
type DTable struct {
	Base  uint64
	Limit uint16
	_     [3]uint16
}

// Sregs mirrors struct kvm_sregs.
type Sregs struct {
	CS, DS, ES, FS, GS, SS  Segment
	TR, LDT                 Segment
	GDT, IDT                DTable
	CR0, CR2, CR3, CR4, CR8 uint64
	EFER                    uint64
	APICBase                uint64
	InterruptBitmap         [4]uint64 // (KVM_NR_INTERRUPTS + 63) / 64
}

// RFLAGS bits the probe engine and the assists care about.
const (
	FlagTF = 1 << 8
	FlagIF = 1 << 9
)

// PhysMem is guest-physical memory. Accesses that leave guest RAM fail
// with an error wrapping ErrOutOfRange; nothing is written in that case.
type PhysMem interface {
	ReadPhys(gpa uint64, p []byte) error
	WritePhys(gpa uint64, p []byte) error
}

// AtomicPhys is guest-physical memory accessed as a CPU accesses it: an
// aligned load or store of 1, 2, 4 or 8 bytes is single-copy atomic
// against the running vCPUs (ReadPhys and WritePhys are copies, which may
// tear a value). Memory implements it.
type AtomicPhys interface {
	LoadPhys(gpa uint64, size int) (uint64, error)
	StorePhys(gpa uint64, size int, v uint64) error
}

// DebugKind says what stopped a vCPU for the debug hook.
type DebugKind int

const (
	// DebugBreakpoint: the vCPU executed an int3. RIP is the address of the
	// int3 itself, whichever way the exit arrived (KVM_EXIT_DEBUG with
	// KVM_GUESTDBG_USE_SW_BP on hardware KVM, or an emulation failure on an
	// emulating KVM).
	DebugBreakpoint DebugKind = iota
	// DebugSingleStep: one instruction completed under
	// KVM_GUESTDBG_SINGLESTEP. RIP is where the vCPU now stands.
	DebugSingleStep
)

func (k DebugKind) String() string {
	switch k {
	case DebugBreakpoint:
		return "breakpoint"
	case DebugSingleStep:
		return "single-step"
	}
	return "unknown"
}

// DebugEvent is one breakpoint or single-step stop of one vCPU.
type DebugEvent struct {
	Kind DebugKind
	RIP  uint64
}

// CPU is one vCPU as the debug hook and Do callbacks see it. It is valid
// only during that call, which runs on the vCPU's own OS thread while the
// vCPU is stopped; register writes take effect when it runs again.
type CPU interface {
	ID() int
	Regs() (Regs, error)
	SetRegs(Regs) error
	Sregs() (Sregs, error)
	// MSR reads one model-specific register (KVM_GET_MSRS).
	MSR(index uint32) (uint64, error)
	// SetSingleStep turns KVM_GUESTDBG_SINGLESTEP on or off for the next
	// KVM_RUN; software-breakpoint interception stays as configured.
	SetSingleStep(on bool) error
}

// DebugHook receives every breakpoint and single-step event. It runs on the
// vCPU's thread. For a DebugBreakpoint, handled=false means the int3 is not
// the hook's: the VMM then delivers #BP to the guest as the CPU would have.
// A DebugSingleStep nobody asked for is ignored when unhandled.
type DebugHook interface {
	HandleDebug(cpu CPU, ev DebugEvent) (handled bool)
}

// Arg locates integer-class argument i (from 0) of a function stopped at
// its first instruction, per the x86-64 SysV ABI: the first six are in
// rdi, rsi, rdx, rcx, r8, r9 (inReg true, value in val); the rest are on
// the stack just above the return address, at stackAddr.
func (r *Regs) Arg(i int) (val, stackAddr uint64, inReg bool) {
	switch i {
	case 0:
		return r.RDI, 0, true
	case 1:
		return r.RSI, 0, true
	case 2:
		return r.RDX, 0, true
	case 3:
		return r.RCX, 0, true
	case 4:
		return r.R8, 0, true
	case 5:
		return r.R9, 0, true
	}
	return 0, r.RSP + 8*uint64(i-5), false
}
