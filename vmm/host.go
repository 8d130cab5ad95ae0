package vmm

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Host is what hvprobe knows about the KVM underneath it. The only
// difference it acts on is whether guest kernel mode is instruction-
// emulated (PVM, see docs/QUIRKS.md): such a KVM cannot execute some
// instructions, so the guest is told not to use them, and some exits
// (int3) arrive as emulation failures, which exit.go handles either way.
type Host struct {
	Emulating bool
	// Int3Reflected: a guest int3 never exits, even with
	// KVM_GUESTDBG_USE_SW_BP; it must be caught at the guest's #BP vector
	// (doorbell.go). Seen with QEMU TCG's SVM, the nested KVM of
	// images/nested.
	Int3Reflected bool
}

// EnvInt3 names the variable that states how int3 behaves instead of
// probing: "reflected" or "intercepted". images/nested sets it: on QEMU
// TCG's SVM the answer is known, and the probe guest was twice seen to
// crash the L1 kernel there (docs/QUIRKS.md #24).
const EnvInt3 = "HVPROBE_INT3"

// DetectHost inspects sysModule (normally /sys/module) for the PVM module
// and, when devKVM is not empty, finds out whether int3 is intercepted:
// from $HVPROBE_INT3 when set, else (but on an emulating KVM, which always
// reports int3) with ProbeInt3Intercept.
func DetectHost(sysModule, devKVM string) (Host, error) {
	_, err := os.Stat(filepath.Join(sysModule, "kvm_pvm"))
	h := Host{Emulating: err == nil}
	if devKVM == "" {
		return h, nil
	}
	switch v := os.Getenv(EnvInt3); v {
	case "reflected":
		h.Int3Reflected = true
		return h, nil
	case "intercepted":
		return h, nil
	case "":
	default:
		return h, fmt.Errorf("%w: %s=%q, want reflected or intercepted", ErrBadConfig, EnvInt3, v)
	}
	if h.Emulating {
		// An emulating KVM hands a 64-bit int3 back as an emulation
		// failure (assist.go), while the probe's real-mode int3 is
		// emulated through the IVT and would read as "reflected"
		// (docs/QUIRKS.md #26).
		return h, nil
	}
	ok, err := ProbeInt3Intercept(devKVM)
	if err != nil {
		return h, err
	}
	h.Int3Reflected = !ok
	return h, nil
}

// KVM paravirtual features (CPUID 0x40000001 EAX) whose use is a
// hypercall: pv spinlock kicks, PV IPIs, directed yield.
const (
	kvmFeaturePVUnhalt     = 1 << 7
	kvmFeaturePVSendIPI    = 1 << 11
	kvmFeaturePVSchedYield = 1 << 13
	cpuidKVMFeatures       = 0x40000001
)

// CPUID adjusts the guest's CPUID to the host. An emulating KVM (PVM)
// never completes a guest's vmcall: a 2-vCPU guest hung at "Booting SMP
// configuration" with the AP on the PV-IPI hypercall and CPU 0 spinning
// on its lock (docs/QUIRKS.md #29), so the hypercall-based PV features are
// hidden there; Linux then uses plain APIC IPIs, HLT and spinning.
func (h Host) CPUID(entries []CPUIDEntry) []CPUIDEntry {
	if !h.Emulating {
		return entries
	}
	for i := range entries {
		if entries[i].Function == cpuidKVMFeatures {
			entries[i].EAX &^= kvmFeaturePVUnhalt | kvmFeaturePVSendIPI | kvmFeaturePVSchedYield
		}
	}
	return entries
}

// BaseCmdline is what every hvprobe guest gets: the console on the UART
// the VMM emulates, reset through the i8042 (the VMM's clean end),
// reboot-on-panic so a panic ends the run, and no lockup watchdogs.
const BaseCmdline = "console=ttyS0 reboot=k panic=-1 nowatchdog random.trust_bootloader=on"

// emulatingKVMMasks keeps a guest off the instructions an emulating KVM
// cannot execute. The CPUID masks are only honoured on the command line
// there (KVM_SET_CPUID2 did not change what the guest saw). The list is
// the one that took Debian's stock kernel to its initramfs; cx16, smap,
// popcnt and xsave were each seen to fail, and ssse3 (blake2s's self-test,
// docs/QUIRKS.md #30; KVM's emulator has no SSSE3/SSE4 instructions, so
// sse4_1 and sse4_2 go with it); the rest are kept from that measured run
// until each is shown unnecessary.
var emulatingKVMMasks = []string{
	"noxsave",
	"clearcpuid=cx16,smap,popcnt,ssse3,sse4_1,sse4_2,fsgsbase,rdpid,rdrand,rdseed,invpcid,pcid,pku,ospke,avx,avx2,aes,pclmulqdq,sha_ni,clflushopt,clwb,movbe,bmi1,bmi2,adx,f16c,fma,xsaveopt,xsavec,xsaves,erms,fsrm",
}

// Cmdline returns BaseCmdline plus the host's workarounds, then extra.
func (h Host) Cmdline(extra ...string) string {
	parts := []string{BaseCmdline}
	if h.Emulating {
		parts = append(parts, emulatingKVMMasks...)
	}
	for _, e := range extra {
		if e = strings.TrimSpace(e); e != "" {
			parts = append(parts, e)
		}
	}
	return strings.Join(parts, " ")
}
