package analysis

import (
	"encoding/json"
	"fmt"
	"sort"
	"sync"

	"github.com/hvprobe/hvprobe/probedef"
)

// Perfetto renders events as a Chrome trace-event file (the JSON Array
// Format), which ui.perfetto.dev and chrome://tracing open: return probes
// become slices ("ph":"X") from function entry to return, other probes
// instants ("ph":"i"). Every event is drawn twice, on its vCPU's track
// (process "guest vCPUs", a thread per vCPU) and on its task's (process
// "guest tasks", a thread per guest pid) when the task is known.
// Add is safe for concurrent use; Close writes the track names and ends
// the array.
type Perfetto struct {
	mu    sync.Mutex
	emit  func(line string)
	begun bool
	cpus  map[int]bool
	tasks map[int]string
}

// Track-group process ids of the trace file.
const (
	perfettoCPUs  = 1
	perfettoTasks = 2
)

// NewPerfetto writes the file through emit, one line at a time.
func NewPerfetto(emit func(line string)) *Perfetto {
	return &Perfetto{emit: emit, cpus: map[int]bool{}, tasks: map[int]string{}}
}

// traceEvent is one record of the trace-event format.
type traceEvent struct {
	Name  string   `json:"name"`
	Cat   string   `json:"cat,omitempty"`
	Ph    string   `json:"ph"`
	TS    float64  `json:"ts"` // µs
	Dur   *float64 `json:"dur,omitempty"`
	Scope string   `json:"s,omitempty"`
	PID   int      `json:"pid"`
	TID   int      `json:"tid"`
	Args  any      `json:"args,omitempty"`
}

// Add appends ev to the file.
func (p *Perfetto) Add(ev probedef.Event) error {
	args := map[string]any{"where": ev.Where}
	for _, v := range ev.Values {
		args[v.Name] = v.JSON()
	}
	if ev.Stack != nil {
		args["stack"] = probedef.StackWhere(ev.Stack)
	}
	te := traceEvent{Name: ev.Def.Event, Cat: ev.Def.Group, Ph: "i", Scope: "t", Args: args,
		TS: float64(ev.Time.Nanoseconds()) / 1e3}
	if ev.Def.Kind == probedef.Retprobe {
		dur := float64(ev.Duration.Nanoseconds()) / 1e3
		te.Ph, te.Scope, te.TS, te.Dur = "X", "", te.TS-dur, &dur
		args["func"] = ev.Func
	}
	var lines []string
	for _, track := range []struct{ pid, tid int }{{perfettoCPUs, ev.CPU}, {perfettoTasks, ev.PID}} {
		if track.pid == perfettoTasks && ev.PID < 0 {
			continue
		}
		te.PID, te.TID = track.pid, track.tid
		b, err := json.Marshal(te)
		if err != nil {
			return fmt.Errorf("perfetto event %s: %w", ev.Def.Event, err)
		}
		lines = append(lines, string(b)+",")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.begin()
	p.cpus[ev.CPU] = true
	if ev.PID >= 0 {
		p.tasks[ev.PID] = ev.Comm
	}
	for _, l := range lines {
		p.emit(l)
	}
	return nil
}

func (p *Perfetto) begin() {
	if !p.begun {
		p.emit("[")
		p.begun = true
	}
}

// Close names the tracks and ends the array.
func (p *Perfetto) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.begin()
	meta := func(name string, pid, tid int, value string) string {
		b, _ := json.Marshal(map[string]any{"name": name, "ph": "M", "pid": pid, "tid": tid, "args": map[string]string{"name": value}})
		return string(b)
	}
	lines := []string{meta("process_name", perfettoCPUs, 0, "guest vCPUs"), meta("process_name", perfettoTasks, 0, "guest tasks")}
	for _, cpu := range sortedKeys(p.cpus) {
		lines = append(lines, meta("thread_name", perfettoCPUs, cpu, fmt.Sprintf("vCPU %d", cpu)))
	}
	for _, pid := range sortedKeys(p.tasks) {
		comm := p.tasks[pid]
		if comm == "" {
			comm = "<...>"
		}
		lines = append(lines, meta("thread_name", perfettoTasks, pid, fmt.Sprintf("%s-%d", comm, pid)))
	}
	for i, l := range lines {
		if i < len(lines)-1 {
			l += ","
		}
		p.emit(l)
	}
	p.emit("]")
}

func sortedKeys[V any](m map[int]V) []int {
	keys := make([]int, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	return keys
}
