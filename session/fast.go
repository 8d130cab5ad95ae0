package session

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"golang.org/x/arch/x86/x86asm"

	"github.com/hvprobe/hvprobe/introspect"
	"github.com/hvprobe/hvprobe/kprobes"
	"github.com/hvprobe/hvprobe/probedef"
	"github.com/hvprobe/hvprobe/stub"
	"github.com/hvprobe/hvprobe/vmm"
)

// Exit-less probes (issue 14, kprobes.FastProbe): a p line with Def.Fast
// is armed as a jmp to a recording stub where its instruction and fetch
// args allow it, else as an int3; a NoticePath says which. The rings are
// drained every fastPoll, and at Flush, Remove and Close.

const (
	fastPoll = 10 * time.Millisecond
	// DefaultFastRecords is each vCPU ring's size in records when
	// Options.FastRecords is 0 (stub.Layout.RecordSize says how big one is).
	DefaultFastRecords = 512
	fastProbes         = 256
	// Where the kernel's direct map starts without KASLR's
	// RANDOMIZE_MEMORY (which moves it to page_offset_base).
	defaultPageOffset = 0xffff888000000000
)

// fastSet is the session's exit-less state.
type fastSet struct {
	mu      sync.Mutex
	enabled bool
	err     error // why exit-less probes cannot be had in this guest
	users   map[*kprobes.FastProbe]*fastUser
	// The guest's TSC against the host's clock, read once.
	tsc0 uint64
	t0   time.Time
	khz  uint64
	// drainMu orders drains, so events of a vCPU leave in ring order.
	drainMu sync.Mutex
}

// fastUser turns one exit-less probe's records into its events.
type fastUser struct {
	def  *probedef.Def
	env  *eventEnv
	emit func(probedef.Event)
	name string
	lost uint64 // lost count last reported
}

// fastData is each record's room for memory captures, and fastString
// the most bytes of a string a capture keeps: a string arg is cut at 127
// bytes where ftrace's is cut at MAX_STRING_SIZE-1, 4095.
const (
	fastData   = 512
	fastString = 127
	// With the default ring size, rings that do not fit the slot area
	// (many vCPUs) are halved down to this many records.
	minFastRecords = 64
)

// fastCaptures is the guest memory def's fetch args read, as the stub's
// captures at the hit (in the order probedef's evaluator reads it, which
// then reads the record: fastUser.event), or why they cannot be captured.
// addr is the probed address (%ip).
// With a task layout, the current task's pid and comm come first.
func fastCaptures(d *probedef.Def, syms probedef.Symbols, addr uint64, tl *introspect.TaskLayout) ([]stub.Capture, string) {
	if d.Stack {
		return nil, "a stack trace reads the guest's stack at the hit"
	}
	var out []stub.Capture
	if tl != nil {
		out = taskCaptures(*tl)
	}
	for _, a := range d.Args {
		if d.Kind == probedef.Retprobe && entryMemory(a.Fetch) {
			// The trampoline reads memory at the return, where only the
			// record's copy of the argument registers is the entry's.
			return nil, fmt.Sprintf("%s: reads memory through an entry argument", a.Name)
		}
		cs, err := captureArg(a, syms, addr)
		if err != nil {
			return nil, fmt.Sprintf("%s: %v", a.Name, err)
		}
		out = append(out, cs...)
	}
	if n := stub.DataSize(out); n > fastData {
		return nil, fmt.Sprintf("the fetch args read %d bytes with headers; a record holds %d", n, fastData)
	}
	return out, ""
}

// entryMemory reports whether f reads memory through $argN, or is an
// $argN past the six in registers (on the entry stack).
func entryMemory(f *probedef.Fetch) bool {
	for in := f; in != nil; in = in.Inner {
		if in.Kind == probedef.FetchArg && (in != f || in.N > 6) {
			return true
		}
	}
	return false
}

// taskCaptures read the current task's pid and comm at the hit: a task
// that exits before the drain is still named.
func taskCaptures(tl introspect.TaskLayout) []stub.Capture {
	return []stub.Capture{{Current: true, Off: int32(tl.PID), Size: 4},
		{Current: true, Off: int32(tl.Comm), Size: introspect.TaskCommLen}}
}

// chain is how a fetch's value is reached: start at a register (or Imm
// when Reg is 0), then each deref adds its offset and loads 8 bytes.
type chain struct {
	reg    x86asm.Reg
	imm    uint64
	derefs []int32
}

// load is the capture of size bytes at the chain's value plus off.
func (c chain) load(off int64, size int, str bool) ([]stub.Capture, error) {
	o, err := off32(off)
	if err != nil {
		return nil, err
	}
	return []stub.Capture{{Reg: c.reg, Imm: c.imm, Derefs: c.derefs, Off: o, Size: size, String: str}}, nil
}

func off32(off int64) (int32, error) {
	if off != int64(int32(off)) {
		return 0, fmt.Errorf("offset %d does not fit 32 bits", off)
	}
	return int32(off), nil
}

// captureArg mirrors probedef's evaluator (Evaluate): the same loads,
// which the stub makes at the hit instead.
func captureArg(a probedef.Arg, syms probedef.Symbols, addr uint64) ([]stub.Capture, error) {
	f, t := a.Fetch, a.Type
	memory := f.Kind == probedef.FetchMem || f.Kind == probedef.FetchSymMem || f.Kind == probedef.FetchDeref
	switch {
	case f.Kind == probedef.FetchComm || f.Kind == probedef.FetchImmString:
		return nil, nil // the task's comm is captured anyway; a string in the line is the line's
	case t.Array > 0:
		return nil, errors.New("arrays are not captured")
	case (t.Base == probedef.String || t.Base == probedef.UString) && f.Kind == probedef.FetchImm:
		return chain{imm: f.Imm}.load(0, fastString, true)
	case t.Base == probedef.String || t.Base == probedef.UString, memory && t.Base != probedef.SymStr:
		// The last load is the string's, or the type's size.
		c, off, err := addrChain(f, syms, addr)
		if err != nil {
			return nil, err
		}
		if t.Base == probedef.String || t.Base == probedef.UString {
			return c.load(off, fastString, true)
		}
		return c.load(off, t.Size(), false)
	case f.Kind == probedef.FetchReg, f.Kind == probedef.FetchStackPtr, f.Kind == probedef.FetchRetval, f.Kind == probedef.FetchImm:
		return nil, nil // in the record's registers
	}
	// A value ($stackN, $argN past six, a symstr's pointer): memory only
	// if it is reached through a load, the last of 8 bytes.
	c, err := valueChain(f, syms, addr)
	if err != nil || len(c.derefs) == 0 {
		return nil, err
	}
	last := c.derefs[len(c.derefs)-1]
	c.derefs = c.derefs[:len(c.derefs)-1]
	return c.load(int64(last), 8, false)
}

// addrChain is the address a memory fetch loads from: a chain plus an
// offset.
func addrChain(f *probedef.Fetch, syms probedef.Symbols, addr uint64) (chain, int64, error) {
	switch f.Kind {
	case probedef.FetchMem:
		return chain{imm: f.Imm}, 0, nil
	case probedef.FetchSymMem:
		a, err := syms.Address(f.Sym)
		return chain{imm: a + uint64(f.Off)}, 0, err
	case probedef.FetchDeref:
		c, err := valueChain(f.Inner, syms, addr)
		return c, f.Off, err
	}
	return chain{}, 0, fmt.Errorf("%s is not a memory fetch", f)
}

// valueChain is how the evaluator's value of f is reached.
func valueChain(f *probedef.Fetch, syms probedef.Symbols, addr uint64) (chain, error) {
	if len(f.Fields) > 0 {
		return chain{}, fmt.Errorf("%s is not resolved", f)
	}
	deref := func(c chain, off int64) (chain, error) {
		o, err := off32(off)
		c.derefs = append(slices.Clip(c.derefs), o)
		return c, err
	}
	switch f.Kind {
	case probedef.FetchReg:
		if f.Reg == "ip" {
			return chain{imm: addr}, nil
		}
		if r, ok := vmm.GPRNamed(f.Reg); ok {
			return chain{reg: r}, nil
		}
		return chain{}, fmt.Errorf("%%%s is not a general register", f.Reg)
	case probedef.FetchStack:
		return deref(chain{reg: x86asm.RSP}, int64(8*f.N))
	case probedef.FetchStackPtr:
		return chain{reg: x86asm.RSP}, nil
	case probedef.FetchRetval:
		return chain{reg: x86asm.RAX}, nil
	case probedef.FetchArg:
		var r vmm.Regs
		if _, stack, inReg := r.Arg(int(f.N - 1)); !inReg {
			return deref(chain{reg: x86asm.RSP}, int64(stack))
		}
		// SysV's argument registers, as vmm.Regs.Arg has them.
		return chain{reg: [...]x86asm.Reg{x86asm.RDI, x86asm.RSI, x86asm.RDX, x86asm.RCX, x86asm.R8, x86asm.R9}[f.N-1]}, nil
	case probedef.FetchImm:
		return chain{imm: f.Imm}, nil
	case probedef.FetchMem, probedef.FetchSymMem, probedef.FetchDeref:
		c, off, err := addrChain(f, syms, addr)
		if err != nil {
			return chain{}, err
		}
		return deref(c, off)
	}
	return chain{}, fmt.Errorf("%s has no value the stub can compute", f)
}

// enableFast sets up the rings in this guest, once.
func (s *Session) enableFast(a *Attached) error {
	f := &s.fast
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.enabled || f.err != nil {
		return f.err
	}
	f.err = s.startFast(a)
	f.enabled = f.err == nil
	return f.err
}

func (s *Session) startFast(a *Attached) error {
	syms := unslid{s.Kernel.Symbols}
	cpuNum, err := syms.Address("cpu_number")
	if err != nil {
		return fmt.Errorf("the per-CPU cpu_number: %w", err)
	}
	cur, err := syms.Address("current_task")
	if err != nil {
		l, lerr := s.TaskLayout()
		hot, herr := syms.Address("pcpu_hot")
		if lerr != nil || herr != nil {
			return fmt.Errorf("the per-CPU current_task: %w", errors.Join(err, lerr, herr))
		}
		cur = hot + l.HotCurrentTask
	}
	base := uint64(defaultPageOffset)
	if va, err := a.Kernel.Resolve("page_offset_base", 0); err == nil {
		var b [8]byte
		if err := a.Kernel.ReadVirt(va, b[:]); err != nil {
			return fmt.Errorf("reading page_offset_base: %w", err)
		}
		base = binary.LittleEndian.Uint64(b[:])
	}
	records := s.opts.FastRecords
	if records == 0 {
		records = DefaultFastRecords
	}
	for {
		err := a.Manager.EnableFast(kprobes.FastConfig{Records: records, Probes: fastProbes,
			CPUNumberOff: cpuNum, CurrentOff: cur,
			DirectMap: func(gpa uint64) (uint64, error) { return base + gpa, nil },
			Data:      fastData, PhysLimit: s.VM.Memory().Size(), LA57: a.Kernel.Mem.LA57()})
		if err == nil {
			break
		}
		if !errors.Is(err, kprobes.ErrNoSlots) || s.opts.FastRecords != 0 || records <= minFastRecords {
			return err
		}
		records /= 2
	}
	s.fast.users = map[*kprobes.FastProbe]*fastUser{}
	s.workers.Add(1)
	go s.drainLoop(a)
	return nil
}

// addFast makes the probe of a p or r line with Def.Fast: exit-less
// when it can be, else the int3 probe the line would have had (Arm
// decides, as only registering knows the instruction).
func (s *Session) addFast(a *Attached, env *eventEnv, d *probedef.Def, emit func(probedef.Event)) (*Probe, error) {
	p, err := defProbe(d)
	if err != nil {
		return nil, err
	}
	env.handle(p, d, emit)
	va, aerr := defAddr(a.Kernel.Resolve, d)
	caps, why := fastCaptures(d, env, va, env.layout)
	if why == "" && aerr == nil && a.Kernel.policy.inInit(va) {
		// Its retirement at free_initmem runs on the vCPU that frees the
		// text, which cannot pause every vCPU to take a jmp out.
		why = "in .init.text, whose probes are retired in the exit that frees it"
	}
	if why == "" {
		if err := s.enableFast(a); err != nil {
			why = err.Error()
		}
	}
	if why != "" {
		s.notify(Notice{Kind: NoticePath, Probe: p.Name, Why: "int3: not exit-less: " + why})
		return p, s.Arm(a, p)
	}
	p.Fast = &kprobes.FastProbe{Symbol: d.Symbol, Offset: d.Offset, Addr: d.Addr, Captures: caps,
		Return: d.Kind == probedef.Retprobe, MaxActive: d.MaxActive}
	p.int3.k, p.int3.r, p.Kprobe, p.Kretprobe = p.Kprobe, p.Kretprobe, nil, nil
	s.fast.mu.Lock()
	s.fast.users[p.Fast] = &fastUser{def: d, env: env, emit: emit, name: p.Name}
	s.fast.mu.Unlock()
	return p, s.Arm(a, p)
}

// registerFast registers p's exit-less probe, or its int3 probe when the
// instruction cannot take the jmp; the NoticePath tells the user.
func (s *Session) registerFast(m *kprobes.Manager, p *Probe) error {
	err := m.RegisterFast(p.Fast)
	if errors.Is(err, kprobes.ErrNotFast) {
		s.notify(Notice{Kind: NoticePath, Probe: p.Name, Why: "int3: not exit-less: " + reason(err).Error()})
		s.fast.mu.Lock()
		delete(s.fast.users, p.Fast)
		s.fast.mu.Unlock()
		p.Kprobe, p.Kretprobe, p.Fast = p.int3.k, p.int3.r, nil
		return p.register(m)
	}
	if err == nil {
		s.notify(Notice{Kind: NoticePath, Probe: p.Name, Why: fmt.Sprintf("exit-less: jmp rel32 over %s", p.Fast.Insn())})
	}
	return err
}

// drainLoop places the guest's TSC on the host clock (through vCPU 0,
// which a vCPU thread could not ask), then drains every fastPoll.
func (s *Session) drainLoop(a *Attached) {
	defer s.workers.Done()
	f := &s.fast
	tsc, at, khz, err := s.VM.GuestTSC(0)
	if err == nil && khz == 0 {
		err = errors.New("KVM reports a TSC rate of 0 kHz")
	}
	f.mu.Lock()
	f.tsc0, f.t0, f.khz = tsc, at, khz
	f.mu.Unlock()
	if err != nil {
		s.notify(Notice{Kind: NoticeFailed, Probe: "exit-less rings",
			Why: "events carry the time they were drained, not the time of the hit", Err: err})
	}
	t := time.NewTicker(fastPoll)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			s.drainFast(a)
			return
		case <-t.C:
			s.drainFast(a)
		}
	}
}

// drainFast turns the records in the rings into events, and reports new
// lost events once per drain and probe.
func (s *Session) drainFast(a *Attached) {
	f := &s.fast
	f.drainMu.Lock()
	defer f.drainMu.Unlock()
	d, err := a.Manager.DrainFast(func(p *kprobes.FastProbe, r stub.Record) {
		f.mu.Lock()
		u := f.users[p]
		at := f.hostTime(r.TSC)
		f.mu.Unlock()
		if u != nil {
			u.emit(u.event(p, r, at))
		}
	})
	if err != nil {
		s.notify(Notice{Kind: NoticeFailed, Probe: "exit-less rings", Err: err})
	}
	if d.Overrun > 0 || d.Invalid > 0 {
		s.notify(Notice{Kind: NoticeLost, Probe: "exit-less rings",
			Why: fmt.Sprintf("guest code wrote the rings: %d records overrun, %d invalid", d.Overrun, d.Invalid)})
	}
	f.mu.Lock()
	var lost []Notice
	for p, u := range f.users {
		if n := p.Lost(); n > u.lost {
			lost = append(lost, Notice{Kind: NoticeLost, Probe: u.name,
				Why: fmt.Sprintf("%d events lost (ring full), %d in all", n-u.lost, n)})
			u.lost = n
		}
	}
	f.mu.Unlock()
	for _, n := range lost {
		s.notify(n)
	}
}

// hostTime places a guest TSC value on the host clock (now, before the
// TSC has been read or where it could not be). Callers hold mu.
func (f *fastSet) hostTime(tsc uint64) time.Time {
	if f.khz == 0 {
		return time.Now()
	}
	return f.t0.Add(f.tscSpan(f.tsc0, tsc))
}

// tscSpan is the time from guest TSC value a to b (0 before the rate is
// known). Callers hold mu.
func (f *fastSet) tscSpan(a, b uint64) time.Duration {
	if f.khz == 0 {
		return 0
	}
	return time.Duration(float64(int64(b-a)) * 1e6 / float64(f.khz))
}

// event is a record's event: the same evaluation as the int3 path's,
// from the registers the stub saved and the memory it captured, with the
// task the stub found in current_task (its pid and comm captured too).
func (u *fastUser) event(p *kprobes.FastProbe, r stub.Record, at time.Time) probedef.Event {
	g := r.Regs
	regs := vmm.Regs{RAX: g.RAX, RBX: g.RBX, RCX: g.RCX, RDX: g.RDX, RSI: g.RSI, RDI: g.RDI, RSP: g.RSP, RBP: g.RBP,
		R8: g.R8, R9: g.R9, R10: g.R10, R11: g.R11, R12: g.R12, R13: g.R13, R14: g.R14, R15: g.R15,
		RIP: p.Addr, RFLAGS: g.RFLAGS}
	if p.Return {
		return u.retEvent(p, r, regs, at)
	}
	comm, pid := u.task(r)
	return u.env.eventFor(u.def, int(r.CPU), comm, pid, regs, nil, at, p.Addr,
		func(c *probedef.Context) { c.Mem = r })
}

// task is the pid and comm the stub captured ("", -1 if it did not).
func (u *fastUser) task(r stub.Record) (string, int) {
	l := u.env.layout
	if l == nil {
		return "", -1
	}
	var p [4]byte
	var c [introspect.TaskCommLen]byte
	if r.ReadVirt(r.Current+l.PID, p[:]) != nil || r.ReadVirt(r.Current+l.Comm, c[:]) != nil {
		return "", -1
	}
	return introspect.CommString(c[:]), int(int32(binary.LittleEndian.Uint32(p[:])))
}

// retEvent is a return record's event, as the int3 kretprobe's: $argN
// from the registers the entry stub kept, $retval and the rest at the
// return, the call's real return address and duration.
func (u *fastUser) retEvent(p *kprobes.FastProbe, r stub.Record, regs vmm.Regs, at time.Time) probedef.Event {
	d, ok := r.Return()
	if !ok {
		return u.env.eventFor(u.def, int(r.CPU), "", -1, regs, errors.New("a return record without its call's data"), at, p.Addr, nil)
	}
	entry := regs
	entry.RDI, entry.RSI, entry.RDX, entry.RCX, entry.R8, entry.R9 = d.Args[0], d.Args[1], d.Args[2], d.Args[3], d.Args[4], d.Args[5]
	regs.RIP = d.Ret
	comm, pid := u.task(r)
	ev := u.env.eventFor(u.def, int(r.CPU), comm, pid, regs, nil, at, d.Ret,
		func(c *probedef.Context) { c.Mem, c.Entry = r, &entry })
	ev.Func = p.Symbol
	f := &u.env.s.fast
	f.mu.Lock()
	ev.Duration = f.tscSpan(d.EntryTSC, r.TSC)
	f.mu.Unlock()
	return ev
}

// Flush drains the exit-less rings now: every hit recorded before the
// call is an event when it returns.
func (d *DefProbes) Flush() {
	d.s.fast.mu.Lock()
	on := d.s.fast.enabled
	d.s.fast.mu.Unlock()
	if on {
		d.s.drainFast(d.a)
	}
}

// FastProbes are the definitions' probes that went exit-less.
func (d *DefProbes) FastProbes() []*kprobes.FastProbe {
	var out []*kprobes.FastProbe
	for _, p := range d.probes {
		if p.Fast != nil {
			out = append(out, p.Fast)
		}
	}
	return out
}
