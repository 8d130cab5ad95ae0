package vmm

// KVM API values for the memory watches (hwbreak.go, writetrap.go), kept
// apart from kvm.go so that file stays as it is.
const (
	// guestDbgUseHWBP is KVM_GUESTDBG_USE_HW_BP: KVM loads DR0-3/DR7 from
	// kvm_guest_debug.arch.debugreg instead of the guest's own values and
	// reports their #DB as KVM_EXIT_DEBUG.
	guestDbgUseHWBP = 0x20000
	// memReadonly is KVM_MEM_READONLY, a kvm_userspace_memory_region
	// flag: guest reads are served from the mapping, writes exit as
	// KVM_EXIT_MMIO (KVM_CAP_READONLY_MEM).
	memReadonly = 1 << 1
	// flagRF is RFLAGS.RF: the next instruction's execute breakpoints are
	// suppressed, so a vCPU stopped at one can resume past it.
	flagRF = 1 << 16
)
