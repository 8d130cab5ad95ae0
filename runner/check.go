package runner

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/hvprobe/hvprobe/guest"
	"github.com/hvprobe/hvprobe/probedef"
	"github.com/hvprobe/hvprobe/session"
)

// refusals renders every bad definition line in err for the terminal:
// "hvprobe: --probe: LINE" or "hvprobe: FILE:N: LINE", with the caret
// under the column at fault. Other errors render as they are.
func refusals(err error, file string) []string {
	if err == nil {
		return nil
	}
	var out []string
	var list probedef.SyntaxErrors
	var one *probedef.SyntaxError
	switch {
	case errors.As(err, &list):
	case errors.As(err, &one):
		list = probedef.SyntaxErrors{one}
	default:
		return []string{"hvprobe: " + err.Error()}
	}
	for _, e := range list {
		prefix := "hvprobe: --probe: "
		if e.Line > 0 {
			prefix = fmt.Sprintf("hvprobe: %s:%d: ", file, e.Line)
		}
		out = append(out, e.Render(prefix))
	}
	return out
}

// checkProbes judges every probe against the kernel image before any VM
// exists: a probe that cannot be armed is refused now, with all the others
// that cannot, and nothing boots (exit status 2). bad are the lines that
// already failed to parse.
func checkProbes(k *guest.Kernel, ik *session.ImageKernel, defs []*probedef.Def, bad []string, parseErr error, file string, detail bool, p *printer) error {
	t0 := time.Now()
	checked, err := ik.CheckDefs(defs)
	var lines probedef.SyntaxErrors
	for _, e := range []error{parseErr, err} {
		var se probedef.SyntaxErrors
		if errors.As(e, &se) {
			lines = append(lines, se...)
		}
	}
	slices.SortStableFunc(lines, func(a, b *probedef.SyntaxError) int { return cmp.Compare(a.Line, b.Line) })
	if len(lines) > 0 {
		bad = append(bad, refusals(lines, file)...)
	}
	if len(bad) > 0 {
		for _, b := range bad {
			fmt.Fprintln(os.Stderr, b)
		}
		return refused("%d probe definition(s) refused in %v; nothing was booted",
			len(bad), time.Since(t0).Round(time.Millisecond))
	}
	var deferred, init int
	for _, c := range checked {
		if detail {
			p.printf("hvprobe: %s", armedHow(c))
		}
		if c.Deferred {
			deferred++
		}
		if c.Init {
			init++
		}
	}
	p.printf("hvprobe: %d probes checked against %s in %v: %d armed at attach, %d once the kernel has patched its text at boot (%d in .init.text, retired when it is freed)",
		len(checked), k.Image.Version, time.Since(t0).Round(time.Millisecond), len(checked)-deferred, deferred, init)
	return nil
}

// armedHow says where and how c's line will be armed: --dry-run's and
// `hvprobe check`'s line per probe.
func armedHow(c session.Checked) string {
	if c.Def != nil && c.Def.Kind == probedef.Watch {
		return c.Probe + ": a watch, armed at attach"
	}
	how := execHow(c)
	switch {
	case c.Def != nil && c.Def.Stealth:
		how = "a debug-register breakpoint (stealth), stepped"
	case c.Def != nil && c.Def.Fast:
		how = "exit-less where the code allows, else " + how
	}
	if c.Deferred {
		return fmt.Sprintf("%s: %s", c.Probe, how)
	}
	v := c.Verdict
	return fmt.Sprintf("%s: %s+%#x %s: %s", c.Probe, v.Symbol, v.Offset, v.Insn, how)
}

// execHow is how a hit on a checked site runs, and when it is armed.
func execHow(c session.Checked) string {
	if c.Deferred {
		return "int3, armed once the kernel has patched this site at boot"
	}
	v := c.Verdict
	how := "int3, " + v.Exec
	if v.ExecPost != v.Exec {
		how += " (" + v.ExecPost + " with a post handler)"
	}
	if c.Init {
		how += ", retired when .init.text is freed"
	}
	return how
}
