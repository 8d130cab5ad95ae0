package main

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"github.com/hvprobe/hvprobe/kprobes/probedef"
	"github.com/hvprobe/hvprobe/session"
)

// analysis is --filter and --hist: per-event filters, evaluated on the
// host for each hit, and ftrace hist triggers, whose events are counted
// into their table instead of printed.
type analysis struct {
	filters map[*probedef.Def][]*probedef.Filter
	hists   map[*probedef.Def][]*probedef.Hist
	order   []*probedef.Hist // as given, for printing
}

// newAnalysis parses every --filter and --hist against the definitions
// and returns all the bad ones at once, rendered with a caret.
func newAnalysis(defs []*probedef.Def, filters, hists []string) (*analysis, []string) {
	a := &analysis{filters: map[*probedef.Def][]*probedef.Filter{}, hists: map[*probedef.Def][]*probedef.Hist{}}
	var bad []string
	each := func(flag, value string, add func(d *probedef.Def, body string) error) {
		name, body, ok := strings.Cut(value, ":")
		d := eventDef(defs, name)
		switch {
		case !ok:
			bad = append(bad, fmt.Sprintf("hvprobe: --%s %q: want EVENT:%s", flag, value, strings.ToUpper(flag)))
			return
		case d == nil:
			bad = append(bad, fmt.Sprintf("hvprobe: --%s %q: no probe definition makes event %q", flag, value, name))
			return
		}
		err := add(d, body)
		var se *probedef.SyntaxError
		switch {
		case errors.As(err, &se):
			// The caret points into the flag's whole value.
			e := *se
			e.Input, e.Col = value, se.Col+len(name)+1
			bad = append(bad, e.Render("hvprobe: --"+flag+" "))
		case err != nil:
			bad = append(bad, fmt.Sprintf("hvprobe: --%s %q: %v", flag, value, err))
		}
	}
	for _, v := range filters {
		each("filter", v, func(d *probedef.Def, body string) error {
			f, err := probedef.ParseFilter(d, body)
			if err == nil {
				a.filters[d] = append(a.filters[d], f)
			}
			return err
		})
	}
	for _, v := range hists {
		each("hist", v, func(d *probedef.Def, body string) error {
			h, err := probedef.ParseHist(d, body)
			if err == nil {
				a.hists[d] = append(a.hists[d], h)
				a.order = append(a.order, h)
				d.Stack = d.Stack || strings.Contains(body, "stacktrace")
			}
			return err
		})
	}
	return a, bad
}

// eventDef is the definition making event name (EVENT or GROUP/EVENT).
func eventDef(defs []*probedef.Def, name string) *probedef.Def {
	for _, d := range defs {
		if d.Event == name || d.Group+"/"+d.Event == name {
			return d
		}
	}
	return nil
}

// wrap puts the filters and hists in front of emit.
func (a *analysis) wrap(emit func(probedef.Event)) func(probedef.Event) {
	if len(a.filters) == 0 && len(a.hists) == 0 {
		return emit
	}
	return func(ev probedef.Event) {
		for _, f := range a.filters[ev.Def] {
			if !f.Match(ev) {
				return
			}
		}
		if hs := a.hists[ev.Def]; len(hs) > 0 {
			for _, h := range hs {
				h.Add(ev)
			}
			return
		}
		emit(ev)
	}
}

// symbolize gives the hists the running kernel's symbols (.sym keys,
// stacktrace); it runs at attach, before the first event.
func (a *analysis) symbolize(k *session.RunningKernel) {
	for _, h := range a.order {
		h.Syms = kernelSyms{k}
	}
}

// kernelSyms is a running kernel as probedef.Symbols.
type kernelSyms struct{ k *session.RunningKernel }

func (s kernelSyms) Address(name string) (uint64, error) { return s.k.Resolve(name, 0) }
func (s kernelSyms) Format(addr uint64) string           { return s.k.Syms.FormatAddr(addr) }

// print writes every hist table, as text or (--format json) JSON.
func (a *analysis) print(format string, p *printer) {
	for _, h := range a.order {
		var b bytes.Buffer
		var err error
		if format == "json" {
			err = h.JSON(&b)
		} else {
			err = h.Text(&b)
		}
		if err != nil {
			p.printf("hvprobe: hist: %v", err)
			continue
		}
		p.printf("%s", strings.TrimRight(b.String(), "\n"))
	}
}
