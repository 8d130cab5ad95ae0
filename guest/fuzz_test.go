package guest

import (
	"bytes"
	"strings"
	"testing"
)

func FuzzParseSystemMap(f *testing.F) {
	f.Add([]byte(fixtureMap))
	f.Add([]byte("ffffffffc0000000 t foo_init\t[foo]\r\n\n"))
	f.Add([]byte("0000000000000000 D __per_cpu_start\n0000000000000010 D __per_cpu_end\n0000000000000008 A x\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		tab, err := ParseSystemMap(bytes.NewReader(data))
		if err != nil {
			return
		}
		for s := range tab.All() {
			got, _, ok := tab.SymbolAt(s.Addr)
			if ok && got.Addr != s.Addr && s.IsText() && s.Slides() {
				t.Fatalf("SymbolAt(%#x) = %+v, want a symbol at that address", s.Addr, got)
			}
			tab.Lookup(s.Name)
			tab.FormatAddr(s.Addr + 1)
			tab.Slid(0x200000).SymbolsAt(s.Addr)
		}
		tab.Lookup("definitely_missing")
	})
}

func FuzzParseSymbolOffset(f *testing.F) {
	for _, s := range []string{"do_sys_openat2+0x10", "0xffffffff81000000", "a:2+4", "+", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		name, _, err := ParseSymbolOffset(s)
		if err == nil && (strings.ContainsAny(name, "+ \t\n") || (name == "" && !strings.HasPrefix(s, "0x") && len(s) != 16)) {
			t.Fatalf("ParseSymbolOffset(%q) accepted name %q", s, name)
		}
	})
}
