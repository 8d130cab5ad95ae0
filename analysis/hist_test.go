package analysis

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hvprobe/hvprobe/probedef"
)

// histSyms names addresses 0x1000 + 0x100*i "fn<i>", each 0x100 long.
type histSyms struct{}

func (histSyms) Address(string) (uint64, error) { return 0, errors.New("unused") }
func (histSyms) Format(a uint64) string {
	return fmt.Sprintf("fn%d+%#x/0x100", (a-0x1000)/0x100, a%0x100)
}

const histDef = "p:open do_sys_open dfd=%di:s32 len=%si:u64 fn=%dx:x64 name=+0(%cx):string"

func histEvent(comm string, pid int, dfd int32, n uint64, fn uint64, name string) probedef.Event {
	return probedef.Event{
		Comm: comm, PID: pid, CPU: pid % 2,
		Values: []probedef.Value{
			{Name: "dfd", Type: probedef.Type{Base: probedef.S32}, U64: uint64(uint32(dfd)), S64: int64(dfd)},
			{Name: "len", Type: probedef.Type{Base: probedef.U64}, U64: n},
			{Name: "fn", Type: probedef.Type{Base: probedef.X64}, U64: fn},
			{Name: "name", Type: probedef.Type{Base: probedef.String}, Str: name},
		},
	}
}

var histEvents = []probedef.Event{
	histEvent("bash", 1, -100, 3, 0x1010, "/etc/passwd"),
	histEvent("bash", 1, -100, 5, 0x1010, "/etc/passwd"),
	histEvent("sh", 7, 3, 100, 0x1120, "/tmp/x"),
	histEvent("bash", 2, 3, 1000, 0x1010, "/etc/passwd"),
	histEvent("sh", 7, 3, 0, 0x1234, "/tmp/x"),
}

const histHeader = "# event histogram\n#\n# trigger info: %s [active]\n#\n\n"

func histText(t *testing.T, spec string, setup func(h *Hist), evs []probedef.Event) string {
	t.Helper()
	h, err := ParseHist(mustParse(t, histDef), spec)
	if err != nil {
		t.Fatalf("%s: %v", spec, err)
	}
	if setup != nil {
		setup(h)
	}
	for _, ev := range evs {
		h.Add(ev)
	}
	var b bytes.Buffer
	if err := h.Text(&b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestHistText(t *testing.T) {
	syms := func(h *Hist) { h.Syms = histSyms{} }
	for _, tc := range []struct {
		spec  string
		setup func(*Hist)
		want  string
	}{
		{
			spec: "hist:keys=comm,common_pid",
			want: "{ comm: bash                                              , common_pid:          2 } hitcount:          1\n" +
				"{ comm: bash                                              , common_pid:          1 } hitcount:          2\n" +
				"{ comm: sh                                                , common_pid:          7 } hitcount:          2\n" +
				"\nTotals:\n    Hits: 5\n    Entries: 3\n    Dropped: 0\n",
		},
		{
			spec: "hist:keys=dfd:vals=len:sort=len.descending",
			want: "{ dfd:          3 } hitcount:          3  len:       1100\n" +
				"{ dfd:       -100 } hitcount:          2  len:          8\n" +
				"\nTotals:\n    Hits: 5\n    Entries: 2\n    Dropped: 0\n",
		},
		{
			spec:  "hist:keys=fn.sym:vals=hitcount,len.hex:sort=fn",
			setup: syms,
			want: "{ fn: [1010] fn0                                           } hitcount:          3  len:        3f0\n" +
				"{ fn: [1120] fn1                                           } hitcount:          1  len:         64\n" +
				"{ fn: [1234] fn2                                           } hitcount:          1  len:          0\n" +
				"\nTotals:\n    Hits: 5\n    Entries: 3\n    Dropped: 0\n",
		},
		{
			spec:  "hist:key=fn.sym-offset:sort=hitcount.descending,fn:size=2",
			setup: syms,
			want: "{ fn: [1010] fn0+0x10/0x100" + strings.Repeat(" ", 41) + " } hitcount:          3\n" +
				"{ fn: [1120] fn1+0x20/0x100" + strings.Repeat(" ", 41) + " } hitcount:          1\n" +
				"\nTotals:\n    Hits: 5\n    Entries: 2\n    Dropped: 1\n",
		},
		{
			spec: "hist:keys=fn.hex,len.buckets=100",
			want: "{ fn: 1010, len: ~ 1000-1099 } hitcount:          1\n" +
				"{ fn: 1120, len: ~ 100-199 } hitcount:          1\n" +
				"{ fn: 1234, len: ~ 0-99 } hitcount:          1\n" +
				"{ fn: 1010, len: ~ 0-99 } hitcount:          2\n" +
				"\nTotals:\n    Hits: 5\n    Entries: 4\n    Dropped: 0\n",
		},
		{
			spec: "hist:keys=len.log2",
			want: "@len:\n" +
				"[0]                    1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n" +
				"[1]                    0 |                                                    |\n" +
				"[2, 4)                 1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n" +
				"[4, 8)                 1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n" +
				"[8, 16)                0 |                                                    |\n" +
				"[16, 32)               0 |                                                    |\n" +
				"[32, 64)               0 |                                                    |\n" +
				"[64, 128)              1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n" +
				"[128, 256)             0 |                                                    |\n" +
				"[256, 512)             0 |                                                    |\n" +
				"[512, 1K)              1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n" +
				"\nTotals:\n    Hits: 5\n    Entries: 5\n    Dropped: 0\n",
		},
		{
			spec: "hist:keys=comm:vals=len.log2:sort=comm",
			want: "{ comm: bash                                               } hitcount:          3  len:       1008\n" +
				"@len:\n" +
				"[2, 4)                 1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n" +
				"[4, 8)                 1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n" +
				"[8, 16)                0 |                                                    |\n" +
				"[16, 32)               0 |                                                    |\n" +
				"[32, 64)               0 |                                                    |\n" +
				"[64, 128)              0 |                                                    |\n" +
				"[128, 256)             0 |                                                    |\n" +
				"[256, 512)             0 |                                                    |\n" +
				"[512, 1K)              1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n" +
				"{ comm: sh                                                 } hitcount:          2  len:        100\n" +
				"@len:\n" +
				"[0]                    1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n" +
				"[1]                    0 |                                                    |\n" +
				"[2, 4)                 0 |                                                    |\n" +
				"[4, 8)                 0 |                                                    |\n" +
				"[8, 16)                0 |                                                    |\n" +
				"[16, 32)               0 |                                                    |\n" +
				"[32, 64)               0 |                                                    |\n" +
				"[64, 128)              1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n" +
				"\nTotals:\n    Hits: 5\n    Entries: 2\n    Dropped: 0\n",
		},
		{
			spec: "hist:keys=stacktrace if comm == sh",
			setup: func(h *Hist) {
				h.Syms = histSyms{}
				h.Stack = func(ev *probedef.Event) []uint64 { return []uint64{0x1010, 0x1100 + uint64(ev.Values[1].U64%3)} }
			},
			want: "{ stacktrace:\n         fn0+0x10/0x100\n         fn1+0x0/0x100\n } hitcount:          1\n" +
				"{ stacktrace:\n         fn0+0x10/0x100\n         fn1+0x1/0x100\n } hitcount:          1\n" +
				"\nTotals:\n    Hits: 2\n    Entries: 2\n    Dropped: 0\n",
		},
	} {
		got := histText(t, tc.spec, tc.setup, histEvents)
		if want := fmt.Sprintf(histHeader, tc.spec) + tc.want; got != want {
			t.Errorf("%s:\n got:\n%s\nwant:\n%s", tc.spec, got, want)
		}
	}
}

func TestHistDuration(t *testing.T) {
	h, err := ParseHist(mustParse(t, "r:ret vfs_read $retval:s64"), "hist:keys=duration.log2")
	if err != nil {
		t.Fatal(err)
	}
	h.Duration = func(ev *probedef.Event) (time.Duration, bool) { return ev.Time, ev.Time > 0 }
	for _, d := range []time.Duration{0, 1500, 1800, 3000} {
		h.Add(probedef.Event{Time: d})
	}
	var b bytes.Buffer
	if err := h.Text(&b); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf(histHeader, "hist:keys=duration.log2") + "@duration:\n" +
		"[1K, 2K)               2 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n" +
		"[2K, 4K)               1 |@@@@@@@@@@@@@@@@@@@@@@@@@@                          |\n" +
		"(fault) 1\n" +
		"\nTotals:\n    Hits: 4\n    Entries: 3\n    Dropped: 0\n"
	if got := b.String(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

func TestHistJSON(t *testing.T) {
	h, err := ParseHist(mustParse(t, histDef), "hist:keys=comm,fn.hex:vals=len.log2:sort=comm")
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range histEvents[:3] {
		h.Add(ev)
	}
	var b bytes.Buffer
	if err := h.JSON(&b); err != nil {
		t.Fatal(err)
	}
	want := `{"event":"kprobes/open","trigger":"hist:keys=comm,fn.hex:vals=len.log2:sort=comm","entries":[` +
		`{"key":{"comm":"bash","fn":"0x1010"},"hitcount":2,"vals":{"len":8},"hist":{"len":[{"bucket":"[2, 4)","count":1},{"bucket":"[4, 8)","count":1}]}},` +
		`{"key":{"comm":"sh","fn":"0x1120"},"hitcount":1,"vals":{"len":100},"hist":{"len":[{"bucket":"[64, 128)","count":1}]}}],` +
		`"totals":{"hits":3,"entries":2,"dropped":0}}` + "\n"
	if got := b.String(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func TestHistConcurrentAdd(t *testing.T) {
	h, err := ParseHist(mustParse(t, histDef), "hist:keys=common_pid:vals=len")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1000 {
				h.Add(histEvent("x", i%3, 0, 1, 0, ""))
			}
		}()
	}
	wg.Wait()
	var b bytes.Buffer
	if err := h.Text(&b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "Hits: 4000\n    Entries: 3\n") || !strings.Contains(b.String(), "hitcount:       1336  len:       1336") {
		t.Errorf("got\n%s", b.String())
	}
}

func TestHistErrors(t *testing.T) {
	d := mustParse(t, histDef+" arr=+0(%cx):u8[2]")
	for _, tc := range []struct {
		spec, msg string
		col       int
	}{
		{"keys=comm", "starts with hist:", 1},
		{"hist:vals=len", "needs keys=", 1},
		{"hist:keys=nosuch", `field "nosuch" not found`, 11},
		{"hist:keys=comm,nosuch", `field "nosuch" not found`, 16},
		{"hist:keys=comm:vals=name", "cannot be summed", 21},
		{"hist:keys=hitcount", "is a value", 11},
		{"hist:keys=comm:vals=stacktrace", "is a key", 21},
		{"hist:keys=comm.log2", "needs a numeric field", 16},
		{"hist:keys=len.log3", "unknown modifier", 15},
		{"hist:keys=len.buckets=0", "positive size", 15},
		{"hist:keys=len.hex.log2", "only one modifier", 18},
		{"hist:keys=comm:vals=len.sym", "values take only", 25},
		{"hist:keys=comm:sort=len", "not a key, a value", 21},
		{"hist:keys=comm:sort=comm.down", "sort order", 26},
		{"hist:keys=comm:sort=comm,hitcount,comm", "too many sort keys", 35},
		{"hist:keys=comm:size=0", "size must be", 21},
		{"hist:keys=comm:bogus", "unknown hist parameter", 16},
		{"hist:keys=comm,dfd,len,fn", "too many keys", 24},
		{"hist:keys=comm:vals=dfd,len,fn,len", "too many values", 1},
		{"hist:keys=arr", "array field", 11},
		{"hist:keys=duration", `field "duration" not found`, 11},
		{"hist:keys=comm if nosuch == 1", `field "nosuch" not found`, 19},
		{"hist:keys=comm:keys=len", "keys given twice", 16},
		{"hist:vals", "needs =VALUE", 6},
	} {
		_, err := ParseHist(d, tc.spec)
		var se *probedef.SyntaxError
		if !errors.As(err, &se) {
			t.Errorf("%q: error %v, want *SyntaxError", tc.spec, err)
			continue
		}
		if se.Col != tc.col || !strings.Contains(se.Msg, tc.msg) {
			t.Errorf("%q: col %d msg %q, want col %d with %q\n%s", tc.spec, se.Col, se.Msg, tc.col, tc.msg, se.Render(""))
		}
	}
}

// FuzzParseHist: ParseHist never panics and points inside the spec; a
// parsed trigger adds and prints without panicking.
func FuzzParseHist(f *testing.F) {
	for _, s := range []string{
		"hist:keys=comm,common_pid:vals=len:sort=len.descending:size=16",
		"hist:keys=len.log2", "hist:keys=fn.sym-offset,stacktrace if dfd < 0",
		"hist:keys=len.buckets=10:vals=hitcount,len.hex",
	} {
		f.Add(s)
	}
	d := mustParse(f, histDef)
	f.Fuzz(func(t *testing.T, spec string) {
		h, err := ParseHist(d, spec)
		if err != nil {
			var se *probedef.SyntaxError
			if !errors.As(err, &se) || se.Col < 1 || se.Col > len(spec)+1 {
				t.Fatalf("error %v", err)
			}
			return
		}
		h.Add(probedef.Event{})
		for _, ev := range histEvents {
			h.Add(ev)
		}
		var b bytes.Buffer
		if h.Text(&b) != nil || h.JSON(&b) != nil {
			t.Fatal("output failed")
		}
	})
}
