package runner

import (
	"errors"
	"fmt"
	"strings"

	"github.com/hvprobe/hvprobe/analysis"
	"github.com/hvprobe/hvprobe/probedef"
)

// newAnalysis builds the --filter and --hist flags into a
// analysis.Set over defs and returns all the bad ones at once,
// rendered with a caret under the fault in the flag's value. A hist keyed
// on stacktrace makes its event's definition carry stacks when arming
// (a run); report's definitions have them or not.
func newAnalysis(defs []*probedef.Def, filters, hists []string, arming bool) (*analysis.Set, []string) {
	an := analysis.NewSet(defs)
	var bad []string
	each := func(flag, value string, add func(event, body string) error) {
		event, body, ok := strings.Cut(value, ":")
		if !ok {
			bad = append(bad, fmt.Sprintf("hvprobe: --%s %q: want EVENT:%s", flag, value, strings.ToUpper(flag)))
			return
		}
		err := add(event, body)
		var se *probedef.SyntaxError
		switch {
		case errors.As(err, &se):
			e := *se
			e.Input, e.Col = value, se.Col+len(event)+1
			bad = append(bad, e.Render("hvprobe: --"+flag+" "))
		case err != nil:
			bad = append(bad, fmt.Sprintf("hvprobe: --%s %q: %v", flag, value, err))
		}
	}
	for _, v := range filters {
		each("filter", v, an.AddFilter)
	}
	for _, v := range hists {
		each("hist", v, func(event, spec string) error {
			if first, err := an.Def(event); err == nil && arming && analysis.KeysOnStack(spec) {
				for _, d := range defs { // every probe point of the event
					if d.Group == first.Group && d.Event == first.Event {
						d.Stack = true
					}
				}
			}
			return an.AddHist(event, spec)
		})
	}
	return an, bad
}

// printHists writes every hist table, as text or (--format json) JSON.
func printHists(an *analysis.Set, format string, p, status *printer) {
	lines, err := an.Tables("", format == "json")
	for _, l := range lines {
		p.printf("%s", l)
	}
	if err != nil {
		status.printf("hvprobe: hist: %v", err)
	}
}
