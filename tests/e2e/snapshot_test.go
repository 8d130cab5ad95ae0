package e2e

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hvprobe/hvprobe/bench"
	"github.com/hvprobe/hvprobe/kprobes"
	"github.com/hvprobe/hvprobe/session"
	"github.com/hvprobe/hvprobe/tests/kvmtest"
	"github.com/hvprobe/hvprobe/vmm"
)

// snapScenarios: each restore runs one, with a kprobe on the function the
// scenario calls; n is the report field that counts those calls.
var snapScenarios = []struct {
	cmd, report, target, n string
}{
	{"calls:7", "calls", "hvwl_target_add", "n"},
	{"args8:3", "args8", "hvwl_target_args8", "n"},
	{"str:4", "str", "hvwl_target_str", "n"},
	{"ret:6", "ret", "hvwl_target_ret", "n"},
	{"recurse:9", "recurse", "hvwl_recurse", "calls"},
}

// TestSnapshotRestoreScenarios: one cold boot to the serving workload, one
// snapshot, then five restores in a row from that file, each running a
// different scenario with a probe armed after the restore. Each restore
// must print exactly the result line a cold boot prints for the same
// scenario (a second cold boot runs all five from the command line), and
// the probe must count exactly the calls the guest reports.
func TestSnapshotRestoreScenarios(t *testing.T) {
	kvmtest.RequireKVM(t)
	var cmds []string
	for _, sc := range snapScenarios {
		cmds = append(cmds, sc.cmd)
	}
	truth := coldResults(t, strings.Join(cmds, ","))

	cold, err := coldBootMini(1, "hvprobe_wl=serve", "snapshot-cold")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "mini.snap")
	t0 := time.Now()
	info, err := cold.s.Snapshot(path)
	took := time.Since(t0)
	cold.stop()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cold boot to \"HVWL: ready\": %.2fs; snapshot written in %.3fs: %d MiB file, %d MiB on disk",
		cold.booted.Seconds(), took.Seconds(), info.FileSize>>20, info.DiskBytes>>20)

	written := fileSum(t, path)
	defer func() {
		if fileSum(t, path) != written {
			t.Errorf("restores wrote to the snapshot file %s", path)
		}
	}()
	for i, sc := range snapScenarios {
		t0 := time.Now()
		g, err := restoreMini(path, 1, fmt.Sprintf("restore%d", i+1))
		if err != nil {
			t.Fatalf("restore %d: %v", i+1, err)
		}
		restored := time.Since(t0)
		var hits atomic.Int64
		p := &kprobes.Kprobe{Symbol: sc.target, PreHandler: func(*kprobes.Context) bool {
			hits.Add(1)
			return false
		}}
		before := g.text(t)
		mgr := g.a.Manager
		defer func() {
			if t.Failed() {
				t.Logf("restore %d engine: %+v, last error %v", i+1, mgr.Stats(), mgr.Err())
			}
		}()
		register(t, g.a.Manager, p)
		out := g.run(t, sc.cmd)
		responded := time.Since(t0)
		unregister(t, g.a.Manager, p)
		after := g.text(t)
		g.stop()

		r, err := bench.FindReport(out, sc.report)
		if err != nil {
			t.Fatal(err)
		}
		want := truth[sc.report]
		got := "HVWL: " + lineOf(out, sc.report)
		if got != want {
			t.Errorf("restore %d, %s: printed %q, a cold boot prints %q", i+1, sc.cmd, got, want)
		}
		n, err := r.Int(sc.n)
		if err != nil {
			t.Fatal(err)
		}
		if hits.Load() != n {
			t.Errorf("restore %d, %s: kprobe on %s hit %d times, the guest made %d calls", i+1, sc.cmd, sc.target, hits.Load(), n)
		}
		if string(before) != string(after) {
			t.Errorf("restore %d: kernel text differs after the probe was removed", i+1)
		}
		t.Logf("restore %d: %s in %.3fs, first scenario done %.3fs after the restore began (cold boot ÷ restore = %.0f×); %s, %d hits",
			i+1, path, restored.Seconds(), responded.Seconds(), cold.booted.Seconds()/restored.Seconds(), got, hits.Load())
	}
}

// fileSum is the SHA-256 of a file's bytes.
func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

// coldResults boots the mini guest once with cmds on its command line and
// returns its result lines by report name.
func coldResults(t *testing.T, cmds string) map[string]string {
	t.Helper()
	kernel, sysmap, initrd := miniPaths()
	console, err := consoleLog("hvprobe-e2e-console-cold-scenarios.log")
	if err != nil {
		t.Fatal(err)
	}
	defer console.Close()
	s, err := session.New(session.Options{
		Kernel: kernel, SystemMap: sysmap, Initrd: initrd,
		CmdlineAppend: "hvprobe_wl=" + cmds + ",poweroff", Console: console,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	if r := s.Run(ctx); r.Reason != vmm.StopReset {
		t.Fatalf("cold boot with %s ended %v (%v): %s", cmds, r.Reason, r.Err, strings.Join(r.Tail, "\n"))
	}
	var lines []string
	for _, l := range s.Lines() {
		if i := strings.Index(l.Text, "HVWL: "); i >= 0 {
			lines = append(lines, l.Text[i:])
		}
	}
	truth := map[string]string{}
	for _, sc := range snapScenarios {
		truth[sc.report] = "HVWL: " + lineOf(lines, sc.report)
	}
	return truth
}

// lineOf returns the text after "HVWL: " of the first report named what.
func lineOf(lines []string, what string) string {
	for _, l := range lines {
		if r, ok := bench.ParseReport(l); ok && r.What == what {
			return strings.TrimPrefix(l, "HVWL: ")
		}
	}
	return fmt.Sprintf("(no %s report)", what)
}

// TestSnapshotRefusals: a snapshot is refused, before any VM exists, for
// another kernel or System.map and for a truncated or corrupted file (the
// format version is checked in vmm's unit tests); taking one is refused
// while probes are registered.
func TestSnapshotRefusals(t *testing.T) {
	g := miniGuest(t)
	path, err := snapshotPath(1)
	if err != nil {
		t.Fatal(err)
	}
	kernel, sysmap, _ := miniPaths()
	stock := filepath.Join(imagesDir(), "stock")
	for _, c := range []struct{ kernel, sysmap, want string }{
		{filepath.Join(stock, "vmlinuz"), sysmap, "was taken with kernel"},
		{kernel, filepath.Join(stock, "System.map"), "was taken with System.map"},
	} {
		if _, err := os.Stat(c.kernel); err != nil {
			t.Fatalf("stock kernel not fetched (make images-stock): %v", err)
		}
		_, err := session.Restore(session.Options{Kernel: c.kernel, SystemMap: c.sysmap}, path)
		if !errors.Is(err, session.ErrSnapshotMismatch) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("restoring %s with %s, %s: %v; want %q", path, c.kernel, c.sysmap, err, c.want)
		}
	}

	// Each damage is done to the shared snapshot in place and undone at
	// once: a copy of its RAM (hundreds of MiB, not sparse once read)
	// would be held in memory, which the nested KVM's L1 lacks.
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	size := fi.Size()
	for _, c := range []struct {
		name string
		at   int64 // the damaged bytes
		n    int
		edit func(f *os.File, orig []byte) error
		want string
	}{
		{"truncated", size - 4096, 4096, func(f *os.File, _ []byte) error { return f.Truncate(size - 4096) }, "truncated"},
		{"state byte flipped", 4096 + 10, 1, func(f *os.File, o []byte) error { _, err := f.WriteAt([]byte{o[0] ^ 1}, 4096+10); return err }, "state checksum"},
		{"RAM byte flipped", size - 1, 1, func(f *os.File, o []byte) error { _, err := f.WriteAt([]byte{o[0] ^ 0x80}, size-1); return err }, "RAM checksum"},
	} {
		err := damaged(t, path, c.at, c.n, c.edit, func() error {
			_, err := session.Restore(session.Options{Kernel: kernel, SystemMap: sysmap}, path)
			return err
		})
		if !errors.Is(err, vmm.ErrBadSnapshot) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want an ErrBadSnapshot saying %q", c.name, err, c.want)
		}
	}

	dir := t.TempDir()
	p := &kprobes.Kprobe{Symbol: "hvwl_target_add"}
	register(t, g.a.Manager, p)
	_, err = g.s.Snapshot(filepath.Join(dir, "busy.snap"))
	unregister(t, g.a.Manager, p)
	if !errors.Is(err, kprobes.ErrBusy) {
		t.Errorf("snapshot with a probe registered: %v; want kprobes.ErrBusy", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "busy.snap")); err == nil {
		t.Errorf("a refused snapshot left a file behind")
	}
}

// damaged runs try with path's n bytes at at damaged by edit (given
// their original), and puts them back whatever happens.
func damaged(t *testing.T, path string, at int64, n int, edit func(*os.File, []byte) error, try func() error) error {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	orig := make([]byte, n)
	if _, err := f.ReadAt(orig, at); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if _, err := f.WriteAt(orig, at); err != nil {
			t.Fatalf("restoring the snapshot's bytes at %#x: %v", at, err)
		}
	}()
	if err := edit(f, orig); err != nil {
		t.Fatal(err)
	}
	return try()
}
