package session

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/hvprobe/hvprobe/guest"
	"github.com/hvprobe/hvprobe/kprobes"
)

// textPolicy is hvprobe's rule for text the kernel rewrites itself, class
// by class (ARCHITECTURE.md, "Text the kernel patches"):
//   - jump labels, static-call sites and trampolines are rewritten while
//     the kernel runs: refused, as Linux's jump_label_text_reserved and
//     static_call_text_reserved refuse them;
//   - alternatives, retpolines, return thunks, paravirt sites, SMP lock
//     prefixes, sealed endbrs and ftrace's mcount calls are rewritten once
//     at boot (ftrace_init, then alternative_instructions): a probe on one
//     waits until that is over and is then armed on the final
//     instruction; a probe starting inside one is refused while the
//     boundary is not yet known;
//   - ftrace's mcount nops change only when the guest itself turns ftrace
//     on for that function: armed (the guest's ftrace then meets the int3,
//     docs/QUIRKS.md);
//   - .exit.text never runs and .init.text is freed once the kernel has
//     booted: refused, but for .init.text probes given before that.
type textPolicy struct {
	sites *guest.PatchSites // link-time addresses
	slide uint64
	// bootDone: the kernel has finished patching its text at boot.
	bootDone atomic.Bool
	// initFreed: .init.text is gone (or going).
	initFreed atomic.Bool
}

func newTextPolicy(k *guest.Kernel, slide uint64) (*textPolicy, error) {
	sites, err := k.PatchSites()
	if err != nil {
		return nil, fmt.Errorf("reading the kernel's patch-site tables: %w", err)
	}
	return &textPolicy{sites: sites, slide: slide}, nil
}

// reserved implements kprobes.Kernel.Reserved.
func (p *textPolicy) reserved(va, n uint64) error {
	a := va - p.slide
	if sec, ok := p.sites.Discarded(a); ok {
		switch {
		case sec != ".init.text":
			return kprobes.Reserved(kprobes.ErrPatchedText, "in %s, which the kernel discards without running", sec)
		case p.initFreed.Load():
			return kprobes.Reserved(kprobes.ErrPatchedText, "in .init.text, which the kernel has freed")
		}
	}
	for _, s := range p.sites.Overlapping(a, n) {
		if err := p.judge(s, a, n); err != nil {
			return err
		}
	}
	return nil
}

func (p *textPolicy) judge(s guest.PatchSite, a, n uint64) error {
	where := s.Class.String()
	if s.KeyName != "" {
		where += " (key " + s.KeyName + ")"
	}
	switch {
	case s.Class == guest.JumpLabel || s.Class == guest.StaticCall || s.Class == guest.StaticCallTrampoline:
		return kprobes.Reserved(kprobes.ErrPatchedText, "a %s site at %#x+%d, which the kernel rewrites while it runs", where, s.Addr+p.slide, s.Len)
	case s.Class == guest.Mcount && !s.Call:
		return nil // a nop that only the guest's own ftrace use rewrites
	case p.bootDone.Load():
		return nil // patched for good; the bytes read now are final
	case a == s.Addr:
		if err := p.judgeVariant(s); err != nil {
			return err
		}
		return kprobes.Reserved(kprobes.ErrNotYetPatched, "a %s site the kernel rewrites at boot; armed once it has", where)
	case s.Addr > a && s.Addr+s.Len <= a+n:
		return kprobes.Reserved(kprobes.ErrNotYetPatched, "a %s site the kernel rewrites at boot; armed once it has", where)
	}
	return kprobes.Reserved(kprobes.ErrPatchedText, "inside a %s site at %#x+%d that the kernel rewrites at boot, so its instruction boundaries are not known yet; probe %#x",
		where, s.Addr+p.slide, s.Len, s.Addr+p.slide)
}

// judgeVariant refuses a probe on an alternative's first byte before boot
// if the replacement the kernel may patch in there cannot be armed, so
// that no CPU's choice of variant makes the probe fail after boot. The
// replacement is judged as apply_alternatives leaves it: copied over the
// site, the rest padded with nops. The other boot-time classes patch in a
// fixed set of instructions (indirect call or jmp through a register,
// lfence, ret, int3, nops, a ds prefix, native cli/sti/pushf/popf/mov
// %cr), each of which the engine executes (TestBootVariantsArm).
func (p *textPolicy) judgeVariant(s guest.PatchSite) error {
	if s.Class != guest.Alternative || len(s.Repl) == 0 {
		return nil
	}
	var re *kprobes.ReservedError
	if _, err := kprobes.CheckCode(s.Replaced()); errors.As(err, &re) {
		return kprobes.Reserved(re.Kind, "an alternative site at %#x+%d whose replacement (% x) the kernel patches in at boot on CPUs with the feature: %v",
			s.Addr+p.slide, s.Len, s.Repl, re.Reason)
	}
	return nil
}

func (p *textPolicy) hasFixup(va uint64) bool { return p.sites.HasFixup(va - p.slide) }

func (p *textPolicy) entered(va, n uint64) bool { return p.sites.Entered(va-p.slide, n) }

// inInit reports whether va is in .init.text.
func (p *textPolicy) inInit(va uint64) bool {
	sec, ok := p.sites.Discarded(va - p.slide)
	return ok && sec == ".init.text"
}
