package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
)

// virtio-blk (virtio 1.2, 5.2).
const (
	blkID = 2

	blkFSegMax = 1 << 2
	blkFRO     = 1 << 5
	blkFFlush  = 1 << 9

	blkTIn    = 0
	blkTOut   = 1
	blkTFlush = 4
	blkTGetID = 8

	blkSOK     = 0
	blkSIOErr  = 1
	blkSUnsupp = 2

	blkHeaderLen = 16 // type, reserved, sector
	blkIDLen     = 20 // VIRTIO_BLK_ID_BYTES
	// SectorSize is the unit of a virtio-blk sector number, whatever the
	// disk's own block size.
	SectorSize = 512
	// blkSegMax is what seg_max promises: the data buffers of one request,
	// header and status aside.
	blkSegMax = MaxQueueSize - 2
)

// Blk is a virtio-blk device over a raw image file: reads, writes (unless
// read-only, when the RO feature is offered and writes fail with IOERR)
// and flushes, which fsync the file.
type Blk struct {
	f       *os.File
	ro      bool
	sectors uint64
	id      string
	mem     Memory
	stats   BlkStats
}

// BlkStats counts the requests a Blk served, by type.
type BlkStats struct {
	Reads, Writes, Flushes, Other atomic.Uint64
	BytesRead, BytesWritten       atomic.Uint64
}

// Requests is every request served.
func (s *BlkStats) Requests() uint64 {
	return s.Reads.Load() + s.Writes.Load() + s.Flushes.Load() + s.Other.Load()
}

// OpenDisk opens a raw disk image for a Blk and checks it, so that a bad
// disk is refused before boot: a regular file, writable unless ro, whose
// size is a whole number of sectors.
func OpenDisk(path string, ro bool) (*os.File, error) {
	flag := os.O_RDWR
	if ro {
		flag = os.O_RDONLY
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (a raw disk image)", path)
	}
	if st.Size()%SectorSize != 0 || st.Size() == 0 {
		return nil, fmt.Errorf("%s: %d bytes is not a whole, non-zero number of %d-byte sectors", path, st.Size(), SectorSize)
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil && !ro && errors.Is(err, os.ErrPermission) {
		return nil, fmt.Errorf("%w (a read-only disk takes ,ro)", err)
	}
	return f, err
}

// NewBlk serves f (from OpenDisk) as a disk named id (at most 20 bytes
// are shown to the guest), over mem.
func NewBlk(f *os.File, ro bool, id string, mem Memory) (*Blk, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	return &Blk{f: f, ro: ro, sectors: uint64(st.Size()) / SectorSize, id: id, mem: mem}, nil
}

// Stats are the requests served so far.
func (b *Blk) Stats() *BlkStats { return &b.stats }

func (b *Blk) ID() uint16    { return blkID }
func (b *Blk) Class() uint32 { return 0x010000 } // mass storage, SCSI, as QEMU's virtio-blk-pci
func (b *Blk) Queues() int   { return 1 }

func (b *Blk) Features() uint64 {
	f := uint64(blkFSegMax | blkFFlush)
	if b.ro {
		f |= blkFRO
	}
	return f
}

// ReadConfig is struct virtio_blk_config: capacity, then seg_max.
func (b *Blk) ReadConfig(off uint64, p []byte) {
	var c [64]byte
	binary.LittleEndian.PutUint64(c[0:], b.sectors)
	binary.LittleEndian.PutUint32(c[12:], blkSegMax)
	if off < uint64(len(c)) {
		copy(p, c[off:])
	}
}

// WriteConfig ignores writes: the writable field (writeback) belongs to
// a feature not offered.
func (b *Blk) WriteConfig(uint64, []byte) {}

// Handle serves one request: a 16-byte header, data buffers, and a
// one-byte status the device writes last.
func (b *Blk) Handle(_ int, c Chain) (uint32, error) {
	if len(c.Bufs) < 2 {
		return 0, fmt.Errorf("%w: a block request of %d buffers", ErrQueue, len(c.Bufs))
	}
	hdr, st := c.Bufs[0], c.Bufs[len(c.Bufs)-1]
	if hdr.Write || hdr.Len < blkHeaderLen || !st.Write || st.Len < 1 {
		return 0, fmt.Errorf("%w: a block request without a readable header and a writable status", ErrQueue)
	}
	var h [blkHeaderLen]byte
	if err := b.mem.ReadPhys(hdr.Addr, h[:]); err != nil {
		return 0, fmt.Errorf("%w: request header: %v", ErrQueue, err)
	}
	typ, sector := binary.LittleEndian.Uint32(h[0:]), binary.LittleEndian.Uint64(h[8:])
	data := c.Bufs[1 : len(c.Bufs)-1]
	status, written, err := b.serve(typ, sector, data)
	if err != nil {
		return 0, err
	}
	if err := b.mem.WritePhys(st.Addr, []byte{status}); err != nil {
		return 0, fmt.Errorf("%w: request status: %v", ErrQueue, err)
	}
	return written + 1, nil
}

// serve runs the request; the status tells the guest of disk errors, and
// err is only for buffers outside guest RAM.
func (b *Blk) serve(typ uint32, sector uint64, data []Buf) (status byte, written uint32, err error) {
	size := uint64(0)
	for _, d := range data {
		size += uint64(d.Len)
	}
	inRange := size%SectorSize == 0 && sector <= b.sectors && size/SectorSize <= b.sectors-sector
	off := int64(sector * SectorSize)
	switch typ {
	case blkTIn:
		b.stats.Reads.Add(1)
		if !inRange || !allWritable(data, true) {
			return blkSIOErr, 0, nil
		}
		for _, d := range data {
			buf := make([]byte, d.Len)
			if _, err := b.f.ReadAt(buf, off); err != nil {
				return blkSIOErr, written, nil
			}
			if err := b.mem.WritePhys(d.Addr, buf); err != nil {
				return 0, 0, fmt.Errorf("%w: read buffer: %v", ErrQueue, err)
			}
			off += int64(d.Len)
			written += d.Len
		}
		b.stats.BytesRead.Add(size)
		return blkSOK, written, nil
	case blkTOut:
		b.stats.Writes.Add(1)
		if b.ro || !inRange || !allWritable(data, false) {
			return blkSIOErr, 0, nil
		}
		for _, d := range data {
			buf := make([]byte, d.Len)
			if err := b.mem.ReadPhys(d.Addr, buf); err != nil {
				return 0, 0, fmt.Errorf("%w: write buffer: %v", ErrQueue, err)
			}
			if _, err := b.f.WriteAt(buf, off); err != nil {
				return blkSIOErr, 0, nil
			}
			off += int64(d.Len)
		}
		b.stats.BytesWritten.Add(size)
		return blkSOK, 0, nil
	case blkTFlush:
		b.stats.Flushes.Add(1)
		if b.ro {
			return blkSOK, 0, nil
		}
		if err := b.f.Sync(); err != nil {
			return blkSIOErr, 0, nil
		}
		return blkSOK, 0, nil
	case blkTGetID:
		b.stats.Other.Add(1)
		if len(data) != 1 || !data[0].Write {
			return blkSIOErr, 0, nil
		}
		id := make([]byte, min(blkIDLen, data[0].Len))
		copy(id, b.id)
		if err := b.mem.WritePhys(data[0].Addr, id); err != nil {
			return 0, 0, fmt.Errorf("%w: id buffer: %v", ErrQueue, err)
		}
		return blkSOK, uint32(len(id)), nil
	}
	b.stats.Other.Add(1)
	return blkSUnsupp, 0, nil
}

// allWritable reports whether every buffer is device-writable (want) or
// every one device-readable.
func allWritable(bufs []Buf, want bool) bool {
	for _, d := range bufs {
		if d.Write != want {
			return false
		}
	}
	return true
}

// Close closes the image.
func (b *Blk) Close() error { return b.f.Close() }
