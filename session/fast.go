package session

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hvprobe/hvprobe/introspect"
	"github.com/hvprobe/hvprobe/kprobes"
	"github.com/hvprobe/hvprobe/kprobes/fastpath"
	"github.com/hvprobe/hvprobe/kprobes/probedef"
	"github.com/hvprobe/hvprobe/vmm"
)

// Exit-less probes (issue 14, kprobes.FastProbe): a p line with Def.Fast
// is armed as a jmp to a recording stub where its instruction and fetch
// args allow it, else as an int3; a NoticePath says which. The rings are
// drained every fastPoll, and at Flush, Remove and Close.

const (
	fastPoll = 10 * time.Millisecond
	// DefaultFastRecords is each vCPU ring's size when Options.FastRecords
	// is 0: 512 records of 160 bytes.
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

// fastArgs says why def's fetch args cannot be evaluated from a record (the
// registers at the hit): a record holds no guest memory, and memory read
// at drain time would not be what the hit saw.
func fastArgs(d *probedef.Def) string {
	if d.Stack {
		return "a stack trace reads the guest's stack at the hit"
	}
	var mem func(f *probedef.Fetch) bool
	mem = func(f *probedef.Fetch) bool {
		switch f.Kind {
		case probedef.FetchStack, probedef.FetchMem, probedef.FetchSymMem, probedef.FetchDeref:
			return true
		}
		return len(f.Fields) > 0 || (f.Inner != nil && mem(f.Inner))
	}
	for _, a := range d.Args {
		if mem(a.Fetch) {
			return fmt.Sprintf("%s reads guest memory at the hit", a.Name)
		}
	}
	return ""
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
	if err := a.Manager.EnableFast(kprobes.FastConfig{Records: records, Probes: fastProbes,
		CPUNumberOff: cpuNum, CurrentOff: cur,
		DirectMap: func(gpa uint64) (uint64, error) { return base + gpa, nil }}); err != nil {
		return err
	}
	s.fast.users = map[*kprobes.FastProbe]*fastUser{}
	s.workers.Add(1)
	go s.drainLoop(a)
	return nil
}

// addFast makes the probe of a p line with Def.Fast: exit-less when it
// can be, else the int3 probe the line would have had (Arm decides, as
// only registering knows the instruction).
func (s *Session) addFast(a *Attached, env *eventEnv, d *probedef.Def, emit func(probedef.Event)) (*Probe, error) {
	p, err := defProbe(d)
	if err != nil {
		return nil, err
	}
	env.handle(p, d, emit)
	why := fastArgs(d)
	if va, err := defAddr(a.Kernel.Resolve, d); why == "" && err == nil && a.Kernel.policy.inInit(va) {
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
	p.Fast = &kprobes.FastProbe{Symbol: d.Symbol, Offset: d.Offset, Addr: d.Addr}
	p.int3, p.Kprobe = p.Kprobe, nil
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
		p.Kprobe, p.Fast = p.int3, nil
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
	d, err := a.Manager.DrainFast(func(p *kprobes.FastProbe, r fastpath.Record) {
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
	ns := float64(int64(tsc-f.tsc0)) * 1e6 / float64(f.khz)
	return f.t0.Add(time.Duration(ns))
}

// event is a record's event: the same evaluation as the int3 path's,
// from the registers the stub saved, with the task the stub found in
// current_task.
func (u *fastUser) event(p *kprobes.FastProbe, r fastpath.Record, at time.Time) probedef.Event {
	g := r.Regs
	regs := vmm.Regs{RAX: g.RAX, RBX: g.RBX, RCX: g.RCX, RDX: g.RDX, RSI: g.RSI, RDI: g.RDI, RSP: g.RSP, RBP: g.RBP,
		R8: g.R8, R9: g.R9, R10: g.R10, R11: g.R11, R12: g.R12, R13: g.R13, R14: g.R14, R15: g.R15,
		RIP: p.Addr, RFLAGS: g.RFLAGS}
	comm, pid := "", -1
	if u.env.layout != nil {
		if t, err := introspect.ReadTask(u.env.k.Mem, r.Current, *u.env.layout); err == nil {
			comm, pid = t.Comm, int(t.PID)
		}
	}
	return u.env.eventFor(u.def, int(r.CPU), comm, pid, regs, nil, at, p.Addr, nil)
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
