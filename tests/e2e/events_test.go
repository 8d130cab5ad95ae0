package e2e

import (
	"sync"
	"testing"

	"github.com/hvprobe/hvprobe/probedef"
)

// parseDefs parses probe definition lines, failing the test on any.
func parseDefs(t testing.TB, lines ...string) []*probedef.Def {
	t.Helper()
	defs := make([]*probedef.Def, 0, len(lines))
	for _, l := range lines {
		d, err := probedef.Parse(l)
		if err != nil {
			t.Fatalf("probe line %q: %v", l, err)
		}
		defs = append(defs, d)
	}
	return defs
}

// eventLog collects events from the vCPU threads that emit them.
type eventLog struct {
	mu  sync.Mutex
	evs []probedef.Event
}

func (l *eventLog) add(ev probedef.Event) {
	l.mu.Lock()
	l.evs = append(l.evs, ev)
	l.mu.Unlock()
}

// all is a copy of the events so far.
func (l *eventLog) all() []probedef.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]probedef.Event(nil), l.evs...)
}
