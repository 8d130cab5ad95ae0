package boot

import (
	"encoding/binary"
	"testing"
)

func TestMPTable(t *testing.T) {
	ram := make([]byte, 2<<20)
	if err := WriteMPTable(ram, 2); err != nil {
		t.Fatal(err)
	}
	fp := ram[mpFloatAddr : mpFloatAddr+16]
	if string(fp[:4]) != "_MP_" || sum(fp) != 0 {
		t.Fatalf("floating pointer %x: bad signature or checksum", fp)
	}
	cfg := binary.LittleEndian.Uint32(fp[4:])
	n := binary.LittleEndian.Uint16(ram[cfg+4:])
	table := ram[cfg : cfg+uint32(n)]
	if string(table[:4]) != "PCMP" || sum(table) != 0 {
		t.Fatal("config table: bad signature or checksum")
	}
	// Walk the entries: two processors (BSP first), bus, I/O APIC, 16 ISA
	// interrupts, 2 local interrupts.
	kinds := map[byte]int{}
	var bsp []byte
	for off := 44; off < len(table); {
		k := table[off]
		kinds[k]++
		if k == 0 {
			bsp = append(bsp, table[off+3]&2)
			off += 20
		} else {
			off += 8
		}
	}
	if kinds[0] != 2 || kinds[1] != 1 || kinds[2] != 1 || kinds[3] != 16 || kinds[4] != 2 {
		t.Fatalf("entry kinds %v", kinds)
	}
	if bsp[0] == 0 || bsp[1] != 0 {
		t.Fatalf("BSP flags %v: want only the first processor", bsp)
	}
	if got := binary.LittleEndian.Uint16(table[34:]); int(got) != 22 {
		t.Fatalf("entry count %d, want 22", got)
	}
}

func sum(b []byte) uint8 {
	var s uint8
	for _, x := range b {
		s += x
	}
	return s
}
