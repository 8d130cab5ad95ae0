package e2e

import (
	"errors"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// runCLI runs the hvprobe binary and returns its combined output and
// exit status.
func runCLI(t *testing.T, args ...string) (string, int) {
	t.Helper()
	out, err := exec.Command(hvprobeBinary(t), args...).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return string(out), 0
}

// TestListShowCheck: list, show and check answer from Debian's stock
// image without booting, and a wildcard line expands to every match.
func TestListShowCheck(t *testing.T) {
	_, img, smap := openStock(t) // no KVM needed: nothing boots
	files := []string{"--kernel", img, "--system-map", smap}

	out, code := runCLI(t, append([]string{"list", "vfs_*", "-v"}, files...)...)
	if code != 0 || !regexp.MustCompile(`(?m)^vfs_read\tint3, armed once the kernel has patched this site at boot$`).MatchString(out) ||
		!strings.Contains(out, "\tssize_t vfs_read(struct file *file, char *buf, size_t count, loff_t *pos)") {
		t.Errorf("list vfs_* -v: exit %d:\n%.2000s", code, out)
	}
	n := strings.Count(out, "\nvfs_") + 1
	if out, code := runCLI(t, append([]string{"list", "amd_uncore_exit"}, files...)...); code != 0 || !strings.Contains(out, "refused: ") || !strings.Contains(out, ".exit.text") {
		t.Errorf("list amd_uncore_exit: exit %d: %s", code, out)
	}
	if out, code := runCLI(t, append([]string{"list", "no_such_fn_*"}, files...)...); code != 2 {
		t.Errorf("list of nothing: exit %d, want 2: %s", code, out)
	}

	out, code = runCLI(t, append([]string{"show", "vfs_read"}, files...)...)
	if code != 0 || !strings.HasPrefix(out, "ssize_t vfs_read(") || !strings.Contains(out, "  +0x0 ") || !strings.Contains(out, "push %r15") {
		t.Errorf("show vfs_read: exit %d:\n%.1500s", code, out)
	}

	out, code = runCLI(t, append([]string{"check", "--probe", "p:vfs/ vfs_*"}, files...)...)
	m := regexp.MustCompile(`p:vfs/ vfs_\*: (\d+) functions match, (\d+) probed, (\d+) refused`).FindStringSubmatch(out)
	if code != 0 || m == nil {
		t.Fatalf("check p:vfs/ vfs_*: exit %d:\n%.2000s", code, out)
	}
	match, probed, _ := atoi(m[1]), atoi(m[2]), atoi(m[3])
	if match != n || probed == 0 || strings.Count(out, "hvprobe: p:vfs/p_vfs_") != probed {
		t.Errorf("%d matches (list showed %d), %d probed, %d per-probe lines", match, n, probed, strings.Count(out, "hvprobe: p:vfs/p_vfs_"))
	}
	if out, code := runCLI(t, append([]string{"check", "--probe", "p:x no_such_fn_*"}, files...)...); code != 2 || !strings.Contains(out, `no function matches "no_such_fn_*"`) {
		t.Errorf("check of a pattern matching nothing: exit %d: %s", code, out)
	}
	if out, code := runCLI(t, append([]string{"check", "--probe", "p:past vfs_read+0x1000"}, files...)...); code != 2 || !strings.Contains(out, "past the end of vfs_read") {
		t.Errorf("check past the end: exit %d: %s", code, out)
	}
	// A data address is placed in its symbol.
	if out, code := runCLI(t, append([]string{"check", "--probe", "p:data jiffies_64+8"}, files...)...); code != 2 || !strings.Contains(out, "is not in kernel text: it is in jiffies_64+0x8/") {
		t.Errorf("check of a data address: exit %d: %s", code, out)
	}
	// An exception entry has the CPU's frame at %rsp, not a return
	// address: a return probe there would overwrite the interrupted rip.
	if out, code := runCLI(t, append([]string{"check", "--probe", "r:bp asm_exc_int3", "--probe", "p:bp2 asm_exc_int3"}, files...)...); code != 2 ||
		!strings.Contains(out, "asm_exc_int3 is in .entry.text") || strings.Contains(out, "p:bp2") {
		t.Errorf("check of a return probe on an exception entry: exit %d: %s", code, out)
	}
}

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }
