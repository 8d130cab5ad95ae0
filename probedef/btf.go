package probedef

import (
	"errors"
	"fmt"
	"strings"

	"github.com/hvprobe/hvprobe/guest"
)

// BTFFunc is what the kernel's BTF says about the probed function, for
// ResolveBTF; the caller reads BTF (guest.Types).
type BTFFunc struct {
	Name     string
	Params   []string // parameter names, in order
	Variadic bool     // takes "..." after Params
	Void     bool     // returns void
	// Access resolves a field path from parameter arg (0-based) or, for
	// arg -1, from the return value; an empty path gives the type of
	// the parameter itself. A refused step is a *FieldError.
	Access func(arg int, path []Field) (Access, error)
}

// Access is a field access resolved against BTF (guest.Types.FieldAccess):
// one load per "->" group at Offsets[i], ending on a value of Kind.
type Access = guest.Access

// FieldError is Access refusing path[Step]; Err says why.
type FieldError struct {
	Step int
	Err  error
}

func (e *FieldError) Error() string { return e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

// fetchType is ftrace's default for a BTF-typed value: sN or uN for
// integers of N bits, x64 for pointers and anything else. A bitfield is
// read as the smallest container that holds it, as b<size>@<bit>/<bits>.
func fetchType(a *Access) Type {
	if a.BitSize > 0 {
		c := 8
		for c < a.BitOffset+a.BitSize {
			c *= 2
		}
		return Type{Base: Bitfield, BitWidth: a.BitSize, BitOffset: a.BitOffset, ContainerBits: c}
	}
	if a.Kind != guest.ValueInt {
		return DefaultType
	}
	var b BaseType
	switch a.Size {
	case 1:
		b = U8
	case 2:
		b = U16
	case 4:
		b = U32
	case 8:
		b = U64
	default:
		return DefaultType
	}
	if a.Signed {
		b += S8 - U8
	}
	return Type{Base: b}
}

// ResolveBTF binds d to the probed function as BTF describes it. Field
// accesses become dereferences at the members' offsets (a bitfield is
// read as a b-type); they, parameters by name, $arg* and $retval are
// typed from BTF when the line gives no type; string and ustring fetch the text a
// char * points to or a char array holds; parameter names become $argN
// and $arg* expands. $argN beyond the prototype (unless variadic) and
// $retval of a void function are refused. Errors are *SyntaxError under
// the token at fault, or *UnresolvedError for an unknown parameter name;
// d is unchanged on error.
func (d *Def) ResolveBTF(fn *BTFFunc) error {
	toks := fields(stripComment(d.input()))
	args := make([]Arg, len(d.Args))
	for i, a := range d.Args {
		r := btfResolver{d: d, fn: fn}
		// Before $arg* expands, argument i is token i+2.
		if i+2 < len(toks) {
			r.tok = toks[i+2]
			if eq := strings.IndexByte(r.tok.s, '='); eq >= 0 {
				r.tok = token{r.tok.s[eq+1:], r.tok.off + eq + 1}
			}
		}
		na, err := r.arg(a)
		if err != nil {
			return err
		}
		args[i] = na
	}
	c := *d
	c.Args = args
	if err := c.ResolveParams(fn.Params); err != nil {
		return err
	}
	// What is still BTFType came from $arg*.
	for i, a := range c.Args {
		if !a.BTFType {
			continue
		}
		acc, err := fn.Access(int(a.Fetch.N)-1, nil)
		if err != nil {
			return fmt.Errorf("event %s: $arg* parameter %s: %w", d.Event, a.Name, err)
		}
		c.Args[i].Type, c.Args[i].BTFType = fetchType(&acc), false
	}
	*d = c
	return nil
}

// UsesFields reports whether any argument accesses a field, which needs
// BTF.
func (d *Def) UsesFields() bool {
	for _, a := range d.Args {
		for f := a.Fetch; f != nil; f = f.Inner {
			if len(f.Fields) > 0 {
				return true
			}
		}
	}
	return false
}

// NoBTF is the error for d when the kernel has no BTF (err): a
// *SyntaxError under the first field access, or nil when d has none.
func (d *Def) NoBTF(err error) error {
	toks := fields(stripComment(d.input()))
	for i, a := range d.Args {
		for f := a.Fetch; f != nil; f = f.Inner {
			if len(f.Fields) > 0 && i+2 < len(toks) {
				r := btfResolver{d: d, tok: toks[i+2]}
				return r.fail(r.col(f, f.Fields[0].Off), fmt.Errorf("field access needs the kernel's BTF: %w", err))
			}
		}
	}
	return nil
}

type btfResolver struct {
	d   *Def
	fn  *BTFFunc
	tok token // the argument's expression, after NAME=
}

func (r *btfResolver) arg(a Arg) (Arg, error) {
	if a.Fetch.Kind == FetchAllArgs {
		return a, nil
	}
	str := a.Type.Base == String || a.Type.Base == UString
	f, acc, err := r.fetch(a.Fetch, str || a.BTFType)
	if err != nil {
		return a, err
	}
	if acc != nil {
		switch {
		case str && acc.Kind == guest.ValueCharPointer:
			// ftrace adds the load of the pointer the text is at.
			f = &Fetch{Kind: FetchDeref, Inner: f, User: a.Type.Base == UString}
		case str && acc.Kind == guest.ValueCharArray && f.memory():
		case str:
			return a, r.fail(r.typeCol(), fmt.Errorf("%s is %s: %s needs a char * or a char array", a.Fetch, acc.Type, a.Type.Base))
		case a.BTFType:
			a.Type = fetchType(acc)
		case acc.BitSize > 0:
			// A type of the line's own would be applied to the bytes
			// around the bits; ftrace's own reading is the only one.
			return a, r.fail(r.typeCol(), fmt.Errorf("%s is a %d-bit bitfield: leave its type out to read it as %s", a.Fetch, acc.BitSize, fetchType(acc)))
		}
	}
	a.BTFType = false
	if storeOps(f, a.Type) > fetchInsnMax-1 {
		return a, r.fail(r.col(a.Fetch, 0), errors.New("dereference is nested too deeply"))
	}
	a.Fetch = f
	return a, nil
}

// fetch resolves f at any depth; acc is set when f itself was resolved
// through BTF (a field access, or a parameter when top asks for its type).
func (r *btfResolver) fetch(f *Fetch, top bool) (*Fetch, *Access, error) {
	arg := -1
	switch f.Kind {
	case FetchDeref:
		in, _, err := r.fetch(f.Inner, false)
		if err != nil {
			return nil, nil, err
		}
		c := *f
		c.Inner = in
		return &c, nil, nil
	case FetchArg:
		if n := len(r.fn.Params); !r.fn.Variadic && f.N > uint64(n) {
			s := "s"
			if n == 1 {
				s = ""
			}
			return nil, nil, r.fail(r.col(f, 0), fmt.Errorf("%s has %d parameter%s: there is no $arg%d", r.fn.Name, n, s, f.N))
		}
		arg = int(f.N) - 1
	case FetchRetval:
		if r.fn.Void {
			return nil, nil, r.fail(r.col(f, 0), fmt.Errorf("%s returns 'void' type: there is no $retval", r.fn.Name))
		}
	case FetchParam:
		if len(f.Fields) == 0 && !top {
			return f, nil, nil // ResolveParams binds it
		}
		arg = -2
		for i, p := range r.fn.Params {
			if p == f.Str {
				arg = i
			}
		}
		if arg == -2 {
			return nil, nil, &UnresolvedError{Event: r.d.Event, Name: f.Str, Func: r.fn.Name, Params: r.fn.Params}
		}
	default:
		return f, nil, nil
	}
	if len(f.Fields) == 0 && !top {
		return f, nil, nil
	}
	acc, err := r.fn.Access(arg, f.Fields)
	var fe *FieldError
	if errors.As(err, &fe) && fe.Step >= 0 && fe.Step < len(f.Fields) {
		return nil, nil, r.fail(r.col(f, f.Fields[fe.Step].Off), fe.Err)
	}
	if err != nil {
		return nil, nil, err
	}
	b := &Fetch{Kind: FetchRetval}
	if arg >= 0 {
		b = &Fetch{Kind: FetchArg, N: uint64(arg + 1)}
	}
	for _, off := range acc.Offsets {
		b = &Fetch{Kind: FetchDeref, Off: int64(off), Inner: b}
	}
	return b, &acc, nil
}

func (r *btfResolver) fail(col int, err error) *SyntaxError {
	return &SyntaxError{Line: r.d.Line, Col: col, Input: r.d.input(), Msg: err.Error(), Err: err}
}

// col is the 1-based column of byte rel of fetch f, found by its
// spelling in the argument; the argument's start if it is spelled
// otherwise ($arg01).
func (r *btfResolver) col(f *Fetch, rel int) int {
	s, body := f.String(), r.tok.s
	ident := func(c byte) bool { return isAlpha(c) || isDigit(c) || c == '_' }
	for i := 0; i+len(s) <= len(body); i++ {
		end := i + len(s)
		if body[i:end] == s && (i == 0 || !ident(body[i-1])) && (end == len(body) || !ident(body[end])) {
			return r.tok.off + i + rel + 1
		}
	}
	return r.tok.off + 1
}

// typeCol is the column of the argument's type, after its ':'.
func (r *btfResolver) typeCol() int {
	return r.tok.off + strings.IndexByte(r.tok.s, ':') + 2
}
