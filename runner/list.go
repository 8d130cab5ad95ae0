package runner

import (
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/hvprobe/hvprobe/guest"
	"github.com/hvprobe/hvprobe/internal/x86dec"
	"github.com/hvprobe/hvprobe/kprobes"
	"github.com/hvprobe/hvprobe/session"
)

// Catalog answers `hvprobe list` and `hvprobe show` from the kernel image,
// booting nothing.
type Catalog struct {
	k  *guest.Kernel
	ik *session.ImageKernel
}

// OpenCatalog opens the kernel image and its System.map, with the types
// of a raw BTF file (btf, optional) instead of the image's own.
func OpenCatalog(kernel, sysmap, btf string) (*Catalog, error) {
	k, err := guest.OpenKernel(kernel, sysmap)
	if err != nil {
		return nil, refused("%v", err)
	}
	if btf != "" {
		k.BTFPath, k.BTFFirst = btf, true
		if _, err := k.BTF(); err != nil {
			return nil, refused("--btf %s: %v", btf, err)
		}
	}
	ik, err := session.NewImageKernel(k)
	if err != nil {
		return nil, err
	}
	return &Catalog{k: k, ik: ik}, nil
}

// CheckPattern refuses a pattern path.Match cannot read.
func CheckPattern(p string) error {
	if _, err := path.Match(p, ""); err != nil {
		return refused("pattern %q: %v", p, err)
	}
	return nil
}

// Functions are the names of the text functions matching pattern, in
// address order; a name several functions share comes as NAME:N each.
func (c *Catalog) Functions(pattern string) []string {
	count := map[string]int{}
	for s := range c.k.Symbols.All() {
		if s.IsText() {
			count[s.Name]++
		}
	}
	seen := map[string]int{}
	var out []string
	for s := range c.k.Symbols.All() {
		if !s.IsText() {
			continue
		}
		if ok, _ := path.Match(pattern, s.Name); !ok {
			continue
		}
		name := s.Name
		if count[name] > 1 {
			seen[name]++
			name = fmt.Sprintf("%s:%d", name, seen[name])
		}
		out = append(out, name)
	}
	return out
}

// Judge says how a probe on fn+off would run, or why it is refused.
func (c *Catalog) Judge(fn string, off uint64) string {
	ch, err := c.ik.Check(&session.Probe{Name: fn, Kprobe: &kprobes.Kprobe{Symbol: fn, Offset: off}})
	var pe *kprobes.ProbeError
	switch {
	case errors.As(err, &pe):
		return "refused: " + pe.Reason
	case err != nil:
		return "refused: " + err.Error()
	}
	return execHow(ch)
}

// Signature is fn's C prototype from BTF, or why there is none.
func (c *Catalog) Signature(fn string) (string, error) {
	types, err := c.k.BTF()
	if err != nil {
		return "", err
	}
	name, _, _ := strings.Cut(fn, ":")
	params, ret, err := types.FuncProto(name)
	if err != nil {
		return "", err
	}
	var ps []string
	for _, p := range params {
		switch {
		case p.Name == "" && p.Type == "void":
			ps = append(ps, "...")
		case strings.HasSuffix(p.Type, "*"):
			ps = append(ps, p.Type+p.Name)
		default:
			ps = append(ps, p.Type+" "+p.Name)
		}
	}
	if strings.HasSuffix(ret, "*") {
		return fmt.Sprintf("%s%s(%s)", ret, name, strings.Join(ps, ", ")), nil
	}
	return fmt.Sprintf("%s %s(%s)", ret, name, strings.Join(ps, ", ")), nil
}

// List prints each function matching the patterns: probe-able at its
// entry (and how a hit runs there) or refused, with the reason; verbose
// adds the BTF signature. It refuses (exit 2) when nothing matches.
func (c *Catalog) List(w io.Writer, patterns []string, verbose bool) error {
	n := 0
	for _, p := range patterns {
		for _, fn := range c.Functions(p) {
			n++
			line := fn + "\t" + c.Judge(fn, 0)
			if verbose {
				if sig, err := c.Signature(fn); err == nil {
					line += "\n\t" + sig
				} else {
					line += "\n\tno BTF: " + err.Error()
				}
			}
			fmt.Fprintln(w, line)
		}
	}
	if n == 0 {
		return refused("no function matches %q", patterns)
	}
	return nil
}

// Show prints fn's signature, size and instruction boundaries, each with
// how a probe there would run or why it is refused.
func (c *Catalog) Show(w io.Writer, fn string) error {
	addr, err := c.ik.Resolve(fn, 0)
	if err != nil {
		return refused("%v", err)
	}
	sym, _, ok := c.k.Symbols.SymbolAt(addr)
	if !ok || !sym.IsText() {
		return refused("%s at %#x is not a function in kernel text", fn, addr)
	}
	sig, err := c.Signature(fn)
	if err != nil {
		sig = "(no BTF: " + err.Error() + ")"
	}
	fmt.Fprintf(w, "%s\n%s at %#x, %d bytes\n", sig, fn, addr, sym.Size)
	code := make([]byte, sym.Size+15)
	if err := c.ik.ReadVirt(addr, code); err != nil {
		return err
	}
	for off := uint64(0); off < sym.Size; {
		inst, err := x86dec.Decode(code[off:])
		if err != nil {
			fmt.Fprintf(w, "  +%#-5x %v: the rest cannot be decoded\n", off, err)
			return nil
		}
		fmt.Fprintf(w, "  +%#-5x %-32s %s\n", off, x86dec.Syntax(inst), c.Judge(fn, off))
		off += uint64(inst.Len)
	}
	return nil
}
