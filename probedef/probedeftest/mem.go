// Package probedeftest has test doubles for probedef's interfaces.
package probedeftest

import "fmt"

// PageMem is guest-virtual memory mapped page by page (probedef.Memory):
// a page exists once something is written to it, unwritten bytes of it
// read as zero, and reads touching an absent page fault.
type PageMem map[uint64]*[4096]byte

func (m PageMem) ReadVirt(va uint64, p []byte) error {
	for i := range p {
		a := va + uint64(i)
		pg, ok := m[a&^4095]
		if !ok {
			return fmt.Errorf("page fault at %#x", a)
		}
		p[i] = pg[a&4095]
	}
	return nil
}

// Put writes b at va, mapping the pages it touches.
func (m PageMem) Put(va uint64, b []byte) {
	for i, c := range b {
		a := va + uint64(i)
		if m[a&^4095] == nil {
			m[a&^4095] = new([4096]byte)
		}
		m[a&^4095][a&4095] = c
	}
}
