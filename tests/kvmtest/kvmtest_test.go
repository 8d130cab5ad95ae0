package kvmtest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "kvm")
	if msg, ok := check(missing, ""); !ok || !strings.Contains(msg, "skipping") {
		t.Errorf("absent, not required: %q %v, want skip", msg, ok)
	}
	if msg, ok := check(missing, "1"); ok || !strings.Contains(msg, "failure") {
		t.Errorf("absent, required: %q %v, want failure", msg, ok)
	}
	if _, ok := check(missing, "0"); !ok {
		t.Error("HVPROBE_REQUIRE_KVM=0 must not require KVM")
	}
	present := filepath.Join(t.TempDir(), "kvm")
	if err := os.WriteFile(present, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if msg, ok := check(present, "1"); !ok || msg != "" {
		t.Errorf("present: %q %v, want usable", msg, ok)
	}
}
