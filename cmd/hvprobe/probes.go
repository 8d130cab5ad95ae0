package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/hvprobe/hvprobe/kprobes"
)

// probeSet is what the --kprobe/--jprobe/--kretprobe flags ask for.
type probeSet struct {
	kprobes    []*kprobes.Kprobe
	jprobes    []*kprobes.Jprobe
	kretprobes []*kprobes.Kretprobe
}

func (ps *probeSet) empty() bool {
	return len(ps.kprobes)+len(ps.jprobes)+len(ps.kretprobes) == 0
}

// register arms every probe; it stops at the first error.
func (ps *probeSet) register(m *kprobes.Manager) error {
	for _, p := range ps.kprobes {
		if err := m.Register(p); err != nil {
			return err
		}
	}
	for _, p := range ps.jprobes {
		if err := m.RegisterJprobe(p); err != nil {
			return err
		}
	}
	for _, p := range ps.kretprobes {
		if err := m.RegisterKretprobe(p); err != nil {
			return err
		}
	}
	return nil
}

func (ps *probeSet) stats(p *printer) {
	for _, k := range ps.kprobes {
		p.printf("hvprobe: kprobe %s+%#x: hits=%d nmissed=%d", k.Symbol, k.Offset, k.Hits(), k.NMissed())
	}
	for _, j := range ps.jprobes {
		p.printf("hvprobe: jprobe %s: hits=%d nmissed=%d", j.Symbol, j.Hits(), j.NMissed())
	}
	for _, r := range ps.kretprobes {
		p.printf("hvprobe: kretprobe %s: hits=%d nmissed=%d", r.Symbol, r.Hits(), r.NMissed())
	}
}

const stamp = "15:04:05.000000"

func (ps *probeSet) addKprobe(spec string, p *printer) error {
	sym, off, err := splitSymOff(spec)
	if err != nil {
		return fmt.Errorf("--kprobe %q: %w", spec, err)
	}
	ps.kprobes = append(ps.kprobes, &kprobes.Kprobe{
		Symbol: sym, Offset: off,
		PreHandler: func(c *kprobes.Context) bool {
			r := c.Regs()
			p.printf("%s cpu%d %s+%#x di=%#x si=%#x dx=%#x", c.Time.Format(stamp), c.CPU, c.Symbol, c.Offset, r.RDI, r.RSI, r.RDX)
			return false
		},
	})
	return nil
}

// jprobeArgs is how many arguments a --jprobe line shows.
const jprobeArgs = 6

func (ps *probeSet) addJprobe(sym string, p *printer) error {
	if sym == "" || strings.ContainsAny(sym, "+ ") {
		return fmt.Errorf("--jprobe %q: want a function name (jprobes sit at offset 0)", sym)
	}
	ps.jprobes = append(ps.jprobes, &kprobes.Jprobe{
		Symbol: sym,
		Entry: func(c *kprobes.JprobeContext) {
			args := make([]string, 0, jprobeArgs)
			for i := 0; i < jprobeArgs; i++ {
				v, _ := c.Arg(i) // register arguments never fail
				args = append(args, fmt.Sprintf("arg%d=%#x", i+1, v))
			}
			p.printf("%s cpu%d %s(%s)", c.Time.Format(stamp), c.CPU, c.Symbol, strings.Join(args, " "))
		},
	})
	return nil
}

func (ps *probeSet) addKretprobe(spec string, p *printer) error {
	sym, maxStr, has := strings.Cut(spec, ":")
	maxActive := 0
	if has {
		n, err := strconv.Atoi(maxStr)
		if err != nil || n <= 0 {
			return fmt.Errorf("--kretprobe %q: maxactive %q is not a positive number", spec, maxStr)
		}
		maxActive = n
	}
	if sym == "" {
		return fmt.Errorf("--kretprobe %q: no function", spec)
	}
	ps.kretprobes = append(ps.kretprobes, &kprobes.Kretprobe{
		Symbol: sym, MaxActive: maxActive,
		Handler: func(c *kprobes.RetContext) {
			p.printf("%s cpu%d %s returned %#x (%d) after %v, to %#x", c.Time.Format(stamp), c.CPU, c.Symbol,
				c.RetVal(), int64(c.RetVal()), c.Duration, c.ReturnAddress)
		},
	})
	return nil
}
