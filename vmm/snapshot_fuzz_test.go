package vmm

import (
	"encoding/json"
	"errors"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// writeCrafted writes a snapshot file as a crafter would: any header
// fields, resealed, with state at stateOff, fileSize bytes in all.
func writeCrafted(t *testing.T, h snapHeader, state []byte, fileSize int64) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "crafted.snap")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	copy(h.Magic[:], snapshotMagic)
	h.StateCRC = crc32.Checksum(state, castagnoli)
	h.FileSize = uint64(fileSize)
	h.seal()
	if err := f.Truncate(fileSize); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(h.bytes(), 0); err != nil {
		t.Fatal(err)
	}
	if h.StateOff < uint64(fileSize) {
		if _, err := f.WriteAt(state[:min(uint64(len(state)), uint64(fileSize)-h.StateOff)], int64(h.StateOff)); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// sparseFile is a file of size bytes that holds data at off and zeros
// elsewhere, in memory (a fuzzer writing files runs at disk speed).
type sparseFile struct {
	data []byte
	off  int64
	size int64
}

func (f *sparseFile) ReadAt(p []byte, at int64) (int, error) {
	if at >= f.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), f.size-at))
	clear(p[:n])
	for i := range n {
		if j := at + int64(i) - f.off; j >= 0 && j < int64(len(f.data)) {
			p[i] = f.data[j]
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// FuzzSnapshotHeader: a header with any offsets and lengths (its
// checksums right, as a crafter would make them) is refused or read, and
// never panics or allocates what it claims.
func FuzzSnapshotHeader(f *testing.F) {
	state, err := json.Marshal(testState(64 << 20))
	if err != nil {
		f.Fatal(err)
	}
	const ram = snapRAMAlign
	f.Add(uint64(snapHeaderSize), uint64(len(state)), uint64(ram), uint64(0), int64(ram), state)
	f.Add(uint64(1<<63), uint64(1<<63), uint64(ram), uint64(0), int64(ram), state)
	f.Add(^uint64(0xfff), uint64(0x2000), uint64(ram), uint64(0), int64(ram), state)
	f.Add(uint64(snapHeaderSize), uint64(len(state)), ^uint64(0), uint64(0x1001), int64(ram), state)
	f.Fuzz(func(t *testing.T, stateOff, stateLen, memOff, memLen uint64, size int64, state []byte) {
		size = max(size, 0)
		h := snapHeader{Version: SnapshotVersion, StateOff: stateOff, StateLen: stateLen, MemOff: memOff, MemLen: memLen,
			StateCRC: crc32.Checksum(state, castagnoli), FileSize: uint64(size)}
		copy(h.Magic[:], snapshotMagic)
		h.seal()
		hb := make([]byte, snapHeaderSize)
		copy(hb, h.bytes())
		file := &sparseFile{data: state, off: int64(stateOff), size: size}
		if int64(stateOff) < snapHeaderSize { // the header wins where they overlap
			file.data, file.off = nil, 0
		}
		got, st, err := parseSnapshotHeader(headerFirst{hb, file}, size, "crafted")
		if err != nil {
			if !errors.Is(err, ErrBadSnapshot) {
				t.Fatalf("refused without ErrBadSnapshot: %v", err)
			}
			return
		}
		if st == nil || got.checkSections() != nil {
			t.Fatalf("accepted %+v", got)
		}
	})
}

// headerFirst reads hdr over the first bytes of rest.
type headerFirst struct {
	hdr  []byte
	rest io.ReaderAt
}

func (h headerFirst) ReadAt(p []byte, at int64) (int, error) {
	n, err := h.rest.ReadAt(p, at)
	for i := range n {
		if j := at + int64(i); j < int64(len(h.hdr)) {
			p[i] = h.hdr[j]
		}
	}
	return n, err
}

// FuzzRestore: any state in a well-formed file goes through Restore up to
// its first KVM call (openSnapshot) without a panic, and what it accepts
// is what the KVM calls can take (snapshotState.check).
func FuzzRestore(f *testing.F) {
	for _, st := range []*snapshotState{testState(64 << 20), testState(128 << 20)} {
		b, err := json.Marshal(st)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"MemSize":67108864,"CPUs":[{}],"IRQChips":[null,null,null]}`))
	f.Fuzz(func(t *testing.T, state []byte) {
		var probe struct{ MemSize uint64 }
		if json.Unmarshal(state, &probe) != nil || probe.MemSize%pageSize != 0 || probe.MemSize > 256<<20 {
			t.Skip("RAM up to 256 MiB in whole pages, so that the file can be laid out")
		}
		h := snapHeader{Version: SnapshotVersion, StateOff: snapHeaderSize, StateLen: uint64(len(state)),
			MemOff: snapRAMAlign, MemLen: probe.MemSize}
		if len(state) > snapRAMAlign-snapHeaderSize {
			t.Skip("the state fits before RAM")
		}
		h.MemCRC = crc32.Checksum(make([]byte, probe.MemSize), castagnoli)
		path := writeCrafted(t, h, state, int64(snapRAMAlign+probe.MemSize))
		cfg, st, ram, err := openSnapshot(RestoreConfig{Path: path, DevKVM: "/nonexistent"})
		if err != nil {
			if !errors.Is(err, ErrBadSnapshot) {
				t.Fatalf("refused without ErrBadSnapshot: %v", err)
			}
			return
		}
		defer unix.Munmap(ram)
		if uint64(len(ram)) != cfg.MemSize || len(st.CPUs) != cfg.CPUs || st.check() != nil || cfg.check() != nil {
			t.Fatalf("accepted an inconsistent snapshot: %d bytes of RAM, %+v", len(ram), cfg)
		}
	})
}
