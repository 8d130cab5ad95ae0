package analysis

import (
	"cmp"
	"fmt"
	"strconv"
	"strings"

	"github.com/hvprobe/hvprobe/probedef"
)

// Filter is a parsed ftrace event filter (Documentation/trace/events.rst,
// "Event filtering") bound to one definition's fields. It is immutable
// and safe for concurrent use.
type Filter struct {
	def  *probedef.Def
	root node
}

// ParseFilter parses an ftrace filter expression for def's events:
//
//	common_pid != 1 && (dfd > 0x10 || !(comm ~ "ba*"))
//
// Predicates are FIELD OP VALUE. Fields are def's argument names, then
// the common fields common_pid (pid), comm (COMM, common_comm) and cpu
// (CPU, common_cpu); an argument of the same name wins, as in ftrace.
// Numeric fields take == != < <= > >= and & (true when the AND is not
// zero) with decimal, 0x hex or 0 octal values, negative only for signed
// types; string fields (string, ustring, symstr, $comm, comm) take == !=
// and ~, a glob with *, ? and [...] ([!...] negates). Strings may be
// quoted with ' or ". && binds tighter than ||, ! negates the next term.
// Errors are *SyntaxError pointing at the offending token, or
// ErrNotProbe for a delete line.
func ParseFilter(def *probedef.Def, expr string) (*Filter, error) {
	if def.Kind == probedef.Delete {
		return nil, probedef.ErrNotProbe
	}
	p := &filterParser{def: def, in: expr}
	if err := p.lex(); err != nil {
		return nil, err
	}
	if len(p.toks) == 0 {
		return nil, p.fail(len(expr), "no filter expression")
	}
	root, err := p.or()
	if err != nil {
		return nil, err
	}
	if p.pos < len(p.toks) {
		t := p.toks[p.pos]
		if t.s == ")" {
			return nil, p.fail(t.off, "unbalanced parentheses")
		}
		return nil, p.fail(t.off, "expected && or || before %q", t.s)
	}
	return &Filter{def: def, root: root}, nil
}

// Match reports whether ev passes the filter. A comparison that reads a
// value whose fetch faulted is false whatever its operator (ftrace
// compares a field it could not fill against garbage; we refuse to
// guess), though ! still negates it.
func (f *Filter) Match(ev probedef.Event) bool { return f.root.match(&ev) }

// fieldKind says where a field's value comes from in an Event.
type fieldKind int

const (
	fieldArg fieldKind = iota
	fieldComm
	fieldPID
	fieldCPU
	fieldStack
	fieldHitcount
	fieldDuration
)

// field is a resolved event field.
type field struct {
	kind fieldKind
	name string
	idx  int // fieldArg: position in Def.Args
	typ  probedef.Type
}

// commonFields are ftrace's fields every event has; the names are the
// kernel's (trace_events.c __common_field and __generic_field).
var commonFields = map[string]fieldKind{
	"common_pid": fieldPID, "pid": fieldPID,
	"comm": fieldComm, "COMM": fieldComm, "common_comm": fieldComm,
	"cpu": fieldCPU, "CPU": fieldCPU, "common_cpu": fieldCPU,
}

// lookupField resolves name against def: arguments first, as ftrace
// looks the event's own fields up before the common ones.
func lookupField(def *probedef.Def, name string) (field, bool) {
	for i, a := range def.Args {
		if a.Name == name {
			return field{kind: fieldArg, name: name, idx: i, typ: a.Type}, true
		}
	}
	k, ok := commonFields[name]
	switch k {
	case fieldComm:
		return field{kind: k, name: name, typ: probedef.Type{Base: probedef.String}}, ok
	case fieldPID, fieldCPU:
		return field{kind: k, name: name, typ: probedef.Type{Base: probedef.S32}}, ok
	}
	return field{}, false
}

func (f field) isString() bool { return f.typ.IsString() }

// value is the field's Value in ev; ok is false when the event lacks it.
func (f field) value(ev *probedef.Event) (probedef.Value, bool) {
	switch f.kind {
	case fieldComm:
		return probedef.Value{Name: f.name, Type: f.typ, Str: ev.Comm}, true
	case fieldPID:
		return probedef.Value{Name: f.name, Type: f.typ, U64: uint64(ev.PID), S64: int64(ev.PID)}, true
	case fieldCPU:
		return probedef.Value{Name: f.name, Type: f.typ, U64: uint64(ev.CPU), S64: int64(ev.CPU)}, true
	}
	if f.idx < len(ev.Values) && ev.Values[f.idx].Name == f.name {
		return ev.Values[f.idx], true
	}
	for _, v := range ev.Values {
		if v.Name == f.name {
			return v, true
		}
	}
	return probedef.Value{}, false
}

type node interface{ match(ev *probedef.Event) bool }

type andNode struct{ l, r node }
type orNode struct{ l, r node }
type notNode struct{ n node }

func (n andNode) match(ev *probedef.Event) bool { return n.l.match(ev) && n.r.match(ev) }
func (n orNode) match(ev *probedef.Event) bool  { return n.l.match(ev) || n.r.match(ev) }
func (n notNode) match(ev *probedef.Event) bool { return !n.n.match(ev) }

type numPred struct {
	f      field
	op     string
	u      uint64
	s      int64
	signed bool
}

func (p numPred) match(ev *probedef.Event) bool {
	v, ok := p.f.value(ev)
	if !ok || v.Fault {
		return false
	}
	if p.op == "&" {
		return v.U64&p.u != 0
	}
	var c int
	if p.signed {
		c = cmp.Compare(v.S64, p.s)
	} else {
		c = cmp.Compare(v.U64, p.u)
	}
	switch p.op {
	case "==":
		return c == 0
	case "!=":
		return c != 0
	case "<":
		return c < 0
	case "<=":
		return c <= 0
	case ">":
		return c > 0
	}
	return c >= 0
}

func cmp3[T int64 | uint64](a, b T) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

type strPred struct {
	f   field
	op  string
	pat string
}

func (p strPred) match(ev *probedef.Event) bool {
	v, ok := p.f.value(ev)
	if !ok || v.Fault {
		return false
	}
	switch p.op {
	case "==":
		return v.Str == p.pat
	case "!=":
		return v.Str != p.pat
	}
	return globMatch(p.pat, v.Str)
}

// globMatch is the kernel's glob_match (lib/glob.c), which ftrace's ~
// uses: * any run, ? one byte, [set] with ranges and a leading ! to
// negate; ftrace's front/middle/end-only forms (abc*, *abc*, *abc) are
// special cases of it.
func globMatch(pat, s string) bool {
	// Iterative with one backtrack point, as lib/glob.c.
	var backPat, backStr = -1, -1
	pi, si := 0, 0
	for {
		if pi < len(pat) && pat[pi] == '*' {
			pi++
			if pi == len(pat) {
				return true
			}
			backPat, backStr = pi, si
			continue
		}
		if si == len(s) {
			return pi == len(pat)
		}
		matched := false
		if pi < len(pat) {
			switch c := pat[pi]; {
			case c == '?':
				matched, pi = true, pi+1
			case c == '[':
				if ok, n := matchSet(pat[pi:], s[si]); n > 0 {
					matched, pi = ok, pi+n
				} else {
					matched, pi = c == s[si], pi+1
				}
			default:
				matched, pi = c == s[si], pi+1
			}
		}
		if matched {
			si++
			continue
		}
		if backPat < 0 {
			return false
		}
		backStr++
		pi, si = backPat, backStr
	}
}

// matchSet matches c against the [set] at the start of pat and returns
// the set's length, or 0 when the set is not closed (a literal '[').
func matchSet(pat string, c byte) (bool, int) {
	i := 1
	neg := i < len(pat) && pat[i] == '!'
	if neg {
		i++
	}
	in := false
	// A ']' first in the set is a member, not its end.
	for first := true; i < len(pat); first = false {
		if pat[i] == ']' && !first {
			return in != neg, i + 1
		}
		lo, hi := pat[i], pat[i]
		if i+2 < len(pat) && pat[i+1] == '-' && pat[i+2] != ']' {
			hi = pat[i+2]
			i += 2
		}
		if lo <= c && c <= hi {
			in = true
		}
		i++
	}
	return false, 0
}

type ftoken struct {
	s      string
	off    int
	quoted bool
}

type filterParser struct {
	def  *probedef.Def
	in   string
	toks []ftoken
	pos  int
}

func (p *filterParser) fail(off int, format string, args ...any) *probedef.SyntaxError {
	return &probedef.SyntaxError{Col: off + 1, Input: p.in, Msg: fmt.Sprintf(format, args...)}
}

// lex splits the expression into operators, words and quoted strings. A
// value (the word after a comparison operator) runs to a space, ')', '&'
// or '|', so that globs like [!a]* and paths stay whole; other words
// also stop at operator characters.
func (p *filterParser) lex() *probedef.SyntaxError {
	s := p.in
	value := false
	for i := 0; i < len(s); {
		c := s[i]
		stop := "()<>&|~=!\"'"
		if value {
			stop = ")&|"
		}
		switch {
		case probedef.IsSpace(c):
			i++
			continue
		case c == '"' || c == '\'':
			end := strings.IndexByte(s[i+1:], c)
			if end < 0 {
				return p.fail(i, "unterminated string")
			}
			p.toks = append(p.toks, ftoken{s: s[i+1 : i+1+end], off: i, quoted: true})
			i += end + 2
		case len(s) > i+1 && (s[i:i+2] == "&&" || s[i:i+2] == "||" || s[i:i+2] == "==" ||
			s[i:i+2] == "!=" || s[i:i+2] == "<=" || s[i:i+2] == ">="):
			p.toks = append(p.toks, ftoken{s: s[i : i+2], off: i})
			i += 2
		case c == '|':
			return p.fail(i, "single | (use ||)")
		case strings.IndexByte(stop, c) >= 0:
			p.toks = append(p.toks, ftoken{s: s[i : i+1], off: i})
			i++
		default:
			j := i
			for j < len(s) && !probedef.IsSpace(s[j]) && strings.IndexByte(stop, s[j]) < 0 {
				j++
			}
			p.toks = append(p.toks, ftoken{s: s[i:j], off: i})
			i = j
		}
		last := p.toks[len(p.toks)-1]
		value = !last.quoted && filterOps[last.s]
	}
	return nil
}

func (p *filterParser) peek() (ftoken, bool) {
	if p.pos < len(p.toks) {
		return p.toks[p.pos], true
	}
	return ftoken{off: len(p.in)}, false
}

func (p *filterParser) is(s string) bool {
	t, ok := p.peek()
	return ok && !t.quoted && t.s == s
}

func (p *filterParser) or() (node, *probedef.SyntaxError) {
	l, err := p.and()
	for err == nil && p.is("||") {
		p.pos++
		var r node
		if r, err = p.and(); err == nil {
			l = orNode{l, r}
		}
	}
	return l, err
}

func (p *filterParser) and() (node, *probedef.SyntaxError) {
	l, err := p.unary()
	for err == nil && p.is("&&") {
		p.pos++
		var r node
		if r, err = p.unary(); err == nil {
			l = andNode{l, r}
		}
	}
	return l, err
}

func (p *filterParser) unary() (node, *probedef.SyntaxError) {
	switch t, _ := p.peek(); {
	case p.is("!"):
		p.pos++
		n, err := p.unary()
		return notNode{n}, err
	case p.is("("):
		p.pos++
		n, err := p.or()
		if err != nil {
			return nil, err
		}
		if !p.is(")") {
			return nil, p.fail(t.off, "unbalanced parentheses")
		}
		p.pos++
		return n, nil
	}
	return p.pred()
}

var filterOps = map[string]bool{"==": true, "!=": true, "<": true, "<=": true, ">": true, ">=": true, "&": true, "~": true}

func (p *filterParser) pred() (node, *probedef.SyntaxError) {
	ft, ok := p.peek()
	if !ok || ft.quoted || !isWord(ft.s) {
		return nil, p.fail(ft.off, "missing field name")
	}
	p.pos++
	f, found := lookupField(p.def, ft.s)
	if !found {
		return nil, p.fail(ft.off, "field %q not found in %s", ft.s, p.def.Event)
	}
	if f.typ.Array > 0 {
		return nil, p.fail(ft.off, "array field %q cannot be filtered", ft.s)
	}
	ot, ok := p.peek()
	if !ok || ot.quoted || !filterOps[ot.s] {
		return nil, p.fail(ot.off, "missing operator after %q", ft.s)
	}
	p.pos++
	vt, ok := p.peek()
	if !ok || !vt.quoted && strings.Contains(" ) & && || ", " "+vt.s+" ") {
		return nil, p.fail(vt.off, "missing value")
	}
	p.pos++
	if f.isString() {
		switch ot.s {
		case "==", "!=", "~":
			return strPred{f: f, op: ot.s, pat: vt.s}, nil
		}
		return nil, p.fail(ot.off, "operator %s is not allowed on string field %q", ot.s, ft.s)
	}
	if ot.s == "~" {
		return nil, p.fail(ot.off, "operator ~ needs a string field; %q is %s", ft.s, f.typ)
	}
	pr := numPred{f: f, op: ot.s, signed: f.typ.Signed()}
	var err error
	if pr.signed && strings.HasPrefix(vt.s, "-") {
		pr.s, err = strconv.ParseInt(vt.s, 0, 64)
		pr.u = uint64(pr.s)
	} else {
		pr.u, err = strconv.ParseUint(vt.s, 0, 64)
		pr.s = int64(pr.u)
	}
	if err != nil || vt.quoted {
		return nil, p.fail(vt.off, "invalid value %q for %s field %q (did you forget quotes?)", vt.s, f.typ, ft.s)
	}
	return pr, nil
}

// isWord reports whether a token is a word rather than an operator.
func isWord(s string) bool {
	return s != "" && strings.IndexByte("()<>&|~=!", s[0]) < 0
}
