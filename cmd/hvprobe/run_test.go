package main

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hvprobe/hvprobe/probedef"
	"github.com/hvprobe/hvprobe/session"
	"github.com/hvprobe/hvprobe/vmm"
)

func TestEndOf(t *testing.T) {
	clean := []session.Line{{Text: "[ 13.2] reboot: Restarting system"}}
	bg := context.Background()
	code := func(err error) int {
		var ec exitCoder
		if err == nil {
			return 0
		}
		if errors.As(err, &ec) {
			return ec.ExitCode()
		}
		return 1
	}
	expired, cancel := context.WithTimeout(bg, 0)
	defer cancel()
	<-expired.Done()
	for _, c := range []struct {
		name  string
		res   vmm.Result
		ctx   context.Context
		lines []session.Line
		want  int
	}{
		{"clean reset", vmm.Result{Reason: vmm.StopReset}, bg, clean, 0},
		{"silent reset", vmm.Result{Reason: vmm.StopReset}, bg, nil, 5},
		{"panic", vmm.Result{Reason: vmm.StopReset, Panicked: true}, bg, clean, 3},
		{"timeout", vmm.Result{Reason: vmm.StopRequested}, expired, nil, 4},
		{"vmm error", vmm.Result{Reason: vmm.StopError, Err: errors.New("boom")}, bg, nil, 1},
	} {
		if got := code(endOf(c.res, c.ctx, c.lines)); got != c.want {
			t.Errorf("%s: exit %d, want %d", c.name, got, c.want)
		}
	}
}

func TestParseSizeAndSymOff(t *testing.T) {
	if n, err := parseSize("512M"); err != nil || n != 512<<20 {
		t.Errorf("512M: %d %v", n, err)
	}
	if n, err := parseSize("1G"); err != nil || n != 1<<30 {
		t.Errorf("1G: %d %v", n, err)
	}
	if _, err := parseSize("lots"); err == nil {
		t.Error("bad size accepted")
	}
	if _, err := parseSize("12Q"); err == nil {
		t.Error("12Q accepted")
	}
	var ps probeSet
	if err := ps.addKprobe("vfs_read+0x10", nil); err != nil || ps.probes[0].Kprobe.Symbol != "vfs_read" || ps.probes[0].Kprobe.Offset != 0x10 {
		t.Errorf("vfs_read+0x10: %v %+v", err, ps.probes)
	}
	if err := ps.addKprobe("dup:2+4", nil); err != nil || ps.probes[1].Kprobe.Symbol != "dup:2" {
		t.Errorf("dup:2+4: %v", err)
	}
	for _, bad := range []string{"+4", "f+zz", "0xffffffff81000000"} {
		if err := ps.addKprobe(bad, nil); err == nil {
			t.Errorf("--kprobe %q accepted", bad)
		}
	}
	if err := ps.addKretprobe("dup:2:16", nil); err != nil || ps.probes[2].Kretprobe.Symbol != "dup:2" || ps.probes[2].Kretprobe.MaxActive != 16 {
		t.Errorf("dup:2:16: %v", err)
	}
}

func TestEventCounter(t *testing.T) {
	d, err := probedef.Parse(`p:hv/open do_filp_open path=+0(+0(%si)):string`)
	if err != nil {
		t.Fatal(err)
	}
	c := &eventCounter{n: map[string]uint64{}}
	ev := func(path string) probedef.Event {
		return probedef.Event{Def: d, Comm: "x", Where: "do_filp_open+0x0/0x93",
			Values: []probedef.Value{{Name: "path", Type: probedef.Type{Base: probedef.String}, Str: path}}}
	}
	for _, p := range []string{"/a", "/b", "/a"} {
		c.add(ev(p))
	}
	if c.n[`open: path="/a"`] != 2 || c.n[`open: path="/b"`] != 1 || len(c.n) != 2 {
		t.Fatalf("counts %v", c.n)
	}
}

// Snapshot and restore flags that cannot go together are refused before
// anything is opened or booted.
func TestRunSnapshotFlagConflicts(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--snapshot-at", "HVWL: ready"}, "--snapshot-at and --snapshot-out go together"},
		{[]string{"--snapshot-out", "x.snap"}, "--snapshot-at and --snapshot-out go together"},
		{[]string{"--snapshot-at", "m", "--snapshot-out", "x.snap", "--kprobe", "f"}, "a snapshot holds no probes"},
		{[]string{"--restore", "x.snap", "--mem", "1G"}, "--restore: --mem is the snapshot's own"},
		{[]string{"--restore", "x.snap", "--cmdline-append", "quiet"}, "--restore: --cmdline-append is the snapshot's own"},
	} {
		err := cmdRun(c.args)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("run %q: %v, want %q", c.args, err, c.want)
		}
	}
}

// stallWriter blocks every Write until released, as a stuck terminal does.
type stallWriter struct {
	release chan struct{}
	mu      sync.Mutex
	out     strings.Builder
}

func (w *stallWriter) Write(p []byte) (int, error) {
	<-w.release
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.out.Write(p)
}

// TestPrinterNeverBlocks: with the output stuck and the queue full, printf
// drops and counts instead of waiting; a print after close is dropped too
// (no send on a closed channel), and close reports the count.
func TestPrinterNeverBlocks(t *testing.T) {
	w := &stallWriter{release: make(chan struct{})}
	p := newPrinter(w)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 70000 {
			p.printf("line %d with some text to fill the writer's buffer", i)
		}
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("printf blocked on a full queue")
	}
	close(w.release)
	p.close()
	p.printf("late")
	p.close()
	w.mu.Lock()
	defer w.mu.Unlock()
	if !strings.Contains(w.out.String(), "event lines dropped") {
		t.Fatalf("no drop report at close; output ends %q", w.out.String()[max(0, w.out.Len()-200):])
	}
}

// TestFastDefs: --fast marks the p: lines only, and refuses before boot
// what no guest could change: --stealth beside it, a bad ring size.
func TestFastDefs(t *testing.T) {
	parse := func() []*probedef.Def {
		var defs []*probedef.Def
		for _, l := range []string{"p:a vfs_read", "r:b vfs_read", "w:c w@jiffies:8"} {
			d, err := probedef.Parse(l)
			if err != nil {
				t.Fatal(err)
			}
			defs = append(defs, d)
		}
		return defs
	}
	defs := parse()
	if bad := fastDefs(defs, false, 512); len(bad) != 0 {
		t.Fatalf("refused: %v", bad)
	}
	if !defs[0].Fast || !defs[1].Fast || defs[2].Fast {
		t.Fatalf("Fast on p/r/w: %v %v %v, want the p and r lines", defs[0].Fast, defs[1].Fast, defs[2].Fast)
	}
	for _, c := range []struct {
		stealth bool
		records int
		want    string
	}{
		{true, 512, "--stealth"},
		{false, 0, "--fast-records 0"},
		{false, 300, "--fast-records 300"},
		{false, 1 << 17, "power of two"},
	} {
		bad := fastDefs(parse(), c.stealth, c.records)
		if len(bad) != 1 || !strings.Contains(bad[0], c.want) {
			t.Errorf("stealth=%v records=%d: %q, want one refusal naming %q", c.stealth, c.records, bad, c.want)
		}
	}
}
