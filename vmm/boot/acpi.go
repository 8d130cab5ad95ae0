package boot

import (
	"encoding/binary"
	"fmt"
)

// Minimal ACPI tables for SMP guests: an RSDP, an RSDT and a MADT naming
// the same processors, I/O APIC and interrupt wiring as the MP table. A
// kernel built without CONFIG_X86_MPPARSE (Debian's stock kernels) learns
// of its other vCPUs only from the MADT; without it a 2-vCPU stock guest
// booted with 1 CPU ("APIC: ACPI MADT or MP tables are not detected",
// docs/QUIRKS.md #36). There is no FADT or DSDT: Linux reads the MADT at
// setup_arch, then fails to load an ACPI namespace and turns ACPI off.
const (
	// acpiRSDPAddr is in the BIOS area Linux scans for "RSD PTR "
	// (0xe0000-0xfffff, e820-reserved); the RSDT and MADT follow it.
	acpiRSDPAddr = 0xe0000
	acpiRSDTAddr = acpiRSDPAddr + 0x40
	acpiMADTAddr = acpiRSDTAddr + 0x40
	acpiHdrLen   = 36
	// madtISOEdgeHigh: interrupt source override flags, active high
	// (polarity 01) and edge triggered (trigger 01 << 2).
	madtISOEdgeHigh = 0x5
)

// WriteACPI writes the tables for cpus processors (APIC IDs 0..cpus-1).
func WriteACPI(ram []byte, cpus int) error {
	if cpus < 1 || cpus > 254 {
		return fmt.Errorf("%w: %d vCPUs for a MADT", ErrBoot, cpus)
	}
	le := binary.LittleEndian
	ioapicID := uint8(cpus)

	madt := acpiHeader("APIC", 3)
	madt = le.AppendUint32(madt, lapicAddr)
	madt = le.AppendUint32(madt, 1) // PCAT_COMPAT: there are 8259s (KVM's PIC)
	for i := 0; i < cpus; i++ {
		madt = append(madt, 0, 8, uint8(i), uint8(i)) // local APIC: UID i, APIC ID i
		madt = le.AppendUint32(madt, 1)               // enabled
	}
	madt = append(madt, 1, 12, ioapicID, 0)
	madt = le.AppendUint32(madt, ioapicAddr)
	madt = le.AppendUint32(madt, 0) // GSI base
	// Without a FADT Linux takes IRQ 0 for the SCI and, lacking an
	// override for it, makes it level/low, which would stop the timer.
	// Say what KVM's default routing does: ISA IRQ 0 on pin 0, edge, high.
	madt = append(madt, 2, 10, 0, 0) // override: ISA bus, IRQ 0
	madt = le.AppendUint32(madt, 0)  // GSI 0
	madt = le.AppendUint16(madt, madtISOEdgeHigh)
	madt = append(madt, 4, 6, 0xff, 0, 0, 1) // NMI on every LAPIC's LINT1
	acpiFinish(madt)

	rsdt := acpiHeader("RSDT", 1)
	rsdt = le.AppendUint32(rsdt, acpiMADTAddr)
	acpiFinish(rsdt)

	rsdp := []byte("RSD PTR ")
	rsdp = append(rsdp, 0)           // checksum, below
	rsdp = append(rsdp, "HVPRB "...) // OEM ID
	rsdp = append(rsdp, 0)           // revision 0: ACPI 1.0, RSDT only
	rsdp = le.AppendUint32(rsdp, acpiRSDTAddr)
	rsdp[8] = checksum(rsdp)

	if acpiRSDTAddr-acpiRSDPAddr < len(rsdp) || acpiMADTAddr-acpiRSDTAddr < len(rsdt) || acpiMADTAddr+len(madt) > highRAMStart {
		return fmt.Errorf("%w: ACPI tables for %d vCPUs do not fit below 1 MiB", ErrBoot, cpus)
	}
	copy(ram[acpiRSDPAddr:], rsdp)
	copy(ram[acpiRSDTAddr:], rsdt)
	copy(ram[acpiMADTAddr:], madt)
	return nil
}

// acpiHeader is a system description table header; acpiFinish fills in
// its length and checksum.
func acpiHeader(sig string, rev uint8) []byte {
	h := make([]byte, acpiHdrLen)
	copy(h, sig)
	h[8] = rev
	copy(h[10:], "HVPRB ")
	copy(h[16:], "HVPROBE ")
	binary.LittleEndian.PutUint32(h[24:], 1) // OEM revision
	copy(h[28:], "HVPR")
	binary.LittleEndian.PutUint32(h[32:], 1) // creator revision
	return h
}

func acpiFinish(t []byte) {
	binary.LittleEndian.PutUint32(t[4:], uint32(len(t)))
	t[9] = 0
	t[9] = checksum(t)
}
