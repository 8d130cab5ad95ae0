package runner

import (
	"strings"
	"testing"

	"github.com/hvprobe/hvprobe/probedef"
)

func TestAnalysisRefusals(t *testing.T) {
	_, bad := newAnalysis(mustParse(t, "p:myev hvwl_target_add a=%di:u64 b=%si:u64"),
		[]string{"myev:a > 3 && nosuch == 1", "other:a == 1", "nocolon"},
		[]string{"myev:hist:keys=a:vals=bogus"}, true)
	if len(bad) != 4 {
		t.Fatalf("refusals %q", bad)
	}
	// The caret sits under "nosuch" in the flag's whole value.
	lines := strings.Split(bad[0], "\n")
	prefix := "hvprobe: --filter "
	if len(lines) != 2 || lines[0] != prefix+"myev:a > 3 && nosuch == 1" ||
		strings.Index(lines[1], "^") != len(prefix)+len("myev:a > 3 && ") {
		t.Errorf("filter refusal:\n%s", bad[0])
	}
	if !strings.Contains(bad[1], `no probe definition makes event "other"`) || !strings.Contains(bad[2], "want EVENT:FILTER") {
		t.Errorf("refusals %q", bad[1:3])
	}
	if !strings.Contains(bad[3], "^") {
		t.Errorf("hist refusal %q", bad[3])
	}
}

func TestAnalysisFiltersAndHists(t *testing.T) {
	defs := mustParse(t, "p:grp/one f a=%di:u64", "p:two g a=%di:u64")
	an, bad := newAnalysis(defs, []string{"grp/one:a >= 1"}, []string{"two:hist:keys=a"}, true)
	if len(bad) > 0 {
		t.Fatal(bad)
	}
	var printed []uint64
	emit := an.Wrap(func(ev probedef.Event) { printed = append(printed, ev.Values[0].U64) })
	for _, d := range defs {
		for a := uint64(0); a < 4; a++ {
			emit(probedef.Event{Def: d, Values: []probedef.Value{{Name: "a", Type: probedef.Type{Base: probedef.U64}, U64: a % 2}}})
		}
	}
	// one: the two hits with a == 1 pass; two: hist only.
	if len(printed) != 2 || printed[0] != 1 || printed[1] != 1 {
		t.Errorf("printed %v", printed)
	}
	table, err := an.Tables("two", false)
	if all := strings.Join(table, "\n"); err != nil || !strings.Contains(all, "{ a:          0 } hitcount:          2") || !strings.Contains(all, "Hits: 4") {
		t.Errorf("hist: %v\n%s", err, all)
	}
}

// TestAnalysisMultiProbeEvent: filters and hists of an event apply to
// every probe point appended to it.
func TestAnalysisMultiProbeEvent(t *testing.T) {
	defs := mustParse(t, "p:g/ev f a=%di:u64", "p:g/ev g a=%di:u64")
	an, bad := newAnalysis(defs, []string{"ev:a == 1"}, []string{"g/ev:hist:keys=a"}, true)
	if len(bad) > 0 {
		t.Fatal(bad)
	}
	emit := an.Wrap(func(ev probedef.Event) { t.Errorf("printed %v while a hist holds the event", ev) })
	for _, d := range defs {
		for a := uint64(0); a < 3; a++ {
			emit(probedef.Event{Def: d, Values: []probedef.Value{{Name: "a", Type: probedef.Type{Base: probedef.U64}, U64: a}}})
		}
	}
	table, err := an.Tables("ev", false)
	if all := strings.Join(table, "\n"); err != nil || !strings.Contains(all, "{ a:          1 } hitcount:          2") || !strings.Contains(all, "Hits: 2") {
		t.Errorf("hist: %v\n%s", err, all)
	}
}

// mustParse parses probe lines or fails the test.
func mustParse(t *testing.T, lines ...string) []*probedef.Def {
	t.Helper()
	var defs []*probedef.Def
	for _, l := range lines {
		d, err := probedef.Parse(l)
		if err != nil {
			t.Fatal(err)
		}
		defs = append(defs, d)
	}
	return defs
}
