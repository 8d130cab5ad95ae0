package probedef

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// checkTraceEvents parses a trace-event file and checks each record
// against the format's rules (Trace Event Format, "JSON Array Format"):
// name, ph, pid and tid on every record, ts on all but metadata, dur on
// complete events, a scope on instants. It returns the records.
func checkTraceEvents(t *testing.T, file string) []map[string]any {
	t.Helper()
	var recs []map[string]any
	if err := json.Unmarshal([]byte(file), &recs); err != nil {
		t.Fatalf("not a JSON array of objects: %v\n%s", err, file)
	}
	for _, r := range recs {
		_, name := r["name"].(string)
		_, pid := r["pid"].(float64)
		_, tid := r["tid"].(float64)
		ph, _ := r["ph"].(string)
		_, ts := r["ts"].(float64)
		dur, hasDur := r["dur"].(float64)
		ok := name && pid && tid
		switch ph {
		case "M":
			_, args := r["args"].(map[string]any)
			ok = ok && args
		case "X":
			ok = ok && ts && hasDur && dur >= 0
		case "i":
			ok = ok && ts && (r["s"] == "t" || r["s"] == "p" || r["s"] == "g")
		default:
			ok = false
		}
		if !ok {
			t.Errorf("bad trace event %v", r)
		}
	}
	return recs
}

func TestPerfetto(t *testing.T) {
	p, err := Parse("p:grp/hit f a=%di:u64")
	if err != nil {
		t.Fatal(err)
	}
	r, err := Parse("r:ret f $retval:s64")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	pf := NewPerfetto(func(l string) { lines = append(lines, l) })
	if err := pf.Add(Event{Def: p, Comm: "sh", PID: 7, CPU: 1, Time: 1500 * time.Microsecond, Where: "f+0x0/0x10",
		Values: []Value{{Name: "a", Type: Type{Base: U64}, U64: 5}}}); err != nil {
		t.Fatal(err)
	}
	if err := pf.Add(Event{Def: r, PID: -1, CPU: 0, Time: 3 * time.Millisecond, Duration: time.Millisecond, Where: "g+0x4/0x9", Func: "f",
		Values: []Value{{Name: "arg1", Type: Type{Base: S64}, S64: -2}}}); err != nil {
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
