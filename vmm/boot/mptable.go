package boot

import (
	"encoding/binary"
	"fmt"
)

// An Intel MultiProcessor Specification 1.4 table: how a Linux guest
// without ACPI learns of its other vCPUs, the I/O APIC and how ISA
// interrupts reach it. Written only for SMP guests: a single-vCPU guest
// keeps the PIC/virtual-wire setup it boots with today.
const (
	mpFloatAddr  = lowRAMEnd // "last KB of base memory", where Linux looks first
	mpConfigAddr = mpFloatAddr + 16
	ioapicAddr   = 0xfec00000
	lapicAddr    = 0xfee00000
	mpISAIRQs    = 16
)

// WriteMPTable builds the floating pointer and the configuration table for
// cpus processors (APIC IDs 0..cpus-1, 0 the BSP) into ram.
func WriteMPTable(ram []byte, cpus int) error {
	if cpus < 1 || cpus > 254 {
		return fmt.Errorf("%w: %d vCPUs for an MP table", ErrBoot, cpus)
	}
	le := binary.LittleEndian
	ioapicID := uint8(cpus)
	var entries []byte
	for i := 0; i < cpus; i++ {
		e := make([]byte, 20)
		e[0] = 0 // processor
		e[1] = uint8(i)
		e[2] = 0x14 // local APIC version
		e[3] = 1    // enabled
		if i == 0 {
			e[3] |= 2 // bootstrap processor
		}
		le.PutUint32(e[4:], 0x600) // CPU signature: family 6
		le.PutUint32(e[8:], 0x201) // features: FPU, APIC
		entries = append(entries, e...)
	}
	entries = append(entries, 1, 0, 'I', 'S', 'A', ' ', ' ', ' ') // bus 0: ISA
	ioapic := []byte{2, ioapicID, 0x11, 1, 0, 0, 0, 0}
	le.PutUint32(ioapic[4:], ioapicAddr)
	entries = append(entries, ioapic...)
	for irq := uint8(0); irq < mpISAIRQs; irq++ {
		// ISA IRQ n on I/O APIC pin n: KVM's default GSI routing.
		entries = append(entries, 3, 0, 0, 0, 0, irq, ioapicID, irq)
	}
	entries = append(entries,
		4, 3, 0, 0, 0, 0, 0xff, 0, // ExtINT to every LAPIC's LINT0
		4, 1, 0, 0, 0, 0, 0xff, 1, // NMI to every LAPIC's LINT1
	)
	count := cpus + 1 + 1 + mpISAIRQs + 2

	hdr := make([]byte, 44)
	copy(hdr, "PCMP")
	le.PutUint16(hdr[4:], uint16(44+len(entries)))
	hdr[6] = 4 // spec 1.4
	copy(hdr[8:], "HVPROBE ")
	copy(hdr[16:], "HVPROBE VM  ")
	le.PutUint16(hdr[34:], uint16(count))
	le.PutUint32(hdr[36:], lapicAddr)
	table := append(hdr, entries...)
	table[7] = checksum(table)
	if mpConfigAddr+len(table) > highRAMStart {
		return fmt.Errorf("%w: MP table of %d bytes does not fit below 1 MiB", ErrBoot, len(table))
	}
	copy(ram[mpConfigAddr:], table)

	fp := make([]byte, 16)
	copy(fp, "_MP_")
	le.PutUint32(fp[4:], mpConfigAddr)
	fp[8] = 1 // length in 16-byte units
	fp[9] = 4 // spec 1.4
	fp[10] = checksum(fp)
	copy(ram[mpFloatAddr:], fp)
	return nil
}

// checksum is the byte that makes b sum to zero (its own slot counted as 0).
func checksum(b []byte) uint8 {
	var s uint8
	for _, x := range b {
		s += x
	}
	return -s
}
