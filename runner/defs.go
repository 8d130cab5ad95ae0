package runner

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"

	"github.com/hvprobe/hvprobe/probedef"
)

// readDefs parses --probe lines and a --probes file, then merges them
// (probedef.Merge). Bad lines come
// back as one probedef.SyntaxErrors (--probe lines with Line 0), next to
// every good definition, so that all of them can be checked and reported
// at once.
func readDefs(lines []string, file string) ([]*probedef.Def, error) {
	var defs []*probedef.Def
	var bad probedef.SyntaxErrors
	for _, l := range lines {
		d, err := probedef.Parse(l)
		var se *probedef.SyntaxError
		switch {
		case errors.As(err, &se):
			bad = append(bad, se)
		case err != nil:
			return nil, fmt.Errorf("--probe %q: %w", l, err)
		default:
			defs = append(defs, d)
		}
	}
	if file != "" {
		f, err := os.Open(file)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		fd, err := probedef.ParseFile(f)
		var se probedef.SyntaxErrors
		switch {
		case errors.As(err, &se):
			bad = append(bad, se...)
		case err != nil:
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		defs = append(defs, fd...)
	}
	// Deletions and probe points appended to an event, as ftrace applies
	// its lines in order.
	defs, err := probedef.Merge(defs)
	var merged probedef.SyntaxErrors
	if errors.As(err, &merged) {
		bad = append(bad, merged...)
	}
	if len(bad) > 0 {
		return defs, bad
	}
	return defs, nil
}

// eventPrinter renders events in the chosen format.
// Validate has refused any other format.
func eventPrinter(format string, p *printer) func(probedef.Event) {
	switch format {
	case "json":
		return func(ev probedef.Event) {
			b, err := probedef.FormatJSON(ev)
			if err != nil {
				p.printf(`{"error":%q}`, err.Error())
				return
			}
			p.printf("%s", strings.TrimRight(string(b), "\n"))
		}
	case "perfetto": // the events go to the trace only
		return func(probedef.Event) {}
	}
	return func(ev probedef.Event) { p.printf("%s", probedef.FormatTrace(ev)) }
}

// eventCounter aggregates events by probe and argument values (--count).
type eventCounter struct {
	mu sync.Mutex
	n  map[string]uint64
}

func (c *eventCounter) add(ev probedef.Event) {
	line := probedef.FormatTrace(ev)
	// The key is what follows the probe site: "event: (site) args".
	key := ev.Def.Event + ":"
	if i := strings.Index(line, ") "); i >= 0 {
		key += " " + line[i+2:]
	}
	c.mu.Lock()
	c.n[key]++
	c.mu.Unlock()
}

func (c *eventCounter) print(p *printer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	keys := make([]string, 0, len(c.n))
	for k := range c.n {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		p.printf("%8d %s", c.n[k], k)
	}
}
