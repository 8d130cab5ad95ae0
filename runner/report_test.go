package runner

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hvprobe/hvprobe/guest"
	"github.com/hvprobe/hvprobe/probedef"
)

const testMap = "ffffffff81000000 T _stext\nffffffff81000100 T do_sys_open\nffffffff81000200 T sys_open\nffffffff81000300 T _etext\n"

// recordFixture writes a record as run --record does: the header, a def
// line per definition and the events, with symbol values rendered
// against the map slid by slide. It returns the record's path and the
// events.
func recordFixture(t *testing.T, dir string) (string, []probedef.Event) {
	t.Helper()
	mapPath := filepath.Join(dir, "System.map")
	if err := os.WriteFile(mapPath, []byte(testMap), 0o644); err != nil {
		t.Fatal(err)
	}
	tbl, err := guest.ParseSystemMap(strings.NewReader(testMap))
	if err != nil {
		t.Fatal(err)
	}
	const slide = 0x200000
	syms := mapSymbols{tbl.Slid(slide)}
	defs := mustParse(t, "p:g/add do_sys_open a=%di:u32 y=%dx:symbol s=+0(%si):string", "r:g/ret do_sys_open rv=$retval:s64", "p:g/never sys_open")
	defs[0].Stack = true
	var evs []probedef.Event
	for i := range 6 {
		y := uint64(0xffffffff81200100) + uint64(0x100*(i%2)+i)
		evs = append(evs, probedef.Event{Def: defs[0], Comm: "wl", PID: 7, CPU: i % 2, Time: time.Duration(i) * time.Millisecond,
			Where: "do_sys_open+0x0/0x100", Stack: []probedef.Frame{{Addr: 0xffffffff81200100, Where: "do_sys_open+0x0/0x100"}},
			Values: []probedef.Value{{Name: "a", Type: probedef.Type{Base: probedef.U32}, U64: uint64(i)},
				{Name: "y", Type: probedef.Type{Base: probedef.Symbol}, U64: y, Str: syms.Format(y)},
				{Name: "s", Type: probedef.Type{Base: probedef.String}, Str: "f\xff" + strings.Repeat("x", i)}}})
		evs = append(evs, probedef.Event{Def: defs[1], Comm: "wl", PID: 7, Time: time.Duration(i)*time.Millisecond + 500, Where: "sys_open+0x5/0x100",
			Func: "do_sys_open", Duration: 500, Values: []probedef.Value{{Name: "rv", Type: probedef.Type{Base: probedef.S64}, S64: -int64(i), U64: uint64(-int64(i))}}})
	}
	path := filepath.Join(dir, "rec.jsonl")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	rc := newRecorder(f)
	if err := rc.header("6.1.0-test", mapPath, slide); err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs {
		rc.add(ev) // defines add and ret before their first events
	}
	for _, d := range defs {
		rc.define(d) // never has no events; the others are defined already
	}
	rc.out.close()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path, evs
}

func report(t *testing.T, file string, c *Config) ([]string, error) {
	t.Helper()
	c.Events = filepath.Join(t.TempDir(), "out")
	if c.Format == "" {
		c.Format = "trace"
	}
	err := Report(c, file)
	b, rerr := os.ReadFile(c.Events)
	if err != nil {
		if rerr == nil {
			t.Errorf("Report failed (%v) but wrote %s", err, c.Events)
		}
		return nil, err
	}
	if rerr != nil {
		t.Fatal(rerr)
	}
	return strings.Split(strings.TrimRight(string(b), "\n"), "\n"), nil
}

// TestReportRoundTrip: report prints a record's events exactly as the run
// would have, in either format, through filters, and into hists whose
// .sym keys use the recorded map and KASLR slide.
func TestReportRoundTrip(t *testing.T) {
	path, evs := recordFixture(t, t.TempDir())
	got, err := report(t, path, &Config{Format: "json"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(evs) {
		t.Fatalf("%d lines, want %d", len(got), len(evs))
	}
	for i, ev := range evs {
		b, _ := probedef.FormatJSON(ev)
		if got[i] != string(b) {
			t.Errorf("line %d:\n got %s\nwant %s", i, got[i], b)
		}
	}

	got, err = report(t, path, &Config{Filters: []string{"add:a >= 3 && s ~ \"f*\""}, Format: "trace"})
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, ev := range evs {
		if ev.Def.Event == "ret" || ev.Values[0].U64 >= 3 {
			want = append(want, strings.Split(probedef.FormatTrace(ev), "\n")...)
		}
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("filtered:\n got %s\nwant %s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	got, err = report(t, path, &Config{Hists: []string{"add:hist:keys=y.sym-offset", "ret:hist:keys=stacktrace"}})
	if err == nil {
		t.Fatalf("a stacktrace key on ret, which carries no stacks, was accepted: %q", got)
	}
	got, err = report(t, path, &Config{Hists: []string{"add:hist:keys=y.sym-offset", "never:hist:keys=common_pid"}})
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(got, "\n")
	for _, w := range []string{"] do_sys_open+0x0/0x100 ", "] sys_open+0x5/0x100 ", "Hits: 6", "ret: (sys_open+0x5/0x100 <- do_sys_open) rv=-5"} {
		if !strings.Contains(all, w) {
			t.Errorf("no %q in\n%s", w, all)
		}
	}
}

// TestReportRefusals: a bad record, a bad flag or the wrong map is
// refused (exit status 2) before anything is written, naming the file
// and line; an interrupted recording's last line is skipped.
func TestReportRefusals(t *testing.T) {
	dir := t.TempDir()
	path, evs := recordFixture(t, dir)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(data), "\n")
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	other := write("other.map", testMap+"ffffffff81000400 T extra\n")
	for _, c := range []struct {
		name string
		file string
		cfg  Config
		want string
	}{
		{"bad line", write("bad", strings.Join(lines[:3], "")+"{nope\n"+strings.Join(lines[3:], "")), Config{}, "bad:4:"},
		{"event before def", write("nodef", lines[0]+lines[2]), Config{}, "has no def line before it"},
		{"no header", write("nohead", strings.Join(lines[1:], "")), Config{}, "first line is no header"},
		{"empty", write("empty", ""), Config{}, "it has no header line"},
		{"wrong map", path, Config{SystemMap: other, Hists: []string{"add:hist:keys=y.sym"}}, "is not the System.map the record was made with"},
		{"bad filter", path, Config{Filters: []string{"add:nosuch == 1"}}, "refused"},
		{"bad format", path, Config{Format: "xml"}, `"xml" is not trace`},
		{"missing", filepath.Join(dir, "missing"), Config{}, "no such file"},
	} {
		_, err := report(t, c.file, &c.cfg)
		if err == nil || Code(err) != ExitRefused || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v (exit %d), want exit 2 with %q", c.name, err, Code(err), c.want)
		}
	}
	cut := write("cut", string(data)+`{"comm":"wl","pid":7,"cp`)
	got, err := report(t, cut, &Config{Format: "json"})
	if err != nil || len(got) != len(evs) {
		t.Errorf("interrupted record: %v, %d events, want %d", err, len(got), len(evs))
	}
}
