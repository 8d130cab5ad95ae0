package session

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/hvprobe/hvprobe/guest"
	"github.com/hvprobe/hvprobe/introspect"
	"github.com/hvprobe/hvprobe/kprobes"
	"github.com/hvprobe/hvprobe/probedef"
	"github.com/hvprobe/hvprobe/vmm"
)

// ErrProbeDef: a probe definition cannot be attached to this kernel.
var ErrProbeDef = errors.New("probe definition")

// DefProbes are the engine probes made from probe definitions.
type DefProbes struct {
	s       *Session
	a       *Attached
	probes  []*Probe
	watches []*Watch
	stealth []*Stealth
}

// Stats is one line per probe: its event, hits and nmissed.
func (d *DefProbes) Stats() []string {
	var out []string
	for _, p := range d.probes {
		switch {
		case p.Kprobe != nil:
			out = append(out, fmt.Sprintf("kprobe %s+%#x: hits=%d nmissed=%d", p.Kprobe.Symbol, p.Kprobe.Offset, p.Kprobe.Hits(), p.Kprobe.NMissed()))
		case p.Jprobe != nil:
			out = append(out, fmt.Sprintf("jprobe %s: hits=%d nmissed=%d", p.Jprobe.Symbol, p.Jprobe.Hits(), p.Jprobe.NMissed()))
		case p.Fast != nil && p.Fast.Return:
			out = append(out, fmt.Sprintf("exit-less kretprobe %s: hits=%d lost=%d nmissed=%d", p.Fast.Symbol, p.Fast.Hits(), p.Fast.Lost(), p.Fast.NMissed()))
		case p.Fast != nil:
			out = append(out, fmt.Sprintf("exit-less kprobe %s+%#x: hits=%d lost=%d", p.Fast.Symbol, p.Fast.Offset, p.Fast.Hits(), p.Fast.Lost()))
		default:
			out = append(out, fmt.Sprintf("kretprobe %s: hits=%d nmissed=%d", p.Kretprobe.Symbol, p.Kretprobe.Hits(), p.Kretprobe.NMissed()))
		}
	}
	for _, w := range d.watches {
		out = append(out, fmt.Sprintf("watch %s/%s at %#x: hits=%d", w.Def.Group, w.Def.Event, w.VA, w.Hits()))
	}
	for _, p := range d.stealth {
		out = append(out, fmt.Sprintf("stealth kprobe %s+%#x (DR%d): hits=%d", p.Def.Symbol, p.Def.Offset, p.dr.slot, p.Hits()))
	}
	return out
}

// Stealth are the stealth probes made from p lines with Def.Stealth.
func (d *DefProbes) Stealth() []*Stealth { return d.stealth }

// Watches are the watches made from w lines, in their order.
func (d *DefProbes) Watches() []*Watch { return d.watches }

// Probes are the engine probes made from the definitions, in their order.
func (d *DefProbes) Probes() []*Probe { return d.probes }

// Remove unregisters every probe made from the definitions.
func (d *DefProbes) Remove() error {
	var errs []error
	for _, p := range d.probes {
		errs = append(errs, d.s.Disarm(d.a, p))
	}
	for _, w := range d.watches {
		errs = append(errs, w.Remove())
	}
	for _, p := range d.stealth {
		errs = append(errs, p.Remove())
	}
	d.Flush() // what the exit-less probes recorded before they went
	return errors.Join(errs...)
}

// AddDefs arms probes for kprobe_events-style definitions (p:, r:, the
// j: extension, and w: watches in ftrace's wprobe syntax). Each hit evaluates the definition's fetch args in the
// guest and is passed to emit, on the vCPU's thread. Symbols are checked
// (with suggestions) and BTF parameter names bound before anything is
// armed, and a bad line arms nothing. Each definition is then armed on
// its own (or deferred, see Arm): the DefProbes hold those that were, the
// error names each that was not.
func (s *Session) AddDefs(a *Attached, defs []*probedef.Def, emit func(probedef.Event)) (*DefProbes, error) {
	k := a.Kernel
	if err := probedef.Validate(defs, func(sym string) error {
		_, err := k.Resolve(sym, 0)
		return err
	}); err != nil {
		return nil, err
	}
	for _, d := range defs {
		if d.Kind == probedef.Delete {
			return nil, fmt.Errorf("%w: line %d: %q deletes an event; there is none to delete here", ErrProbeDef, d.Line, d.Text)
		}
		if err := bindParams(s.Kernel, d); err != nil {
			var se *probedef.SyntaxError
			if errors.As(err, &se) { // it names the line and column itself
				return nil, probedef.SyntaxErrors{se}
			}
			return nil, fmt.Errorf("%w: line %d: %v", ErrProbeDef, d.Line, err)
		}
	}
	env := &eventEnv{s: s, k: k}
	if slices.ContainsFunc(defs, func(d *probedef.Def) bool { return d.Stack }) {
		u, err := s.unwinder(a)
		if err != nil {
			return nil, err
		}
		env.unwind = u
	}
	if l, err := s.TaskLayout(); err == nil {
		env.layout = &l // without BTF, events carry no comm/pid
	}
	out := &DefProbes{s: s, a: a}
	var bad probedef.SyntaxErrors
	for _, d := range defs {
		if d.Stealth {
			p, err := s.addStealth(a, env, d, emit)
			if err != nil {
				bad = append(bad, d.Error(d.SymbolCol(), reason(err)))
				continue
			}
			out.stealth = append(out.stealth, p)
			continue
		}
		if d.Kind == probedef.Watch {
			w, err := s.addWatch(a, env, d, emit)
			if err != nil {
				bad = append(bad, d.Error(d.SymbolCol(), err))
				continue
			}
			out.watches = append(out.watches, w)
			continue
		}
		var p *Probe
		var err error
		if d.Fast && (d.Kind == probedef.Probe || d.Kind == probedef.Retprobe) {
			p, err = s.addFast(a, env, d, emit)
		} else if p, err = defProbe(d); err == nil {
			env.handle(p, d, emit)
			err = s.Arm(a, p)
		}
		if err != nil {
			bad = append(bad, d.Error(d.SymbolCol(), reason(err)))
			continue
		}
		out.probes = append(out.probes, p)
	}
	if len(bad) > 0 {
		return out, bad
	}
	return out, nil
}

// defProbe is the engine probe a definition asks for, without handlers.
func defProbe(d *probedef.Def) (*Probe, error) {
	p := &Probe{Name: d.String()}
	if d.Text != "" {
		p.Name = d.Text
	}
	switch d.Kind {
	case probedef.Probe:
		p.Kprobe = &kprobes.Kprobe{Symbol: d.Symbol, Offset: d.Offset, Addr: d.Addr}
	case probedef.Jprobe:
		p.Jprobe = &kprobes.Jprobe{Symbol: d.Symbol, Addr: d.Addr}
	case probedef.Retprobe:
		p.Kretprobe = &kprobes.Kretprobe{Symbol: d.Symbol, Addr: d.Addr, MaxActive: d.MaxActive}
	default:
		return nil, fmt.Errorf("%w: %q is no probe", ErrProbeDef, d.Text)
	}
	return p, nil
}

// handle gives p the handlers that turn its hits into events.
func (e *eventEnv) handle(p *Probe, def *probedef.Def, emit func(probedef.Event)) {
	switch {
	case p.Kprobe != nil:
		p.Kprobe.PreHandler = func(c *kprobes.Context) bool {
			emit(e.event(def, c, *c.Regs(), nil, ""))
			return false
		}
	case p.Jprobe != nil:
		p.Jprobe.Entry = func(c *kprobes.JprobeContext) {
			emit(e.event(def, c.Context, *c.Regs(), nil, ""))
		}
	case p.Kretprobe != nil:
		p.Kretprobe.EntryHandler = func(c *kprobes.RetContext) bool {
			entry := *c.Regs()
			c.Data = &entry // $argN at return reads the entry registers
			return false
		}
		p.Kretprobe.Handler = func(c *kprobes.RetContext) {
			entry, _ := c.Data.(*vmm.Regs)
			ev := e.event(def, c.Context, *c.Regs(), entry, c.Symbol)
			ev.Where = e.k.Syms.FormatAddr(c.ReturnAddress)
			ev.Duration = c.Duration
			if def.Stack {
				// The stack of the caller the function returned to.
				r := *c.Regs()
				r.RIP = c.ReturnAddress
				ev.Stack = e.stack(r, false)
			}
			emit(ev)
		}
	}
}

// eventEnv evaluates fetch args in the running guest.
type eventEnv struct {
	s      *Session
	k      *RunningKernel
	layout *introspect.TaskLayout
	unwind *introspect.Unwinder // for definitions with Stack set
}

func (e *eventEnv) event(def *probedef.Def, c *kprobes.Context, regs vmm.Regs, entry *vmm.Regs, fn string) probedef.Event {
	comm, pid := e.current(c.CPU)
	var mem probedef.Memory = e.k
	if readsUser(def) {
		mem = &taskMem{k: e.k, phys: e.s.VM.Mem(), c: c}
	}
	ctx := &probedef.Context{Regs: regs, Entry: entry, CS: 0x10, SS: 0x18, Mem: mem, Syms: e, Task: commOf(comm)}
	vals, err := probedef.Evaluate(def, ctx)
	if err != nil {
		vals = []probedef.Value{{Name: "error", Type: probedef.Type{Base: probedef.String}, Str: err.Error()}}
	}
	ev := probedef.Event{
		Def: def, Comm: comm, PID: pid, CPU: c.CPU, IRQsOff: regs.RFLAGS&vmm.FlagIF == 0,
		Time: e.s.sinceLocked(c.Time), Where: e.k.Syms.FormatAddr(c.Addr), Func: fn, Values: vals,
	}
	if def.Stack && fn == "" {
		r := regs
		r.RIP = c.Addr
		ev.Stack = e.stack(r, c.Offset == 0)
	}
	return ev
}

// readsUser reports whether def fetches user memory (ustring, +u...()).
// Only such definitions read through the task's page tables: ftrace's
// plain string and dereference fetches fault on a user address, and so do
// hvprobe's, which read through the kernel's tables.
func readsUser(def *probedef.Def) bool {
	for _, a := range def.Args {
		if a.Type.Base == probedef.UString {
			return true
		}
		for f := a.Fetch; f != nil; f = f.Inner {
			if f.User {
				return true
			}
		}
	}
	return false
}

// taskMem is guest memory as the task that hit a probe sees it: user
// addresses (bit 63 clear) through the page tables in the vCPU's CR3 at
// the hit, read on first use, kernel addresses through the kernel's
// (init_top_pgt, which maps no user space).
type taskMem struct {
	k    *RunningKernel
	phys vmm.PhysMem
	c    *kprobes.Context
	user *introspect.VirtMem
}

const cr4LA57 = 1 << 12

func (m *taskMem) ReadVirt(va uint64, p []byte) error {
	if va>>63 != 0 {
		return m.k.ReadVirt(va, p)
	}
	if m.user == nil {
		sr, err := m.c.Sregs()
		if err != nil {
			return fmt.Errorf("reading CR3 for a user fetch: %w", err)
		}
		m.user = introspect.NewVirtMem(m.phys, sr.CR3, sr.CR4&cr4LA57 != 0)
	}
	return m.user.Read(va, p)
}

// stack unwinds the kernel stack at a hit (Def.Stack): on the host, from
// guest memory, ORC tables when the image has them, else frame pointers. A walk that stops early keeps
// the frames it found, as the kernel's stack_trace_save does.
// At a function's first instruction its frame is not built yet: the
// return address is at %rsp, which ORC knows and a frame-pointer walk,
// following %rbp, would skip, so that walk starts from the caller.
func (e *eventEnv) stack(regs vmm.Regs, atEntry bool) []probedef.Frame {
	var addrs []uint64
	if ret, err := e.k.Mem.ReadU64(regs.RSP); atEntry && e.unwind.ORC == nil && err == nil {
		caller := regs
		caller.RIP, caller.RSP = e.unwind.Return(ret, regs.RSP), regs.RSP+8
		addrs, _ = e.unwind.Unwind(e.k, caller)
		addrs = append([]uint64{regs.RIP}, addrs...)
	} else {
		addrs, _ = e.unwind.Unwind(e.k, regs)
	}
	st := make([]probedef.Frame, len(addrs))
	for i, a := range addrs {
		st[i] = probedef.Frame{Addr: a, Where: e.k.Syms.FormatAddr(a)}
	}
	return st
}

// unwinder walks this guest's stacks: with the image's ORC tables, slid,
// when it has them, else by frame pointers; kretprobe trampolines on the
// stack are shown as the return addresses they replaced.
func (s *Session) unwinder(a *Attached) (*introspect.Unwinder, error) {
	u := &introspect.Unwinder{InText: a.Kernel.InText, Return: func(addr, slot uint64) uint64 {
		return a.Manager.RealReturnAddress(slot, addr)
	}}
	s.orcOnce.Do(func() { s.orc, s.orcErr = s.Kernel.ORC() })
	switch {
	case s.orcErr == nil:
		u.ORC = s.orc.Slid(a.Kernel.Layout.VirtDelta)
	case !errors.Is(s.orcErr, guest.ErrNoORC):
		return nil, fmt.Errorf("kernel stacks: %w", s.orcErr)
	}
	return u, nil
}

// Address and Format make eventEnv a probedef.Symbols.
func (e *eventEnv) Address(name string) (uint64, error) { return e.k.Address(name) }
func (e *eventEnv) Format(addr uint64) string           { return e.k.Format(addr) }

// current names the task running on cpu through the kernel's per-cpu
// current_task, found via __per_cpu_offset[cpu]; "" when unknown.
func (e *eventEnv) current(cpu int) (string, int) {
	if e.layout == nil {
		return "", -1
	}
	offs, err := e.k.Resolve("__per_cpu_offset", 0)
	if err != nil {
		return "", -1
	}
	var b [8]byte
	if err := e.k.ReadVirt(offs+8*uint64(cpu), b[:]); err != nil {
		return "", -1
	}
	t, err := introspect.CurrentTask(e.k.Mem, binary.LittleEndian.Uint64(b[:]), unslid{e.s.Kernel.Symbols}, *e.layout)
	if err != nil {
		return "", -1
	}
	return t.Comm, int(t.PID)
}

type commOf string

func (c commOf) Comm() (string, error) { return string(c), nil }
