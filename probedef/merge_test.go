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
