package guest

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/ianlancetaylor/demangle"
)

// ParseSymbolOffset splits a location "sym", "sym+0x10", "sym+16" or
// "sym:2+0x10" into the symbol name and the offset. A plain hex address
// ("0xffffffff81000000" or "ffffffff81000000") yields name "" and the
// address as off.
func ParseSymbolOffset(s string) (name string, off uint64, err error) {
	bad := func(msg string) error {
		return fmt.Errorf("location %q: %s: %w", s, msg, ErrSyntax)
	}
	if s == "" {
		return "", 0, bad("empty")
	}
	if strings.ContainsAny(s, " \t\n") {
		return "", 0, bad("contains white space")
	}
	if h, ok := strings.CutPrefix(s, "0x"); ok {
		a, err := strconv.ParseUint(h, 16, 64)
		if err != nil {
			return "", 0, bad("bad hex address")
		}
		return "", a, nil
	}
	name, offs, hasOff := strings.Cut(s, "+")
	if name == "" {
		return "", 0, bad("missing symbol name")
	}
	if !hasOff {
		// Bare hex of a full 64-bit kernel address, as copied from a log.
		if len(s) == 16 {
			if a, err := strconv.ParseUint(s, 16, 64); err == nil {
				return "", a, nil
			}
		}
		return name, 0, nil
	}
	off, err = strconv.ParseUint(offs, 0, 64)
	if err != nil {
		return "", 0, bad(fmt.Sprintf("bad offset %q", offs))
	}
	return name, off, nil
}

// Demangle returns the readable form of a Rust symbol (v0 "_R..." or
// legacy "_ZN...E"), or name unchanged when it is not one or does not
// demangle. The legacy hash suffix ("::h0123...") is dropped.
func Demangle(name string) string {
	if !strings.HasPrefix(name, "_R") && !strings.HasPrefix(name, "_ZN") {
		return name
	}
	out, err := demangle.ToString(name, demangle.NoClones)
	if err != nil {
		return name
	}
	return out
}
