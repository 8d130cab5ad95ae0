package stub

import (
	"encoding/binary"
	"fmt"
)

// Mem is the guest-physical memory a drain reads, declared here where it
// is used (vmm.Memory satisfies it); stub stays a leaf that vmm's KVM
// test of the stubs can import.
type Mem interface {
	ReadPhys(gpa uint64, p []byte) error
	WritePhys(gpa uint64, p []byte) error
}

// AtomicMem is optional: when Mem also implements it (vmm.Memory does),
// head is loaded and tail stored with one 8-byte access each, so a vCPU
// never sees half a tail nor the host half a head.
type AtomicMem interface {
	LoadPhys(gpa uint64, size int) (uint64, error)
	StorePhys(gpa uint64, size int, v uint64) error
}

// DrainResult is what one Drain of one ring found.
type DrainResult struct {
	// Records are the valid records in ring order, appended to the dst
	// Drain was given.
	Records []Record
	// Tail is the new tail, also written to the ring's header.
	Tail uint64
	// Head is the head the guest had published (as read).
	Head uint64
	// Overrun counts records the host could not read because head ran
	// more than a ring ahead of the tail (impossible for the stub: the
	// guest wrote the header). Invalid counts records dropped because
	// their probe id or cpu field was out of range.
	Overrun uint64
	Invalid int
}

// Drain reads ring cpu of l from tail (the host's own count of records
// consumed: never re-read from guest memory, which the guest can write)
// up to the head the guest published, at most l.Records records, and
// stores the new tail in the ring header so the stub sees the space. Head
// is guest data: whatever it holds, Drain reads only inside the ring and
// allocates at most one ring's worth. A head behind tail, or more than a
// ring ahead, is reported as Overrun and the tail resynchronised.
func Drain(mem Mem, l Layout, cpu int, tail uint64, dst []Record) (DrainResult, error) {
	res := DrainResult{Records: dst, Tail: tail}
	if err := l.Check(); err != nil {
		return res, err
	}
	if cpu < 0 || cpu >= l.CPUs {
		return res, fmt.Errorf("stub: no ring %d (layout has %d)", cpu, l.CPUs)
	}
	ring := l.RingGPA(cpu)
	head, err := load64(mem, ring+HeadOff)
	if err != nil {
		return res, fmt.Errorf("stub: reading ring %d head: %w", cpu, err)
	}
	res.Head = head
	n := head - tail // records published and not consumed, modulo 2^64
	if size := uint64(l.Records); n > size {
		// Corrupt header: keep the newest ring's worth, count the rest
		// (for a head behind tail, the count is the wrapped distance).
		res.Overrun = n - size
		tail = head - size
		n = size
	}
	if n > 0 {
		size := l.RecordSize()
		buf := make([]byte, n*size)
		mask := uint64(l.Records - 1)
		first := tail & mask
		k := min(n, uint64(l.Records)-first) // records before the wrap
		base := ring + HeaderSize
		if err := mem.ReadPhys(base+first*size, buf[:k*size]); err != nil {
			return res, fmt.Errorf("stub: reading ring %d: %w", cpu, err)
		}
		if k < n {
			if err := mem.ReadPhys(base, buf[k*size:]); err != nil {
				return res, fmt.Errorf("stub: reading ring %d: %w", cpu, err)
			}
		}
		for i := range n {
			rec := decodeRecord(l, buf[i*size:(i+1)*size])
			if rec.Probe >= uint32(l.Probes) || rec.CPU != uint32(cpu) {
				res.Invalid++
				continue
			}
			res.Records = append(res.Records, rec)
		}
	}
	res.Tail = tail + n
	if err := store64(mem, ring+TailOff, res.Tail); err != nil {
		return res, fmt.Errorf("stub: writing ring %d tail: %w", cpu, err)
	}
	return res, nil
}

// Lost reads the lost counters, one per probe id (guest data: a count,
// never an index or a size).
func Lost(mem Mem, l Layout) ([]uint64, error) { return counters(mem, l, l.LostOff(), "lost") }

// Counts reads the hit counters of count-only stubs, one per probe id.
func Counts(mem Mem, l Layout) ([]uint64, error) { return counters(mem, l, l.CountOff(), "hit") }

func counters(mem Mem, l Layout, off uint64, what string) ([]uint64, error) {
	if err := l.Check(); err != nil {
		return nil, err
	}
	buf := make([]byte, 8*l.Probes)
	if err := mem.ReadPhys(l.GPA+off, buf); err != nil {
		return nil, fmt.Errorf("stub: reading %s counters: %w", what, err)
	}
	out := make([]uint64, l.Probes)
	for i := range out {
		out[i] = binary.LittleEndian.Uint64(buf[8*i:])
	}
	return out, nil
}

// Drainer keeps the host's tail of every ring of one layout.
type Drainer struct {
	mem  Mem
	l    Layout
	tail []uint64
}

// NewDrainer initialises the layout's headers and lost counters (Init)
// and starts every ring at tail 0.
func NewDrainer(mem Mem, l Layout) (*Drainer, error) {
	if err := Init(mem, l); err != nil {
		return nil, err
	}
	return &Drainer{mem: mem, l: l, tail: make([]uint64, l.CPUs)}, nil
}

// Drain drains ring cpu, appending its records to dst.
func (d *Drainer) Drain(cpu int, dst []Record) (DrainResult, error) {
	if cpu < 0 || cpu >= len(d.tail) {
		return DrainResult{Records: dst}, fmt.Errorf("stub: no ring %d (layout has %d)", cpu, len(d.tail))
	}
	res, err := Drain(d.mem, d.l, cpu, d.tail[cpu], dst)
	d.tail[cpu] = res.Tail
	return res, err
}

// Lost reads the lost counters.
func (d *Drainer) Lost() ([]uint64, error) { return Lost(d.mem, d.l) }

// Counts reads the hit counters of count-only stubs.
func (d *Drainer) Counts() ([]uint64, error) { return Counts(d.mem, d.l) }

func load64(mem Mem, gpa uint64) (uint64, error) {
	if a, ok := mem.(AtomicMem); ok {
		return a.LoadPhys(gpa, 8)
	}
	var b [8]byte
	err := mem.ReadPhys(gpa, b[:])
	return binary.LittleEndian.Uint64(b[:]), err
}

func store64(mem Mem, gpa, v uint64) error {
	if a, ok := mem.(AtomicMem); ok {
		return a.StorePhys(gpa, 8, v)
	}
	return mem.WritePhys(gpa, binary.LittleEndian.AppendUint64(nil, v))
}
