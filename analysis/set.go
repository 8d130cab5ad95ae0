package analysis

import (
	"bytes"
	"fmt"
	"strings"
	"sync"

	"github.com/hvprobe/hvprobe/probedef"
)

// Set is what is done with events on the host beyond printing them:
// ftrace event filters, which drop the hits that do not match, and hist
// triggers, which count their event's hits into a table instead of
// passing them on. Both are keyed by event name (EVENT or GROUP/EVENT) and
// may be added and removed while events flow (the control socket's
// filter and hist commands); Wrap applies them.
type Set struct {
	mu      sync.RWMutex
	defs    map[string]*probedef.Def // the first of each event, by EVENT and GROUP/EVENT
	filters map[string][]*Filter     // by GROUP/EVENT: every probe point of the event
	hists   map[string][]*Hist
	order   []*Hist // as added, for printing
	syms    probedef.Symbols
	tap     func(probedef.Event)
}

// NewSet knows the events of defs; Define adds more.
func NewSet(defs []*probedef.Def) *Set {
	a := &Set{defs: map[string]*probedef.Def{}, filters: map[string][]*Filter{}, hists: map[string][]*Hist{}}
	for _, d := range defs {
		a.Define(d)
	}
	return a
}

// Define makes d's event known by name; a later definition of the same
// event is another probe point of it (probedef.Merge), with the same
// fields.
func (a *Set) Define(d *probedef.Def) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.defs[key(d)]; ok {
		return
	}
	a.defs[d.Event] = d
	a.defs[key(d)] = d
}

// key names d's event in the filter and hist maps.
func key(d *probedef.Def) string { return d.Group + "/" + d.Event }

// Forget drops d's event, with its filters and hists.
func (a *Set) Forget(d *probedef.Def) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for name, x := range a.defs {
		if key(x) == key(d) {
			delete(a.defs, name)
		}
	}
	a.dropHists(key(d))
	delete(a.filters, key(d))
}

// Def is the definition making event name.
func (a *Set) Def(name string) (*probedef.Def, error) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	if d, ok := a.defs[name]; ok {
		return d, nil
	}
	return nil, fmt.Errorf("no probe definition makes event %q", name)
}

// AddFilter adds an ftrace filter on event's hits; an error is a
// *probedef.SyntaxError pointing into expr, or names the event.
func (a *Set) AddFilter(event, expr string) error {
	d, err := a.Def(event)
	if err != nil {
		return err
	}
	f, err := ParseFilter(d, expr)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.filters[key(d)] = append(a.filters[key(d)], f)
	return nil
}

// ClearFilters removes event's filters.
func (a *Set) ClearFilters(event string) error {
	d, err := a.Def(event)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.filters, key(d))
	return nil
}

// AddHist adds an ftrace hist trigger (hist:keys=...) on event; from
// now on its hits are counted there instead of passed on. A stacktrace
// key needs an event defined with Def.Stack.
func (a *Set) AddHist(event, spec string) error {
	d, err := a.Def(event)
	if err != nil {
		return err
	}
	h, err := ParseHist(d, spec)
	if err != nil {
		return err
	}
	if KeysOnStack(spec) && !d.Stack {
		return fmt.Errorf("event %q carries no stacks: a stacktrace key needs it armed with stacks (--stacktrace)", event)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	h.Syms = a.syms
	a.hists[key(d)] = append(a.hists[key(d)], h)
	a.order = append(a.order, h)
	return nil
}

// KeysOnStack reports whether a hist spec keys on stacktrace, which its
// event's definition must know before it is armed (Def.Stack).
func KeysOnStack(spec string) bool { return strings.Contains(spec, "stacktrace") }

// RemoveHists drops event's hists: its hits are passed on again.
func (a *Set) RemoveHists(event string) error {
	d, err := a.Def(event)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.dropHists(key(d))
	return nil
}

func (a *Set) dropHists(k string) {
	for _, h := range a.hists[k] {
		for i, x := range a.order {
			if x == h {
				a.order = append(a.order[:i], a.order[i+1:]...)
				break
			}
		}
	}
	delete(a.hists, k)
}

// Symbolize gives the hists, present and later, the running kernel's
// symbols (.sym keys, stacktrace). Call it at attach, before events.
func (a *Set) Symbolize(syms probedef.Symbols) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.syms = syms
	for _, h := range a.order {
		h.Syms = a.syms
	}
}

// Tap gives f every event that a Wrap is given, before the filters
// (run --record). Call it before events flow.
func (a *Set) Tap(f func(probedef.Event)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.tap = f
}

// Wrap puts the filters and hists in front of emit.
func (a *Set) Wrap(emit func(probedef.Event)) func(probedef.Event) {
	return func(ev probedef.Event) {
		a.mu.RLock()
		filters, hists, tap := a.filters[key(ev.Def)], a.hists[key(ev.Def)], a.tap
		a.mu.RUnlock()
		if tap != nil {
			tap(ev)
		}
		for _, f := range filters {
			if !f.Match(ev) {
				return
			}
		}
		for _, h := range hists {
			h.Add(ev)
		}
		if len(hists) == 0 {
			emit(ev)
		}
	}
}

// Tables renders the hists of event ("" for all), as ftrace's hist file
// or, with json, as JSON.
func (a *Set) Tables(event string, json bool) ([]string, error) {
	a.mu.RLock()
	hists := a.order
	if event != "" {
		d, ok := a.defs[event]
		if !ok {
			a.mu.RUnlock()
			return nil, fmt.Errorf("no probe definition makes event %q", event)
		}
		hists = a.hists[key(d)]
	}
	hists = append([]*Hist(nil), hists...)
	a.mu.RUnlock()
	var out []string
	for _, h := range hists {
		var b bytes.Buffer
		var err error
		if json {
			err = h.JSON(&b)
		} else {
			err = h.Text(&b)
		}
		if err != nil {
			return out, err
		}
		out = append(out, strings.Split(strings.TrimRight(b.String(), "\n"), "\n")...)
	}
	return out, nil
}
