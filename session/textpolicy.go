package session

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/hvprobe/hvprobe/internal/x86dec"
	"golang.org/x/arch/x86/x86asm"

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
//     booted: refused, but for .init.text probes given before that;
//   - the syscall entry and exit where the kernel still (or again) runs
//     on the user's stack: refused (userStackWindows).
//
// The rest of what Linux refuses to probe (.entry.text, .noinstr.text,
// NOKPROBE_SYMBOL functions) is allowed: Linux refuses it because its
// kprobe handlers run in the guest, in that context, and would recurse
// or run on a half-set-up CPU state. hvprobe's handlers run on the host,
// and a hit there is a VM exit (or the doorbell's one out), which needs
// nothing of the guest's state but a stack for the exception frame where
// int3 is reflected.
type textPolicy struct {
	sites *guest.PatchSites // link-time addresses
	slide uint64
	// userStack are link-time [lo, hi) ranges refused because the kernel
	// runs there on the user's stack.
	userStack [][2]uint64
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
	return &textPolicy{sites: sites, slide: slide, userStack: userStackWindows(k)}, nil
}

// userStackWindows are the instructions of the 64-bit syscall entry and
// exit that run in ring 0 on the user's %rsp: entry_SYSCALL_64 and
// entry_SYSCALL_compat up to the mov that loads the kernel stack (64
// bytes at most; the whole function if none is found there), and
// entry_SYSRET*_unsafe_stack, after the kernel has put the user's %rsp
// back. An int3 that reaches the guest's IDT there (a host that reflects
// int3 to the guest, docs/QUIRKS.md #17) pushes its frame onto user
// memory: a fault under SMAP, a double fault, a dead guest. Linux refuses
// all of .entry.text; this is the part where no kprobe can be made safe
// from outside.
func userStackWindows(k *guest.Kernel) [][2]uint64 {
	var out [][2]uint64
	for _, name := range []string{"entry_SYSCALL_64", "entry_SYSCALL_compat"} {
		sym, err := k.Symbols.Lookup(name)
		if err != nil {
			continue
		}
		end := sym.Addr + sym.Size
		code, ok := k.Image.ReadVirt(sym.Addr, 64)
		for off := 0; ok && off < len(code); {
			in, err := x86dec.Decode(code[off:])
			if err != nil {
				break
			}
			off += in.Len
			// The stack switch loads %rsp from the per-CPU top of stack;
			// under PTI %rsp is a scratch register for %cr3 before it.
			if m, isMem := in.Args[1].(x86asm.Mem); in.Op == x86asm.MOV && in.Args[0] == x86asm.RSP && isMem && m.Segment == x86asm.GS {
				end = sym.Addr + uint64(off)
				break
			}
		}
		out = append(out, [2]uint64{sym.Addr, end})
	}
	for _, name := range []string{"entry_SYSRETQ_unsafe_stack", "entry_SYSRETL_compat_unsafe_stack"} {
		if sym, err := k.Symbols.Lookup(name); err == nil {
			out = append(out, [2]uint64{sym.Addr, sym.Addr + sym.Size})
		}
	}
	return out
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
	for _, w := range p.userStack {
		if a < w[1] && a+n > w[0] {
			return kprobes.Reserved(kprobes.ErrUnsafeContext, "runs on the user's stack (the syscall entry before its stack switch, or the exit after it): an int3 the guest's IDT takes there, where a host reflects int3, would push its frame onto user memory")
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
