package probedef

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math"
	"path"
	"strings"
)

// Parse parses one kprobe_events line. Text from '#' on is a comment, as
// in kprobe_events. Errors are *SyntaxError with Line 0.
func Parse(line string) (*Def, error) {
	d, err := parseLine(0, line)
	if err != nil {
		return nil, err
	}
	return d, nil
}

// ParseFile parses a file of kprobe_events lines, skipping blank and
// comment lines. If any line is bad the error is a SyntaxErrors naming
// every bad line; the good definitions come with it, so that a caller can
// check them too and report every problem at once — but arms none.
func ParseFile(r io.Reader) ([]*Def, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var (
		defs []*Def
		bad  SyntaxErrors
	)
	for n := 1; ; n++ {
		line, long, err := readLine(br)
		if err != nil && err != io.EOF {
			return nil, fmt.Errorf("reading probe definitions: %w", err)
		}
		if err == io.EOF && line == "" && !long {
			break
		}
		text := strings.TrimRight(line, "\r")
		if n == 1 {
			text = strings.TrimPrefix(text, "\ufeff") // an editor's UTF-8 byte order mark
		}
		switch {
		case long:
			bad = append(bad, &SyntaxError{Line: n, Col: 1, Input: text[:64] + "...",
				Msg: fmt.Sprintf("line longer than %d bytes (ftrace's limit)", MaxLine)})
		case len(fields(stripComment(text))) > 0:
			if d, err := parseLine(n, text); err != nil {
				bad = append(bad, err)
			} else {
				defs = append(defs, d)
			}
		}
		if err == io.EOF {
			break
		}
	}
	if len(bad) > 0 {
		return defs, bad
	}
	return defs, nil
}

// MaxLine is the longest probe line: ftrace's WRITE_BUFSIZE, past which
// kprobe_events refuses a line ("Too long line").
const MaxLine = 4096

// readLine reads one line without its newline. A line longer than
// MaxLine is read to its end and given back cut, with long set.
func readLine(br *bufio.Reader) (line string, long bool, err error) {
	var b []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if len(b) <= MaxLine {
			b = append(b, chunk...)
		}
		switch {
		case err == bufio.ErrBufferFull:
			continue
		case err != nil && err != io.EOF:
			return "", false, err
		}
		b = bytes.TrimSuffix(b, []byte("\n"))
		if len(b) > MaxLine {
			return string(b[:MaxLine]), true, err
		}
		return string(b), false, err
	}
}

func stripComment(s string) string {
	if i := strings.IndexByte(s, '#'); i >= 0 {
		return s[:i]
	}
	return s
}

// token is one whitespace-separated word and its byte offset in the line.
type token struct {
	s   string
	off int
}

// fields splits like the kernel's argv_split: on isspace() runs.
func fields(s string) []token {
	var toks []token
	start := -1
	for i := 0; i <= len(s); i++ {
		if i == len(s) || IsSpace(s[i]) {
			if start >= 0 {
				toks = append(toks, token{s[start:i], start})
				start = -1
			}
			continue
		}
		if start < 0 {
			start = i
		}
	}
	return toks
}

// IsSpace reports whether c is white space as the kernel's isspace()
// takes it in probe lines and filters.
func IsSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

type lineParser struct {
	line  int
	input string
}

// fail builds the error for byte offset off of the input.
func (p *lineParser) fail(off int, format string, a ...any) *SyntaxError {
	return &SyntaxError{Line: p.line, Col: off + 1, Input: p.input, Msg: fmt.Sprintf(format, a...)}
}

func parseLine(n int, text string) (*Def, *SyntaxError) {
	p := &lineParser{line: n, input: text}
	toks := fields(stripComment(text))
	if len(toks) == 0 {
		return nil, p.fail(0, "empty probe definition")
	}
	d := &Def{Line: n, Text: text}
	head := toks[0]
	switch head.s[0] {
	case '-':
		return p.parseDelete(d, toks)
	case 'p':
		d.Kind = Probe
	case 'r':
		d.Kind = Retprobe
	case 'j':
		d.Kind = Jprobe
	case 'w':
		return p.parseWatch(d, toks)
	default:
		return nil, p.fail(head.off, "unknown probe type %q: want p, r, j, w or -", head.s[:1])
	}

	rest, event, hasEvent := head.s[1:], "", false
	if i := strings.IndexByte(rest, ':'); i >= 0 {
		rest, event, hasEvent = rest[:i], rest[i+1:], true
	}
	if rest != "" {
		if err := p.parseMaxActive(d, rest, head.off+1); err != nil {
			return nil, err
		}
	}
	if len(toks) < 2 {
		return nil, p.fail(head.off+len(head.s)+1, "missing probe address or symbol")
	}
	if err := p.parseLocation(d, toks[1]); err != nil {
		return nil, err
	}
	if hasEvent {
		evOff := head.off + len(head.s) - len(event)
		grp, ev, err := p.parseEventName(event, evOff)
		if err != nil {
			return nil, err
		}
		d.Group, d.Event = grp, ev
	}
	if d.Group == "" {
		d.Group = DefaultGroup
	}
	if d.Event == "" {
		d.Event = defaultEvent(d)
	}

	if err := p.parseArgs(d, toks[2:]); err != nil {
		return nil, err
	}
	return d, nil
}

func (p *lineParser) parseArgs(d *Def, args []token) *SyntaxError {
	if len(args) > MaxTraceArgs {
		return p.fail(args[MaxTraceArgs].off, "too many arguments (max %d)", MaxTraceArgs)
	}
	for i, a := range args {
		arg, err := p.parseArg(d, i, a)
		if err != nil {
			return err
		}
		d.Args = append(d.Args, arg)
	}
	return nil
}

func (p *lineParser) parseMaxActive(d *Def, s string, off int) *SyntaxError {
	if !isDigit(s[0]) {
		return p.fail(off, "unexpected %q after probe type", s)
	}
	if d.Kind != Retprobe {
		return p.fail(off, "maxactive is only for return probes")
	}
	v, ok := kstrtoul(s)
	if !ok || v == 0 {
		return p.fail(off, "invalid maxactive number %q", s)
	}
	if v > MaxActiveMax {
		return p.fail(off, "maxactive %d is too big (max %d)", v, MaxActiveMax)
	}
	d.MaxActive = int(v)
	return nil
}

func (p *lineParser) parseDelete(d *Def, toks []token) (*Def, *SyntaxError) {
	head := toks[0]
	if len(head.s) < 2 || head.s[1] != ':' {
		return nil, p.fail(head.off, "want -:[GRP/]EVENT")
	}
	d.Kind = Delete
	grp, ev, err := p.parseEventName(head.s[2:], head.off+2)
	if err != nil {
		return nil, err
	}
	if ev == "" {
		return nil, p.fail(head.off+len(head.s), "event name is not specified")
	}
	if len(toks) > 1 {
		return nil, p.fail(toks[1].off, "unexpected %q after the event to delete", toks[1].s)
	}
	d.Group, d.Event = grp, ev
	return d, nil
}

// parseEventName splits [GRP/]EVENT (ftrace also takes GRP.EVENT). An
// empty event after a group means "generate one".
func (p *lineParser) parseEventName(s string, off int) (group, event string, err *SyntaxError) {
	slash := strings.IndexByte(s, '/')
	if slash < 0 {
		slash = strings.IndexByte(s, '.')
	}
	if slash >= 0 {
		g := s[:slash]
		switch {
		case g == "":
			return "", "", p.fail(off, "group name is not specified")
		case len(g) >= MaxEventNameLen:
			return "", "", p.fail(off, "group name is too long (max %d)", MaxEventNameLen-1)
		case !goodName(g, true):
			return "", "", p.fail(off, "group name %q must follow the same rules as C identifiers", g)
		}
		group, s, off = g, s[slash+1:], off+slash+1
	}
	switch {
	case s == "" && slash >= 0:
		return group, "", nil
	case s == "":
		return "", "", p.fail(off, "event name is not specified")
	case len(s) > MaxEventNameLen:
		return "", "", p.fail(off, "event name is too long (max %d)", MaxEventNameLen)
	case !goodName(s, false):
		return "", "", p.fail(off, "event name %q must follow the same rules as C identifiers", s)
	}
	return group, s, nil
}

func (p *lineParser) parseLocation(d *Def, tok token) *SyntaxError {
	loc := tok.s
	if isDigit(loc[0]) {
		if d.Kind == Jprobe {
			return p.fail(tok.off, "a jprobe needs a function symbol, not an address")
		}
		v, ok := kstrtoul(loc)
		if !ok {
			return p.fail(tok.off, "invalid probe address %q", loc)
		}
		d.Addr = v
		return nil
	}
	if strings.IndexByte(loc, '/') >= 0 && strings.IndexByte(loc, ':') >= 0 {
		return p.fail(tok.off, "uprobe locations (PATH:OFFSET) are not supported")
	}
	if i := strings.IndexByte(loc, '%'); i >= 0 {
		if loc[i:] != "%return" {
			return p.fail(tok.off+i, "invalid probe address suffix %q: only %%return is known", loc[i:])
		}
		if d.Kind == Jprobe {
			return p.fail(tok.off+i, "%%return does not apply to a jprobe")
		}
		d.Kind = Retprobe
		loc = loc[:i]
	}
	symOff := tok.off
	ordinal := ""
	if i := strings.IndexByte(loc, ':'); i >= 0 && isOrdinal(loc[i+1:]) {
		// hvprobe's SYM:N picks the N-th of several symbols sharing a
		// name (guest.SymbolTable.Lookup); ftrace's MOD:SYM never has a
		// number for SYM.
		n := i + 1 + strings.IndexFunc(loc[i+1:]+"+", func(r rune) bool { return r < '0' || r > '9' })
		ordinal, loc = loc[i:n], loc[:i]+loc[n:]
	} else if i >= 0 {
		d.Module = loc[:i]
		if !goodName(d.Module, false) {
			return p.fail(tok.off, "invalid module name %q", d.Module)
		}
		loc, symOff = loc[i+1:], symOff+i+1
	}
	sym, offStr := splitSymOff(loc)
	if IsGlob(sym) {
		// hvprobe's wildcards, as bpftrace's kprobe:vfs_*: the line
		// stands for a probe on the entry of every matching function.
		bare := strings.Map(func(r rune) rune {
			if strings.ContainsRune(globChars, r) {
				return -1
			}
			return r
		}, sym)
		if _, err := path.Match(sym, ""); err != nil || (bare != "" && !goodSymbolChars(bare)) || d.Kind == Jprobe || ordinal != "" || d.Module != "" {
			return p.fail(symOff, "invalid pattern %q (a glob of function names for p: and r: lines)", sym)
		}
		if offStr != "" {
			return p.fail(tok.off, "a pattern probes function entries: no offset")
		}
	} else if !goodSymbol(sym) {
		return p.fail(symOff, "invalid symbol %q", sym)
	}
	if offStr != "" {
		v, ok := kstrtol(offStr)
		if !ok || v < 0 || v > math.MaxUint32 {
			// At the location, as ftrace's BAD_PROBE_ADDR.
			return p.fail(tok.off, "invalid probe offset %q", offStr)
		}
		d.Offset = uint64(v)
	}
	d.Symbol = sym + ordinal
	if d.Offset != 0 && d.Kind != Probe {
		return p.fail(tok.off, "a %s must be on a function entry (offset 0)", kindNoun(d.Kind))
	}
	return nil
}

func kindNoun(k Kind) string {
	if k == Jprobe {
		return "jprobe"
	}
	return "return probe"
}

// defaultEvent names an event as ftrace does: p_SYM_OFFS or p_0xADDR,
// with ':' and '.' made '_' and the result cut to fit MAX_EVENT_NAME_LEN.
// ftrace prints MEMADDR with %p, which hashes it; the real address is
// more use to a VMM that knows it anyway.
func defaultEvent(d *Def) string {
	var s string
	if d.Symbol != "" {
		sym := d.Symbol
		if d.Module != "" {
			sym = d.Module + ":" + sym
		}
		s = fmt.Sprintf("%s_%s_%d", d.Kind, sym, d.Offset)
	} else {
		s = fmt.Sprintf("%s_0x%016x", d.Kind, d.Addr)
	}
	s = strings.NewReplacer(":", "_", ".", "_").Replace(s)
	s = strings.Map(func(r rune) rune { // a pattern's
		if strings.ContainsRune(globChars, r) {
			return '_'
		}
		return r
	}, s)
	if len(s) > MaxEventNameLen-1 {
		s = s[:MaxEventNameLen-1]
	}
	return s
}

// argsAvailable reports whether $argN and parameter names mean anything:
// on a function entry they are read directly; on a return probe ftrace
// records them at entry.
func argsAvailable(d *Def) bool {
	return d.OnEntry() || d.Kind == Retprobe
}

var reservedFields = map[string]bool{
	"common_type": true, "common_flags": true, "common_preempt_count": true,
	"common_pid": true, "common_tgid": true,
	"__probe_ip": true, "__probe_ret_ip": true, "__probe_func": true,
}

func (p *lineParser) parseArg(d *Def, i int, tok token) (Arg, *SyntaxError) {
	s := tok.s
	if s == "$arg*" {
		if !argsAvailable(d) {
			return Arg{}, p.fail(tok.off, "$arg* needs a probe on a function entry or a return probe")
		}
		for _, a := range d.Args {
			if a.Fetch.Kind == FetchAllArgs {
				return Arg{}, p.fail(tok.off, "$arg* given twice")
			}
		}
		return Arg{Fetch: &Fetch{Kind: FetchAllArgs}, Type: DefaultType}, nil
	}

	var name string
	body, bodyOff := s, tok.off
	if eq := strings.IndexByte(s, '='); eq >= 0 {
		switch {
		case eq > MaxArgNameLen:
			return Arg{}, p.fail(tok.off, "argument name is too long (max %d)", MaxArgNameLen)
		case eq == 0:
			return Arg{}, p.fail(tok.off, "argument name is not specified")
		}
		name, body, bodyOff = s[:eq], s[eq+1:], tok.off+eq+1
		if !goodName(name, false) {
			return Arg{}, p.fail(tok.off, "argument name %q must follow the same rules as C identifiers", name)
		}
	} else {
		// As ftrace with BTF: a bare parameter names its field.
		name = body
		if c := strings.IndexByte(name, ':'); c >= 0 {
			name = name[:c]
		}
		if !goodName(name, false) {
			name = fmt.Sprintf("arg%d", i+1)
		}
	}
	if reservedFields[name] {
		return Arg{}, p.fail(tok.off, "argument name %q is reserved", name)
	}
	for _, a := range d.Args {
		if a.Name == name {
			return Arg{}, p.fail(tok.off, "argument name %q is already used", name)
		}
	}
	switch {
	case len(body) > MaxArgStrLen:
		return Arg{}, p.fail(bodyOff, "argument expression is too long (max %d)", MaxArgStrLen)
	case body == "":
		return Arg{}, p.fail(bodyOff, "no argument expression")
	}

	// ftrace points type errors of untyped args at the expression.
	expr, typ, typOff, hasType := body, DefaultType, bodyOff, false
	if c := strings.IndexByte(body, ':'); c >= 0 {
		expr, typOff, hasType = body[:c], bodyOff+c+1, true
		var err *SyntaxError
		if typ, err = p.parseType(body[c+1:], typOff); err != nil {
			return Arg{}, err
		}
	}
	f, err := p.parseFetch(d, expr, bodyOff)
	if err != nil {
		return Arg{}, err
	}
	if typ, err = p.checkType(f, typ, typOff, hasType); err != nil {
		return Arg{}, err
	}
	if !hasType && (f.Kind == FetchWatchValue || f.Kind == FetchWatchOld) {
		typ = watchType(d.Len)
	}
	if n := storeOps(f, typ); n > fetchInsnMax-1 {
		// ftrace runs out of fetch instructions adding the outermost
		// dereference, and points inside it.
		col := bodyOff
		if i := strings.IndexByte(expr, '('); i >= 0 {
			col += i + 1
		}
		return Arg{}, p.fail(col, "dereference is nested too deeply")
	}
	return Arg{Name: name, Fetch: f, Type: typ, BTFType: !hasType && f.btfTyped()}, nil
}

// checkType applies ftrace's rules on which fetches each type can store.
func (p *lineParser) checkType(f *Fetch, t Type, off int, explicit bool) (Type, *SyntaxError) {
	if f.Kind == FetchComm || f.Kind == FetchImmString {
		if explicit && (t.Base != String || t.Array > 0) {
			return t, p.fail(off, "$comm and immediate strings take only type string")
		}
		return Type{Base: String}, nil
	}
	// BTF decides later whether a parameter or field is text, as ftrace
	// does for char * and char arrays.
	btfTyped := f.Kind == FetchParam || len(f.Fields) > 0
	switch t.Base {
	case String, UString:
		if !f.memory() && f.Kind != FetchImm && !btfTyped {
			return t, p.fail(off, "%s accepts only a memory fetch such as +0(%%di) or @ADDR", t.Base)
		}
	case SymStr:
		switch f.Kind {
		case FetchReg, FetchStack, FetchRetval, FetchArg, FetchParam, FetchMem, FetchSymMem, FetchDeref:
		default:
			return t, p.fail(off, "symstr accepts only a register, stack entry, argument or memory fetch")
		}
	}
	if t.Array > 0 && (!(f.memory() || len(f.Fields) > 0) || t.Base == SymStr) {
		return t, p.fail(off, "arrays accept only a memory fetch such as +0(%%di)")
	}
	return t, nil
}

// storeOps counts ftrace's fetch instructions for f stored as t: the
// fetch, a separate store unless it replaces the last dereference, and
// the bitfield and array steps.
func storeOps(f *Fetch, t Type) int {
	n := f.ops()
	switch {
	case t.IsString():
		if t.Base == SymStr || !f.memory() || t.Array > 0 {
			n++
		}
	case !f.memory():
		n++
	}
	if t.Base == Bitfield {
		n++
	}
	if t.Array > 0 {
		n++
	}
	return n
}

var typeNames = map[string]BaseType{
	"u8": U8, "u16": U16, "u32": U32, "u64": U64,
	"s8": S8, "s16": S16, "s32": S32, "s64": S64,
	"x8": X8, "x16": X16, "x32": X32, "x64": X64,
	"char": Char, "string": String, "ustring": UString,
	"symbol": Symbol, "symstr": SymStr,
}

func (p *lineParser) parseType(s string, off int) (Type, *SyntaxError) {
	var t Type
	base := s
	if lb := strings.IndexByte(s, '['); lb >= 0 {
		base = s[:lb]
		rb := strings.IndexByte(s[lb:], ']')
		if rb < 0 {
			return t, p.fail(off+len(s), "array is not closed")
		}
		rb += lb
		if rb != len(s)-1 {
			return t, p.fail(off+rb+1, "unexpected %q after array", s[rb+1:])
		}
		n, ok := kstrtoul(s[lb+1 : rb])
		if !ok || n == 0 {
			return t, p.fail(off+lb+1, "invalid array size %q", s[lb+1:rb])
		}
		if n > MaxArrayLen {
			return t, p.fail(off+lb+1, "array size %d is too big (max %d)", n, MaxArrayLen)
		}
		t.Array = int(n)
	}
	if base != "" && base[0] == 'b' {
		return p.parseBitfield(t, base, off)
	}
	b, ok := typeNames[base]
	if !ok {
		return t, p.fail(off, "unknown type %q", base)
	}
	t.Base = b
	return t, nil
}

// parseBitfield reads b<bit-width>@<bit-offset>/<container-size>.
func (p *lineParser) parseBitfield(t Type, s string, off int) (Type, *SyntaxError) {
	slash := strings.IndexByte(s, '/')
	if slash < 0 {
		return t, p.fail(off, "unknown type %q", s)
	}
	cs, ok := kstrtoul(s[slash+1:])
	if !ok || (cs != 8 && cs != 16 && cs != 32 && cs != 64) {
		return t, p.fail(off, "unknown type %q: bitfield container must be 8, 16, 32 or 64", s)
	}
	bw, n := prefixUint(s[1:])
	rest := s[1+n:]
	if bw == 0 || rest == "" || rest[0] != '@' {
		return t, p.fail(off, "invalid bitfield %q: want b<bit-width>@<bit-offset>/<container-size>", s)
	}
	bo, n := prefixUint(rest[1:])
	if n == 0 || 1+n >= len(rest) || rest[1+n] != '/' {
		return t, p.fail(off, "invalid bitfield %q: want b<bit-width>@<bit-offset>/<container-size>", s)
	}
	if bw+bo > cs {
		return t, p.fail(off, "invalid bitfield %q: %d+%d bits do not fit in %d", s, bw, bo, cs)
	}
	t.Base, t.BitWidth, t.BitOffset, t.ContainerBits = Bitfield, int(bw), int(bo), int(cs)
	return t, nil
}

// x86-64 pt_regs names, as regs_query_register_offset() knows them. ftrace
// takes no rax/eax spellings.
var regNames = map[string]bool{
	"ax": true, "bx": true, "cx": true, "dx": true, "si": true, "di": true,
	"bp": true, "sp": true, "ip": true, "flags": true, "orig_ax": true,
	"cs": true, "ss": true,
	"r8": true, "r9": true, "r10": true, "r11": true,
	"r12": true, "r13": true, "r14": true, "r15": true,
}

func (p *lineParser) parseFetch(d *Def, s string, off int) (*Fetch, *SyntaxError) {
	if s == "" {
		return nil, p.fail(off, "no argument expression")
	}
	if s[0] == '$' || isAlpha(s[0]) || s[0] == '_' {
		if i := strings.IndexAny(s, ".-"); i > 0 {
			return p.parseFieldAccess(d, s, i, off)
		}
	}
	switch s[0] {
	case '$':
		return p.parseVar(d, s, off)
	case '%':
		r := s[1:]
		if !regNames[r] {
			hint := ""
			if len(r) > 1 && (r[0] == 'r' || r[0] == 'e') && regNames[r[1:]] {
				hint = fmt.Sprintf(" (ftrace spells it %%%s)", r[1:])
			}
			return nil, p.fail(off, "invalid register name %q%s", r, hint)
		}
		return &Fetch{Kind: FetchReg, Reg: r}, nil
	case '@':
		return p.parseMemFetch(s, off)
	case '+', '-':
		return p.parseDeref(d, s, off)
	case '\\':
		if len(s) > 1 && s[1] == '"' {
			str := s[2:]
			if str == "" || str[len(str)-1] != '"' {
				return nil, p.fail(off+len(s), "immediate string is not closed with '\"'")
			}
			return &Fetch{Kind: FetchImmString, Str: str[:len(str)-1]}, nil
		}
		v, ok := strToImmediate(s[1:])
		if !ok {
			return nil, p.fail(off+1, "invalid immediate value %q", s[1:])
		}
		return &Fetch{Kind: FetchImm, Imm: v}, nil
	}
	if goodName(s, false) {
		if !argsAvailable(d) {
			return nil, p.fail(off, "parameter names need a probe on a function entry or a return probe")
		}
		return &Fetch{Kind: FetchParam, Str: s}, nil
	}
	return nil, p.fail(off, "invalid fetch argument %q", s)
}

// parseFieldAccess reads BASE->MEMBER[.MEMBER|->MEMBER]..., ftrace's BTF
// field access; sep is where the first separator is in s.
func (p *lineParser) parseFieldAccess(d *Def, s string, sep, off int) (*Fetch, *SyntaxError) {
	base, err := p.parseFetch(d, s[:sep], off)
	if err != nil {
		return nil, err
	}
	switch base.Kind {
	case FetchParam, FetchArg, FetchRetval:
	default:
		return nil, p.fail(off, "fields (->) follow only a parameter name, $argN or $retval")
	}
	for i := sep; i < len(s); {
		var fl Field
		switch {
		case strings.HasPrefix(s[i:], "->"):
			fl.Arrow, i = true, i+2
		case s[i] == '-':
			return nil, p.fail(off+i, "single '-' in a field access: forgot '>'?")
		case i == sep:
			return nil, p.fail(off+i, "a dot-connected field on an argument is not supported: use '->'")
		default:
			i++
		}
		end := i + strings.IndexAny(s[i:]+".", ".-")
		// Off counts from the base as String spells it ($arg01 is $arg1).
		fl.Name, fl.Off = s[i:end], i-sep+len(base.base())
		if !goodName(fl.Name, false) {
			return nil, p.fail(off+i, "invalid field name %q", fl.Name)
		}
		base.Fields = append(base.Fields, fl)
		i = end
	}
	return base, nil
}

func (p *lineParser) parseVar(d *Def, s string, off int) (*Fetch, *SyntaxError) {
	v := s[1:]
	switch {
	case v == "retval":
		if d.Kind == Watch {
			return nil, p.fail(off, "$retval is not available on a watch")
		}
		if d.Kind != Retprobe {
			return nil, p.fail(off, "$retval is not available on probe: use a return probe")
		}
		return &Fetch{Kind: FetchRetval}, nil
	case v == "stack":
		return &Fetch{Kind: FetchStackPtr}, nil
	case strings.HasPrefix(v, "stack") && isDigit(v[5]):
		n, ok := kstrtoul10(v[5:])
		if !ok {
			return nil, p.fail(off, "invalid $-variable %q", s)
		}
		if n > MaxStackIndex {
			return nil, p.fail(off, "invalid stack number %d (max %d)", n, MaxStackIndex)
		}
		return &Fetch{Kind: FetchStack, N: n}, nil
	case v == "comm" || v == "COMM":
		return &Fetch{Kind: FetchComm}, nil
	case v == "addr" || v == "value" || v == "old":
		if d.Kind != Watch {
			return nil, p.fail(off, "$%s is only for watch (w) events", v)
		}
		return &Fetch{Kind: map[string]FetchKind{"addr": FetchWatchAddr, "value": FetchWatchValue, "old": FetchWatchOld}[v]}, nil
	case strings.HasPrefix(v, "arg"):
		n, ok := kstrtoul10(v[3:])
		if !ok {
			return nil, p.fail(off, "invalid $-variable %q", s)
		}
		if n == 0 || n > MaxStackIndex {
			return nil, p.fail(off, "invalid argument number %d: want 1..%d", n, MaxStackIndex)
		}
		if !argsAvailable(d) {
			return nil, p.fail(off, "$argN needs a probe on a function entry or a return probe")
		}
		return &Fetch{Kind: FetchArg, N: n}, nil
	}
	return nil, p.fail(off, "invalid $-variable %q", s)
}

func (p *lineParser) parseMemFetch(s string, off int) (*Fetch, *SyntaxError) {
	if len(s) > 1 && isDigit(s[1]) {
		v, ok := kstrtoul(s[1:])
		if !ok {
			return nil, p.fail(off, "invalid memory address %q", s[1:])
		}
		return &Fetch{Kind: FetchMem, Imm: v}, nil
	}
	if len(s) > 1 && s[1] == '+' {
		return nil, p.fail(off, "file offsets (@+OFFS) are for uprobes, not kprobes")
	}
	sym, offStr := splitSymOff(s[1:])
	if !goodSymbol(sym) {
		return nil, p.fail(off+1, "invalid symbol %q", sym)
	}
	f := &Fetch{Kind: FetchSymMem, Sym: sym}
	if offStr != "" {
		v, ok := kstrtol(offStr)
		if !ok {
			return nil, p.fail(off+1+len(sym), "invalid offset %q", offStr)
		}
		f.Off = v
	}
	return f, nil
}

func (p *lineParser) parseDeref(d *Def, s string, off int) (*Fetch, *SyntaxError) {
	i, user := 1, false
	if len(s) > 1 && s[1] == 'u' {
		i, user = 2, true
	}
	open := strings.IndexByte(s, '(')
	if open < 0 {
		return nil, p.fail(off, "dereference needs a brace: +|-[u]OFFS(FETCHARG)")
	}
	num := s[i:open]
	if s[0] == '-' {
		num = "-" + num
	}
	v, ok := kstrtol(num)
	if !ok {
		return nil, p.fail(off, "invalid dereference offset %q", s[:open])
	}
	inner, innerOff := s[open+1:], off+open+1
	closing := strings.LastIndexByte(inner, ')')
	if closing < 0 {
		return nil, p.fail(innerOff+len(inner), "dereference brace is not closed")
	}
	if closing != len(inner)-1 {
		return nil, p.fail(innerOff+closing+1, "unexpected %q after dereference", inner[closing+1:])
	}
	in, err := p.parseFetch(d, inner[:closing], innerOff)
	if err != nil {
		return nil, err
	}
	if in.Kind == FetchComm || in.Kind == FetchImmString {
		return nil, p.fail(innerOff, "$comm and immediate strings can not be dereferenced")
	}
	return &Fetch{Kind: FetchDeref, Off: v, User: user, Inner: in}, nil
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isAlpha(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

// goodName is the kernel's is_good_name (C identifiers); group names may
// also hold '-' (is_good_system_name).
func goodName(s string, dashOK bool) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := isAlpha(c) || c == '_' || (i > 0 && isDigit(c)) || (dashOK && c == '-')
		if !ok {
			return false
		}
	}
	return true
}

// isOrdinal: s starts with a decimal N >= 1, then ends or gives an offset.
func isOrdinal(s string) bool {
	n := 0
	for n < len(s) && isDigit(s[n]) {
		n++
	}
	return n > 0 && s[0] != '0' && (n == len(s) || s[n] == '+' || s[n] == '-')
}

// goodSymbol accepts kallsyms-style names: C identifiers plus the '.'
// of compiler clones such as "foo.isra.0" or "bar.cold".
// IsGlob reports whether a probe line's symbol is a pattern (Expand).
func IsGlob(sym string) bool { return strings.ContainsAny(sym, "*?[") }

// globChars may appear in a pattern besides a symbol's own characters.
const globChars = "*?[]^-"

func goodSymbol(s string) bool {
	return s != "" && !isDigit(s[0]) && goodSymbolChars(s)
}

func goodSymbolChars(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !isAlpha(c) && !isDigit(c) && c != '_' && c != '.' {
			return false
		}
	}
	return true
}

// kstrtoul parses like the kernel's kstrtoul(s, 0): an optional '+', then
// 0x-prefixed hex, 0-prefixed octal or decimal, all of s, no overflow.
func kstrtoul(s string) (uint64, bool) {
	s = strings.TrimPrefix(s, "+")
	base := uint64(10)
	switch {
	case len(s) > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X') && digitVal(s[2]) < 16:
		base, s = 16, s[2:]
	case len(s) > 1 && s[0] == '0':
		base = 8
	}
	return parseUint(s, base)
}

// kstrtoul10 is kstrtoul(s, 10).
func kstrtoul10(s string) (uint64, bool) {
	return parseUint(strings.TrimPrefix(s, "+"), 10)
}

// kstrtol is kstrtol(s, 0): kstrtoul with an optional leading '-'.
func kstrtol(s string) (int64, bool) {
	if rest, neg := strings.CutPrefix(s, "-"); neg {
		v, ok := kstrtoul(rest)
		if !ok || v > 1<<63 {
			return 0, false
		}
		return int64(-v), true
	}
	v, ok := kstrtoul(s)
	if !ok || v > math.MaxInt64 {
		return 0, false
	}
	return int64(v), true
}

// strToImmediate is ftrace's str_to_immediate: unsigned, or signed when
// it starts with '-' or '+'.
func strToImmediate(s string) (uint64, bool) {
	switch {
	case s == "":
		return 0, false
	case isDigit(s[0]):
		return kstrtoul(s)
	case s[0] == '-' || s[0] == '+':
		if s[0] == '+' {
			s = s[1:]
		}
		v, ok := kstrtol(s)
		return uint64(v), ok
	}
	return 0, false
}

func parseUint(s string, base uint64) (uint64, bool) {
	if s == "" {
		return 0, false
	}
	var v uint64
	for i := 0; i < len(s); i++ {
		d := digitVal(s[i])
		if d >= base {
			return 0, false
		}
		if v > (math.MaxUint64-d)/base {
			return 0, false
		}
		v = v*base + d
	}
	return v, true
}

// prefixUint is simple_strtoul(s, &end, 0): the longest number at the
// start of s, and how many bytes it took (0 if none).
func prefixUint(s string) (uint64, int) {
	base, start := uint64(10), 0
	switch {
	case len(s) > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X') && digitVal(s[2]) < 16:
		base, start = 16, 2
	case len(s) > 0 && s[0] == '0':
		base = 8
	}
	var v uint64
	i := start
	for ; i < len(s) && digitVal(s[i]) < base; i++ {
		v = v*base + digitVal(s[i])
		if v > math.MaxUint32 {
			v = math.MaxUint32 // only compared with container sizes
		}
	}
	if i == start {
		return 0, 0
	}
	return v, i
}

func digitVal(c byte) uint64 {
	switch {
	case isDigit(c):
		return uint64(c - '0')
	case c >= 'a' && c <= 'f':
		return uint64(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return uint64(c-'A') + 10
	}
	return 99
}

// splitSymOff splits SYM[+|-OFFS] at the sign.
func splitSymOff(loc string) (sym, off string) {
	if i := strings.IndexAny(loc, "+-"); i >= 0 {
		return loc[:i], loc[i:]
	}
	return loc, ""
}
