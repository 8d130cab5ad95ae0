package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Memory is guest RAM as a device reaches it: copies for buffers, and
// single-copy-atomic loads and stores for the ring indices, which the
// driver reads and writes concurrently (vmm.Memory implements it).
type Memory interface {
	ReadPhys(gpa uint64, p []byte) error
	WritePhys(gpa uint64, p []byte) error
	LoadPhys(gpa uint64, size int) (uint64, error)
	StorePhys(gpa uint64, size int, v uint64) error
}

// Split-ring layout (virtio 1.2, 2.7).
const (
	descSize      = 16
	descFNext     = 1
	descFWrite    = 2
	descFIndirect = 4

	// MaxQueueSize is the queue size hvprobe's devices offer.
	MaxQueueSize = 256
	// maxChainBytes bounds one request's buffers: a guest cannot make
	// the device allocate more.
	maxChainBytes = 4 << 20
)

// ErrQueue marks a queue the driver broke: the device stops using it and
// asks for a reset (NEEDS_RESET).
var ErrQueue = errors.New("virtqueue broken by the driver")

// Buf is one descriptor of a chain: guest-physical Addr and Len bytes,
// which the device writes when Write, else reads.
type Buf struct {
	Addr  uint64
	Len   uint32
	Write bool
}

// Chain is one request: the head descriptor's index and its buffers,
// the device-readable ones first.
type Chain struct {
	Head uint16
	Bufs []Buf
}

// Queue is the device's side of one split virtqueue. The driver owns the
// descriptor table and the available ring, the device the used ring;
// everything read from guest memory is checked before it is used.
// A Queue is used by one goroutine at a time.
type Queue struct {
	Size                uint16 // a power of two, at most MaxQueueSize
	Desc, Avail, Used   uint64 // guest-physical addresses of the three parts
	EventIdx            bool   // VIRTIO_F_EVENT_IDX was negotiated
	mem                 Memory
	lastAvail, nextUsed uint16
	// signalled is the used index at the last interrupt (event index).
	signalled uint16
}

// NewQueue is a queue over mem of the given size and addresses.
func NewQueue(mem Memory, size uint16, desc, avail, used uint64, eventIdx bool) (*Queue, error) {
	if size == 0 || size > MaxQueueSize || size&(size-1) != 0 {
		return nil, fmt.Errorf("%w: queue size %d is not a power of two up to %d", ErrQueue, size, MaxQueueSize)
	}
	return &Queue{Size: size, Desc: desc, Avail: avail, Used: used, EventIdx: eventIdx, mem: mem}, nil
}

func (q *Queue) load16(gpa uint64) (uint16, error) {
	v, err := q.mem.LoadPhys(gpa, 2)
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrQueue, err)
	}
	return uint16(v), nil
}

func (q *Queue) store16(gpa uint64, v uint16) error {
	if err := q.mem.StorePhys(gpa, 2, uint64(v)); err != nil {
		return fmt.Errorf("%w: %v", ErrQueue, err)
	}
	return nil
}

// Pending reports whether the driver has made chains available that Pop
// has not taken.
func (q *Queue) Pending() (bool, error) {
	idx, err := q.load16(q.Avail + 2)
	if err != nil {
		return false, err
	}
	if n := idx - q.lastAvail; n > q.Size {
		return false, fmt.Errorf("%w: %d chains available in a ring of %d", ErrQueue, n, q.Size)
	}
	return idx != q.lastAvail, nil
}

// Pop takes the next available chain; ok is false when there is none.
func (q *Queue) Pop() (c Chain, ok bool, err error) {
	if ok, err = q.Pending(); !ok || err != nil {
		return c, false, err
	}
	head, err := q.load16(q.Avail + 4 + 2*uint64(q.lastAvail%q.Size))
	if err != nil {
		return c, false, err
	}
	if c, err = q.chain(head); err != nil {
		return c, false, err
	}
	q.lastAvail++
	return c, true, nil
}

// chain follows the descriptors from head: every index inside the table,
// at most Size of them (a longer chain loops), no indirect table (not
// offered), readable buffers before writable ones, and a bounded total.
func (q *Queue) chain(head uint16) (Chain, error) {
	c := Chain{Head: head}
	var raw [descSize]byte
	total := uint64(0)
	for i, n := head, 0; ; n++ {
		if i >= q.Size {
			return c, fmt.Errorf("%w: descriptor %d past a table of %d", ErrQueue, i, q.Size)
		}
		if n == int(q.Size) {
			return c, fmt.Errorf("%w: the chain from %d loops", ErrQueue, head)
		}
		if err := q.mem.ReadPhys(q.Desc+descSize*uint64(i), raw[:]); err != nil {
			return c, fmt.Errorf("%w: descriptor table: %v", ErrQueue, err)
		}
		b := Buf{Addr: binary.LittleEndian.Uint64(raw[0:]), Len: binary.LittleEndian.Uint32(raw[8:])}
		flags := binary.LittleEndian.Uint16(raw[12:])
		b.Write = flags&descFWrite != 0
		switch {
		case flags&descFIndirect != 0:
			return c, fmt.Errorf("%w: indirect descriptor %d (not negotiated)", ErrQueue, i)
		case !b.Write && len(c.Bufs) > 0 && c.Bufs[len(c.Bufs)-1].Write:
			return c, fmt.Errorf("%w: readable descriptor %d after a writable one", ErrQueue, i)
		case b.Addr+uint64(b.Len) < b.Addr:
			return c, fmt.Errorf("%w: descriptor %d wraps the address space", ErrQueue, i)
		}
		if total += uint64(b.Len); total > maxChainBytes {
			return c, fmt.Errorf("%w: the chain from %d holds more than %d bytes", ErrQueue, head, maxChainBytes)
		}
		c.Bufs = append(c.Bufs, b)
		if flags&descFNext == 0 {
			return c, nil
		}
		i = binary.LittleEndian.Uint16(raw[14:])
	}
}

// Push returns chain head to the driver with written bytes written, and
// publishes it; the element is stored before the index.
func (q *Queue) Push(head uint16, written uint32) error {
	var el [8]byte
	binary.LittleEndian.PutUint32(el[0:], uint32(head))
	binary.LittleEndian.PutUint32(el[4:], written)
	if err := q.mem.WritePhys(q.Used+4+8*uint64(q.nextUsed%q.Size), el[:]); err != nil {
		return fmt.Errorf("%w: used ring: %v", ErrQueue, err)
	}
	q.nextUsed++
	return q.store16(q.Used+2, q.nextUsed) // an atomic store: a release after the element
}

// NeedsInterrupt reports whether the driver wants an interrupt for what
// Push published since the last one: with the event index, only when the
// used index has passed its used_event (vring_need_event); otherwise
// unless it set VIRTQ_AVAIL_F_NO_INTERRUPT.
func (q *Queue) NeedsInterrupt() (bool, error) {
	if q.nextUsed == q.signalled {
		return false, nil
	}
	old := q.signalled
	q.signalled = q.nextUsed
	if !q.EventIdx {
		flags, err := q.load16(q.Avail)
		return flags&1 == 0, err
	}
	ev, err := q.load16(q.Avail + 4 + 2*uint64(q.Size))
	if err != nil {
		return false, err
	}
	return q.nextUsed-ev-1 < q.nextUsed-old, nil
}

// SetAvailEvent tells the driver to notify again only once it makes
// chains available past what Pop has taken (the event index); without
// it the driver notifies for every chain, or as the used ring's flags
// say (always 0 here).
func (q *Queue) SetAvailEvent() error {
	if !q.EventIdx {
		return nil
	}
	return q.store16(q.Used+4+8*uint64(q.Size), q.lastAvail)
}
