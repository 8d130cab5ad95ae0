package boot

import (
	"encoding/binary"
	"testing"
)

// TestACPI walks the tables as Linux does: RSDP found at a 16-byte
// boundary of the BIOS area, its RSDT, the RSDT's one MADT, and the MADT's
// entries, every checksum zero.
func TestACPI(t *testing.T) {
	ram := make([]byte, 2<<20)
	if err := WriteACPI(ram, 3); err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	rsdp := -1
	for a := 0xe0000; a < 0x100000; a += 16 {
		if string(ram[a:a+8]) == "RSD PTR " {
			rsdp = a
			break
		}
	}
	if rsdp < 0 || sum(ram[rsdp:rsdp+20]) != 0 || ram[rsdp+15] != 0 {
		t.Fatalf("no ACPI 1.0 RSDP with a good checksum in the BIOS area (at %#x)", rsdp)
	}
	table := func(addr uint32, sig string) []byte {
		t.Helper()
		n := le.Uint32(ram[addr+4:])
		tb := ram[addr : addr+n]
		if string(tb[:4]) != sig || sum(tb) != 0 || n < acpiHdrLen {
			t.Fatalf("table at %#x: signature %q, length %d, checksum sum %d; want %s", addr, tb[:4], n, sum(tb), sig)
		}
		return tb
	}
	rsdt := table(le.Uint32(ram[rsdp+16:]), "RSDT")
	if len(rsdt) != acpiHdrLen+4 {
		t.Fatalf("RSDT has %d entries, want 1", (len(rsdt)-acpiHdrLen)/4)
	}
	madt := table(le.Uint32(rsdt[acpiHdrLen:]), "APIC")
	if le.Uint32(madt[36:]) != lapicAddr || le.Uint32(madt[40:])&1 != 1 {
		t.Fatalf("MADT local APIC address %#x flags %#x", le.Uint32(madt[36:]), le.Uint32(madt[40:]))
	}
	kinds := map[byte]int{}
	var apicIDs []byte
	for off := 44; off < len(madt); off += int(madt[off+1]) {
		kinds[madt[off]]++
		switch madt[off] {
		case 0:
			if le.Uint32(madt[off+4:])&1 == 0 {
				t.Errorf("processor %d not enabled", madt[off+3])
			}
			apicIDs = append(apicIDs, madt[off+3])
		case 1:
			if madt[off+2] != 3 || le.Uint32(madt[off+4:]) != ioapicAddr || le.Uint32(madt[off+8:]) != 0 {
				t.Errorf("I/O APIC entry % x", madt[off:off+12])
			}
		case 2:
			if madt[off+3] != 0 || le.Uint32(madt[off+4:]) != 0 || le.Uint16(madt[off+8:]) != madtISOEdgeHigh {
				t.Errorf("override entry % x: want ISA IRQ 0 on GSI 0, edge, active high", madt[off:off+10])
			}
		}
	}
	if kinds[0] != 3 || kinds[1] != 1 || kinds[2] != 1 || kinds[4] != 1 || len(kinds) != 4 {
		t.Fatalf("MADT entry kinds %v", kinds)
	}
	if string(apicIDs) != "\x00\x01\x02" {
		t.Fatalf("APIC IDs %v, want 0 1 2", apicIDs)
	}
}
