package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hvprobe/hvprobe/analysis"
	"github.com/hvprobe/hvprobe/guest"
	"github.com/hvprobe/hvprobe/probedef"
	"github.com/hvprobe/hvprobe/session"
	"github.com/hvprobe/hvprobe/session/control"
	"github.com/hvprobe/hvprobe/vmm"
)

// run is one Run: what it opened, in the order it closes them.
type run struct {
	cfg     *Config
	events  *printer // events, hist tables and counts: stdout or --events
	status  *printer // hvprobe's own lines: stderr
	console io.Writer
	defs    []*probedef.Def
	an      *analysis.Set
	emit    func(probedef.Event) // through the filters and hists
	printed func(probedef.Event) // after them: the control socket's probes
	rec     *recorder            // --record
	kernel  *guest.Kernel
	closers []func()
}

func (r *run) onClose(f func()) { r.closers = append(r.closers, f) }

func (r *run) close() {
	for i := len(r.closers) - 1; i >= 0; i-- {
		r.closers[i]()
	}
}

// Run validates cfg, checks every probe against the kernel image, then
// boots the guest (unless cfg.DryRun) and prints events until it ends.
// Nothing is created or written before every check has passed. The
// error's ExitCode (Code) is the command's exit status.
func Run(cfg *Config) error {
	r := &run{cfg: cfg, status: newPrinter(os.Stderr)}
	r.onClose(r.status.close)
	defer r.close()
	if err := cfg.Validate(); err != nil {
		if cfg.kernelOK {
			r.check() // its refusals too, all at once
		}
		return err
	}
	if err := r.check(); err != nil || cfg.DryRun {
		return err
	}
	if err := r.openOutputs(); err != nil {
		return err
	}
	return r.boot()
}

// Check is `hvprobe check`: Run with DryRun.
func Check(cfg *Config) error {
	cfg.DryRun = true
	return Run(cfg)
}

// check parses the probe lines, filters and hists, opens the kernel and
// judges every probe against its image.
func (r *run) check() error {
	c := r.cfg
	defs, parseErr := readDefs(c.lines, c.ProbesFile)
	var se probedef.SyntaxErrors
	if parseErr != nil && !errors.As(parseErr, &se) {
		return refused("%v", parseErr) // the file could not be read
	}
	an, bad := newAnalysis(defs, c.Filters, c.Hists, true)
	r.an = an
	for _, d := range defs {
		d.Stack = d.Stack || c.Stacktrace
	}
	if c.Stealth {
		bad = append(bad, stealthDefs(defs)...)
	}
	if c.Fast {
		fastDefs(defs)
	}
	bad = append(bad, dataWatchHost(defs)...)
	cat, err := OpenCatalog(c.Kernel, c.SystemMap, c.BTF)
	if err != nil {
		return err
	}
	r.kernel = cat.k
	defs, globErr := cat.expand(defs, r.status)
	r.defs = defs
	parseErr = errors.Join(parseErr, globErr)
	if r.hasProbes() || len(bad) > 0 || parseErr != nil {
		return checkProbes(cat.k, cat.ik, defs, bad, parseErr, c.ProbesFile, c.DryRun, r.status)
	}
	return nil
}

// openOutputs opens the console, events and Perfetto files.
func (r *run) openOutputs() error {
	c := r.cfg
	r.console = io.Writer(os.Stderr)
	if c.Console != "" {
		w, closeW, err := outputTo(c.Console)
		if err != nil {
			return fmt.Errorf("--console: %w", err)
		}
		r.console = w
		r.onClose(func() { closeW() })
	}
	eventsTo, perfettoTo := c.Events, c.Perfetto
	if c.Format == "perfetto" {
		eventsTo, perfettoTo = "", c.Events
	}
	// With --format perfetto the events file is the trace: hist tables
	// and counts go to stderr.
	eventsW := io.Writer(os.Stderr)
	if eventsTo != "" {
		w, closeW, err := outputTo(eventsTo)
		if err != nil {
			return fmt.Errorf("--events: %w", err)
		}
		eventsW = w
		r.onClose(func() { closeW() })
	}
	r.events = newPrinter(eventsW)
	r.onClose(r.events.close)
	if c.Record != "" {
		w, closeW, err := outputTo(c.Record)
		if err != nil {
			return fmt.Errorf("--record: %w", err)
		}
		r.onClose(func() { closeW() })
		r.rec = newRecorder(w)
		r.onClose(r.rec.out.close)
		r.an.Tap(r.rec.add)
	}
	return r.outputs(perfettoTo)
}

func (r *run) hasProbes() bool { return len(r.defs) > 0 }

// outputs builds the event pipeline: format or count, Perfetto, then the
// filters and hists in front.
func (r *run) outputs(perfettoTo string) error {
	emit := eventPrinter(r.cfg.Format, r.events)
	if r.cfg.Count {
		counts := &eventCounter{n: map[string]uint64{}}
		emit = counts.add
		r.onClose(func() { counts.print(r.events) })
	}
	if perfettoTo != "" {
		w, closeW, err := outputTo(perfettoTo)
		if err != nil {
			return fmt.Errorf("--perfetto: %w", err)
		}
		r.onClose(func() { closeW() })
		out := newPrinter(w)
		r.onClose(out.close)
		pf := analysis.NewPerfetto(func(l string) { out.printf("%s", l) })
		r.onClose(func() { pf.Close() }) // after the guest has stopped
		toPrinter := emit
		emit = func(ev probedef.Event) {
			if err := pf.Add(ev); err != nil {
				r.status.printf("hvprobe: %v", err)
			}
			toPrinter(ev)
		}
	}
	r.printed = emit
	r.emit = r.an.Wrap(emit)
	r.onClose(func() { printHists(r.an, r.cfg.Format, r.events, r.status) })
	return nil
}

// boot creates the VM (or restores the snapshot), arms the probes at
// attach and runs the guest to its end.
func (r *run) boot() error {
	c := r.cfg
	var s *session.Session
	var failed atomic.Bool
	notify := func(n session.Notice) {
		r.status.printf("hvprobe: %s", n)
		if n.Kind == session.NoticeFailed && r.hasProbes() && !c.KeepGoing && failed.CompareAndSwap(false, true) {
			s.VM.Stop()
		}
	}
	s, err := r.open(notify)
	if err != nil {
		return err
	}
	defer func() {
		if n := s.VM.ConsoleDropped(); n > 0 {
			r.status.printf("hvprobe: console: %d bytes dropped", n)
		}
	}()
	defer s.Close()
	if err := s.FollowText(); err != nil && r.hasProbes() {
		r.status.printf("hvprobe: warning: %v: a probe whose text the guest rewrites is not re-checked", err)
	}
	dp := r.armAtAttach(s, notify)

	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt)
	defer cancel()
	if c.Timeout > 0 {
		var c2 context.CancelFunc
		ctx, c2 = context.WithTimeout(ctx, c.Timeout)
		defer c2()
	}
	// bgCtx ends the goroutines of background once the guest has stopped;
	// every one of them is joined before the session closes.
	bgCtx, stopBg := context.WithCancel(ctx)
	defer stopBg()
	var bg sync.WaitGroup
	defer bg.Wait()
	snapErr, err := r.background(bgCtx, ctx, s, notify, &bg)
	if err != nil {
		return err
	}
	res := s.Run(ctx)
	stopBg()
	bg.Wait()
	if e := snapErr.Load(); e != nil {
		return *e
	}
	if c.SnapshotAt != "" && res.Reason == vmm.StopRequested && ctx.Err() == nil {
		return nil // stopped after the snapshot, as asked
	}
	r.report(ctx, s, dp)
	if failed.Load() {
		return &ExitError{Code: ExitProbeFailed, Msg: "a probe could not be armed, so the guest was stopped (--keep-going carries on)"}
	}
	return endOf(res, ctx, s.Lines())
}

// open creates the session: a fresh boot or a restored snapshot.
func (r *run) open(notify func(session.Notice)) (*session.Session, error) {
	c := r.cfg
	opts := session.Options{Kernel: c.Kernel, SystemMap: c.SystemMap, Image: r.kernel, Host: c.host,
		Console: r.console, Notify: notify, FastRecords: c.FastRecords}
	if c.Restore == "" {
		opts.Initrd, opts.MemSize, opts.CPUs = c.Initrd, c.memSize, c.CPUs
		opts.CmdlineAppend, opts.NoKASLR = c.CmdlineAppend, c.NoKASLR
		opts.Disks = c.disks
		return session.New(opts)
	}
	t0 := time.Now()
	s, err := session.Restore(opts, c.Restore)
	if err == nil {
		r.status.printf("hvprobe: restored %s in %.3fs", c.Restore, time.Since(t0).Seconds())
	}
	return s, err
}

// armAtAttach arms the probe lines when the engine attaches; the result
// holds them once armed.
func (r *run) armAtAttach(s *session.Session, notify func(session.Notice)) *atomic.Pointer[session.DefProbes] {
	var dp atomic.Pointer[session.DefProbes]
	s.AtAttach(func(a *session.Attached) error {
		r.an.Symbolize(a.Kernel) // before any event reaches a hist
		if r.rec != nil {
			return r.rec.header(r.kernel.Image.Version, r.cfg.SystemMap, a.Kernel.Syms.Slide())
		}
		return nil
	})
	if !r.hasProbes() {
		return &dp
	}
	s.AtAttach(func(a *session.Attached) error {
		p, err := s.AddDefs(a, r.defs, r.emit)
		dp.Store(p)
		if r.rec != nil { // the events that had no hit yet, for report's filters
			for _, d := range r.defs {
				r.rec.define(d)
			}
		}
		if err != nil {
			for _, l := range refusals(err, r.cfg.ProbesFile) {
				r.status.printf("%s", l)
			}
			notify(session.Notice{Kind: session.NoticeFailed, Probe: "definitions", Err: errors.New("not all could be armed")})
		}
		return nil
	})
	return &dp
}

// background starts what runs beside the guest: the control socket,
// console input, boot reports, --inspect, --interval, --snapshot-at and
// --scenario. A --snapshot-at failure comes back through the pointer.
func (r *run) background(bgCtx, ctx context.Context, s *session.Session, notify func(session.Notice), bg *sync.WaitGroup) (*atomic.Pointer[error], error) {
	c := r.cfg
	goBg := func(f func()) {
		bg.Add(1)
		go func() {
			defer bg.Done()
			f()
		}()
	}
	var snapErr atomic.Pointer[error]
	if c.Control {
		ctl, err := control.Listen(s, "", r.printed, r.an) // closed, connections joined, by s.Close
		if err != nil {
			return nil, err
		}
		r.status.printf("hvprobe: control socket %s", ctl.Path())
		goBg(func() {
			if err := ctl.Serve(bgCtx); err != nil {
				notify(session.Notice{Kind: session.NoticeFailed, Probe: "control socket", Err: err})
			}
		})
	}
	if c.Interactive {
		// Not joined: it may block reading stdin forever. It touches only
		// ConsoleInput, a no-op once the VM is closed.
		go forwardInput(os.Stdin, s.VM.ConsoleInput)
	}
	l := s.VM.Layout()
	r.status.printf("hvprobe: kernel placed at physical +%#x, virtual +%#x (KASLR)", l.PhysDelta, l.VirtDelta)
	if c.Restore == "" {
		goBg(func() { reportBoot(bgCtx, s, r.status) })
	}
	if width, tty := terminalWidth(os.Stderr); tty && c.Console != "" {
		goBg(func() { showProgress(bgCtx, s, r.status, width) })
	}
	if c.Inspect != "" {
		goBg(func() { inspectAt(bgCtx, s, c.Inspect, r.status) })
	}
	if c.Interval > 0 {
		goBg(func() {
			t := time.NewTicker(c.Interval)
			defer t.Stop()
			for {
				select {
				case <-bgCtx.Done():
					return
				case <-t.C:
					printHists(r.an, c.Format, r.events, r.status)
				}
			}
		})
	}
	if c.SnapshotAt != "" {
		goBg(func() {
			// A guest that ended before the marker is told by its end, not
			// by the wait that stopBg cut short.
			if err := snapshotAt(bgCtx, s, c.SnapshotAt, c.SnapshotOut, r.status); err != nil && (ctx.Err() != nil || bgCtx.Err() == nil) {
				snapErr.Store(&err)
			}
			s.VM.Stop()
		})
	}
	if c.Scenario != "" {
		goBg(func() { sendScenario(bgCtx, s, c.Scenario, c.Restore != "", r.status) })
	}
	return &snapErr, nil
}

// report prints where the vCPUs were at a timeout and the probes' counts.
func (r *run) report(ctx context.Context, s *session.Session, dp *atomic.Pointer[session.DefProbes]) {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		for _, l := range s.WhereCPUs() {
			r.status.printf("hvprobe: at the timeout, %s", l)
		}
	}
	for _, d := range s.VM.Disks() {
		r.status.printf("hvprobe: %s (%s): %d requests: %d reads (%d bytes), %d writes (%d bytes), %d flushes, %d other",
			d.Name, d.Path, d.Requests(), d.Reads, d.BytesRead, d.Writes, d.BytesWritten, d.Flushes, d.Other)
	}
	a, err := s.Attached()
	if err != nil || !r.hasProbes() {
		return
	}
	if p := dp.Load(); p != nil {
		p.Flush() // the exit-less probes' last records
		for _, l := range p.Stats() {
			r.status.printf("hvprobe: %s", l)
		}
	}
	printStats(r.status, a.Manager)
}
