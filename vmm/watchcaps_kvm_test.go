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
	t.Setenv(EnvHWBreak, "none")
	if c, err := DetectWatchCaps(kvmtest.Device); err != nil || c.HWExecute || c.HWData {
		t.Errorf("%s=none: %+v %v", EnvHWBreak, c, err)
	}
	t.Setenv(EnvHWBreak, "bogus")
	if _, err := DetectWatchCaps(kvmtest.Device); err == nil {
		t.Errorf("%s=bogus accepted", EnvHWBreak)
	}
}
