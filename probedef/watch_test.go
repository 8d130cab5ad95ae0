package probedef

import (
	"strings"
	"testing"

	"github.com/hvprobe/hvprobe/probedef/probedeftest"
)

// w lines as ftrace's wprobetrace.rst writes them, with hvprobe's default
// arguments when none are given, and their canonical form.
func TestParseWatch(t *testing.T) {
	tests := []struct {
		line, want string
		access     WatchAccess
		n          int
	}{
		{"w:my_jiffies w@jiffies", "w:wprobes/my_jiffies w@jiffies:4 addr=$addr old=$old new=$value", AccessWrite, 4},
		{"w rw@jiffies_64+8:8 v=$value", "w:wprobes/w_jiffies_64_8 rw@jiffies_64+0x8:8 v=$value", AccessRW, 8},
		{"w:g/e @0xffffffff81000000:2 a=$addr o=$old:u16", "w:g/e rw@0xffffffff81000000:2 a=$addr o=$old:u16", AccessRW, 2},
		{"w:x w@cred-0x10:1 %ax", "w:wprobes/x w@cred-0x10:1 arg1=%ax", AccessWrite, 1},
	}
	for _, tt := range tests {
		d, err := Parse(tt.line)
		if err != nil {
			t.Errorf("%q: %v", tt.line, err)
			continue
		}
		if d.Kind != Watch || d.Access != tt.access || d.Len != tt.n || d.String() != tt.want {
			t.Errorf("%q: kind %v access %v len %d, %q; want %q", tt.line, d.Kind, d.Access, d.Len, d.String(), tt.want)
		}
		d2, err := Parse(d.String())
		if err != nil || d2.String() != d.String() {
			t.Errorf("round trip of %q: %q %v", d.String(), d2, err)
		}
	}
	// $value and $old take the watched length's hex type.
	d, _ := Parse("w:x w@sym:2")
	if d.Args[1].Type.Base != X16 || d.Args[2].Type.Base != X16 || d.Args[0].Type != DefaultType {
		t.Errorf("default types %+v", d.Args)
	}
}

func TestParseWatchErrors(t *testing.T) {
	tests := []struct{ line, at, msg string }{
		{"w:x jiffies", "jiffies", "has no @"},
		{"w:x x@jiffies", "x@", "invalid access type"},
		{"w:x w@jiffies:3", "3", "invalid watch length"},
		{"w:x w@:8", ":8", "missing address or symbol"},
		{"w:x", "", "missing watch spec"},
		{"w5:x w@jiffies", "5", "unexpected"},
		{"w:x w@jiffies $retval", "$retval", "not available on a watch"},
		{"w:x w@jiffies $arg1", "$arg1", "$argN needs"},
		{"p:x vfs_read $addr", "$addr", "only for watch (w) events"},
		{"w:x w@jiffies s=$old:string", "string", "accepts only a memory fetch"},
	}
	for _, tt := range tests {
		_, err := Parse(tt.line)
		se, ok := err.(*SyntaxError)
		if !ok {
			t.Errorf("%q: %v, want a SyntaxError", tt.line, err)
			continue
		}
		col := strings.LastIndex(tt.line, tt.at) + 1
		if tt.at == "" {
			col = len(tt.line) + 2
		}
		if !strings.Contains(se.Msg, tt.msg) || se.Col != col {
			t.Errorf("%q: col %d %q, want col %d %q", tt.line, se.Col, se.Msg, col, tt.msg)
		}
	}
}

// A write event's $old is the bytes the store overwrote, $value what is
// there now, $addr the watched address.
func TestEvaluateWatch(t *testing.T) {
	d, err := Parse("w:x w@sym:4")
	if err != nil {
		t.Fatal(err)
	}
	mem := fakeMem{probedeftest.PageMem{}}
	mem.put(0x1000, []byte{0x78, 0x56, 0x34, 0x12})
	vals, err := Evaluate(d, &Context{Mem: mem, WatchAddr: 0x1000, WatchOld: []byte{1, 0, 0, 0}})
	if err != nil {
		t.Fatal(err)
	}
	if vals[0].U64 != 0x1000 || vals[1].U64 != 1 || vals[2].U64 != 0x12345678 {
		t.Errorf("addr=%#x old=%#x new=%#x", vals[0].U64, vals[1].U64, vals[2].U64)
	}
	// Without the old bytes (a read/write watchpoint) $old faults.
	vals, _ = Evaluate(d, &Context{Mem: mem, WatchAddr: 0x1000})
	if !vals[1].Fault || vals[2].Fault {
		t.Errorf("old %+v new %+v", vals[1], vals[2])
	}
}
