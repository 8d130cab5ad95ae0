// Package kvmtest holds the one rule every test that needs KVM follows:
// skip when /dev/kvm is absent, unless HVPROBE_REQUIRE_KVM is set (CI sets
// it), in which case fail. A suite can then never pass by skipping
// everything on a machine that should have run it.
package kvmtest

import (
	"os"
	"testing"
)

// Device is the KVM device node tests need.
const Device = "/dev/kvm"

// EnvRequire names the variable that turns a missing KVM into a failure.
const EnvRequire = "HVPROBE_REQUIRE_KVM"

// RequireKVM skips or fails t when KVM is not usable.
func RequireKVM(t testing.TB) {
	t.Helper()
	if msg, ok := check(Device, os.Getenv(EnvRequire)); !ok {
		t.Fatal(msg)
	} else if msg != "" {
		t.Skip(msg)
	}
}

// check returns ("", true) when dev is usable, (msg, true) to skip and
// (msg, false) to fail.
func check(dev, require string) (string, bool) {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err == nil {
		f.Close()
		return "", true
	}
	msg := dev + " is not usable (" + err.Error() + ")"
	if require != "" && require != "0" {
		return msg + "; " + EnvRequire + " is set, so this is a failure", false
	}
	return msg + "; skipping (set " + EnvRequire + "=1 to fail instead)", true
}
