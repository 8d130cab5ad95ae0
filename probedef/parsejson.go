package probedef

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Schema is what a reader of FormatJSON lines needs of an event's
// definition: the event's name and kind, its arguments' names and types,
// and whether its hits carry stacks. Line is the definition as armed,
// for people.
type Schema struct {
	Line  string      `json:"line"`
	Group string      `json:"group"`
	Event string      `json:"event"`
	Kind  string      `json:"kind"`
	Args  []SchemaArg `json:"args"`
	Stack bool        `json:"stack,omitempty"`
}

// SchemaArg is one argument of a Schema.
type SchemaArg struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

// SchemaOf is d's Schema, with the types its arguments have once armed.
func SchemaOf(d *Def) Schema {
	s := Schema{Line: d.String(), Group: d.Group, Event: d.Event, Kind: d.Kind.String(), Stack: d.Stack}
	for _, a := range d.Args {
		s.Args = append(s.Args, SchemaArg{a.Name, a.Type.String()})
	}
	return s
}

// Def is the definition s describes: enough to type ParseJSON's values
// and to parse filters and hists against, with no fetch expressions.
func (s Schema) Def() (*Def, error) {
	d := &Def{Group: s.Group, Event: s.Event, Stack: s.Stack, Text: s.Line}
	d.Kind = -1
	for _, k := range []Kind{Probe, Retprobe, Jprobe, Watch} {
		if k.String() == s.Kind {
			d.Kind = k
		}
	}
	if d.Kind < 0 {
		return nil, fmt.Errorf("event %s/%s: unknown kind %q", s.Group, s.Event, s.Kind)
	}
	for _, a := range s.Args {
		t, err := ParseType(a.Type)
		if err != nil {
			return nil, fmt.Errorf("event %s/%s: argument %s: %w", s.Group, s.Event, a.Name, err)
		}
		d.Args = append(d.Args, Arg{Name: a.Name, Type: t})
	}
	return d, nil
}

// ParseType reads a fetch argument's type as a probe line spells it
// (u32, x64[4], string, b3@5/32).
func ParseType(s string) (Type, error) {
	p := &lineParser{input: s}
	t, err := p.parseType(s, 0)
	if err != nil {
		return t, errors.New(err.Msg)
	}
	return t, nil
}

// ParseJSON reads one FormatJSON line back into the Event it was made
// from. def finds the definition of GROUP/EVENT; its arguments type the
// values (an argument it does not know, such as a hit's "error", must be
// text).
func ParseJSON(line []byte, def func(group, event string) (*Def, error)) (Event, error) {
	var je jsonEvent
	if err := json.Unmarshal(line, &je); err != nil {
		return Event{}, err
	}
	if je.Event == "" {
		return Event{}, errors.New("no event name")
	}
	d, err := def(je.Group, je.Event)
	if err != nil {
		return Event{}, err
	}
	if je.Kind != d.Kind.String() {
		return Event{}, fmt.Errorf("event %s/%s is of kind %q, its definition of %q", je.Group, je.Event, je.Kind, d.Kind)
	}
	ev := Event{Def: d, PID: je.PID, CPU: je.CPU, IRQsOff: je.IRQsOff, Time: time.Duration(je.TimeNS),
		Where: je.Where, Func: je.Func, Duration: time.Duration(je.DurNS)}
	if ev.Comm, err = textOf(je.Comm); err != nil {
		return Event{}, fmt.Errorf("comm: %w", err)
	}
	if je.Stack != nil {
		ev.Stack = make([]Frame, len(*je.Stack))
		for i, f := range *je.Stack {
			if ev.Stack[i].Addr, err = hexOf(f.Addr); err != nil {
				return Event{}, fmt.Errorf("stack frame %d: %w", i, err)
			}
			ev.Stack[i].Where = f.Where
		}
	}
	names, raws, err := orderedObject(je.Args)
	if err != nil {
		return Event{}, fmt.Errorf("args: %w", err)
	}
	for i, name := range names {
		t, known := Type{Base: String}, false
		for _, a := range d.Args {
			if a.Name == name {
				t, known = a.Type, true
				break
			}
		}
		v, err := valueOf(raws[i], t)
		if err != nil {
			if !known {
				err = fmt.Errorf("not an argument of %s/%s, and not text", d.Group, d.Event)
			}
			return Event{}, fmt.Errorf("argument %s: %w", name, err)
		}
		v.Name = name
		ev.Values = append(ev.Values, v)
	}
	return ev, nil
}

// orderedObject splits a JSON object into its keys and raw values, in
// order.
func orderedObject(raw json.RawMessage) ([]string, []json.RawMessage, error) {
	if len(raw) == 0 {
		return nil, nil, errors.New("missing")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, nil, errors.New("not an object")
	}
	var names []string
	var raws []json.RawMessage
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, nil, err
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, nil, err
		}
		names, raws = append(names, tok.(string)), append(raws, v)
	}
	return names, raws, nil
}

// valueOf reads a Value.JSON back as a value of type t.
func valueOf(raw json.RawMessage, t Type) (Value, error) {
	v := Value{Type: t}
	if string(raw) == "null" {
		v.Fault = true
		return v, nil
	}
	if t.Array > 0 {
		var elems []json.RawMessage
		if err := json.Unmarshal(raw, &elems); err != nil {
			return v, err
		}
		if len(elems) != t.Array {
			return v, fmt.Errorf("%d elements for a %s", len(elems), t)
		}
		et := t
		et.Array = 0
		v.Elems = make([]Value, len(elems))
		for i, r := range elems {
			el, err := valueOf(r, et)
			if err != nil {
				return v, fmt.Errorf("element %d: %w", i, err)
			}
			v.Elems[i] = el
		}
		return v, nil
	}
	var err error
	switch {
	case t.Base == Symbol || t.Base == SymStr:
		var s struct {
			Addr string          `json:"addr"`
			Sym  json.RawMessage `json:"sym"`
		}
		if err = json.Unmarshal(raw, &s); err != nil {
			return v, err
		}
		if v.U64, err = hexOf(s.Addr); err == nil {
			v.Str, err = textOf(s.Sym)
		}
	case t.IsString():
		v.Str, err = textOf(raw)
	case t.Base == Char:
		var s string
		if s, err = textOf(raw); err == nil && len(s) != 1 {
			err = fmt.Errorf("%q is not one char", s)
		}
		if err == nil {
			v.U64 = uint64(s[0])
		}
	case t.Signed():
		if v.S64, err = strconv.ParseInt(string(raw), 10, 64); err == nil {
			v.U64 = uint64(v.S64)
			if bits := uint(t.Size() * 8); bits < 64 {
				v.U64 &= 1<<bits - 1 // stored zero-extended, as Evaluate does
			}
		}
	case t.Base >= X8 && t.Base <= X64:
		var s string
		if err = json.Unmarshal(raw, &s); err == nil {
			v.U64, err = hexOf(s)
		}
	default:
		v.U64, err = strconv.ParseUint(string(raw), 10, 64)
	}
	if err == nil && !t.IsString() && t.Base != Symbol && !fits(v, t) {
		err = fmt.Errorf("%s does not fit in %s", raw, t)
	}
	return v, err
}

// fits reports whether v's bits are those a value of t can have.
func fits(v Value, t Type) bool {
	bits := uint(t.Size() * 8)
	if t.Base == Bitfield {
		bits = uint(t.BitWidth)
	}
	if bits >= 64 {
		return true
	}
	if t.Signed() {
		return v.S64 == int64(v.U64<<(64-bits))>>(64-bits)
	}
	return v.U64>>bits == 0
}

// textOf reads jsonText: a string, or {"base64": …}; a missing one is
// empty.
func textOf(raw json.RawMessage) (string, error) {
	if len(raw) == 0 {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var b jsonBytes
	if err := json.Unmarshal(raw, &b); err != nil || b.Base64 == nil {
		return "", fmt.Errorf("%s is not text", raw)
	}
	return string(b.Base64), nil
}

func hexOf(s string) (uint64, error) {
	h, ok := strings.CutPrefix(s, "0x")
	if !ok {
		return 0, fmt.Errorf("%q is not 0x-prefixed hex", s)
	}
	return strconv.ParseUint(h, 16, 64)
}
