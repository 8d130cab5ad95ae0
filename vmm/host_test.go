package vmm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDetectHostAndCmdline(t *testing.T) {
	dir := t.TempDir()
	if DetectHost(dir).Emulating {
		t.Fatal("empty /sys/module detected as emulating")
	}
	hw := DetectHost(dir).Cmdline("nokaslr", " ")
	if hw != BaseCmdline+" nokaslr" {
		t.Fatalf("hardware cmdline = %q", hw)
	}
	if err := os.Mkdir(filepath.Join(dir, "kvm_pvm"), 0o755); err != nil {
		t.Fatal(err)
	}
	h := DetectHost(dir)
	if !h.Emulating {
		t.Fatal("kvm_pvm present but not detected")
	}
	c := h.Cmdline("hvprobe_wl=calls:3")
	for _, want := range []string{"noxsave", "clearcpuid=cx16,smap,popcnt", "reboot=k", "panic=-1", "nowatchdog"} {
		if !strings.Contains(c, want) {
			t.Errorf("emulating-KVM cmdline lacks %q: %s", want, c)
		}
	}
	if !strings.HasSuffix(c, " hvprobe_wl=calls:3") {
		t.Errorf("extra args must come last (they override): %s", c)
	}
}
