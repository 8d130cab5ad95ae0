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
// Once the VM is closed every access fails with ErrClosed; the mapping is
// never handed out, so no caller can hold it past the unmap.
type Memory struct {
	b    []byte
	life lifetime
}

// NewMemoryFromBytes wraps a byte slice as guest RAM (tests, snapshots).
func NewMemoryFromBytes(b []byte) *Memory { return &Memory{b: b} }

// Size is the number of bytes of guest RAM.
func (m *Memory) Size() uint64 { return uint64(len(m.b)) }

// with runs f on the whole mapping, or fails with ErrClosed.
func (m *Memory) with(f func(ram []byte) error) error {
	if !m.life.enter() {
		return ErrClosed
	}
	defer m.life.exit()
	return f(m.b)
}

func (m *Memory) span(gpa uint64, n int) ([]byte, error) {
	end := gpa + uint64(n)
	if end < gpa || end > uint64(len(m.b)) {
		return nil, fmt.Errorf("accessing %d bytes at %#x (RAM is %#x bytes): %w", n, gpa, len(m.b), ErrOutOfRange)
	}
	return m.b[gpa:end], nil
}

// ReadPhys copies guest-physical memory at gpa into p.
func (m *Memory) ReadPhys(gpa uint64, p []byte) error {
	return m.access(gpa, len(p), func(ram []byte) { copy(p, ram) })
}

// WritePhys copies p into guest-physical memory at gpa.
func (m *Memory) WritePhys(gpa uint64, p []byte) error {
	return m.access(gpa, len(p), func(ram []byte) { copy(ram, p) })
}

// access runs f on the n bytes at gpa inside the lifetime guard.
func (m *Memory) access(gpa uint64, n int, f func(ram []byte)) error {
	if !m.life.enter() {
		return ErrClosed
	}
	defer m.life.exit()
	s, err := m.span(gpa, n)
	if err != nil {
		return err
	}
	f(s)
	return nil
}

// close refuses further accesses, waits for those in flight and returns
// the mapping for the caller to unmap (nil if already closed).
func (m *Memory) close() []byte {
	if !m.life.close() {
		return nil
	}
	return m.b
}
