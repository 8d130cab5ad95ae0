package introspect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"github.com/hvprobe/hvprobe/vmm"
)

var errOutOfRange = errors.New("fake: outside guest RAM")

// fakeMem is sparse guest RAM of a fixed size: untouched pages read as
// zeros, so a test can place tables and data at realistic GPAs.
type fakeMem struct {
	size  uint64
	pages map[uint64]*[4096]byte
	// writes records the GPA of every WritePhys, in order.
	writes []uint64
	// failWrite makes WritePhys fail for a range starting at these GPAs.
	failWrite map[uint64]bool
}

func newFakeMem(size uint64) *fakeMem {
	return &fakeMem{size: size, pages: map[uint64]*[4096]byte{}, failWrite: map[uint64]bool{}}
}

func (m *fakeMem) check(gpa uint64, n int) error {
	if gpa > m.size || uint64(n) > m.size-gpa {
		return fmt.Errorf("GPA %#x+%d: %w", gpa, n, errOutOfRange)
	}
	return nil
}

func (m *fakeMem) ReadPhys(gpa uint64, p []byte) error {
	if err := m.check(gpa, len(p)); err != nil {
		return err
	}
	for done := 0; done < len(p); {
		a := gpa + uint64(done)
		off := a & 0xfff
		n := min(len(p)-done, int(4096-off))
		if pg := m.pages[a&^0xfff]; pg != nil {
			copy(p[done:done+n], pg[off:])
		} else {
			clear(p[done : done+n])
		}
		done += n
	}
	return nil
}

func (m *fakeMem) WritePhys(gpa uint64, p []byte) error {
	if err := m.check(gpa, len(p)); err != nil {
		return err
	}
	if m.failWrite[gpa] {
		return fmt.Errorf("GPA %#x: injected: %w", gpa, errOutOfRange)
	}
	m.writes = append(m.writes, gpa)
	for done := 0; done < len(p); {
		a := gpa + uint64(done)
		off := a & 0xfff
		n := min(len(p)-done, int(4096-off))
		pg := m.pages[a&^0xfff]
		if pg == nil {
			pg = new([4096]byte)
			m.pages[a&^0xfff] = pg
		}
		copy(pg[off:], p[done:done+n])
		done += n
	}
	return nil
}

func (m *fakeMem) u64(t testing.TB, gpa uint64) uint64 {
	t.Helper()
	var b [8]byte
	if err := m.ReadPhys(gpa, b[:]); err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint64(b[:])
}

func (m *fakeMem) putU64(t testing.TB, gpa, v uint64) {
	t.Helper()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	if err := m.WritePhys(gpa, b[:]); err != nil {
		t.Fatal(err)
	}
}

func (m *fakeMem) bytes(t testing.TB, gpa uint64, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if err := m.ReadPhys(gpa, b); err != nil {
		t.Fatal(err)
	}
	return b
}

// snapshot copies every page, to prove an operation wrote nothing.
func (m *fakeMem) snapshot() map[uint64][4096]byte {
	s := make(map[uint64][4096]byte, len(m.pages))
	for a, p := range m.pages {
		s[a] = *p
	}
	return s
}

func (m *fakeMem) equal(s map[uint64][4096]byte) bool {
	if len(s) != len(m.pages) {
		return false
	}
	for a, p := range m.pages {
		if s[a] != *p {
			return false
		}
	}
	return true
}

var _ vmm.PhysMem = (*fakeMem)(nil)

// pageAlloc hands out consecutive pages; a zero limit means unbounded.
type pageAlloc struct {
	next, limit uint64
	n           int
}

var errNoPages = errors.New("fake: out of table pages")

func (a *pageAlloc) page() (uint64, error) {
	if a.limit != 0 && a.next >= a.limit {
		return 0, errNoPages
	}
	p := a.next
	a.next += 4096
	a.n++
	return p, nil
}

// fakeSyms is a System.map.
type fakeSyms map[string]uint64

var errNoSymbol = errors.New("fake: no such symbol")

func (s fakeSyms) Address(name string) (uint64, error) {
	a, ok := s[name]
	if !ok {
		return 0, fmt.Errorf("%s: %w", name, errNoSymbol)
	}
	return a, nil
}

// fakeCPU is a stopped vCPU's register file.
type fakeCPU struct {
	sregs vmm.Sregs
	msrs  map[uint32]uint64
}

var errNoMSR = errors.New("fake: MSR not readable")

func (c *fakeCPU) Sregs() (vmm.Sregs, error) { return c.sregs, nil }

func (c *fakeCPU) MSR(i uint32) (uint64, error) {
	v, ok := c.msrs[i]
	if !ok {
		return 0, fmt.Errorf("MSR %#x: %w", i, errNoMSR)
	}
	return v, nil
}
