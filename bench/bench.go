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
	box := NewMailbox(s)
	a, err := s.Attached()
	if err != nil {
		return Result{}, err
	}
	m := a.Manager
	res := Result{Calls: n, CPUs: s.VM.NumCPUs()}
	// timed runs cmd three times and keeps the fastest run: the mailbox is
	// polled every 20 ms and the guest's scheduler adds noise of its own
	// (a threads baseline was once slower than every probed run).
	timed := func(cmd string) (time.Duration, uint64, error) {
		var best time.Duration
		var bestExits uint64
		for i := 0; i < 3; i++ {
			e0 := s.VM.Stats().Total.Load()
			t0 := time.Now()
			if _, err := box.Scenario(ctx, cmd); err != nil {
				return 0, 0, err
			}
			if d := time.Since(t0); i == 0 || d < best {
				best, bestExits = d, s.VM.Stats().Total.Load()-e0
			}
		}
		return best, bestExits, nil
	}
	calls := fmt.Sprintf("calls:%d", n)
	// Warm up (first-touch page faults, caches) before measuring.
	if _, _, err := timed(calls); err != nil {
		return res, err
	}
	tExit, exits, err := timed(fmt.Sprintf("exits:%d", n))
	if err != nil {
		return res, err
	}
	tBase, baseExits, err := timed(calls)
	if err != nil {
		return res, err
	}
	res.BareExit = tExit / time.Duration(exits)
	res.PerCall = tBase / time.Duration(n)
	threads := fmt.Sprintf("threads:%d:%d", res.CPUs, n)
	var tThreads time.Duration
	var threadExits uint64
	if res.CPUs > 1 {
		// Warmed up too: the first threads run also creates the kthreads'
		// stacks.
		if _, _, err := timed(threads); err != nil {
			return res, err
		}
		if tThreads, threadExits, err = timed(threads); err != nil {
			return res, err
		}
	}

	// The target's third instruction, after push %rbp; mov %rsp,%rbp:
	// its body (lea (%rdi,%rsi),%rax on the mini kernel).
	body, err := nthInsn(a.Kernel, "hvwl_target_add", 2)
	if err != nil {
		return res, err
	}
	nop := func(*kprobes.Context) bool { return false }
	post := func(*kprobes.Context) {}
	type probeCase struct {
		name       string
		scenario   string // the calls measured, n of them
		add, remov func() error
	}
	kprobe := func(name, scenario string, p *kprobes.Kprobe) probeCase {
		return probeCase{name, scenario, func() error { return m.Register(p) }, func() error { return m.Unregister(p) }}
	}
	jp := &kprobes.Jprobe{Symbol: "hvwl_target_add", Entry: func(*kprobes.JprobeContext) {}}
	rp := &kprobes.Kretprobe{Symbol: "hvwl_target_add", Handler: func(*kprobes.RetContext) {}}
	cases := []probeCase{
		kprobe("kprobe at entry (host-emulated push)", calls, &kprobes.Kprobe{Symbol: "hvwl_target_add", PreHandler: nop}),
		kprobe(fmt.Sprintf("kprobe on %s: +%#x (%s)", body.Text, body.Offset, body.Exec), calls,
			&kprobes.Kprobe{Symbol: "hvwl_target_add", Offset: body.Offset, PreHandler: nop}),
		kprobe(fmt.Sprintf("kprobe on %s: +%#x (%s with post handler)", body.Text, body.Offset, body.ExecPost), calls,
			&kprobes.Kprobe{Symbol: "hvwl_target_add", Offset: body.Offset, PreHandler: nop, PostHandler: post}),
		{"jprobe", calls, func() error { return m.RegisterJprobe(jp) }, func() error { return m.UnregisterJprobe(jp) }},
		{"kretprobe (entry + return)", calls, func() error { return m.RegisterKretprobe(rp) }, func() error { return m.UnregisterKretprobe(rp) }},
	}
	// hvwl_target_mix (mix:N) has one instruction of each class below.
	mix := fmt.Sprintf("mix:%d", n)
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
		v, err := findInsn(a.Kernel, "hvwl_target_mix", c.match)
		if err != nil {
			return res, fmt.Errorf("bench case %s: %w", c.what, err)
		}
		p := &kprobes.Kprobe{Symbol: "hvwl_target_mix", Offset: v.Offset, PreHandler: nop}
		exec := v.Exec
		if c.post {
			p.PostHandler = post
			exec = v.ExecPost + " with post handler"
		}
		cases = append(cases, kprobe(fmt.Sprintf("kprobe on %s: +%#x (%s)", c.what, v.Offset, exec), mix, p))
	}
	// Probe lines: a stealth probe where debug registers fire, and a write
	// watch (write:N makes a watched store and one to its neighbour on the
	// same page per call: both exit).
	defCase := func(name, scenario, line string, set func(*probedef.Def)) (probeCase, error) {
		d, err := probedef.Parse(line)
		if err != nil {
			return probeCase{}, err
		}
		set(d)
		var dp *session.DefProbes
		return probeCase{name, scenario, func() (err error) {
			dp, err = s.AddDefs(a, []*probedef.Def{d}, func(probedef.Event) {})
			if err == nil && d.Fast && len(dp.FastProbes()) == 0 {
				err = fmt.Errorf("%s took the int3 path", line)
			}
			return err
		}, func() error { return dp.Remove() }}, nil
	}
	caps, err := s.VM.WatchCaps()
	if err != nil {
		return res, err
	}
	var lines []probeCase
	if caps.HWExecute {
		c, err := defCase("stealth kprobe at entry (debug register)", calls, "p:bench/stealth hvwl_target_add",
			func(d *probedef.Def) { d.Stealth = true })
		if err != nil {
			return res, err
		}
		lines = append(lines, c)
	}
	if caps.ReadonlyMem {
		c, err := defCase("write watch (page trap): 1 watched + 1 neighbour store", fmt.Sprintf("write:%d", n), "w:bench/watch w@hvwl_wvar:8",
			func(*probedef.Def) {})
		if err != nil {
			return res, err
		}
		lines = append(lines, c)
	}
	// Lines measured on both paths, int3 then exit-less: the 5-byte nop
	// at hvwl_target_fentry+4 (ftrace's fentry site on a distro kernel);
	// fetch args that read a struct field and a string through it (the
	// stub walks the page tables for each page it reads); a return probe
	// (an int3 kretprobe exits at entry and at the return).
	fentry, fstr := fmt.Sprintf("fentry:%d", n), fmt.Sprintf("fstr:%d", n)
	for _, l := range []struct{ int3, fast, scenario, line string }{
		{"kprobe on the 5-byte fentry nop (int3)", "exit-less kprobe on the 5-byte fentry nop (jmp, recording stub)",
			fentry, "p:bench/nop hvwl_target_fentry+4 a=%di b=%si"},
		{"kprobe reading a struct and a string (int3)", "exit-less kprobe reading a struct and a string (page walks)",
			fstr, "p:bench/fstr hvwl_target_fstr+4 i=+0(%di):s64 name=+0(+8(%di)):string"},
		{"kretprobe line on hvwl_target_fentry (int3 entry + return)", "exit-less kretprobe line (entry stub + trampoline)",
			fentry, "r:bench/ret hvwl_target_fentry a=$arg1 ret=$retval"},
	} {
		for _, fast := range []bool{false, true} {
			name := l.int3
			if fast {
				name = l.fast
			}
			c, err := defCase(name, l.scenario, l.line, func(d *probedef.Def) { d.Fast = fast })
			if err != nil {
				return res, err
			}
			lines = append(lines, c)
		}
	}
	cases = append(cases, lines...)
	base := map[string]struct {
		t     time.Duration
		exits uint64
	}{calls: {tBase, baseExits}}
	for _, c := range cases {
		if _, ok := base[c.scenario]; !ok {
			if _, _, err := timed(c.scenario); err != nil { // warm up
				return res, err
			}
			t, e, err := timed(c.scenario)
			if err != nil {
				return res, err
			}
			base[c.scenario] = struct {
				t     time.Duration
				exits uint64
			}{t, e}
		}
		if err := c.add(); err != nil {
			return res, fmt.Errorf("%s: %w", c.name, err)
		}
		t, exits, err := timed(c.scenario)
		var tp time.Duration
		var pExits uint64
		parallel := res.CPUs > 1 && c.scenario == calls
		if err == nil && parallel {
			tp, pExits, err = timed(threads)
		}
		if rerr := c.remov(); err == nil {
			err = rerr
		}
		if err != nil {
			return res, fmt.Errorf("%s: %w", c.name, err)
		}
		b := base[c.scenario]
		res.Cases = append(res.Cases, Case{
			Name:        c.name,
			PerHit:      (t - b.t) / time.Duration(n),
			ExitsPerHit: float64(int64(exits)-int64(b.exits)) / float64(n),
		})
		if parallel {
			res.Parallel = append(res.Parallel, Case{
				Name:        c.name,
				PerHit:      (tp - tThreads) / time.Duration(n),
				ExitsPerHit: float64(int64(pExits)-int64(threadExits)) / float64(res.CPUs*n),
			})
		}
	}
	return res, nil
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
