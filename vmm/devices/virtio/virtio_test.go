package virtio

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hvprobe/hvprobe/vmm/devices"
)

// ram is guest memory for tests: a byte slice, with the ring indices'
// loads and stores under a lock (the worker and the test's driver run
// concurrently).
type ram struct {
	mu sync.Mutex
	b  []byte
}

func (r *ram) span(gpa uint64, n int) ([]byte, error) {
	if gpa+uint64(n) < gpa || gpa+uint64(n) > uint64(len(r.b)) {
		return nil, fmt.Errorf("%d bytes at %#x: outside RAM", n, gpa)
	}
	return r.b[gpa : gpa+uint64(n)], nil
}

func (r *ram) ReadPhys(gpa uint64, p []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, err := r.span(gpa, len(p))
	if err == nil {
		copy(p, s)
	}
	return err
}

func (r *ram) WritePhys(gpa uint64, p []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, err := r.span(gpa, len(p))
	if err == nil {
		copy(s, p)
	}
	return err
}

func (r *ram) LoadPhys(gpa uint64, size int) (uint64, error) {
	var b [8]byte
	err := r.ReadPhys(gpa, b[:size])
	return binary.LittleEndian.Uint64(b[:]), err
}

func (r *ram) StorePhys(gpa uint64, size int, v uint64) error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	return r.WritePhys(gpa, b[:size])
}

func (r *ram) put16(gpa uint64, v uint16) { _ = r.StorePhys(gpa, 2, uint64(v)) }
func (r *ram) get16(gpa uint64) uint16    { v, _ := r.LoadPhys(gpa, 2); return uint16(v) }

// Guest-physical layout of the test driver's queue and buffers.
const (
	qSize     = 16
	descGPA   = 0x1000
	availGPA  = 0x2000
	usedGPA   = 0x3000
	bufGPA    = 0x10000
	barGPA    = 0xe0000000
	ramSize   = 0x100000
	msiAddr   = 0xfee00000
	configMSI = 0x40 // the data word of vector 0; vector 1's is 0x41
)

// driver is a virtio-pci driver as Linux's virtio_pci_modern is, enough
// to set up one queue and submit block requests, over a devices.PCI bus.
type driver struct {
	t      *testing.T
	bus    *devices.Bus
	mem    *ram
	dev    *PCI
	msis   chan uint32
	common uint64 // where BAR 0's structures are, from the capabilities
	notify uint64
	device uint64
	next   uint16 // next free descriptor
	avail  uint16
}

func newDriver(t *testing.T, disk string, ro bool) (*driver, *Blk) {
	t.Helper()
	d := &driver{t: t, bus: &devices.Bus{PCI: devices.NewPCI()}, mem: &ram{b: make([]byte, ramSize)}, msis: make(chan uint32, 64)}
	f, err := OpenDisk(disk, ro)
	if err != nil {
		t.Fatal(err)
	}
	blk, err := NewBlk(f, ro, "hvprobe-test", d.mem)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { blk.Close() })
	d.dev = NewPCI(blk, d.mem, func(addr uint64, data uint32) error {
		if addr != msiAddr {
			return fmt.Errorf("MSI to %#x", addr)
		}
		d.msis <- data
		return nil
	}, barGPA, "vda")
	t.Cleanup(d.dev.Close)
	d.bus.PCI.Add(d.dev)
	d.probe()
	return d, blk
}

// cfg reads and writes configuration space of device 1 through the ports.
func (d *driver) cfgAddr(off int) {
	a := uint32(1<<31 | 1<<11 | off&^3)
	for i := 0; i < 4; i++ {
		d.bus.Out(uint16(0xcf8+i), uint8(a>>(8*i)))
	}
}

func (d *driver) cfg8(off int) uint8 { d.cfgAddr(off); return d.bus.In(uint16(0xcfc + off&3)) }
func (d *driver) cfg16(off int) uint16 {
	return uint16(d.cfg8(off)) | uint16(d.cfg8(off+1))<<8
}
func (d *driver) cfg32(off int) uint32 { return uint32(d.cfg16(off)) | uint32(d.cfg16(off+2))<<16 }
func (d *driver) setCfg8(off int, v uint8) {
	d.cfgAddr(off)
	d.bus.Out(uint16(0xcfc+off&3), v)
}
func (d *driver) setCfg32(off int, v uint32) {
	for i := 0; i < 4; i++ {
		d.setCfg8(off+i, uint8(v>>(8*i)))
	}
}

func (d *driver) mmio(addr uint64, size int, v uint64, write bool) uint64 {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	if !d.bus.MMIO(addr, b[:size], write) {
		d.t.Fatalf("MMIO at %#x reached no device", addr)
	}
	return binary.LittleEndian.Uint64(b[:])
}

func (d *driver) rd(off uint64, size int) uint64    { return d.mmio(d.common+off, size, 0, false) }
func (d *driver) wr(off uint64, size int, v uint64) { d.mmio(d.common+off, size, v, true) }

// probe is vp_modern_probe and virtio's device setup: IDs, BAR sizing,
// capabilities, MSI-X, features and queue 0.
func (d *driver) probe() {
	t := d.t
	if v, id := d.cfg16(0), d.cfg16(2); v != 0x1af4 || id != 0x1042 {
		t.Fatalf("IDs %04x:%04x", v, id)
	}
	if d.cfg8(devices.PCIRevision) < 1 {
		t.Fatal("a non-transitional device must have revision 1 or more")
	}
	// BAR sizing, with memory decoding off, as __pci_read_base does.
	d.setCfg8(devices.PCICommand, 0)
	bar := d.cfg32(0x10)
	d.setCfg32(0x10, 0xffffffff)
	if size := ^(d.cfg32(0x10) &^ 0xf) + 1; size != barSize {
		t.Fatalf("BAR 0 sizes to %#x", size)
	}
	d.setCfg32(0x10, bar)
	if d.bus.MMIO(barGPA, make([]byte, 4), false) {
		t.Fatal("BAR decoded with memory space disabled")
	}
	d.setCfg8(devices.PCICommand, devices.PCICommandMemory|devices.PCICommandMaster)
	var msixCap int
	for at := int(d.cfg8(devices.PCICapPtr)); at != 0; at = int(d.cfg8(at + 1)) {
		switch d.cfg8(at) {
		case 0x09:
			off := uint64(bar) + uint64(d.cfg32(at+8))
			switch d.cfg8(at + 3) {
			case capCommon:
				d.common = off
			case capNotify:
				d.notify = off
				if m := d.cfg32(at + 16); m != notifyMult {
					t.Fatalf("notify multiplier %d", m)
				}
			case capDevice:
				d.device = off
			}
		case 0x11:
			msixCap = at
		}
	}
	if d.common == 0 || d.notify == 0 || d.device == 0 || msixCap == 0 {
		t.Fatalf("capabilities: common %#x notify %#x device %#x msix %#x", d.common, d.notify, d.device, msixCap)
	}
	if n := d.cfg16(msixCap+2)&0x7ff + 1; n != 2 {
		t.Fatalf("MSI-X table of %d", n)
	}
	table := uint64(bar) + uint64(d.cfg32(msixCap+4))
	for v := uint64(0); v < 2; v++ {
		d.mmio(table+16*v, 4, msiAddr, true)
		d.mmio(table+16*v+8, 4, configMSI+v, true)
		d.mmio(table+16*v+12, 4, 0, true) // unmask
	}
	d.setCfg8(msixCap+3, 0x80) // enable
	d.wr(20, 1, StatusAcknowledge|StatusDriver)
	d.wr(0, 4, 1)
	if d.rd(4, 4)&1 == 0 {
		t.Fatal("no VIRTIO_F_VERSION_1")
	}
	d.wr(8, 4, 0)
	d.wr(12, 4, FeatureEventIdx|blkFFlush)
	d.wr(8, 4, 1)
	d.wr(12, 4, 1)
	d.wr(20, 1, StatusAcknowledge|StatusDriver|StatusFeaturesOK)
	if d.rd(20, 1)&StatusFeaturesOK == 0 {
		t.Fatal("FEATURES_OK did not stick")
	}
	d.wr(16, 2, 0) // msix_config
	if d.rd(16, 2) != 0 {
		t.Fatal("msix_config not taken")
	}
	d.wr(22, 2, 0)
	if max := d.rd(24, 2); max != MaxQueueSize {
		t.Fatalf("queue size %d", max)
	}
	d.wr(24, 2, qSize)
	for _, a := range []struct {
		off uint64
		gpa uint64
	}{{32, descGPA}, {40, availGPA}, {48, usedGPA}} {
		d.wr(a.off, 4, a.gpa)
		d.wr(a.off+4, 4, 0)
	}
	d.wr(26, 2, 1)
	d.wr(26+2, 2, 1) // queue_enable
	d.wr(20, 1, StatusAcknowledge|StatusDriver|StatusFeaturesOK|StatusDriverOK)
	d.setUsedEvent(0)
}

func (d *driver) setUsedEvent(v uint16) { d.mem.put16(availGPA+4+2*qSize, v) }

// request queues one block request (header, data, status) without
// notifying; it returns the status byte's address.
func (d *driver) request(typ uint32, sector uint64, data []byte, dataWrite bool) uint64 {
	base := bufGPA + uint64(d.next)*0x2000
	hdr := make([]byte, 16)
	binary.LittleEndian.PutUint32(hdr[0:], typ)
	binary.LittleEndian.PutUint64(hdr[8:], sector)
	_ = d.mem.WritePhys(base, hdr)
	_ = d.mem.WritePhys(base+16, data)
	status := base + 16 + uint64(len(data))
	_ = d.mem.WritePhys(status, []byte{0xee})
	bufs := []Buf{{base, 16, false}}
	if len(data) > 0 {
		bufs = append(bufs, Buf{base + 16, uint32(len(data)), dataWrite})
	}
	bufs = append(bufs, Buf{status, 1, true})
	head := d.next
	for i, b := range bufs {
		var raw [16]byte
		binary.LittleEndian.PutUint64(raw[0:], b.Addr)
		binary.LittleEndian.PutUint32(raw[8:], b.Len)
		flags := uint16(0)
		if b.Write {
			flags |= descFWrite
		}
		if i < len(bufs)-1 {
			flags |= descFNext
			binary.LittleEndian.PutUint16(raw[14:], (d.next+1)%qSize)
		}
		binary.LittleEndian.PutUint16(raw[12:], flags)
		_ = d.mem.WritePhys(descGPA+16*uint64(d.next), raw[:])
		d.next = (d.next + 1) % qSize
	}
	d.mem.put16(availGPA+4+2*uint64(d.avail%qSize), head)
	d.avail++
	d.mem.put16(availGPA+2, d.avail)
	return status
}

func (d *driver) kick() { d.mmio(d.notify, 2, 0, true) }

// wait waits for the used index to reach n.
func (d *driver) wait(n uint16) {
	deadline := time.Now().Add(5 * time.Second)
	for d.mem.get16(usedGPA+2) != n {
		if time.Now().After(deadline) {
			d.t.Fatalf("used index %d, want %d", d.mem.get16(usedGPA+2), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func (d *driver) interrupts() []uint32 {
	time.Sleep(20 * time.Millisecond) // the worker interrupts after it publishes
	var got []uint32
	for {
		select {
		case v := <-d.msis:
			got = append(got, v)
		default:
			return got
		}
	}
}

func status(t *testing.T, mem *ram, gpa uint64) byte {
	t.Helper()
	b := []byte{0}
	_ = mem.ReadPhys(gpa, b)
	return b[0]
}

func disk(t *testing.T, sectors int) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(p, bytes.Repeat([]byte{0x5a}, sectors*SectorSize), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestBlk drives the block device as Linux does: a write lands in the
// image file at its sector, a flush succeeds, a read returns what was
// written, GET_ID names the disk, out-of-range requests fail with IOERR,
// and the event index gives one interrupt for a batch.
func TestBlk(t *testing.T) {
	img := disk(t, 64)
	d, blk := newDriver(t, img, false)
	want := bytes.Repeat([]byte("hvprobe!"), 512) // 4096 bytes
	st := []uint64{
		d.request(blkTOut, 8, want, false),
		d.request(blkTFlush, 0, nil, false),
	}
	d.kick()
	d.wait(2)
	got, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[8*SectorSize:8*SectorSize+len(want)], want) || got[8*SectorSize-1] != 0x5a || got[8*SectorSize+len(want)] != 0x5a {
		t.Fatal("the write did not land at sector 8, byte-exact")
	}
	if irq := d.interrupts(); len(irq) != 1 || irq[0] != configMSI+1 {
		t.Errorf("interrupts %#x, want one on vector 1", irq)
	}
	// used_event = 4: four requests at once give one interrupt, after the
	// last; the device asks for the next kick past them.
	d.setUsedEvent(4)
	st = append(st,
		d.request(blkTIn, 8, make([]byte, len(want)), true),
		d.request(blkTGetID, 0, make([]byte, 20), true),
		d.request(blkTIn, 63, make([]byte, 1024), true), // past the end
		d.request(99, 0, nil, false),
	)
	d.kick()
	d.wait(6)
	if irq := d.interrupts(); len(irq) != 1 {
		t.Errorf("%d interrupts for a batch of 4 with used_event 4, want 1", len(irq))
	}
	if ev := d.mem.get16(usedGPA + 4 + 8*qSize); ev != 6 {
		t.Errorf("avail_event %d, want 6", ev)
	}
	read := make([]byte, len(want))
	_ = d.mem.ReadPhys(bufGPA+uint64(5)*0x2000+16, read) // its descriptors start at 5
	if !bytes.Equal(read, want) {
		t.Error("the read did not return the written bytes")
	}
	id := make([]byte, 20)
	_ = d.mem.ReadPhys(bufGPA+uint64(8)*0x2000+16, id)
	if !bytes.HasPrefix(id, []byte("hvprobe-test\x00")) {
		t.Errorf("GET_ID %q", id)
	}
	for i, w := range []byte{blkSOK, blkSOK, blkSOK, blkSOK, blkSIOErr, blkSUnsupp} {
		if s := status(t, d.mem, st[i]); s != w {
			t.Errorf("request %d: status %d, want %d", i, s, w)
		}
	}
	if s := blk.Stats(); s.Reads.Load() != 2 || s.Writes.Load() != 1 || s.Flushes.Load() != 1 || s.Requests() != 6 || s.BytesWritten.Load() != 4096 {
		t.Errorf("stats: %d reads, %d writes, %d flushes, %d requests", s.Reads.Load(), s.Writes.Load(), s.Flushes.Load(), s.Requests())
	}
}

// TestBlkReadOnly: a ,ro disk offers VIRTIO_BLK_F_RO and fails writes
// with IOERR, leaving the file as it was.
func TestBlkReadOnly(t *testing.T) {
	img := disk(t, 8)
	d, _ := newDriver(t, img, true)
	d.wr(0, 4, 0)
	if d.rd(4, 4)&blkFRO == 0 {
		t.Error("no VIRTIO_BLK_F_RO")
	}
	s := d.request(blkTOut, 0, bytes.Repeat([]byte{1}, 512), false)
	d.kick()
	d.wait(1)
	if st := status(t, d.mem, s); st != blkSIOErr {
		t.Errorf("write to a read-only disk: status %d", st)
	}
	if got, _ := os.ReadFile(img); got[0] != 0x5a {
		t.Error("a read-only disk was written")
	}
	if capacity := d.mmio(d.device, 8, 0, false); capacity != 8 {
		t.Errorf("capacity %d sectors", capacity)
	}
}

// TestBrokenQueue: a looping chain puts the device in NEEDS_RESET with a
// config interrupt; a reset makes it usable again.
func TestBrokenQueue(t *testing.T) {
	d, _ := newDriver(t, disk(t, 8), false)
	var raw [16]byte
	binary.LittleEndian.PutUint64(raw[0:], bufGPA)
	binary.LittleEndian.PutUint32(raw[8:], 16)
	binary.LittleEndian.PutUint16(raw[12:], descFNext)
	binary.LittleEndian.PutUint16(raw[14:], 0) // back to itself
	_ = d.mem.WritePhys(descGPA, raw[:])
	d.mem.put16(availGPA+4, 0)
	d.mem.put16(availGPA+2, 1)
	d.kick()
	deadline := time.Now().Add(5 * time.Second)
	for d.rd(20, 1)&StatusNeedsReset == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no NEEDS_RESET after a looping chain")
		}
		time.Sleep(time.Millisecond)
	}
	if irq := d.interrupts(); len(irq) != 1 || irq[0] != configMSI {
		t.Errorf("interrupts %#x, want one config interrupt", irq)
	}
	d.wr(20, 1, 0)
	if d.rd(20, 1) != 0 {
		t.Fatal("reset did not clear the status")
	}
	d.mem.mu.Lock()
	clear(d.mem.b) // the driver starts over in fresh rings
	d.mem.mu.Unlock()
	d.next, d.avail = 0, 0
	d.probe()
	s := d.request(blkTFlush, 0, nil, false)
	d.kick()
	d.wait(1)
	if st := status(t, d.mem, s); st != blkSOK {
		t.Errorf("after reset: status %d", st)
	}
}

// TestOpenDisk: what is refused before boot, naming the file.
func TestOpenDisk(t *testing.T) {
	dir := t.TempDir()
	odd := filepath.Join(dir, "odd")
	_ = os.WriteFile(odd, make([]byte, 1000), 0o644)
	rdonly := filepath.Join(dir, "rdonly")
	_ = os.WriteFile(rdonly, make([]byte, 512), 0o444)
	for _, c := range []struct {
		path string
		ro   bool
		want string
	}{
		{filepath.Join(dir, "missing"), false, "no such file"},
		{dir, false, "not a regular file"},
		{odd, false, "not a whole"},
		{rdonly, false, ",ro"},
	} {
		f, err := OpenDisk(c.path, c.ro)
		if os.Geteuid() == 0 && c.path == rdonly {
			f.Close()
			continue // root opens it anyway
		}
		if err == nil || !bytes.Contains([]byte(err.Error()), []byte(c.want)) {
			t.Errorf("OpenDisk(%s): %v, want %q", c.path, err, c.want)
		}
	}
	if f, err := OpenDisk(rdonly, true); err != nil {
		t.Error(err)
	} else {
		f.Close()
	}
}

// FuzzQueue: whatever the guest puts in the descriptor table and the
// rings, Pop and Push return chains inside the rules or ErrQueue, and
// never loop or allocate without bound.
func FuzzQueue(f *testing.F) {
	f.Add([]byte{}, uint16(3))
	f.Add(bytes.Repeat([]byte{1, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 1, 0, 1, 0}, 8), uint16(7))
	f.Fuzz(func(t *testing.T, table []byte, availIdx uint16) {
		mem := &ram{b: make([]byte, 0x4000)}
		copy(mem.b[descGPA:], table)
		copy(mem.b[availGPA+4:], table) // ring entries from the same bytes
		mem.put16(availGPA+2, availIdx)
		q, err := NewQueue(mem, 8, descGPA, availGPA, usedGPA, true)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 20; i++ {
			c, ok, err := q.Pop()
			if err != nil {
				if !errors.Is(err, ErrQueue) {
					t.Fatalf("error %v does not wrap ErrQueue", err)
				}
				return
			}
			if !ok {
				return
			}
			total, seenWrite := uint64(0), false
			for _, b := range c.Bufs {
				total += uint64(b.Len)
				if !b.Write && seenWrite {
					t.Fatal("readable after writable")
				}
				seenWrite = seenWrite || b.Write
			}
			if len(c.Bufs) > 8 || total > maxChainBytes || c.Head >= 8 {
				t.Fatalf("chain %+v", c)
			}
			if err := q.Push(c.Head, 1); err != nil {
				t.Fatal(err)
			}
		}
	})
}
