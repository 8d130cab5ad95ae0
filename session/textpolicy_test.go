package session

import (
	"errors"
	"strings"
	"testing"

	"github.com/hvprobe/hvprobe/guest"
	"github.com/hvprobe/hvprobe/kprobes"
)

// TestJudgeVariant: a probe on an alternative's first byte is refused
// before boot when the replacement cannot be armed, and deferred when it
// can (clac, the SMAP alternative that broke a run after boot).
func TestJudgeVariant(t *testing.T) {
	p := &textPolicy{slide: 0x1000}
	alt := func(repl ...byte) guest.PatchSite {
		return guest.PatchSite{Class: guest.Alternative, Addr: 0xffffffff81000000, Len: 3, Repl: repl}
	}
	for _, tc := range []struct {
		site guest.PatchSite
		want error // nil: deferred
	}{
		{alt(0x0f, 0x01, 0xca), nil},                    // clac
		{alt(), nil},                                    // nops
		{alt(0x0f, 0x04), kprobes.ErrUndecodable},       // not an instruction
		{alt(0x0f, 0x0b), kprobes.ErrUnsafeInstruction}, // ud2
		{guest.PatchSite{Class: guest.Retpoline, Addr: 0xffffffff81000000, Len: 5}, nil},
	} {
		err := p.judge(tc.site, tc.site.Addr, 3)
		if tc.want == nil {
			if !errors.Is(err, kprobes.ErrNotYetPatched) {
				t.Errorf("% x: %v, want deferred", tc.site.Repl, err)
			}
			continue
		}
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), "replacement") {
			t.Errorf("% x: %v, want %v naming the replacement", tc.site.Repl, err, tc.want)
		}
	}
}
