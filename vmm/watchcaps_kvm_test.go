//go:build kvm

package vmm

import (
	"os"
	"testing"

	"github.com/hvprobe/hvprobe/tests/kvmtest"
)

// TestDetectWatchCaps: the probe's answer on this host; on PVM it is
// execute breakpoints and read-only memslots, no data watchpoints
// (docs/QUIRKS.md #36-#38).
func TestDetectWatchCaps(t *testing.T) {
	kvmtest.RequireKVM(t)
	t.Setenv(EnvHWBreak, "")
	c, err := DetectWatchCaps(kvmtest.Device)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("watch caps: %+v", c)
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil {
		if c != (WatchCaps{HWExecute: true, HWData: false, ReadonlyMem: true}) {
			t.Errorf("PVM: %+v, want execute breakpoints and read-only memslots only", c)
		}
	}
	if os.Getenv("HVPROBE_NESTED") == "1" && (c.HWExecute || c.HWData) {
		t.Errorf("the nested KVM: %+v, but QEMU TCG fires no debug registers (docs/QUIRKS.md #18)", c)
	}
	t.Setenv(EnvHWBreak, "none")
	if c, err := DetectWatchCaps(kvmtest.Device); err != nil || c.HWExecute || c.HWData {
		t.Errorf("%s=none: %+v %v", EnvHWBreak, c, err)
	}
	t.Setenv(EnvHWBreak, "bogus")
	if _, err := DetectWatchCaps(kvmtest.Device); err == nil {
		t.Errorf("%s=bogus accepted", EnvHWBreak)
	}
}

// requireHWExec skips a test of debug-register exits on a host whose KVM
// delivers none (the nested KVM, docs/QUIRKS.md #18), as DetectWatchCaps
// finds; TestDetectWatchCaps checks that finding.
func requireHWExec(t *testing.T) {
	t.Helper()
	kvmtest.RequireKVM(t)
	c, err := DetectWatchCaps(kvmtest.Device)
	if err != nil {
		t.Fatal(err)
	}
	if !c.HWExecute {
		t.Skipf("this host's KVM delivers no debug-register exits (%+v; docs/QUIRKS.md #18)", c)
	}
}
