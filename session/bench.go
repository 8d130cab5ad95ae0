package session

import (
	"context"
	"fmt"
	"time"

	"golang.org/x/arch/x86/x86asm"

	"github.com/hvprobe/hvprobe/kprobes"
)

// BenchCase is one probe configuration measured by Bench.
type BenchCase struct {
	Name        string
	PerHit      time.Duration // added cost per probed call
	ExitsPerHit float64       // VM exits per call above the unprobed run
}

// BenchResult is what Bench measured, all in one run on one VM.
type BenchResult struct {
	Calls    int
	BareExit time.Duration // one guest→host→guest round trip (port I/O)
	PerCall  time.Duration // one unprobed workload call
	Cases    []BenchCase
	// CPUs is the guest's vCPU count. With more than one, Parallel holds
	// Cases again measured with one workload thread bound to each vCPU,
	// all calling at once (Calls each): PerHit is then the wall-clock cost
	// per call of one thread, equal to the single-vCPU PerHit when hits on
	// different vCPUs do not slow each other down; ExitsPerHit is per call
	// of all threads.
	CPUs     int
	Parallel []BenchCase
}

// Bench measures, on this session's guest, the cost of a bare VM exit and
// of probe hits of each kind on the workload's hvwl_target_add, as host
// wall-clock time per call over n calls. Ratios between them are what to
// compare across machines; absolute numbers depend on the host.
func (s *Session) Bench(ctx context.Context, n int) (BenchResult, error) {
	a, err := s.Attached()
	if err != nil {
		return BenchResult{}, err
	}
	m := a.Manager
	res := BenchResult{Calls: n, CPUs: s.VM.NumCPUs()}
	// timed runs cmd three times and keeps the fastest run: the mailbox is
	// polled every 20 ms and the guest's scheduler adds noise of its own
	// (a threads baseline was once slower than every probed run).
	timed := func(cmd string) (time.Duration, uint64, error) {
		var best time.Duration
		var bestExits uint64
		for i := 0; i < 3; i++ {
			e0 := s.VM.Stats().Total.Load()
			t0 := time.Now()
			if _, err := s.Scenario(ctx, cmd); err != nil {
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

	// The target's third instruction (after push %rbp; mov %rsp,%rbp,
	// which the host emulates) takes a slot: boosted, or single-stepped
	// when a post handler must run after it.
	body, err := instructionOffset(a.Kernel, "hvwl_target_add", 2)
	if err != nil {
		return res, err
	}
	nop := func(*kprobes.Context) bool { return false }
	type probeCase struct {
		name       string
		add, remov func() error
	}
	kp := &kprobes.Kprobe{Symbol: "hvwl_target_add", PreHandler: nop}
	kpBody := &kprobes.Kprobe{Symbol: "hvwl_target_add", Offset: body, PreHandler: nop}
	kpPost := &kprobes.Kprobe{Symbol: "hvwl_target_add", Offset: body, PreHandler: nop, PostHandler: func(*kprobes.Context) {}}
	jp := &kprobes.Jprobe{Symbol: "hvwl_target_add", Entry: func(*kprobes.JprobeContext) {}}
	rp := &kprobes.Kretprobe{Symbol: "hvwl_target_add", Handler: func(*kprobes.RetContext) {}}
	cases := []probeCase{
		{"kprobe at entry (host-emulated push)", func() error { return m.Register(kp) }, func() error { return m.Unregister(kp) }},
		{fmt.Sprintf("kprobe at +%#x (boosted slot)", body), func() error { return m.Register(kpBody) }, func() error { return m.Unregister(kpBody) }},
		{fmt.Sprintf("kprobe at +%#x with post handler (stepped)", body), func() error { return m.Register(kpPost) }, func() error { return m.Unregister(kpPost) }},
		{"jprobe", func() error { return m.RegisterJprobe(jp) }, func() error { return m.UnregisterJprobe(jp) }},
		{"kretprobe (entry + return)", func() error { return m.RegisterKretprobe(rp) }, func() error { return m.UnregisterKretprobe(rp) }},
	}
	for _, c := range cases {
		if err := c.add(); err != nil {
			return res, fmt.Errorf("%s: %w", c.name, err)
		}
		t, exits, err := timed(calls)
		var tp time.Duration
		var pExits uint64
		if err == nil && res.CPUs > 1 {
			tp, pExits, err = timed(threads)
		}
		if rerr := c.remov(); err == nil {
			err = rerr
		}
		if err != nil {
			return res, fmt.Errorf("%s: %w", c.name, err)
		}
		res.Cases = append(res.Cases, BenchCase{
			Name:        c.name,
			PerHit:      (t - tBase) / time.Duration(n),
			ExitsPerHit: float64(int64(exits)-int64(baseExits)) / float64(n),
		})
		if res.CPUs > 1 {
			res.Parallel = append(res.Parallel, BenchCase{
				Name:        c.name,
				PerHit:      (tp - tThreads) / time.Duration(n),
				ExitsPerHit: float64(int64(pExits)-int64(threadExits)) / float64(res.CPUs*n),
			})
		}
	}
	return res, nil
}

// instructionOffset is the offset of sym's n-th instruction (from 0).
func instructionOffset(k *RunningKernel, sym string, n int) (uint64, error) {
	va, err := k.Resolve(sym, 0)
	if err != nil {
		return 0, err
	}
	code := make([]byte, 16*(n+1))
	if err := k.ReadVirt(va, code); err != nil {
		return 0, err
	}
	off := 0
	for i := 0; i < n; i++ {
		inst, err := x86asm.Decode(code[off:], 64)
		if err != nil {
			return 0, fmt.Errorf("decoding %s+%#x: %w", sym, off, err)
		}
		off += inst.Len
	}
	return uint64(off), nil
}
