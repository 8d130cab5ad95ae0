package vmm

// KVM API numbers (include/uapi/linux/kvm.h). Each ioctl number encodes
// the size of the struct it carries; sizes_test.go checks the mirrors.
const (
	kvmio = 0xAE

	iocNone  = 0
	iocWrite = 1
	iocRead  = 2
)

func ioc(dir, nr, size uintptr) uintptr { return dir<<30 | size<<16 | kvmio<<8 | nr }

var (
	kvmGetAPIVersion       = ioc(iocNone, 0x00, 0)
	kvmCreateVM            = ioc(iocNone, 0x01, 0)
	kvmCheckExtension      = ioc(iocNone, 0x03, 0)
	kvmGetVCPUMmapSize     = ioc(iocNone, 0x04, 0)
	kvmGetSupportedCPUID   = ioc(iocRead|iocWrite, 0x05, 8)
	kvmCreateVCPU          = ioc(iocNone, 0x41, 0)
	kvmGetDirtyLog         = ioc(iocWrite, 0x42, 16) // _IOW, though KVM writes the bitmap it points to
	kvmSetUserMemoryRegion = ioc(iocWrite, 0x46, 32)
	kvmSetTSSAddr          = ioc(iocNone, 0x47, 0)
	kvmSetIdentityMapAddr  = ioc(iocWrite, 0x48, 8)
	kvmCreateIRQChip       = ioc(iocNone, 0x60, 0)
	kvmIRQLine             = ioc(iocWrite, 0x61, 8)
	kvmSignalMSI           = ioc(iocWrite, 0xa5, 32)
	kvmCreatePIT2          = ioc(iocWrite, 0x77, 64)
	kvmGetRegs             = ioc(iocRead, 0x81, 144)
	kvmNMI                 = ioc(iocNone, 0x9a, 0)
	kvmSetRegs             = ioc(iocWrite, 0x82, 144)
	kvmGetSregs            = ioc(iocRead, 0x83, 312)
	kvmSetSregs            = ioc(iocWrite, 0x84, 312)
	kvmTranslate           = ioc(iocRead|iocWrite, 0x85, 24)
	kvmGetMSRs             = ioc(iocRead|iocWrite, 0x88, 8)
	kvmSetMSRs             = ioc(iocWrite, 0x89, 8)
	kvmGetFPU              = ioc(iocRead, 0x8c, 416)
	kvmSetFPU              = ioc(iocWrite, 0x8d, 416)
	kvmGetLAPIC            = ioc(iocRead, 0x8e, 1024)
	kvmSetLAPIC            = ioc(iocWrite, 0x8f, 1024)
	kvmSetCPUID2           = ioc(iocWrite, 0x90, 8)
	kvmSetGuestDebug       = ioc(iocWrite, 0x9b, 72)
	kvmGetVCPUEvents       = ioc(iocRead, 0x9f, 64)
	kvmSetVCPUEvents       = ioc(iocWrite, 0xa0, 64)
	kvmEnableCap           = ioc(iocWrite, 0xa3, 104)

	// Snapshot state.
	kvmGetMSRIndexList = ioc(iocRead|iocWrite, 0x02, 4)
	kvmGetIRQChip      = ioc(iocRead|iocWrite, 0x62, 520)
	kvmSetIRQChip      = ioc(iocRead, 0x63, 520) // _IOR in kvm.h, not _IOW
	kvmSetClock        = ioc(iocWrite, 0x7b, 48)
	kvmGetClock        = ioc(iocRead, 0x7c, 48)
	kvmGetCPUID2       = ioc(iocRead|iocWrite, 0x91, 8)
	kvmGetMPState      = ioc(iocRead, 0x98, 4)
	kvmSetMPState      = ioc(iocWrite, 0x99, 4)
	kvmGetPIT2         = ioc(iocRead, 0x9f, 112)
	kvmSetPIT2         = ioc(iocWrite, 0xa0, 112)
	kvmGetDebugRegs    = ioc(iocRead, 0xa1, 128)
	kvmSetDebugRegs    = ioc(iocWrite, 0xa2, 128)
	kvmGetXSave        = ioc(iocRead, 0xa4, 4096)
	kvmSetXSave        = ioc(iocWrite, 0xa5, 4096)
	kvmGetXCRs         = ioc(iocRead, 0xa6, 392)
	kvmSetXCRs         = ioc(iocWrite, 0xa7, 392)
	kvmKVMClockCtrl    = ioc(iocNone, 0xad, 0)
	kvmGetTSCKHz       = ioc(iocNone, 0xa3, 0)
	kvmGetXSave2       = ioc(iocRead, 0xcf, 4096)
)

// kvmRun is a var-free constant for ioctl's EINTR rule.
const kvmRun = iocNone<<30 | 0<<16 | kvmio<<8 | 0x80

// Capabilities (KVM_CAP_*).
const (
	capIRQChip                = 0
	capSetGuestDebug          = 23
	capVCPUEvents             = 41
	capX86RobustSinglestep    = 51
	capImmediateExit          = 136
	capSetGuestDebug2         = 195
	capExitOnEmulationFailure = 204
	capDebugRegs              = 50
	capXSave                  = 55
	capXCRs                   = 56
	capXSave2                 = 208

	// Memslots and dirty logging (dirtylog.go).
	capNRMemslots             = 10
	capReadonlyMem            = 81
	capManualDirtyLogProtect2 = 168
	capDirtyLogRing           = 192
)

// memLogDirtyPages is KVM_MEM_LOG_DIRTY_PAGES, a kvm_userspace_memory_region flag.
const memLogDirtyPages = 1 << 0

// Exit reasons (KVM_EXIT_*).
const (
	exitUnknown       = 0
	exitException     = 1
	exitIO            = 2
	exitDebug         = 4
	exitHLT           = 5
	exitMMIO          = 6
	exitShutdown      = 8
	exitFailEntry     = 9
	exitIntr          = 10
	exitInternalError = 17
	exitSystemEvent   = 24
)

// Guest debug control bits (KVM_GUESTDBG_*).
const (
	guestDbgEnable     = 0x1
	guestDbgSingleStep = 0x2
	guestDbgUseSWBP    = 0x10000
)

const (
	internalErrorEmulation = 1
	ioDirIn                = 0
	ioDirOut               = 1
	systemEventShutdown    = 1
	systemEventReset       = 2
	pitSpeakerDummy        = 1
	kvmRunUnionOffset      = 32
)

// kvmRunHeader mirrors the fixed head of struct kvm_run.
type kvmRunHeader struct {
	RequestInterruptWindow     uint8
	ImmediateExit              uint8
	_                          [6]uint8
	ExitReason                 uint32
	ReadyForInterruptInjection uint8
	IFFlag                     uint8
	Flags                      uint16
	CR8                        uint64
	APICBase                   uint64
}

// userspaceMemoryRegion mirrors struct kvm_userspace_memory_region.
type userspaceMemoryRegion struct {
	Slot          uint32
	Flags         uint32
	GuestPhysAddr uint64
	MemorySize    uint64
	UserspaceAddr uint64
}

// irqLevel mirrors struct kvm_irq_level.
type irqLevel struct {
	IRQ   uint32
	Level uint32
}

// pitConfig mirrors struct kvm_pit_config.
type pitConfig struct {
	Flags uint32
	_     [15]uint32
}

// guestDebug mirrors struct kvm_guest_debug (x86 arch part: 8 debugregs).
type guestDebug struct {
	Control  uint32
	_        uint32
	DebugReg [8]uint64
}

// translation mirrors struct kvm_translation.
type translation struct {
	LinearAddress   uint64
	PhysicalAddress uint64
	Valid           uint8
	Writeable       uint8
	Usermode        uint8
	_               [5]uint8
}

// FPU mirrors struct kvm_fpu.
type FPU struct {
	FPR        [8][16]uint8
	FCW        uint16
	FSW        uint16
	FTWX       uint8
	_          uint8
	LastOpcode uint16
	LastIP     uint64
	LastDP     uint64
	XMM        [16][16]uint8
	MXCSR      uint32
	_          uint32
}

// LAPICState mirrors struct kvm_lapic_state.
type LAPICState struct {
	Regs [1024]uint8
}

// VCPUEvents mirrors struct kvm_vcpu_events.
type VCPUEvents struct {
	Exception struct {
		Injected     uint8
		Nr           uint8
		HasErrorCode uint8
		Pending      uint8
		ErrorCode    uint32
	}
	Interrupt struct {
		Injected uint8
		Nr       uint8
		Soft     uint8
		Shadow   uint8
	}
	NMI struct {
		Injected uint8
		Pending  uint8
		Masked   uint8
		_        uint8
	}
	SIPIVector uint32
	Flags      uint32
	SMI        struct {
		SMM          uint8
		Pending      uint8
		SMMInsideNMI uint8
		LatchedInit  uint8
	}
	TripleFault         uint8
	_                   [26]uint8
	ExceptionHasPayload uint8
	ExceptionPayload    uint64
}

// enableCap mirrors struct kvm_enable_cap.
type enableCap struct {
	Cap   uint32
	Flags uint32
	Args  [4]uint64
	_     [64]uint8
}

// CPUIDEntry mirrors struct kvm_cpuid_entry2.
type CPUIDEntry struct {
	Function uint32
	Index    uint32
	Flags    uint32
	EAX      uint32
	EBX      uint32
	ECX      uint32
	EDX      uint32
	_        [3]uint32
}

// MSREntry mirrors struct kvm_msr_entry.
type MSREntry struct {
	Index uint32
	_     uint32
	Data  uint64
}

// ioExit mirrors the io member of kvm_run's exit union.
type ioExit struct {
	Direction  uint8
	Size       uint8
	Port       uint16
	Count      uint32
	DataOffset uint64
}

// mmioExit mirrors the mmio member of kvm_run's exit union.
type mmioExit struct {
	PhysAddr uint64
	Data     [8]uint8
	Len      uint32
	IsWrite  uint8
}

// kvmMSI mirrors struct kvm_msi (KVM_SIGNAL_MSI).
type kvmMSI struct {
	AddressLo, AddressHi, Data, Flags, DevID uint32
	_                                        [12]uint8
}

// debugExit mirrors struct kvm_debug_exit_arch.
type debugExit struct {
	Exception uint32
	_         uint32
	PC        uint64
	DR6       uint64
	DR7       uint64
}

// internalExit mirrors the internal member of kvm_run's exit union.
type internalExit struct {
	Suberror uint32
	NData    uint32
	Data     [16]uint64
}

// systemEventExit mirrors the system_event member (type + flags).
type systemEventExit struct {
	Type  uint32
	NData uint32
	Data  [16]uint64
}

// MSR numbers used by the VMM and its users.
const (
	MSRLSTAR        = 0xC0000082
	MSRGSBase       = 0xC0000101
	MSRKernelGSBase = 0xC0000102
)
