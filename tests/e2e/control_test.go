package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hvprobe/hvprobe/probedef"
	"github.com/hvprobe/hvprobe/session/control"
	"github.com/hvprobe/hvprobe/vmm"
)

// TestControlSocket: a live session adds a probe over the control socket,
// sees exactly the opens the workload makes, removes it, and the events
// stop while the guest goes on.
func TestControlSocket(t *testing.T) {
	g := miniGuest(t)
	var mu sync.Mutex
	var events []probedef.Event
	c, err := control.Listen(g.s, "", func(ev probedef.Event) {
		mu.Lock()
		events = append(events, ev)
		mu.Unlock()
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if fi, err := os.Stat(c.Path()); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %s: %v, mode %v; want 0600", c.Path(), err, fi.Mode())
	}
	cc := serveAndDial(t, c)
	ask := func(cmd string) ([]string, string) {
		lines, st, err := cc.ask(cmd)
		if err != nil {
			t.Fatalf("%q: %v", cmd, err)
		}
		return lines, st
	}
	if _, st := ask(`add p:live/open do_filp_open path=+0(+0(%si)):string`); st != "ok" {
		t.Fatalf("add: %s", st)
	}
	if msg, st := ask(`add p:bad do_filp_opn`); st != "error" || !strings.Contains(strings.Join(msg, "\n"), "did you mean do_filp_open") {
		t.Fatalf("adding an unknown symbol: %q %q, want an error with a suggestion", msg, st)
	}
	if l, _ := ask("list"); len(l) != 1 || !strings.Contains(l[0], "do_filp_open") {
		t.Fatalf("list: %q", l)
	}
	fr := report(t, g.run(t, "fileread:6"), "fileread")
	n := num(t, fr, "n")
	mu.Lock()
	seen := len(events)
	// The kernel opens files of its own now and then (seen once, right
	// after boot): only the workload's path is its ground truth.
	ours := 0
	for _, ev := range events {
		if ev.Values[0].Str == fr["path"] {
			ours++
		} else {
			t.Logf("an open not by the workload: %s", probedef.FormatTrace(ev))
		}
	}
	mu.Unlock()
	if int64(ours) != n {
		t.Fatalf("%d events for %s over the socket session, the workload opened it %d times", ours, fr["path"], n)
	}
	// A filter and a hist added live: calls:6 calls add(i, 1000+i), the
	// filter passes i >= 2, the hist counts those four, and no add event
	// is printed while the hist holds them.
	for _, cmd := range []string{`add p:live/add hvwl_target_add a=%di:s64`, `filter add a >= 2`, `hist add hist:keys=a:sort=a`} {
		if msg, st := ask(cmd); st != "ok" {
			t.Fatalf("%s: %q", cmd, msg)
		}
	}
	if msg, st := ask(`filter add nosuch == 1`); st != "error" || !strings.Contains(strings.Join(msg, "\n"), `field "nosuch" not found`) {
		t.Fatalf("a bad filter: %q %s", msg, st)
	}
	g.run(t, "calls:6")
	table, st := ask("hist add")
	if all := strings.Join(table, "\n"); st != "ok" || !strings.Contains(all, "Hits: 4") || !strings.Contains(all, "{ a:          2 } hitcount:          1") || strings.Contains(all, "{ a:          1 }") {
		t.Fatalf("hist add: %s\n%s", st, all)
	}
	mu.Lock()
	for _, ev := range events {
		if ev.Def.Event == "add" {
			t.Errorf("an add event printed while its hist counts it: %s", probedef.FormatTrace(ev))
		}
	}
	mu.Unlock()
	for _, cmd := range []string{"unhist add", "remove add"} {
		if msg, st := ask(cmd); st != "ok" {
			t.Fatalf("%s: %q", cmd, msg)
		}
	}
	mu.Lock()
	seen = len(events)
	mu.Unlock()
	if _, st := ask("remove open"); st != "ok" {
		t.Fatalf("remove: %s", st)
	}
	g.run(t, "fileread:4")
	mu.Lock()
	defer mu.Unlock()
	if len(events) != seen {
		t.Fatalf("%d events after remove", len(events)-seen)
	}
	if l, st := ask("stats"); st != "ok" || len(l) == 0 {
		t.Fatalf("stats: %q %s", l, st)
	}
}

// TestControlCloseUnderLoad: the session is closed while the guest runs a
// workload under a probe added over the control socket, a connection keeps
// asking for stats, and an inspect-like goroutine reads registers and the
// task list: no crash (-race), the connection is closed, and guest memory
// and vCPU requests then fail with vmm.ErrClosed.
func TestControlCloseUnderLoad(t *testing.T) {
	miniGuest(t) // makes sure the cached snapshot exists
	path, err := snapshotPath(1)
	if err != nil {
		t.Fatal(err)
	}
	g, err := restoreMini(path, 1, "close")
	if err != nil {
		t.Fatal(err)
	}
	var hits atomic.Int64
	c, err := control.Listen(g.s, "", func(probedef.Event) { hits.Add(1) }, nil)
	if err != nil {
		t.Fatal(err)
	}
	cc := serveAndDial(t, c)
	ask := func(cmd string) (string, error) {
		_, st, err := cc.ask(cmd)
		return st, err
	}
	if st, err := ask(`add p:close/open do_filp_open path=+0(+0(%si)):string`); st != "ok" {
		t.Fatalf("add: %s %v", st, err)
	}
	go g.box.Scenario(t.Context(), "fileread:1000000")

	var wg sync.WaitGroup
	var inspectErr, connErr error
	wg.Add(2)
	go func() { // --inspect
		defer wg.Done()
		for {
			if _, inspectErr = g.s.Inspect(); inspectErr != nil {
				return
			}
		}
	}()
	go func() { // a control client
		defer wg.Done()
		for {
			if _, connErr = ask("stats"); connErr != nil {
				return
			}
		}
	}()
	deadline := time.Now().Add(2 * time.Minute)
	for hits.Load() < 20 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if hits.Load() == 0 {
		t.Fatal("the probe never fired")
	}
	if err := g.s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	r := <-g.ended
	wg.Wait()
	if r.Reason != vmm.StopRequested {
		t.Errorf("Run ended with %v (%v), want stopped by request", r.Reason, r.Err)
	}
	if !errors.Is(inspectErr, vmm.ErrClosed) {
		t.Errorf("inspect after Close: %v, want vmm.ErrClosed", inspectErr)
	}
	if connErr == nil {
		t.Error("the control connection stayed open after Close")
	}
	var b [8]byte
	if err := g.a.Kernel.ReadVirt(g.a.Slots.VA, b[:]); !errors.Is(err, vmm.ErrClosed) {
		t.Errorf("ReadVirt after Close: %v, want vmm.ErrClosed", err)
	}
	if err := g.s.VM.Do(0, func(vmm.CPU) error { return nil }); !errors.Is(err, vmm.ErrClosed) {
		t.Errorf("Do after Close: %v, want vmm.ErrClosed", err)
	}
}

// ctlConn is a client of a control socket.
type ctlConn struct {
	conn net.Conn
	sc   *bufio.Scanner
}

// serveAndDial serves c until the test ends and connects to it.
func serveAndDial(t *testing.T, c *control.Control) *ctlConn {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go c.Serve(ctx)
	conn, err := net.Dial("unix", c.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &ctlConn{conn: conn, sc: bufio.NewScanner(conn)}
}

// ask sends one command and returns its reply lines and status ("ok" or
// "error"); io.EOF when the connection closed first.
func (cc *ctlConn) ask(cmd string) ([]string, string, error) {
	if _, err := fmt.Fprintln(cc.conn, cmd); err != nil {
		return nil, "", err
	}
	var lines []string
	for cc.sc.Scan() {
		l := cc.sc.Text()
		if l == "ok" || l == "error" {
			return lines, l, nil
		}
		lines = append(lines, l)
	}
	return lines, "", io.EOF
}
