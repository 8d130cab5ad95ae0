package probedef

import (
	"errors"
	"strings"
	"testing"
)

func TestMerge(t *testing.T) {
	var defs []*Def
	for i, l := range []string{
		"p:g/open do_sys_open dfd=%di:s32 name=+0(%si):string",    // 1
		"p:g/open do_sys_openat2 dfd=%di:s32 name=+0(%si):string", // 2: appended
		"p:g/open do_filp_open dfd=%di:u32 name=+0(%si):string",   // 3: type differs
		"p:g/open do_filp_open fd=%di:s32 name=+0(%si):string",    // 4: name differs
		"r:g/open do_filp_open",                                   // 5: kind differs
		"p:g/open do_sys_openat2 dfd=%di:s32 name=+0(%si):string", // 6: same probe
		"p:g/read vfs_read", // 7
		"-:read",            // 8: deletes 7
		"-:g/nosuch",        // 9: nothing to delete
		"p:h/open vfs_open", // 10: another group
	} {
		d, err := Parse(l)
		if err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		d.Line, d.Text = i+1, l
		defs = append(defs, d)
	}
	out, err := Merge(defs)
	var got []string
	for _, d := range out {
		got = append(got, d.Symbol)
	}
	if strings.Join(got, " ") != "do_sys_open do_sys_openat2 vfs_open" {
		t.Errorf("kept %q", got)
	}
	var bad SyntaxErrors
	if !errors.As(err, &bad) || len(bad) != 5 {
		t.Fatalf("refusals: %v", err)
	}
	want := []struct {
		line, col int
		msg       string
	}{
		{3, 23, "Argument type or name"},
		{4, 23, "Argument type or name"},
		{5, 1, "Probe type is different"},
		{6, 1, "exact same probe"},
		{9, 1, "no event g/nosuch to delete"},
	}
	for i, w := range want {
		if bad[i].Line != w.line || bad[i].Col != w.col || !strings.Contains(bad[i].Msg, w.msg) {
			t.Errorf("refusal %d: line %d col %d %q; want line %d col %d %q", i, bad[i].Line, bad[i].Col, bad[i].Msg, w.line, w.col, w.msg)
		}
	}
}

func TestExpand(t *testing.T) {
	named, err := Parse("p:grp/ev vfs_* file=$arg1 n=+0(%si):u32")
	if err != nil {
		t.Fatal(err)
	}
	dflt, err := Parse("r:grp/ vfs_*")
	if err != nil {
		t.Fatal(err)
	}
	a := Expand(named, []string{"vfs_read", "vfs_write"})
	if len(a) != 2 || a[0].Symbol != "vfs_read" || a[1].Event != "ev" || a[1].Group != "grp" {
		t.Fatalf("named: %v", a)
	}
	a[0].Args[1].Fetch.Inner.Off = 99
	if named.Args[1].Fetch.Inner.Off == 99 || a[1].Args[1].Fetch.Inner.Off == 99 {
		t.Fatal("the expansions share their fetch args")
	}
	b := Expand(dflt, []string{"vfs_read"})
	if b[0].Event != "r_vfs_read_0" || b[0].Group != "grp" {
		t.Fatalf("default name: %s/%s", b[0].Group, b[0].Event)
	}
	for _, bad := range []string{"p vfs_*+4", "j vfs_*", "p vfs_[", "p m:vfs_*"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// An unknown parameter name lists the function's real ones.
func TestUnresolvedListsParams(t *testing.T) {
	d, err := Parse("p:ev f c")
	if err != nil {
		t.Fatal(err)
	}
	err = d.ResolveParams([]string{"a", "b"})
	if err == nil || !strings.Contains(err.Error(), `parameter "c" not resolved: f's parameters are a, b`) {
		t.Fatalf("%v", err)
	}
}

// A file saved with a UTF-8 byte order mark parses as without one.
func TestParseFileBOM(t *testing.T) {
	defs, err := ParseFile(strings.NewReader("\ufeffp:a f\r\np:b g\n"))
	if err != nil || len(defs) != 2 || defs[0].Event != "a" || defs[0].Symbol != "f" {
		t.Fatalf("%v %v", defs, err)
	}
}
