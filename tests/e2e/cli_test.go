package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hvprobe/hvprobe/tests/kvmtest"
)

// TestCLIJSONStream runs `hvprobe run --format json` on the mini guest:
// stdout must hold only JSON lines, one per event, with the arguments the
// workload passed (hvwl_target_add(i, 1000+i) for i < 5); the console and
// hvprobe's own lines go to stderr; the clean power-off is exit status 0.
// The same run's --record, read back by `hvprobe report`, gives that
// stdout byte for byte, and its filters and hists see the same events.
func TestCLIJSONStream(t *testing.T) {
	kvmtest.RequireKVM(t)
	bin := hvprobeBinary(t)
	kernel, sysmap, initrd := miniPaths()
	rec := filepath.Join(t.TempDir(), "rec.jsonl")
	cmd := exec.Command(bin, "run", "--kernel", kernel, "--system-map", sysmap, "--initrd", initrd,
		"--timeout", "10m", "--format", "json", "--record", rec,
		"--kprobe", "hvwl_target_add",
		"--probe", "r:ret hvwl_target_add ret=$retval:u64",
		"--cmdline-append", "hvprobe_wl=calls:5,poweroff")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	if err != nil {
		t.Fatalf("exit %v, want 0; stderr:\n%s", err, tail(stderr.String(), 30))
	}
	if !strings.Contains(stderr.String(), "Linux version") || !strings.Contains(stderr.String(), "hvprobe: kernel placed") {
		t.Errorf("the console and hvprobe's lines are not on stderr:\n%s", tail(stderr.String(), 10))
	}
	var entries, returns int
	for i, l := range strings.Split(strings.TrimRight(stdout.String(), "\n"), "\n") {
		var ev struct {
			Event string         `json:"event"`
			Args  map[string]any `json:"args"`
		}
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("stdout line %d is not JSON: %v: %q", i+1, err, l)
		}
		switch ev.Event {
		case "p_hvwl_target_add_0":
			if di, si := ev.Args["di"], ev.Args["si"]; di != hexOf(entries) || si != hexOf(1000+entries) {
				t.Errorf("call %d: di=%v si=%v, want %s and %s", entries, di, si, hexOf(entries), hexOf(1000+entries))
			}
			entries++
		case "ret":
			if ret := ev.Args["ret"]; ret != float64(2*returns+1000) {
				t.Errorf("return %d: ret=%v, want %d", returns, ret, 2*returns+1000)
			}
			returns++
		default:
			t.Errorf("stdout line %d: event %q", i+1, ev.Event)
		}
	}
	if entries != 5 || returns != 5 {
		t.Errorf("%d entry and %d return events, want 5 and 5; stdout:\n%s", entries, returns, stdout.String())
	}

	if got := runReport(t, bin, rec, "--format", "json"); got != stdout.String() {
		t.Errorf("report --format json differs from the run's stdout:\n got %s\nwant %s", got, stdout.String())
	}
	// Returns 1004, 1006 and 1008 pass the filter; the entries go to the
	// hist, one hit per di.
	got := runReport(t, bin, rec, "--filter", "ret:ret >= 1004", "--hist", "p_hvwl_target_add_0:hist:keys=di")
	var rets []string
	for _, l := range strings.Split(got, "\n") {
		if strings.Contains(l, ": ret: (") {
			rets = append(rets, l[strings.LastIndex(l, " ")+1:])
		}
	}
	if strings.Join(rets, " ") != "ret=1004 ret=1006 ret=1008" || !strings.Contains(got, "Hits: 5") || !strings.Contains(got, "Entries: 5") ||
		!strings.Contains(got, "{ di:          4 } hitcount:          1") {
		t.Errorf("report --filter --hist: returns %q; output:\n%s", rets, got)
	}
}

// runReport is `hvprobe report FILE ARGS...`'s stdout; it must exit 0.
func runReport(t *testing.T, bin, file string, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"report", file}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("hvprobe report %s %q: %v; stderr:\n%s", file, args, err, stderr.String())
	}
	return stdout.String()
}

func hexOf(n int) string { return fmt.Sprintf("%#x", n) }

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
