package session

import (
	"errors"
	"fmt"

	"github.com/hvprobe/hvprobe/guest"
	"github.com/hvprobe/hvprobe/kprobes"
	"github.com/hvprobe/hvprobe/probedef"
)

// ErrNotInImage: the image has no file bytes at an address (bss, or
// nothing loaded there); checking before boot cannot read it.
var ErrNotInImage = errors.New("address not in the kernel image's file")

// ImageKernel is the kernel image file as the probe engine would see the
// guest before it boots, at link-time addresses: a probe set is checked
// against it, and refused, before any VM exists. It implements
// kprobes.Kernel for kprobes.Check; it cannot translate or write.
type ImageKernel struct {
	k      *guest.Kernel
	policy *textPolicy
}

// NewImageKernel reads the image's patch-site tables for checking.
func NewImageKernel(k *guest.Kernel) (*ImageKernel, error) {
	pol, err := newTextPolicy(k, 0)
	if err != nil {
		return nil, err
	}
	return &ImageKernel{k: k, policy: pol}, nil
}

// Resolve returns sym's link-time address plus off, off within sym.
func (ik *ImageKernel) Resolve(sym string, off uint64) (uint64, error) {
	return ik.k.Symbols.At(sym, off)
}

// SymbolAt names the symbol containing va.
func (ik *ImageKernel) SymbolAt(va uint64) (string, uint64, uint64, bool) {
	s, off, ok := ik.k.Symbols.SymbolAt(va)
	return s.Name, off, s.Size, ok
}

// Describe says where va is when no function contains it.
func (ik *ImageKernel) Describe(va uint64) string { return ik.k.Symbols.Describe(va) }

// InText reports whether va is kernel text.
func (ik *ImageKernel) InText(va uint64) bool { return ik.k.Symbols.InText(va) }

// InEntryText is .entry.text of the image.
func (ik *ImageKernel) InEntryText(va uint64) bool { return ik.k.Symbols.InEntryText(va) }

// Translate is not possible before boot.
func (ik *ImageKernel) Translate(va uint64) (uint64, error) {
	return 0, fmt.Errorf("translating %#x: the guest has not booted", va)
}

// ReadVirt reads the image's file bytes at link-time addresses.
func (ik *ImageKernel) ReadVirt(va uint64, p []byte) error {
	b, ok := ik.k.Image.ReadVirt(va, len(p))
	if !ok {
		return fmt.Errorf("reading %d bytes at %#x: %w", len(p), va, ErrNotInImage)
	}
	copy(p, b)
	return nil
}

// WriteVirt is refused: checking changes nothing.
func (ik *ImageKernel) WriteVirt(va uint64, p []byte) error {
	return fmt.Errorf("writing %#x: the image is read-only", va)
}

// Reserved applies hvprobe's rule for self-patched text, as at boot.
func (ik *ImageKernel) Reserved(va, n uint64) error { return ik.policy.reserved(va, n) }

// HasFixup looks va up in the image's exception table.
func (ik *ImageKernel) HasFixup(va uint64) bool { return ik.policy.hasFixup(va) }

// Entered says whether an exception fixup or a jump label lands inside
// (va, va+n).
func (ik *ImageKernel) Entered(va, n uint64) bool { return ik.policy.entered(va, n) }

// Checked is the verdict on one probe before boot.
type Checked struct {
	Probe   string
	Def     *probedef.Def // the line, for CheckDefs' results
	Verdict kprobes.Verdict
	// Deferred: the kernel patches the probed text at boot; the probe is
	// armed once it has.
	Deferred bool
	// Init: the probe is in .init.text and is retired when the kernel
	// frees it.
	Init bool
}

// Check judges p against the image the way Arm will judge it at attach.
func (ik *ImageKernel) Check(p *Probe) (Checked, error) {
	var sym, name string
	var off, addr uint64
	entry := true
	switch {
	case p.Kprobe != nil:
		sym, off, addr, entry = p.Kprobe.Symbol, p.Kprobe.Offset, p.Kprobe.Addr, false
	case p.Jprobe != nil:
		sym, addr = p.Jprobe.Symbol, p.Jprobe.Addr
	case p.Kretprobe != nil:
		sym, addr = p.Kretprobe.Symbol, p.Kretprobe.Addr
	default:
		return Checked{}, fmt.Errorf("probe %s: %w", p.Name, kprobes.ErrBadProbe)
	}
	name = p.Name
	if sym != "" {
		va, err := ik.Resolve(sym, off)
		if err != nil {
			return Checked{}, err
		}
		addr = va
	}
	check := kprobes.Check
	if entry {
		check = kprobes.CheckEntry
	}
	v, err := check(ik, addr, name)
	c := Checked{Probe: name, Verdict: v, Init: ik.policy.inInit(addr)}
	if errors.Is(err, kprobes.ErrNotYetPatched) {
		c.Deferred, err = true, nil
	}
	return c, err
}

// CheckDefs judges probe definitions against the image: every symbol
// known, parameter names bound through BTF, every location a probeable
// instruction. Each bad line is one *probedef.SyntaxError (the caret
// under the part at fault); all of them come back at once.
func (ik *ImageKernel) CheckDefs(defs []*probedef.Def) ([]Checked, error) {
	var bad probedef.SyntaxErrors
	var se probedef.SyntaxErrors
	if err := probedef.Validate(defs, func(sym string) error {
		_, err := ik.Resolve(sym, 0)
		return err
	}); errors.As(err, &se) {
		bad = append(bad, se...)
	} else if err != nil {
		return nil, err
	}
	badLine := map[*probedef.Def]bool{}
	for _, e := range bad {
		for _, d := range defs {
			if d.Line == e.Line && d.Text == e.Input {
				badLine[d] = true
			}
		}
	}
	var out []Checked
	for _, d := range defs {
		if badLine[d] || d.Kind == probedef.Delete {
			continue
		}
		if err := bindParams(ik.k, d); err != nil {
			var ue *probedef.UnresolvedError
			col := d.SymbolCol()
			if errors.As(err, &ue) {
				col = d.ArgCol(ue.Name)
			}
			bad = append(bad, d.Error(col, err))
			continue
		}
		if d.Kind == probedef.Watch {
			if err := ik.checkWatch(d); err != nil {
				bad = append(bad, d.Error(d.SymbolCol(), err))
				continue
			}
			out = append(out, Checked{Probe: d.String(), Def: d})
			continue
		}
		p, err := defProbe(d)
		if err != nil {
			bad = append(bad, d.Error(d.SymbolCol(), err))
			continue
		}
		c, err := ik.Check(p)
		if err != nil {
			bad = append(bad, d.Error(d.SymbolCol(), reason(err)))
			continue
		}
		c.Def = d
		out = append(out, c)
	}
	if len(bad) > 0 {
		return out, bad
	}
	return out, nil
}

// reason drops the probe's name from an engine refusal: the caret line
// shows the probe already.
func reason(err error) error {
	var pe *kprobes.ProbeError
	if errors.As(err, &pe) {
		return reasonOnly{pe}
	}
	return err
}

type reasonOnly struct{ pe *kprobes.ProbeError }

func (r reasonOnly) Error() string { return r.pe.Reason }
func (r reasonOnly) Unwrap() error { return r.pe }

// bindParams binds the definition to the probed function's BTF: parameter
// names ($arg* too), field accesses (file->f_path.dentry), :string on
// char * parameters; and checks $argN against the prototype's arity and
// $retval against a void return. Without BTF (or a function BTF does not
// describe) $argN and $retval go unchecked, as before; names and fields
// need it.
func bindParams(k *guest.Kernel, d *probedef.Def) error {
	needs, checks := false, false
	for _, a := range d.Args {
		n, c := usesParams(a.Fetch)
		needs, checks = needs || n, checks || c
	}
	if !needs && !checks {
		return nil
	}
	types, err := k.BTF()
	if err != nil {
		if !needs && errors.Is(err, guest.ErrNoBTF) {
			return nil
		}
		if d.UsesFields() {
			return d.NoBTF(err)
		}
		return fmt.Errorf("parameter names need the kernel's BTF: %w", err)
	}
	params, ret, err := types.FuncProto(d.Symbol)
	if err != nil {
		if !needs {
			return nil
		}
		return err
	}
	fn := &probedef.BTFFunc{Name: d.Symbol, Void: ret == "void"}
	for _, p := range params {
		fn.Params = append(fn.Params, p.Name)
	}
	// BTF ends a variadic prototype with an unnamed void parameter.
	if n := len(params); n > 0 && params[n-1].Name == "" && params[n-1].Type == "void" {
		fn.Params, fn.Variadic = fn.Params[:n-1], true
	}
	fn.Access = func(arg int, path []probedef.Field) (probedef.Access, error) {
		steps := make([]guest.Step, len(path))
		for i, f := range path {
			steps[i] = guest.Step{Name: f.Name, Arrow: f.Arrow}
		}
		acc, err := types.FieldAccess(d.Symbol, arg, steps)
		var se *guest.StepError
		if errors.As(err, &se) {
			return probedef.Access{}, &probedef.FieldError{Step: se.Step, Err: err}
		}
		if err != nil {
			return probedef.Access{}, err
		}
		return acc, nil
	}
	return d.ResolveBTF(fn)
}

// usesParams reports whether f needs BTF (a parameter name, $arg*, a
// field access) and whether it has something BTF would check ($argN,
// $retval).
func usesParams(f *probedef.Fetch) (needs, checks bool) {
	for ; f != nil; f = f.Inner {
		switch f.Kind {
		case probedef.FetchParam, probedef.FetchAllArgs:
			needs = true
		case probedef.FetchArg, probedef.FetchRetval:
			checks = true
		}
		needs = needs || len(f.Fields) > 0
	}
	return needs, checks
}

// checkWatch judges a w line against the image: an access x86 can watch
// (watchAccess), a kernel address outside the kernel's text, whose writes
// the session already follows through the dirty log. Whether the host
// fires data watchpoints (rw@) is the tool's to check (vmm.WatchCaps).
func (ik *ImageKernel) checkWatch(d *probedef.Def) error {
	va, err := defAddr(ik.Resolve, d)
	if err != nil {
		return err
	}
	if err := watchAccess(d, va); err != nil {
		return err
	}
	if va>>63 == 0 {
		return fmt.Errorf("%w: %#x is not a kernel address", ErrWatch, va)
	}
	if ik.InText(va) || ik.InText(va+uint64(d.Len)-1) {
		return fmt.Errorf("%w: %#x is kernel text; hvprobe watches data (text writes are followed by the dirty log)", ErrWatch, va)
	}
	return nil
}

// defAddr is where a p or w line points: SYM+OFFS resolved (a w line's
// -OFFS is stored negated, so the sum wraps as it should), or MEMADDR.
func defAddr(resolve func(string, uint64) (uint64, error), d *probedef.Def) (uint64, error) {
	if d.Symbol == "" {
		return d.Addr, nil
	}
	a, err := resolve(d.Symbol, 0)
	return a + d.Offset, err
}
