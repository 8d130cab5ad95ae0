package e2e

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/hvprobe/hvprobe/probedef"
	"github.com/hvprobe/hvprobe/session"
	"github.com/hvprobe/hvprobe/session/control"
)

// TestWatchWrites: a w line on the workload's variable reports exactly
// the stores the workload makes to it (write:N stores 7i+1 from
// hvwl_target_write), each with its writer and old → new value, and none
// of the stores to its neighbour on the same page, which still land; once
// removed, a second run gives no event.
func TestWatchWrites(t *testing.T) {
	g := miniGuest(t)
	defs := parseDefs(t, `w:wr/var w@hvwl_wvar:8`)
	var log eventLog
	dp, err := g.s.AddDefs(g.a, defs, log.add)
	if err != nil {
		t.Fatal(err)
	}
	const n = 5
	out := g.run(t, "write:"+strconv.Itoa(n))
	if err := dp.Remove(); err != nil {
		t.Fatal(err)
	}
	w := report(t, out, "write")
	old, next := num(t, w, "old"), num(t, w, "next")
	evs := log.all()
	t.Logf("%s: %d events; workload old=%d last=%s next=%d", defs[0], len(evs), old, w["last"], next)
	if len(evs) != n {
		t.Fatalf("%d events, the workload stored %d times", len(evs), n)
	}
	for i, ev := range evs {
		want := int64(7*i + 1)
		if ev.Values[0].Name != "addr" || ev.Values[1].Name != "old" || ev.Values[2].Name != "new" {
			t.Fatalf("default arguments %v", ev.Values)
		}
		if got := int64(ev.Values[2].U64); got != want {
			t.Errorf("store %d: new=%d, the workload stored %d", i, got, want)
		}
		if got := int64(ev.Values[1].U64); got != old {
			t.Errorf("store %d: old=%d, want %d", i, got, old)
		}
		old = want
		if !strings.HasPrefix(ev.Where, "hvwl_target_write+") {
			t.Errorf("store %d written at %s, want in hvwl_target_write", i, ev.Where)
		}
	}
	if next != n-1 {
		t.Errorf("the neighbour's last store reads back %d, want %d", next, n-1)
	}
	g.run(t, "write:2")
	if got := len(log.all()); got != n {
		t.Errorf("%d events after the watch was removed", got-n)
	}
}

// TestWatchSyscallTable: a watch on one sys_call_table entry sees the
// workload replace it and put it back through a writable alias of the
// table's read-only page (sysent:NR, the way a rootkit does it), with the
// values the workload reports.
func TestWatchSyscallTable(t *testing.T) {
	g := miniGuest(t)
	const nr = 39 // getpid
	defs := parseDefs(t, "w:wr/sct w@sys_call_table+"+strconv.Itoa(8*nr)+":8")
	var log eventLog
	dp, err := g.s.AddDefs(g.a, defs, log.add)
	if err != nil {
		t.Fatal(err)
	}
	out := g.run(t, "sysent:"+strconv.Itoa(nr))
	if err := dp.Remove(); err != nil {
		t.Fatal(err)
	}
	r := report(t, out, "sysent")
	orig, err1 := strconv.ParseUint(r["orig"], 0, 64)
	fake, err2 := strconv.ParseUint(r["fake"], 0, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("sysent report %v: %v %v", r, err1, err2)
	}
	if r["seen"] != "1" || r["restored"] != "1" {
		t.Fatalf("the workload's own view: %v", r)
	}
	evs := log.all()
	if len(evs) != 2 {
		t.Fatalf("%d events, the workload stored twice: %v", len(evs), evs)
	}
	for i, want := range [][2]uint64{{orig, fake}, {fake, orig}} {
		ev := evs[i]
		if ev.Values[1].U64 != want[0] || ev.Values[2].U64 != want[1] || !strings.HasPrefix(ev.Where, "hvwl_target_sysent+") {
			t.Errorf("store %d: %s old=%#x new=%#x, want old=%#x new=%#x in hvwl_target_sysent", i, ev.Where, ev.Values[1].U64, ev.Values[2].U64, want[0], want[1])
		}
	}
	t.Logf("sys_call_table[%d]: %#x -> %#x -> %#x, written at %s", nr, orig, fake, orig, evs[0].Where)
}

// TestStealthProbes: p lines armed in debug registers (Def.Stealth) count
// exactly the workload's calls with the arguments it passed, and the
// guest reading the probed function's first bytes sees its own code; an
// int3 probe on the same function, for contrast, shows the guest an int3
// (so the guest's read is real). After removal no hit is counted.
func TestStealthProbes(t *testing.T) {
	g := miniGuest(t)
	text := func() string { return report(t, g.run(t, "text"), "text")["bytes"] }
	orig := text()
	defs := parseDefs(t, `p:st/add hvwl_target_add a=%di:s64 b=%si:s64`, `p:st/ret hvwl_target_ret+1 x=%di:s64`)
	for _, d := range defs {
		d.Stealth = true
	}
	var log eventLog
	caps, err := g.s.VM.WatchCaps()
	if err != nil {
		t.Fatal(err)
	}
	dp, err := g.s.AddDefs(g.a, defs, log.add)
	if !caps.HWExecute {
		// The nested KVM (QUIRKS #18): refused, never armed to stay silent.
		if !errors.Is(err, session.ErrStealth) {
			t.Fatalf("this host's KVM fires no debug registers, yet AddDefs gave %v, not ErrStealth", err)
		}
		t.Logf("refused as it must be here: %v", err)
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	out := g.run(t, "text,calls:5,ret:3")
	seen := report(t, out, "text")["bytes"]
	c, r := report(t, out, "calls"), report(t, out, "ret")
	stats := dp.Stats()
	if err := dp.Remove(); err != nil {
		t.Fatal(err)
	}
	adds, rets := 0, 0
	for _, ev := range log.all() {
		switch ev.Def.Event {
		case "add":
			if a, b := ev.Values[0].S64, ev.Values[1].S64; b != 1000+a || a != int64(adds) {
				t.Errorf("add event %d: a=%d b=%d", adds, a, b)
			}
			adds++
		case "ret":
			if x := ev.Values[0].S64; x != int64(rets) {
				t.Errorf("ret event %d: x=%d", rets, x)
			}
			if !strings.HasPrefix(ev.Where, "hvwl_target_ret+0x1/") {
				t.Errorf("ret event at %s", ev.Where)
			}
			rets++
		}
	}
	t.Logf("%v; guest reads %s (unprobed %s)", stats, seen, orig)
	if int64(adds) != num(t, c, "n") || int64(rets) != num(t, r, "n") {
		t.Fatalf("%d add and %d ret events; the workload made %s and %s calls", adds, rets, c["n"], r["n"])
	}
	if seen != orig {
		t.Errorf("with stealth probes the guest reads %s at hvwl_target_add, not its code %s", seen, orig)
	}
	g.run(t, "calls:2")
	if n := len(log.all()); n != adds+rets {
		t.Errorf("%d events after removal", n-adds-rets)
	}
	// The same read under an int3 probe shows the int3.
	plain := parseDefs(t, `p:st/plain hvwl_target_add`)
	dp, err = g.s.AddDefs(g.a, plain, func(probedef.Event) {})
	if err != nil {
		t.Fatal(err)
	}
	under := text()
	if err := dp.Remove(); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(under, "cc") {
		t.Errorf("under an int3 probe the guest reads %s", under)
	}
}

// TestControlWatch: a w line added over the control socket while the
// guest runs reports the workload's stores, shows in stats, and stops
// when removed.
func TestControlWatch(t *testing.T) {
	g := miniGuest(t)
	var log eventLog
	c, err := control.Listen(g.s, "", log.add, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cc := serveAndDial(t, c)
	if l, st, err := cc.ask("add w:live/var w@hvwl_wvar:8"); st != "ok" {
		t.Fatalf("add: %q %s %v", l, st, err)
	}
	out := g.run(t, "write:3")
	w := report(t, out, "write")
	stats, st, err := cc.ask("stats")
	if st != "ok" {
		t.Fatalf("stats: %q %s %v", stats, st, err)
	}
	if l, st, err := cc.ask("remove var"); st != "ok" {
		t.Fatalf("remove: %q %s %v", l, st, err)
	}
	g.run(t, "write:2")
	evs := log.all()
	if len(evs) != 3 || int64(evs[2].Values[2].U64) != num(t, w, "last") {
		t.Fatalf("%d events (want the workload's 3 stores, last %s): %v", len(evs), w["last"], evs)
	}
	if !slices.ContainsFunc(stats, func(l string) bool { return strings.HasPrefix(l, "watch live/var") && strings.HasSuffix(l, "hits=3") }) {
		t.Errorf("stats %q do not count the watch's 3 hits", stats)
	}
}
