// Package control is a live session's control socket, the protocol
// that `hvprobe ctl` and scripts speak to a running hvprobe.
package control

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hvprobe/hvprobe/session"

	"github.com/hvprobe/hvprobe/analysis"

	"github.com/hvprobe/hvprobe/probedef"
	"golang.org/x/sys/unix"
)

// Control is the live-session control socket: a unix socket, in a
// directory only the owner can enter, taking one command per line:
//
//	add <kprobe_events line>   arm a probe (p:, r:, j:); events start
//	remove <event>             disarm it ("-:<event>" works too)
//	list                       one line per armed probe definition
//	stats                      hits / nmissed per probe, engine totals
//	pause | resume             stop / restart event output (probes stay)
//	filter <event> <expr>      pass only the hits matching an ftrace filter
//	unfilter <event>           drop the event's filters
//	hist <event> <hist:spec>   count the event's hits into an ftrace hist
//	hist [<event>] [json]      print the event's (or every) hist table
//	unhist <event>             drop the event's hists: print its hits again
//
// Each reply is zero or more lines, then a line "ok" or "error"; after
// "error" the lines before it are the error message. Adding
// or removing a probe stops no vCPU: arming writes single bytes.
type Control struct {
	s      *session.Session
	an     *analysis.Set
	emit   func(probedef.Event)
	paused atomic.Bool
	ln     net.Listener
	dir    string

	mu     sync.Mutex
	probes map[string]*liveProbe

	// connMu guards conns and closed; serving counts Serve and the
	// connection goroutines, which Close waits for.
	connMu  sync.Mutex
	conns   map[net.Conn]bool
	closed  bool
	serving sync.WaitGroup
}

type liveProbe struct {
	def *probedef.Def
	dp  *session.DefProbes
}

// Listen creates s's control socket in a new private directory
// (MkdirTemp makes it 0700) under parent (os.TempDir() when empty). Events of probes added through
// it pass an's filters and hists (a new analysis.Set when nil), then go to
// emit unless paused.
func Listen(s *session.Session, parent string, emit func(probedef.Event), an *analysis.Set) (*Control, error) {
	if an == nil {
		an = analysis.NewSet(nil)
	}
	dir, err := os.MkdirTemp(parent, "hvprobe-")
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "control.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		os.RemoveAll(dir)
		return nil, err
	}
	c := &Control{s: s, an: an, emit: an.Wrap(emit), ln: ln, dir: dir, probes: map[string]*liveProbe{}, conns: map[net.Conn]bool{}}
	s.CloseWith(c)
	return c, nil
}

// Path is the socket's path.
func (c *Control) Path() string { return c.ln.Addr().String() }

// Serve answers connections until ctx ends or Close.
func (c *Control) Serve(ctx context.Context) error {
	if !c.track(nil) {
		return nil
	}
	defer c.serving.Done()
	stop := context.AfterFunc(ctx, func() { c.ln.Close() })
	defer stop()
	var backoff time.Duration
	for {
		conn, err := c.ln.Accept()
		if err != nil {
			switch {
			case errors.Is(err, net.ErrClosed):
				return nil
			case acceptTransient(err):
				// Out of fds or memory for now: wait, as net/http does,
				// rather than end the socket for good.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(backoff):
				}
				continue
			}
			return fmt.Errorf("control socket %s: %w", c.Path(), err)
		}
		backoff = 0
		if !c.track(conn) {
			conn.Close()
			return nil
		}
		go c.serveConn(conn)
	}
}

// acceptTransient says whether an Accept error may pass by itself.
func acceptTransient(err error) bool {
	for _, e := range []error{unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM, unix.ECONNABORTED} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// track counts a goroutine (and its connection) for Close; false once
// closed.
func (c *Control) track(conn net.Conn) bool {
	c.connMu.Lock()
	defer c.connMu.Unlock()
	if c.closed {
		return false
	}
	c.serving.Add(1)
	if conn != nil {
		c.conns[conn] = true
	}
	return true
}

// Close stops serving: the listener and every open connection are closed
// and their goroutines joined (no command runs afterwards); then the
// socket and its directory are removed. Session.Close calls it.
func (c *Control) Close() error {
	c.connMu.Lock()
	if c.closed {
		c.connMu.Unlock()
		return nil
	}
	c.closed = true
	c.ln.Close()
	for conn := range c.conns {
		conn.Close()
	}
	c.connMu.Unlock()
	c.serving.Wait()
	return os.RemoveAll(c.dir)
}

func (c *Control) serveConn(conn net.Conn) {
	defer c.serving.Done()
	defer func() {
		c.connMu.Lock()
		delete(c.conns, conn)
		c.connMu.Unlock()
		conn.Close()
	}()
	sc := bufio.NewScanner(conn)
	w := bufio.NewWriter(conn)
	for sc.Scan() {
		lines, err := c.Do(sc.Text())
		status := "ok"
		if err != nil {
			lines, status = strings.Split(err.Error(), "\n"), "error"
		}
		for _, l := range lines {
			fmt.Fprintln(w, l)
		}
		fmt.Fprintln(w, status)
		if w.Flush() != nil {
			return
		}
	}
}

// Do runs one control command and returns its reply lines.
func (c *Control) Do(cmd string) ([]string, error) {
	verb, arg, _ := strings.Cut(strings.TrimSpace(cmd), " ")
	arg = strings.TrimSpace(arg)
	switch verb {
	case "add":
		return nil, c.add(arg)
	case "remove":
		return nil, c.remove(strings.TrimPrefix(arg, "-:"))
	case "list":
		return c.list(), nil
	case "stats":
		return c.stats()
	case "pause":
		c.paused.Store(true)
		return nil, nil
	case "resume":
		c.paused.Store(false)
		return nil, nil
	case "filter", "hist":
		event, rest, _ := strings.Cut(arg, " ")
		rest = strings.TrimSpace(rest)
		switch {
		case verb == "filter":
			return nil, c.an.AddFilter(event, rest)
		case strings.HasPrefix(rest, "hist:"):
			return nil, c.an.AddHist(event, rest)
		case event == "json":
			return c.an.Tables("", true)
		}
		return c.an.Tables(event, rest == "json")
	case "unfilter":
		return nil, c.an.ClearFilters(arg)
	case "unhist":
		return nil, c.an.RemoveHists(arg)
	}
	return nil, fmt.Errorf("unknown command %q (add, remove, list, stats, pause, resume, filter, unfilter, hist, unhist)", verb)
}

func (c *Control) add(line string) error {
	d, err := probedef.Parse(line)
	if err != nil {
		return err
	}
	if d.Kind == probedef.Delete {
		return c.remove(d.Event)
	}
	a, err := c.s.Attached()
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.probes[d.Event]; ok {
		return fmt.Errorf("event %q exists; remove it first", d.Event)
	}
	dp, err := c.s.AddDefs(a, []*probedef.Def{d}, func(ev probedef.Event) {
		if !c.paused.Load() {
			c.emit(ev)
		}
	})
	if err != nil {
		return err
	}
	c.probes[d.Event] = &liveProbe{def: d, dp: dp}
	c.an.Define(d)
	return nil
}

func (c *Control) remove(event string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.probes[event]
	if !ok {
		return fmt.Errorf("no event %q", event)
	}
	delete(c.probes, event)
	c.an.Forget(p.def)
	return p.dp.Remove()
}

func (c *Control) list() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, p := range c.probes {
		out = append(out, p.def.String())
	}
	sort.Strings(out)
	return out
}

func (c *Control) stats() ([]string, error) {
	a, err := c.s.Attached()
	if err != nil {
		return nil, err
	}
	st := a.Manager.Stats()
	var out []string
	for _, p := range st.Probes {
		out = append(out, fmt.Sprintf("%+v", p))
	}
	out = append(out, fmt.Sprintf("hits=%d exits-per-hit=%v emulated=%d boosted=%d stepped=%d returns=%d",
		st.Hits, st.ExitsPerHit, st.Emulated, st.Boosted, st.Stepped, st.Returns))
	// Watches, stealth and exit-less probes are not in the engine's int3
	// stats: their own counts.
	c.mu.Lock()
	var more []string
	for _, p := range c.probes {
		for _, l := range p.dp.Stats() {
			if strings.HasPrefix(l, "watch ") || strings.HasPrefix(l, "stealth ") || strings.HasPrefix(l, "exit-less ") {
				more = append(more, l)
			}
		}
	}
	c.mu.Unlock()
	sort.Strings(more)
	return append(out, more...), nil
}
