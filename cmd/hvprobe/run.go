package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hvprobe/hvprobe/bench"
	"github.com/hvprobe/hvprobe/session/control"

	"github.com/hvprobe/hvprobe/analysis"
	"github.com/hvprobe/hvprobe/guest"
	"github.com/hvprobe/hvprobe/kprobes"
	"github.com/hvprobe/hvprobe/probedef"
	"github.com/hvprobe/hvprobe/session"
	"github.com/hvprobe/hvprobe/stub"
	"github.com/hvprobe/hvprobe/vmm"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func cmdRun(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	kernel, sysmap, initrd := guestFlags(fs)
	mem := fs.String("mem", "512M", "guest memory (M or G suffix)")
	cpus := fs.Int("cpus", 1, "number of vCPUs")
	appendCmd := fs.String("cmdline-append", "", "added to the kernel command line")
	hostKind := fs.String("host", "auto", "KVM kind: auto, hardware, or emulating (adds the instruction masks an emulating KVM needs)")
	nokaslr := fs.Bool("nokaslr", false, "boot the kernel at its link-time addresses")
	timeout := fs.Duration("timeout", 0, "stop the guest after this long (0 = never)")
	consoleOut := fs.String("console", "-", "where the guest console goes: - for stdout, or a file")
	var kps, jps, rps multiFlag
	fs.Var(&kps, "kprobe", "probe SYM[+OFF] (repeatable): print a line per hit with a few registers")
	fs.Var(&jps, "jprobe", "jprobe on function SYM (repeatable): print its first six arguments per call")
	fs.Var(&rps, "kretprobe", "kretprobe SYM[:MAXACTIVE] (repeatable): print each return value and duration")
	var lines multiFlag
	fs.Var(&lines, "probe", "probe definition in ftrace kprobe_events syntax, e.g. 'p:myopen do_filp_open path=+0(+0(%si)):string' (repeatable; 'j:' = jprobe)")
	probesFile := fs.String("probes", "", "file of probe definitions, one per line (# comments)")
	format := fs.String("format", "trace", "event output for --probe/--probes: trace (trace_pipe lines), json (JSON lines), or perfetto (a Perfetto timeline in --events FILE; hvprobe's own lines go to stderr)")
	count := fs.Bool("count", false, "for --probe/--probes: count events per probe and argument values, print the table at exit instead of every event")
	eventsOut := fs.String("events", "-", "where events and statistics go: - for stdout, or a file (keeps the terminal for the guest console)")
	interactive := fs.Bool("interactive", false, "send standard input to the guest's serial console (use with --events FILE to keep events apart)")
	live := fs.Bool("control", false, "open a control socket for live probe changes (see 'hvprobe ctl')")
	inspect := fs.String("inspect", "", "when a console line contains this text, print the KASLR slide and the guest's task list")
	snapAt := fs.String("snapshot-at", "", "when a console line contains this text, snapshot the guest to --snapshot-out and stop")
	snapOut := fs.String("snapshot-out", "", "snapshot file written at --snapshot-at")
	restore := fs.String("restore", "", "start from this snapshot instead of booting (memory, vCPUs and command line are the snapshot's)")
	scenario := fs.String("scenario", "", "workload commands for the mini guest's mailbox (e.g. calls:5,poweroff), sent once the workload serves (at once after --restore)")
	var filters, hists multiFlag
	fs.Var(&filters, "filter", "EVENT:EXPR (repeatable): pass only EVENT's hits that match an ftrace event filter, e.g. 'myev:count > 100 && comm ~ \"kw*\"'")
	fs.Var(&hists, "hist", "EVENT:hist:keys=...[:vals=...][:sort=...] (repeatable): aggregate EVENT's hits as an ftrace hist trigger; the table prints at exit instead of the events")
	perfettoOut := fs.String("perfetto", "", "for --probe/--probes: also write the events to FILE as a Perfetto (Chrome trace-event JSON) timeline: kretprobes as slices, kprobes as instants, a track per vCPU and per guest task")
	interval := fs.Duration("interval", 0, "with --hist: also print the hist tables every interval (they always print at exit)")
	stacktrace := fs.Bool("stacktrace", false, "for --probe/--probes: each event carries the guest kernel stack of its hit (ftrace's stacktrace option)")
	stealth := fs.Bool("stealth", false, "arm --probe/--probes p: lines in the vCPUs' debug registers (at most 4), so the guest reading its text sees no int3; refused where KVM does not deliver hardware breakpoints")
	fast := fs.Bool("fast", false, "arm --probe/--probes p: and r: lines exit-less where they can be: a jmp to a stub that records the registers and the memory the fetch args read into a per-vCPU ring in guest memory, with no VM exit per hit (a 5-byte or longer instruction that runs anywhere; for r: lines, the function's first such, and a return trampoline); the others, and each one's reason, take the int3 path")
	fastRecords := fs.Int("fast-records", session.DefaultFastRecords, "with --fast: records per vCPU ring (a power of two); hits that find it full are counted as lost events")
	keepGoing := fs.Bool("keep-going", false, "when a probe cannot be armed once the guest runs, report it and carry on (default: report it and stop the guest, exit status 6)")
	fs.Parse(args)
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if (*snapAt == "") != (*snapOut == "") {
		return errors.New("--snapshot-at and --snapshot-out go together")
	}
	if *snapOut != "" && (len(kps)+len(jps)+len(rps)+len(lines) > 0 || *probesFile != "" || *live) {
		return errors.New("--snapshot-out: a snapshot holds no probes; take it without probes and add them after --restore")
	}
	if *restore != "" {
		for _, f := range []string{"mem", "cpus", "cmdline-append", "nokaslr", "initrd"} {
			if set[f] {
				return fmt.Errorf("--restore: --%s is the snapshot's own", f)
			}
		}
	}
	memSize, err := parseSize(*mem)
	if err != nil {
		return exitError{code: 2, msg: fmt.Sprintf("--mem: %v", err)}
	}
	if *cpus < 1 {
		return exitError{code: 2, msg: fmt.Sprintf("--cpus %d: a guest needs at least one vCPU", *cpus)}
	}
	var host *vmm.Host
	switch *hostKind {
	case "auto":
	case "hardware":
		host = &vmm.Host{}
	case "emulating":
		host = &vmm.Host{Emulating: true}
	default:
		return fmt.Errorf("--host: %q is not auto, hardware or emulating", *hostKind)
	}
	console, closeConsole, err := outputTo(*consoleOut)
	if err != nil {
		return err
	}
	defer closeConsole()
	if *format == "perfetto" {
		// The events file is the trace; hvprobe's own lines, which would
		// break its JSON, go to stderr.
		if *eventsOut == "-" || *perfettoOut != "" {
			return exitError{code: 2, msg: "--format perfetto writes the trace to --events FILE (and replaces --perfetto)"}
		}
		*perfettoOut, *eventsOut = *eventsOut, ""
	}
	eventsW, closeEvents := io.Writer(os.Stderr), func() error { return nil }
	if *eventsOut != "" {
		if eventsW, closeEvents, err = outputTo(*eventsOut); err != nil {
			return err
		}
	}
	defer closeEvents()
	events := newPrinter(eventsW)
	defer events.close()

	var probes probeSet
	var bad []string
	for _, k := range kps {
		if err := probes.addKprobe(k, events); err != nil {
			bad = append(bad, err.Error())
		}
	}
	for _, j := range jps {
		if err := probes.addJprobe(j, events); err != nil {
			bad = append(bad, err.Error())
		}
	}
	for _, r := range rps {
		if err := probes.addKretprobe(r, events); err != nil {
			bad = append(bad, err.Error())
		}
	}
	defs, parseErr := readDefs(lines, *probesFile)
	var se probedef.SyntaxErrors
	if parseErr != nil && !errors.As(parseErr, &se) {
		return parseErr // the file could not be read
	}
	an, badAnalysis := newAnalysis(defs, filters, hists)
	bad = append(bad, badAnalysis...)
	for _, d := range defs {
		d.Stack = d.Stack || *stacktrace
	}
	if *stealth {
		bad = append(bad, stealthDefs(defs, len(kps)+len(jps)+len(rps))...)
	}
	if *fast {
		bad = append(bad, fastDefs(defs, *stealth, *fastRecords)...)
	}
	bad = append(bad, dataWatchHost(defs)...)
	emit, err := eventPrinter(*format, events)
	if err != nil {
		return err
	}
	var counts *eventCounter
	if *count {
		counts = &eventCounter{n: map[string]uint64{}}
		emit = counts.add
		defer counts.print(events)
	}
	if *perfettoOut != "" {
		w, closeW, err := outputTo(*perfettoOut)
		if err != nil {
			return err
		}
		defer closeW()
		out := newPrinter(w)
		defer out.close()
		pf := analysis.NewPerfetto(func(l string) { out.printf("%s", l) })
		defer pf.Close() // after the guest has stopped
		toPrinter := emit
		emit = func(ev probedef.Event) {
			if err := pf.Add(ev); err != nil {
				events.printf("hvprobe: %v", err)
			}
			toPrinter(ev)
		}
	}
	printed := emit // control-socket probes pass the analysis.Set on their own
	emit = an.Wrap(emit)
	defer printHists(an, *format, events)
	hasProbes := !probes.empty() || len(defs) > 0 || len(bad) > 0 || parseErr != nil
	k, err := guest.OpenKernel(*kernel, *sysmap)
	if err != nil {
		return err
	}
	if hasProbes {
		if err := checkProbes(k, &probes, defs, bad, parseErr, *probesFile, events); err != nil {
			return err
		}
	}

	var s *session.Session
	var failed atomic.Bool
	notify := func(n session.Notice) {
		events.printf("hvprobe: %s", n)
		if n.Kind == session.NoticeFailed && hasProbes && !*keepGoing && failed.CompareAndSwap(false, true) {
			s.VM.Stop()
		}
	}
	opts := session.Options{Kernel: *kernel, SystemMap: *sysmap, Image: k, Host: host, Console: console, Notify: notify,
		FastRecords: *fastRecords}
	if *restore != "" {
		t0 := time.Now()
		s, err = session.Restore(opts, *restore)
		if err == nil {
			events.printf("hvprobe: restored %s in %.3fs", *restore, time.Since(t0).Seconds())
		}
	} else {
		opts.Initrd, opts.MemSize, opts.CPUs = *initrd, memSize, *cpus
		opts.CmdlineAppend, opts.NoKASLR = *appendCmd, *nokaslr
		s, err = session.New(opts)
	}
	if err != nil {
		return err
	}
	defer func() {
		if n := s.VM.ConsoleDropped(); n > 0 {
			events.printf("console: %d bytes dropped", n)
		}
	}()
	defer s.Close()
	// Every goroutine that uses the session is joined before it closes.
	var bg sync.WaitGroup
	defer bg.Wait()
	goBg := func(f func()) {
		bg.Add(1)
		go func() {
			defer bg.Done()
			f()
		}()
	}
	if err := s.WriteWatch(); err != nil && hasProbes {
		events.printf("hvprobe: warning: %v: a probe whose text the guest rewrites is not re-checked", err)
	}

	if !probes.empty() {
		s.AtAttach(func(a *session.Attached) error {
			for _, p := range probes.probes {
				if err := s.Arm(a, p); err != nil {
					notify(session.Notice{Kind: session.NoticeFailed, Probe: p.Name, Err: err})
				}
			}
			return nil
		})
	}
	s.AtAttach(func(a *session.Attached) error {
		an.Symbolize(a.Kernel) // before any event reaches a hist
		return nil
	})
	var defProbes atomic.Pointer[session.DefProbes]
	if len(defs) > 0 {
		s.AtAttach(func(a *session.Attached) error {
			dp, err := s.AddDefs(a, defs, emit)
			defProbes.Store(dp)
			if err != nil {
				for _, r := range refusals(err, *probesFile) {
					events.printf("%s", r)
				}
				notify(session.Notice{Kind: session.NoticeFailed, Probe: "definitions", Err: errors.New("not all could be armed")})
			}
			return nil
		})
	}

	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt)
	defer cancel()
	if *timeout > 0 {
		var c2 context.CancelFunc
		ctx, c2 = context.WithTimeout(ctx, *timeout)
		defer c2()
	}
	// bgCtx ends the goroutines below once the guest has stopped.
	bgCtx, stopBg := context.WithCancel(ctx)
	defer stopBg()
	if *live {
		c, err := control.Listen(s, "", printed, an) // closed, connections joined, by s.Close
		if err != nil {
			return err
		}
		events.printf("hvprobe: control socket %s", c.Path())
		goBg(func() {
			if err := c.Serve(bgCtx); err != nil {
				notify(session.Notice{Kind: session.NoticeFailed, Probe: "control socket", Err: err})
			}
		})
	}
	if *interactive {
		// Not joined: it may block reading stdin forever. It touches only
		// ConsoleInput, a no-op once the VM is closed.
		go forwardInput(os.Stdin, s.VM.ConsoleInput)
	}
	l := s.VM.Layout()
	events.printf("hvprobe: kernel placed at physical +%#x, virtual +%#x (KASLR)", l.PhysDelta, l.VirtDelta)
	if *restore == "" {
		goBg(func() { reportBoot(bgCtx, s, events) })
	}
	if *inspect != "" {
		goBg(func() { inspectAt(bgCtx, s, *inspect, events) })
	}
	if *interval > 0 && len(hists) > 0 {
		goBg(func() {
			t := time.NewTicker(*interval)
			defer t.Stop()
			for {
				select {
				case <-bgCtx.Done():
					return
				case <-t.C:
					printHists(an, *format, events)
				}
			}
		})
	}
	var snapErr atomic.Pointer[error]
	if *snapAt != "" {
		goBg(func() {
			// A guest that ended before the marker is told by its end, not
			// by the wait that stopBg cut short.
			if err := snapshotAt(bgCtx, s, *snapAt, *snapOut, events); err != nil && (ctx.Err() != nil || bgCtx.Err() == nil) {
				snapErr.Store(&err)
			}
			s.VM.Stop()
		})
	}
	if *scenario != "" {
		goBg(func() { sendScenario(bgCtx, s, *scenario, *restore != "", events) })
	}
	res := s.Run(ctx)
	stopBg()
	bg.Wait()
	if e := snapErr.Load(); e != nil {
		return *e
	}
	if *snapAt != "" && res.Reason == vmm.StopRequested && ctx.Err() == nil {
		return nil // stopped after the snapshot, as asked
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		for _, l := range s.WhereCPUs() {
			events.printf("hvprobe: at the timeout, %s", l)
		}
	}

	if a, err := s.Attached(); err == nil && hasProbes {
		probes.stats(events)
		if dp := defProbes.Load(); dp != nil {
			dp.Flush() // the exit-less probes' last records
			for _, l := range dp.Stats() {
				events.printf("hvprobe: %s", l)
			}
		}
		printStats(events, a.Manager)
	}
	if failed.Load() {
		return exitError{code: 6, msg: "a probe could not be armed, so the guest was stopped (--keep-going carries on)"}
	}
	return endOf(res, ctx, s.Lines())
}

// endOf maps how the guest ended to the command's exit status.
func endOf(res vmm.Result, ctx context.Context, lines []session.Line) error {
	tail := func() string {
		if len(res.Tail) == 0 {
			return ""
		}
		return "\nlast console lines:\n  " + strings.Join(res.Tail, "\n  ")
	}
	switch {
	case res.Panicked:
		return exitError{code: 3, msg: "guest kernel panicked" + tail()}
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return exitError{code: 4, msg: "timed out: the guest was still running" + tail()}
	case res.Reason == vmm.StopRequested:
		return exitError{code: 130, msg: "interrupted"}
	case res.Err != nil:
		return exitError{code: 1, msg: fmt.Sprintf("guest stopped: %v%s", res.Err, tail())}
	case res.Reason == vmm.StopReset || res.Reason == vmm.StopShutdown:
		// A reset is a clean end only if the kernel said it was restarting
		// or powering down; a reset with neither is a crash that happened
		// before the console could say so.
		for _, l := range lines {
			if strings.Contains(l.Text, "reboot: Restarting system") || strings.Contains(l.Text, "reboot: Power down") {
				return nil
			}
		}
		msg := "the guest reset without announcing a restart or power-off (early crash?)"
		if res.Fault != nil {
			msg += ": " + res.Fault.String()
		}
		return exitError{code: 5, msg: msg + tail()}
	}
	return exitError{code: 1, msg: "guest stopped: " + res.Reason.String() + tail()}
}

func reportBoot(ctx context.Context, s *session.Session, p *printer) {
	if l, err := s.WaitLineSeen(ctx, ""); err == nil {
		p.printf("hvprobe: first console line after %.2fs", l.At.Seconds())
	}
	if l, err := s.WaitLineSeen(ctx, "HVWL: workload"); err == nil {
		p.printf("hvprobe: workload started after %.2fs", l.At.Seconds())
	}
}

// snapshotAt waits for a console line containing marker and snapshots.
func snapshotAt(ctx context.Context, s *session.Session, marker, path string, p *printer) error {
	l, err := s.WaitLineSeen(ctx, marker)
	if err != nil {
		return fmt.Errorf("--snapshot-at: %w", err)
	}
	t0 := time.Now()
	info, err := s.Snapshot(path)
	if err != nil {
		return err
	}
	p.printf("hvprobe: %q after %.2fs; snapshot %s written in %.2fs: %d MiB of RAM, %d MiB on disk, %d vCPUs",
		marker, l.At.Seconds(), path, time.Since(t0).Seconds(), info.MemBytes>>20, info.DiskBytes>>20, info.CPUs)
	return nil
}

// sendScenario hands commands to the mini guest's workload mailbox: at
// once in a restored guest, else when the workload says it serves.
func sendScenario(ctx context.Context, s *session.Session, cmds string, restored bool, p *printer) {
	if !restored {
		if _, err := s.WaitLineSeen(ctx, "HVWL: ready"); err != nil {
			return
		}
	}
	if _, err := bench.NewMailbox(s).Scenario(ctx, cmds); err != nil && ctx.Err() == nil && !strings.Contains(cmds, "poweroff") {
		p.printf("hvprobe: --scenario: %v", err)
	}
}

func printStats(p *printer, m *kprobes.Manager) {
	st := m.Stats()
	p.printf("hvprobe: hits=%d exits-per-hit=%v emulated=%d boosted=%d stepped=%d reentered=%d faults=%d",
		st.Hits, st.ExitsPerHit, st.Emulated, st.Boosted, st.Stepped, st.Reentered, st.Faults)
}

func parseSize(s string) (uint64, error) {
	orig := s
	mult := uint64(1)
	switch {
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n > (1<<63)/mult {
		return 0, fmt.Errorf("%q is not a size like 512M or 1G", orig)
	}
	return n * mult, nil
}

// printer serializes event lines from vCPU threads onto one writer without
// making a vCPU wait for the terminal: when its queue is full, or after
// close, a line is dropped and counted, and close reports the count.
type printer struct {
	mu      sync.Mutex
	closed  bool
	dropped uint64
	ch      chan string
	done    chan struct{}
	w       io.Writer
}

func newPrinter(w io.Writer) *printer {
	p := &printer{ch: make(chan string, 65536), done: make(chan struct{}), w: w}
	go func() {
		defer close(p.done)
		bw := bufio.NewWriter(w)
		defer bw.Flush()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case l, ok := <-p.ch:
				if !ok {
					return
				}
				bw.WriteString(l)
				bw.WriteByte('\n')
			case <-t.C:
				bw.Flush()
			}
		}
	}()
	return p
}

func (p *printer) printf(format string, args ...any) {
	l := fmt.Sprintf(format, args...)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		p.dropped++
		return
	}
	select {
	case p.ch <- l:
	default:
		p.dropped++
	}
}

// close writes what is queued, then the number of lines dropped, if any.
func (p *printer) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	close(p.ch)
	p.mu.Unlock()
	<-p.done
	p.mu.Lock()
	n := p.dropped
	p.mu.Unlock()
	if n > 0 {
		fmt.Fprintf(p.w, "hvprobe: %d event lines dropped (the output could not keep up)\n", n)
	}
}

// forwardInput copies what the user types to the guest's UART until EOF.
func forwardInput(r io.Reader, send func([]byte)) {
	buf := make([]byte, 256)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			send(append([]byte(nil), buf[:n]...))
		}
		if err != nil {
			return
		}
	}
}

// outputTo opens an output flag's destination: "-" is standard output.
func outputTo(path string) (io.Writer, func() error, error) {
	if path == "-" {
		return os.Stdout, func() error { return nil }, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, nil, err
	}
	return f, f.Close, nil
}

// stealthDefs marks the p: lines for debug registers and refuses what
// --stealth cannot keep out of guest memory, or more probes than the four
// registers hold, or a host whose KVM does not fire them.
func stealthDefs(defs []*probedef.Def, flagProbes int) []string {
	var bad []string
	if flagProbes > 0 {
		bad = append(bad, "hvprobe: --stealth: give the probes as p: lines (--probe, --probes); --kprobe, --jprobe and --kretprobe write int3s")
	}
	n := 0
	for _, d := range defs {
		switch d.Kind {
		case probedef.Probe:
			d.Stealth = true
			n++
		case probedef.Watch:
		default:
			bad = append(bad, fmt.Sprintf("hvprobe: --stealth: %s: only p: lines (and w: watches) leave guest memory as it is", d.Text))
		}
	}
	if n > session.MaxStealth {
		bad = append(bad, fmt.Sprintf("hvprobe: --stealth: %d p: lines, but the debug registers hold %d", n, session.MaxStealth))
	}
	if n > 0 {
		caps, err := vmm.DetectWatchCaps("/dev/kvm")
		if err == nil {
			err = session.StealthHost(caps)
		}
		if err != nil {
			bad = append(bad, fmt.Sprintf("hvprobe: --stealth: %v", err))
		}
	}
	return bad
}

// fastDefs marks the p: and r: lines for the exit-less path, refusing what
// cannot be checked before boot: --stealth beside it, a bad ring size.
func fastDefs(defs []*probedef.Def, stealth bool, records int) []string {
	var bad []string
	if stealth {
		bad = append(bad, "hvprobe: --fast and --stealth: a p: line is either a jmp in guest text or a debug register, not both")
	}
	if err := stub.CheckRecords(records); err != nil {
		bad = append(bad, fmt.Sprintf("hvprobe: --fast-records %d: %v", records, err))
	}
	for _, d := range defs {
		if d.Kind == probedef.Probe || d.Kind == probedef.Retprobe {
			d.Fast = true
		}
	}
	return bad
}

// dataWatchHost refuses rw@ watches before boot where this host's KVM
// does not fire debug-register data watchpoints.
func dataWatchHost(defs []*probedef.Def) []string {
	var rw []*probedef.Def
	for _, d := range defs {
		if d.Kind == probedef.Watch && d.Access == probedef.AccessRW {
			rw = append(rw, d)
		}
	}
	if len(rw) == 0 {
		return nil
	}
	caps, err := vmm.DetectWatchCaps("/dev/kvm")
	if err == nil && caps.HWData {
		return nil
	}
	why := "this host's KVM does not fire data watchpoints (docs/QUIRKS.md #38); w@ watches writes in memory"
	if err != nil {
		why = err.Error()
	}
	var bad []string
	for _, d := range rw {
		bad = append(bad, fmt.Sprintf("hvprobe: %s: rw@ needs debug-register watchpoints: %s", d.Text, why))
	}
	return bad
}
