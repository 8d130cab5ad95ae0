package probedef

import (
	"errors"
	"fmt"
)

// Merge applies a probe set in order, as ftrace applies lines written to
// kprobe_events: a -:[GRP/]EVENT line deletes the event defined by the
// lines before it (any group when none is given), and a line whose
// GROUP/EVENT is already defined appends a probe point to that event
// (ftrace's multi-probe events), which must have the same kind and the
// same argument names and types. It returns the definitions that remain,
// in order (several may share one event), and every refused line as
// SyntaxErrors with ftrace's messages.
func Merge(defs []*Def) ([]*Def, error) {
	// Indexed by event, so that a file of many lines merges in linear time.
	type evKey struct{ group, event string }
	type pointKey struct {
		ev             evKey
		symbol, module string
		offset, addr   uint64
	}
	byEvent := map[evKey][]*Def{}
	groups := map[string]map[string]bool{} // event -> its groups
	points := map[pointKey]bool{}
	gone := map[*Def]bool{}
	var out []*Def
	var bad SyntaxErrors
	for _, d := range defs {
		if d.Kind == Delete {
			gs := []string{d.Group}
			if d.Group == "" {
				gs = gs[:0]
				for g := range groups[d.Event] {
					gs = append(gs, g)
				}
			}
			n := 0
			for _, g := range gs {
				k := evKey{g, d.Event}
				for _, x := range byEvent[k] {
					gone[x] = true
					delete(points, pointKey{k, x.Symbol, x.Module, x.Offset, x.Addr})
					n++
				}
				delete(byEvent, k)
				delete(groups[d.Event], g)
			}
			if n == 0 {
				bad = append(bad, d.Error(1, fmt.Errorf("no event %s to delete", d.String()[2:])))
			}
			continue
		}
		k := evKey{d.Group, d.Event}
		pk := pointKey{k, d.Symbol, d.Module, d.Offset, d.Addr}
		if err := appendable(byEvent[k], d, points[pk]); err != nil {
			bad = append(bad, err)
			continue
		}
		byEvent[k] = append(byEvent[k], d)
		if groups[d.Event] == nil {
			groups[d.Event] = map[string]bool{}
		}
		groups[d.Event][d.Group] = true
		points[pk] = true
		out = append(out, d)
	}
	kept := out[:0]
	for _, d := range out {
		if !gone[d] {
			kept = append(kept, d)
		}
	}
	if len(bad) > 0 {
		return kept, bad
	}
	return kept, nil
}

// appendable checks that d may define its GROUP/EVENT after same, the
// definitions of that event so far (exact: one of them has d's probe
// point): a new event, or a new probe point of the same kind and
// arguments, in ftrace's order of checks (append_trace_kprobe).
func appendable(same []*Def, d *Def, exact bool) *SyntaxError {
	if len(same) == 0 {
		return nil
	}
	first := same[0]
	if first.Kind != d.Kind {
		return d.Error(1, errors.New("Probe type is different from existing probe"))
	}
	for i, a := range d.Args {
		if i >= len(first.Args) || first.Args[i].Name != a.Name || first.Args[i].Type != a.Type {
			return d.Error(d.ArgCol(a.Name), errors.New("Argument type or name is different from existing probe"))
		}
	}
	if len(d.Args) != len(first.Args) {
		return d.Error(d.SymbolCol(), errors.New("Argument type or name is different from existing probe"))
	}
	if exact {
		return d.Error(1, errors.New("There is already the exact same probe event"))
	}
	return nil
}

// Expand is d, a line whose symbol is a pattern (IsGlob), on each of
// names: the same line on each function's entry. A line that named its
// event puts every function in that event, as probe points of one event;
// one with ftrace's default event name gets each function's default.
func Expand(d *Def, names []string) []*Def {
	defaultName := d.Event == defaultEvent(d)
	out := make([]*Def, 0, len(names))
	for _, n := range names {
		e := *d
		e.Symbol = n
		e.Args = make([]Arg, len(d.Args))
		for i, a := range d.Args {
			a.Fetch = a.Fetch.clone() // BTF binds each function's own
			e.Args[i] = a
		}
		if defaultName {
			e.Event = defaultEvent(&e)
		}
		e.Text = e.String() // what reports name: this function's line
		out = append(out, &e)
	}
	return out
}

func (f *Fetch) clone() *Fetch {
	if f == nil {
		return nil
	}
	c := *f
	c.Inner = f.Inner.clone()
	c.Fields = append([]Field(nil), f.Fields...)
	return &c
}
