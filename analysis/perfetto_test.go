package analysis

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/hvprobe/hvprobe/probedef"

	"github.com/hvprobe/hvprobe/tests/traceevent"
)

// checkTraceEvents checks a trace-event file against the Trace Event
// Format's JSON Schema (tests/traceevent) and returns its records.
func checkTraceEvents(t *testing.T, file string) []map[string]any {
	t.Helper()
	if err := traceevent.Validate([]byte(file)); err != nil {
		t.Fatalf("trace-event schema: %v\n%s", err, file)
	}
	var recs []map[string]any
	if err := json.Unmarshal([]byte(file), &recs); err != nil {
		t.Fatal(err)
	}
	return recs
}

func TestPerfetto(t *testing.T) {
	p, err := probedef.Parse("p:grp/hit f a=%di:u64")
	if err != nil {
		t.Fatal(err)
	}
	r, err := probedef.Parse("r:ret f $retval:s64")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	pf := NewPerfetto(func(l string) { lines = append(lines, l) })
	if err := pf.Add(probedef.Event{Def: p, Comm: "sh", PID: 7, CPU: 1, Time: 1500 * time.Microsecond, Where: "f+0x0/0x10",
		Values: []probedef.Value{{Name: "a", Type: probedef.Type{Base: probedef.U64}, U64: 5}}}); err != nil {
		t.Fatal(err)
	}
	if err := pf.Add(probedef.Event{Def: r, PID: -1, CPU: 0, Time: 3 * time.Millisecond, Duration: time.Millisecond, Where: "g+0x4/0x9", Func: "f",
		Values: []probedef.Value{{Name: "arg1", Type: probedef.Type{Base: probedef.S64}, S64: -2}}}); err != nil {
		t.Fatal(err)
	}
	pf.Close()
	recs := checkTraceEvents(t, strings.Join(lines, "\n"))
	// The kprobe twice (vCPU and task tracks), the kretprobe once (its
	// task unknown), names of 2 processes, 2 vCPUs and 1 task.
	if len(recs) != 3+5 {
		t.Fatalf("%d records:\n%s", len(recs), strings.Join(lines, "\n"))
	}
	hit, ret := recs[0], recs[2]
	if hit["ph"] != "i" || hit["ts"] != 1500.0 || hit["tid"] != 1.0 || hit["args"].(map[string]any)["a"] != 5.0 || recs[1]["tid"] != 7.0 {
		t.Errorf("instant %v / %v", hit, recs[1])
	}
	if ret["ph"] != "X" || ret["ts"] != 2000.0 || ret["dur"] != 1000.0 || ret["args"].(map[string]any)["arg1"] != -2.0 {
		t.Errorf("slice %v", ret)
	}
	if !strings.Contains(strings.Join(lines, "\n"), `"args":{"name":"sh-7"}`) {
		t.Errorf("no track for task sh-7:\n%s", strings.Join(lines, "\n"))
	}
}
