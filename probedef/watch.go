package probedef

import (
	"fmt"
	"math"
	"strings"
)

// WatchAccess is which accesses a w line watches.
type WatchAccess int

const (
	AccessRW    WatchAccess = iota // rw: reads and writes (ftrace's default)
	AccessWrite                    // w
	AccessRead                     // r
)

func (a WatchAccess) String() string {
	switch a {
	case AccessWrite:
		return "w"
	case AccessRead:
		return "r"
	}
	return "rw"
}

// DefaultWatchGroup is the group ftrace gives wprobe events defined
// without one.
const DefaultWatchGroup = "wprobes"

// DefaultWatchLen is the length a w line's SPEC gets without :LENGTH.
const DefaultWatchLen = 4

// watchType is the type $value and $old take when the line gives none:
// hex of the watched length, so a 4-byte watch reads 4 bytes.
func watchType(n int) Type {
	switch n {
	case 1:
		return Type{Base: X8}
	case 2:
		return Type{Base: X16}
	case 4:
		return Type{Base: X32}
	}
	return Type{Base: X64}
}

// watchDefaultArgs are what a w line without fetch args reports: where,
// what was there, and what is there now.
var watchDefaultArgs = []string{"addr=$addr", "old=$old", "new=$value"}

// parseWatch reads a wprobe line: w:[GRP/][EVENT] SPEC [FETCHARGS], SPEC
// being [r|w|rw]@ADDRESS|SYMBOL[+|-OFFS][:LENGTH]
// (Documentation/trace/wprobetrace.rst). Without fetch args it reports
// $addr, $old and $value.
func (p *lineParser) parseWatch(d *Def, toks []token) (*Def, *SyntaxError) {
	head := toks[0]
	d.Kind = Watch
	if len(head.s) > 1 {
		if head.s[1] != ':' {
			return nil, p.fail(head.off+1, "unexpected %q after probe type", head.s[1:])
		}
		grp, ev, err := p.parseEventName(head.s[2:], head.off+2)
		if err != nil {
			return nil, err
		}
		d.Group, d.Event = grp, ev
	}
	if len(toks) < 2 {
		return nil, p.fail(head.off+len(head.s)+1, "missing watch spec [r|w|rw]@ADDRESS|SYMBOL[+|-OFFS][:LENGTH]")
	}
	if err := p.parseWatchSpec(d, toks[1]); err != nil {
		return nil, err
	}
	if d.Group == "" {
		d.Group = DefaultWatchGroup
	}
	if d.Event == "" {
		d.Event = defaultWatchEvent(d)
	}
	args := toks[2:]
	if len(args) == 0 {
		for _, a := range watchDefaultArgs {
			args = append(args, token{a, -1})
		}
		// Columns of these point at the spec: they are not in the line.
		for i := range args {
			args[i].off = toks[1].off
		}
	}
	if err := p.parseArgs(d, args); err != nil {
		return nil, err
	}
	return d, nil
}

func (p *lineParser) parseWatchSpec(d *Def, tok token) *SyntaxError {
	s, off := tok.s, tok.off
	at := strings.IndexByte(s, '@')
	if at < 0 {
		return p.fail(off, "watch spec %q has no @: want [r|w|rw]@ADDRESS|SYMBOL[+|-OFFS][:LENGTH]", s)
	}
	switch s[:at] {
	case "", "rw":
		d.Access = AccessRW
	case "w":
		d.Access = AccessWrite
	case "r":
		d.Access = AccessRead
	default:
		return p.fail(off, "invalid access type %q: want r, w or rw", s[:at])
	}
	loc, locOff := s[at+1:], off+at+1
	d.Len = DefaultWatchLen
	if c := strings.LastIndexByte(loc, ':'); c >= 0 {
		n, ok := kstrtoul(loc[c+1:])
		if !ok || (n != 1 && n != 2 && n != 4 && n != 8) {
			return p.fail(locOff+c+1, "invalid watch length %q: want 1, 2, 4 or 8", loc[c+1:])
		}
		d.Len, loc = int(n), loc[:c]
	}
	if loc == "" {
		return p.fail(locOff, "missing address or symbol to watch")
	}
	if isDigit(loc[0]) {
		v, ok := kstrtoul(loc)
		if !ok {
			return p.fail(locOff, "invalid watch address %q", loc)
		}
		d.Addr = v
		return nil
	}
	sym, offStr := splitSymOff(loc)
	if !goodSymbol(sym) {
		return p.fail(locOff, "invalid symbol %q", sym)
	}
	if offStr != "" {
		v, ok := kstrtol(offStr)
		if !ok || v < -math.MaxUint32 || v > math.MaxUint32 {
			return p.fail(locOff+len(sym), "invalid offset %q", offStr)
		}
		d.Offset = uint64(v)
	}
	d.Symbol = sym
	return nil
}

// defaultWatchEvent names a w event after its location: w_SYM_OFFS or
// w_0xADDR, as defaultEvent does for probes.
func defaultWatchEvent(d *Def) string {
	if d.Symbol == "" {
		return fmt.Sprintf("w_0x%016x", d.Addr)
	}
	s := fmt.Sprintf("w_%s_%d", d.Symbol, int64(d.Offset))
	s = strings.NewReplacer(".", "_", "-", "_").Replace(s)
	if len(s) > MaxEventNameLen-1 {
		s = s[:MaxEventNameLen-1]
	}
	return s
}
