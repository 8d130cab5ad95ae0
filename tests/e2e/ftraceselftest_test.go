package e2e

import (
	"encoding/binary"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/hvprobe/hvprobe/probedef"
)

// TestFtraceArgSelftests ports the runtime checks of Linux's ftrace
// selftests in tools/testing/selftests/ftrace/test.d/kprobe/ that read
// the trace: kprobe_args_type.tc, kprobe_args_string.tc,
// kprobe_args_char.tc, kprobe_args_symbol.tc and kprobe_args_comm.tc. The
// probed functions are the workload's (hvwl_target_add for _do_fork and
// kernel_clone, hvwl_target_str for tracefs_create_dir, whose first
// argument is a string too); each check is the .tc script's, on the
// trace lines FormatTrace prints, plus the value the guest itself knows.
func TestFtraceArgSelftests(t *testing.T) {
	g := miniGuest(t)
	// trace runs the scenario with defs armed and returns each event's
	// trace line, by event name.
	trace := func(t *testing.T, cmd string, lines ...string) (map[string][]string, []string) {
		t.Helper()
		defs := parseDefs(t, lines...)
		var log eventLog
		dp, err := g.s.AddDefs(g.a, defs, log.add)
		if err != nil {
			t.Fatal(err)
		}
		out := g.run(t, cmd)
		if err := dp.Remove(); err != nil {
			t.Fatal(err)
		}
		got := map[string][]string{}
		for _, ev := range log.all() {
			got[ev.Def.Event] = append(got[ev.Def.Event], probedef.FormatTrace(ev))
		}
		return got, out
	}
	args := regexp.MustCompile(`.* arg1=(.*) arg2=(.*) arg3=(.*) arg4=(.*)`)

	t.Run("args_type", func(t *testing.T) {
		var lines []string
		for _, w := range []int{64, 32, 16, 8} {
			lines = append(lines, fmt.Sprintf("p:testprobe%d hvwl_target_add $stack0:s%d $stack0:u%d $stack0:x%d $stack0:b4@4/%d", w, w, w, w, w))
		}
		lines = append(lines, "p:caller hvwl_target_add $stack0:symbol")
		got, out := trace(t, "calls:2", lines...)
		n := int(num(t, report(t, out, "calls"), "n"))
		for _, w := range []int{64, 32, 16, 8} {
			evs := got[fmt.Sprintf("testprobe%d", w)]
			if len(evs) != n {
				t.Fatalf("width %d: %d events, the workload made %d calls", w, len(evs), n)
			}
			for _, l := range evs {
				m := args.FindStringSubmatch(l)
				if m == nil {
					t.Fatalf("width %d: %q has not 4 arguments", w, l)
				}
				if err := checkTypes(m[1], m[2], m[3], m[4], w); err != nil {
					t.Errorf("width %d: %q: %v", w, l, err)
				}
			}
		}
		// $stack0 at entry is the return address: right after a call
		// rel32 to hvwl_target_add in the guest's text, in the workload.
		target, err := g.a.Kernel.Resolve("hvwl_target_add", 0)
		if err != nil {
			t.Fatal(err)
		}
		ret, err := strconv.ParseUint(strings.TrimPrefix(args.FindStringSubmatch(got["testprobe64"][0])[3], "0x"), 16, 64)
		if err != nil {
			t.Fatal(err)
		}
		call := make([]byte, 5)
		if err := g.a.Kernel.Mem.Read(ret-5, call); err != nil {
			t.Fatal(err)
		}
		if dest := ret + uint64(int64(int32(binary.LittleEndian.Uint32(call[1:])))); call[0] != 0xe8 || dest != target {
			t.Errorf("$stack0 = %#x follows % x, not a call to hvwl_target_add at %#x", ret, call, target)
		}
		if len(got["caller"]) != n {
			t.Errorf("%d caller events, want %d", len(got["caller"]), n)
		}
		for _, l := range got["caller"] {
			if !strings.Contains(l, " arg1=hvwl_") {
				t.Errorf("$stack0:symbol at hvwl_target_add's entry: %q, want the workload's caller", l)
			}
		}
	})

	t.Run("args_string", func(t *testing.T) {
		got, out := trace(t, "str:3",
			"p:testprobe hvwl_target_str arg1=+0(%di):string",
			"p:testprobe2 hvwl_target_str arg1=+0(%di):string arg2=+0(%di):string")
		last := report(t, out, "str")["last"]
		one := regexp.MustCompile(`testprobe.* arg1="hvwl-str-(\d+)"$`)
		two := regexp.MustCompile(`testprobe2.* arg1="hvwl-str-(\d+)" arg2="hvwl-str-(\d+)"$`)
		for _, ev := range [][]string{got["testprobe"], got["testprobe2"]} {
			if len(ev) != 3 {
				t.Fatalf("%d events, the workload made 3 calls: %q", len(ev), ev)
			}
		}
		for i := range 3 {
			i1 := one.FindStringSubmatch(got["testprobe"][i])
			i2 := two.FindStringSubmatch(got["testprobe2"][i])
			if i1 == nil || i2 == nil || i1[1] != strconv.Itoa(i) || i2[1] != i1[1] || i2[2] != i1[1] {
				t.Errorf("call %d: %q, %q", i, got["testprobe"][i], got["testprobe2"][i])
			}
		}
		if !strings.HasSuffix(got["testprobe"][2], `arg1="`+last+`"`) {
			t.Errorf("last string %q, the workload passed %q", got["testprobe"][2], last)
		}
	})

	t.Run("args_char", func(t *testing.T) {
		got, _ := trace(t, "str:2",
			"p:testprobe hvwl_target_str arg1=+0(%di):char",
			"p:testprobe2 hvwl_target_str arg1=+0(%di):char arg2=+0(%di):char[4]")
		if len(got["testprobe"]) != 2 || len(got["testprobe2"]) != 2 {
			t.Fatalf("events %q, the workload made 2 calls", got)
		}
		for i := range 2 {
			if !strings.HasSuffix(got["testprobe"][i], " arg1='h'") ||
				!strings.HasSuffix(got["testprobe2"][i], " arg1='h' arg2={'h','v','w','l'}") {
				t.Errorf("call %d: %q, %q", i, got["testprobe"][i], got["testprobe2"][i])
			}
		}
	})

	t.Run("args_symbol", func(t *testing.T) {
		const sym = "linux_proc_banner"
		var lines []string
		for _, k := range "usx" {
			lines = append(lines, fmt.Sprintf("p:testprobe_%c hvwl_target_add arg1=@%s:%c64 arg2=@%s:%c32 arg3=@%s:%c16 arg4=@%s:%c8", k, sym, k, sym, k, sym, k, sym, k))
		}
		lines = append(lines, "p:testprobe_bf hvwl_target_add arg1=@"+sym+":b8@4/32",
			"p:testprobe_str hvwl_target_add arg1=@"+sym+":string")
		got, _ := trace(t, "calls:1", lines...)
		for _, e := range []string{"testprobe_u", "testprobe_s", "testprobe_x", "testprobe_bf", "testprobe_str"} {
			if len(got[e]) != 1 {
				t.Fatalf("%s: %q, want one event", e, got[e])
			}
		}
		for _, e := range []string{"testprobe_u", "testprobe_s", "testprobe_x"} {
			if !args.MatchString(got[e][0]) {
				t.Errorf("%s: %q has not 4 arguments", e, got[e][0])
			}
		}
		// The string, the first bytes of the format linux_proc_banner is,
		// gives what each integer read of it must be.
		str := regexp.MustCompile(` arg1="(.*)"$`).FindStringSubmatch(got["testprobe_str"][0])
		if str == nil || !strings.HasPrefix(str[1], "%s version %s (") {
			t.Fatalf("testprobe_str: %q", got["testprobe_str"][0])
		}
		b := []byte(str[1] + "\x00\x00\x00\x00\x00\x00\x00\x00")
		u64 := binary.LittleEndian.Uint64(b)
		want := map[string]string{
			"testprobe_u":  fmt.Sprintf(" arg1=%d arg2=%d arg3=%d arg4=%d", u64, uint32(u64), uint16(u64), uint8(u64)),
			"testprobe_s":  fmt.Sprintf(" arg1=%d arg2=%d arg3=%d arg4=%d", int64(u64), int32(u64), int16(u64), int8(u64)),
			"testprobe_x":  fmt.Sprintf(" arg1=%#x arg2=%#x arg3=%#x arg4=%#x", u64, uint32(u64), uint16(u64), uint8(u64)),
			"testprobe_bf": fmt.Sprintf(" arg1=%d", uint32(u64)>>4&0xff),
		}
		for e, w := range want {
			if !strings.HasSuffix(got[e][0], w) {
				t.Errorf("%s: %q, want it to end %q", e, got[e][0], w)
			}
		}
		// What kprobe_args_symbol.tc compares with /proc/version: the
		// "(builder) (compiler)" parts, here of the banner the guest
		// printed at boot.
		parts := regexp.MustCompile(`.* \((.*)\) \((.*)\) .*`)
		var banner string
		for _, l := range g.s.Lines() {
			if i := strings.Index(l.Text, "Linux version "); i >= 0 {
				banner = l.Text[i:]
				break
			}
		}
		r, o := parts.FindStringSubmatch(str[1]), parts.FindStringSubmatch(banner)
		if r == nil || o == nil || r[1] != o[1] || r[2] != o[2] {
			t.Errorf("banner parts from the probe %q, from the console %q", r, o)
		}
	})

	t.Run("args_comm", func(t *testing.T) {
		defs := parseDefs(t, "p:testprobe hvwl_target_add comm=$comm ")
		if s := defs[0].String(); !strings.Contains(s, "comm=$comm") {
			t.Errorf("definition reads %q", s)
		}
		got, out := trace(t, "tasks,calls:2", "p:testprobe hvwl_target_add comm=$comm ")
		comm := report(t, out, "task")["comm"]
		if len(got["testprobe"]) != 2 {
			t.Fatalf("%q, want 2 events", got["testprobe"])
		}
		for _, l := range got["testprobe"] {
			if !regexp.MustCompile(`comm=".*"`).MatchString(l) || !strings.HasSuffix(l, ` comm="`+comm+`"`) {
				t.Errorf("%q, the workload runs as %q", l, comm)
			}
		}
	})
}

// checkTypes is kprobe_args_type.tc's check_types: the s, u and x reads
// of one value agree on its low width bits, x prints as 0x without
// leading zeros, and b4@4 is its second hex digit.
func checkTypes(s, u, x, bf string, width int) error {
	sv, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return fmt.Errorf("s%d %q: %v", width, s, err)
	}
	uv, err := strconv.ParseUint(u, 10, 64)
	if err != nil {
		return fmt.Errorf("u%d %q: %v", width, u, err)
	}
	xv, err := strconv.ParseUint(strings.TrimPrefix(x, "0x"), 16, 64)
	if err != nil {
		return fmt.Errorf("x%d %q: %v", width, x, err)
	}
	x1 := fmt.Sprintf("%x", uint64(sv))
	if cw := width / 4; len(x1) > cw {
		x1 = x1[len(x1)-cw:]
	}
	x2, x3 := fmt.Sprintf("%x", uv), fmt.Sprintf("%x", xv)
	if x1 != x2 || x2 != x3 || "0x"+x3 != x {
		return fmt.Errorf("s %s u %s x %s disagree", x1, x2, x3)
	}
	bv, err := strconv.ParseUint(bf, 10, 64)
	if err != nil {
		return fmt.Errorf("b4@4 %q: %v", bf, err)
	}
	if b3 := fmt.Sprintf("%03x", xv); fmt.Sprintf("%x", bv) != b3[len(b3)-2:len(b3)-1] {
		return fmt.Errorf("b4@4/%d = %s, x = %s", width, bf, x)
	}
	return nil
}
