package probedef

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/hvprobe/hvprobe/guest"
)

// fakeMember is a member of a fake struct: its byte offset and type,
// spelled "*T" (pointer to struct T), "*char", "char[N]", "uN"/"sN", a
// struct name, or "u32:W@B" (a W-bit bitfield from bit B of the byte).
type fakeMember struct {
	off uint64
	typ string
}

// fakeStructs is a 6.1-shaped slice of struct file and what it points to.
var fakeStructs = map[string]map[string]fakeMember{
	"file":   {"f_path": {16, "path"}, "f_mode": {64, "u32:3@5"}, "f_wide": {80, "u32:12@6"}, "f_flags": {68, "u32"}, "f_pos": {72, "s64"}},
	"path":   {"mnt": {0, "*vfsmount"}, "dentry": {8, "*dentry"}},
	"dentry": {"d_name": {32, "qstr"}, "d_iname": {56, "char[32]"}},
	"qstr":   {"len": {4, "u32"}, "name": {8, "*char"}},
}

// fakeVFSRead is vfs_read(struct file *file, char *buf, size_t count,
// loff_t *pos) returning ssize_t, walked as guest.Types.FieldAccess does.
func fakeVFSRead(void bool) *BTFFunc {
	params := []string{"file", "buf", "count", "pos"}
	ptypes := []string{"*file", "*char", "u64", "*s64"}
	return &BTFFunc{Name: "vfs_read", Params: params, Void: void,
		Access: func(arg int, path []Field) (Access, error) {
			typ := "*file" // what test return probes return
			if arg >= 0 {
				typ = ptypes[arg]
			}
			var acc Access
			var off uint64
			for i, f := range path {
				if f.Arrow {
					if i > 0 {
						acc.Offsets = append(acc.Offsets, off)
					}
					if _, ok := fakeStructs[strings.TrimPrefix(typ, "*")]; !ok || typ[0] != '*' {
						return acc, &FieldError{Step: i, Err: fmt.Errorf("%s is not a pointer to a struct or union", typ)}
					}
					typ, off = typ[1:], 0
				} else if _, ok := fakeStructs[typ]; !ok {
					return acc, &FieldError{Step: i, Err: fmt.Errorf("%s is not a struct or union", typ)}
				}
				m, ok := fakeStructs[typ][f.Name]
				if !ok {
					return acc, &FieldError{Step: i, Err: fmt.Errorf("struct %s has no member %s", typ, f.Name)}
				}
				off += m.off
				typ = m.typ
				acc.BitOffset, acc.BitSize = 0, 0
				if n, _ := fmt.Sscanf(typ, "u32:%d@%d", &acc.BitSize, &acc.BitOffset); n == 2 {
					typ = "u32"
				}
			}
			if len(path) > 0 {
				acc.Offsets = append(acc.Offsets, off)
			}
			acc.Type = typ
			switch {
			case typ == "*char":
				acc.Kind = guest.ValueCharPointer
			case typ[0] == '*':
				acc.Kind = guest.ValuePointer
			case strings.HasPrefix(typ, "char["):
				acc.Kind = guest.ValueCharArray
			case typ[0] == 'u' || typ[0] == 's':
				var bits int
				fmt.Sscan(typ[1:], &bits)
				acc.Kind, acc.Size, acc.Signed = guest.ValueInt, bits/8, typ[0] == 's'
			}
			return acc, nil
		}}
}

func TestParseFieldAccess(t *testing.T) {
	line := "p:x vfs_read name=file->f_path.dentry->d_name.name:string count fl=$arg1->f_flags x=+8(file->f_path.dentry):u32"
	d, err := Parse(line)
	if err != nil {
		t.Fatal(err)
	}
	want := []Field{{"f_path", true, 6}, {"dentry", false, 13}, {"d_name", true, 21}, {"name", false, 28}}
	if a := d.Args[0]; a.Fetch.Kind != FetchParam || a.Fetch.Str != "file" || !reflect.DeepEqual(a.Fetch.Fields, want) || a.Type.Base != String || a.BTFType {
		t.Errorf("name = %+v fields %+v", a, a.Fetch.Fields)
	}
	if a := d.Args[2]; a.Name != "fl" || a.Fetch.Kind != FetchArg || a.Fetch.N != 1 || !a.BTFType ||
		!reflect.DeepEqual(a.Fetch.Fields, []Field{{"f_flags", true, 7}}) {
		t.Errorf("fl = %+v fields %+v", a, a.Fetch.Fields)
	}
	if got := d.Args[3].Fetch; got.Kind != FetchDeref || len(got.Inner.Fields) != 2 {
		t.Errorf("x = %+v", got)
	}
	wantS := "p:kprobes/x vfs_read name=file->f_path.dentry->d_name.name:string count fl=$arg1->f_flags x=+8(file->f_path.dentry):u32"
	if s := d.String(); s != wantS {
		t.Errorf("String = %q", s)
	}
	// An explicit type on a field access survives String even when it is
	// the default, so a reparse does not type it from BTF.
	for _, l := range []string{line, "p f a=$arg01->b:x64 $arg2->c", "r f $retval->a.b->c:s8"} {
		d, err := Parse(l)
		if err != nil {
			t.Fatal(err)
		}
		d2, err := Parse(d.String())
		if err != nil || !reflect.DeepEqual(bare(d), bare(d2)) {
			t.Errorf("round trip of %q via %q: %v", l, d.String(), err)
		}
	}
	if d, _ := Parse("p f a=$arg01->b:x64"); d.Args[0].BTFType || d.String() != "p:kprobes/p_f_0 f a=$arg1->b:x64" {
		t.Errorf("explicit x64: %q %+v", d.String(), d.Args[0])
	}
}

func TestResolveBTF(t *testing.T) {
	d, err := Parse("p:x vfs_read name=file->f_path.dentry->d_name.name:string count fl=$arg1->f_flags " +
		"pos=file->f_pos ln=file->f_path.dentry->d_name.len iname=file->f_path.dentry->d_iname:string " +
		"dp=file->f_path.dentry x=+8(file->f_path.dentry):u32 b=buf:string $arg4")
	if err != nil {
		t.Fatal(err)
	}
	if err := d.ResolveBTF(fakeVFSRead(false)); err != nil {
		t.Fatal(err)
	}
	arg1 := &Fetch{Kind: FetchArg, N: 1}
	want := []Arg{
		{Name: "name", Fetch: deref(0, deref(40, deref(24, arg1))), Type: Type{Base: String}},
		{Name: "count", Fetch: &Fetch{Kind: FetchArg, N: 3}, Type: Type{Base: U64}},
		{Name: "fl", Fetch: deref(68, arg1), Type: Type{Base: U32}},
		{Name: "pos", Fetch: deref(72, arg1), Type: Type{Base: S64}},
		{Name: "ln", Fetch: deref(36, deref(24, arg1)), Type: Type{Base: U32}},
		{Name: "iname", Fetch: deref(56, deref(24, arg1)), Type: Type{Base: String}},
		x64("dp", deref(24, arg1)),
		{Name: "x", Fetch: deref(8, deref(24, arg1)), Type: Type{Base: U32}},
		{Name: "b", Fetch: deref(0, &Fetch{Kind: FetchArg, N: 2}), Type: Type{Base: String}},
		x64("arg10", &Fetch{Kind: FetchArg, N: 4}),
	}
	if !reflect.DeepEqual(d.Args, want) {
		for i := range want {
			if i < len(d.Args) && !reflect.DeepEqual(d.Args[i], want[i]) {
				t.Errorf("arg %d = %s %+v, want %+v", i, d.Args[i].Fetch, d.Args[i], want[i])
			}
		}
		t.Fatalf("%d args, want %d", len(d.Args), len(want))
	}
	// The resolved form is plain ftrace syntax.
	if s := d.String(); !strings.Contains(s, "name=+0(+40(+24($arg1))):string count=$arg3:u64 fl=+68($arg1):u32 pos=+72($arg1):s64") {
		t.Errorf("String = %q", s)
	}

	r, err := Parse("r:x vfs_read n=$retval->f_path.dentry->d_name.name:ustring $retval")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.ResolveBTF(fakeVFSRead(false)); err != nil {
		t.Fatal(err)
	}
	rv := &Fetch{Kind: FetchRetval}
	if f := r.Args[0].Fetch; !reflect.DeepEqual(f, &Fetch{Kind: FetchDeref, User: true, Inner: deref(40, deref(24, rv))}) {
		t.Errorf("$retval field = %s", f)
	}
	// A bare $retval, parameters by name and $arg* are typed from BTF as
	// current ftrace types them; $argN is not, and an explicit type wins.
	b, err := Parse("r:y vfs_read $retval cnt=count c2=count:x32 $arg3 $arg*")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.ResolveBTF(fakeVFSRead(false)); err != nil {
		t.Fatal(err)
	}
	if s := b.String(); s != "r:kprobes/y vfs_read arg1=$retval:x64 cnt=$arg3:u64 c2=$arg3:x32 arg4=$arg3 file=$arg1 buf=$arg2 count=$arg3:u64 pos=$arg4" {
		t.Errorf("typed from BTF: %q", s)
	}
	// Bitfields read as the smallest b-type that holds them.
	f, err := Parse("p:z vfs_read m=file->f_mode w=file->f_wide")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.ResolveBTF(fakeVFSRead(false)); err != nil {
		t.Fatal(err)
	}
	if s := f.String(); s != "p:kprobes/z vfs_read m=+64($arg1):b3@5/8 w=+80($arg1):b12@6/32" {
		t.Errorf("bitfields: %q", s)
	}
}

func TestResolveBTFErrors(t *testing.T) {
	tests := []struct {
		line string
		void bool
		at   string // the caret goes under its last occurrence
		msg  string
	}{
		{"p:x vfs_read file->f_nosuch", false, "f_nosuch", "struct file has no member f_nosuch"},
		{"p:x vfs_read n=file->f_path.dentry->d_name.nosuch:string", false, "nosuch", "struct qstr has no member nosuch"},
		{"p:x vfs_read file->f_path->dentry", false, "dentry", "path is not a pointer to a struct or union"},
		{"p:x vfs_read file->f_flags.x", false, "x", "u32 is not a struct or union"},
		{"p:x vfs_read count->x", false, "x", "u64 is not a pointer"},
		{"p:x vfs_read m=file->f_mode:u8", false, "u8", "file->f_mode is a 3-bit bitfield: leave its type out to read it as b3@5/8"},
		{"p:x vfs_read m=file->f_mode.x", false, "x", "u32 is not a struct or union"},
		{"p:x vfs_read $arg1 $arg5", false, "$arg5", "vfs_read has 4 parameters: there is no $arg5"},
		{"p:x vfs_read a=+8(+0($arg12)):u8", false, "$arg12", "there is no $arg12"},
		{"p:x vfs_read $arg5->f_flags", false, "$arg5", "there is no $arg5"},
		{"r:x vfs_read $arg1 $retval", true, "$retval", "vfs_read returns 'void' type: there is no $retval"},
		{"r:x vfs_read $retval->f_flags", true, "$retval", "returns 'void' type"},
		{"p:x vfs_read n=file->f_flags:string", false, "string", "file->f_flags is u32: string needs a char * or a char array"},
		{"p:x vfs_read n=file:string", false, "string", "file is *file: string needs"},
		{"p:x vfs_read n=count:ustring", false, "ustring", "count is u64: ustring needs"},
	}
	for _, tt := range tests {
		d, err := Parse(tt.line)
		if err != nil {
			t.Fatalf("%q: %v", tt.line, err)
		}
		orig := d.String()
		err = d.ResolveBTF(fakeVFSRead(tt.void))
		var se *SyntaxError
		if !errors.As(err, &se) || !errors.Is(err, ErrSyntax) {
			t.Errorf("%q: error %T %v, want *SyntaxError", tt.line, err, err)
			continue
		}
		if want := strings.LastIndex(tt.line, tt.at) + 1; se.Col != want || !strings.Contains(se.Msg, tt.msg) {
			t.Errorf("%q: col %d %q, want col %d %q", tt.line, se.Col, se.Msg, want, tt.msg)
		}
		// CheckDefs passes the error through Def.Error, which keeps it.
		if got := d.Error(1, err); got != se {
			t.Errorf("%q: Def.Error rewrote the column: %v", tt.line, got)
		}
		if d.String() != orig {
			t.Errorf("%q changed on error: %q", tt.line, d.String())
		}
	}
	d, _ := Parse("p:x vfs_read nosuch->f_flags")
	var ue *UnresolvedError
	if err := d.ResolveBTF(fakeVFSRead(false)); !errors.As(err, &ue) || ue.Name != "nosuch" {
		t.Errorf("unknown parameter: %v", err)
	}
	one := fakeVFSRead(false)
	one.Params = one.Params[:1]
	if d, _ := Parse("p:x vfs_read $arg2"); d.ResolveBTF(one) == nil || !strings.Contains(d.ResolveBTF(one).Error(), "vfs_read has 1 parameter: there is no $arg2") {
		t.Errorf("$arg2 of a one-parameter function: %v", d.ResolveBTF(one))
	}
	// Variadic functions take any $argN.
	fn := fakeVFSRead(false)
	fn.Variadic = true
	if d, _ := Parse("p:x vfs_read $arg9"); d.ResolveBTF(fn) != nil {
		t.Error("$arg9 of a variadic function refused")
	}
}

func TestNoBTF(t *testing.T) {
	noBTF := errors.New("kernel has no BTF")
	for _, line := range []string{"p:x vfs_read $arg1 $arg9", "r:x vfs_read $retval %ax"} {
		if d, _ := Parse(line); d.UsesFields() || d.NoBTF(noBTF) != nil {
			t.Errorf("%q needs BTF", line)
		}
	}
	line := "p:x vfs_read $arg1 a=+0($arg2->b.c) d->e"
	d, _ := Parse(line)
	var se *SyntaxError
	if err := d.NoBTF(noBTF); !d.UsesFields() || !errors.As(err, &se) || !errors.Is(err, noBTF) ||
		se.Col != strings.Index(line, "b.c")+1 || !strings.Contains(se.Msg, "field access needs the kernel's BTF") {
		t.Errorf("NoBTF = %v", err)
	}
}

// TestEvaluateFieldAccess: a resolved field chain reads the members at
// their offsets in guest memory, and text through char * and char[].
func TestEvaluateFieldAccess(t *testing.T) {
	const file, dentry, name = 0xffff888000600000, 0xffff888000700000, 0xffff888000800000
	ctx, mem := testContext()
	ctx.Regs.RDI, ctx.Regs.RDX = file, 4096
	mem.u64(file+16+8, dentry)
	mem.put(file+68, []byte{0x00, 0x80, 0x02, 0x00}) // O_LARGEFILE|O_RDWR... as u32 0x28000
	mem.u64(file+72, uint64(0xfffffffffffffff0))     // f_pos -16
	mem.put(dentry+32+4, []byte{8, 0, 0, 0})
	mem.u64(dentry+32+8, name)
	mem.str(name, "data.txt")
	mem.str(dentry+56, "inline")
	d, err := Parse("p:x vfs_read n=file->f_path.dentry->d_name.name:string count fl=$arg1->f_flags " +
		"pos=file->f_pos ln=file->f_path.dentry->d_name.len in=file->f_path.dentry->d_iname:string")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Evaluate(d, ctx); !errors.Is(err, ErrUnresolved) {
		t.Fatalf("unresolved field access evaluated: %v", err)
	}
	if err := d.ResolveBTF(fakeVFSRead(false)); err != nil {
		t.Fatal(err)
	}
	vals, err := Evaluate(d, ctx)
	if err != nil {
		t.Fatal(err)
	}
	if vals[0].Str != "data.txt" || vals[1].U64 != 4096 || vals[2].U64 != 0x28000 || vals[3].S64 != -16 ||
		vals[4].U64 != 8 || vals[5].Str != "inline" {
		t.Errorf("values %+v", vals)
	}
	// A NULL dentry faults the value, not the event.
	mem.u64(file+16+8, 0)
	vals, err = Evaluate(d, ctx)
	if err != nil || !vals[0].Fault || !vals[4].Fault || vals[2].Fault {
		t.Errorf("NULL dentry: %+v, %v", vals, err)
	}
}
