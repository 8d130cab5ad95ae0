package probedef

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

func TestFormatTrace(t *testing.T) {
	ctx, _ := testContext()
	d, err := Parse(`p:myprobe do_sys_open dfd=%di:s32 filename=%dx flags=%cx:u32 n=+0(+8(%si)):string ` +
		`ip=%ip:symbol c=@0xffff888000500003:char arr=@0xffff888000400ffc:u8[6] bad=+0(%ax):u16 esc=\"a"`)
	if err != nil {
		t.Fatal(err)
	}
	vals, err := Evaluate(d, ctx)
	if err != nil {
		t.Fatal(err)
	}
	ev := Event{Def: d, Comm: "bash", PID: 1447, CPU: 1, IRQsOff: true,
		Time: 1038282*time.Second + 286875*time.Microsecond + 400, Where: "do_sys_open+0x0/0xd6", Values: vals}
	got := FormatTrace(ev)
	want := `            bash-1447    [001] d.... 1038282.286875: myprobe: (do_sys_open+0x0/0xd6) ` +
		`dfd=1 filename=0x3 flags=4 n="/etc/passwd" ip=do_sys_open+0x0/0x100 c='\xfe' ` +
		`arr={180,255,18,128,(fault),(fault)} bad=(fault) esc="a"`
	if got != want {
		t.Fatalf("FormatTrace:\n got %q\nwant %q", got, want)
	}

	r, err := Parse("r:myretprobe do_sys_open $retval")
	if err != nil {
		t.Fatal(err)
	}
	vals, err = Evaluate(r, ctx)
	if err != nil {
		t.Fatal(err)
	}
	got = FormatTrace(Event{Def: r, PID: 7, CPU: 12, Time: 1500 * time.Microsecond,
		Where: "sys_openat+0xc/0xe", Func: "do_sys_open", Values: vals})
	want = `           <...>-7       [012] .....     0.001500: myretprobe: (sys_openat+0xc/0xe <- do_sys_open) arg1=0xfffffffffffffffe`
	if got != want {
		t.Fatalf("FormatTrace return:\n got %q\nwant %q", got, want)
	}
}

func TestFormatJSON(t *testing.T) {
	ctx, _ := testContext()
	d, err := Parse(`p:g/e do_sys_open z=%di:u8 a=%di:s32 k=\-2:s16 h=%dx n=+0(+8(%si)):string ` +
		`arr=@0xffff888000400ffc:x8[5] bad=+0(%ax):u16 c=@0xffff888000500000:char s=%ip:symbol`)
	if err != nil {
		t.Fatal(err)
	}
	vals, err := Evaluate(d, ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := FormatJSON(Event{Def: d, Comm: "bash", PID: 3, CPU: 0, Time: 2 * time.Second, Where: "do_sys_open+0x0/0xd6", Values: vals})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"comm":"bash","pid":3,"cpu":0,"irqs_off":false,"time_ns":2000000000,"group":"g","event":"e","kind":"p",` +
		`"where":"do_sys_open+0x0/0xd6","args":{"z":1,"a":1,"k":-2,"h":"0x3","n":"/etc/passwd",` +
		`"arr":["0xb4","0xff","0x12","0x80",null],"bad":null,"c":"h","s":{"addr":"0xffffffff81000100","sym":"do_sys_open+0x0/0x100"}}}`
	if string(b) != want {
		t.Fatalf("FormatJSON:\n got %s\nwant %s", b, want)
	}
	var anyv map[string]any
	if err := json.Unmarshal(b, &anyv); err != nil {
		t.Fatalf("not JSON: %v", err)
	}
	if !reflect.DeepEqual(anyv["args"].(map[string]any)["k"], float64(-2)) {
		t.Fatalf("k = %v", anyv["args"])
	}
}

func TestFormatStackAndDuration(t *testing.T) {
	r, err := Parse("r:ret f")
	if err != nil {
		t.Fatal(err)
	}
	ev := Event{Def: r, PID: 1, Comm: "init", Where: "g+0x5/0x20", Func: "f", Duration: 1500,
		Stack: []Frame{{0xffffffff81000005, "g+0x5/0x20"}, {0xffffffff81000105, "h+0x1/0x9"}}}
	want := "            init-1       [000] ..... " + "    0.000000: ret: (g+0x5/0x20 <- f)\n <stack trace>\n => g+0x5/0x20\n => h+0x1/0x9"
	if got := FormatTrace(ev); got != want {
		t.Errorf("FormatTrace:\n got %q\nwant %q", got, want)
	}
	b, err := FormatJSON(ev)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m["duration_ns"] != 1500.0 || !reflect.DeepEqual(m["stack"], []any{
		map[string]any{"addr": "0xffffffff81000005", "where": "g+0x5/0x20"},
		map[string]any{"addr": "0xffffffff81000105", "where": "h+0x1/0x9"}}) {
		t.Errorf("FormatJSON: %s", b)
	}
	if got := StackAddrs(&ev); !reflect.DeepEqual(got, []uint64{0xffffffff81000005, 0xffffffff81000105}) {
		t.Errorf("StackAddrs = %#x", got)
	}
}
