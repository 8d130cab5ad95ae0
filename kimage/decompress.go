package kimage

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"
)

// MaxKernelSize bounds a decompressed payload; real kernels are far below
// it, and the bound keeps a hostile size field from exhausting memory.
const MaxKernelSize = 1 << 30

// Magic numbers of the payload compressions (arch/x86/boot/compressed).
var compressions = []struct {
	name  string
	magic []byte
	// decompress gets the compressed stream without the 4-byte size that
	// the kernel build appends (size_append), and the size it announces.
	decompress func(in []byte, size uint32) ([]byte, error)
}{
	{"gzip", []byte{0x1f, 0x8b}, gunzip},
	{"xz", []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}, unxz},
	{"lz4", []byte{0x02, 0x21, 0x4c, 0x18}, unlz4},
	{"zstd", []byte{0x28, 0xb5, 0x2f, 0xfd}, unzstd},
	{"bzip2", []byte("BZh"), nil},
	{"lzma", []byte{0x5d, 0x00, 0x00}, nil},
	{"lzo", []byte{0x89, 'L', 'Z', 'O'}, nil},
}

// decompress detects the payload's compression by magic and inflates it.
// Every kernel payload ends with the little-endian 32-bit size of the
// decompressed data (gzip's ISIZE, or size_append for the others); the
// result must have exactly that size.
func decompress(payload []byte) (data []byte, method string, err error) {
	if len(payload) < 4 {
		return nil, "", formatErr("payload", 0, "%d bytes, too short", len(payload))
	}
	size := binary.LittleEndian.Uint32(payload[len(payload)-4:])
	for _, c := range compressions {
		if !bytes.HasPrefix(payload, c.magic) {
			continue
		}
		if c.decompress == nil {
			return nil, c.name, &UnsupportedCompressionError{Method: c.name}
		}
		if uint64(size) > MaxKernelSize {
			return nil, c.name, formatErr("payload", uint64(len(payload)-4), "announced size %d exceeds %d", size, MaxKernelSize)
		}
		in := payload[:len(payload)-4]
		if c.name == "gzip" {
			in = payload // ISIZE is part of the gzip trailer
		}
		out, err := c.decompress(in, size)
		if err != nil {
			return nil, c.name, fmt.Errorf("decompressing %s payload: %w", c.name, err)
		}
		if uint32(len(out)) != size || len(out) > MaxKernelSize {
			return nil, c.name, formatErr("payload", uint64(len(payload)-4), "%s payload inflated to %d bytes, trailer says %d", c.name, len(out), size)
		}
		return out, c.name, nil
	}
	n := min(len(payload), 8)
	return nil, "", formatErr("payload", 0, "unknown compression magic % x", payload[:n])
}

// readLimited reads r until EOF, failing past limit bytes so a stream that
// inflates beyond its announced size cannot exhaust memory.
func readLimited(r io.Reader, limit uint32) ([]byte, error) {
	out, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if err != nil {
		return nil, err
	}
	if len(out) > int(limit) {
		return nil, fmt.Errorf("stream inflates beyond the announced %d bytes: %w", limit, ErrFormat)
	}
	return out, nil
}

func gunzip(in []byte, size uint32) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(in))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, ErrFormat)
	}
	zr.Multistream(false)
	out, err := readLimited(zr, size)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, ErrFormat)
	}
	return out, nil
}

func unzstd(in []byte, size uint32) ([]byte, error) {
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderMaxMemory(uint64(size)+1))
	if err != nil {
		return nil, err
	}
	defer d.Close()
	out, err := d.DecodeAll(in, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, ErrFormat)
	}
	return out, nil
}

// xz filter IDs (xz file format 1.1.0, section 5.3).
const (
	xzFilterLZMA2 = 0x21
	xzFilterX86   = 0x04
)

func unxz(in []byte, size uint32) ([]byte, error) {
	id, props, ok := xzFirstFilter(in)
	if ok && id != xzFilterLZMA2 {
		name := fmt.Sprintf("xz with filter %#x", id)
		if id == xzFilterX86 {
			// scripts/xz_wrap.sh passes --x86 for x86 kernels.
			name = "xz with the x86 BCJ filter"
		}
		return nil, &UnsupportedCompressionError{Method: name}
	}
	// The xz library allocates whatever dictionary the header asks for.
	if ok && len(props) == 1 {
		if d := lzma2DictSize(props[0]); d > xzMaxDict {
			return nil, formatErr("xz stream", 12, "LZMA2 dictionary of %d bytes exceeds %d", d, xzMaxDict)
		}
	}
	// The xz reader returns all data before it has read the index and
	// footer, so a cut stream would pass: require the footer magic,
	// after any stream padding.
	body := in
	for len(body) >= 4 && bytes.Equal(body[len(body)-4:], []byte{0, 0, 0, 0}) {
		body = body[:len(body)-4]
	}
	if len(body) < 24 || !bytes.HasSuffix(body, []byte("YZ")) {
		return nil, formatErr("xz stream", uint64(len(in)), "no stream footer (truncated)")
	}
	xr, err := xz.NewReader(bytes.NewReader(in))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, ErrFormat)
	}
	out, err := readLimited(xr, size)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, ErrFormat)
	}
	return out, nil
}

// xzMaxDict bounds the LZMA2 dictionary; scripts/xz_wrap.sh uses 32 MiB.
const xzMaxDict = 64 << 20

// xzFirstFilter returns the ID and properties of the first filter of the
// first block, so that a BCJ-filtered kernel gets a clear error rather
// than the xz library's "invalid filter id".
func xzFirstFilter(in []byte) (id uint64, props []byte, ok bool) {
	const streamHeader = 12
	if len(in) < streamHeader+2 || in[streamHeader] == 0 {
		return 0, nil, false
	}
	p := in[streamHeader+2:]
	flags := in[streamHeader+1]
	next := func() (uint64, bool) {
		v, n := binary.Uvarint(p)
		if n <= 0 {
			return 0, false
		}
		p = p[n:]
		return v, true
	}
	for _, present := range []bool{flags&0x40 != 0, flags&0x80 != 0} {
		if !present { // compressed / uncompressed size fields
			continue
		}
		if _, ok := next(); !ok {
			return 0, nil, false
		}
	}
	if id, ok = next(); !ok {
		return 0, nil, false
	}
	n, ok := next()
	if !ok || n > uint64(len(p)) {
		return id, nil, true
	}
	return id, p[:n], true
}

// lzma2DictSize decodes the LZMA2 dictionary-size property byte.
func lzma2DictSize(b byte) uint64 {
	bits := uint64(b & 0x3f)
	if bits >= 40 {
		return 1<<32 - 1
	}
	return (2 | bits&1) << (bits/2 + 11)
}

// lz4LegacyMagic and lz4ChunkSize are lib/decompress_unlz4.c's
// ARCHIVE_MAGICNUMBER and LZ4_DEFAULT_UNCOMPRESSED_CHUNK_SIZE.
const (
	lz4LegacyMagic = 0x184C2102
	lz4ChunkSize   = 8 << 20
	// lz4MaxRatio bounds how far one compressed byte can expand (a match
	// of 255-byte length extensions), to size buffers before decoding.
	lz4MaxRatio = 255
)

// unlz4 decodes the legacy LZ4 format exactly as lib/decompress_unlz4.c
// does for an in-memory input: magic, then chunks of [le32 size][block],
// each block at most 8 MiB decompressed; a repeated magic is skipped (a
// concatenated stream), and fewer than 4 bytes left or a zero chunk size
// end the stream; a chunk running past the input is corruption.
func unlz4(in []byte, size uint32) ([]byte, error) {
	if len(in) < 4 || binary.LittleEndian.Uint32(in) != lz4LegacyMagic {
		return nil, formatErr("lz4 stream", 0, "invalid header")
	}
	out := make([]byte, 0, min(int(size), lz4MaxRatio*len(in)+64))
	pos := 4
	for len(in)-pos >= 4 {
		chunk := binary.LittleEndian.Uint32(in[pos:])
		if chunk == lz4LegacyMagic {
			pos += 4
			continue
		}
		if chunk == 0 {
			break
		}
		pos += 4
		if uint64(chunk) > uint64(len(in)-pos) {
			return nil, formatErr("lz4 stream", uint64(pos-4), "chunk of %d bytes runs past the %d-byte input (data corrupted)", chunk, len(in))
		}
		src := in[pos : pos+int(chunk)]
		room := min(lz4ChunkSize, lz4MaxRatio*len(src)+64)
		if len(out)+room > MaxKernelSize {
			return nil, formatErr("lz4 stream", uint64(pos), "output exceeds %d bytes", MaxKernelSize)
		}
		out = growTo(out, len(out)+room)
		n, err := lz4.UncompressBlock(src, out[len(out):len(out)+room])
		if err != nil {
			return nil, formatErr("lz4 stream", uint64(pos), "decoding chunk: %v", err)
		}
		out = out[:len(out)+n]
		pos += int(chunk)
	}
	return out, nil
}

// growTo makes cap(b) at least n, keeping len(b).
func growTo(b []byte, n int) []byte {
	if cap(b) >= n {
		return b
	}
	nb := make([]byte, len(b), max(n, 2*cap(b)))
	copy(nb, b)
	return nb
}
