package e2e

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/hvprobe/hvprobe/probedef"
	"github.com/hvprobe/hvprobe/session"
)

// Exit-less probes (issue 14): the same p line armed as an int3 and as a
// jmp to a recording stub gives the same events for the same scenario,
// the stub path costs no VM exit, and the text is byte-identical after.

// fastLine probes the 5-byte nop that opens hvwl_target_fentry's body.
const fastLine = `p:fp/fentry hvwl_target_fentry+4 a=%di:s64 b=%si:s64 sp=$stack`

// fastEvent is what must agree between the two paths.
type fastEvent struct {
	comm     string
	pid, cpu int
	a, b     int64
	where    string
	irqsOff  bool
}

func (e fastEvent) String() string {
	return fmt.Sprintf("%s/%d cpu%d a=%d b=%d at %s", e.comm, e.pid, e.cpu, e.a, e.b, e.where)
}

// runFastLine arms line (asking for the exit-less path when fast), checks
// that wantExitless probes took it, runs scenario and returns the events,
// the workload's lines and the debug exits the run took.
func runFastLine(t *testing.T, g *guest, line, scenario string, fast bool, wantExitless int) ([]probedef.Event, []string, uint64) {
	t.Helper()
	defs := parseDefs(t, line)
	defs[0].Fast = fast
	var log eventLog
	dp, err := g.s.AddDefs(g.a, defs, log.add)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(dp.FastProbes()); got != wantExitless {
		t.Fatalf("%s (fast=%v): %d exit-less probes armed, want %d", line, fast, got, wantExitless)
	}
	st := g.s.VM.Stats()
	before := st.Debug.Load() + st.Breakpoint.Load()
	out := g.run(t, scenario)
	dp.Flush()
	exits := st.Debug.Load() + st.Breakpoint.Load() - before
	t.Logf("fast=%v %s: %v", fast, scenario, dp.Stats())
	if err := dp.Remove(); err != nil {
		t.Fatal(err)
	}
	return log.all(), out, exits
}

func fastEvents(t *testing.T, evs []probedef.Event) []fastEvent {
	t.Helper()
	var out []fastEvent
	for _, ev := range evs {
		if len(ev.Values) != 3 {
			t.Fatalf("event %v: values %v", ev, ev.Values)
		}
		out = append(out, fastEvent{comm: ev.Comm, pid: ev.PID, cpu: ev.CPU, a: ev.Values[0].S64, b: ev.Values[1].S64,
			where: ev.Where, irqsOff: ev.IRQsOff})
	}
	return out
}

// checkSame compares the two paths' events and the stack pointers' shape:
// $stack differs only by where the caller's frame happened to be.
func checkSame(t *testing.T, int3, fast []probedef.Event) {
	t.Helper()
	a, b := fastEvents(t, int3), fastEvents(t, fast)
	if !slices.Equal(a, b) {
		n := min(len(a), len(b), 5)
		t.Fatalf("the paths disagree: int3 %d events %v..., exit-less %d events %v...", len(a), a[:n], len(b), b[:n])
	}
	for i := range fast {
		if sp := fast[i].Values[2].U64; sp>>47 != 0x1ffff || sp%8 != 0 {
			t.Errorf("exit-less event %d: $stack %#x is no kernel stack address", i, sp)
		}
		if i > 0 && fast[i].CPU == fast[i-1].CPU && fast[i].Time < fast[i-1].Time {
			t.Errorf("exit-less events %d, %d on cpu %d go back in time: %v then %v", i-1, i, fast[i].CPU, fast[i-1].Time, fast[i].Time)
		}
	}
}

// TestFastProbes: on one vCPU, 25 calls of the probed function give the
// same 25 events on both paths, with the arguments the workload passed,
// the exit-less run costs no debug exit, and the kernel text is
// byte-identical after removal.
func TestFastProbes(t *testing.T) {
	g := miniGuest(t)
	text := g.text(t)
	int3, out, int3Exits := runFastLine(t, g, fastLine, "fentry:25", false, 0)
	fast, fout, fastExits := runFastLine(t, g, fastLine, "fentry:25", true, 1)
	r, fr := report(t, out, "fentry"), report(t, fout, "fentry")
	n := num(t, r, "n")
	if int64(len(int3)) != n || int64(len(fast)) != num(t, fr, "n") {
		t.Fatalf("%d int3 and %d exit-less events; the workload made %d and %s calls", len(int3), len(fast), n, fr["n"])
	}
	for i, ev := range fastEvents(t, fast) {
		if ev.a != int64(i) || ev.b != 1000+int64(i) || !strings.HasPrefix(ev.where, "hvwl_target_fentry+0x4/") {
			t.Errorf("exit-less event %d: %v, want a=%d b=%d", i, ev, i, 1000+i)
		}
	}
	checkSame(t, int3, fast)
	t.Logf("debug exits: int3 path %d, exit-less path %d, for %d calls", int3Exits, fastExits, n)
	if int3Exits < uint64(n) || fastExits != 0 {
		t.Errorf("debug exits: int3 path %d, exit-less path %d, for %d calls", int3Exits, fastExits, n)
	}
	if after := g.text(t); !bytes.Equal(after, text) {
		t.Fatal("kernel text differs after the exit-less probe was removed")
	}
}

// TestFastProbesSMP: kernel threads on both vCPUs call the probed
// function concurrently: each thread's events equal on both paths, in
// its own call order, with its own comm and pid.
func TestFastProbesSMP(t *testing.T) {
	g := twoCPUGuest(t)
	text := g.text(t)
	const scenario = "fthreads:4:40"
	int3, out, _ := runFastLine(t, g, fastLine, scenario, false, 0)
	fast, fout, fastExits := runFastLine(t, g, fastLine, scenario, true, 1)
	total, ftotal := num(t, report(t, out, "threads"), "total"), num(t, report(t, fout, "threads"), "total")
	if int64(len(int3)) != total || int64(len(fast)) != ftotal {
		t.Fatalf("%d int3 and %d exit-less events; the workload made %d and %d calls", len(int3), len(fast), total, ftotal)
	}
	// Threads interleave differently in the two runs and pids differ:
	// compare each thread's sequence, by thread name.
	perThread := func(evs []probedef.Event) map[string][]int64 {
		m := map[string][]int64{}
		for _, e := range fastEvents(t, evs) {
			if want := "hvwl/" + fmt.Sprint(e.a); e.comm != want {
				t.Errorf("event %v: comm %q, want %q (a is the thread's k)", e, e.comm, want)
			}
			m[e.comm] = append(m[e.comm], e.b)
		}
		return m
	}
	a, b := perThread(int3), perThread(fast)
	cpus, int3CPUs := map[int]int{}, map[int]int{}
	for _, e := range fast {
		cpus[e.CPU]++
	}
	for _, e := range int3 {
		int3CPUs[e.CPU]++
	}
	t.Logf("hits per vCPU: int3 %v, exit-less %v", int3CPUs, cpus)

	for name, seq := range b {
		for i, v := range seq {
			if v != int64(i) {
				t.Fatalf("exit-less: thread %s's call %d has b=%d", name, i, v)
			}
		}
		if !slices.Equal(seq, a[name]) {
			t.Errorf("thread %s: exit-less %v, int3 %v", name, seq, a[name])
		}
	}
	if len(a) != 4 || len(b) != 4 || len(cpus) != 2 || fastExits != 0 {
		t.Errorf("threads: int3 %d, exit-less %d; exit-less hits on %d vCPUs with %d debug exits", len(a), len(b), len(cpus), fastExits)
	}
	if after := g.text(t); !bytes.Equal(after, text) {
		t.Fatal("kernel text differs after the exit-less probe was removed")
	}
}

// fstrLine reads hvwl_target_fstr's struct argument, a string through
// it, a NULL pointer (a fault) and the return address on the stack.
const fstrLine = `p:fp/fstr hvwl_target_fstr+4 i=+0(%di):s64 name=+0(+8(%di)):string sq=+16(%di):s64 ` +
	`null=+0(+24(%di)):string ret=+8(%sp):symbol`

// TestFastCaptures: fetch args that read guest memory are read by the
// stub at the hit (a software page walk, no exit): 30 calls give the
// values the workload passed, identical to the int3 path's, with the
// NULL dereference a fault on both.
func TestFastCaptures(t *testing.T) {
	g := miniGuest(t)
	text := g.text(t)
	const calls = 30
	int3, out, _ := runFastLine(t, g, fstrLine, fmt.Sprintf("fstr:%d", calls), false, 0)
	fast, fout, fastExits := runFastLine(t, g, fstrLine, fmt.Sprintf("fstr:%d", calls), true, 1)
	for _, r := range []map[string]string{report(t, out, "fstr"), report(t, fout, "fstr")} {
		if num(t, r, "n") != calls || num(t, r, "sum") != (calls-1)*calls*(2*calls-1)/6+(calls-1)*calls/2 ||
			r["last"] != fmt.Sprintf("file-%d", calls-1) {
			t.Fatalf("workload: %v", r)
		}
	}
	values := func(ev probedef.Event) []string {
		var vs []string
		for _, v := range ev.Values {
			vs = append(vs, v.Name+"="+probedef.FormatValue(v))
		}
		return vs
	}
	if len(int3) != calls || len(fast) != calls {
		t.Fatalf("%d int3 and %d exit-less events for %d calls", len(int3), len(fast), calls)
	}
	for i := range calls {
		a, b := values(int3[i]), values(fast[i])
		want := []string{fmt.Sprintf("i=%d", i), fmt.Sprintf(`name="file-%d"`, i), fmt.Sprintf("sq=%d", i*i), "null=(fault)"}
		if !slices.Equal(b[:4], want) || !strings.HasPrefix(b[4], "ret=hvwl_fstr+0x") {
			t.Errorf("exit-less event %d: %q, want %q and ret=hvwl_fstr+...", i, b, want)
		}
		if !slices.Equal(a, b) {
			t.Errorf("event %d: int3 %q, exit-less %q", i, a, b)
		}
	}
	if fastExits != 0 {
		t.Errorf("%d debug exits on the exit-less path", fastExits)
	}
	if after := g.text(t); !bytes.Equal(after, text) {
		t.Fatal("kernel text differs after the exit-less probe was removed")
	}
}

// retLine is a return probe on hvwl_target_fentry: its jmp goes on the
// nop after the frame setup, and the trampoline records each return.
const retLine = `r:fp/ret hvwl_target_fentry a=$arg1:s64 b=$arg2:s64 ret=$retval:s64`

// retView is what must agree between the int3 and exit-less kretprobes.
func retView(ev probedef.Event) string {
	var vs []string
	for _, v := range ev.Values {
		vs = append(vs, v.Name+"="+probedef.FormatValue(v))
	}
	return fmt.Sprintf("%s/%d (%s <- %s) %s", ev.Comm, ev.PID, ev.Where, ev.Func, strings.Join(vs, " "))
}

// TestFastReturns: an r line exit-less (entry stub and return
// trampoline, no exit) gives the int3 kretprobe's events for the same
// calls: arguments, return values, return addresses, tasks, in order;
// text byte-identical after.
func TestFastReturns(t *testing.T) {
	checkFastReturns(t, miniGuest(t), "fentry:25", func(t *testing.T, out []string) int64 { return num(t, report(t, out, "fentry"), "n") })
}

// TestFastReturnsSMP is TestFastReturns with 2 vCPUs, per thread.
func TestFastReturnsSMP(t *testing.T) {
	checkFastReturns(t, twoCPUGuest(t), "fthreads:4:40", func(t *testing.T, out []string) int64 { return num(t, report(t, out, "threads"), "total") })
}

func checkFastReturns(t *testing.T, g *guest, scenario string, calls func(*testing.T, []string) int64) {
	t.Helper()
	text := g.text(t)
	int3, out, _ := runFastLine(t, g, retLine, scenario, false, 0)
	fast, fout, fastExits := runFastLine(t, g, retLine, scenario, true, 1)
	if n, fn := calls(t, out), calls(t, fout); int64(len(int3)) != n || int64(len(fast)) != fn {
		t.Fatalf("%d int3 and %d exit-less return events for %d and %d calls", len(int3), len(fast), n, fn)
	}
	// Per task (threads interleave differently, pids differ in
	// the two runs): the sequence of returns each task saw.
	byTask := func(evs []probedef.Event) map[string][]string {
		m := map[string][]string{}
		for _, ev := range evs {
			if ev.Values[2].S64 != ev.Values[0].S64+ev.Values[1].S64 || ev.Duration <= 0 || !strings.HasPrefix(ev.Where, "hvwl_") {
				t.Errorf("return event %s: want ret = a+b, a duration (%v), a return into the workload", retView(ev), ev.Duration)
			}
			v := retView(ev)
			_, v, _ = strings.Cut(v, " ") // the pid differs between runs
			m[ev.Comm] = append(m[ev.Comm], v)
		}
		return m
	}
	a, b := byTask(int3), byTask(fast)
	for task, seq := range a {
		if !slices.Equal(seq, b[task]) {
			n := min(len(seq), len(b[task]), 3)
			t.Errorf("task %s: int3 %q..., exit-less %q...", task, seq[:n], b[task][:min(n, len(b[task]))])
		}
	}
	if len(a) != len(b) || fastExits != 0 {
		t.Errorf("%d tasks on the int3 path, %d exit-less; %d debug exits exit-less", len(a), len(b), fastExits)
	}
	if after := g.text(t); !bytes.Equal(after, text) {
		t.Fatal("kernel text differs after the exit-less return probe was removed")
	}
}

// TestFastFallback: a line whose instructions cannot be displaced, or
// whose fetch args the stub cannot read, takes the int3 path and still
// counts.
func TestFastFallback(t *testing.T) {
	g := miniGuest(t)
	for _, c := range []struct{ line, scenario, report string }{
		// push %rbp; mov %rsp,%rbp; then a %rip-relative load: no run.
		{`p:fp/short hvwl_target_mix a=%di:s64`, "mix:3", "mix"},
		// Arrays are not captured.
		{`p:fp/array hvwl_target_fentry+4 a=%di:s64 m=+0(%sp):x8[4]`, "fentry:3", "fentry"},
	} {
		for _, fast := range []bool{false, true} {
			evs, out, _ := runFastLine(t, g, c.line, c.scenario, fast, 0)
			if int64(len(evs)) != num(t, report(t, out, c.report), "n") {
				t.Errorf("%s (fast=%v): %d events", c.line, fast, len(evs))
			}
		}
	}
}

// TestFastRun: at hvwl_target_run's push %rbp (one byte) the jmp
// displaces the run push %rbp; mov %rsp,%rbp; lea (%rdi,%rsi),%rax, as
// an optprobe does. It is armed before the function has ever run (no
// task can be stopped inside it), then the int3 path runs the same
// calls: the events are the same, the exit-less run takes no exit, and
// the text is byte-identical after.
func TestFastRun(t *testing.T) {
	g := miniGuest(t)
	text := g.text(t)
	const line = `p:fp/run hvwl_target_run a=%di:s64 b=%si:s64 sp=$stack`
	fast, fout, fastExits := runFastLine(t, g, line, "run:25", true, 1)
	int3, out, _ := runFastLine(t, g, line, "run:25", false, 0)
	for _, r := range []map[string]string{report(t, out, "run"), report(t, fout, "run")} {
		if num(t, r, "n") != 25 || num(t, r, "sum") != 25*24+1000*25 {
			t.Fatalf("workload: %v", r)
		}
	}
	for i, ev := range fastEvents(t, fast) {
		if ev.a != int64(i) || ev.b != 1000+int64(i) || !strings.HasPrefix(ev.where, "hvwl_target_run+0x0/") {
			t.Errorf("exit-less event %d: %v, want a=%d b=%d", i, ev, i, 1000+i)
		}
	}
	checkSame(t, int3, fast)
	if fastExits != 0 {
		t.Errorf("%d debug exits on the exit-less path", fastExits)
	}
	if after := g.text(t); !bytes.Equal(after, text) {
		t.Fatal("kernel text differs after the exit-less run was removed")
	}
}

// TestFastLost: with 4 records per ring, 400 calls fill the ring between
// two drains (session.fastPoll apart), and the hits that find it full are counted:
// drained events plus lost events equal the calls the workload made,
// exactly.
func TestFastLost(t *testing.T) {
	miniGuest(t) // the snapshot exists once the shared guest has booted
	path, err := snapshotPath(1)
	if err != nil {
		t.Fatal(err)
	}
	g, err := restoreMini(path, 1, "fastlost", func(o *session.Options) { o.FastRecords = 4 })
	if err != nil {
		t.Fatal(err)
	}
	defer g.stop()
	defs := parseDefs(t, fastLine)
	defs[0].Fast = true
	var log eventLog
	dp, err := g.s.AddDefs(g.a, defs, log.add)
	if err != nil {
		t.Fatal(err)
	}
	if len(dp.FastProbes()) != 1 {
		t.Fatal("not armed exit-less")
	}
	out := g.run(t, "fentry:400")
	dp.Flush()
	p := dp.FastProbes()[0]
	n := num(t, report(t, out, "fentry"), "n")
	t.Logf("%d calls: %d events, %d lost; %v", n, len(log.all()), p.Lost(), dp.Stats())
	if err := dp.Remove(); err != nil {
		t.Fatal(err)
	}
	if got := uint64(len(log.all())); got+p.Lost() != uint64(n) || got != p.Hits() {
		t.Fatalf("%d events + %d lost != %d calls (hits %d)", got, p.Lost(), n, p.Hits())
	}
	if p.Lost() == 0 {
		t.Fatalf("nothing lost in %d calls with 4-record rings", n)
	}
}
