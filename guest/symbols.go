package guest

import (
	"bytes"
	"cmp"
	"fmt"
	"io"
	"io/fs"
	"iter"
	"slices"
	"strconv"
	"strings"
)

// Symbol is one System.map entry.
type Symbol struct {
	Name string
	// Addr is the symbol's address: link-time in an unslid table, runtime
	// in a Slid view (unless PerCPU or Absolute).
	Addr uint64
	// Size is the distance to the next symbol at a greater address,
	// ignoring per-CPU and absolute symbols; 0 for those and for the last.
	Size uint64
	// Type is nm's type letter: T/t text, D/d data, B/b bss, R/r rodata,
	// A/a absolute, W/w weak, ...
	Type byte
	// PerCPU marks a zero-based per-CPU variable (x86-64 SMP): its Addr is
	// an offset into each CPU's area, not an address.
	PerCPU bool
}

// Absolute reports whether the symbol is absolute (type A/a): a value,
// not a location, so it never slides.
func (s Symbol) Absolute() bool { return s.Type == 'A' || s.Type == 'a' }

// Slides reports whether KASLR moves the symbol.
func (s Symbol) Slides() bool { return !s.PerCPU && !s.Absolute() }

// IsText reports whether the type letter is a text (code) symbol.
func (s Symbol) IsText() bool {
	switch s.Type {
	case 'T', 't', 'W', 'w':
		return true
	}
	return false
}

// Range is a half-open address range [Start, End).
type Range struct{ Start, End uint64 }

// Contains reports whether addr is in r.
func (r Range) Contains(addr uint64) bool { return addr >= r.Start && addr < r.End }

// SymbolTable is a parsed System.map. The zero slide view is what
// ParseSystemMap returns; Slid derives views for a KASLR slide. A table
// is immutable and safe for concurrent use.
type SymbolTable struct {
	*symtab
	slide uint64
}

type symtab struct {
	syms []Symbol // sorted by link-time address, then map order
	// byName: index into syms for a unique name, or -(k+1) for dups[k].
	byName map[string]int32
	dups   [][]int32
	// textAddr/textIdx: one preferred text symbol per distinct address,
	// ascending, for SymbolAt.
	textAddr []uint64
	textIdx  []int32
	text     Range // _stext.._etext
	initText Range // _sinittext.._einittext
	entry    Range // __entry_text_start..__entry_text_end
}

// ParseSystemMap reads a System.map: lines "<hex address> <type> <name>",
// optionally followed by a "[module]" field as in /proc/kallsyms. Every
// symbol is kept, duplicates included. Blank lines are skipped; anything
// else malformed is an error naming the line.
func ParseSystemMap(r io.Reader) (*SymbolTable, error) {
	b, err := readAll(r)
	if err != nil {
		return nil, fmt.Errorf("reading System.map: %w", err)
	}
	// One string for the whole file: names are substrings of it, so the
	// parse allocates per table, not per symbol.
	src := string(b)
	syms := make([]Symbol, 0, strings.Count(src, "\n")+1)
	line := 0
	for len(src) > 0 {
		line++
		var l string
		if i := strings.IndexByte(src, '\n'); i >= 0 {
			l, src = src[:i], src[i+1:]
		} else {
			l, src = src, ""
		}
		s, ok, err := parseLine(l)
		if err != nil {
			return nil, &LineError{Line: line, Text: shorten(l), Msg: err.Error()}
		}
		if ok {
			syms = append(syms, s)
		}
	}
	return newTable(syms), nil
}

// readAll is io.ReadAll with the buffer sized up front when r knows its
// length (a file, a bytes.Reader), sparing the growth copies.
func readAll(r io.Reader) ([]byte, error) {
	size := 0
	switch v := r.(type) {
	case interface{ Len() int }:
		size = v.Len()
	case interface{ Stat() (fs.FileInfo, error) }:
		if fi, err := v.Stat(); err == nil && fi.Mode().IsRegular() {
			size = int(fi.Size())
		}
	}
	buf := bytes.NewBuffer(make([]byte, 0, size+1))
	_, err := buf.ReadFrom(r)
	return buf.Bytes(), err
}

func shorten(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// parseLine parses one line; ok is false for a blank line.
func parseLine(l string) (s Symbol, ok bool, err error) {
	addr, rest := cutField(l)
	if addr == "" {
		return s, false, nil
	}
	typ, rest := cutField(rest)
	name, rest := cutField(rest)
	mod, rest := cutField(rest)
	switch {
	case len(addr) > 16:
		return s, false, fmt.Errorf("address %q longer than 64 bits", addr)
	case len(typ) != 1 || !validType(typ[0]):
		return s, false, fmt.Errorf("bad symbol type %q", typ)
	case name == "":
		return s, false, fmt.Errorf("missing symbol name")
	case mod != "" && (mod[0] != '[' || mod[len(mod)-1] != ']'):
		return s, false, fmt.Errorf("unexpected field %q after the name", mod)
	case rest != "":
		return s, false, fmt.Errorf("unexpected field %q", rest)
	}
	a, ok := parseHex(addr)
	if !ok {
		return s, false, fmt.Errorf("bad hex address %q", addr)
	}
	return Symbol{Name: name, Addr: a, Type: typ[0]}, true, nil
}

// parseHex parses up to 16 hex digits; strconv is slower here and the
// parser's speed is the table's load time.
func parseHex(s string) (uint64, bool) {
	var v uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		v = v<<4 | uint64(c)
	}
	return v, len(s) > 0 && len(s) <= 16
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' }

// cutField splits off the first space- or tab-separated field.
func cutField(s string) (field, rest string) {
	i := 0
	for i < len(s) && isSpace(s[i]) {
		i++
	}
	j := i
	for j < len(s) && !isSpace(s[j]) {
		j++
	}
	k := j
	for k < len(s) && isSpace(s[k]) {
		k++
	}
	return s[i:j], s[k:]
}

// validType accepts nm's symbol type letters.
func validType(c byte) bool {
	return strings.IndexByte("AaBbCcDdGgIiNnpRrSsTtUuVvWw?-", c) >= 0
}

// perCPURange finds the zero-based per-CPU area, if the kernel has one.
func perCPURange(syms []Symbol) (Range, bool) {
	var r Range
	var start, end bool
	for _, s := range syms {
		switch s.Name {
		case "__per_cpu_start":
			r.Start, start = s.Addr, true
		case "__per_cpu_end":
			r.End, end = s.Addr, true
		}
	}
	// Only x86-64 SMP links per-CPU data at 0; elsewhere it is ordinary
	// data that slides with the kernel.
	return r, start && end && r.Start <= r.End && r.End < 1<<32
}

func newTable(syms []Symbol) *SymbolTable {
	slices.SortStableFunc(syms, func(a, b Symbol) int { return cmp.Compare(a.Addr, b.Addr) })
	if pc, ok := perCPURange(syms); ok {
		for i := range syms {
			if syms[i].Addr >= pc.Start && syms[i].Addr <= pc.End && !syms[i].Absolute() {
				syms[i].PerCPU = true
			}
		}
	}
	t := &symtab{syms: syms, byName: make(map[string]int32, len(syms))}

	// Sizes: distance to the next greater address among sliding symbols.
	next := uint64(0)
	for i := len(syms) - 1; i >= 0; i-- {
		s := &syms[i]
		if !s.Slides() {
			continue
		}
		if next > s.Addr {
			s.Size = next - s.Addr
		}
		if i == 0 || syms[i-1].Addr != s.Addr {
			next = s.Addr
		}
	}
	for i, s := range syms {
		switch s.Name {
		case "_stext":
			t.text.Start = s.Addr
		case "_etext":
			t.text.End = s.Addr
		case "_sinittext":
			t.initText.Start = s.Addr
		case "_einittext":
			t.initText.End = s.Addr
		case "__entry_text_start":
			t.entry.Start = s.Addr
		case "__entry_text_end":
			t.entry.End = s.Addr
		}
		if j, dup := t.byName[s.Name]; !dup {
			t.byName[s.Name] = int32(i)
		} else if j >= 0 {
			t.dups = append(t.dups, []int32{j, int32(i)})
			t.byName[s.Name] = -int32(len(t.dups))
		} else {
			t.dups[-j-1] = append(t.dups[-j-1], int32(i))
		}
		if !s.IsText() || !s.Slides() {
			continue
		}
		n := len(t.textAddr)
		if n > 0 && t.textAddr[n-1] == s.Addr {
			// Aliases: prefer a function over a linker marker, then a
			// global name over a local one.
			if aliasRank(s) < aliasRank(syms[t.textIdx[n-1]]) {
				t.textIdx[n-1] = int32(i)
			}
			continue
		}
		t.textAddr = append(t.textAddr, s.Addr)
		t.textIdx = append(t.textIdx, int32(i))
	}
	return &SymbolTable{symtab: t}
}

// linkerMarkers are section boundary symbols that alias real functions.
var linkerMarkers = map[string]bool{
	"_text": true, "_stext": true, "_etext": true, "_sinittext": true,
	"_einittext": true, "__init_begin": true, "__init_end": true,
	"_sdata": true, "_edata": true, "_end": true, "__bss_start": true,
	"__bss_stop": true, "__start_rodata": true, "__end_rodata": true,
}

// aliasRank orders symbols at one address for SymbolAt; lower wins.
func aliasRank(s Symbol) int {
	r := 0
	if linkerMarkers[s.Name] || strings.HasPrefix(s.Name, "__start_") || strings.HasPrefix(s.Name, "__stop_") {
		r += 2
	}
	if s.Type >= 'a' && s.Type <= 'z' {
		r++
	}
	return r
}

// Slid returns a view of the table for a kernel whose text was moved by
// delta (runtime = link-time + delta). Views share storage.
func (t *SymbolTable) Slid(delta uint64) *SymbolTable {
	return &SymbolTable{symtab: t.symtab, slide: delta}
}

// Slide is the view's KASLR delta.
func (t *SymbolTable) Slide() uint64 { return t.slide }

// Len is the number of symbols.
func (t *SymbolTable) Len() int { return len(t.syms) }

// All yields every symbol in link-time address order.
func (t *SymbolTable) All() iter.Seq[Symbol] {
	return func(yield func(Symbol) bool) {
		for _, s := range t.syms {
			if !yield(t.slid(s)) {
				return
			}
		}
	}
}

// slid returns s as the view sees it.
func (t *SymbolTable) slid(s Symbol) Symbol {
	if s.Slides() {
		s.Addr += t.slide
	}
	return s
}

// Lookup finds the symbol with the given name. "name:N" picks the N-th
// (1-based, address order) of several symbols sharing a name. Errors are
// *UnknownSymbolError or *AmbiguousError.
func (t *SymbolTable) Lookup(name string) (Symbol, error) {
	if idx := t.named(name); len(idx) == 1 {
		return t.slid(t.syms[idx[0]]), nil
	} else if len(idx) > 1 {
		return Symbol{}, &AmbiguousError{Name: name, Candidates: t.symbols(idx)}
	}
	if base, nth, ok := cutOrdinal(name); ok {
		idx := t.named(base)
		if nth <= len(idx) {
			return t.slid(t.syms[idx[nth-1]]), nil
		}
		if len(idx) > 0 {
			e := &UnknownSymbolError{Name: name}
			for i := range min(len(idx), 5) {
				e.Similar = append(e.Similar, fmt.Sprintf("%s:%d", base, i+1))
			}
			return Symbol{}, e
		}
	}
	return Symbol{}, &UnknownSymbolError{Name: name, Similar: t.similar(name)}
}

// At is the address of name+off, off within the symbol (*PastEndError
// otherwise; the last symbol, of unknown size, takes any offset).
func (t *SymbolTable) At(name string, off uint64) (uint64, error) {
	s, err := t.Lookup(name)
	if err != nil {
		return 0, err
	}
	if s.Size != 0 && off >= s.Size {
		return 0, &PastEndError{Name: name, Off: off, Size: s.Size}
	}
	return s.Addr + off, nil
}

// named returns the indices of the symbols called name, in address order.
func (t *SymbolTable) named(name string) []int32 {
	j, ok := t.byName[name]
	switch {
	case !ok:
		return nil
	case j >= 0:
		return []int32{j}
	}
	return t.dups[-j-1]
}

func (t *SymbolTable) symbols(idx []int32) []Symbol {
	out := make([]Symbol, len(idx))
	for i, j := range idx {
		out[i] = t.slid(t.syms[j])
	}
	return out
}

// cutOrdinal splits "name:N" with N >= 1.
func cutOrdinal(s string) (string, int, bool) {
	i := strings.LastIndexByte(s, ':')
	if i <= 0 {
		return "", 0, false
	}
	n, err := strconv.Atoi(s[i+1:])
	if err != nil || n < 1 || s[i+1] == '+' {
		return "", 0, false
	}
	return s[:i], n, true
}

// SymbolsAt returns every symbol whose address (as this view sees it) is
// exactly addr, in map order.
func (t *SymbolTable) SymbolsAt(addr uint64) []Symbol {
	var out []Symbol
	for _, a := range []uint64{addr - t.slide, addr} {
		i, _ := slices.BinarySearchFunc(t.syms, a, func(s Symbol, a uint64) int { return cmp.Compare(s.Addr, a) })
		for ; i < len(t.syms) && t.syms[i].Addr == a; i++ {
			if s := t.slid(t.syms[i]); s.Addr == addr && (a == addr || s.Slides()) {
				out = append(out, s)
			}
		}
		if t.slide == 0 {
			break
		}
	}
	return out
}

// SymbolAt finds the text symbol containing addr: the one at the greatest
// address <= addr, when addr is within its Size. off is addr minus the
// symbol's address. It does not allocate.
func (t *SymbolTable) SymbolAt(addr uint64) (sym Symbol, off uint64, ok bool) {
	a := addr - t.slide
	lo, hi := 0, len(t.textAddr)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if t.textAddr[m] <= a {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == 0 {
		return Symbol{}, 0, false
	}
	s := t.syms[t.textIdx[lo-1]]
	off = a - s.Addr
	if off >= s.Size && (s.Size != 0 || off != 0) {
		return Symbol{}, 0, false
	}
	return t.slid(s), off, true
}

// Describe says where addr is for an error message about an address
// that no function contains: in which symbol of any type (data, rodata,
// bss), or outside them all. Sizes run to the next symbol, so only the
// ends of the map leave an address in none.
func (t *SymbolTable) Describe(addr uint64) string {
	a := addr - t.slide
	i, _ := slices.BinarySearchFunc(t.syms, a+1, func(s Symbol, a uint64) int { return cmp.Compare(s.Addr, a) })
	for j := i - 1; j >= 0; j-- { // the nearest located symbol at or below
		if !t.syms[j].Slides() {
			continue
		}
		p := t.slid(t.syms[j])
		off := addr - p.Addr
		if off < p.Size || off == 0 {
			return fmt.Sprintf("in %s+%#x/%#x, %s", p.Name, off, p.Size, typeName(p.Type))
		}
		return fmt.Sprintf("past the kernel's last symbol, %s+%#x", p.Name, off)
	}
	for _, s := range t.syms[i:] {
		if s.Slides() {
			s = t.slid(s)
			return fmt.Sprintf("below the kernel's first symbol, %s at %#x", s.Name, s.Addr)
		}
	}
	return "in no symbol: the map locates none"
}

// typeName spells out an nm type letter.
func typeName(c byte) string {
	var name string
	switch c | 0x20 {
	case 't':
		name = "text"
	case 'd':
		name = "data"
	case 'b':
		name = "bss"
	case 'r':
		name = "read-only data"
	case 'w', 'v':
		name = "weak"
	default:
		return fmt.Sprintf("a %q symbol", c)
	}
	if c >= 'a' {
		return "a local " + name + " symbol"
	}
	return "a global " + name + " symbol"
}

// Text is _stext.._etext in this view.
func (t *SymbolTable) Text() Range { return t.shift(t.text) }

// InitText is _sinittext.._einittext in this view.
func (t *SymbolTable) InitText() Range { return t.shift(t.initText) }

func (t *SymbolTable) shift(r Range) Range {
	if r.End <= r.Start {
		return Range{}
	}
	return Range{r.Start + t.slide, r.End + t.slide}
}

// InText reports whether addr is kernel text: core or init text.
func (t *SymbolTable) InText(addr uint64) bool {
	a := addr - t.slide
	return t.text.Contains(a) || t.initText.Contains(a)
}

// InEntryText reports whether addr is in .entry.text: the code that
// exceptions, interrupts and system calls enter, mostly not by a call.
func (t *SymbolTable) InEntryText(addr uint64) bool { return t.entry.Contains(addr - t.slide) }

// FormatFlags change FormatAddr's output.
type FormatFlags uint8

const (
	// FormatDemangle demangles Rust symbol names.
	FormatDemangle FormatFlags = 1 << iota
)

// FormatAddr renders addr as "sym+0xoff/0xsize" as the kernel's %pS
// does, or as hex when no text symbol contains it.
func (t *SymbolTable) FormatAddr(addr uint64) string { return t.Format(addr, 0) }

// Format is FormatAddr with flags.
func (t *SymbolTable) Format(addr uint64, flags FormatFlags) string {
	s, off, ok := t.SymbolAt(addr)
	if !ok {
		return "0x" + strconv.FormatUint(addr, 16)
	}
	name := s.Name
	if flags&FormatDemangle != 0 {
		name = Demangle(name)
	}
	return name + "+0x" + strconv.FormatUint(off, 16) + "/0x" + strconv.FormatUint(s.Size, 16)
}

// Resolve evaluates "sym", "sym+0x10", "sym:2+0x10" or a plain hex
// address to an address in this view.
func (t *SymbolTable) Resolve(expr string) (uint64, error) {
	name, off, err := ParseSymbolOffset(expr)
	if err != nil {
		return 0, err
	}
	if name == "" {
		return off, nil
	}
	s, err := t.Lookup(name)
	if err != nil {
		return 0, fmt.Errorf("resolving %q: %w", expr, err)
	}
	return s.Addr + off, nil
}
