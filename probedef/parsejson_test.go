package probedef

import (
	"bytes"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"
)

// allTypes is one argument of every type, arrays included.
var allTypes = []string{"u8", "u16", "u32", "u64", "s8", "s16", "s32", "s64", "x8", "x16", "x32", "x64",
	"char", "string", "ustring", "symbol", "symstr", "b3@5/32", "b64@0/64", "u16[3]", "s8[2]", "x64[2]",
	"char[4]", "string[2]", "symbol[2]"}

// randomValue is a value of t as Evaluate would make it: the stored bits
// zero-extended in U64, S64 sign-extended for signed types, text that
// need not be UTF-8, and now and then a fault.
func randomValue(r *rand.Rand, t Type) Value {
	v := Value{Type: t}
	if r.IntN(8) == 0 {
		v.Fault = true
		return v
	}
	if t.Array > 0 {
		et := t
		et.Array = 0
		for range t.Array {
			v.Elems = append(v.Elems, randomValue(r, et))
		}
		return v
	}
	text := func() string {
		b := make([]byte, r.IntN(12))
		for i := range b {
			b[i] = byte(r.IntN(256))
			if r.IntN(2) == 0 {
				b[i] = 'a' + byte(r.IntN(26))
			}
		}
		return string(b)
	}
	x := r.Uint64()
	switch {
	case t.IsString() && t.Base != SymStr:
		v.Str = text()
		return v
	case t.Base == Bitfield:
		x >>= 64 - uint(t.BitWidth)
	case t.Size() < 8:
		x &= 1<<(8*uint(t.Size())) - 1
	}
	v.U64 = x
	if t.Signed() {
		bits := uint(t.Size() * 8)
		v.S64 = int64(x<<(64-bits)) >> (64 - bits)
	}
	if t.Base == Symbol || t.Base == SymStr {
		v.Str = text()
	}
	return v
}

// TestJSONRoundTrip is the lossless claim of --record: every event
// FormatJSON writes, of every argument type, comes back from ParseJSON
// equal, through the Schema a record keeps of its definition, and
// formats to the same trace line and the same JSON.
func TestJSONRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var args []string
	for i, ty := range allTypes {
		args = append(args, "a"+string(rune('a'+i))+"=+0(%di):"+ty)
	}
	for _, line := range []string{
		"p:g/every do_sys_open " + strings.Join(args, " "),
		"r:g/ret do_sys_open rv=$retval:s32",
		"w:wprobes/w w@jiffies:8",
		"p:g/none do_sys_open",
	} {
		d, err := Parse(line)
		if err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		d.Stack = true
		back, err := SchemaOf(d).Def()
		if err != nil {
			t.Fatal(err)
		}
		lookup := func(group, event string) (*Def, error) { return back, nil }
		for i := range 500 {
			ev := Event{Def: d, Comm: []string{"", "bash", "k\xffw"}[r.IntN(3)], PID: r.IntN(1 << 20), CPU: r.IntN(8),
				IRQsOff: r.IntN(2) == 0, Time: time.Duration(r.Int64()), Where: "do_sys_open+0x0/0xd6"}
			if d.Kind == Retprobe {
				ev.Func, ev.Duration = "do_sys_open", time.Duration(r.Int64N(1e9))
			}
			for _, a := range d.Args {
				v := randomValue(r, a.Type)
				v.Name = a.Name
				ev.Values = append(ev.Values, v)
			}
			switch i % 3 {
			case 1:
				ev.Stack = []Frame{}
			case 2:
				ev.Stack = []Frame{{r.Uint64(), "f+0x1/0x2"}, {r.Uint64(), "0xffffffff81000000"}}
			}
			b, err := FormatJSON(ev)
			if err != nil {
				t.Fatal(err)
			}
			got, err := ParseJSON(b, lookup)
			if err != nil {
				t.Fatalf("ParseJSON(%s): %v", b, err)
			}
			if got.Def != back {
				t.Fatal("ParseJSON did not take the definition from its lookup")
			}
			got.Def = d
			if !reflect.DeepEqual(got, ev) {
				t.Fatalf("round trip of %s:\n got %+v\nwant %+v", b, got, ev)
			}
			if FormatTrace(got) != FormatTrace(ev) {
				t.Fatalf("trace line changed:\n got %s\nwant %s", FormatTrace(got), FormatTrace(ev))
			}
			if b2, _ := FormatJSON(got); !bytes.Equal(b2, b) {
				t.Fatalf("JSON changed:\n got %s\nwant %s", b2, b)
			}
		}
	}
}

// TestParseJSONErrors: a line that does not match its definition is
// refused, naming what is wrong.
func TestParseJSONErrors(t *testing.T) {
	d, err := Parse("p:g/e f n=%di:u8 s=+0(%si):string")
	if err != nil {
		t.Fatal(err)
	}
	lookup := func(group, event string) (*Def, error) { return d, nil }
	for _, c := range []struct{ line, want string }{
		{`{"event":"e","group":"g","kind":"p","args":{"n":256}}`, "argument n"},
		{`{"event":"e","group":"g","kind":"p","args":{"n":"0x1"}}`, "argument n"},
		{`{"event":"e","group":"g","kind":"r","args":{}}`, `kind "r"`},
		{`{"event":"e","group":"g","kind":"p","args":{"s":{"base64":"!!"}}}`, "argument s"},
		{`{"event":"e","group":"g","kind":"p","args":{"other":1}}`, "not an argument of g/e"},
		{`{"event":"e","group":"g","kind":"p","args":[]}`, "not an object"},
		{`{"event":"e","group":"g","kind":"p"}`, "args: missing"},
		{`{"group":"g"}`, "no event name"},
		{`{"event":"e","group":"g","kind":"p","args":{},"stack":[{"addr":"12"}]}`, "stack frame 0"},
	} {
		_, err := ParseJSON([]byte(c.line), lookup)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseJSON(%s) = %v, want an error with %q", c.line, err, c.want)
		}
	}
}

// FuzzParseJSON: a record file is input like any other; whatever it
// holds, ParseJSON returns an error or an event that writes back to JSON
// which reads back the same.
func FuzzParseJSON(f *testing.F) {
	d, err := Parse("p:g/e f n=%di:u8 s=+0(%si):string y=%dx:symbol a=+0(%cx):s16[2] c=%r8:char")
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(`{"comm":"a","event":"e","group":"g","kind":"p","args":{"n":3,"s":"x","y":{"addr":"0x1","sym":"f"},"a":[-1,null],"c":"q"},"stack":[]}`))
	f.Add([]byte(`{"comm":{"base64":"/w=="},"event":"e","group":"g","kind":"p","args":{"error":"boom"}}`))
	lookup := func(group, event string) (*Def, error) { return d, nil }
	f.Fuzz(func(t *testing.T, line []byte) {
		ev, err := ParseJSON(line, lookup)
		if err != nil {
			return
		}
		b, err := FormatJSON(ev)
		if err != nil {
			t.Fatal(err)
		}
		again, err := ParseJSON(b, lookup)
		if err != nil {
			t.Fatalf("ParseJSON(FormatJSON(ev)) of %s: %v", b, err)
		}
		if !reflect.DeepEqual(again, ev) {
			t.Fatalf("%s:\n got %+v\nwant %+v", b, again, ev)
		}
	})
}
