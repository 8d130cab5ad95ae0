package introspect

import (
	"encoding/binary"
	"fmt"
	"testing"
)

// sliceMem is flat guest RAM; cheaper than fakeMem for the fuzzer.
type sliceMem []byte

func (m sliceMem) ReadPhys(gpa uint64, p []byte) error {
	if gpa > uint64(len(m)) || uint64(len(p)) > uint64(len(m))-gpa {
		return fmt.Errorf("GPA %#x+%d: %w", gpa, len(p), errOutOfRange)
	}
	copy(p, m[gpa:])
	return nil
}

func (m sliceMem) WritePhys(gpa uint64, p []byte) error {
	if gpa > uint64(len(m)) || uint64(len(p)) > uint64(len(m))-gpa {
		return fmt.Errorf("GPA %#x+%d: %w", gpa, len(p), errOutOfRange)
	}
	copy(m[gpa:], p)
	return nil
}

// FuzzTranslate walks random tables. Whatever the bytes, Translate must not
// panic, and a success must be a well-formed translation read from inside
// guest RAM.
func FuzzTranslate(f *testing.F) {
	// Seeds stay small so mutation is cheap. An entry pointing at its own
	// table walks every level through one page: VA 0 maps to PA 0.
	self := binary.LittleEndian.AppendUint64(nil, kP|kW)
	f.Add(self, uint64(0), uint64(0x123), false)
	f.Add(self, uint64(0x5a5), uint64(0x123), true)
	// A 2 MiB page at PD level of a walk through pages 0 and 1.
	two := make([]byte, 0x1008)
	binary.LittleEndian.PutUint64(two, 0x1000|kP)
	binary.LittleEndian.PutUint64(two[0x1000:], 0x1000|kP|kPS)
	f.Add(two, uint64(0), uint64(0x1234), false)
	f.Add([]byte{0x83, 0, 0, 0, 0, 0, 0, 0}, uint64(0), uint64(0x7fff_ffff_ffff), false)
	f.Fuzz(func(t *testing.T, ram []byte, cr3, va uint64, la57 bool) {
		tr, err := Translate(sliceMem(ram), cr3, la57, va)
		if err != nil {
			return
		}
		if tr.Size != Size4K && tr.Size != Size2M && tr.Size != Size1G {
			t.Fatalf("size %v", tr.Size)
		}
		if tr.PA>>52 != 0 || tr.PA&(uint64(tr.Size)-1) != va&(uint64(tr.Size)-1) {
			t.Fatalf("PA %#x for VA %#x, size %v", tr.PA, va, tr.Size)
		}
		if tr.Steps < 1 || tr.Steps > topLevel(la57) || tr.Flags&FlagPresent == 0 {
			t.Fatalf("steps %d flags %v", tr.Steps, tr.Flags)
		}
		for _, e := range tr.Visited() {
			if e.Addr+8 > uint64(len(ram)) || e.Value&kP == 0 {
				t.Fatalf("visited entry %+v outside RAM or not present", e)
			}
		}
	})
}
