package analysis

import (
	"cmp"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math/bits"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hvprobe/hvprobe/probedef"
)

// Limits of ftrace's hist triggers (kernel/trace/tracing_map.h,
// trace_events_hist.c).
const (
	HistMaxKeys     = 3       // TRACING_MAP_KEYS_MAX
	HistMaxVals     = 3       // TRACING_MAP_VALS_MAX, hitcount not counted
	HistMaxSortKeys = 2       // TRACING_MAP_SORT_KEYS_MAX
	HistDefaultSize = 2048    // 1 << TRACING_MAP_BITS_DEFAULT
	HistMaxSize     = 1 << 17 // 1 << TRACING_MAP_BITS_MAX
)

// Hist is an ftrace hist trigger (Documentation/trace/histogram.rst) kept
// on the host: events are grouped by key and their values summed. Add is
// safe for concurrent use; the exported fields must be set before the
// first Add and not changed afterwards.
type Hist struct {
	// Syms renders .sym, .sym-offset and stacktrace keys; without it they
	// print as hex addresses.
	Syms probedef.Symbols
	// Stack gives an event's kernel stack (return addresses, innermost
	// first) for a stacktrace key; nil takes Event.Stack.
	Stack func(ev *probedef.Event) []uint64
	// Duration gives a return probe's time since function entry for the
	// duration field, false counting it as faulted; nil takes
	// Event.Duration.
	Duration func(ev *probedef.Event) (time.Duration, bool)

	def    *probedef.Def
	spec   string
	keys   []histField
	vals   []histField
	sort   []histSort
	size   int
	filter *Filter

	mu      sync.Mutex
	entries map[string]*histEntry
	hits    uint64
	dropped uint64
}

type histMod int

const (
	modNone histMod = iota
	modHex
	modSym
	modSymOffset
	modLog2
	modBuckets
)

type histField struct {
	field
	mod     histMod
	buckets uint64
}

func (f histField) numeric() bool {
	return f.kind != fieldStack && f.kind != fieldHitcount && !f.isString()
}

type histSort struct {
	name string
	key  int // index into keys, or -1
	val  int // index into vals, or -1 for hitcount when key is -1
	desc bool
}

// keyPart is one key's value in an entry.
type keyPart struct {
	u     uint64
	s     int64 // signed fields; log2 bucket index
	str   string
	stack []uint64
	fault bool
}

type histEntry struct {
	key  []keyPart
	hits uint64
	sums []uint64 // two's complement for signed fields
	// dists are the log2 buckets of each .log2 value, by bucket index.
	dists []map[int]uint64
}

// ParseHist parses an ftrace hist trigger for def's events:
//
//	hist:keys=KEY[,KEY...][:vals=VAL[,VAL...]][:sort=FIELD[.descending|.ascending][,FIELD...]][:size=N] [if FILTER]
//
// ftrace's keys=/key= and vals=/values= spellings are accepted. Fields are
// those of ParseFilter, plus stacktrace (common_stacktrace) as a key,
// hitcount as a value or sort field, and for return probes duration (time
// since entry in ns). Numeric fields take one modifier: .hex, .sym,
// .sym-offset, .log2 or .buckets=N. Differences from ftrace: a .log2
// field uses bpftrace's buckets [2^n, 2^(n+1)) rather than ftrace's
// rounded-up ~2^n, so that keys and the histogram bars agree; size is
// kept as given rather than rounded up to a power of two; signed keys
// print signed. A key that faulted groups its events under "(fault)".
// Errors are *SyntaxError pointing into spec, or ErrNotProbe for a
// delete line.
func ParseHist(def *probedef.Def, spec string) (*Hist, error) {
	if def.Kind == probedef.Delete {
		return nil, probedef.ErrNotProbe
	}
	h := &Hist{def: def, spec: spec, size: HistDefaultSize, entries: map[string]*histEntry{}}
	fail := func(off int, format string, args ...any) error {
		return &probedef.SyntaxError{Col: off + 1, Input: spec, Msg: fmt.Sprintf(format, args...)}
	}
	body := spec
	if i := strings.Index(spec, " if "); i >= 0 {
		f, err := ParseFilter(def, spec[i+4:])
		if err != nil {
			se := err.(*probedef.SyntaxError)
			return nil, fail(i+4+se.Col-1, "%s", se.Msg)
		}
		h.filter, body = f, spec[:i]
	}
	if !strings.HasPrefix(body, "hist:") {
		return nil, fail(0, "a hist trigger starts with hist:")
	}
	type param struct {
		s   string
		off int
	}
	var params []param
	off := len("hist:")
	for _, s := range strings.Split(body[off:], ":") {
		params = append(params, param{s, off})
		off += len(s) + 1
	}
	var sortSpec *param
	for i := range params {
		p := params[i]
		name, arg, hasArg := strings.Cut(p.s, "=")
		argOff := p.off + len(name) + 1
		switch name {
		case "keys", "key", "vals", "values", "sort", "size":
			if !hasArg {
				return nil, fail(p.off, "hist parameter %q needs =VALUE", name)
			}
		default:
			return nil, fail(p.off, "unknown hist parameter %q", name)
		}
		switch name {
		case "keys", "key":
			if h.keys != nil {
				return nil, fail(p.off, "keys given twice")
			}
			fs, err := h.fields(arg, argOff, true, fail)
			if err != nil {
				return nil, err
			}
			h.keys = fs
		case "vals", "values":
			fs, err := h.fields(arg, argOff, false, fail)
			if err != nil {
				return nil, err
			}
			h.vals = append(h.vals, fs...)
		case "sort":
			sortSpec = &params[i]
		case "size":
			n, err := strconv.Atoi(arg)
			if err != nil || n < 1 || n > HistMaxSize {
				return nil, fail(argOff, "size must be a number from 1 to %d", HistMaxSize)
			}
			h.size = n
		}
	}
	if len(h.keys) == 0 {
		return nil, fail(0, "a hist trigger needs keys=")
	}
	if len(h.vals) > HistMaxVals {
		return nil, fail(0, "too many values (max %d besides hitcount)", HistMaxVals)
	}
	if sortSpec != nil {
		if err := h.parseSort(sortSpec.s[len("sort="):], sortSpec.off+len("sort="), fail); err != nil {
			return nil, err
		}
	} else {
		h.sort = []histSort{{name: "hitcount", key: -1, val: -1}}
	}
	return h, nil
}

func (h *Hist) fields(list string, off int, keys bool, fail func(int, string, ...any) error) ([]histField, error) {
	var out []histField
	for _, s := range strings.Split(list, ",") {
		f, err := h.histField(s, off, keys, fail)
		if err != nil {
			return nil, err
		}
		if keys && len(out) == HistMaxKeys {
			return nil, fail(off, "too many keys (max %d)", HistMaxKeys)
		}
		// hitcount is always counted; naming it among vals only orders it.
		if f.kind != fieldHitcount {
			out = append(out, f)
		}
		off += len(s) + 1
	}
	return out, nil
}

func (h *Hist) histField(s string, off int, key bool, fail func(int, string, ...any) error) (histField, error) {
	name, mods, _ := strings.Cut(s, ".")
	if name == "" {
		return histField{}, fail(off, "missing field name")
	}
	var f histField
	switch fl, ok := lookupField(h.def, name); {
	case ok:
		f.field = fl
	case name == "stacktrace" || name == "common_stacktrace":
		f.field = field{kind: fieldStack, name: name}
	case name == "hitcount":
		f.field = field{kind: fieldHitcount, name: name}
	case name == "duration" && h.def.Kind == probedef.Retprobe:
		f.field = field{kind: fieldDuration, name: name, typ: probedef.Type{Base: probedef.U64}}
	default:
		return f, fail(off, "field %q not found in %s", name, h.def.Event)
	}
	switch {
	case f.typ.Array > 0:
		return f, fail(off, "array field %q cannot be a hist key or value", name)
	case key && f.kind == fieldHitcount:
		return f, fail(off, "hitcount is a value, not a key")
	case !key && f.kind == fieldStack:
		return f, fail(off, "stacktrace is a key, not a value")
	case !key && f.isString():
		return f, fail(off, "string field %q cannot be summed", name)
	}
	if mods == "" {
		return f, nil
	}
	modOff := off + len(name) + 1
	if strings.Contains(mods, ".") {
		return f, fail(modOff+strings.Index(mods, "."), "only one modifier per field")
	}
	if !f.numeric() {
		return f, fail(modOff, "modifier .%s needs a numeric field", mods)
	}
	switch m, arg, _ := strings.Cut(mods, "="); m {
	case "hex":
		f.mod = modHex
	case "sym":
		f.mod = modSym
	case "sym-offset":
		f.mod = modSymOffset
	case "log2":
		f.mod = modLog2
	case "buckets":
		n, err := strconv.ParseUint(arg, 0, 64)
		if err != nil || n == 0 {
			return f, fail(modOff, "buckets=N needs a positive size")
		}
		f.mod, f.buckets = modBuckets, n
	default:
		return f, fail(modOff, "unknown modifier .%s", mods)
	}
	if !key && f.mod != modHex && f.mod != modLog2 {
		return f, fail(modOff, "values take only .hex and .log2")
	}
	return f, nil
}

func (h *Hist) parseSort(list string, off int, fail func(int, string, ...any) error) error {
	for _, s := range strings.Split(list, ",") {
		if len(h.sort) == HistMaxSortKeys {
			return fail(off, "too many sort keys (max %d)", HistMaxSortKeys)
		}
		name, dir, _ := strings.Cut(s, ".")
		st := histSort{name: name, key: -1, val: -1}
		switch dir {
		case "", "ascending":
		case "descending":
			st.desc = true
		default:
			return fail(off+len(name)+1, "sort order is .ascending or .descending")
		}
		found := name == "hitcount"
		for i, k := range h.keys {
			if !found && k.name == name {
				st.key, found = i, true
			}
		}
		for i, v := range h.vals {
			if !found && v.name == name {
				st.val, found = i, true
			}
		}
		if !found {
			return fail(off, "sort field %q is not a key, a value or hitcount", name)
		}
		h.sort = append(h.sort, st)
		off += len(s) + 1
	}
	return nil
}

// Add counts one event: it is dropped when a filter rejects it, and
// counted as Dropped when the table is full and its key is new.
func (h *Hist) Add(ev probedef.Event) {
	if h.filter != nil && !h.filter.Match(ev) {
		return
	}
	key := make([]keyPart, len(h.keys))
	var enc []byte
	for i, k := range h.keys {
		key[i] = h.keyPart(k, &ev)
		enc = key[i].encode(enc)
	}
	vals := make([]uint64, len(h.vals))
	ok := make([]bool, len(h.vals))
	for i, v := range h.vals {
		vals[i], ok[i] = h.number(v.field, &ev)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.hits++
	e := h.entries[string(enc)]
	if e == nil {
		if len(h.entries) >= h.size {
			h.dropped++
			return
		}
		e = &histEntry{key: key, sums: make([]uint64, len(h.vals)), dists: make([]map[int]uint64, len(h.vals))}
		h.entries[string(enc)] = e
	}
	e.hits++
	for i, v := range h.vals {
		if !ok[i] {
			continue
		}
		e.sums[i] += vals[i]
		if v.mod == modLog2 {
			if e.dists[i] == nil {
				e.dists[i] = map[int]uint64{}
			}
			e.dists[i][log2Bucket(vals[i], v.typ.Signed())]++
		}
	}
}

// number is a numeric field's stored bits (two's complement when signed).
func (h *Hist) number(f field, ev *probedef.Event) (uint64, bool) {
	if f.kind == fieldDuration {
		if h.Duration == nil {
			return uint64(ev.Duration.Nanoseconds()), true // ParseHist allows duration on return probes only
		}
		d, ok := h.Duration(ev)
		return uint64(d.Nanoseconds()), ok
	}
	v, ok := f.value(ev)
	if !ok || v.Fault {
		return 0, false
	}
	if f.typ.Signed() {
		return uint64(v.S64), true
	}
	return v.U64, true
}

func (h *Hist) keyPart(k histField, ev *probedef.Event) keyPart {
	switch {
	case k.kind == fieldStack:
		if h.Stack == nil {
			return keyPart{stack: probedef.StackAddrs(ev)}
		}
		// Copied: the caller may reuse its slice for the next event.
		return keyPart{stack: slices.Clone(h.Stack(ev))}
	case k.isString():
		v, ok := k.value(ev)
		return keyPart{str: v.Str, fault: !ok || v.Fault}
	}
	u, ok := h.number(k.field, ev)
	switch k.mod {
	case modLog2:
		return keyPart{s: int64(log2Bucket(u, k.typ.Signed())), fault: !ok}
	case modBuckets:
		if k.typ.Signed() {
			s := int64(u)
			b := int64(k.buckets)
			q := s / b
			if s%b != 0 && s < 0 {
				q--
			}
			return keyPart{s: q * b, fault: !ok}
		}
		u -= u % k.buckets
	}
	return keyPart{u: u, s: int64(u), fault: !ok}
}

func (p keyPart) encode(b []byte) []byte {
	if p.fault {
		return append(b, 0)
	}
	b = append(b, 1)
	b = binary.LittleEndian.AppendUint64(b, p.u)
	b = binary.LittleEndian.AppendUint64(b, uint64(p.s))
	b = binary.AppendUvarint(b, uint64(len(p.str)))
	b = append(b, p.str...)
	b = binary.AppendUvarint(b, uint64(len(p.stack)))
	for _, a := range p.stack {
		b = binary.LittleEndian.AppendUint64(b, a)
	}
	return b
}

// log2Bucket is bpftrace's hist() bucket: -1 for negatives, 0 for 0, n
// for [2^(n-1), 2^n).
func log2Bucket(u uint64, signed bool) int {
	if signed && int64(u) < 0 {
		return -1
	}
	return bits.Len64(u)
}

// bucketLabel is bpftrace's label of a log2 bucket: (..., 0), [0], [1],
// [2, 4), ... [1K, 2K) with 1024-based suffixes.
func bucketLabel(b int) string {
	switch b {
	case -1:
		return "(..., 0)"
	case 0:
		return "[0]"
	case 1:
		return "[1]"
	}
	return "[" + sizeSuffix(b-1) + ", " + sizeSuffix(b) + ")"
}

func sizeSuffix(exp int) string {
	if exp == 64 {
		return "16E"
	}
	units := []string{"", "K", "M", "G", "T", "P", "E"}
	return strconv.FormatUint(1<<(exp%10), 10) + units[exp/10]
}

// snapshot copies the entries in print order under the lock.
func (h *Hist) snapshot() (entries []histEntry, hits, dropped uint64) {
	h.mu.Lock()
	for _, e := range h.entries {
		c := *e
		c.sums = slices.Clone(e.sums)
		c.dists = make([]map[int]uint64, len(e.dists))
		for i, d := range e.dists {
			if d != nil {
				c.dists[i] = make(map[int]uint64, len(d))
				for k, v := range d {
					c.dists[i][k] = v
				}
			}
		}
		entries = append(entries, c)
	}
	hits, dropped = h.hits, h.dropped
	h.mu.Unlock()
	slices.SortFunc(entries, h.compare)
	return entries, hits, dropped
}

// compare orders by the sort keys, then by the whole key so that output
// is deterministic.
func (h *Hist) compare(a, b histEntry) int {
	for _, s := range h.sort {
		var c int
		switch {
		case s.key >= 0:
			c = h.compareKey(s.key, a.key[s.key], b.key[s.key])
		case s.val >= 0 && h.vals[s.val].typ.Signed():
			c = cmp.Compare(int64(a.sums[s.val]), int64(b.sums[s.val]))
		case s.val >= 0:
			c = cmp.Compare(a.sums[s.val], b.sums[s.val])
		default:
			c = cmp.Compare(a.hits, b.hits)
		}
		if s.desc {
			c = -c
		}
		if c != 0 {
			return c
		}
	}
	for i := range h.keys {
		if c := h.compareKey(i, a.key[i], b.key[i]); c != 0 {
			return c
		}
	}
	return 0
}

func (h *Hist) compareKey(i int, a, b keyPart) int {
	k := h.keys[i]
	switch {
	case a.fault != b.fault:
		if a.fault {
			return 1
		}
		return -1
	case k.kind == fieldStack:
		return slices.Compare(a.stack, b.stack)
	case k.isString():
		return strings.Compare(a.str, b.str)
	case k.mod == modLog2 || k.typ.Signed():
		return cmp.Compare(a.s, b.s)
	}
	return cmp.Compare(a.u, b.u)
}

// bars reports whether Text draws the table as one bpftrace histogram:
// a single .log2 key and no values.
func (h *Hist) bars() bool {
	return len(h.keys) == 1 && h.keys[0].mod == modLog2 && len(h.vals) == 0
}

// Text writes the table as ftrace's hist file shows it: a header naming
// the trigger, one line per entry sorted as asked, and totals. A single
// .log2 key with no values is drawn instead as bpftrace draws hist(),
// one bar per bucket; each .log2 value gets such bars under its entry.
func (h *Hist) Text(w io.Writer) error {
	entries, hits, dropped := h.snapshot()
	var b strings.Builder
	fmt.Fprintf(&b, "# event histogram\n#\n# trigger info: %s [active]\n#\n\n", h.spec)
	if h.bars() {
		dist := map[int]uint64{}
		faults := uint64(0)
		for _, e := range entries {
			if e.key[0].fault {
				faults += e.hits
				continue
			}
			dist[int(e.key[0].s)] += e.hits
		}
		b.WriteString("@" + h.keys[0].name + ":\n")
		writeBars(&b, dist)
		if faults > 0 {
			fmt.Fprintf(&b, "(fault) %d\n", faults)
		}
	} else {
		for _, e := range entries {
			h.writeEntry(&b, e)
		}
	}
	fmt.Fprintf(&b, "\nTotals:\n    Hits: %d\n    Entries: %d\n    Dropped: %d\n", hits, len(entries), dropped)
	_, err := io.WriteString(w, b.String())
	return err
}

func (h *Hist) writeEntry(b *strings.Builder, e histEntry) {
	b.WriteString("{ ")
	for i, k := range h.keys {
		if i > 0 {
			b.WriteString(", ")
		}
		p := e.key[i]
		switch {
		case k.kind == fieldStack:
			b.WriteString(k.name + ":\n")
			for _, a := range p.stack {
				fmt.Fprintf(b, "%9c%s\n", ' ', h.symbol(a, true))
			}
			continue
		case p.fault:
			b.WriteString(k.name + ": (fault)")
			continue
		}
		switch {
		case k.isString():
			fmt.Fprintf(b, "%s: %-50s", k.name, p.str)
		case k.mod == modHex:
			fmt.Fprintf(b, "%s: %x", k.name, p.u)
		case k.mod == modSym:
			fmt.Fprintf(b, "%s: [%x] %-45s", k.name, p.u, h.symbol(p.u, false))
		case k.mod == modSymOffset:
			fmt.Fprintf(b, "%s: [%x] %-55s", k.name, p.u, h.symbol(p.u, true))
		case k.mod == modLog2:
			fmt.Fprintf(b, "%s: %s", k.name, bucketLabel(int(p.s)))
		case k.mod == modBuckets && k.typ.Signed():
			fmt.Fprintf(b, "%s: ~ %d-%d", k.name, p.s, p.s+int64(k.buckets)-1)
		case k.mod == modBuckets:
			fmt.Fprintf(b, "%s: ~ %d-%d", k.name, p.u, p.u+k.buckets-1)
		case k.typ.Signed():
			fmt.Fprintf(b, "%s: %10d", k.name, p.s)
		default:
			fmt.Fprintf(b, "%s: %10d", k.name, p.u)
		}
	}
	fmt.Fprintf(b, " } hitcount: %10d", e.hits)
	for i, v := range h.vals {
		switch {
		case v.mod == modHex:
			fmt.Fprintf(b, "  %s: %10x", v.name, e.sums[i])
		case v.typ.Signed():
			fmt.Fprintf(b, "  %s: %10d", v.name, int64(e.sums[i]))
		default:
			fmt.Fprintf(b, "  %s: %10d", v.name, e.sums[i])
		}
	}
	b.WriteByte('\n')
	for i, v := range h.vals {
		if v.mod == modLog2 {
			b.WriteString("@" + v.name + ":\n")
			writeBars(b, e.dists[i])
		}
	}
}

// symbol renders an address as %ps (name only) or %pS (sym+off/size).
func (h *Hist) symbol(a uint64, offset bool) string {
	if h.Syms == nil {
		return fmt.Sprintf("%#x", a)
	}
	s := h.Syms.Format(a)
	if !offset {
		if i := strings.IndexByte(s, '+'); i >= 0 {
			s = s[:i]
		}
	}
	return s
}

// writeBars draws a log2 distribution as bpftrace's print of hist():
// every bucket from the lowest to the highest used, a 52-column bar
// scaled to the largest count.
func writeBars(b *strings.Builder, dist map[int]uint64) {
	if len(dist) == 0 {
		return
	}
	lo, hi, top := 64, -1, uint64(0)
	for k, v := range dist {
		lo, hi, top = min(lo, k), max(hi, k), max(top, v)
	}
	const width = 52
	for k := lo; k <= hi; k++ {
		n := dist[k]
		bar := int(n * width / top)
		fmt.Fprintf(b, "%-16s%8d |%s%s|\n", bucketLabel(k), n, strings.Repeat("@", bar), strings.Repeat(" ", width-bar))
	}
}

// JSON writes the table as one object:
//
//	{"event":"kprobes/open","trigger":"hist:keys=comm","entries":[{"key":{"comm":"bash"},"hitcount":3,"vals":{}}],"totals":{"hits":3,"entries":1,"dropped":0}}
//
// Keys are numbers, strings for string fields, "0x…" for .hex, symbol
// renderings for .sym/.sym-offset, bucket labels for .log2, the lower
// bound for .buckets, arrays of symbol renderings for stacktrace, null
// when faulted. Each .log2 value adds "hist": its buckets as
// [{"bucket":"[4, 8)","count":12}, ...].
func (h *Hist) JSON(w io.Writer) error {
	entries, hits, dropped := h.snapshot()
	type bucket struct {
		Bucket string `json:"bucket"`
		Count  uint64 `json:"count"`
	}
	type entry struct {
		Key      jsonObject          `json:"key"`
		Hitcount uint64              `json:"hitcount"`
		Vals     jsonObject          `json:"vals"`
		Hist     map[string][]bucket `json:"hist,omitempty"`
	}
	out := struct {
		Event   string  `json:"event"`
		Trigger string  `json:"trigger"`
		Entries []entry `json:"entries"`
		Totals  struct {
			Hits    uint64 `json:"hits"`
			Entries int    `json:"entries"`
			Dropped uint64 `json:"dropped"`
		} `json:"totals"`
	}{Event: h.def.Group + "/" + h.def.Event, Trigger: h.spec, Entries: []entry{}}
	for _, e := range entries {
		je := entry{Hitcount: e.hits}
		for i, k := range h.keys {
			je.Key = append(je.Key, jsonField{k.name, h.jsonKey(k, e.key[i])})
		}
		for i, v := range h.vals {
			var x any = e.sums[i]
			switch {
			case v.mod == modHex:
				x = "0x" + strconv.FormatUint(e.sums[i], 16)
			case v.typ.Signed():
				x = int64(e.sums[i])
			}
			je.Vals = append(je.Vals, jsonField{v.name, x})
			if v.mod == modLog2 && len(e.dists[i]) > 0 {
				if je.Hist == nil {
					je.Hist = map[string][]bucket{}
				}
				ks := make([]int, 0, len(e.dists[i]))
				for k := range e.dists[i] {
					ks = append(ks, k)
				}
				slices.Sort(ks)
				for _, k := range ks {
					je.Hist[v.name] = append(je.Hist[v.name], bucket{bucketLabel(k), e.dists[i][k]})
				}
			}
		}
		out.Entries = append(out.Entries, je)
	}
	out.Totals.Hits, out.Totals.Entries, out.Totals.Dropped = hits, len(entries), dropped
	data, err := json.Marshal(out)
	if err != nil {
		return fmt.Errorf("encoding histogram: %w", err)
	}
	_, err = w.Write(append(data, '\n'))
	return err
}

func (h *Hist) jsonKey(k histField, p keyPart) any {
	switch {
	case k.kind == fieldStack:
		out := make([]string, len(p.stack))
		for i, a := range p.stack {
			out[i] = h.symbol(a, true)
		}
		return out
	case p.fault:
		return nil
	case k.isString():
		return p.str
	case k.mod == modHex:
		return "0x" + strconv.FormatUint(p.u, 16)
	case k.mod == modSym:
		return h.symbol(p.u, false)
	case k.mod == modSymOffset:
		return h.symbol(p.u, true)
	case k.mod == modLog2:
		return bucketLabel(int(p.s))
	case k.typ.Signed():
		return p.s
	}
	return p.u
}

// jsonObject is an object whose keys keep the trigger's order.
type jsonObject []jsonField

type jsonField struct {
	name string
	v    any
}

func (o jsonObject) MarshalJSON() ([]byte, error) {
	b := []byte{'{'}
	for i, f := range o {
		if i > 0 {
			b = append(b, ',')
		}
		k, err := json.Marshal(f.name)
		if err != nil {
			return nil, err
		}
		v, err := json.Marshal(f.v)
		if err != nil {
			return nil, err
		}
		b = append(append(append(b, k...), ':'), v...)
	}
	return append(b, '}'), nil
}
