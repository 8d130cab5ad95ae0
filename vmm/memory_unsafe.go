package vmm

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"unsafe"
)

// LoadPhys reads the size-byte (1, 2, 4 or 8) little-endian value at gpa.
// An aligned access is one host load of that width, so it never sees half
// of a store a vCPU makes at the same time; an unaligned one is a copy.
func (m *Memory) LoadPhys(gpa uint64, size int) (uint64, error) {
	if err := checkAtomicSize(size); err != nil {
		return 0, err
	}
	var v uint64
	err := m.access(gpa, size, func(ram []byte) {
		p := unsafe.Pointer(&ram[0])
		switch {
		case gpa%uint64(size) != 0:
			var b [8]byte
			copy(b[:], ram)
			v = binary.LittleEndian.Uint64(b[:])
		case size == 1:
			v = uint64(*(*uint8)(p))
		case size == 2:
			v = uint64(*(*uint16)(p))
		case size == 4:
			v = uint64(atomic.LoadUint32((*uint32)(p)))
		default:
			v = atomic.LoadUint64((*uint64)(p))
		}
	})
	return v, err
}

// StorePhys writes the low size bytes (1, 2, 4 or 8) of v at gpa; an
// aligned store is one host store of that width (see LoadPhys).
func (m *Memory) StorePhys(gpa uint64, size int, v uint64) error {
	if err := checkAtomicSize(size); err != nil {
		return err
	}
	return m.access(gpa, size, func(ram []byte) {
		p := unsafe.Pointer(&ram[0])
		switch {
		case gpa%uint64(size) != 0:
			var b [8]byte
			binary.LittleEndian.PutUint64(b[:], v)
			copy(ram, b[:size])
		case size == 1:
			*(*uint8)(p) = uint8(v)
		case size == 2:
			*(*uint16)(p) = uint16(v)
		case size == 4:
			atomic.StoreUint32((*uint32)(p), uint32(v))
		default:
			atomic.StoreUint64((*uint64)(p), v)
		}
	})
}

func checkAtomicSize(size int) error {
	switch size {
	case 1, 2, 4, 8:
		return nil
	}
	return fmt.Errorf("access of %d bytes: the sizes are 1, 2, 4 and 8", size)
}
