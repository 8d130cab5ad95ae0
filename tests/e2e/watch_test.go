package e2e

import (
	"strconv"
	"strings"
	"testing"
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
