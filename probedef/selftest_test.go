package probedef

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// ftraceSyntaxErrors are the lines of Linux's ftrace selftest
// tools/testing/selftests/ftrace/test.d/kprobe/kprobe_syntax_errors.tc,
// with ^ where ftrace's error_log puts its caret. Each must be refused
// with the caret in the same column. vfs_read is the only known symbol.
var ftraceSyntaxErrors = []string{
	"p^100 vfs_read",    // MAXACT_NO_KPROBE
	"r^1a111 vfs_read",  // BAD_MAXACT
	"r^100000 vfs_read", // MAXACT_TOO_BIG
	"p ^non_exist_func", // BAD_PROBE_ADDR (enoent)
	"p ^hoge-fuga",      // BAD_PROBE_ADDR (bad syntax)
	"p ^hoge+1000-1000", // BAD_PROBE_ADDR (bad syntax)
	"r ^vfs_read+10",    // BAD_RETPROBE
	"p:^/bar vfs_read",  // NO_GROUP_NAME
	"p:^12345678901234567890123456789012345678901234567890123456789012345/bar vfs_read", // GROUP_TOO_LONG
	"p:^foo.1/bar vfs_read", // BAD_GROUP_NAME
	// Not "p:foo/ vfs_read": Linux 6.1's traceprobe_parse_event_name
	// accepts an empty event after a group (the event is named after the
	// symbol), as this parser does; that selftest line is older.
	"p:foo/^12345678901234567890123456789012345678901234567890123456789012345 vfs_read", // EVENT_TOO_LONG
	"p:foo/^bar.1 vfs_read",      // BAD_EVENT_NAME
	"p vfs_read ^$retval",        // RETVAL_ON_PROBE
	"p vfs_read ^$stack10000",    // BAD_STACK_NUM
	"p vfs_read ^$arg10000",      // BAD_ARG_NUM
	"p vfs_read ^$none_var",      // BAD_VAR
	"p vfs_read ^%none_reg",      // BAD_REG_NAME
	"p vfs_read ^@12345678abcde", // BAD_MEM_ADDR
	"p vfs_read ^@+10",           // FILE_ON_KPROBE
	`p vfs_read arg1=\^x`,        // BAD_IMM
	`p vfs_read arg1=\"abcd^`,    // IMMSTR_NO_CLOSE
	"p vfs_read ^+0@0)",          // DEREF_NEED_BRACE
	"p vfs_read ^+0ab1(@0)",      // BAD_DEREF_OFFS
	"p vfs_read +0(+0(@0^)",      // DEREF_OPEN_BRACE
	"p vfs_read +0(^$comm)",      // COMM_CANT_DEREF
	"p vfs_read ^&1",             // BAD_FETCH_ARG
	"p vfs_read +0(^+0(+0(+0(+0(+0(+0(+0(+0(+0(+0(+0(+0(+0(@0))))))))))))))", // TOO_MANY_OPS
	"p vfs_read +0(@11):u8[10^",                         // ARRAY_NO_CLOSE
	"p vfs_read +0(@11):u8[10]^a",                       // BAD_ARRAY_SUFFIX
	"p vfs_read +0(@11):u8[^10a]",                       // BAD_ARRAY_NUM
	"p vfs_read +0(@11):u8[^256]",                       // ARRAY_TOO_BIG
	"p vfs_read @11:^unknown_type",                      // BAD_TYPE
	"p vfs_read $stack0:^string",                        // BAD_STRING
	"p vfs_read @11:^b10@a/16",                          // BAD_BITFIELD
	"p vfs_read ^arg123456789012345678901234567890=@11", // ARG_NAME_TOO_LONG
	"p vfs_read ^=@11",                                  // NO_ARG_NAME
	"p vfs_read ^var.1=@11",                             // BAD_ARG_NAME
	"p vfs_read var1=@11 ^var1=@12",                     // USED_ARG_NAME
	"p vfs_read ^+1234567(+1234567(+1234567(+1234567(+1234567(+1234567(@1234))))))", // ARG_TOO_LONG
	"p vfs_read arg1=^", // NO_ARG_BODY
}

// ftraceMultiprobeErrors are the selftest's multi-probe lines, each
// written after ftraceMultiprobeFirst.
const ftraceMultiprobeFirst = `p:kprobes/testevent _do_fork abcd=\1`

var ftraceMultiprobeErrors = []string{
	"^r:kprobes/testevent do_exit",              // DIFF_PROBE_TYPE
	`p:kprobes/testevent _do_fork ^bcd=\1`,      // DIFF_ARG_TYPE
	`p:kprobes/testevent _do_fork ^abcd=\1:u8`,  // DIFF_ARG_TYPE
	`p:kprobes/testevent _do_fork ^abcd=\"foo"`, // DIFF_ARG_TYPE
	`^p:kprobes/testevent _do_fork abcd=\1`,     // SAME_PROBE
}

func TestFtraceSelftestMultiprobeErrors(t *testing.T) {
	first, err := Parse(ftraceMultiprobeFirst)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ftraceMultiprobeErrors {
		caret := strings.Index(l, "^")
		line := l[:caret] + l[caret+1:]
		d, err := Parse(line)
		if err != nil {
			t.Errorf("%q: %v", line, err)
			continue
		}
		_, err = Merge([]*Def{first, d})
		var list SyntaxErrors
		if !errors.As(err, &list) || len(list) != 1 {
			t.Errorf("%q: accepted after %q (ftrace refuses it at column %d)", line, ftraceMultiprobeFirst, caret+1)
			continue
		}
		if list[0].Col != caret+1 {
			t.Errorf("%q: caret at column %d, ftrace's at %d:\n%s", line, list[0].Col, caret+1, list[0].Render(""))
		}
	}
}

func TestFtraceSelftestSyntaxErrors(t *testing.T) {
	lookup := func(sym string) error {
		if sym == "vfs_read" {
			return nil
		}
		return fmt.Errorf("unknown symbol %q", sym)
	}
	for _, l := range ftraceSyntaxErrors {
		caret := strings.Index(l, "^")
		line := l[:caret] + l[caret+1:]
		d, err := Parse(line)
		if err == nil {
			err = Validate([]*Def{d}, lookup)
		}
		var se *SyntaxError
		var list SyntaxErrors
		if errors.As(err, &list) && len(list) > 0 {
			se = list[0]
		}
		if se == nil && !errors.As(err, &se) {
			t.Errorf("%q: accepted (ftrace refuses it at column %d)", line, caret+1)
			continue
		}
		if se.Col != caret+1 {
			t.Errorf("%q: caret at column %d, ftrace's at %d:\n%s", line, se.Col, caret+1, se.Render(""))
		}
	}
}

// TestFtraceSelftestArgsSyntax: the arguments of Linux's
// kprobe_args_syntax.tc selftest, on x86-64, accepted and refused as
// ftrace does them (_sdata and vfs_read are known symbols).
func TestFtraceSelftestArgsSyntax(t *testing.T) {
	lookup := func(sym string) error {
		if sym == "vfs_read" || sym == "_sdata" {
			return nil
		}
		return fmt.Errorf("unknown symbol %q", sym)
	}
	check := func(line string) error {
		d, err := Parse(line)
		if err == nil {
			err = Validate([]*Def{d}, lookup)
		}
		return err
	}
	good := []string{"%ax", "@_sdata", "@0xffffffff82a00000", "@_sdata+10", "@_sdata-10",
		"$stack", "$stack0", "$stack1", "$comm",
		"+0(%ax)", "-0(%ax)", "+10($stack)", "+0($stack1)", "+10(@_sdata-10)", "+0(+10(+20($stack)))",
		"varname=%ax", "%ax:x16", "$comm:string", "+0($stack):string"}
	bad := []string{"%ex", "@", "@deaqswdefr", "@_sdata*10", "@_sdata/10", "@_sdata%10", "@_sdata&10", "@_sdata|10",
		"$stackp", "$stack0+10", "$stack1-10", "$retval",
		"+(%ax)", "(%ax+10)", "-(%ax)", "(%ax)", "+10($comm)", "+0(%ax)+10",
		"varname=varname2=%ax", "%ax::x16", "%ax:y16", "x16:%ax",
		"$comm:x64", "$stack:string", "%ax:string"}
	for _, a := range good {
		if err := check("p vfs_read " + a); err != nil {
			t.Errorf("%q refused: %v", a, err)
		}
	}
	for _, a := range bad {
		if err := check("p vfs_read " + a); err == nil {
			t.Errorf("%q accepted", a)
		}
	}
	if err := check("r vfs_read $retval"); err != nil {
		t.Errorf("r vfs_read $retval: %v", err)
	}
}

// TestFtraceSelftestEventNames: kprobe_eventname.tc's automatic and given
// event names.
func TestFtraceSelftestEventNames(t *testing.T) {
	for _, c := range []struct{ line, group, event string }{
		{"p vfs_read", "kprobes", "p_vfs_read_0"},
		{"p:event1 vfs_read", "kprobes", "event1"},
		{"p:kprobes2/event2 vfs_read", "kprobes2", "event2"},
		{"p ip_rcv_finish_core.isra.0", "kprobes", "p_ip_rcv_finish_core_isra_0_0"},
	} {
		d, err := Parse(c.line)
		if err != nil {
			t.Errorf("%q: %v", c.line, err)
		} else if d.Group != c.group || d.Event != c.event {
			t.Errorf("%q: event %s/%s; want %s/%s", c.line, d.Group, d.Event, c.group, c.event)
		}
	}
}
