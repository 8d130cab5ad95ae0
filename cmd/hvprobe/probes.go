package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/hvprobe/hvprobe/guest"
	"github.com/hvprobe/hvprobe/kprobes"
	"github.com/hvprobe/hvprobe/session"
)

// probeSet is what the --kprobe/--jprobe/--kretprobe flags ask for.
type probeSet struct {
	probes []*session.Probe
}

func (ps *probeSet) empty() bool { return len(ps.probes) == 0 }

func (ps *probeSet) stats(p *printer) {
	for _, q := range ps.probes {
		switch {
		case q.Kprobe != nil:
			p.printf("hvprobe: kprobe %s+%#x: hits=%d nmissed=%d", q.Kprobe.Symbol, q.Kprobe.Offset, q.Kprobe.Hits(), q.Kprobe.NMissed())
		case q.Jprobe != nil:
			p.printf("hvprobe: jprobe %s: hits=%d nmissed=%d", q.Jprobe.Symbol, q.Jprobe.Hits(), q.Jprobe.NMissed())
		default:
			p.printf("hvprobe: kretprobe %s: hits=%d nmissed=%d", q.Kretprobe.Symbol, q.Kretprobe.Hits(), q.Kretprobe.NMissed())
		}
	}
}

const stamp = "15:04:05.000000"

func (ps *probeSet) addKprobe(spec string, p *printer) error {
	sym, off, err := guest.ParseSymbolOffset(spec)
	if err != nil || sym == "" {
		return fmt.Errorf("--kprobe %q: want SYM[+OFF]", spec)
	}
	ps.probes = append(ps.probes, &session.Probe{Name: "--kprobe " + spec, Kprobe: &kprobes.Kprobe{
		Symbol: sym, Offset: off,
		PreHandler: func(c *kprobes.Context) bool {
			r := c.Regs()
			p.printf("%s cpu%d %s+%#x di=%#x si=%#x dx=%#x", c.Time.Format(stamp), c.CPU, c.Symbol, c.Offset, r.RDI, r.RSI, r.RDX)
			return false
		},
	}})
	return nil
}

// jprobeArgs is how many arguments a --jprobe line shows.
const jprobeArgs = 6

func (ps *probeSet) addJprobe(sym string, p *printer) error {
	if sym == "" || strings.ContainsAny(sym, "+ ") {
		return fmt.Errorf("--jprobe %q: want a function name (jprobes sit at offset 0)", sym)
	}
	ps.probes = append(ps.probes, &session.Probe{Name: "--jprobe " + sym, Jprobe: &kprobes.Jprobe{
		Symbol: sym,
		Entry: func(c *kprobes.JprobeContext) {
			args := make([]string, 0, jprobeArgs)
			for i := 0; i < jprobeArgs; i++ {
				v, _ := c.Arg(i) // register arguments never fail
				args = append(args, fmt.Sprintf("arg%d=%#x", i+1, v))
			}
			p.printf("%s cpu%d %s(%s)", c.Time.Format(stamp), c.CPU, c.Symbol, strings.Join(args, " "))
		},
	}})
	return nil
}

func (ps *probeSet) addKretprobe(spec string, p *printer) error {
	sym, maxActive := spec, 0
	// SYM[:MAXACTIVE]; SYM may be NAME:N (the N-th of several same-named
	// symbols), so MAXACTIVE is the last field: NAME:N:MAXACTIVE.
	if i := strings.LastIndexByte(spec, ':'); i >= 0 {
		n, err := strconv.Atoi(spec[i+1:])
		if err != nil || n <= 0 {
			return fmt.Errorf("--kretprobe %q: maxactive %q is not a positive number", spec, spec[i+1:])
		}
		sym, maxActive = spec[:i], n
	}
	if sym == "" {
		return fmt.Errorf("--kretprobe %q: no function", spec)
	}
	ps.probes = append(ps.probes, &session.Probe{Name: "--kretprobe " + spec, Kretprobe: &kprobes.Kretprobe{
		Symbol: sym, MaxActive: maxActive,
		Handler: func(c *kprobes.RetContext) {
			p.printf("%s cpu%d %s returned %#x (%d) after %v, to %#x", c.Time.Format(stamp), c.CPU, c.Symbol,
				c.RetVal(), int64(c.RetVal()), c.Duration, c.ReturnAddress)
		},
	}})
	return nil
}
