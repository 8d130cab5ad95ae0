package vmm

import (
	"testing"
	"unsafe"
)

// Each mirror struct's size must equal the size encoded in its ioctl
// number: a wrong field is caught here, not by a guest misbehaving.
func TestMirrorSizesMatchIoctlNumbers(t *testing.T) {
	size := func(req uintptr) uintptr { return (req >> 16) & 0x3fff }
	cases := []struct {
		name string
		got  uintptr
		req  uintptr
	}{
		{"kvm_regs", unsafe.Sizeof(Regs{}), kvmGetRegs},
		{"kvm_sregs", unsafe.Sizeof(Sregs{}), kvmGetSregs},
		{"kvm_userspace_memory_region", unsafe.Sizeof(userspaceMemoryRegion{}), kvmSetUserMemoryRegion},
		{"kvm_irq_level", unsafe.Sizeof(irqLevel{}), kvmIRQLine},
		{"kvm_pit_config", unsafe.Sizeof(pitConfig{}), kvmCreatePIT2},
		{"kvm_guest_debug", unsafe.Sizeof(guestDebug{}), kvmSetGuestDebug},
		{"kvm_translation", unsafe.Sizeof(translation{}), kvmTranslate},
		{"kvm_fpu", unsafe.Sizeof(FPU{}), kvmGetFPU},
		{"kvm_lapic_state", unsafe.Sizeof(LAPICState{}), kvmGetLAPIC},
		{"kvm_vcpu_events", unsafe.Sizeof(VCPUEvents{}), kvmGetVCPUEvents},
		{"kvm_enable_cap", unsafe.Sizeof(enableCap{}), kvmEnableCap},
		{"kvm_irqchip", unsafe.Sizeof(irqChip{}), kvmGetIRQChip},
		{"kvm_irqchip (set)", unsafe.Sizeof(irqChip{}), kvmSetIRQChip},
		{"kvm_clock_data", unsafe.Sizeof(clockData{}), kvmGetClock},
		{"kvm_pit_state2", unsafe.Sizeof(pitState2{}), kvmGetPIT2},
		{"kvm_debugregs", unsafe.Sizeof(debugRegs{}), kvmGetDebugRegs},
		{"kvm_xcrs", unsafe.Sizeof(xcrs{}), kvmGetXCRs},
		{"kvm_mp_state", unsafe.Sizeof(uint32(0)), kvmGetMPState},
		{"kvm_dirty_log", unsafe.Sizeof(dirtyLog{}), kvmGetDirtyLog},
		{"kvm_msi", unsafe.Sizeof(kvmMSI{}), kvmSignalMSI},
	}
	for _, c := range cases {
		if c.got != size(c.req) {
			t.Errorf("%s: mirror is %d bytes, ioctl encodes %d", c.name, c.got, size(c.req))
		}
	}
	// Structs without an ioctl of their own: sizes from kvm.h.
	fixed := []struct {
		name      string
		got, want uintptr
	}{
		{"kvm_cpuid_entry2", unsafe.Sizeof(CPUIDEntry{}), 40},
		{"kvm_msr_entry", unsafe.Sizeof(MSREntry{}), 16},
		{"kvm_segment", unsafe.Sizeof(Segment{}), 24},
		{"kvm_dtable", unsafe.Sizeof(DTable{}), 16},
		{"kvm_run head", unsafe.Sizeof(kvmRunHeader{}), kvmRunUnionOffset},
		{"kvm_run.io", unsafe.Sizeof(ioExit{}), 16},
		{"kvm_debug_exit_arch", unsafe.Sizeof(debugExit{}), 32},
		{"kvm_run.internal", unsafe.Sizeof(internalExit{}), 136},
	}
	for _, c := range fixed {
		if c.got != c.want {
			t.Errorf("%s: mirror is %d bytes, kvm.h says %d", c.name, c.got, c.want)
		}
	}
	if kvmRun != ioc(iocNone, 0x80, 0) {
		t.Errorf("kvmRun = %#x, want %#x", kvmRun, ioc(iocNone, 0x80, 0))
	}
	// Known absolute values from kvm.h, to catch a wrong ioc() encoding.
	if kvmGetRegs != 0x8090AE81 || kvmSetGuestDebug != 0x4048AE9B || kvmRun != 0xAE80 || kvmNMI != 0xAE9A {
		t.Errorf("ioctl encoding: KVM_GET_REGS=%#x KVM_SET_GUEST_DEBUG=%#x KVM_RUN=%#x KVM_NMI=%#x", kvmGetRegs, kvmSetGuestDebug, kvmRun, kvmNMI)
	}
	// _IOW(KVMIO, 0x42, struct kvm_dirty_log): 16 bytes, written by user space.
	if kvmGetDirtyLog != 0x4010AE42 {
		t.Errorf("KVM_GET_DIRTY_LOG = %#x, want 0x4010ae42", kvmGetDirtyLog)
	}
}
