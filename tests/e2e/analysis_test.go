package e2e

import (
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hvprobe/hvprobe/analysis"
	"github.com/hvprobe/hvprobe/bench"
	"github.com/hvprobe/hvprobe/probedef"
	"github.com/hvprobe/hvprobe/tests/traceevent"
)

// TestFilterPassesExactCalls: an ftrace filter on hvwl_target_add's
// arguments passes exactly the calls the workload made that satisfy it
// (calls:N calls add(i, 1000+i) for i < N, as it reports), and a hist
// over the same hits counts each of them.
func TestFilterPassesExactCalls(t *testing.T) {
	g := miniGuest(t)
	d := parseDefs(t, `p:an/add hvwl_target_add a=%di:s64 b=%si:s64`)[0]
	f, err := analysis.ParseFilter(d, `(a >= 3 && b < 1005) || a == 9 || !(a < 11)`)
	if err != nil {
		t.Fatal(err)
	}
	h, err := analysis.ParseHist(d, `hist:keys=a:vals=b:sort=a`)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var passed []int64
	dp, err := g.s.AddDefs(g.a, []*probedef.Def{d}, func(ev probedef.Event) {
		h.Add(ev)
		if f.Match(ev) {
			mu.Lock()
			passed = append(passed, ev.Values[0].S64)
			mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Remove()
	out := g.run(t, "calls:12")
	n := num(t, report(t, out, "calls"), "n")
	var want []int64
	for i := int64(0); i < n; i++ {
		if (i >= 3 && 1000+i < 1005) || i == 9 || i >= 11 {
			want = append(want, i)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(passed) != len(want) {
		t.Fatalf("filter passed a=%v; the workload's calls that match are a=%v", passed, want)
	}
	for i := range want {
		if passed[i] != want[i] {
			t.Fatalf("filter passed a=%v; the workload's calls that match are a=%v", passed, want)
		}
	}
	var b strings.Builder
	if err := h.Text(&b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "Hits: 12") || !strings.Contains(b.String(), "Entries: 12") ||
		!strings.Contains(b.String(), "{ a:          5 } hitcount:          1  b:       1005") {
		t.Errorf("hist:\n%s", b.String())
	}
}

// TestStackTraces: the kernel stack of each hit in hvwl_recurse, unwound
// on the host, shows one hvwl_recurse frame per active call (depth D-k+1
// for the call with argument k) and then its callers, with a
// kretprobe on the same function: its trampoline, which replaces every
// active frame's return address, is shown as the real return address.
func TestStackTraces(t *testing.T) {
	g := miniGuest(t)
	defs := parseDefs(t, `p:an/rec hvwl_recurse depth=%di:s64`, `r:an/recret hvwl_recurse depth=$arg1:s64`)
	for _, d := range defs {
		d.Stack = true
	}
	var log eventLog
	dp, err := g.s.AddDefs(g.a, defs, log.add)
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Remove()
	const depth = 5
	out := g.run(t, "recurse:5")
	if calls := num(t, report(t, out, "recurse"), "calls"); calls != depth+1 {
		t.Fatalf("workload made %d calls", calls)
	}
	events := log.all()
	entries, returns := 0, 0
	for _, ev := range events {
		var where []string
		for _, f := range ev.Stack {
			where = append(where, f.Where)
		}
		lead := 0
		for lead < len(where) && strings.HasPrefix(where[lead], "hvwl_recurse+") {
			lead++
		}
		var want int
		switch ev.Def.Event {
		case "rec":
			entries++
			want = depth - int(ev.Values[0].S64) + 1
			if len(where) == 0 || !strings.HasPrefix(where[0], "hvwl_recurse+0x0/") {
				t.Errorf("entry stack starts %q", where)
			}
		case "recret":
			// At the return the callee's frame is gone: the stack is the
			// caller's, at the return address.
			returns++
			want = depth - int(ev.Values[0].S64)
		}
		if lead != want || lead >= len(where) || !strings.HasPrefix(where[lead], "hvwl_run_one+") ||
			!strings.HasPrefix(where[len(where)-1], "ret_from_fork+") {
			t.Errorf("%s %s: %d hvwl_recurse frames (want %d) in stack %q", ev.Def.Event, probedef.FormatValue(ev.Values[0]), lead, want, where)
		}
		for _, w := range where {
			if !strings.Contains(w, "+0x") {
				t.Errorf("frame %q is no kernel symbol (a trampoline left in?) in %q", w, where)
			}
		}
	}
	if entries != depth+1 || returns != depth+1 {
		t.Fatalf("%d entry and %d return events, want %d each", entries, returns, depth+1)
	}
	t.Logf("e.g.\n%s", probedef.FormatTrace(events[len(events)-1]))
}

// TestHistDistributions: hists over return probes give exactly the
// workload's distributions. hvwl_target_ret(x) returns 3x+1 for each x
// below the ret:N count, so a hist keyed on $retval has those N keys once
// each; block:MS sleeps MS ms in hvwl_target_block, so a duration.log2
// hist puts every call in the bucket of MS ms. Each is compared with the
// same hist fed the ideal events.
func TestHistDistributions(t *testing.T) {
	g := miniGuest(t)
	defs := parseDefs(t, `r:an/ret hvwl_target_ret ret=$retval:s64`, `r:an/block hvwl_target_block ms=$retval:s64`)
	spec := []string{"hist:keys=ret:sort=ret", "hist:keys=duration.log2"}
	var real, ideal [2]*analysis.Hist
	for i := range defs {
		var err error
		if real[i], err = analysis.ParseHist(defs[i], spec[i]); err != nil {
			t.Fatal(err)
		}
		if ideal[i], err = analysis.ParseHist(defs[i], spec[i]); err != nil {
			t.Fatal(err)
		}
	}
	dp, err := g.s.AddDefs(g.a, defs, func(ev probedef.Event) {
		real[slices.Index(defs, ev.Def)].Add(ev)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Remove()
	// The blocks' durations are the guest's own: a sleep of 300 ms can
	// take a second on a loaded host (docs/QUIRKS.md #48).
	const ms, blocks = 300, 3
	out := g.run(t, "ret:9,block:300,block:300,block:300")
	n := num(t, report(t, out, "ret"), "n")
	var slept []time.Duration
	for _, l := range out {
		if r, err := bench.FindReport([]string{l}, "block"); err == nil {
			slept = append(slept, time.Duration(num(t, r.Fields, "ns")))
		}
	}
	if len(slept) != blocks {
		t.Fatalf("%d block reports, want %d", len(slept), blocks)
	}
	value := func(d *probedef.Def, v int64) probedef.Value {
		return probedef.Value{Name: d.Args[0].Name, Type: d.Args[0].Type, S64: v, U64: uint64(v)}
	}
	for x := int64(0); x < n; x++ {
		ideal[0].Add(probedef.Event{Def: defs[0], Values: []probedef.Value{value(defs[0], 3*x+1)}})
	}
	for _, d := range slept {
		ideal[1].Add(probedef.Event{Def: defs[1], Duration: d, Values: []probedef.Value{value(defs[1], ms)}})
	}
	for i := range defs {
		var got, want strings.Builder
		if err := real[i].Text(&got); err != nil {
			t.Fatal(err)
		}
		if err := ideal[i].Text(&want); err != nil {
			t.Fatal(err)
		}
		if got.String() != want.String() {
			t.Errorf("%s:\n%s\nthe workload's distribution:\n%s", spec[i], got.String(), want.String())
		}
		t.Logf("%s:\n%s", spec[i], got.String())
	}
}

// TestPerfettoTimeline: the workload's calls as a Perfetto (Chrome
// trace-event) file: one slice per hvwl_target_ret call with its
// argument, one instant per hvwl_target_add call, each on its vCPU's and
// its task's track, in a file the format's JSON Schema accepts.
func TestPerfettoTimeline(t *testing.T) {
	g := miniGuest(t)
	defs := parseDefs(t, `r:an/pret hvwl_target_ret x=$arg1:s64`, `p:an/padd hvwl_target_add a=%di:s64`)
	var mu sync.Mutex
	var lines []string
	pf := analysis.NewPerfetto(func(l string) {
		mu.Lock()
		lines = append(lines, l)
		mu.Unlock()
	})
	dp, err := g.s.AddDefs(g.a, defs, func(ev probedef.Event) {
		if err := pf.Add(ev); err != nil {
			t.Error(err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	out := g.run(t, "ret:4,calls:3")
	if err := dp.Remove(); err != nil {
		t.Fatal(err)
	}
	pf.Close()
	rets, calls := num(t, report(t, out, "ret"), "n"), num(t, report(t, out, "calls"), "n")
	mu.Lock()
	defer mu.Unlock()
	var recs []struct {
		Name, Ph, S string
		TS, Dur     *float64
		PID, TID    *int
		Args        map[string]any
	}
	file := []byte(strings.Join(lines, "\n"))
	if err := traceevent.Validate(file); err != nil {
		t.Fatalf("trace-event schema: %v", err)
	}
	if err := json.Unmarshal(file, &recs); err != nil {
		t.Fatal(err)
	}
	spans, instants := map[int][]float64{}, map[int][]float64{}
	tracks := map[string]bool{}
	for _, r := range recs {
		if r.PID == nil || r.TID == nil || r.Name == "" {
			t.Fatalf("record without name, pid or tid: %+v", r)
		}
		switch r.Ph {
		case "X":
			if r.TS == nil || r.Dur == nil || *r.Dur <= 0 {
				t.Errorf("slice without ts or a positive dur: %+v", r)
			}
			spans[*r.PID] = append(spans[*r.PID], r.Args["x"].(float64))
		case "i":
			if r.TS == nil || r.S != "t" {
				t.Errorf("instant without ts or thread scope: %+v", r)
			}
			instants[*r.PID] = append(instants[*r.PID], r.Args["a"].(float64))
		case "M":
			tracks[r.Args["name"].(string)] = true
		default:
			t.Errorf("record of phase %q", r.Ph)
		}
	}
	for pid := 1; pid <= 2; pid++ { // the vCPU tracks, then the task tracks
		if int64(len(spans[pid])) != rets || int64(len(instants[pid])) != calls {
			t.Errorf("process %d: %d slices, %d instants; the workload made %d and %d calls", pid, len(spans[pid]), len(instants[pid]), rets, calls)
		}
		for i, x := range spans[pid] {
			if x != float64(i) {
				t.Errorf("slice %d has x=%v", i, x)
			}
		}
	}
	if !tracks["guest vCPUs"] || !tracks["guest tasks"] || !tracks["vCPU 0"] || !tracks["swapper/0-1"] {
		t.Errorf("track names %v", tracks)
	}
}

// TestMultiProbeEvent: two probe points appended to one event (ftrace's
// multi-probe events) give that event's hits at both sites, as many as
// the workload made calls to each, and a filter on the event covers both.
func TestMultiProbeEvent(t *testing.T) {
	g := miniGuest(t)
	defs, err := probedef.Merge(parseDefs(t, `p:an/two hvwl_target_add x=%di:s64`, `p:an/two hvwl_target_ret x=%di:s64`))
	if err != nil || len(defs) != 2 {
		t.Fatalf("merge: %d defs, %v", len(defs), err)
	}
	an := analysis.NewSet(defs)
	if err := an.AddFilter("two", "x >= 1"); err != nil {
		t.Fatal(err)
	}
	var log eventLog
	dp, err := g.s.AddDefs(g.a, defs, an.Wrap(log.add))
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Remove()
	out := g.run(t, "calls:4,ret:3")
	calls, rets := num(t, report(t, out, "calls"), "n"), num(t, report(t, out, "ret"), "n")
	at := map[string]int64{}
	for _, ev := range log.all() {
		if ev.Def.Event != "two" || ev.Values[0].S64 < 1 {
			t.Errorf("event %s passed", probedef.FormatTrace(ev))
		}
		fn, _, _ := strings.Cut(ev.Where, "+")
		at[fn]++
	}
	// x is the first argument, 0..n-1 at each site: the filter drops x=0.
	if at["hvwl_target_add"] != calls-1 || at["hvwl_target_ret"] != rets-1 {
		t.Errorf("event hits by site %v; the workload made %d and %d calls", at, calls, rets)
	}
}
