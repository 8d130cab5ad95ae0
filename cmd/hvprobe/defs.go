package main

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"

	"github.com/hvprobe/hvprobe/kprobes/probedef"
)

// readDefs parses --probe lines and a --probes file; a bad line anywhere
// fails the whole set before anything is armed.
func readDefs(lines []string, file string) ([]*probedef.Def, error) {
	var defs []*probedef.Def
	var errs []error
	for _, l := range lines {
		d, err := probedef.Parse(l)
		if err != nil {
			errs = append(errs, fmt.Errorf("--probe: %w", err))
			continue
		}
		defs = append(defs, d)
	}
	if file != "" {
		f, err := os.Open(file)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		fd, err := probedef.ParseFile(f)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", file, err))
		}
		defs = append(defs, fd...)
	}
	return defs, errors.Join(errs...)
}

// eventPrinter renders events in the chosen format.
func eventPrinter(format string, p *printer) (func(probedef.Event), error) {
	switch format {
	case "trace":
		return func(ev probedef.Event) { p.printf("%s", probedef.FormatTrace(ev)) }, nil
	case "json":
		return func(ev probedef.Event) {
			b, err := probedef.FormatJSON(ev)
			if err != nil {
				p.printf(`{"error":%q}`, err.Error())
				return
			}
			p.printf("%s", strings.TrimRight(string(b), "\n"))
		}, nil
	}
	return nil, fmt.Errorf("--format: %q is not trace or json", format)
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
