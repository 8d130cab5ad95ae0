package stub

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"testing"
)

// ram is guest-physical memory for tests: a byte slice at gpa 0 that
// fails accesses outside it, optionally confined to [lo, hi).
type ram struct {
	b      []byte
	lo, hi uint64 // accesses allowed; hi 0: anywhere in b
	writes [][2]uint64
}

var errOutside = errors.New("access outside the allowed range")

func (r *ram) check(gpa uint64, n int) error {
	end := gpa + uint64(n)
	if end < gpa || end > uint64(len(r.b)) || r.hi != 0 && (gpa < r.lo || end > r.hi) {
		return fmt.Errorf("%d bytes at %#x: %w", n, gpa, errOutside)
	}
	return nil
}

func (r *ram) ReadPhys(gpa uint64, p []byte) error {
	if err := r.check(gpa, len(p)); err != nil {
		return err
	}
	copy(p, r.b[gpa:])
	return nil
}

func (r *ram) WritePhys(gpa uint64, p []byte) error {
	if err := r.check(gpa, len(p)); err != nil {
		return err
	}
	r.writes = append(r.writes, [2]uint64{gpa, uint64(len(p))})
	copy(r.b[gpa:], p)
	return nil
}

var le = binary.LittleEndian

// guestRecord does what the stub does for one hit on cpu: a record if
// there is room, else a lost count. It reports whether it recorded.
func guestRecord(r *ram, l Layout, cpu int, probe uint32, tsc uint64) bool {
	ring := l.RingGPA(cpu)
	head, tail := le.Uint64(r.b[ring+HeadOff:]), le.Uint64(r.b[ring+TailOff:])
	if head-tail >= uint64(l.Records) {
		g := l.LostGPA(probe)
		le.PutUint64(r.b[g:], le.Uint64(r.b[g:])+1)
		return false
	}
	rec := r.b[ring+HeaderSize+(head&uint64(l.Records-1))*l.RecordSize():][:l.RecordSize()]
	le.PutUint32(rec[RecProbeOff:], probe)
	le.PutUint32(rec[RecCPUOff:], uint32(cpu))
	le.PutUint64(rec[RecTSCOff:], tsc)
	le.PutUint64(rec[RecCurrentOff:], 0xffff888000c0ffee)
	le.PutUint64(rec[RecRSPOff:], 0xffffc90000010000-tsc)
	for i := range FrameQwords {
		le.PutUint64(rec[RecFrameOff+8*i:], tsc<<8|uint64(i))
	}
	le.PutUint64(r.b[ring+HeadOff:], head+1)
	return true
}

func newRAM(l Layout) *ram { return &ram{b: make([]byte, l.GPA+l.Size())} }

func TestDrainInOrder(t *testing.T) {
	l := Layout{GPA: 0x1000, VA: 0xffff888000001000, CPUs: 2, Records: 4, Probes: 3}
	mem := newRAM(l)
	d, err := NewDrainer(mem, l)
	if err != nil {
		t.Fatal(err)
	}
	tsc := uint64(100)
	var want []uint64
	// Three rounds of 3 hits on cpu 1: the ring wraps; nothing is lost.
	for range 3 {
		for range 3 {
			tsc++
			if !guestRecord(mem, l, 1, 2, tsc) {
				t.Fatal("ring full")
			}
			want = append(want, tsc)
		}
		res, err := d.Drain(1, nil)
		if err != nil {
			t.Fatal(err)
		}
		if res.Overrun != 0 || res.Invalid != 0 || len(res.Records) != 3 {
			t.Fatalf("drain: %+v", res)
		}
		for i, rec := range res.Records {
			w := want[len(want)-3+i]
			if rec.TSC != w || rec.Probe != 2 || rec.CPU != 1 || rec.Current != 0xffff888000c0ffee ||
				rec.Regs.R15 != w<<8 || rec.Regs.RAX != w<<8|14 || rec.Regs.RFLAGS != w<<8|15 || rec.Regs.RSP != 0xffffc90000010000-w {
				t.Fatalf("record %d: %+v, want tsc %d", i, rec, w)
			}
		}
		if got := le.Uint64(mem.b[l.RingGPA(1)+TailOff:]); got != res.Tail {
			t.Fatalf("tail in the header %d, want %d", got, res.Tail)
		}
	}
	// Five hits with nothing drained: four recorded, one lost.
	for range 5 {
		tsc++
		guestRecord(mem, l, 0, 1, tsc)
	}
	lost, err := d.Lost()
	if err != nil || len(lost) != 3 || lost[0] != 0 || lost[1] != 1 || lost[2] != 0 {
		t.Fatalf("lost = %v, %v", lost, err)
	}
	res, err := d.Drain(0, nil)
	if err != nil || len(res.Records) != 4 || res.Records[0].TSC != tsc-4 || res.Records[3].TSC != tsc-1 {
		t.Fatalf("drain after overflow: %+v, %v", res, err)
	}
}

// TestDrainHostile: a guest-written header and records are validated.
func TestDrainHostile(t *testing.T) {
	l := Layout{GPA: 0, VA: 0, CPUs: 1, Records: 8, Probes: 2}
	for _, c := range []struct {
		name          string
		head, tail    uint64
		wantN         int
		wantOverrun   uint64
		wantTailAfter uint64
	}{
		{"empty", 5, 5, 0, 0, 5},
		{"far ahead", 1 << 40, 0, 8, 1<<40 - 8, 1 << 40},
		{"behind", 3, 5, 8, 1<<64 - 2 - 8, 3},
		{"max", ^uint64(0), 0, 8, ^uint64(0) - 8, ^uint64(0)},
	} {
		mem := newRAM(l)
		for i := range l.Records { // valid records everywhere
			le.PutUint32(mem.b[HeaderSize+i*int(l.RecordSize())+RecProbeOff:], 1)
		}
		le.PutUint64(mem.b[HeadOff:], c.head)
		le.PutUint64(mem.b[TailOff:], 12345) // the guest's tail is never believed
		res, err := Drain(mem, l, 0, c.tail, nil)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if len(res.Records) != c.wantN || res.Overrun != c.wantOverrun || res.Tail != c.wantTailAfter {
			t.Errorf("%s: %d records, overrun %d, tail %d; want %d, %d, %d", c.name, len(res.Records), res.Overrun, res.Tail, c.wantN, c.wantOverrun, c.wantTailAfter)
		}
	}
	// Records naming another CPU or an unknown probe are dropped.
	mem := newRAM(l)
	le.PutUint64(mem.b[HeadOff:], 3)
	le.PutUint32(mem.b[HeaderSize+0*l.RecordSize()+RecProbeOff:], 2) // no probe 2
	le.PutUint32(mem.b[HeaderSize+1*l.RecordSize()+RecCPUOff:], 1)   // not this ring's CPU
	res, err := Drain(mem, l, 0, 0, nil)
	if err != nil || len(res.Records) != 1 || res.Invalid != 2 || res.Tail != 3 {
		t.Errorf("invalid records: %+v, %v", res, err)
	}
	if _, err := Drain(mem, l, 1, 0, nil); err == nil {
		t.Error("ring 1 of a one-ring layout drained")
	}
}

// FuzzDrain: whatever the guest wrote into the rings and whatever tail
// the host holds, Drain never panics, reads and writes only inside the
// ring it drains (the writes: only its tail word), returns at most one
// ring of records and valid ones only.
func FuzzDrain(f *testing.F) {
	f.Add([]byte{}, uint64(0), uint8(2), uint8(0))
	f.Add(le.AppendUint64(nil, 1<<63), uint64(7), uint8(0), uint8(1))
	f.Add(le.AppendUint64(le.AppendUint64(nil, 3), 1), uint64(1), uint8(1), uint8(0))
	f.Fuzz(func(t *testing.T, guest []byte, tail uint64, logN, cpu uint8) {
		l := Layout{GPA: 0x40, VA: 0x40, CPUs: 2, Records: 1 << (logN % 4), Probes: 3, Data: 64}
		mem := newRAM(l)
		ring := l.RingGPA(int(cpu % 2))
		// The guest's bytes land on the drained ring (header first).
		copy(mem.b[ring:ring+l.RingStride()], guest)
		mem.lo, mem.hi = ring, ring+l.RingStride()
		res, err := Drain(mem, l, int(cpu%2), tail, nil)
		if err != nil {
			t.Fatalf("Drain: %v", err)
		}
		if len(res.Records) > l.Records || len(res.Records)+res.Invalid > l.Records {
			t.Fatalf("%d records (+%d invalid) from a %d-record ring", len(res.Records), res.Invalid, l.Records)
		}
		for _, rec := range res.Records {
			if rec.Probe >= uint32(l.Probes) || rec.CPU != uint32(cpu%2) {
				t.Fatalf("invalid record returned: %+v", rec)
			}
			checkDecoded(t, rec, l.Data)
		}
		if res.Tail-tail > uint64(l.Records)+res.Overrun || res.Tail != le.Uint64(mem.b[ring+TailOff:]) {
			t.Fatalf("tail %d -> %d (overrun %d), header says %d", tail, res.Tail, res.Overrun, le.Uint64(mem.b[ring+TailOff:]))
		}
		for _, w := range mem.writes {
			if w != [2]uint64{ring + TailOff, 8} {
				t.Fatalf("wrote %d bytes at %#x", w[1], w[0])
			}
		}
	})
}

// checkDecoded: decoded captures stay inside the record's data, and
// reads from them never go past what was captured.
func checkDecoded(t *testing.T, rec Record, data int) {
	t.Helper()
	used := 0
	for _, c := range rec.Captures {
		used += CaptureHeader + (c.Asked+7)&^7
		if len(c.Bytes) > c.Asked || used > data {
			t.Fatalf("capture %+v: %d bytes of %d used", c, used, data)
		}
		p := make([]byte, c.Asked+8)
		_ = rec.ReadVirt(c.VA, p)
	}
}

// TestDecodeCaptures: hostile capture headers (a huge count, sizes past
// the data, bytes read past bytes asked) end the list there.
func TestDecodeCaptures(t *testing.T) {
	entry := func(va uint64, got, asked uint32, b string) []byte {
		e := le.AppendUint32(le.AppendUint32(le.AppendUint64(nil, va), got), asked)
		e = append(e, b...)
		for len(e)%8 != 0 {
			e = append(e, 0)
		}
		return e
	}
	good := entry(0x1000, 3, 8|captureFault, "abc\x00\x00\x00\x00\x00")
	for _, c := range []struct {
		name string
		n    uint32
		data []byte
		want int
	}{
		{"two", 2, append(slices.Clone(good), entry(0x2000, 8, 8, "12345678")...), 2},
		{"count past the data", 1 << 31, slices.Clone(good), 1},
		{"size past the data", 2, append(slices.Clone(good), entry(0x2000, 8, 4000, "12345678")...), 1},
		{"read past asked", 2, append(slices.Clone(good), entry(0x2000, 9, 8, "12345678")...), 1},
		{"truncated header", 2, append(slices.Clone(good), 1, 2, 3), 1},
	} {
		got := decodeCaptures(c.n, c.data)
		if len(got) != c.want {
			t.Errorf("%s: %d captures, want %d", c.name, len(got), c.want)
		}
	}
	rec := Record{Captures: decodeCaptures(1, good)}
	p := make([]byte, 4)
	if err := rec.ReadVirt(0x1000, p[:3]); err != nil || string(p[:3]) != "abc" {
		t.Errorf("ReadVirt = %q, %v", p, err)
	}
	if err := rec.ReadVirt(0x1001, p); err == nil {
		t.Errorf("a read past a faulted capture succeeded: %q", p)
	}
}
