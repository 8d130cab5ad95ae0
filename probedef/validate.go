package probedef

import (
	"errors"
	"fmt"
	"strings"
)

// Validate asks lookup about every symbol the definitions name: probe
// locations (SYM of [MOD:]SYM) and @SYM fetches. Each failure becomes a
// *SyntaxError pointing at the symbol, with lookup's error as Msg and
// cause, so a caller's "did you mean" text lands under the typo. It
// returns SyntaxErrors, or nil when every symbol is known.
func Validate(defs []*Def, lookup func(sym string) error) error {
	var bad SyntaxErrors
	for _, d := range defs {
		if d.Kind == Delete {
			continue
		}
		input := d.Text
		if input == "" {
			input = d.String()
		}
		toks := fields(stripComment(input))
		check := func(sym string, col int) {
			if err := lookup(sym); err != nil {
				bad = append(bad, &SyntaxError{Line: d.Line, Col: col, Input: input, Msg: err.Error(), Err: err})
			}
		}
		if d.Symbol != "" && len(toks) > 1 {
			check(d.Symbol, d.SymbolCol())
		}
		for _, a := range d.Args {
			for f := a.Fetch; f != nil; f = f.Inner {
				if f.Kind == FetchSymMem {
					check(f.Sym, symCol(toks, f.Sym))
				}
			}
		}
	}
	if len(bad) > 0 {
		return bad
	}
	return nil
}

// input is the line as given, or as String renders it.
func (d *Def) input() string {
	if d.Text != "" {
		return d.Text
	}
	return d.String()
}

// SymbolCol is the 1-based column of the probe location's symbol (or
// address) in the line, for errors about where the probe goes.
func (d *Def) SymbolCol() int {
	toks := fields(stripComment(d.input()))
	if len(toks) < 2 {
		return 1
	}
	col := toks[1].off + 1
	if d.Module != "" {
		col += len(d.Module) + 1
	}
	return col
}

// ArgCol is the 1-based column of the first fetch argument that mentions
// name, or of the location when none does.
func (d *Def) ArgCol(name string) int {
	toks := fields(stripComment(d.input()))
	for _, tok := range toks[min(2, len(toks)):] {
		if i := strings.Index(tok.s, name); i >= 0 {
			return tok.off + i + 1
		}
	}
	return d.SymbolCol()
}

// Error is a *SyntaxError about d with the caret at col, or err itself
// when it is one already (ResolveBTF's errors know their column).
func (d *Def) Error(col int, err error) *SyntaxError {
	if se, ok := err.(*SyntaxError); ok {
		return se
	}
	return &SyntaxError{Line: d.Line, Col: col, Input: d.input(), Msg: err.Error(), Err: err}
}

// ResolveParams binds parameter names to argument positions, given the
// probed function's parameter names in order (from BTF or a prototype):
// a bare name, at any depth, becomes $argN, and $arg* becomes one x64
// argument per parameter, named after it, as ftrace expands it (marked
// BTFType, for ResolveBTF to type).
// Unknown names yield *UnresolvedError; d is unchanged on error.
func (d *Def) ResolveParams(params []string) error {
	index := make(map[string]uint64, len(params))
	for i, p := range params {
		index[p] = uint64(i + 1)
	}
	var args []Arg
	used := make(map[string]bool)
	for _, a := range d.Args {
		if a.Fetch.Kind != FetchAllArgs {
			used[a.Name] = true
		}
	}
	for _, a := range d.Args {
		if a.Fetch.Kind == FetchAllArgs {
			for i, p := range params {
				if used[p] {
					return fmt.Errorf("event %s: $arg* parameter %q clashes with an argument name: %w", d.Event, p, ErrSyntax)
				}
				args = append(args, Arg{Name: p, Fetch: &Fetch{Kind: FetchArg, N: uint64(i + 1)}, Type: DefaultType, BTFType: true})
			}
			continue
		}
		f, err := resolveFetch(d.Event, a.Fetch, index)
		var ue *UnresolvedError
		if errors.As(err, &ue) {
			ue.Func, ue.Params = d.Symbol, params
		}
		if err != nil {
			return err
		}
		a.Fetch = f
		args = append(args, a)
	}
	if len(args) > MaxTraceArgs {
		return fmt.Errorf("event %s: %d arguments after $arg* (max %d): %w", d.Event, len(args), MaxTraceArgs, ErrSyntax)
	}
	d.Args = args
	return nil
}

// resolveFetch returns f with parameters replaced, copying only the path
// it changes so d stays intact on error.
func resolveFetch(event string, f *Fetch, index map[string]uint64) (*Fetch, error) {
	switch f.Kind {
	case FetchParam:
		n, ok := index[f.Str]
		if !ok {
			return nil, &UnresolvedError{Event: event, Name: f.Str}
		}
		return &Fetch{Kind: FetchArg, N: n}, nil
	case FetchDeref:
		in, err := resolveFetch(event, f.Inner, index)
		if err != nil {
			return nil, err
		}
		c := *f
		c.Inner = in
		return &c, nil
	}
	return f, nil
}

// symCol finds @sym among the fetch arguments; ResolveParams may have
// shifted argument positions, so it searches rather than indexes.
func symCol(toks []token, sym string) int {
	for _, tok := range toks[min(2, len(toks)):] {
		i := strings.Index(tok.s, "@"+sym)
		end := i + 1 + len(sym)
		if i >= 0 && (end == len(tok.s) || !goodSymbol("_"+tok.s[end:end+1])) {
			return tok.off + i + 2
		}
	}
	return 1
}
