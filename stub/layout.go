package stub

import (
	"encoding/binary"
	"fmt"
	"math/bits"
)

// Ring header: one per vCPU, HeaderSize bytes, at the start of the ring.
const (
	HeadOff    = 0  // u64, written by the guest (the stub): records published so far
	TailOff    = 8  // u64, written by the host: records consumed so far
	BusyOff    = 16 // u64, written by the guest: 1 while a stub on this CPU is recording
	HeaderSize = 64 // one cache line; bytes 24..63 are zero and unused
)

// Record: Layout.RecordSize() bytes, little-endian: RecordFixed bytes,
// then Layout.Data bytes of memory captures (Captures).
const (
	RecProbeOff   = 0  // u32 probe id
	RecCPUOff     = 4  // u32 cpu number, as read from %gs:CPUNumberOff
	RecTSCOff     = 8  // u64 rdtsc
	RecCurrentOff = 16 // u64 %gs:CurrentOff (the task)
	RecRSPOff     = 24 // u64 %rsp at the probe (before the stub pushed anything)
	RecFrameOff   = 32 // 16 u64: the stub's saved frame, lowest address first (FrameRegs)
	FrameQwords   = 16
	RecNCapOff    = RecFrameOff + 8*FrameQwords // u32: captures the stub wrote
	RecKindOff    = RecNCapOff + 4              // u32: KindHit, or KindReturn (a RetData first in the data)
	RecordFixed   = RecNCapOff + 8              // 168
	RecDataOff    = RecordFixed
)

// FrameRegs names the qwords of a record's frame in order: the stub pushes
// RFLAGS first, then rax … r15, so the lowest address holds r15.
var FrameRegs = [FrameQwords]string{
	"r15", "r14", "r13", "r12", "r11", "r10", "r9", "r8",
	"rdi", "rsi", "rbp", "rbx", "rdx", "rcx", "rax", "rflags",
}

// frameBytes is how far the stub moves %rsp: RFLAGS and 15 GPRs.
const frameBytes = 8 * FrameQwords

// Layout places the rings and lost counters in guest memory. The same
// layout is seen from two sides: GPA for the host's accesses, VA for the
// stub (the guest-virtual address of the same bytes, for instance the
// kernel's direct-map alias of the reserved region).
//
//	Base + 0                       ring 0: header, then Records records
//	Base + i*RingStride()          ring i (i < CPUs)
//	Base + CPUs*RingStride()       lost counters: Probes u64, indexed by probe id
//	  + 8*Probes                   hit counters of count-only stubs: Probes u64
type Layout struct {
	GPA, VA uint64
	CPUs    int // number of rings; a CPU numbered CPUs or above records nothing (lost)
	Records int // records per ring: a power of two, at most MaxRecords
	Probes  int // number of lost counters: probe ids are 0..Probes-1
	// Data is the bytes of memory captures each record holds after its
	// fixed part: a multiple of 8, at most MaxData (0: registers only).
	Data int
}

// Limits the layout keeps, so every offset the stub computes fits an imm32.
const (
	MaxRecords = 1 << 16
	MaxCPUs    = 512
	MaxProbes  = 1 << 20
	MaxData    = 1 << 12
)

// RecordSize is the size of one record.
func (l Layout) RecordSize() uint64 { return RecordFixed + uint64(l.Data) }

// RingStride is the size of one ring, header included.
func (l Layout) RingStride() uint64 { return HeaderSize + uint64(l.Records)*l.RecordSize() }

// LostOff is the offset of the lost counters from Base.
func (l Layout) LostOff() uint64 { return uint64(l.CPUs) * l.RingStride() }

// CountOff is the offset of the hit counters (count-only stubs) from Base.
func (l Layout) CountOff() uint64 { return l.LostOff() + 8*uint64(l.Probes) }

// Size is the number of bytes the layout covers.
func (l Layout) Size() uint64 { return l.CountOff() + 8*uint64(l.Probes) }

// RingGPA is the guest-physical address of cpu's ring header.
func (l Layout) RingGPA(cpu int) uint64 { return l.GPA + uint64(cpu)*l.RingStride() }

// LostGPA is the guest-physical address of probe's lost counter.
func (l Layout) LostGPA(probe uint32) uint64 { return l.GPA + l.LostOff() + 8*uint64(probe) }

// LostVA is the guest-virtual address of probe's lost counter.
func (l Layout) LostVA(probe uint32) uint64 { return l.VA + l.LostOff() + 8*uint64(probe) }

// CountGPA and CountVA locate probe's hit counter.
func (l Layout) CountGPA(probe uint32) uint64 { return l.GPA + l.CountOff() + 8*uint64(probe) }
func (l Layout) CountVA(probe uint32) uint64  { return l.VA + l.CountOff() + 8*uint64(probe) }

// CheckRecords is the rule for a ring's size: a power of two (the
// stub masks the head with Records-1) up to MaxRecords.
func CheckRecords(n int) error {
	if n <= 0 || n > MaxRecords || bits.OnesCount(uint(n)) != 1 {
		return fmt.Errorf("want a power of two from 1 to %d records per ring", MaxRecords)
	}
	return nil
}

// Check validates the layout.
func (l Layout) Check() error {
	if err := CheckRecords(l.Records); err != nil {
		return fmt.Errorf("stub: %d records: %w", l.Records, err)
	}
	switch {
	case l.CPUs <= 0 || l.CPUs > MaxCPUs:
		return fmt.Errorf("stub: %d rings: want 1 to %d", l.CPUs, MaxCPUs)
	case l.Probes <= 0 || l.Probes > MaxProbes:
		return fmt.Errorf("stub: %d lost counters: want 1 to %d", l.Probes, MaxProbes)
	case l.Data < 0 || l.Data > MaxData || l.Data%8 != 0:
		return fmt.Errorf("stub: %d bytes of captures per record: want a multiple of 8 up to %d", l.Data, MaxData)
	case l.GPA%8 != 0 || l.VA%8 != 0:
		return fmt.Errorf("stub: rings at gpa %#x va %#x: want 8-byte alignment", l.GPA, l.VA)
	case l.GPA+l.Size() < l.GPA || l.VA+l.Size() < l.VA:
		return fmt.Errorf("stub: rings at gpa %#x va %#x (%#x bytes) wrap around", l.GPA, l.VA, l.Size())
	}
	return nil
}

// Init zeroes every header and counter (the records need not be).
// Call it before any stub using l can run.
func Init(mem Mem, l Layout) error {
	if err := l.Check(); err != nil {
		return err
	}
	var hdr [HeaderSize]byte
	for cpu := range l.CPUs {
		if err := mem.WritePhys(l.RingGPA(cpu), hdr[:]); err != nil {
			return fmt.Errorf("stub: clearing ring %d: %w", cpu, err)
		}
	}
	if err := mem.WritePhys(l.GPA+l.LostOff(), make([]byte, 16*l.Probes)); err != nil {
		return fmt.Errorf("stub: clearing the counters: %w", err)
	}
	return nil
}

// Record is one decoded ring record: data the guest wrote, not facts.
type Record struct {
	Probe   uint32
	CPU     uint32
	TSC     uint64
	Current uint64
	Regs    Regs
	// Kind is KindHit, or KindReturn for a return probe's record, whose
	// Data opens with a RetData (Record.Return).
	Kind uint32
	// Data is the record's data area, as the guest left it.
	Data []byte
	// Captures are the guest memory the stub read at the hit (Capture).
	Captures []Captured
}

// Regs are the registers at the probe address as the stub saved them.
type Regs struct {
	RAX, RBX, RCX, RDX uint64
	RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11   uint64
	R12, R13, R14, R15 uint64
	RFLAGS             uint64
}

// decodeRecord decodes b (one record of l).
func decodeRecord(l Layout, b []byte) Record {
	le := binary.LittleEndian
	q := func(i int) uint64 { return le.Uint64(b[RecFrameOff+8*i:]) }
	rec := Record{
		Probe:   le.Uint32(b[RecProbeOff:]),
		CPU:     le.Uint32(b[RecCPUOff:]),
		TSC:     le.Uint64(b[RecTSCOff:]),
		Current: le.Uint64(b[RecCurrentOff:]),
		Regs: Regs{
			R15: q(0), R14: q(1), R13: q(2), R12: q(3), R11: q(4), R10: q(5), R9: q(6), R8: q(7),
			RDI: q(8), RSI: q(9), RBP: q(10), RBX: q(11), RDX: q(12), RCX: q(13), RAX: q(14), RFLAGS: q(15),
			RSP: le.Uint64(b[RecRSPOff:]),
		},
		Kind: le.Uint32(b[RecKindOff:]),
		Data: b[RecDataOff : RecDataOff+l.Data : RecDataOff+l.Data],
	}
	caps := rec.Data
	if rec.Kind == KindReturn {
		caps = caps[min(RetDataSize, len(caps)):]
	}
	rec.Captures = decodeCaptures(le.Uint32(b[RecNCapOff:]), caps)
	return rec
}
