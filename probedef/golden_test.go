package probedef

import (
	"reflect"
	"testing"
)

// The definitions and fetch arguments of Documentation/trace/kprobetrace.rst,
// with the structure each must parse to.
func TestKprobetraceExamples(t *testing.T) {
	di, si, stack := reg("di"), reg("si"), &Fetch{Kind: FetchStackPtr}
	tests := []struct {
		line string
		want *Def
	}{
		{"p:myprobe do_sys_open dfd=%ax filename=%dx flags=%cx mode=+4($stack)",
			&Def{Kind: Probe, Group: "kprobes", Event: "myprobe", Symbol: "do_sys_open", Args: []Arg{
				x64("dfd", reg("ax")), x64("filename", reg("dx")), x64("flags", reg("cx")),
				x64("mode", deref(4, stack)),
			}}},
		{"r:myretprobe do_sys_open $retval",
			&Def{Kind: Retprobe, Group: "kprobes", Event: "myretprobe", Symbol: "do_sys_open", Args: []Arg{
				untyped("arg1", &Fetch{Kind: FetchRetval}),
			}}},
		{"-:myprobe", &Def{Kind: Delete, Event: "myprobe"}},
		// From "Types".
		{"p f +0(%di):x32[1] +0(%di):x32 +0(%di):string[1] +0(+0(%di)):string +8($stack):x8[8] +0(%di):x16[4]",
			&Def{Kind: Probe, Group: "kprobes", Event: "p_f_0", Symbol: "f", Args: []Arg{
				{Name: "arg1", Fetch: deref(0, di), Type: Type{Base: X32, Array: 1}},
				{Name: "arg2", Fetch: deref(0, di), Type: Type{Base: X32}},
				{Name: "arg3", Fetch: deref(0, di), Type: Type{Base: String, Array: 1}},
				{Name: "arg4", Fetch: deref(0, deref(0, di)), Type: Type{Base: String}},
				{Name: "arg5", Fetch: deref(8, stack), Type: Type{Base: X8, Array: 8}},
				{Name: "arg6", Fetch: deref(0, di), Type: Type{Base: X16, Array: 4}},
			}}},
		// From "User Memory Access".
		{"p f +u4(%si) +u0(%si):string +0(%si):ustring",
			&Def{Kind: Probe, Group: "kprobes", Event: "p_f_0", Symbol: "f", Args: []Arg{
				x64("arg1", &Fetch{Kind: FetchDeref, Off: 4, User: true, Inner: si}),
				{Name: "arg2", Fetch: &Fetch{Kind: FetchDeref, User: true, Inner: si}, Type: Type{Base: String}},
				{Name: "arg3", Fetch: deref(0, si), Type: Type{Base: UString}},
			}}},
		// The synopsis' %return form and bitfield syntax.
		{"p:ret do_sys_open+0%return bf=+0(%di):b3@5/8",
			&Def{Kind: Retprobe, Group: "kprobes", Event: "ret", Symbol: "do_sys_open", Args: []Arg{
				{Name: "bf", Fetch: deref(0, di), Type: Type{Base: Bitfield, BitWidth: 3, BitOffset: 5, ContainerBits: 8}},
			}}},
	}
	for _, tt := range tests {
		d, err := Parse(tt.line)
		if err != nil {
			t.Errorf("Parse(%q): %v", tt.line, err)
			continue
		}
		if got := bare(d); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Parse(%q)\n got %#v\nwant %#v", tt.line, got, tt.want)
		}
		assertRoundTrip(t, d)
	}

	// "'$stack1:x8[8]' is wrong".
	if _, err := Parse("p f $stack1:x8[8]"); err == nil {
		t.Error(`Parse accepted "$stack1:x8[8]", which kprobetrace.rst calls wrong`)
	}
}
