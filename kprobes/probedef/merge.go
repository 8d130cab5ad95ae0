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
	var out []*Def
	var bad SyntaxErrors
	for _, d := range defs {
		if d.Kind == Delete {
			kept := out[:0:0]
			for _, x := range out {
				if x.Event != d.Event || (d.Group != "" && x.Group != d.Group) {
					kept = append(kept, x)
				}
			}
			if len(kept) == len(out) {
				bad = append(bad, d.Error(1, fmt.Errorf("no event %s to delete", d.String()[2:])))
			}
			out = kept
			continue
		}
		if err := appendable(out, d); err != nil {
			bad = append(bad, err)
			continue
		}
		out = append(out, d)
	}
	if len(bad) > 0 {
		return out, bad
	}
	return out, nil
}

// appendable checks that d may define its GROUP/EVENT after defs: a new
// event, or a new probe point of the same kind and arguments, in
// ftrace's order of checks (append_trace_kprobe).
func appendable(defs []*Def, d *Def) *SyntaxError {
	var same []*Def
	for _, x := range defs {
		if x.Group == d.Group && x.Event == d.Event {
			same = append(same, x)
		}
	}
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
	for _, x := range same {
		if x.Symbol == d.Symbol && x.Offset == d.Offset && x.Addr == d.Addr && x.Module == d.Module {
			return d.Error(1, errors.New("There is already the exact same probe event"))
		}
	}
	return nil
}
