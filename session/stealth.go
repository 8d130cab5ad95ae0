package session

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hvprobe/hvprobe/kprobes"
	"github.com/hvprobe/hvprobe/kprobes/probedef"
	"github.com/hvprobe/hvprobe/vmm"
)

// ErrStealth: a probe line cannot be armed as a stealth probe.
var ErrStealth = errors.New("stealth probe")

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
	slot int
	s    *Session
	env  *eventEnv
	emit func(probedef.Event)
	hits atomic.Uint64
	// armed and removed change under stealthSet.armMu.
	armed, removed bool
}

// Hits is how many times a vCPU reached the probed instruction.
func (p *Stealth) Hits() uint64 { return p.hits.Load() }

// stealthSet is the session's debug-register slots in use.
type stealthSet struct {
	armMu sync.Mutex // serializes arming and removal; held while vCPUs pause
	hook  bool       // the VM's hardware-breakpoint hook is installed (armMu)
	mu    sync.Mutex // guards slots, which the hook reads on vCPU threads
	slots [MaxStealth]*Stealth
}

// addStealth arms a p line in a free debug-register slot. The location
// must pass the same checks as an int3 probe (kernel text, an
// instruction boundary); a fifth probe is refused.
func (s *Session) addStealth(a *Attached, env *eventEnv, d *probedef.Def, emit func(probedef.Event)) (*Stealth, error) {
	if d.Kind != probedef.Probe {
		return nil, fmt.Errorf("%w: only p lines can be stealth probes (a %s line rewrites what the guest can read)", ErrStealth, d.Kind)
	}
	va := d.Addr
	if d.Symbol != "" {
		sym, err := a.Kernel.Resolve(d.Symbol, 0)
		if err != nil {
			return nil, err
		}
		va = sym + d.Offset
	}
	if _, err := kprobes.Check(a.Kernel, va, d.String()); err != nil && !errors.Is(err, kprobes.ErrNotYetPatched) {
		return nil, err
	}
	p := &Stealth{Def: d, VA: va, s: s, env: env, emit: emit, slot: -1}
	s.stealth.mu.Lock()
	for i, q := range s.stealth.slots {
		if q == nil {
			p.slot = i
			s.stealth.slots[i] = p
			break
		}
	}
	s.stealth.mu.Unlock()
	if p.slot < 0 {
		return nil, fmt.Errorf("%w: all %d debug registers are taken", ErrStealth, MaxStealth)
	}
	if err := s.onOtherThread(p.arm, d.String()); err != nil {
		p.free()
		return nil, err
	}
	return p, nil
}

func (p *Stealth) free() {
	p.s.stealth.mu.Lock()
	if p.s.stealth.slots[p.slot] == p {
		p.s.stealth.slots[p.slot] = nil
	}
	p.s.stealth.mu.Unlock()
}

// arm sets the slot on every vCPU, or on none.
func (p *Stealth) arm() error {
	s := p.s
	s.stealth.armMu.Lock()
	defer s.stealth.armMu.Unlock()
	if p.removed {
		return nil
	}
	if !s.stealth.hook {
		s.VM.SetHWBreakHook(hwHook{s})
		s.stealth.hook = true
	}
	bp := vmm.HWBreakpoint{Kind: vmm.HWExecute, Addr: p.VA, Len: 1}
	for cpu := range s.VM.NumCPUs() {
		if err := s.VM.SetHWBreakpoint(cpu, p.slot, bp); err != nil {
			p.clear(cpu)
			if !errors.Is(err, vmm.ErrOwnThread) {
				p.free()
			}
			return err
		}
	}
	p.armed = true
	return nil
}

// clear frees the slot on vCPUs [0, n).
func (p *Stealth) clear(n int) error {
	var errs []error
	for cpu := range n {
		errs = append(errs, p.s.VM.ClearHWBreakpoint(cpu, p.slot))
	}
	return errors.Join(errs...)
}

// Remove disarms the probe and frees its debug register.
func (p *Stealth) Remove() error {
	s := p.s
	s.stealth.armMu.Lock()
	defer s.stealth.armMu.Unlock()
	p.removed = true
	var err error
	if p.armed {
		p.armed = false
		err = p.clear(s.VM.NumCPUs())
	}
	p.free()
	return err
}

type hwHook struct{ s *Session }

// HandleHWBreak turns a stealth probe's hit into its event.
func (h hwHook) HandleHWBreak(cpu vmm.CPU, ev vmm.HWBreakEvent) {
	now := time.Now()
	h.s.stealth.mu.Lock()
	var p *Stealth
	if ev.Slot >= 0 && ev.Slot < MaxStealth {
		p = h.s.stealth.slots[ev.Slot]
	}
	h.s.stealth.mu.Unlock()
	if p == nil || ev.Kind != vmm.HWExecute || ev.RIP != p.VA {
		return
	}
	p.hits.Add(1)
	regs, err := cpu.Regs()
	p.emit(p.env.eventAt(p.Def, ev.CPU, regs, err, now, p.VA, nil))
}

// eventAt is the event of a hit of def on vCPU cpuID with registers regs
// (regsErr if they could not be read), at host time now, shown at where;
// extra adds to the evaluation context (a watch's address and old bytes).
func (e *eventEnv) eventAt(def *probedef.Def, cpuID int, regs vmm.Regs, regsErr error, now time.Time, where uint64, extra func(*probedef.Context)) probedef.Event {
	comm, pid := e.current(cpuID)
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
