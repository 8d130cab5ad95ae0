package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kguest "github.com/hvprobe/hvprobe/guest"
	"github.com/hvprobe/hvprobe/internal/x86dec"
	"github.com/hvprobe/hvprobe/probedef"

	"github.com/hvprobe/hvprobe/kprobes"
	"github.com/hvprobe/hvprobe/session"
	"github.com/hvprobe/hvprobe/tests/kvmtest"
	"github.com/hvprobe/hvprobe/vmm"
)

// stockBootTimeout: Debian's kernel reaches /init in about a minute on
// hardware or nested KVM (55–101 s measured), but needs 15–32 minutes where
// kernel mode is emulated (docs/QUIRKS.md); HVPROBE_STOCK_TIMEOUT overrides.
func stockBootTimeout() time.Duration {
	def := 12 * time.Minute
	if emulatingHost() {
		def = 45 * time.Minute
	}
	return envDuration("HVPROBE_STOCK_TIMEOUT", def)
}

// emulatingHost: guest kernel mode is instruction-emulated here (PVM).
func emulatingHost() bool {
	h, err := vmm.DetectHost("/sys/module", "")
	return err == nil && h.Emulating
}

func envDuration(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil {
		return d
	}
	return def
}

// TestStockKernelBootProbe boots Debian's stock cloud kernel (its real
// System.map, KASLR on) once, with every probe given at boot, and checks
// that boot against what the kernel reports itself:
//   - a kretprobe on do_one_initcall (fn=$arg1:symbol ret=$retval:s32)
//     yields exactly the "initcall FN returned N" pairs initcall_debug
//     prints, in order;
//   - a probe on chr_dev_init (in .init.text) fires once and is retired
//     when the kernel frees init text;
//   - exit-less probes (no VM exit per hit) see the same initcalls, in
//     the same tasks: a p line on one instruction that also reads the
//     command line through saved_command_line, a kretprobe, and a p line
//     over a run of two instructions;
//   - a seeded random sample of probes at instruction boundaries, at
//     function entries and kretprobes (HVPROBE_SEED, printed) is checked
//     before boot: what is not refused arms (many only once the kernel
//     has patched its text) and the kernel boots to /init without a WARN,
//     oops or panic;
//   - once every probe is removed, each probed instruction's bytes are
//     the kernel's own: the image's, or the 5-byte nop ftrace_init made of
//     an mcount call.
func TestStockKernelBootProbe(t *testing.T) {
	kvmtest.RequireKVM(t)
	stopSharedGuests()
	dir := filepath.Join(imagesDir(), "stock")
	for _, f := range []string{"vmlinuz", "System.map"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatalf("stock kernel not fetched (make images-stock): %v", err)
		}
	}
	k, err := kguest.OpenKernel(filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "System.map"))
	if err != nil {
		t.Fatal(err)
	}
	defs := stockProbes(t, k)
	// A stock boot on the nested KVM sometimes stops making progress
	// (docs/QUIRKS.md #23, not yet diagnosed): a boot whose console is
	// silent for stallAfter is abandoned and retried, and said so.
	const attempts = 3
	for i := 1; i <= attempts; i++ {
		stalled := bootStockOnce(t, k, dir, defs, i)
		if !stalled {
			return
		}
		t.Logf("attempt %d: the stock guest's console was silent for %v; retrying", i, stallAfter())
	}
	t.Fatalf("the stock guest stalled in all %d attempts", attempts)
}

// stallAfter is how long a booting stock guest may print nothing. Where
// kernel mode is emulated, single initcalls run for minutes without a word
// (ftrace's check of every mcount site took ~7 minutes, docs/QUIRKS.md).
func stallAfter() time.Duration {
	if emulatingHost() {
		return 15 * time.Minute
	}
	return 90 * time.Second
}

const (
	initcallsProbe = "r:initcalls do_one_initcall fn=$arg1:symbol ret=$retval:s32"
	initTextProbe  = "p:inittext chr_dev_init"
	// initStackProbe's events carry the kernel stack, unwound with the
	// image's ORC tables.
	initStackProbe = "p:initstack do_one_initcall"
	// sysStateWatch sees the kernel's three boot-time stores to
	// system_state: SCHEDULING in rest_init, FREEING_INITMEM and RUNNING
	// in kernel_init (init/main.c).
	sysStateWatch = "w:sysstate w@system_state:4"
	// stealthProbe, in a debug register where the host fires them, hits
	// once per initcall: do_one_initcall calls initcall_blacklisted first.
	stealthProbe = "p:stealthbl initcall_blacklisted"
	// fastProbe is exit-less: do_one_initcall's mov $0x8,%ecx (5 bytes,
	// after the fentry site the kretprobe's int3 holds) becomes a jmp to
	// a recording stub; %di is still the initcall. The stub also reads
	// the kernel's command line through the saved_command_line pointer.
	fastProbe = "p:fastinit do_one_initcall+7 fn=%di:symbol cmdline=+0(@saved_command_line):string"
	// fastRetProbe is an exit-less kretprobe (entry stub on the fentry
	// nop, return trampoline) on the callback initcall_debug gives every
	// initcall's end: its entry arguments are the initcall and its result.
	fastRetProbe = "r:fastret trace_initcall_finish_cb fn=$arg2:symbol ret=$arg3:s32"
	// fastRunProbe is exit-less over a run: push %r12 (2 bytes) is too
	// short for the jmp, which displaces the mov %rdi,%r12 after it too.
	fastRunProbe = "p:fastrun trace_initcall_finish_cb+5 fn=%si:symbol ret=%dx:s32"
)

// Sample sizes of the random probe set.
const (
	sampleBody, sampleEntry, sampleRet = 300, 100, 30
)

// stockProbes is the probe set of the stock boot: the two fixed probes and
// a random sample, of which only what the pre-boot check accepts is kept.
func stockProbes(t *testing.T, k *kguest.Kernel) []*probedef.Def {
	seed := time.Now().UnixNano()
	if v, err := strconv.ParseInt(os.Getenv("HVPROBE_SEED"), 10, 64); err == nil {
		seed = v
	}
	t.Logf("random probe sample: HVPROBE_SEED=%d", seed)
	sample := randomSample(t, k, rand.New(rand.NewPCG(uint64(seed), 0)), sampleBody, sampleEntry, sampleRet)
	defs := parseDefs(t, initcallsProbe, initTextProbe, initStackProbe, sysStateWatch, fastProbe, fastRetProbe, fastRunProbe)
	defs[2].Stack = true
	defs[4].Fast = true
	defs[5].Fast = true
	defs[6].Fast = true
	caps, err := vmm.DetectWatchCaps("/dev/kvm")
	if err != nil {
		t.Fatal(err)
	}
	if caps.HWExecute {
		st := parseDefs(t, stealthProbe)[0]
		st.Stealth = true
		defs = append(defs, st)
	} else {
		t.Logf("no stealth probe in this boot: the host's KVM fires no hardware breakpoints (%+v)", caps)
	}
	// A debug register and an int3 on one instruction would meet in the
	// step over it.
	// An int3 where the exit-less probe's jmp goes would send it to the
	// int3 path.
	sample = slices.DeleteFunc(sample, func(d *probedef.Def) bool {
		return d.Symbol == "initcall_blacklisted" && d.Offset == 0 || d.Symbol == "do_one_initcall" && d.Offset == 7 ||
			d.Symbol == "trace_initcall_finish_cb"
	})
	return append(defs, sample...)
}

// checkStealthAndWatch: the stealth probe hit once per initcall, and the
// watch saw exactly the kernel's stores to system_state, in order, from
// rest_init and kernel_init.
func checkStealthAndWatch(t *testing.T, events []probedef.Event, stealth bool) {
	t.Helper()
	initcalls, stealthHits := 0, 0
	var states []string
	for _, ev := range events {
		switch ev.Def.Event {
		case "initcalls":
			initcalls++
		case "stealthbl":
			stealthHits++
		case "sysstate":
			fn, _, _ := strings.Cut(ev.Where, "+")
			states = append(states, fmt.Sprintf("%d->%d@%s", ev.Values[1].U64, ev.Values[2].U64, fn))
		}
	}
	want := []string{"0->1@rest_init", "1->2@kernel_init", "2->3@kernel_init"}
	if !slices.Equal(states, want) {
		t.Errorf("system_state stores seen %v, want %v", states, want)
	}
	if stealth && stealthHits != initcalls {
		t.Errorf("stealth probe on initcall_blacklisted: %d hits for %d initcalls", stealthHits, initcalls)
	}
	t.Logf("system_state stores %v; stealth probe %d hits for %d initcalls", states, stealthHits, initcalls)
}

// checkFastCalls: each exit-less probe on trace_initcall_finish_cb (the
// kretprobe, and the p line over a run) saw once per initcall the
// initcall and the result the int3 kretprobe on do_one_initcall saw, in
// the same order and task, with nothing missed or lost. The console
// initcalls console_init runs itself, from pid 0 before do_one_initcall
// runs any, are not the kretprobe's: a probe armed before them (the run
// is not a site ftrace patches, so it is armed at attach) sees them too.
func checkFastCalls(t *testing.T, events []probedef.Event, dp *session.DefProbes) {
	t.Helper()
	for _, c := range []struct {
		event, line string
		is          func(*kprobes.FastProbe) bool
	}{
		{"fastret", fastRetProbe, func(p *kprobes.FastProbe) bool { return p.Return }},
		{"fastrun", fastRunProbe, func(p *kprobes.FastProbe) bool { return p.Offset == 5 }},
	} {
		var p *kprobes.FastProbe
		for _, f := range dp.FastProbes() {
			if c.is(f) {
				p = f
			}
		}
		if p == nil {
			t.Errorf("%s did not go exit-less", c.line)
			continue
		}
		var rets, fast []string
		console := 0
		for _, ev := range events {
			if ev.Def.Event == c.event && ev.PID == 0 {
				console++
				continue
			}
			if ev.Def.Event == "initcalls" || ev.Def.Event == c.event {
				v := fmt.Sprintf("%s/%d %s=%d", ev.Comm, ev.PID, ev.Values[0].Str, ev.Values[1].S64)
				if ev.Def.Event == c.event {
					fast = append(fast, v)
				} else {
					rets = append(rets, v)
				}
			}
		}
		if !slices.Equal(fast, rets) || p.Lost() != 0 || p.NMissed() != 0 {
			n := min(len(fast), len(rets), 3)
			t.Errorf("%s: %d events (%q...), %d lost, %d missed; the int3 kretprobe saw %d initcalls (%q...)",
				c.line, len(fast), fast[:n], p.Lost(), p.NMissed(), len(rets), rets[:n])
		}
		t.Logf("%s (exit-less over %s): %d events, the int3 kretprobe's %d initcalls and results, in order, and %d console initcalls from pid 0; %d lost, %d missed",
			c.line, p.Insn(), len(fast), len(rets), console, p.Lost(), p.NMissed())
	}
}

// checkFastInitcalls: the exit-less probe took its path and saw every
// initcall the kretprobe saw, the same functions in the same order, in
// the same task; the command line its stub read is the one the kernel
// printed, cut at the exit-less path's 127 bytes.
func checkFastInitcalls(t *testing.T, lines []session.Line, events []probedef.Event, dp *session.DefProbes) {
	t.Helper()
	var p *kprobes.FastProbe
	for _, f := range dp.FastProbes() {
		if f.Symbol == "do_one_initcall" {
			p = f
		}
	}
	if p == nil {
		t.Errorf("%s did not go exit-less", fastProbe)
		return
	}
	var cmdline string
	for _, l := range lines {
		if _, c, ok := strings.Cut(l.Text, "Command line: "); ok {
			cmdline = strings.TrimSpace(c)
			break
		}
	}
	if cmdline == "" {
		t.Fatal(`the stock kernel printed no "Command line:"`)
	}
	cmdline = cmdline[:min(len(cmdline), 127)]
	type call struct {
		fn   uint64
		task string
	}
	var rets, fast []call
	badCmdline := 0
	for _, ev := range events {
		c := func() call { return call{ev.Values[0].U64, fmt.Sprintf("%s/%d", ev.Comm, ev.PID)} }
		switch ev.Def.Event {
		case "initcalls":
			rets = append(rets, c())
		case "fastinit":
			fast = append(fast, c())
			if v := ev.Values[1]; v.Fault || v.Str != cmdline {
				if badCmdline++; badCmdline == 1 {
					t.Errorf("exit-less probe read the command line as %q (fault %v), the kernel printed %q", v.Str, v.Fault, cmdline)
				}
			}
		}
	}
	if !slices.Equal(fast, rets) || p.Lost() != 0 {
		n := min(len(fast), len(rets), 3)
		t.Errorf("exit-less probe: %d initcalls (%v...), %d lost; the kretprobe saw %d (%v...)", len(fast), fast[:n], p.Lost(), len(rets), rets[:n])
	}
	t.Logf("exit-less probe %s: %d initcalls, the kretprobe's %d, in the same order and tasks; %d lost; %d of them read the command line wrong",
		fastProbe, len(fast), len(rets), p.Lost(), badCmdline)
}

// randomBoundary picks an instruction boundary of f by decoding it from
// its start in the image.
func randomBoundary(k *kguest.Kernel, f kguest.Symbol, rng *rand.Rand) (uint64, bool) {
	code, ok := k.Image.ReadVirt(f.Addr, int(f.Size))
	if !ok {
		return 0, false
	}
	var starts []uint64
	for pos := 0; pos < len(code); {
		starts = append(starts, uint64(pos))
		inst, err := x86dec.Decode(code[pos:])
		if err != nil {
			break // data, or padding: stop here
		}
		pos += inst.Len
	}
	if len(starts) < 2 {
		return 0, false
	}
	return starts[1+rng.IntN(len(starts)-1)], true
}

// refusalClass shortens a refusal to its kind, for the log.
func refusalClass(msg string) string {
	for _, c := range []string{"jump label", "static call", "instruction boundary", "inside a", ".exit.text", "int3", "raises", "privilege", "reloads", "stops the CPU", "not in kernel text", "function entry", "symbols named", "returns 'void'"} {
		if strings.Contains(msg, c) {
			return c
		}
	}
	if len(msg) > 40 {
		msg = msg[:40]
	}
	return msg
}

// bootStockOnce boots the stock kernel once with defs and checks it. It
// reports a stall instead of failing.
func bootStockOnce(t *testing.T, k *kguest.Kernel, dir string, defs []*probedef.Def, attempt int) (stalled bool) {
	console, err := os.Create(filepath.Join(logDir(), fmt.Sprintf("hvprobe-e2e-stock-console-%d.log", attempt)))
	if err != nil {
		t.Fatal(err)
	}
	defer console.Close()
	var mu sync.Mutex
	var notices []session.Notice
	s, err := session.New(session.Options{
		Kernel:    filepath.Join(dir, "vmlinuz"),
		SystemMap: filepath.Join(dir, "System.map"),
		Image:     k,
		Initrd:    filepath.Join(imagesDir(), "mini", "initramfs.cpio"),
		// cryptomgr.notests: the crypto self-tests are no initcalls and take
		// over 5 minutes where kernel mode is emulated (docs/QUIRKS.md #31).
		CmdlineAppend: "initcall_debug ignore_loglevel cryptomgr.notests",
		// A ring that holds every exit-less record of the boot (3 probes
		// × 571 initcalls): the checks are of what the stubs record, and
		// a drain that falls behind (the nested KVM runs it beside the
		// vCPU on one L1 CPU, images/nested --pin) must not lose any.
		FastRecords: 2048,
		Console:     console,
		Notify: func(n session.Notice) {
			mu.Lock()
			notices = append(notices, n)
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	stuck := false
	defer func() {
		if !stuck { // a vCPU thread that never stopped may still use its kvm_run page
			s.Close()
		}
	}()
	if err := s.FollowText(); err != nil {
		t.Errorf("guest writes to text are not watched: %v", err)
	}
	var events []probedef.Event
	var dp *session.DefProbes
	var addErr error
	s.AtAttach(func(a *session.Attached) error {
		dp, addErr = s.AddDefs(a, defs, func(ev probedef.Event) {
			switch ev.Def.Event {
			case "initcalls", "inittext", "initstack", "sysstate", "stealthbl", "fastinit", "fastret", "fastrun":
				mu.Lock()
				events = append(events, ev)
				mu.Unlock()
			}
		})
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), stockBootTimeout())
	defer cancel()
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		r := s.Run(ctx)
		if r.Panicked {
			t.Errorf("stock kernel panicked: %s", strings.Join(r.Tail, "\n"))
		}
		if r.Err != nil {
			t.Errorf("the stock guest stopped: %v", r.Err)
		}
		cancel() // a guest that ended will print nothing more
	}()
	silent := cancelWhenSilent(s, ended, cancel)
	l, err := s.WaitLineSeen(ctx, "Run /init as init process")
	s.VM.Stop()
	select {
	case <-ended:
	case <-time.After(30 * time.Second):
		stuck = true
		t.Fatalf("attempt %d: the stock guest's vCPU did not stop within 30 s of Stop: the VMM itself is stuck", attempt)
	}
	if silent.Load() {
		return true
	}
	if err != nil {
		t.Fatalf("stock kernel did not reach /init: %v (console: %s)", err, console.Name())
	}
	if err := s.AttachErr(); err != nil {
		t.Fatal(err)
	}
	if addErr != nil {
		t.Fatalf("arming at attach: %v", addErr)
	}
	a, err := s.Attached()
	if err != nil {
		t.Fatal(err)
	}
	dp.Flush() // the exit-less probe's last records, before mu: its events take it
	mu.Lock()
	defer mu.Unlock()
	checkStockConsole(t, s.Lines(), l)
	checkInitcallPairs(t, s.Lines(), l, events)
	checkInitcallStacks(t, events)
	checkStealthAndWatch(t, events, slices.ContainsFunc(defs, func(d *probedef.Def) bool { return d.Stealth }))
	checkFastInitcalls(t, s.Lines(), events, dp)
	checkFastCalls(t, events, dp)
	deferred, armed, retired := 0, 0, 0
	for _, n := range notices {
		switch n.Kind {
		case session.NoticeDeferred:
			deferred++
		case session.NoticeArmed:
			armed++
		case session.NoticeRetired:
			retired++
		case session.NoticeFailed:
			t.Errorf("%s", n)
		}
	}
	if deferred == 0 || armed != deferred {
		t.Errorf("%d probes deferred until the kernel patched its text, %d armed then", deferred, armed)
	}
	var initHits int
	for _, ev := range events {
		if ev.Def.Event == "inittext" {
			initHits++
		}
	}
	if initHits != 1 || retired == 0 {
		t.Errorf("chr_dev_init (.init.text): %d hits, %d probes retired when init text was freed; want 1 hit and its retirement", initHits, retired)
	}
	probed := a.Manager.Stats().Probes
	st := a.Manager.Stats()
	t.Logf("stock kernel reached /init after %.1fs: %d probes armed (%d deferred), %d retired, %d hits, exits per hit %v, emulated %d boosted %d stepped %d (%d ended by their slot's int3), text changes followed %d",
		l.At.Seconds(), len(probed), deferred, retired, st.Hits, st.ExitsPerHit, st.Emulated, st.Boosted, st.Stepped, st.GuardSteps, countKind(notices, session.NoticeRearmed))
	if err := dp.Remove(); err != nil {
		t.Errorf("removing the probes: %v", err)
	}
	checkStockTextRestored(t, k, a, probed)
	return false
}

// cancelWhenSilent calls cancel once s's console has printed nothing for
// stallAfter() (docs/QUIRKS.md #23) and reports through the result
// whether it did; it stops watching when ended is closed.
func cancelWhenSilent(s *session.Session, ended <-chan struct{}, cancel func()) *atomic.Bool {
	var silent atomic.Bool
	go func() {
		last, since := 0, time.Now()
		for {
			select {
			case <-ended:
				return
			case <-time.After(5 * time.Second):
			}
			if n := len(s.Lines()); n != last {
				last, since = n, time.Now()
			} else if time.Since(since) > stallAfter() {
				silent.Store(true)
				cancel()
				return
			}
		}
	}()
	return &silent
}

// checkInitcallStacks: every do_one_initcall hit is pid 1's (the
// initcall pairs show it), so every stack, unwound with ORC, starts at the
// probe and ends in kernel_init, entered from ret_from_fork.
func checkInitcallStacks(t *testing.T, events []probedef.Event) {
	t.Helper()
	calls, stacks := 0, 0
	var example []string
	for _, ev := range events {
		switch ev.Def.Event {
		case "initcalls":
			calls++
		case "initstack":
			stacks++
			var where []string
			for _, f := range ev.Stack {
				where = append(where, f.Where)
			}
			k := slices.IndexFunc(where, func(w string) bool { return strings.HasPrefix(w, "kernel_init+") })
			if len(where) < 3 || !strings.HasPrefix(where[0], "do_one_initcall+0x0/") || k < 0 ||
				!slices.ContainsFunc(where[:k], func(w string) bool { return strings.HasPrefix(w, "kernel_init_freeable+") }) ||
				slices.ContainsFunc(where[k+1:], func(w string) bool { return !strings.HasPrefix(w, "ret_from_fork") }) {
				t.Errorf("initcall stack %q does not run from do_one_initcall through kernel_init_freeable to kernel_init", where)
			}
			example = where
		}
	}
	if stacks != calls || stacks == 0 {
		t.Errorf("%d initcall stacks for %d initcalls", stacks, calls)
	}
	t.Logf("%d initcall stacks unwound with ORC, e.g. %q", stacks, example)
}

func countKind(ns []session.Notice, k session.NoticeKind) int {
	n := 0
	for _, x := range ns {
		if x.Kind == k {
			n++
		}
	}
	return n
}

// checkStockConsole fails on any WARN, oops, BUG or panic before /init.
func checkStockConsole(t *testing.T, lines []session.Line, end session.Line) {
	t.Helper()
	for _, line := range lines {
		if line.At > end.At {
			break
		}
		// "WARNING: CPU:" is WARN()'s; a mitigation's advisory such as
		// "RETBleed: WARNING: Spectre v2 mitigation leaves CPU
		// vulnerable" is about the host's CPU (docs/QUIRKS.md #46).
		for _, bad := range []string{"WARNING: CPU:", "Oops", "BUG:", "Kernel panic", "ftrace failed", "missing return thunk"} {
			if strings.Contains(line.Text, bad) {
				t.Errorf("console before /init: %s", line.Text)
			}
		}
	}
}

// checkInitcallPairs compares the kretprobe's (fn, ret) events with the
// kernel's own "initcall FN returned N after" lines, in order: those of
// do_one_initcall, whose "calling FN @ 1" line names kernel_init's pid
// (console_init calls the console initcalls itself, from pid 0).
func checkInitcallPairs(t *testing.T, lines []session.Line, end session.Line, events []probedef.Event) {
	t.Helper()
	var want []string
	viaDoOne := map[string]bool{}
	for _, line := range lines {
		if line.At > end.At {
			break
		}
		if _, rest, ok := strings.Cut(line.Text, "] calling  "); ok {
			fn, pid, _ := strings.Cut(rest, " @ ")
			viaDoOne[fn] = pid == "1"
		}
		if _, rest, ok := strings.Cut(line.Text, "] initcall "); ok {
			fn, after, ok1 := strings.Cut(rest, " returned ")
			ret, _, ok2 := strings.Cut(after, " after ")
			if ok1 && ok2 && viaDoOne[fn] {
				want = append(want, fn+" "+ret)
			}
		}
	}
	var got []string
	for _, ev := range events {
		if ev.Def.Event != "initcalls" {
			continue
		}
		var fn, ret string
		for _, v := range ev.Values {
			switch v.Name {
			case "fn":
				fn = probedef.FormatValue(v)
			case "ret":
				ret = probedef.FormatValue(v)
			}
		}
		got = append(got, fn+" "+ret)
	}
	if len(want) == 0 {
		t.Fatal("the kernel printed no initcall results")
	}
	if !slices.Equal(got, want) {
		n := 0
		for n < min(len(got), len(want)) && got[n] == want[n] {
			n++
		}
		t.Fatalf("kretprobe pairs differ from the kernel's from #%d: %d events, %d lines printed; first differing: got %q, the kernel printed %q",
			n, len(got), len(want), at(got, n), at(want, n))
	}
	t.Logf("%d initcall results: the kretprobe's pairs equal the kernel's", len(want))
}

func at(s []string, i int) string {
	if i < len(s) {
		return s[i]
	}
	return "(none)"
}

// relocated is the image's n bytes at link as hvprobe loaded them with
// the KASLR slide: the relocation table's fields moved, as kimage.Load
// moves them.
func relocated(k *kguest.Kernel, link uint64, n int, slide uint64) []byte {
	const pad = 8 // a field may start up to 7 bytes before link
	buf, ok := k.Image.ReadVirt(link-pad, n+2*pad)
	if !ok {
		buf, _ = k.Image.ReadVirt(link, n)
		return slices.Clone(buf)
	}
	buf = slices.Clone(buf)
	r := k.Image.Relocs
	if r == nil || slide == 0 {
		return buf[pad : pad+n]
	}
	le := binary.LittleEndian
	in := func(va, w uint64) (uint64, bool) {
		return va - (link - pad), va >= link-pad && va+w <= link+uint64(n)+pad
	}
	for _, va := range r.Rel32 {
		if o, ok := in(va, 4); ok {
			le.PutUint32(buf[o:], le.Uint32(buf[o:])+uint32(slide))
		}
	}
	for _, va := range r.Inv32 {
		if o, ok := in(va, 4); ok {
			le.PutUint32(buf[o:], le.Uint32(buf[o:])-uint32(slide))
		}
	}
	for _, va := range r.Rel64 {
		if o, ok := in(va, 8); ok {
			le.PutUint64(buf[o:], le.Uint64(buf[o:])+slide)
		}
	}
	return buf[pad : pad+n]
}

// checkStockTextRestored reads back every probed instruction once all
// probes are gone: no int3 of hvprobe's stays, and the bytes are the
// kernel's own.
func checkStockTextRestored(t *testing.T, k *kguest.Kernel, a *session.Attached, probed []kprobes.ProbeStats) {
	t.Helper()
	sites, err := k.PatchSites()
	if err != nil {
		t.Fatal(err)
	}
	slide := a.Kernel.Layout.VirtDelta
	nop5 := []byte{0x0f, 0x1f, 0x44, 0x00, 0x00}
	same, nopped, other := 0, 0, 0
	for _, p := range probed {
		link := p.Addr - slide
		if sec, ok := sites.Discarded(link); ok && sec == ".init.text" {
			continue // freed and reused by the kernel
		}
		code, ok := k.Image.ReadVirt(link, 16)
		inst, err := x86dec.Decode(code)
		if !ok || err != nil {
			t.Errorf("%s: no instruction in the image at %#x", p.Name, link)
			continue
		}
		n := inst.Len
		want := relocated(k, link, n, slide)
		got := make([]byte, n)
		if err := a.Kernel.ReadVirt(p.Addr, got); err != nil {
			t.Errorf("%s: reading back: %v", p.Name, err)
			continue
		}
		patched := sites.Overlapping(link, uint64(n))
		switch {
		case bytes.Equal(got, want):
			same++
		case len(patched) > 0 && patched[0].Class == kguest.Mcount && patched[0].Addr == link && bytes.Equal(got, nop5[:n]):
			nopped++
		case len(patched) > 0:
			other++ // rewritten by the kernel at boot (alternatives, ...)
			if got[0] == 0xcc {
				t.Errorf("%s: an int3 is left at %#x (% x)", p.Name, p.Addr, got)
			}
		default:
			t.Errorf("%s at %#x: % x after removal, the image has % x", p.Name, p.Addr, got, want)
		}
	}
	t.Logf("text after removal: %d probed instructions as in the image, %d mcount calls the kernel made nops, %d other boot-patched sites", same, nopped, other)
}
