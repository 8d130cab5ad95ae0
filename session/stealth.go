package session

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hvprobe/hvprobe/kprobes"
	"github.com/hvprobe/hvprobe/probedef"
	"github.com/hvprobe/hvprobe/vmm"
)

// ErrStealth: a probe line cannot be armed as a stealth probe.
var ErrStealth = errors.New("stealth probe")

// StealthHost refuses stealth probes where this host's KVM does not
// deliver hardware breakpoint exits: armed there, they would never fire.
func StealthHost(caps vmm.WatchCaps) error {
	if !caps.HWExecute {
		return fmt.Errorf("%w: this host's KVM does not deliver hardware breakpoint exits (docs/QUIRKS.md #18, #37)", ErrStealth)
	}
	return nil
}

// MaxStealth is how many stealth probes fit: one debug register each.
const MaxStealth = 4

// Stealth is a p line armed as a hardware execute breakpoint (Def.Stealth)
// in one debug-register slot of every vCPU: guest memory is not changed,
// so a guest that reads its own text sees its own bytes. Its hits give
// the same events as the int3 probe; the instruction runs natively (the
// VMM steps over it with its breakpoints off).
type Stealth struct {
	Def  *probedef.Def
	VA   uint64
	dr   drSlot
	env  *eventEnv
	emit func(probedef.Event)
	hits atomic.Uint64
}

// Hits is how many times a vCPU reached the probed instruction.
func (p *Stealth) Hits() uint64 { return p.hits.Load() }

// stealthSet is the session's debug-register slots in use, by stealth
// probes and by read/write watches.
type stealthSet struct {
	armMu sync.Mutex // serializes arming and removal; held while vCPUs pause
	hook  bool       // the VM's hardware-breakpoint hook is installed (armMu)
	mu    sync.Mutex // guards slots, which the hook reads on vCPU threads
	slots [MaxStealth]drUser
}

// drUser is what holds a debug-register slot: it turns the slot's hits
// into events.
type drUser interface {
	fire(cpu vmm.CPU, ev vmm.HWBreakEvent, now time.Time)
}

// drSlot is one debug-register slot on every vCPU, for a user.
type drSlot struct {
	s    *Session
	slot int
	bp   vmm.HWBreakpoint
	// armed and removed change under stealthSet.armMu.
	armed, removed bool
}

// take finds a free slot for u.
func (d *drSlot) take(u drUser) error {
	d.slot = -1
	d.s.stealth.mu.Lock()
	defer d.s.stealth.mu.Unlock()
	for i, q := range d.s.stealth.slots {
		if q == nil {
			d.slot = i
			d.s.stealth.slots[i] = u
			return nil
		}
	}
	return fmt.Errorf("%w: all %d debug registers are taken", ErrStealth, MaxStealth)
}

func (d *drSlot) free(u drUser) {
	d.s.stealth.mu.Lock()
	if d.s.stealth.slots[d.slot] == u {
		d.s.stealth.slots[d.slot] = nil
	}
	d.s.stealth.mu.Unlock()
}

// arm sets the slot on every vCPU, or on none.
func (d *drSlot) arm(u drUser) error {
	s := d.s
	s.stealth.armMu.Lock()
	defer s.stealth.armMu.Unlock()
	if d.removed {
		return nil
	}
	if !s.stealth.hook {
		s.VM.SetHWBreakHook(hwHook{s})
		s.stealth.hook = true
	}
	for cpu := range s.VM.NumCPUs() {
		if err := s.VM.SetHWBreakpoint(cpu, d.slot, d.bp); err != nil {
			d.clear(cpu)
			if !errors.Is(err, vmm.ErrOwnThread) {
				d.free(u)
			}
			return err
		}
	}
	d.armed = true
	return nil
}

// clear frees the slot on vCPUs [0, n).
func (d *drSlot) clear(n int) error {
	var errs []error
	for cpu := range n {
		errs = append(errs, d.s.VM.ClearHWBreakpoint(cpu, d.slot))
	}
	return errors.Join(errs...)
}

// remove disarms the slot everywhere and frees it.
func (d *drSlot) remove(u drUser) error {
	d.s.stealth.armMu.Lock()
	defer d.s.stealth.armMu.Unlock()
	d.removed = true
	var err error
	if d.armed {
		d.armed = false
		err = d.clear(d.s.VM.NumCPUs())
	}
	d.free(u)
	return err
}

// addStealth arms a p line in a free debug-register slot. The location
// must pass the same checks as an int3 probe (kernel text, an
// instruction boundary); a fifth probe is refused.
func (s *Session) addStealth(a *Attached, env *eventEnv, d *probedef.Def, emit func(probedef.Event)) (*Stealth, error) {
	if d.Kind != probedef.Probe {
		return nil, fmt.Errorf("%w: only p lines can be stealth probes (a %s line rewrites what the guest can read)", ErrStealth, d.Kind)
	}
	caps, err := s.VM.WatchCaps()
	if err != nil {
		return nil, err
	}
	if err := StealthHost(caps); err != nil {
		return nil, fmt.Errorf("%s: %w", d, err)
	}
	va, err := defAddr(a.Kernel.Resolve, d)
	if err != nil {
		return nil, err
	}
	if _, err := kprobes.Check(a.Kernel, va, d.String()); err != nil && !errors.Is(err, kprobes.ErrNotYetPatched) {
		return nil, err
	}
	p := &Stealth{Def: d, VA: va, env: env, emit: emit,
		dr: drSlot{s: s, bp: vmm.HWBreakpoint{Kind: vmm.HWExecute, Addr: va, Len: 1}}}
	if err := p.dr.take(p); err != nil {
		return nil, err
	}
	if err := s.onOtherThread(func() error { return p.dr.arm(p) }, d.String()); err != nil {
		p.dr.free(p)
		return nil, err
	}
	return p, nil
}

// Remove disarms the probe and frees its debug register.
func (p *Stealth) Remove() error { return p.dr.remove(p) }

func (p *Stealth) fire(cpu vmm.CPU, ev vmm.HWBreakEvent, now time.Time) {
	if ev.Kind != vmm.HWExecute || ev.RIP != p.VA {
		return
	}
	p.hits.Add(1)
	regs, err := cpu.Regs()
	p.emit(p.env.eventAt(p.Def, ev.CPU, regs, err, now, p.VA, nil))
}

type hwHook struct{ s *Session }

// HandleHWBreak gives a slot's hit to the stealth probe or watch that
// holds the slot.
func (h hwHook) HandleHWBreak(cpu vmm.CPU, ev vmm.HWBreakEvent) {
	now := time.Now()
	h.s.stealth.mu.Lock()
	var u drUser
	if ev.Slot >= 0 && ev.Slot < MaxStealth {
		u = h.s.stealth.slots[ev.Slot]
	}
	h.s.stealth.mu.Unlock()
	if u != nil {
		u.fire(cpu, ev, now)
	}
}

// eventAt is the event of a hit of def on vCPU cpuID with registers regs
// (regsErr if they could not be read), at host time now, shown at where;
// extra adds to the evaluation context (a watch's address and old bytes).
func (e *eventEnv) eventAt(def *probedef.Def, cpuID int, regs vmm.Regs, regsErr error, now time.Time, where uint64, extra func(*probedef.Context)) probedef.Event {
	comm, pid := e.current(cpuID)
	return e.eventFor(def, cpuID, comm, pid, regs, regsErr, now, where, extra)
}

// eventFor is eventAt with the task (comm, pid) already known.
func (e *eventEnv) eventFor(def *probedef.Def, cpuID int, comm string, pid int, regs vmm.Regs, regsErr error, now time.Time, where uint64, extra func(*probedef.Context)) probedef.Event {
	ev := probedef.Event{Def: def, Comm: comm, PID: pid, CPU: cpuID,
		Time: e.s.sinceLocked(now), Where: e.k.Syms.FormatAddr(where)}
	if regsErr != nil {
		ev.Values = []probedef.Value{{Name: "error", Type: probedef.Type{Base: probedef.String}, Str: regsErr.Error()}}
		return ev
	}
	ev.IRQsOff = regs.RFLAGS&vmm.FlagIF == 0
	ctx := &probedef.Context{Regs: regs, CS: 0x10, SS: 0x18, Mem: e.k, Syms: e, Task: commOf(comm)}
	if extra != nil {
		extra(ctx)
	}
	vals, err := probedef.Evaluate(def, ctx)
	if err != nil {
		vals = []probedef.Value{{Name: "error", Type: probedef.Type{Base: probedef.String}, Str: err.Error()}}
	}
	ev.Values = vals
	return ev
}
