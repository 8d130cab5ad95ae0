package e2e

import (
	"slices"
	"strings"
	"testing"

	"github.com/hvprobe/hvprobe/probedef"
)

// TestProbeDefinitions: ftrace kprobe_events lines on the kernel's
// file-open path and a return probe, checked against the paths and return
// values the workload reports; removing them stops the events.
func TestProbeDefinitions(t *testing.T) {
	g := miniGuest(t)
	defs := parseDefs(t,
		`p:hvprobe/open do_filp_open path=+0(+0(%si)):string`,
		`r:hvprobe/ret hvwl_target_ret ret=$retval:s64 x=$arg1:s64`)
	// Other kernel code opens files too (the initramfs unpacker may still
	// run): the workload's opens are those with a workload frame.
	defs[0].Stack = true
	var log eventLog
	dp, err := g.s.AddDefs(g.a, defs, log.add)
	if err != nil {
		t.Fatal(err)
	}
	out := g.run(t, "fileread:7,ret:5")
	fr, rr := report(t, out, "fileread"), report(t, out, "ret")
	if err := dp.Remove(); err != nil {
		t.Fatal(err)
	}
	got := log.all()
	opens, rets := 0, 0
	var sum int64
	var first probedef.Event
	for _, ev := range got {
		switch ev.Def.Event {
		case "open":
			if !slices.ContainsFunc(ev.Stack, func(f probedef.Frame) bool { return strings.HasPrefix(f.Where, "hvwl_") }) {
				continue
			}
			if ev.Values[0].Str != fr["path"] {
				t.Errorf("open event with path %q, the workload opened only %q", ev.Values[0].Str, fr["path"])
			}
			if opens == 0 {
				first = ev
			}
			opens++
		case "ret":
			ret, x := ev.Values[0].S64, ev.Values[1].S64
			if ret != 3*x+1 {
				t.Errorf("ret event: ret=%d for x=%d, want %d", ret, x, 3*x+1)
			}
			rets++
			sum += ret
		}
	}
	if int64(opens) != num(t, fr, "n") || int64(rets) != num(t, rr, "n") || sum != num(t, rr, "sum") {
		t.Fatalf("%d open events (workload: %s), %d ret events summing %d (workload: %s, sum %s)", opens, fr["n"], rets, sum, rr["n"], rr["sum"])
	}
	line := probedef.FormatTrace(first)
	if !strings.Contains(line, `open: (do_filp_open+0x0/`) || !strings.Contains(line, `path="/hvwl/data.txt"`) {
		t.Errorf("trace line %q", line)
	}
	t.Logf("e.g. %s", line)
	g.run(t, "fileread:3")
	if n := len(log.all()); n != len(got) {
		t.Fatalf("%d events after the probes were removed", n-len(got))
	}
}
