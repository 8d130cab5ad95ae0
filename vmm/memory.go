package vmm

import (
	"errors"
	"fmt"
)

// ErrOutOfRange: a guest-physical access outside guest RAM.
var ErrOutOfRange = errors.New("guest-physical address outside guest RAM")

// Memory is guest RAM: one host mapping at guest-physical address 0.
// Accesses are plain copies; callers that need a single guest-visible
// atomic store (an int3 byte) get it because a one-byte copy is one store.
type Memory struct {
	b []byte
}

// NewMemoryFromBytes wraps a byte slice as guest RAM (tests, snapshots).
func NewMemoryFromBytes(b []byte) *Memory { return &Memory{b: b} }

// Size is the number of bytes of guest RAM.
func (m *Memory) Size() uint64 { return uint64(len(m.b)) }

// Bytes exposes the whole RAM mapping. Boot code and snapshots use it;
// everything else goes through ReadPhys/WritePhys.
func (m *Memory) Bytes() []byte { return m.b }

func (m *Memory) span(gpa uint64, n int) ([]byte, error) {
	end := gpa + uint64(n)
	if end < gpa || end > uint64(len(m.b)) {
		return nil, fmt.Errorf("accessing %d bytes at %#x (RAM is %#x bytes): %w", n, gpa, len(m.b), ErrOutOfRange)
	}
	return m.b[gpa:end], nil
}

// ReadPhys copies guest-physical memory at gpa into p.
func (m *Memory) ReadPhys(gpa uint64, p []byte) error {
	s, err := m.span(gpa, len(p))
	if err != nil {
		return err
	}
	copy(p, s)
	return nil
}

// WritePhys copies p into guest-physical memory at gpa.
func (m *Memory) WritePhys(gpa uint64, p []byte) error {
	s, err := m.span(gpa, len(p))
	if err != nil {
		return err
	}
	copy(s, p)
	return nil
}
