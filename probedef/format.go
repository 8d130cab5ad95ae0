package probedef

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Event is one probe hit, ready to print.
type Event struct {
	Def *Def
	// Comm and PID name the current task; an empty Comm prints as
	// ftrace's "<...>" (a task whose name was not recorded).
	Comm string
	PID  int
	CPU  int
	// IRQsOff is !RFLAGS.IF of the probed code: the first flags column.
	IRQsOff bool
	// Time is the guest's time since boot.
	Time time.Duration
	// Where is the probe site as Symbols.Format renders it
	// ("do_sys_open+0x0/0xd6"); for a return probe, the return address.
	Where string
	// Func is the probed function's name, shown by return probes as
	// "(WHERE <- FUNC)".
	Func   string
	Values []Value
	// Duration is a return probe's time from function entry to return.
	Duration time.Duration
	// Stack is the kernel stack at the hit, innermost first (the probe
	// site, then return addresses); nil unless stacks were asked for.
	Stack []Frame
}

// Frame is one kernel stack entry: its address and how Symbols.Format
// renders it.
type Frame struct {
	Addr  uint64
	Where string
}

// StackAddrs is ev's stack as addresses (Hist.Stack).
func StackAddrs(ev *Event) []uint64 {
	out := make([]uint64, len(ev.Stack))
	for i, f := range ev.Stack {
		out[i] = f.Addr
	}
	return out
}

// FormatTrace renders ev as one trace_pipe line, without the final
// newline, followed by ftrace's "<stack trace>" block when ev.Stack is set:
//
//	bash-1447    [001] d.... 1038282.286875: myprobe: (do_sys_open+0x0/0xd6) dfd=0x3
//
// The layout is trace_print_context()'s: comm right-aligned in 16, pid
// left-aligned in 7, the CPU in 3 digits, the five irq-info flag columns
// (irqs-off, need-resched, hardirq/softirq, preempt-depth,
// migrate-disable) and seconds.microseconds. From outside the guest only
// irqs-off is known ('d' or '.'); the other four are always '.'.
// Values print as ftrace's print_type_* do; bytes outside printable
// ASCII in strings and chars print as \xNN so an event stays one line.
// Numeric faults print "(fault)" like string faults: ftrace leaves such
// fields undefined, and a made-up 0 would read as data.
func FormatTrace(ev Event) string {
	var b strings.Builder
	comm := ev.Comm
	if comm == "" {
		comm = "<...>"
	}
	flags := "....."
	if ev.IRQsOff {
		flags = "d...."
	}
	us := (ev.Time.Nanoseconds() + 500) / 1000 // ns2usecs rounds
	fmt.Fprintf(&b, "%16s-%-7d [%03d] %s %5d.%06d: %s: (%s", comm, ev.PID, ev.CPU, flags,
		us/1e6, us%1e6, ev.Def.Event, ev.Where)
	if ev.Def.Kind == Retprobe {
		b.WriteString(" <- " + ev.Func)
	}
	b.WriteByte(')')
	for _, v := range ev.Values {
		b.WriteString(" " + v.Name + "=")
		writeValue(&b, v)
	}
	// ftrace's stacktrace option: a "<stack trace>" block after the event.
	if ev.Stack != nil {
		b.WriteString("\n <stack trace>")
		for _, f := range ev.Stack {
			b.WriteString("\n => " + f.Where)
		}
	}
	return b.String()
}

// FormatValue is one value as FormatTrace prints it.
func FormatValue(v Value) string {
	var b strings.Builder
	writeValue(&b, v)
	return b.String()
}

func writeValue(b *strings.Builder, v Value) {
	if v.Fault {
		b.WriteString("(fault)")
		return
	}
	if v.Type.Array > 0 {
		b.WriteByte('{')
		for i, el := range v.Elems {
			if i > 0 {
				b.WriteByte(',')
			}
			writeValue(b, el)
		}
		b.WriteByte('}')
		return
	}
	switch t := v.Type; {
	case t.IsString():
		b.WriteString(`"` + escape(v.Str) + `"`)
	case t.Base == Char:
		b.WriteString("'" + escape(string([]byte{byte(v.U64)})) + "'")
	case t.Base == Symbol:
		b.WriteString(v.Str)
	case t.Signed():
		b.WriteString(strconv.FormatInt(v.S64, 10))
	case t.Base >= X8 && t.Base <= X64:
		b.WriteString(hex(v.U64))
	default:
		b.WriteString(strconv.FormatUint(v.U64, 10))
	}
}

func escape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c < 0x7f {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, `\x%02x`, c)
		}
	}
	return b.String()
}

// jsonEvent fixes the key order of FormatJSON's objects; ParseJSON reads
// the same struct back.
type jsonEvent struct {
	Comm    json.RawMessage `json:"comm"` // jsonText
	PID     int             `json:"pid"`
	CPU     int             `json:"cpu"`
	IRQsOff bool            `json:"irqs_off"`
	TimeNS  int64           `json:"time_ns"`
	Group   string          `json:"group"`
	Event   string          `json:"event"`
	Kind    string          `json:"kind"`
	Where   string          `json:"where"`
	Func    string          `json:"func,omitempty"`
	Args    json.RawMessage `json:"args"` // jsonArgs
	DurNS   int64           `json:"duration_ns,omitempty"`
	Stack   *[]jsonFrame    `json:"stack,omitempty"` // a pointer, so that an empty stack stays []
}

// jsonFrame is one stack frame: the address, for hist keys and
// symbolizing again, and its rendering.
type jsonFrame struct {
	Addr  string `json:"addr"`
	Where string `json:"where"`
}

// jsonSym is a symbol or symstr value: the address beside its rendering,
// which .sym hist keys and a later report need.
type jsonSym struct {
	Addr string `json:"addr"`
	Sym  any    `json:"sym"` // jsonText
}

// jsonBytes carries text that is not UTF-8, which a JSON string cannot
// hold without loss.
type jsonBytes struct {
	Base64 []byte `json:"base64"`
}

// jsonText is s as a JSON string, or as {"base64": …} when s is not
// UTF-8.
func jsonText(s string) any {
	if utf8.ValidString(s) {
		return s
	}
	return jsonBytes{[]byte(s)}
}

// jsonArgs is an object whose keys keep the definition's order.
type jsonArgs []Value

func (a jsonArgs) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, v := range a {
		if i > 0 {
			b.WriteByte(',')
		}
		k, err := json.Marshal(v.Name)
		if err != nil {
			return nil, err
		}
		val, err := json.Marshal(v.JSON())
		if err != nil {
			return nil, err
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(val)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// JSON types a value for JSON: decimal types as numbers, hex types
// as "0x…" strings (64-bit addresses do not survive float64 readers),
// text as strings ({"base64": …} when not UTF-8), symbol and symstr
// values as {"addr": "0x…", "sym": …}, arrays as arrays and faults as
// null. ParseJSON reads every value back as it was.
func (v Value) JSON() any {
	if v.Fault {
		return nil
	}
	if v.Type.Array > 0 {
		out := make([]any, len(v.Elems))
		for i, el := range v.Elems {
			out[i] = el.JSON()
		}
		return out
	}
	switch t := v.Type; {
	case t.Base == Symbol || t.Base == SymStr:
		return jsonSym{Addr: hex(v.U64), Sym: jsonText(v.Str)}
	case t.IsString():
		return jsonText(v.Str)
	case t.Base == Char:
		return jsonText(string([]byte{byte(v.U64)}))
	case t.Signed():
		return v.S64
	case t.Base >= X8 && t.Base <= X64:
		return hex(v.U64)
	}
	return v.U64
}

func hex(u uint64) string { return "0x" + strconv.FormatUint(u, 16) }

// FormatJSON renders ev as one JSON object, without a newline; ParseJSON
// reads it back.
func FormatJSON(ev Event) ([]byte, error) {
	comm, err := json.Marshal(jsonText(ev.Comm))
	if err != nil {
		return nil, err
	}
	args, err := jsonArgs(ev.Values).MarshalJSON()
	if err != nil {
		return nil, err
	}
	je := jsonEvent{
		Comm: comm, PID: ev.PID, CPU: ev.CPU, IRQsOff: ev.IRQsOff,
		TimeNS: ev.Time.Nanoseconds(),
		Group:  ev.Def.Group, Event: ev.Def.Event, Kind: ev.Def.Kind.String(),
		Where: ev.Where, Func: ev.Func, Args: args,
		DurNS: ev.Duration.Nanoseconds(),
	}
	if ev.Stack != nil {
		st := make([]jsonFrame, len(ev.Stack))
		for i, f := range ev.Stack {
			st[i] = jsonFrame{hex(f.Addr), f.Where}
		}
		je.Stack = &st
	}
	return json.Marshal(je)
}

// StackWhere is each frame's Where, nil for no stack.
func StackWhere(st []Frame) []string {
	if st == nil {
		return nil
	}
	out := make([]string, len(st))
	for i, f := range st {
		out[i] = f.Where
	}
	return out
}
