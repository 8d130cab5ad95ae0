package runner

import (
	"errors"
	"fmt"
	"strings"

	"github.com/hvprobe/hvprobe/probedef"
)

// expand replaces each line whose symbol is a pattern (p:grp/ vfs_*) by
// the same line on every function it matches that can be probed, and
// reports the count and every refused match. A pattern no probe-able
// function matches is a bad line (probedef.SyntaxErrors).
func (c *Catalog) expand(defs []*probedef.Def, status *printer) ([]*probedef.Def, error) {
	var out []*probedef.Def
	var bad probedef.SyntaxErrors
	for _, d := range defs {
		if d.Symbol == "" || !probedef.IsGlob(d.Symbol) {
			out = append(out, d)
			continue
		}
		names := c.Functions(d.Symbol)
		var refused []string
		n := 0
		for _, e := range probedef.Expand(d, names) {
			if _, err := c.ik.CheckDefs([]*probedef.Def{e}); err != nil {
				refused = append(refused, fmt.Sprintf("%s (%s)", e.Symbol, reasonOf(err)))
				continue
			}
			out = append(out, e)
			n++
		}
		if n == 0 {
			msg := fmt.Errorf("no function matches %q", d.Symbol)
			if len(refused) > 0 {
				msg = fmt.Errorf("none of the %d functions matching %q can be probed: %s", len(names), d.Symbol, strings.Join(refused, "; "))
			}
			bad = append(bad, d.Error(d.SymbolCol(), msg))
			continue
		}
		status.printf("hvprobe: %s: %d functions match, %d probed, %d refused", d.Text, len(names), n, len(refused))
		for _, r := range refused {
			status.printf("hvprobe:   refused %s", r)
		}
	}
	if len(bad) > 0 {
		return out, bad
	}
	return out, nil
}

// reasonOf is a refusal's message without its line and caret.
func reasonOf(err error) string {
	var se probedef.SyntaxErrors
	if errors.As(err, &se) && len(se) > 0 {
		return se[0].Msg
	}
	return err.Error()
}
