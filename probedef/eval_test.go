package probedef

import (
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/hvprobe/hvprobe/probedef/probedeftest"
	"github.com/hvprobe/hvprobe/vmm"
)

// fakeMem is probedeftest.PageMem with the writers these tests use.
type fakeMem struct{ probedeftest.PageMem }

func (m fakeMem) put(va uint64, b []byte) { m.Put(va, b) }

func (m fakeMem) u64(va, v uint64) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	m.put(va, b[:])
}

func (m fakeMem) str(va uint64, s string) { m.put(va, append([]byte(s), 0)) }

type fakeSyms map[string]uint64

var errNoSym = errors.New("no such symbol")

func (s fakeSyms) Address(name string) (uint64, error) {
	a, ok := s[name]
	if !ok {
		return 0, errNoSym
	}
	return a, nil
}

func (s fakeSyms) Format(addr uint64) string {
	best, bestAddr := "", uint64(0)
	for n, a := range s {
		if a <= addr && a >= bestAddr {
			best, bestAddr = n, a
		}
	}
	if best == "" {
		return fmt.Sprintf("0x%x", addr)
	}
	return fmt.Sprintf("%s+0x%x/0x100", best, addr-bestAddr)
}

type fakeTask struct {
	comm string
	err  error
}

func (t fakeTask) Comm() (string, error) { return t.comm, t.err }

const (
	rsp      = 0xffffc90000010000
	filename = 0xffff888000200000
)

func testContext() (*Context, fakeMem) {
	mem := fakeMem{probedeftest.PageMem{}}
	// struct filename { const char *name; ... } at RSI+8 holds a pointer.
	mem.u64(0xffff888000100008, filename)
	mem.str(filename, "/etc/passwd")
	// Stack: return address, then stack-passed arguments 7 and 8.
	mem.u64(rsp, 0xffffffff81000123)
	mem.u64(rsp+8, 0x77)
	mem.u64(rsp+16, 0x88)
	// A word with bitfields, and a small array.
	// It ends a page; the next one is unmapped.
	mem.put(0xffff888000400ffc, []byte{0xb4, 0xff, 0x12, 0x80})
	mem.u64(0xffffffff82000000, 0xdeadbeef)
	mem.put(0xffff888000500000, []byte{'h', 'i', 0, 0xfe})
	ctx := &Context{
		Regs: vmm.Regs{
			RAX: 0xfffffffffffffffe, RDI: 1, RSI: 0xffff888000100000, RDX: 3, RCX: 4,
			R8: 5, R9: 6, RSP: rsp, RIP: 0xffffffff81000100, RFLAGS: 0x246,
		},
		CS: 0x10, SS: 0x18,
		Mem:  mem,
		Syms: fakeSyms{"jiffies": 0xffffffff82000000, "do_sys_open": 0xffffffff81000100, "sys_open": 0xffffffff81000100 + 0x1000},
		Task: fakeTask{comm: "bash"},
	}
	return ctx, mem
}

func eval(t *testing.T, line string, ctx *Context) []Value {
	t.Helper()
	d, err := Parse(line)
	if err != nil {
		t.Fatal(err)
	}
	vals, err := Evaluate(d, ctx)
	if err != nil {
		t.Fatalf("Evaluate(%q): %v", line, err)
	}
	return vals
}

func TestEvaluate(t *testing.T) {
	ctx, _ := testContext()
	vals := eval(t, `p do_sys_open n=+0(+8(%si)):string $arg1 $arg6 a7=$arg7:u32 $arg8 `+
		`st=$stack s0=$stack0 s2=$stack2:u8 ip=%ip:symbol fl=%flags:x16 cs=%cs:u16 oax=%orig_ax:s64 `+
		`bf=@0xffff888000400ffc:b4@2/32 bs=@0xffff888000400ffc:s8 j=@jiffies:x32 c=$comm k=\-2:s16 `+
		`is=\"lit" ch=@0xffff888000500003:char sym=+8(%si):symstr`, ctx)
	want := []Value{
		{Name: "n", Type: Type{Base: String}, Str: "/etc/passwd"},
		{Name: "arg2", Type: DefaultType, U64: 1},
		{Name: "arg3", Type: DefaultType, U64: 6},
		{Name: "a7", Type: Type{Base: U32}, U64: 0x77},
		{Name: "arg5", Type: DefaultType, U64: 0x88},
		{Name: "st", Type: DefaultType, U64: rsp},
		{Name: "s0", Type: DefaultType, U64: 0xffffffff81000123},
		{Name: "s2", Type: Type{Base: U8}, U64: 0x88},
		{Name: "ip", Type: Type{Base: Symbol}, U64: 0xffffffff81000100, Str: "do_sys_open+0x0/0x100"},
		{Name: "fl", Type: Type{Base: X16}, U64: 0x246},
		{Name: "cs", Type: Type{Base: U16}, U64: 0x10},
		{Name: "oax", Type: Type{Base: S64}, U64: ^uint64(0), S64: -1},
		// 0x8012ffb4 >> 2 & 0xf = 0xd
		{Name: "bf", Type: Type{Base: Bitfield, BitWidth: 4, BitOffset: 2, ContainerBits: 32}, U64: 0xd},
		{Name: "bs", Type: Type{Base: S8}, U64: 0xb4, S64: -76},
		{Name: "j", Type: Type{Base: X32}, U64: 0xdeadbeef},
		{Name: "c", Type: Type{Base: String}, Str: "bash"},
		{Name: "k", Type: Type{Base: S16}, U64: 0xfffe, S64: -2},
		{Name: "is", Type: Type{Base: String}, Str: "lit"},
		{Name: "ch", Type: Type{Base: Char}, U64: 0xfe},
		// symstr reads the pointer at RSI+8.
		{Name: "sym", Type: Type{Base: SymStr}, U64: filename, Str: fakeSyms{}.Format(filename)},
	}
	if !reflect.DeepEqual(vals, want) {
		for i := range want {
			if i < len(vals) && !reflect.DeepEqual(vals[i], want[i]) {
				t.Errorf("value %d:\n got %+v\nwant %+v", i, vals[i], want[i])
			}
		}
		t.Fatalf("got %d values, want %d", len(vals), len(want))
	}
}

func TestEvaluateStringArrayEqualsDoubleDeref(t *testing.T) {
	ctx, _ := testContext()
	ctx.Regs.RDI = 0xffff888000100008 // holds the char *
	vals := eval(t, "p f a=+0(%di):string[1] b=+0(+0(%di)):string", ctx)
	if vals[0].Elems[0].Str != "/etc/passwd" || vals[1].Str != "/etc/passwd" {
		t.Fatalf("string[1] = %+v, double deref = %+v", vals[0], vals[1])
	}
}

func TestEvaluateArrays(t *testing.T) {
	ctx, _ := testContext()
	ctx.Regs.RDI = 0xffff888000400ffc
	vals := eval(t, "p f a=+0(%di):x8[6] b=+0(%di):b1@7/8[2]", ctx)
	want := []Value{
		{Type: Type{Base: X8}, U64: 0xb4}, {Type: Type{Base: X8}, U64: 0xff},
		{Type: Type{Base: X8}, U64: 0x12}, {Type: Type{Base: X8}, U64: 0x80},
		{Type: Type{Base: X8}, Fault: true}, {Type: Type{Base: X8}, Fault: true},
	}
	if !reflect.DeepEqual(vals[0].Elems, want) {
		t.Errorf("x8[6] = %+v", vals[0].Elems)
	}
	bt := Type{Base: Bitfield, BitWidth: 1, BitOffset: 7, ContainerBits: 8}
	if got := vals[1].Elems; !reflect.DeepEqual(got, []Value{{Type: bt, U64: 1}, {Type: bt, U64: 1}}) {
		t.Errorf("b1@7/8[2] = %+v", got)
	}
}

func TestEvaluateFaults(t *testing.T) {
	ctx, mem := testContext()
	// A string running into an unmapped page faults as a whole, like
	// ftrace's fetch_store_strlen.
	mem.put(0x1ffe, []byte{'a', 'b'})
	// One ending just before a hole reads fine, though a read of
	// MaxStringSize bytes from its start would cross into the hole.
	mem.put(0x3ff0, []byte{'o', 'k', 0})
	ctx.Task = fakeTask{err: errors.New("no current task")}
	vals := eval(t, `p f a=\0x1ffe:string b=+0(%ax):u32 c=+0(+0(%ax)):string $comm d=@0x3ff0:string`, ctx)
	for i, name := range []string{"a", "b", "c", "arg4"} {
		if !vals[i].Fault || vals[i].Name != name {
			t.Errorf("value %d = %+v, want a fault named %s", i, vals[i], name)
		}
	}
	if vals[4].Fault || vals[4].Str != "ok" {
		t.Errorf("string before a hole = %+v", vals[4])
	}
}

func TestEvaluateLongStringTruncated(t *testing.T) {
	ctx, mem := testContext()
	long := make([]byte, 5000)
	for i := range long {
		long[i] = 'x'
	}
	mem.put(0x10000, long)
	vals := eval(t, `p f @0x10000:string`, ctx)
	if len(vals[0].Str) != MaxStringSize-1 {
		t.Fatalf("len = %d, want %d", len(vals[0].Str), MaxStringSize-1)
	}
}

func TestEvaluateReturnProbe(t *testing.T) {
	ctx, _ := testContext()
	d, err := Parse("r:ret do_sys_open $retval:s64 a1=$arg1 a7=$arg7")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Evaluate(d, ctx); !errors.Is(err, ErrNoEntryRegs) {
		t.Fatalf("without entry regs: %v, want ErrNoEntryRegs", err)
	}
	entry := ctx.Regs
	entry.RDI = 0x1234
	ctx.Entry = &entry
	ctx.Regs.RDI = 0
	vals, err := Evaluate(d, ctx)
	if err != nil {
		t.Fatal(err)
	}
	if vals[0].S64 != -2 || vals[1].U64 != 0x1234 || vals[2].U64 != 0x77 {
		t.Fatalf("values = %+v", vals)
	}
}

func TestEvaluateErrors(t *testing.T) {
	ctx, _ := testContext()
	tests := []struct {
		line string
		ctx  func(*Context)
		want error
	}{
		{"p f filename", nil, ErrUnresolved},
		{"p f $arg*", nil, ErrUnresolved},
		{"p f +0(+8(name)):string", nil, ErrUnresolved},
		{"p f @nosuch", nil, errNoSym},
		{"p f @jiffies", func(c *Context) { c.Syms = nil }, ErrMissingContext},
		{"p f +0(%di)", func(c *Context) { c.Mem = nil }, ErrMissingContext},
		{"p f +0(%di):string", func(c *Context) { c.Mem = nil }, ErrMissingContext},
		{"p f $comm", func(c *Context) { c.Task = nil }, ErrMissingContext},
		{"p f %ip:symbol", func(c *Context) { c.Syms = nil }, ErrMissingContext},
		{"-:ev", nil, ErrNotProbe},
	}
	for _, tt := range tests {
		c := *ctx
		if tt.ctx != nil {
			tt.ctx(&c)
		}
		d, err := Parse(tt.line)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Evaluate(d, &c); !errors.Is(err, tt.want) {
			t.Errorf("Evaluate(%q) = %v, want %v", tt.line, err, tt.want)
		}
	}
}

func TestResolveParams(t *testing.T) {
	ctx, _ := testContext()
	d, err := Parse("p:open do_sys_open +0(+8(filename)):string mode=flags:u32 $arg*")
	if err != nil {
		t.Fatal(err)
	}
	orig := d.String()
	if err := d.ResolveParams([]string{"dfd", "filename"}); !errors.Is(err, ErrUnresolved) {
		t.Fatalf("unknown flags: %v", err)
	}
	var ue *UnresolvedError
	if err := d.ResolveParams([]string{"dfd"}); !errors.As(err, &ue) || ue.Name != "filename" {
		t.Fatalf("unresolved error = %v", err)
	}
	if d.String() != orig {
		t.Fatalf("failed ResolveParams changed d: %s", d)
	}
	if err := d.ResolveParams([]string{"dfd", "filename", "flags", "mode"}); err == nil || !errors.Is(err, ErrSyntax) {
		t.Fatalf("$arg* name clash with mode: %v", err)
	}
	if err := d.ResolveParams([]string{"dfd", "filename", "flags"}); err != nil {
		t.Fatal(err)
	}
	want := "p:kprobes/open do_sys_open arg1=+0(+8($arg2)):string mode=$arg3:u32 dfd=$arg1 filename=$arg2 flags=$arg3"
	if d.String() != want {
		t.Fatalf("resolved:\n got %s\nwant %s", d, want)
	}
	ctx.Regs.RSI = 0xffff888000100000
	vals, err := Evaluate(d, ctx)
	if err != nil {
		t.Fatal(err)
	}
	if vals[0].Str != "/etc/passwd" || vals[1].U64 != 3 || vals[2].U64 != 1 {
		t.Fatalf("values = %+v", vals)
	}
}

func TestValidate(t *testing.T) {
	defs, err := ParseFile(strings.NewReader("p:a do_sys_opn\n-:x\np:b vfs_read v=@jifies+8 w=+0(@jiffies)\np:c ext4:ext4_sync\n"))
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{"vfs_read": true, "jiffies": true, "ext4_sync": true}
	lookup := func(sym string) error {
		if known[sym] {
			return nil
		}
		return fmt.Errorf("unknown symbol %q: %w", sym, errNoSym)
	}
	err = Validate(defs, lookup)
	var errs SyntaxErrors
	if !errors.As(err, &errs) || len(errs) != 2 {
		t.Fatalf("Validate = %v", err)
	}
	if errs[0].Line != 1 || errs[0].Col != 5 || errs[1].Line != 3 || errs[1].Col != 17 {
		t.Fatalf("errors at %d:%d, %d:%d; want 1:5, 3:17\n%v", errs[0].Line, errs[0].Col, errs[1].Line, errs[1].Col, err)
	}
	if !errors.Is(err, errNoSym) {
		t.Fatal("lookup error not wrapped")
	}
	known["do_sys_opn"], known["jifies"] = true, true
	if err := Validate(defs, lookup); err != nil {
		t.Fatal(err)
	}

	// Definitions built by hand are located in their canonical form.
	d := &Def{Kind: Probe, Group: "g", Event: "e", Module: "m", Symbol: "nosuch"}
	err = Validate([]*Def{d}, lookup)
	if !errors.As(err, &errs) || errs[0].Input != "p:g/e m:nosuch" || errs[0].Col != 9 {
		t.Fatalf("hand-built def: %v", err)
	}
}
