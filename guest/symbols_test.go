package guest

import (
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// fixtureMap is a System.map excerpt in the shape of an x86-64 6.1 kernel:
// per-CPU symbols at small addresses, an absolute symbol, static
// functions sharing a name, names with dots and dollars, aliases.
const fixtureMap = `0000000000000000 D __per_cpu_start
0000000000001000 D cpu_debug_store
000000000001fbc0 d runqueues
0000000000030000 D __per_cpu_end
0000000000000400 A __kernel_abs
ffffffff81000000 T _text
ffffffff81000000 T startup_64
ffffffff81000100 t secondary_startup_64
ffffffff81001000 T _stext
ffffffff81001000 t __do_stuff.constprop.0
ffffffff81001040 T do_sys_openat2
ffffffff810011e0 T do_sys_open
ffffffff81001200 t show_val
ffffffff81001280 t show_val
ffffffff81001300 t show_val
ffffffff81001380 W arch_hook
ffffffff81001390 t local_alias
ffffffff81001390 T global_alias
ffffffff810013a0 T _RNvNtCs1234_7mycrate3bar3baz
ffffffff810013c0 T _etext
ffffffff81002000 R linux_banner
ffffffff81003000 D jiffies$1
ffffffff81004000 T _sinittext
ffffffff81004000 T start_kernel
ffffffff81004800 T _einittext
ffffffff81005000 B __bss_start
`

func fixtureTable(t testing.TB) *SymbolTable {
	t.Helper()
	// CRLF line ends and a blank line must be tolerated.
	src := strings.ReplaceAll(fixtureMap, "ffffffff81001040 T do_sys_openat2\n", "ffffffff81001040 T do_sys_openat2\r\n\n")
	tab, err := ParseSystemMap(strings.NewReader(src))
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

func TestParseSystemMap(t *testing.T) {
	tab := fixtureTable(t)
	if tab.Len() != 26 {
		t.Fatalf("Len = %d, want 26", tab.Len())
	}
	tests := []struct {
		name string
		want Symbol
	}{
		{"do_sys_openat2", Symbol{Name: "do_sys_openat2", Addr: 0xffffffff81001040, Size: 0x1a0, Type: 'T'}},
		{"runqueues", Symbol{Name: "runqueues", Addr: 0x1fbc0, Type: 'd', PerCPU: true}},
		{"__per_cpu_end", Symbol{Name: "__per_cpu_end", Addr: 0x30000, Type: 'D', PerCPU: true}},
		{"__kernel_abs", Symbol{Name: "__kernel_abs", Addr: 0x400, Type: 'A'}},
		{"jiffies$1", Symbol{Name: "jiffies$1", Addr: 0xffffffff81003000, Size: 0x1000, Type: 'D'}},
		{"__do_stuff.constprop.0", Symbol{Name: "__do_stuff.constprop.0", Addr: 0xffffffff81001000, Size: 0x40, Type: 't'}},
		{"__bss_start", Symbol{Name: "__bss_start", Addr: 0xffffffff81005000, Type: 'B'}},
	}
	for _, tc := range tests {
		got, err := tab.Lookup(tc.name)
		if err != nil || got != tc.want {
			t.Errorf("Lookup(%q) = %+v, %v; want %+v", tc.name, got, err, tc.want)
		}
	}
	mod, err := ParseSystemMap(strings.NewReader("ffffffffc0000000 t foo_init\t[foo]\n"))
	if err != nil || mod.Len() != 1 {
		t.Errorf("kallsyms module line: %v", err)
	}
}

func TestParseSystemMapErrors(t *testing.T) {
	tests := []struct {
		name, in string
		line     int
	}{
		{"bad hex", "ffffffff81000000 T a\nffffffffg1000000 T b\n", 2},
		{"long address", "1ffffffff81000000 T a\n", 1},
		{"bad type", "ffffffff81000000 T a\n\nffffffff81000000 Q b\n", 3},
		{"type too long", "ffffffff81000000 TT a\n", 1},
		{"missing name", "ffffffff81000000 T\n", 1},
		{"missing type", "ffffffff81000000\n", 1},
		{"extra field", "ffffffff81000000 T a b\n", 1},
		{"extra after module", "ffffffff81000000 T a [m] x\n", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseSystemMap(strings.NewReader(tc.in))
			var le *LineError
			if !errors.As(err, &le) || !errors.Is(err, ErrSyntax) || le.Line != tc.line {
				t.Fatalf("error %v, want a LineError at line %d", err, tc.line)
			}
		})
	}
}

func TestLookup(t *testing.T) {
	tab := fixtureTable(t)
	_, err := tab.Lookup("show_val")
	var amb *AmbiguousError
	if !errors.As(err, &amb) || !errors.Is(err, ErrAmbiguous) || len(amb.Candidates) != 3 ||
		amb.Candidates[0].Addr != 0xffffffff81001200 || amb.Candidates[2].Addr != 0xffffffff81001300 {
		t.Fatalf("Lookup(show_val) = %v, want 3 candidates in address order", err)
	}
	for n, want := range map[string]uint64{"show_val:1": 0xffffffff81001200, "show_val:3": 0xffffffff81001300, "do_sys_open:1": 0xffffffff810011e0} {
		if s, err := tab.Lookup(n); err != nil || s.Addr != want {
			t.Errorf("Lookup(%q) = %#x, %v; want %#x", n, s.Addr, err, want)
		}
	}
	tests := []struct {
		name    string
		similar []string
	}{
		{"show_val:4", []string{"show_val:1", "show_val:2", "show_val:3"}},
		{"do_sys_opnat2", []string{"do_sys_openat2", "do_sys_open"}},
		{"do_sys_ope", []string{"do_sys_open", "do_sys_openat2"}},
		{"start_kernal", []string{"start_kernel"}},
		{"zzzzzzzzzzzzzzzzzz", nil},
	}
	for _, tc := range tests {
		_, err := tab.Lookup(tc.name)
		var u *UnknownSymbolError
		if !errors.As(err, &u) || !errors.Is(err, ErrUnknownSymbol) {
			t.Fatalf("Lookup(%q) = %v, want UnknownSymbolError", tc.name, err)
		}
		if !reflect.DeepEqual(u.Similar, tc.similar) {
			t.Errorf("Lookup(%q) suggests %q, want %q", tc.name, u.Similar, tc.similar)
		}
	}
}

func TestSymbolAtAndFormat(t *testing.T) {
	tab := fixtureTable(t)
	const slide = 0x2e00000
	tests := []struct {
		addr uint64
		want string
	}{
		{0xffffffff81001040, "do_sys_openat2+0x0/0x1a0"},
		{0xffffffff81001050, "do_sys_openat2+0x10/0x1a0"},
		{0xffffffff810011df, "do_sys_openat2+0x19f/0x1a0"},
		{0xffffffff81001290, "show_val+0x10/0x80"},
		{0xffffffff81001000, "__do_stuff.constprop.0+0x0/0x40"}, // a function beats the _stext marker
		{0xffffffff81001385, "arch_hook+0x5/0x10"},
		{0xffffffff81001394, "global_alias+0x4/0x10"},
		{0xffffffff81000000, "startup_64+0x0/0x100"},
		{0xffffffff81004010, "start_kernel+0x10/0x800"},
		{0xffffffff810013c0, "_etext+0x0/0xc40"},
		{0xffffffff81002010, "0xffffffff81002010"}, // rodata: no text symbol contains it
		{0xffffffff80000000, "0xffffffff80000000"},
		{0x1fbc0, "0x1fbc0"},
	}
	for _, tc := range tests {
		if got := tab.FormatAddr(tc.addr); got != tc.want {
			t.Errorf("FormatAddr(%#x) = %q, want %q", tc.addr, got, tc.want)
		}
		// The slid view gives the same answer for the moved address.
		if got := tab.Slid(slide).FormatAddr(tc.addr + slide); got != tc.want && strings.Contains(tc.want, "+") {
			t.Errorf("slid FormatAddr(%#x) = %q, want %q", tc.addr+slide, got, tc.want)
		}
	}
	// Of two functions at one address the global one wins.
	if s, off, ok := tab.SymbolAt(0xffffffff81001390); !ok || s.Name != "global_alias" || off != 0 {
		t.Errorf("SymbolAt(_stext) = %q+%#x, %v", s.Name, off, ok)
	}
	if got := tab.Format(0xffffffff810013a4, FormatDemangle); got != "mycrate::bar::baz+0x4/0x20" {
		t.Errorf("demangled Format = %q", got)
	}
	if got := tab.FormatAddr(0xffffffff810013a4); got != "_RNvNtCs1234_7mycrate3bar3baz+0x4/0x20" {
		t.Errorf("plain Format = %q", got)
	}
}

func TestSlid(t *testing.T) {
	const slide = 0x1c000000
	tab := fixtureTable(t).Slid(slide)
	for name, want := range map[string]uint64{
		"do_sys_openat2": 0xffffffff81001040 + slide,
		"runqueues":      0x1fbc0, // per-CPU offsets do not move
		"__kernel_abs":   0x400,   // nor do absolute values
	} {
		if s, err := tab.Lookup(name); err != nil || s.Addr != want {
			t.Errorf("slid Lookup(%q) = %#x, %v; want %#x", name, s.Addr, err, want)
		}
	}
	if tab.InText(0xffffffff81001040) || !tab.InText(0xffffffff81001040+slide) || !tab.InText(0xffffffff81004010+slide) {
		t.Error("InText does not follow the slide")
	}
	if r := tab.Text(); r != (Range{0xffffffff81001000 + slide, 0xffffffff810013c0 + slide}) {
		t.Errorf("Text = %#x", r)
	}
	if got := tab.SymbolsAt(0x1fbc0); len(got) != 1 || got[0].Name != "runqueues" {
		t.Errorf("SymbolsAt(per-CPU) = %+v", got)
	}
	got := tab.SymbolsAt(0xffffffff81001390 + slide)
	if len(got) != 2 || got[0].Name != "local_alias" || got[1].Name != "global_alias" {
		t.Errorf("SymbolsAt(alias) = %+v", got)
	}
	if a, err := tab.Resolve("show_val:2+0x8"); err != nil || a != 0xffffffff81001288+slide {
		t.Errorf("Resolve = %#x, %v", a, err)
	}
	if tab.Slid(0).Slide() != 0 {
		t.Error("Slid(0) keeps the slide")
	}
}

func TestInText(t *testing.T) {
	tab := fixtureTable(t)
	for addr, want := range map[uint64]bool{
		0xffffffff81000fff: false, // head text before _stext
		0xffffffff81001000: true,
		0xffffffff810013bf: true,
		0xffffffff810013c0: false, // _etext is exclusive
		0xffffffff81004000: true,
		0xffffffff81004800: false,
		0x1fbc0:            false,
	} {
		if got := tab.InText(addr); got != want {
			t.Errorf("InText(%#x) = %v, want %v", addr, got, want)
		}
	}
}

func TestParseSymbolOffset(t *testing.T) {
	tests := []struct {
		in   string
		name string
		off  uint64
		err  bool
	}{
		{"do_sys_openat2", "do_sys_openat2", 0, false},
		{"do_sys_openat2+0x10", "do_sys_openat2", 0x10, false},
		{"do_sys_openat2+16", "do_sys_openat2", 16, false},
		{"show_val:2+0x8", "show_val:2", 8, false},
		{"__do_stuff.constprop.0+0x4", "__do_stuff.constprop.0", 4, false},
		{"0xffffffff81000000", "", 0xffffffff81000000, false},
		{"ffffffff81000000", "", 0xffffffff81000000, false},
		{"", "", 0, true},
		{"+0x10", "", 0, true},
		{"sym+", "", 0, true},
		{"sym+0xzz", "", 0, true},
		{"sym+0x10+4", "", 0, true},
		{"0xnothex", "", 0, true},
		{"sym +4", "", 0, true},
	}
	for _, tc := range tests {
		name, off, err := ParseSymbolOffset(tc.in)
		if tc.err {
			if !errors.Is(err, ErrSyntax) {
				t.Errorf("ParseSymbolOffset(%q) = %q, %#x, %v; want ErrSyntax", tc.in, name, off, err)
			}
			continue
		}
		if err != nil || name != tc.name || off != tc.off {
			t.Errorf("ParseSymbolOffset(%q) = %q, %#x, %v; want %q, %#x", tc.in, name, off, err, tc.name, tc.off)
		}
	}
}

func TestDemangle(t *testing.T) {
	for in, want := range map[string]string{
		"_RNvNtCs1234_7mycrate3bar3baz":          "mycrate::bar::baz",
		"_ZN4core3fmt5write17h0123456789abcdefE": "core::fmt::write",
		"do_sys_openat2":                         "do_sys_openat2",
		"_Rgarbage":                              "_Rgarbage",
	} {
		if got := Demangle(in); got != want {
			t.Errorf("Demangle(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSymbolAtAllocs(t *testing.T) {
	tab := fixtureTable(t).Slid(0x200000)
	n := testing.AllocsPerRun(100, func() {
		tab.SymbolAt(0xffffffff81001050 + 0x200000)
		tab.InText(0xffffffff81001050)
	})
	if n != 0 {
		t.Errorf("SymbolAt allocates %v times per call", n)
	}
}

// TestAtRefusesPastEnd: sym+off must lie inside sym, as Linux's kprobes
// require; an offset at sym's size is the next symbol, not sym.
func TestAtRefusesPastEnd(t *testing.T) {
	tab := fixtureTable(t)
	for _, c := range []struct {
		sym  string
		off  uint64
		want uint64 // 0: refused
	}{
		{"do_sys_open", 0, 0xffffffff810011e0},
		{"do_sys_open", 0x1f, 0xffffffff810011ff},
		{"do_sys_open", 0x20, 0}, // show_val:1 starts there
		{"do_sys_open", 0x100000, 0},
		{"show_val:2", 0x7f, 0xffffffff810012ff},
		{"show_val:2", 0x80, 0},
	} {
		got, err := tab.At(c.sym, c.off)
		var pe *PastEndError
		switch {
		case c.want != 0 && (err != nil || got != c.want):
			t.Errorf("At(%s, %#x) = %#x, %v; want %#x", c.sym, c.off, got, err, c.want)
		case c.want == 0 && (!errors.As(err, &pe) || !errors.Is(err, ErrPastEnd) || !strings.Contains(err.Error(), c.sym)):
			t.Errorf("At(%s, %#x) = %#x, %v; want a PastEndError naming %s", c.sym, c.off, got, err, c.sym)
		}
	}
}

// TestDescribe: an address no function contains is placed in a symbol of
// any type, between two, or outside them all, in a slid view too.
func TestDescribe(t *testing.T) {
	const slide = 0x1c000000
	for _, tab := range []*SymbolTable{fixtureTable(t), fixtureTable(t).Slid(slide)} {
		s := tab.Slide()
		for addr, want := range map[uint64]string{
			0xffffffff81002800: "in linux_banner+0x800/0x1000, a global read-only data symbol",
			0xffffffff81003010: "in jiffies$1+0x10/0x1000, a global data symbol",
			0xffffffff81005010: "past the kernel's last symbol, __bss_start+0x10",
			0xffffffff80000000: "below the kernel's first symbol, _text at " + hex(0xffffffff81000000+s),
			0xffffffff81000100: "in secondary_startup_64+0x0/0xf00, a local text symbol",
		} {
			if got := tab.Describe(addr + s); got != want {
				t.Errorf("slide %#x: Describe(%#x) = %q, want %q", s, addr, got, want)
			}
		}
	}
}

func hex(v uint64) string { return "0x" + strconv.FormatUint(v, 16) }
