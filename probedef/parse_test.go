package probedef

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// bare drops the source position so definitions compare by meaning.
func bare(d *Def) *Def {
	c := *d
	c.Line, c.Text = 0, ""
	return &c
}

func x64(name string, f *Fetch) Arg { return Arg{Name: name, Fetch: f, Type: DefaultType} }

// untyped is an argument the line gives no type for and BTF would type.
func untyped(name string, f *Fetch) Arg {
	return Arg{Name: name, Fetch: f, Type: DefaultType, BTFType: true}
}

func reg(r string) *Fetch { return &Fetch{Kind: FetchReg, Reg: r} }

func deref(off int64, in *Fetch) *Fetch { return &Fetch{Kind: FetchDeref, Off: off, Inner: in} }

func TestParseValid(t *testing.T) {
	tests := []struct {
		line string
		want *Def
	}{
		{"p do_sys_open", &Def{Kind: Probe, Group: "kprobes", Event: "p_do_sys_open_0", Symbol: "do_sys_open"}},
		{"p:myprobe do_sys_open+0x1a %di", &Def{Kind: Probe, Group: "kprobes", Event: "myprobe",
			Symbol: "do_sys_open", Offset: 0x1a, Args: []Arg{x64("arg1", reg("di"))}}},
		{"p:grp/ev ext4:ext4_sync_file+8", &Def{Kind: Probe, Group: "grp", Event: "ev",
			Module: "ext4", Symbol: "ext4_sync_file", Offset: 8}},
		{"p ext4:ext4_sync_file", &Def{Kind: Probe, Group: "kprobes", Event: "p_ext4_ext4_sync_file_0",
			Module: "ext4", Symbol: "ext4_sync_file"}},
		// hvprobe's SYM:N for the N-th of several same-named symbols.
		{"p:ev dup_name:2+0x4", &Def{Kind: Probe, Group: "kprobes", Event: "ev", Symbol: "dup_name:2", Offset: 4}},
		{"r dup_name:12", &Def{Kind: Retprobe, Group: "kprobes", Event: "r_dup_name_12_0", Symbol: "dup_name:12"}},
		{"p:my-grp.ev foo", &Def{Kind: Probe, Group: "my-grp", Event: "ev", Symbol: "foo"}},
		{"p:grp/ foo.isra.0", &Def{Kind: Probe, Group: "grp", Event: "p_foo_isra_0_0", Symbol: "foo.isra.0"}},
		{"p 0xffffffff81000000", &Def{Kind: Probe, Group: "kprobes", Event: "p_0xffffffff81000000", Addr: 0xffffffff81000000}},
		{"p 010", &Def{Kind: Probe, Group: "kprobes", Event: "p_0x0000000000000008", Addr: 8}},
		{"r do_sys_open $retval", &Def{Kind: Retprobe, Group: "kprobes", Event: "r_do_sys_open_0",
			Symbol: "do_sys_open", Args: []Arg{untyped("arg1", &Fetch{Kind: FetchRetval})}}},
		{"r100:ev f+0 ret=$retval:s32", &Def{Kind: Retprobe, Group: "kprobes", Event: "ev", MaxActive: 100,
			Symbol: "f", Args: []Arg{{Name: "ret", Fetch: &Fetch{Kind: FetchRetval}, Type: Type{Base: S32}}}}},
		{"p:ev vfs_read%return $retval $arg2", &Def{Kind: Retprobe, Group: "kprobes", Event: "ev", Symbol: "vfs_read",
			Args: []Arg{untyped("arg1", &Fetch{Kind: FetchRetval}), x64("arg2", &Fetch{Kind: FetchArg, N: 2})}}},
		{"p vfs_read%return", &Def{Kind: Retprobe, Group: "kprobes", Event: "r_vfs_read_0", Symbol: "vfs_read"}},
		{"-:myprobe", &Def{Kind: Delete, Event: "myprobe"}},
		{"-:grp/myprobe", &Def{Kind: Delete, Group: "grp", Event: "myprobe"}},
		{"j:jp do_sys_open $arg1 $arg7:u32", &Def{Kind: Jprobe, Group: "kprobes", Event: "jp", Symbol: "do_sys_open",
			Args: []Arg{x64("arg1", &Fetch{Kind: FetchArg, N: 1}), {Name: "arg2", Fetch: &Fetch{Kind: FetchArg, N: 7}, Type: Type{Base: U32}}}}},
		{"j do_sys_open", &Def{Kind: Jprobe, Group: "kprobes", Event: "j_do_sys_open_0", Symbol: "do_sys_open"}},
		{"p f  \t @0x1000:u8 @jiffies @jiffies_64-8:s64 @x+0x10", &Def{Kind: Probe, Group: "kprobes", Event: "p_f_0", Symbol: "f",
			Args: []Arg{
				{Name: "arg1", Fetch: &Fetch{Kind: FetchMem, Imm: 0x1000}, Type: Type{Base: U8}},
				x64("arg2", &Fetch{Kind: FetchSymMem, Sym: "jiffies"}),
				{Name: "arg3", Fetch: &Fetch{Kind: FetchSymMem, Sym: "jiffies_64", Off: -8}, Type: Type{Base: S64}},
				x64("arg4", &Fetch{Kind: FetchSymMem, Sym: "x", Off: 16}),
			}}},
		{`p f $stack $stack3 $comm c=$COMM:string \42 \-1:s8 \"hi"`,
			&Def{Kind: Probe, Group: "kprobes", Event: "p_f_0", Symbol: "f", Args: []Arg{
				x64("arg1", &Fetch{Kind: FetchStackPtr}),
				x64("arg2", &Fetch{Kind: FetchStack, N: 3}),
				{Name: "arg3", Fetch: &Fetch{Kind: FetchComm}, Type: Type{Base: String}},
				{Name: "c", Fetch: &Fetch{Kind: FetchComm}, Type: Type{Base: String}},
				x64("arg5", &Fetch{Kind: FetchImm, Imm: 42}),
				{Name: "arg6", Fetch: &Fetch{Kind: FetchImm, Imm: ^uint64(0)}, Type: Type{Base: S8}},
				{Name: "arg7", Fetch: &Fetch{Kind: FetchImmString, Str: "hi"}, Type: Type{Base: String}},
			}}},
		{"p f name=+0(+8(%si)):string -u4(%sp):x16 +0x10(%r15):b4@2/32 +0(%di):u8[4] +0(%di):string[2]",
			&Def{Kind: Probe, Group: "kprobes", Event: "p_f_0", Symbol: "f", Args: []Arg{
				{Name: "name", Fetch: deref(0, deref(8, reg("si"))), Type: Type{Base: String}},
				{Name: "arg2", Fetch: &Fetch{Kind: FetchDeref, Off: -4, User: true, Inner: reg("sp")}, Type: Type{Base: X16}},
				{Name: "arg3", Fetch: deref(16, reg("r15")), Type: Type{Base: Bitfield, BitWidth: 4, BitOffset: 2, ContainerBits: 32}},
				{Name: "arg4", Fetch: deref(0, reg("di")), Type: Type{Base: U8, Array: 4}},
				{Name: "arg5", Fetch: deref(0, reg("di")), Type: Type{Base: String, Array: 2}},
			}}},
		{"p f %ip:symbol %ax:symstr %flags:x32 %orig_ax %cs:u16 +0(%di):ustring +0(%di):char",
			&Def{Kind: Probe, Group: "kprobes", Event: "p_f_0", Symbol: "f", Args: []Arg{
				{Name: "arg1", Fetch: reg("ip"), Type: Type{Base: Symbol}},
				{Name: "arg2", Fetch: reg("ax"), Type: Type{Base: SymStr}},
				{Name: "arg3", Fetch: reg("flags"), Type: Type{Base: X32}},
				x64("arg4", reg("orig_ax")),
				{Name: "arg5", Fetch: reg("cs"), Type: Type{Base: U16}},
				{Name: "arg6", Fetch: deref(0, reg("di")), Type: Type{Base: UString}},
				{Name: "arg7", Fetch: deref(0, reg("di")), Type: Type{Base: Char}},
			}}},
		{"p vfs_open filename +0(path):string mode=flags:u32 $arg*",
			&Def{Kind: Probe, Group: "kprobes", Event: "p_vfs_open_0", Symbol: "vfs_open", Args: []Arg{
				untyped("filename", &Fetch{Kind: FetchParam, Str: "filename"}),
				{Name: "arg2", Fetch: deref(0, &Fetch{Kind: FetchParam, Str: "path"}), Type: Type{Base: String}},
				{Name: "mode", Fetch: &Fetch{Kind: FetchParam, Str: "flags"}, Type: Type{Base: U32}},
				{Fetch: &Fetch{Kind: FetchAllArgs}, Type: DefaultType},
			}}},
		{"p f # a comment with %bogus", &Def{Kind: Probe, Group: "kprobes", Event: "p_f_0", Symbol: "f"}},
	}
	for _, tt := range tests {
		d, err := Parse(tt.line)
		if err != nil {
			t.Errorf("Parse(%q): %v", tt.line, err)
			continue
		}
		if d.Text != tt.line {
			t.Errorf("Parse(%q).Text = %q", tt.line, d.Text)
		}
		if got := bare(d); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Parse(%q)\n got %#v\nwant %#v", tt.line, got, tt.want)
		}
		assertRoundTrip(t, d)
	}
}

func assertRoundTrip(t *testing.T, d *Def) {
	t.Helper()
	s := d.String()
	d2, err := Parse(s)
	if err != nil {
		t.Fatalf("Parse(String()=%q) of %q: %v", s, d.Text, err)
	}
	if !reflect.DeepEqual(bare(d), bare(d2)) {
		t.Fatalf("round trip of %q via %q:\n got %#v\nwant %#v", d.Text, s, bare(d2), bare(d))
	}
}

func TestParseInvalid(t *testing.T) {
	long := strings.Repeat("a", 65)
	tests := []struct {
		line string
		col  int
		msg  string
	}{
		{"", 1, "empty probe definition"},
		{"x do_sys_open", 1, `unknown probe type "x"`},
		{"pfoo do_sys_open", 2, `unexpected "foo" after probe type`},
		{"p5 do_sys_open", 2, "maxactive is only for return probes"},
		{"r0 do_sys_open", 2, "invalid maxactive number"},
		{"r4097 do_sys_open", 2, "maxactive 4097 is too big"},
		{"p:myprobe", 11, "missing probe address or symbol"},
		{"  p:", 6, "missing probe address"},
		{"p: f", 3, "event name is not specified"},
		{"p:/ev f", 3, "group name is not specified"},
		{"p:g$/ev f", 3, `group name "g$"`},
		{"p:grp/1ev f", 7, `event name "1ev"`},
		{"p:" + long + " f", 3, "event name is too long"},
		{"p:" + long + "/e f", 3, "group name is too long"},
		{"-myprobe", 1, "want -:[GRP/]EVENT"},
		{"-:grp/", 7, "event name is not specified"},
		{"-:ev do_sys_open", 6, `unexpected "do_sys_open"`},
		{"p 0xzz", 3, `invalid probe address "0xzz"`},
		{"p f%ret", 4, `invalid probe address suffix "%ret"`},
		{"j f%return", 4, "%return does not apply to a jprobe"},
		{"j 0x1000", 3, "jprobe needs a function symbol"},
		{"p /bin/sh:0x10", 3, "uprobe locations"},
		{"p f-4", 3, `invalid probe offset "-4"`},
		{"p mod:f+x", 3, `invalid probe offset "+x"`},
		{"p m-x:f", 3, `invalid module name "m-x"`},
		{"p f$ %ax", 3, `invalid symbol "f$"`},
		{"r f+4", 3, "return probe must be on a function entry"},
		{"j f+4", 3, "jprobe must be on a function entry"},
		{"p:myprobe do_sys_open dfd=%ax:u99", 31, `unknown type "u99"`},
		{"p f %rax", 5, `invalid register name "rax" (ftrace spells it %ax)`},
		{"p f %xmm0", 5, `invalid register name "xmm0"`},
		{"p f $retval", 5, "$retval is not available on probe"},
		{"j f $retval", 5, "$retval is not available on probe"},
		{"p f+4 $arg1", 7, "$argN needs a probe on a function entry"},
		{"p 0x1000 $arg1", 10, "$argN needs a probe on a function entry"},
		{"p f $arg0", 5, "invalid argument number 0"},
		{"p f $arg2049", 5, "invalid argument number 2049"},
		{"p f $stack2049", 5, "invalid stack number 2049"},
		{"p f $stackx", 5, `invalid $-variable "$stackx"`},
		{"p f $foo", 5, `invalid $-variable "$foo"`},
		{"p f+1 $arg*", 7, "$arg* needs a probe on a function entry"},
		{"p f $arg* $arg*", 11, "$arg* given twice"},
		{"p f+1 filename", 7, "parameter names need a probe on a function entry"},
		{"p f a-b", 6, "single '-' in a field access: forgot '>'?"},
		{"p f a.b", 6, "dot-connected field on an argument is not supported"},
		{"p f a->", 8, `invalid field name ""`},
		{"p f a->b..c", 10, `invalid field name ""`},
		{"p f a->1b", 8, `invalid field name "1b"`},
		{"p f $stack->b", 5, "fields (->) follow only a parameter name, $argN or $retval"},
		{"p f $comm->b", 5, "fields (->) follow only"},
		{"p f $retval->b", 5, "$retval is not available on probe"},
		{"p f+1 a->b", 7, "parameter names need a probe on a function entry"},
		{"p f $arg1->b:symstr[2]", 14, "arrays accept only a memory fetch"},
		{"p f @+10", 5, "file offsets"},
		{"p f @0x1g", 5, `invalid memory address "0x1g"`},
		{"p f @1x:u8", 5, `invalid memory address "1x"`},
		{"p f @sym+q", 9, `invalid offset "+q"`},
		{"p f @", 6, `invalid symbol ""`},
		{"p f +8", 5, "dereference needs a brace"},
		{"p f +x(%di)", 5, `invalid dereference offset "+x"`},
		{"p f +8(%di", 11, "dereference brace is not closed"},
		{"p f +8(%di)x", 12, `unexpected "x" after dereference`},
		{"p f +8(%dx8)", 8, `invalid register name "dx8"`},
		{"p f +0(+8(%bogus))", 11, `invalid register name "bogus"`},
		{"p f +0($comm)", 8, "can not be dereferenced"},
		{"p f +0()", 8, "no argument expression"},
		{`p f \x`, 6, `invalid immediate value "x"`},
		{`p f \"abc`, 10, "immediate string is not closed"},
		{`p f \"`, 7, "immediate string is not closed"},
		{"p f =%ax", 5, "argument name is not specified"},
		{"p f 1a=%ax", 5, `argument name "1a"`},
		{"p f " + strings.Repeat("n", 33) + "=%ax", 5, "argument name is too long"},
		{"p f common_pid=%ax", 5, `argument name "common_pid" is reserved`},
		{"p f a=%ax a=%bx", 11, `argument name "a" is already used`},
		{"p f arg2=%ax %bx", 14, `argument name "arg2" is already used`},
		{"p f a=", 7, "no argument expression"},
		{"p f +0(%di):u8[4", 17, "array is not closed"},
		{"p f +0(%di):u8[4]x", 18, `unexpected "x" after array`},
		{"p f +0(%di):u8[0]", 16, `invalid array size "0"`},
		{"p f +0(%di):u8[65]", 16, "array size 65 is too big"},
		{"p f %di:u8[2]", 9, "arrays accept only a memory fetch"},
		{"p f %di:string", 9, "string accepts only a memory fetch"},
		{"p f $stack:symstr", 12, "symstr accepts only"},
		{"p f +0(%di):symstr[2]", 13, "arrays accept only a memory fetch"},
		{"p f $comm:u32", 11, "$comm and immediate strings take only type string"},
		{`p f \"x":string[2]`, 10, "take only type string"},
		{"p f %ax:b4@2/12", 9, "bitfield container must be 8, 16, 32 or 64"},
		{"p f %ax:bogus", 9, `unknown type "bogus"`},
		{"p f %ax:b0@2/32", 9, "invalid bitfield"},
		{"p f %ax:b4/32", 9, "invalid bitfield"},
		{"p f %ax:b4@/32", 9, "invalid bitfield"},
		{"p f %ax:b30@4/32", 9, "do not fit in 32"},
		{"p f %ax:", 9, `unknown type ""`},
		{"p f " + strings.Repeat("+0(", 15) + "%di" + strings.Repeat(")", 15), 8, "dereference is nested too deeply"},
		{"p f n=" + strings.Repeat("x", 64), 7, "argument expression is too long"},
		{"p f" + strings.Repeat(" %ax", 129), 4 + 128*4 + 1, "too many arguments (max 128)"},
	}
	for _, tt := range tests {
		d, err := Parse(tt.line)
		if err == nil {
			t.Errorf("Parse(%q) = %v, want error", tt.line, d)
			continue
		}
		var se *SyntaxError
		if !errors.As(err, &se) || !errors.Is(err, ErrSyntax) {
			t.Errorf("Parse(%q) error %T %v, want *SyntaxError matching ErrSyntax", tt.line, err, err)
			continue
		}
		if se.Col != tt.col || !strings.Contains(se.Msg, tt.msg) || se.Input != tt.line || se.Line != 0 {
			t.Errorf("Parse(%q):\n%v\ngot col %d msg %q, want col %d msg containing %q", tt.line, err, se.Col, se.Msg, tt.col, tt.msg)
		}
	}
}

func TestParseLimitsAccepted(t *testing.T) {
	// The largest values the kernel takes must pass.
	ok := []string{
		"p f" + strings.Repeat(" %ax", 128),
		"p f n=" + strings.Repeat("x", 63),
		"p:" + strings.Repeat("e", 64) + " f",
		"p:" + strings.Repeat("g", 63) + "/e f",
		"p f " + strings.Repeat("n", 32) + "=%ax",
		"r4096 f",
		"p f $stack2048 $arg2048",
		"p f +0(%di):u8[64]",
		"p f %ax:b64@0/64",
		"p f " + strings.Repeat("+0(", 14) + "%di" + strings.Repeat(")", 14),
		"p f " + strings.Repeat("+0(", 13) + "%di" + strings.Repeat(")", 13) + ":string",
		`p f \-1 \0xffffffffffffffff \-0x8000000000000000 @0x100000000 +0x100000(%ax)`,
	}
	for _, line := range ok {
		d, err := Parse(line)
		if err != nil {
			t.Errorf("Parse(%q): %v", line, err)
			continue
		}
		assertRoundTrip(t, d)
	}
}

func TestSyntaxErrorCaret(t *testing.T) {
	_, err := ParseFile(strings.NewReader("p do_sys_open\n\n# comment\np:myprobe do_sys_open dfd=%ax:u99\n"))
	want := "line 4: p:myprobe do_sys_open dfd=%ax:u99\n" +
		"                                      ^ unknown type \"u99\""
	if err == nil || err.Error() != want {
		t.Fatalf("error:\n%v\nwant:\n%s", err, want)
	}
}

func TestParseFileEveryBadLine(t *testing.T) {
	input := "# probes\n" +
		"p:a do_sys_open\n" +
		"p:b do_sys_open %rax\n" +
		"   \t\n" +
		"r:c do_sys_open $retval # trailing comment\r\n" +
		"x:d foo\n"
	defs, err := ParseFile(strings.NewReader(input))
	if len(defs) != 2 || defs[0].Event != "a" || defs[1].Event != "c" {
		t.Fatalf("ParseFile returned %v with its errors, want the good lines a and c", defs)
	}
	var errs SyntaxErrors
	if !errors.As(err, &errs) || len(errs) != 2 {
		t.Fatalf("error %T %v, want SyntaxErrors of 2", err, err)
	}
	if errs[0].Line != 3 || errs[0].Col != 17 || errs[1].Line != 6 || errs[1].Col != 1 {
		t.Fatalf("errors at %d:%d and %d:%d, want 3:17 and 6:1", errs[0].Line, errs[0].Col, errs[1].Line, errs[1].Col)
	}
	if !errors.Is(err, ErrSyntax) {
		t.Fatal("SyntaxErrors does not match ErrSyntax")
	}

	good := strings.Replace(strings.Replace(input, "%rax", "%ax", 1), "x:d foo\n", "", 1)
	defs, err = ParseFile(strings.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	if len(defs) != 3 || defs[0].Event != "a" || defs[1].Line != 3 || defs[2].Event != "c" || defs[2].Line != 5 {
		t.Fatalf("defs = %v", defs)
	}
	if defs[2].Text != "r:c do_sys_open $retval # trailing comment" {
		t.Fatalf("Text = %q", defs[2].Text)
	}
}

type failReader struct{}

func (failReader) Read([]byte) (int, error) { return 0, errors.New("disk on fire") }

func TestParseFileReadError(t *testing.T) {
	_, err := ParseFile(failReader{})
	if err == nil || !strings.Contains(err.Error(), "reading probe definitions: disk on fire") {
		t.Fatalf("err = %v", err)
	}
}

func TestDefaultEventNameTruncated(t *testing.T) {
	sym := strings.Repeat("s", 80)
	d, err := Parse("p " + sym + "+16")
	if err != nil {
		t.Fatal(err)
	}
	if want := ("p_" + sym)[:MaxEventNameLen-1]; d.Event != want {
		t.Fatalf("Event = %q, want %q", d.Event, want)
	}
}

// TestParseFileLongLine: a line past ftrace's limit is one refused line,
// not the end of reading; the lines around it still parse.
func TestParseFileLongLine(t *testing.T) {
	in := "p:a do_sys_open\np:b do_sys_open " + strings.Repeat("x", 1<<20) + "\np:c do_sys_open"
	defs, err := ParseFile(strings.NewReader(in))
	var se SyntaxErrors
	if !errors.As(err, &se) || len(se) != 1 || se[0].Line != 2 || !strings.Contains(se[0].Error(), "longer than 4096") {
		t.Fatalf("err = %v, want line 2 refused as too long", err)
	}
	if len(defs) != 2 || defs[0].Event != "a" || defs[1].Event != "c" || defs[1].Line != 3 {
		t.Fatalf("defs = %v, want a and c (line 3)", defs)
	}
}

// BenchmarkMerge200k: a probe file of 200,000 lines parses and merges in
// linear time (it took minutes when Merge compared every pair).
func BenchmarkMerge200k(b *testing.B) {
	var sb strings.Builder
	for i := range 200000 {
		fmt.Fprintf(&sb, "p:e%d do_sys_open+%d\n", i, i%7)
	}
	for b.Loop() {
		defs, err := ParseFile(strings.NewReader(sb.String()))
		if err != nil {
			b.Fatal(err)
		}
		if out, err := Merge(defs); err != nil || len(out) != 200000 {
			b.Fatalf("Merge: %d, %v", len(out), err)
		}
	}
}
