package analysis

import (
	"errors"
	"strings"
	"testing"

	"github.com/hvprobe/hvprobe/probedef"
)

func mustParse(t testing.TB, line string) *probedef.Def {
	t.Helper()
	d, err := probedef.Parse(line)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// filterDef has a hex, a signed, an unsigned, a string and a default-named
// argument.
const filterDef = `p:open do_sys_open dfd=%di:x32 flags=%dx:s32 mode=%cx:u16 name=+0(%si):string %r8`

func filterEvent(dfd, flags, mode uint64, name string, nameFault bool) probedef.Event {
	return probedef.Event{
		Comm: "bash", PID: 42, CPU: 1,
		Values: []probedef.Value{
			{Name: "dfd", Type: probedef.Type{Base: probedef.X32}, U64: dfd},
			{Name: "flags", Type: probedef.Type{Base: probedef.S32}, U64: flags & 0xffffffff, S64: int64(int32(flags))},
			{Name: "mode", Type: probedef.Type{Base: probedef.U16}, U64: mode},
			{Name: "name", Type: probedef.Type{Base: probedef.String}, Str: name, Fault: nameFault},
			{Name: "arg5", Type: probedef.DefaultType, U64: 7},
		},
	}
}

func TestFilterMatch(t *testing.T) {
	d := mustParse(t, filterDef)
	ev := filterEvent(0xffffff9c, uint64(0xfffffffe), 0644, "/etc/passwd", false)
	for _, tc := range []struct {
		expr string
		want bool
	}{
		{"dfd == 0xffffff9c", true},
		{"dfd == 4294967196", true},
		{"dfd != 0xffffff9c", false},
		{"flags == -2", true},
		{"flags < 0", true},
		{"flags >= -2 && flags <= -2", true},
		{"flags > -2", false},
		{"mode == 0644", true},
		{"mode & 0x4", true},
		{"mode & 0x1", false},
		{"arg5 == 7", true},
		{"name == /etc/passwd", true},
		{`name == "/etc/passwd"`, true},
		{"name != '/etc/passwd'", false},
		{"name ~ /etc/*", true},
		{`name ~ "*passwd"`, true},
		{"name ~ *tc*", true},
		{"name ~ *shadow*", false},
		{"name ~ /etc/pass??", true},
		{"name ~ /etc/[a-p]asswd", true},
		{"name ~ /etc/[!p]asswd", false},
		{"comm == bash", true},
		{"common_comm ~ ba*", true},
		{"COMM ~ b?sh", true},
		{"common_pid == 42 && cpu == 1", true},
		{"pid != 42 || CPU == 1", true},
		{"common_cpu == 0 || flags == 1 && mode == 0644", false},
		{"(common_cpu == 0 || flags == -2) && mode == 0644", true},
		{"common_cpu == 1 || flags == 1 && mode == 0", true},
		{"!(comm == bash)", false},
		{"!comm == sh", true},
		{"!!(pid == 42)", true},
		{"comm != !x&&pid==42", true},
		{"((dfd & 0x80000000))", true},
	} {
		f, err := ParseFilter(d, tc.expr)
		if err != nil {
			t.Errorf("%q: %v", tc.expr, err)
			continue
		}
		if got := f.Match(ev); got != tc.want {
			t.Errorf("%q: Match = %v, want %v", tc.expr, got, tc.want)
		}
	}
}

func TestFilterFault(t *testing.T) {
	d := mustParse(t, filterDef)
	ev := filterEvent(3, 0, 0, "", true)
	for expr, want := range map[string]bool{
		"name == ''":              false,
		"name != x":               false,
		"name ~ *":                false,
		"!(name ~ *)":             true,
		"name == x || dfd == 0x3": true,
	} {
		f, err := ParseFilter(d, expr)
		if err != nil {
			t.Fatal(err)
		}
		if got := f.Match(ev); got != want {
			t.Errorf("%q on a faulted name: %v, want %v", expr, got, want)
		}
	}
}

func TestFilterArgShadowsCommon(t *testing.T) {
	d := mustParse(t, "p:e f cpu=%di:u8")
	f, err := ParseFilter(d, "cpu == 9")
	if err != nil {
		t.Fatal(err)
	}
	ev := probedef.Event{CPU: 1, Values: []probedef.Value{{Name: "cpu", Type: probedef.Type{Base: probedef.U8}, U64: 9}}}
	if !f.Match(ev) {
		t.Error("the argument named cpu should be compared, not the CPU")
	}
}

func TestFilterRetval(t *testing.T) {
	d := mustParse(t, "r:e f $retval:s64")
	f, err := ParseFilter(d, "arg1 < 0")
	if err != nil {
		t.Fatal(err)
	}
	if !f.Match(probedef.Event{Values: []probedef.Value{{Name: "arg1", Type: probedef.Type{Base: probedef.S64}, U64: ^uint64(0), S64: -1}}}) {
		t.Error("$retval (arg1) = -1 should be < 0")
	}
}

func TestFilterErrors(t *testing.T) {
	d := mustParse(t, filterDef+" arr=+0(%si):u8[4]")
	for _, tc := range []struct {
		expr, msg string
		col       int
	}{
		{"", "no filter expression", 1},
		{"nosuch == 1", `field "nosuch" not found`, 1},
		{"dfd == 1 && bogus > 2", `field "bogus" not found`, 13},
		{"dfd = 1", "missing operator", 5},
		{"dfd ==", "missing value", 7},
		{"dfd == -1", "invalid value", 8},
		{"flags == 1x", "invalid value", 10},
		{`dfd == "3"`, "invalid value", 8},
		{"name < abc", "not allowed on string field", 6},
		{"dfd ~ 3*", "needs a string field", 5},
		{"(dfd == 1", "unbalanced parentheses", 1},
		{"dfd == 1)", "unbalanced parentheses", 9},
		{"dfd == 1 dfd == 2", "expected && or ||", 10},
		{"dfd == 1 | dfd == 2", "single |", 10},
		{"name == 'abc", "unterminated string", 9},
		{"&& dfd == 1", "missing field name", 1},
		{"arr == 1", "array field", 1},
	} {
		_, err := ParseFilter(d, tc.expr)
		var se *probedef.SyntaxError
		if !errors.As(err, &se) || !errors.Is(err, probedef.ErrSyntax) {
			t.Errorf("%q: error %v, want *SyntaxError", tc.expr, err)
			continue
		}
		if se.Col != tc.col || !strings.Contains(se.Msg, tc.msg) {
			t.Errorf("%q: col %d msg %q, want col %d with %q\n%s", tc.expr, se.Col, se.Msg, tc.col, tc.msg, se.Render(""))
		}
	}
	if _, err := ParseFilter(mustParse(t, "-:e"), "a == 1"); !errors.Is(err, probedef.ErrNotProbe) {
		t.Errorf("delete def: %v", err)
	}
}

func TestFilterRender(t *testing.T) {
	_, err := ParseFilter(mustParse(t, filterDef), "dfd == 1 && bogus > 2")
	want := "dfd == 1 && bogus > 2\n            ^ field \"bogus\" not found in open"
	if got := err.Error(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

// FuzzParseFilter: ParseFilter never panics, errors are *SyntaxError with
// a column inside (or just past) the input, and a parsed filter matches
// without panicking on an event with missing and faulted values.
func FuzzParseFilter(f *testing.F) {
	for _, s := range []string{
		"dfd == 0x10", "flags < -1 && !(name ~ '*a[b-c]?')", "comm == bash || common_pid != 1",
		"(cpu & 1) && mode >= 0644", `name == "x"`, "((", "a ==", "name ~ [",
	} {
		f.Add(s)
	}
	d := mustParse(f, filterDef)
	f.Fuzz(func(t *testing.T, expr string) {
		flt, err := ParseFilter(d, expr)
		if err != nil {
			var se *probedef.SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("error %T, want *SyntaxError", err)
			}
			if se.Col < 1 || se.Col > len(expr)+1 {
				t.Fatalf("column %d outside %d bytes", se.Col, len(expr))
			}
			return
		}
		flt.Match(probedef.Event{})
		flt.Match(filterEvent(1, 2, 3, expr, false))
		flt.Match(filterEvent(1, 2, 3, "", true))
	})
}

func TestGlobMatch(t *testing.T) {
	for _, tc := range []struct {
		pat, s string
		want   bool
	}{
		{"", "", true}, {"", "a", false}, {"*", "", true}, {"a*", "abc", true},
		{"*c", "abc", true}, {"*b*", "abc", true}, {"a*c*e", "abcde", true},
		{"a*c*e", "abcdf", false}, {"?", "", false}, {"[]]", "]", true},
		{"[a-]", "-", true}, {"[", "[", true}, {"[!a]", "a", false}, {"a[", "a[", true},
		{"*a*a*a", "aaaaaaaaab", false},
	} {
		if got := globMatch(tc.pat, tc.s); got != tc.want {
			t.Errorf("globMatch(%q, %q) = %v", tc.pat, tc.s, got)
		}
	}
}
