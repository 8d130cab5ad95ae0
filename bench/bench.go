package bench

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/hvprobe/hvprobe/session"

	"github.com/hvprobe/hvprobe/kprobes"
	"github.com/hvprobe/hvprobe/probedef"
)

// Case is one probe configuration measured by Run.
type Case struct {
	Name        string
	PerHit      time.Duration // added cost per probed call
	ExitsPerHit float64       // VM exits per call above the unprobed run
}

// Result is what Run measured, all in one run on one VM.
type Result struct {
	Calls    int
	BareExit time.Duration // one guest→host→guest round trip (port I/O)
	PerCall  time.Duration // one unprobed workload call
	Cases    []Case
	// CPUs is the guest's vCPU count. With more than one, Parallel holds
	// Cases again measured with one workload thread bound to each vCPU,
	// all calling at once (Calls each): PerHit is then the wall-clock cost
	// per call of one thread, equal to the single-vCPU PerHit when hits on
	// different vCPUs do not slow each other down; ExitsPerHit is per call
	// of all threads.
	CPUs     int
	Parallel []Case
}

// Run measures, on s's guest, the cost of a bare VM exit and
// of probe hits of each kind on the workload's hvwl_target_add, as host
// wall-clock time per call over n calls. Ratios between them are what to
// compare across machines; absolute numbers depend on the host.
func Run(ctx context.Context, s *session.Session, n int) (Result, error) {
	a, err := s.Attached()
	if err != nil {
		return Result{}, err
	}
	b := &bencher{ctx: ctx, s: s, a: a, box: NewMailbox(s), n: n, calls: fmt.Sprintf("calls:%d", n), base: map[string]timing{}}
	res := Result{Calls: n, CPUs: s.VM.NumCPUs()}
	b.threads = fmt.Sprintf("threads:%d:%d", res.CPUs, n)
	// Warm up (first-touch page faults, caches) before measuring.
	if _, err := b.timed(b.calls); err != nil {
		return res, err
	}
	exit, err := b.timed(fmt.Sprintf("exits:%d", n))
	if err != nil {
		return res, err
	}
	if b.base[b.calls], err = b.timed(b.calls); err != nil {
		return res, err
	}
	res.BareExit = exit.t / time.Duration(exit.exits)
	res.PerCall = b.base[b.calls].t / time.Duration(n)
	if res.CPUs > 1 {
		// Warmed up too: the first threads run also creates the kthreads'
		// stacks.
		if _, err := b.timed(b.threads); err != nil {
			return res, err
		}
		if b.threadBase, err = b.timed(b.threads); err != nil {
			return res, err
		}
	}
	var cases []probeCase
	for _, more := range []func() ([]probeCase, error){b.engineCases, b.mixCases, b.lineCases} {
		c, err := more()
		if err != nil {
			return res, err
		}
		cases = append(cases, c...)
	}
	for _, c := range cases {
		if err := b.measure(c, &res); err != nil {
			return res, fmt.Errorf("%s: %w", c.name, err)
		}
	}
	return res, nil
}

// bencher is one Run's guest and its unprobed baselines.
type bencher struct {
	ctx            context.Context
	s              *session.Session
	a              *session.Attached
	box            *Mailbox
	n              int
	calls, threads string // the scenarios of hvwl_target_add's calls
	base           map[string]timing
	threadBase     timing
}

// timing is a scenario's wall-clock time and VM exits.
type timing struct {
	t     time.Duration
	exits uint64
}

// probeCase is one measured probe: armed by add, measured over n calls of
// scenario, removed by remov.
type probeCase struct {
	name       string
	scenario   string
	add, remov func() error
}

// timed runs cmd three times and keeps the fastest run: the mailbox is
// polled every 20 ms and the guest's scheduler adds noise of its own (a
// threads baseline was once slower than every probed run).
func (b *bencher) timed(cmd string) (timing, error) {
	var best timing
	for i := 0; i < 3; i++ {
		e0 := b.s.VM.Stats().Total.Load()
		t0 := time.Now()
		if _, err := b.box.Scenario(b.ctx, cmd); err != nil {
			return timing{}, err
		}
		if d := time.Since(t0); i == 0 || d < best.t {
			best = timing{d, b.s.VM.Stats().Total.Load() - e0}
		}
	}
	return best, nil
}

func nop(*kprobes.Context) bool { return false }
func post(*kprobes.Context)     {}

func (b *bencher) kprobe(name, scenario string, p *kprobes.Kprobe) probeCase {
	m := b.a.Manager
	return probeCase{name, scenario, func() error { return m.Register(p) }, func() error { return m.Unregister(p) }}
}

// engineCases are the engine's probe kinds on hvwl_target_add.
func (b *bencher) engineCases() ([]probeCase, error) {
	// The target's third instruction, after push %rbp; mov %rsp,%rbp:
	// its body (lea (%rdi,%rsi),%rax on the mini kernel).
	body, err := nthInsn(b.a.Kernel, "hvwl_target_add", 2)
	if err != nil {
		return nil, err
	}
	m := b.a.Manager
	jp := &kprobes.Jprobe{Symbol: "hvwl_target_add", Entry: func(*kprobes.JprobeContext) {}}
	rp := &kprobes.Kretprobe{Symbol: "hvwl_target_add", Handler: func(*kprobes.RetContext) {}}
	return []probeCase{
		b.kprobe("kprobe at entry (host-emulated push)", b.calls, &kprobes.Kprobe{Symbol: "hvwl_target_add", PreHandler: nop}),
		b.kprobe(fmt.Sprintf("kprobe on %s: +%#x (%s)", body.Text, body.Offset, body.Exec), b.calls,
			&kprobes.Kprobe{Symbol: "hvwl_target_add", Offset: body.Offset, PreHandler: nop}),
		b.kprobe(fmt.Sprintf("kprobe on %s: +%#x (%s with post handler)", body.Text, body.Offset, body.ExecPost), b.calls,
			&kprobes.Kprobe{Symbol: "hvwl_target_add", Offset: body.Offset, PreHandler: nop, PostHandler: post}),
		{"jprobe", b.calls, func() error { return m.RegisterJprobe(jp) }, func() error { return m.UnregisterJprobe(jp) }},
		{"kretprobe (entry + return)", b.calls, func() error { return m.RegisterKretprobe(rp) }, func() error { return m.UnregisterKretprobe(rp) }},
	}, nil
}

// mixCases are kprobes on hvwl_target_mix (mix:N), which has one
// instruction of each class below.
func (b *bencher) mixCases() ([]probeCase, error) {
	mix := fmt.Sprintf("mix:%d", b.n)
	var cases []probeCase
	for _, c := range []struct {
		what  string
		match func(string) bool
		post  bool
	}{
		{"a %rip-relative load", func(i string) bool { return strings.Contains(i, "(%rip),%rax") }, false},
		{"a %rip-relative load, post handler", func(i string) bool { return strings.Contains(i, "(%rip),%rax") }, true},
		{"a jcc", func(i string) bool { return strings.HasPrefix(i, "je ") }, false},
		{"rep movsb (32 bytes)", func(i string) bool { return strings.HasPrefix(i, "rep movsb") }, false},
		{"rep movsb, post handler", func(i string) bool { return strings.HasPrefix(i, "rep movsb") }, true},
		{"a call", func(i string) bool { return strings.HasPrefix(i, "call") }, false},
		{"a ret", func(i string) bool { return strings.HasPrefix(i, "ret") }, false},
	} {
		v, err := findInsn(b.a.Kernel, "hvwl_target_mix", c.match)
		if err != nil {
			return nil, fmt.Errorf("bench case %s: %w", c.what, err)
		}
		p := &kprobes.Kprobe{Symbol: "hvwl_target_mix", Offset: v.Offset, PreHandler: nop}
		exec := v.Exec
		if c.post {
			p.PostHandler = post
			exec = v.ExecPost + " with post handler"
		}
		cases = append(cases, b.kprobe(fmt.Sprintf("kprobe on %s: +%#x (%s)", c.what, v.Offset, exec), mix, p))
	}
	return cases, nil
}

// defCase is a probe line, armed through the session.
func (b *bencher) defCase(name, scenario, line string, set func(*probedef.Def)) (probeCase, error) {
	d, err := probedef.Parse(line)
	if err != nil {
		return probeCase{}, err
	}
	set(d)
	var dp *session.DefProbes
	return probeCase{name, scenario, func() (err error) {
		dp, err = b.s.AddDefs(b.a, []*probedef.Def{d}, func(probedef.Event) {})
		if err == nil && d.Fast && len(dp.FastProbes()) == 0 {
			err = fmt.Errorf("%s took the int3 path", line)
		}
		return err
	}, func() error { return dp.Remove() }}, nil
}

// lineCases are probe lines: a stealth probe where debug registers fire,
// a write watch (write:N makes a watched store and one to its neighbour
// on the same page per call: both exit), and lines measured on both
// paths, int3 then exit-less: the 5-byte nop at hvwl_target_fentry+4
// (ftrace's fentry site on a distro kernel); fetch args that read a
// struct field and a string through it (the stub walks the page tables
// for each page it reads); a return probe (an int3 kretprobe exits at
// entry and at the return).
func (b *bencher) lineCases() ([]probeCase, error) {
	caps, err := b.s.VM.WatchCaps()
	if err != nil {
		return nil, err
	}
	type line struct {
		name, scenario, line string
		set                  func(*probedef.Def)
	}
	var lines []line
	if caps.HWExecute {
		lines = append(lines, line{"stealth kprobe at entry (debug register)", b.calls, "p:bench/stealth hvwl_target_add",
			func(d *probedef.Def) { d.Stealth = true }})
	}
	if caps.ReadonlyMem {
		lines = append(lines, line{"write watch (page trap): 1 watched + 1 neighbour store", fmt.Sprintf("write:%d", b.n),
			"w:bench/watch w@hvwl_wvar:8", func(*probedef.Def) {}})
	}
	fentry, fstr := fmt.Sprintf("fentry:%d", b.n), fmt.Sprintf("fstr:%d", b.n)
	for _, l := range []struct{ int3, fast, scenario, line string }{
		{"kprobe on the 5-byte fentry nop (int3)", "exit-less kprobe on the 5-byte fentry nop (jmp, recording stub)",
			fentry, "p:bench/nop hvwl_target_fentry+4 a=%di b=%si"},
		{"kprobe reading a struct and a string (int3)", "exit-less kprobe reading a struct and a string (page walks)",
			fstr, "p:bench/fstr hvwl_target_fstr+4 i=+0(%di):s64 name=+0(+8(%di)):string"},
		{"kretprobe line on hvwl_target_fentry (int3 entry + return)", "exit-less kretprobe line (entry stub + trampoline)",
			fentry, "r:bench/ret hvwl_target_fentry a=$arg1 ret=$retval"},
	} {
		lines = append(lines,
			line{l.int3, l.scenario, l.line, func(d *probedef.Def) { d.Fast = false }},
			line{l.fast, l.scenario, l.line, func(d *probedef.Def) { d.Fast = true }})
	}
	var cases []probeCase
	for _, l := range lines {
		c, err := b.defCase(l.name, l.scenario, l.line, l.set)
		if err != nil {
			return nil, err
		}
		cases = append(cases, c)
	}
	return cases, nil
}

// measure arms c, times its scenario (and, on an SMP guest, the threads
// of hvwl_target_add's calls) against the unprobed baseline, and removes
// it.
func (b *bencher) measure(c probeCase, res *Result) error {
	base, ok := b.base[c.scenario]
	if !ok {
		if _, err := b.timed(c.scenario); err != nil { // warm up
			return err
		}
		var err error
		if base, err = b.timed(c.scenario); err != nil {
			return err
		}
		b.base[c.scenario] = base
	}
	if err := c.add(); err != nil {
		return err
	}
	probed, err := b.timed(c.scenario)
	var par timing
	parallel := res.CPUs > 1 && c.scenario == b.calls
	if err == nil && parallel {
		par, err = b.timed(b.threads)
	}
	if rerr := c.remov(); err == nil {
		err = rerr
	}
	if err != nil {
		return err
	}
	n := time.Duration(b.n)
	res.Cases = append(res.Cases, Case{
		Name:        c.name,
		PerHit:      (probed.t - base.t) / n,
		ExitsPerHit: float64(int64(probed.exits)-int64(base.exits)) / float64(b.n),
	})
	if parallel {
		res.Parallel = append(res.Parallel, Case{
			Name:        c.name,
			PerHit:      (par.t - b.threadBase.t) / n,
			ExitsPerHit: float64(int64(par.exits)-int64(b.threadBase.exits)) / float64(res.CPUs*b.n),
		})
	}
	return nil
}

// insnAt is one instruction of a function, as the engine decodes it.
type insnAt struct {
	Offset uint64
	// Exec is how a hit executes it (emulated, boosted or stepped),
	// ExecPost how with a post handler (emulated or stepped).
	Exec, ExecPost string
	Text           string
}

// walkInsns decodes sym with the engine's own decoder (kprobes.Check,
// which knows endbr64 and the engine's int3s) until f returns true or the
// function ends.
func walkInsns(k *session.RunningKernel, sym string, f func(insnAt) bool) error {
	va, err := k.Resolve(sym, 0)
	if err != nil {
		return err
	}
	_, _, size, _ := k.SymbolAt(va)
	for off := uint64(0); off < size; {
		v, err := kprobes.Check(k, va+off, fmt.Sprintf("%s+%#x", sym, off))
		if err != nil {
			return err
		}
		text, _, _ := strings.Cut(v.Insn, " (")
		if f(insnAt{off, v.Exec, v.ExecPost, text}) {
			return nil
		}
		off += uint64(v.Len)
	}
	return fmt.Errorf("%s: no such instruction", sym)
}

// nthInsn is sym's n-th instruction (from 0).
func nthInsn(k *session.RunningKernel, sym string, n int) (insnAt, error) {
	var found insnAt
	i := 0
	err := walkInsns(k, sym, func(in insnAt) bool {
		found = in
		i++
		return i > n
	})
	return found, err
}

// findInsn is the first instruction of sym whose text match accepts.
func findInsn(k *session.RunningKernel, sym string, match func(string) bool) (insnAt, error) {
	var found insnAt
	err := walkInsns(k, sym, func(in insnAt) bool {
		found = in
		return match(in.Text)
	})
	return found, err
}
