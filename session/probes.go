package session

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"golang.org/x/arch/x86/x86asm"

	"github.com/hvprobe/hvprobe/internal/x86dec"
	"github.com/hvprobe/hvprobe/kprobes"
)

// Probe is one engine probe that the session arms for a user: exactly one
// of Kprobe, Jprobe and Kretprobe is set. The session arms it at once, or
// once the kernel has patched its text at boot, and may retire it later
// (its text freed or rewritten); every such change is a Notice.
type Probe struct {
	Name      string // as the user gave it, for notices
	Kprobe    *kprobes.Kprobe
	Jprobe    *kprobes.Jprobe
	Kretprobe *kprobes.Kretprobe
	// Fast is an exit-less probe (session/fast.go); int3 is the Kprobe
	// or Kretprobe it becomes where the instruction cannot take the jmp.
	Fast *kprobes.FastProbe
	int3 struct {
		k *kprobes.Kprobe
		r *kprobes.Kretprobe
	}
}

func (p *Probe) register(m *kprobes.Manager) error {
	switch {
	case p.Kprobe != nil:
		return m.Register(p.Kprobe)
	case p.Jprobe != nil:
		return m.RegisterJprobe(p.Jprobe)
	case p.Kretprobe != nil:
		return m.RegisterKretprobe(p.Kretprobe)
	case p.Fast != nil:
		return m.RegisterFast(p.Fast)
	}
	return fmt.Errorf("probe %s: %w", p.Name, kprobes.ErrBadProbe)
}

func (p *Probe) unregister(m *kprobes.Manager) error {
	switch {
	case p.Kprobe != nil:
		return m.Unregister(p.Kprobe)
	case p.Jprobe != nil:
		return m.UnregisterJprobe(p.Jprobe)
	case p.Fast != nil:
		return m.UnregisterFast(p.Fast)
	}
	return m.UnregisterKretprobe(p.Kretprobe)
}

// owns reports whether one of the registered values is p's.
func (p *Probe) owns(owners []any) bool {
	for _, o := range owners {
		if o == any(p.Kprobe) || o == any(p.Jprobe) || o == any(p.Kretprobe) || o == any(p.Fast) {
			return true
		}
	}
	return false
}

// Addr is where the probe is armed (0 before it is).
func (p *Probe) Addr() uint64 { return p.addr() }

func (p *Probe) addr() uint64 {
	switch {
	case p.Kprobe != nil:
		return p.Kprobe.Addr
	case p.Jprobe != nil:
		return p.Jprobe.Addr
	case p.Fast != nil:
		return p.Fast.Addr
	}
	return p.Kretprobe.Addr
}

// NoticeKind is what happened to a probe.
type NoticeKind int

const (
	// NoticeDeferred: the probe's text is patched by the kernel at boot;
	// it is armed once that is done.
	NoticeDeferred NoticeKind = iota
	// NoticeArmed: a deferred probe is armed now.
	NoticeArmed
	// NoticeFailed: the probe could not be armed (Err says why).
	NoticeFailed
	// NoticeRetired: hvprobe removed the probe; it fires no more.
	NoticeRetired
	// NoticeRearmed: the guest rewrote the probed instruction; the probe
	// goes on, on the new one.
	NoticeRearmed
	// NoticeConsoleDropped: guest console output is being lost (told
	// once, when it first happens; Probe is "console").
	NoticeConsoleDropped
	// NoticePath: which path a probe asked to be exit-less took.
	NoticePath
	// NoticeLost: an exit-less probe's ring was full and hits were
	// counted instead of recorded (ftrace's lost events).
	NoticeLost
)

func (k NoticeKind) String() string {
	return [...]string{"deferred", "armed", "failed", "retired", "re-armed", "losing output", "path", "lost events"}[k]
}

// Notice is a change in a probe's state that its user must hear of: no
// probe stops firing, or never starts, silently.
type Notice struct {
	Kind  NoticeKind
	Probe string
	Why   string
	Err   error
}

func (n Notice) String() string {
	s := fmt.Sprintf("probe %s %s", n.Probe, n.Kind)
	if n.Why != "" {
		s += ": " + n.Why
	}
	if n.Err != nil {
		s += ": " + n.Err.Error()
	}
	return s
}

// probeSet is what the session tracks of the probes it armed.
type probeSet struct {
	mu       sync.Mutex
	armed    []*Probe
	deferred []*Probe
	// The session's own one-shot probes on boot milestones, placed (each
	// under its mutex) when a probe first needs them, so that a guest with
	// none stays unprobed.
	bootMu, initMu     sync.Mutex
	bootHook, initHook bool
}

// Arm registers p with the engine, or defers it when its text is still to
// be patched by the kernel at boot (a NoticeDeferred, then NoticeArmed or
// NoticeFailed once the kernel is done). Any other error is returned.
func (s *Session) Arm(a *Attached, p *Probe) error {
	err := s.register(a, p)
	if errors.Is(err, kprobes.ErrNotYetPatched) {
		if err := s.hookBootPatched(a); err != nil {
			return err
		}
		s.probes.mu.Lock()
		// Checked under the lock that armDeferred takes: patching may just
		// have ended.
		if a.Kernel.policy.bootDone.Load() {
			s.probes.mu.Unlock()
			return s.Arm(a, p)
		}
		s.probes.deferred = append(s.probes.deferred, p)
		s.probes.mu.Unlock()
		s.notify(Notice{Kind: NoticeDeferred, Probe: p.Name, Why: "the kernel patches its text there at boot; armed once it has"})
		return nil
	}
	if err != nil {
		return err
	}
	if a.Kernel.policy.inInit(p.addr()) {
		if err := s.hookInitFree(a); err != nil {
			return errors.Join(err, p.unregister(a.Manager))
		}
	}
	s.probes.mu.Lock()
	s.probes.armed = append(s.probes.armed, p)
	s.probes.mu.Unlock()
	return nil
}

// register registers p, an exit-less probe through registerFast.
func (s *Session) register(a *Attached, p *Probe) error {
	if p.Fast != nil {
		return s.registerFast(a.Manager, p)
	}
	return p.register(a.Manager)
}

// Disarm unregisters p, or forgets it if it is still deferred.
func (s *Session) Disarm(a *Attached, p *Probe) error {
	s.probes.mu.Lock()
	defer s.probes.mu.Unlock()
	for i, q := range s.probes.deferred {
		if q == p {
			s.probes.deferred = append(s.probes.deferred[:i], s.probes.deferred[i+1:]...)
			return nil
		}
	}
	for i, q := range s.probes.armed {
		if q == p {
			s.probes.armed = append(s.probes.armed[:i], s.probes.armed[i+1:]...)
			return p.unregister(a.Manager)
		}
	}
	return nil // retired already
}

func (s *Session) notify(n Notice) {
	if s.opts.Notify != nil {
		s.opts.Notify(n)
	}
}

// armDeferred arms the probes that waited for boot-time patching. It runs
// on the vCPU thread that finished the patching, so they are armed before
// that vCPU runs on; an exit-less probe's patch pauses the others from
// there (vmm.VM.WithAllPaused), so none of them runs its site unprobed.
func (s *Session) armDeferred(a *Attached) {
	s.probes.mu.Lock()
	a.Kernel.policy.bootDone.Store(true)
	list := s.probes.deferred
	s.probes.deferred = nil
	s.probes.mu.Unlock()
	for _, p := range list {
		s.armPatched(a, p)
	}
}

// armPatched arms a probe that waited for boot-time patching.
func (s *Session) armPatched(a *Attached, p *Probe) {
	if err := s.register(a, p); err != nil {
		s.notify(Notice{Kind: NoticeFailed, Probe: p.Name, Err: err})
		return
	}
	s.probes.mu.Lock()
	s.probes.armed = append(s.probes.armed, p)
	s.probes.mu.Unlock()
	s.notify(Notice{Kind: NoticeArmed, Probe: p.Name, Why: "the kernel has patched its text"})
}

// retireInit removes the probes in .init.text: the kernel is about to
// free it (and hand its pages to others, whose bytes an int3 would
// corrupt). Linux's own kprobes do the same (kprobe_free_init_mem).
func (s *Session) retireInit(a *Attached) {
	s.probes.mu.Lock()
	a.Kernel.policy.initFreed.Store(true)
	var keep, gone []*Probe
	for _, p := range s.probes.armed {
		if a.Kernel.policy.inInit(p.addr()) {
			gone = append(gone, p)
		} else {
			keep = append(keep, p)
		}
	}
	s.probes.armed = keep
	s.probes.mu.Unlock()
	for _, p := range gone {
		err := p.unregister(a.Manager)
		s.notify(Notice{Kind: NoticeRetired, Probe: p.Name, Why: "the kernel is freeing .init.text", Err: err})
	}
}

// Boot milestones hvprobe watches for.
const (
	// bootPatchedVar is set by alternative_instructions once every
	// boot-time text patch is applied (ftrace_init runs before it).
	bootPatchedVar = "alternatives_patched"
	bootPatchedFn  = "alternative_instructions"
	// initFreeFn frees .init.text; system_state is SYSTEM_FREEING_INITMEM
	// (2) or later from just before it runs.
	initFreeFn     = "free_initmem"
	systemStateVar = "system_state"
)

// watchBoot reads where the kernel's boot stands: whether boot-time
// patching is over and whether .init.text is freed.
func (s *Session) watchBoot(a *Attached) {
	k, pol := a.Kernel, a.Kernel.policy
	done, err := k.readU32(bootPatchedVar)
	pol.bootDone.Store(err != nil || done != 0)
	state, err := k.readU32(systemStateVar)
	pol.initFreed.Store(err == nil && state >= 2)
}

// hookBootPatched places, once, the session's probe on the store that
// ends alternative_instructions, which arms the deferred probes.
func (s *Session) hookBootPatched(a *Attached) error {
	s.probes.bootMu.Lock()
	defer s.probes.bootMu.Unlock()
	if s.probes.bootHook {
		return nil
	}
	at, err := s.bootPatchedStore(a.Kernel)
	if err != nil {
		return fmt.Errorf("finding the end of the kernel's boot-time patching: %w", err)
	}
	hook := &kprobes.Kprobe{Addr: at}
	hook.PreHandler = func(*kprobes.Context) bool {
		s.armDeferred(a)
		go a.Manager.Unregister(hook) // one-shot; not from its own hit
		return false
	}
	if err := a.Manager.Register(hook); err != nil {
		return fmt.Errorf("watching for the end of boot-time patching: %w", err)
	}
	s.probes.bootHook = true
	return nil
}

// hookInitFree places, once, the session's probe on free_initmem, which
// retires the probes in .init.text.
func (s *Session) hookInitFree(a *Attached) error {
	s.probes.initMu.Lock()
	defer s.probes.initMu.Unlock()
	if s.probes.initHook {
		return nil
	}
	hook := &Probe{Name: "hvprobe's " + initFreeFn + " watch", Kprobe: &kprobes.Kprobe{Symbol: initFreeFn}}
	hook.Kprobe.PreHandler = func(*kprobes.Context) bool {
		s.retireInit(a)
		go s.Disarm(a, hook) // one-shot; not from its own hit
		return false
	}
	if err := s.Arm(a, hook); err != nil {
		return fmt.Errorf("watching for the kernel freeing .init.text: %w", err)
	}
	s.probes.initHook = true
	return nil
}

// bootPatchedStore finds the instruction of alternative_instructions that
// sets alternatives_patched: when it runs, every boot-time patch is in.
// The function's entry is itself patched at boot (ftrace's mcount call),
// so the hook sits on this plain store instead.
func (s *Session) bootPatchedStore(k *RunningKernel) (uint64, error) {
	fn, err := k.Syms.Lookup(bootPatchedFn)
	if err != nil {
		return 0, err
	}
	flag, err := k.Syms.Lookup(bootPatchedVar)
	if err != nil {
		return 0, err
	}
	size := fn.Size
	if size == 0 || size > 64<<10 {
		size = 4096
	}
	code := make([]byte, size)
	if err := k.ReadVirt(fn.Addr, code); err != nil {
		return 0, err
	}
	for pos := 0; pos < len(code); {
		inst, err := x86dec.Decode(code[pos:])
		if err != nil {
			return 0, fmt.Errorf("%s+%#x does not decode", bootPatchedFn, pos)
		}
		if m, ok := inst.Args[0].(x86asm.Mem); ok && inst.Op == x86asm.MOV && m.Base == x86asm.RIP {
			// x86asm leaves a %rip-relative disp32 unextended.
			next := fn.Addr + uint64(pos+inst.Len)
			if next+uint64(int64(int32(m.Disp))) == flag.Addr {
				return fn.Addr + uint64(pos), nil
			}
		}
		pos += inst.Len
	}
	return 0, fmt.Errorf("no store to %s in %s", bootPatchedVar, bootPatchedFn)
}

func (k *RunningKernel) readU32(sym string) (uint32, error) {
	va, err := k.Resolve(sym, 0)
	if err != nil {
		return 0, err
	}
	var b [4]byte
	if err := k.ReadVirt(va, b[:]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b[:]), nil
}
