package session

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/hvprobe/hvprobe/introspect"
	"github.com/hvprobe/hvprobe/kprobes"
	"github.com/hvprobe/hvprobe/kprobes/probedef"
	"github.com/hvprobe/hvprobe/vmm"
)

// ErrProbeDef: a probe definition cannot be attached to this kernel.
var ErrProbeDef = errors.New("probe definition")

// DefProbes are the engine probes made from probe definitions.
type DefProbes struct {
	m          *kprobes.Manager
	kprobes    []*kprobes.Kprobe
	jprobes    []*kprobes.Jprobe
	kretprobes []*kprobes.Kretprobe
}

// Stats is one line per probe: its event, hits and nmissed.
func (d *DefProbes) Stats() []string {
	var out []string
	for _, p := range d.kprobes {
		out = append(out, fmt.Sprintf("kprobe %s+%#x: hits=%d nmissed=%d", p.Symbol, p.Offset, p.Hits(), p.NMissed()))
	}
	for _, p := range d.jprobes {
		out = append(out, fmt.Sprintf("jprobe %s: hits=%d nmissed=%d", p.Symbol, p.Hits(), p.NMissed()))
	}
	for _, p := range d.kretprobes {
		out = append(out, fmt.Sprintf("kretprobe %s: hits=%d nmissed=%d", p.Symbol, p.Hits(), p.NMissed()))
	}
	return out
}

// Remove unregisters every probe made from the definitions.
func (d *DefProbes) Remove() error {
	var errs []error
	for _, p := range d.kprobes {
		errs = append(errs, d.m.Unregister(p))
	}
	for _, p := range d.jprobes {
		errs = append(errs, d.m.UnregisterJprobe(p))
	}
	for _, p := range d.kretprobes {
		errs = append(errs, d.m.UnregisterKretprobe(p))
	}
	return errors.Join(errs...)
}

// AddDefs arms probes for kprobe_events-style definitions (p:, r:, and the
// j: extension). Each hit evaluates the definition's fetch args in the
// guest and is passed to emit, on the vCPU's thread. Symbols are checked
// (with suggestions) and BTF parameter names bound before anything is
// armed; on any error nothing stays armed.
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
		if err := s.bindParams(d); err != nil {
			return nil, err
		}
	}
	env := &eventEnv{s: s, k: k}
	if l, err := s.TaskLayout(); err == nil {
		env.layout = &l // without BTF, events carry no comm/pid
	}
	out := &DefProbes{m: a.Manager}
	for _, d := range defs {
		if err := out.add(d, env, emit); err != nil {
			return nil, errors.Join(err, out.Remove())
		}
	}
	return out, nil
}

// bindParams resolves BTF parameter names (filename, $arg*) when the
// definition uses any.
func (s *Session) bindParams(d *probedef.Def) error {
	needs := false
	for _, a := range d.Args {
		needs = needs || usesParams(a.Fetch)
	}
	if !needs {
		return nil
	}
	types, err := s.Kernel.BTF()
	if err != nil {
		return fmt.Errorf("%w: line %d: parameter names need the kernel's BTF: %v", ErrProbeDef, d.Line, err)
	}
	params, _, err := types.FuncProto(d.Symbol)
	if err != nil {
		return fmt.Errorf("%w: line %d: %v", ErrProbeDef, d.Line, err)
	}
	names := make([]string, len(params))
	for i, p := range params {
		names[i] = p.Name
	}
	return d.ResolveParams(names)
}

func usesParams(f *probedef.Fetch) bool {
	for ; f != nil; f = f.Inner {
		if f.Kind == probedef.FetchParam || f.Kind == probedef.FetchAllArgs {
			return true
		}
	}
	return false
}

func (d *DefProbes) add(def *probedef.Def, env *eventEnv, emit func(probedef.Event)) error {
	switch def.Kind {
	case probedef.Probe:
		p := &kprobes.Kprobe{Symbol: def.Symbol, Offset: def.Offset, Addr: def.Addr}
		p.PreHandler = func(c *kprobes.Context) bool {
			emit(env.event(def, c, *c.Regs(), nil, ""))
			return false
		}
		if err := d.m.Register(p); err != nil {
			return err
		}
		d.kprobes = append(d.kprobes, p)
	case probedef.Jprobe:
		p := &kprobes.Jprobe{Symbol: def.Symbol, Addr: def.Addr}
		p.Entry = func(c *kprobes.JprobeContext) {
			emit(env.event(def, c.Context, *c.Regs(), nil, ""))
		}
		if err := d.m.RegisterJprobe(p); err != nil {
			return err
		}
		d.jprobes = append(d.jprobes, p)
	case probedef.Retprobe:
		p := &kprobes.Kretprobe{Symbol: def.Symbol, Addr: def.Addr, MaxActive: def.MaxActive}
		p.EntryHandler = func(c *kprobes.RetContext) bool {
			entry := *c.Regs()
			c.Data = &entry // $argN at return reads the entry registers
			return false
		}
		p.Handler = func(c *kprobes.RetContext) {
			entry, _ := c.Data.(*vmm.Regs)
			ev := env.event(def, c.Context, *c.Regs(), entry, c.Symbol)
			ev.Where = env.k.Syms.FormatAddr(c.ReturnAddress)
			emit(ev)
		}
		if err := d.m.RegisterKretprobe(p); err != nil {
			return err
		}
		d.kretprobes = append(d.kretprobes, p)
	}
	return nil
}

// eventEnv evaluates fetch args in the running guest.
type eventEnv struct {
	s      *Session
	k      *RunningKernel
	layout *introspect.TaskLayout
}

func (e *eventEnv) event(def *probedef.Def, c *kprobes.Context, regs vmm.Regs, entry *vmm.Regs, fn string) probedef.Event {
	comm, pid := e.current(c.CPU)
	ctx := &probedef.Context{Regs: regs, Entry: entry, CS: 0x10, SS: 0x18, Mem: e.k, Syms: e, Task: commOf(comm)}
	vals, err := probedef.Evaluate(def, ctx)
	if err != nil {
		vals = []probedef.Value{{Name: "error", Type: probedef.Type{Base: probedef.String}, Str: err.Error()}}
	}
	return probedef.Event{
		Def: def, Comm: comm, PID: pid, CPU: c.CPU, IRQsOff: regs.RFLAGS&vmm.FlagIF == 0,
		Time: e.s.sinceLocked(c.Time), Where: e.k.Syms.FormatAddr(c.Addr), Func: fn, Values: vals,
	}
}

// Address and Format make eventEnv a probedef.Symbols.
func (e *eventEnv) Address(name string) (uint64, error) { return e.k.Resolve(name, 0) }
func (e *eventEnv) Format(addr uint64) string           { return e.k.Syms.FormatAddr(addr) }

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
