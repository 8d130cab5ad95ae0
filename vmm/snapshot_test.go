package vmm

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"
)

// writeTestSnapshot writes a snapshot of a 64 MiB guest whose RAM is zero
// but for a few pages, and returns its path and bytes.
func writeTestSnapshot(t *testing.T) (string, []byte) {
	t.Helper()
	ram := make([]byte, 64<<20)
	copy(ram[0x1000:], "page one")
	copy(ram[len(ram)-5:], "last!")
	st := testState(uint64(len(ram)))
	path := filepath.Join(t.TempDir(), "t.snap")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := writeSnapshot(f, st, ram); err != nil {
		t.Fatal(err)
	}
	f.Close()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, b
}

// testState is a well-formed state of a 1-vCPU guest of memSize bytes:
// every raw KVM struct of its mirror's size, all zero.
func testState(memSize uint64) *snapshotState {
	raw := func(n uintptr) []byte { return make([]byte, n) }
	cpu := vcpuState{Regs: raw(unsafe.Sizeof(Regs{})), Sregs: raw(unsafe.Sizeof(Sregs{})), FPU: raw(unsafe.Sizeof(FPU{})),
		LAPIC: raw(unsafe.Sizeof(LAPICState{})), Events: raw(unsafe.Sizeof(VCPUEvents{}))}
	chip := raw(unsafe.Sizeof(irqChip{}))
	return &snapshotState{MemSize: memSize, Reserved: 2 << 20, Cmdline: "console=ttyS0", CPUs: []vcpuState{cpu},
		IRQChips: [][]byte{chip, chip, chip}, PIT: raw(unsafe.Sizeof(pitState2{})), Meta: []byte(`{"who":"test"}`)}
}

func TestSnapshotFileRoundTrip(t *testing.T) {
	path, b := writeTestSnapshot(t)
	if len(b) != snapRAMAlign+64<<20 {
		t.Fatalf("file is %d bytes, want header+state padded to 2 MiB plus 64 MiB of RAM", len(b))
	}
	if got := string(b[snapRAMAlign+0x1000 : snapRAMAlign+0x1008]); got != "page one" {
		t.Fatalf("RAM page at +0x1000 reads %q", got)
	}
	meta, err := SnapshotMeta(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(meta) != `{"who":"test"}` {
		t.Fatalf("meta %s", meta)
	}
}

func TestSnapshotRefusesBadFiles(t *testing.T) {
	path, b := writeTestSnapshot(t)
	reseal := func(b []byte) {
		n := binary.Size(snapHeader{}) - 4
		binary.LittleEndian.PutUint32(b[n:], crc32.Checksum(b[:n], castagnoli))
	}
	cases := []struct {
		name string
		edit func([]byte) []byte
		want string
	}{
		{"empty", func(b []byte) []byte { return nil }, "too short"},
		{"not a snapshot", func(b []byte) []byte { copy(b, "ELF\x7f"); return b }, "not an hvprobe snapshot"},
		{"header corrupted", func(b []byte) []byte { b[20] ^= 1; return b }, "header checksum"},
		{"another version", func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[8:], SnapshotVersion+1)
			reseal(b)
			return b
		}, "format version 2; this hvprobe reads version 1"},
		{"truncated", func(b []byte) []byte { return b[:len(b)-1] }, "truncated"},
		{"state corrupted", func(b []byte) []byte { b[snapHeaderSize+3] ^= 1; return b }, "state checksum"},
		{"RAM corrupted", func(b []byte) []byte { b[len(b)-1] ^= 1; return b }, "RAM checksum"},
		{"state past RAM", func(b []byte) []byte { // StateOff+StateLen wraps
			binary.LittleEndian.PutUint64(b[24:], ^uint64(0xfff)) // 2^64-0x1000
			binary.LittleEndian.PutUint64(b[32:], 0x2000)
			reseal(b)
			return b
		}, "not between the header and RAM"},
		{"state too long", func(b []byte) []byte {
			binary.LittleEndian.PutUint64(b[32:], 1<<40)
			reseal(b)
			return b
		}, "a state of 1099511627776 bytes"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			bad := path + "." + strings.ReplaceAll(c.name, " ", "-")
			if err := os.WriteFile(bad, c.edit(append([]byte(nil), b...)), 0o600); err != nil {
				t.Fatal(err)
			}
			// Restore checks everything before it opens /dev/kvm.
			_, _, err := Restore(RestoreConfig{Path: bad, DevKVM: "/nonexistent"})
			if !errors.Is(err, ErrBadSnapshot) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want ErrBadSnapshot saying %q", err, c.want)
			}
			if !strings.Contains(err.Error(), bad) {
				t.Errorf("%v does not name the file", err)
			}
		})
	}
}
