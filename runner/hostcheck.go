package runner

import (
	"fmt"

	"github.com/hvprobe/hvprobe/probedef"
	"github.com/hvprobe/hvprobe/session"
	"github.com/hvprobe/hvprobe/vmm"
)

// stealthDefs marks the p: lines for debug registers and refuses what
// --stealth cannot keep out of guest memory, or more probes than the four
// registers hold, or a host whose KVM does not fire them.
func stealthDefs(defs []*probedef.Def) []string {
	var bad []string
	n := 0
	for _, d := range defs {
		switch d.Kind {
		case probedef.Probe:
			d.Stealth = true
			n++
		case probedef.Watch:
		default:
			bad = append(bad, fmt.Sprintf("hvprobe: --stealth: %s: only p: lines (and w: watches) leave guest memory as it is", d.Text))
		}
	}
	if n > session.MaxStealth {
		bad = append(bad, fmt.Sprintf("hvprobe: --stealth: %d p: lines, but the debug registers hold %d", n, session.MaxStealth))
	}
	if n > 0 {
		caps, err := vmm.DetectWatchCaps("/dev/kvm")
		if err == nil {
			err = session.StealthHost(caps)
		}
		if err != nil {
			bad = append(bad, fmt.Sprintf("hvprobe: --stealth: %v", err))
		}
	}
	return bad
}

// fastDefs marks the p: and r: lines for the exit-less path (Validate
// has refused what --fast cannot go with).
func fastDefs(defs []*probedef.Def) {
	for _, d := range defs {
		if d.Kind == probedef.Probe || d.Kind == probedef.Retprobe {
			d.Fast = true
		}
	}
}

// dataWatchHost refuses rw@ watches before boot where this host's KVM
// does not fire debug-register data watchpoints.
func dataWatchHost(defs []*probedef.Def) []string {
	var rw []*probedef.Def
	for _, d := range defs {
		if d.Kind == probedef.Watch && d.Access == probedef.AccessRW {
			rw = append(rw, d)
		}
	}
	if len(rw) == 0 {
		return nil
	}
	caps, err := vmm.DetectWatchCaps("/dev/kvm")
	if err == nil && caps.HWData {
		return nil
	}
	why := "this host's KVM does not fire data watchpoints (docs/QUIRKS.md #38); w@ watches writes in memory"
	if err != nil {
		why = err.Error()
	}
	var bad []string
	for _, d := range rw {
		bad = append(bad, fmt.Sprintf("hvprobe: %s: rw@ needs debug-register watchpoints: %s", d.Text, why))
	}
	return bad
}
