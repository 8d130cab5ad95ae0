package runner

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
		{"timeout", vmm.Result{Reason: vmm.StopRequested}, expired, nil, 124},
		{"interrupted", vmm.Result{Reason: vmm.StopRequested}, bg, nil, 130},
		{"vmm error", vmm.Result{Reason: vmm.StopError, Err: errors.New("boom")}, bg, nil, 1},
	} {
		if got := Code(endOf(c.res, c.ctx, c.lines)); got != c.want {
			t.Errorf("%s: exit %d, want %d", c.name, got, c.want)
		}
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

// TestFastDefs: --fast marks the p: and r: lines only.
func TestFastDefs(t *testing.T) {
	var defs []*probedef.Def
	for _, l := range []string{"p:a vfs_read", "r:b vfs_read", "w:c w@jiffies:8"} {
		d, err := probedef.Parse(l)
		if err != nil {
			t.Fatal(err)
		}
		defs = append(defs, d)
	}
	fastDefs(defs)
	if !defs[0].Fast || !defs[1].Fast || defs[2].Fast {
		t.Fatalf("Fast on p/r/w: %v %v %v, want the p and r lines", defs[0].Fast, defs[1].Fast, defs[2].Fast)
	}
}

// A progress line is rewritten in place and wiped before any other line
// and at the end, so it never mixes into the lines.
func TestPrinterProgress(t *testing.T) {
	var out strings.Builder
	p := newPrinter(&out)
	p.progress("hvprobe: 1s")
	p.printf("line")
	p.progress("hvprobe: 2s")
	p.progress("hvprobe: 3s")
	p.close()
	want := "hvprobe: 1s\r\x1b[Kline\nhvprobe: 2s\r\x1b[Khvprobe: 3s\r\x1b[K"
	if out.String() != want {
		t.Fatalf("%q, want %q", out.String(), want)
	}
}
