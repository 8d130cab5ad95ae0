package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kguest "github.com/hvprobe/hvprobe/guest"
	"github.com/hvprobe/hvprobe/kprobes"
	"github.com/hvprobe/hvprobe/probedef"
	"github.com/hvprobe/hvprobe/session"
)

// tortureScenario exercises every workload path with a known result.
const tortureScenario = "calls:50,args8:3,str:4,ret:6,recurse:9,fileread:2,static:20:3"

// TestRandomProbesLeaveWorkloadIntact arms a seeded random sample of 500
// probes (instruction boundaries anywhere in the mini kernel's text,
// function entries, kretprobes) at boot, and checks that the workload's
// results are exactly those of the unprobed shared guest, and that no
// line the pre-boot check accepted fails once the guest runs. The seed is
// new on every run (HVPROBE_SEED repeats one) and printed;
// HVPROBE_TORTURE_SEEDS=N runs N seeds in a row (make torture).
func TestRandomProbesLeaveWorkloadIntact(t *testing.T) {
	ref := miniGuest(t)
	want := ref.run(t, tortureScenario)

	kernel, sysmap, _ := miniPaths()
	k, err := kguest.OpenKernel(kernel, sysmap)
	if err != nil {
		t.Fatal(err)
	}
	seed := time.Now().UnixNano()
	if v, err := strconv.ParseInt(os.Getenv("HVPROBE_SEED"), 10, 64); err == nil {
		seed = v
	}
	seeds := 1
	if v, err := strconv.Atoi(os.Getenv("HVPROBE_TORTURE_SEEDS")); err == nil && v > 0 {
		seeds = v
	}
	for i := range seeds {
		seed := seed + int64(i)
		t.Run(fmt.Sprintf("HVPROBE_SEED=%d", seed), func(t *testing.T) { tortureOnce(t, k, seed, want) })
	}
}

func tortureOnce(t *testing.T, k *kguest.Kernel, seed int64, want []string) {
	t.Logf("HVPROBE_SEED=%d", seed)
	defs := randomSample(t, k, rand.New(rand.NewPCG(uint64(seed), 1)), 400, 60, 40)

	var addErr error
	var dp *session.DefProbes
	// Each kprobe gets a twin at its address with a post handler, which
	// makes the engine execute every sampled instruction itself (host
	// emulation) or step it, never boost it.
	type twin struct {
		of, p *session.Probe
		posts atomic.Uint64
	}
	var twins []*twin
	var sess *session.Session
	var failed []string
	var failedMu sync.Mutex
	notify := func(n session.Notice) {
		if n.Kind == session.NoticeFailed {
			failedMu.Lock()
			failed = append(failed, n.String())
			failedMu.Unlock()
		}
	}
	g, err := coldBootMiniWith(1, "hvprobe_wl=serve", "torture", notify, func(s *session.Session) {
		sess = s
		s.AtAttach(func(a *session.Attached) error {
			dp, addErr = s.AddDefs(a, defs, func(probedef.Event) {})
			if addErr != nil {
				return nil
			}
			for _, p := range dp.Probes() {
				if p.Kprobe == nil {
					continue
				}
				tw := &twin{of: p}
				k := &kprobes.Kprobe{Symbol: p.Kprobe.Symbol, Offset: p.Kprobe.Offset, PostHandler: func(*kprobes.Context) { tw.posts.Add(1) }}
				if k.Symbol == "" {
					k.Addr = p.Kprobe.Addr
				}
				tw.p = &session.Probe{Name: p.Name + " (post twin)", Kprobe: k}
				if addErr = s.Arm(a, tw.p); addErr != nil {
					return nil
				}
				twins = append(twins, tw)
			}
			return nil
		})
	})
	if err != nil {
		t.Fatalf("booting with %d random probes (HVPROBE_SEED=%d): %v", len(defs), seed, err)
	}
	defer g.stop()
	if addErr != nil {
		t.Fatalf("arming the sample (HVPROBE_SEED=%d): %v", seed, addErr)
	}
	got := g.run(t, tortureScenario)
	failedMu.Lock()
	for _, f := range failed {
		t.Errorf("accepted before boot, failed after (HVPROBE_SEED=%d): %s", seed, f)
	}
	failedMu.Unlock()
	// The mailbox's "done seq=N" counts the guest's scenarios, not results.
	results := func(l []string) []string {
		return slices.DeleteFunc(slices.Clone(l), func(s string) bool { return strings.Contains(s, "HVWL: done seq=") })
	}
	got, want = results(got), results(want)
	if !slices.Equal(got, want) {
		t.Fatalf("with the random probes (HVPROBE_SEED=%d) the workload reported\n%s\nwithout them\n%s",
			seed, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	st := g.a.Manager.Stats()
	var exits, hits uint64
	hitProbes := 0
	for _, p := range st.Probes {
		exits += p.Exits
		hits += p.Hits
		if p.Hits > 0 {
			hitProbes++
		}
	}
	perHit := 0.0
	if hits > 0 {
		perHit = float64(exits) / float64(hits)
	}
	t.Logf("%d probes, %d of them hit, %d hits: %.2f exits per hit (emulated %d, of them branches %d; boosted %d; stepped %d; rep iterations %d); reentered %d, faults %d",
		len(st.Probes), hitProbes, hits, perHit, st.Emulated, st.EmulatedBranches, st.Boosted, st.Stepped, st.RepIterations, st.Reentered, st.Faults)
	if st.LostSteps != 0 || st.Errors != 0 || st.OrphanReturns != 0 {
		t.Errorf("lost steps %d, errors %d (%v), orphan returns %d", st.LostSteps, st.Errors, g.a.Manager.Err(), st.OrphanReturns)
	}
	t.Logf("stepped by mnemonic: %v", st.SteppedOps)
	for _, tw := range twins {
		// The guest still runs (idle paths hit too), so a read can fall
		// between a hit's count and its post handler: a count is only
		// wrong if no quiet moment shows it right.
		var h, th, n uint64
		for try := 0; try < 200; try++ {
			n, th, h = tw.posts.Load(), tw.p.Kprobe.Hits(), tw.of.Kprobe.Hits()
			if h == th && th == n && tw.posts.Load() == n {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		if h != th || th != n {
			t.Errorf("%s: %d hits, its twin %d hits and %d post handler runs", tw.of.Name, h, th, n)
		}
		if err := sess.Disarm(g.a, tw.p); err != nil {
			t.Error(err)
		}
	}
	var addrs []uint64
	for _, p := range dp.Probes() {
		addrs = append(addrs, p.Addr())
	}
	if err := dp.Remove(); err != nil {
		t.Fatal(err)
	}
	// No int3 of hvprobe's is left where a probe was, but where the
	// session's own probe stays (free_initmem, while the workload serves
	// from an initcall) or in freed init text (the kernel's to fill: with
	// int3s, on x86).
	sites, err := k.PatchSites()
	if err != nil {
		t.Fatal(err)
	}
	still := map[uint64]bool{}
	for _, p := range g.a.Manager.Stats().Probes {
		still[p.Addr] = true
	}
	slide := g.a.Kernel.Layout.VirtDelta
	for _, a := range addrs {
		if _, ok := sites.Discarded(a - slide); ok || still[a] {
			continue
		}
		// The instruction is as hvprobe loaded it (the mini kernel
		// patches no text at boot but its jump label, not sampled here).
		var b [8]byte
		if err := g.a.Kernel.ReadVirt(a, b[:]); err != nil {
			t.Fatal(err)
		}
		if want := relocated(k, a-slide, len(b), slide); !bytes.Equal(b[:], want) && len(sites.Overlapping(a-slide, uint64(len(b)))) == 0 {
			t.Errorf("%s after removal: % x, loaded as % x", g.a.Kernel.Syms.FormatAddr(a), b, want)
		}
	}
}

// randomSample draws probe lines from k's text — body instruction
// boundaries, entries and kretprobes — and keeps those the pre-boot check
// accepts, logging what it refused and why.
func randomSample(t *testing.T, k *kguest.Kernel, rng *rand.Rand, body, entries, rets int) []*probedef.Def {
	t.Helper()
	type fn struct {
		kguest.Symbol
		ref string
	}
	var funcs []fn
	nth := map[string]int{}
	for s := range k.Symbols.All() {
		nth[s.Name]++
		if s.IsText() && s.Size > 0 && s.Size < 16<<10 && !strings.HasPrefix(s.Name, "__SCT__") {
			funcs = append(funcs, fn{s, fmt.Sprintf("%s:%d", s.Name, nth[s.Name])})
		}
	}
	for i, f := range funcs {
		if nth[f.Name] == 1 {
			funcs[i].ref = f.Name
		}
	}
	var lines []string
	for i := 0; len(lines) < body; i++ {
		f := funcs[rng.IntN(len(funcs))]
		if off, ok := randomBoundary(k, f.Symbol, rng); ok {
			lines = append(lines, fmt.Sprintf("p:body%d %s+%#x", i, f.ref, off))
		}
	}
	for i := range entries {
		lines = append(lines, fmt.Sprintf("p:entry%d %s", i, funcs[rng.IntN(len(funcs))].ref))
	}
	for i := range rets {
		lines = append(lines, fmt.Sprintf("r:ret%d %s ret=$retval", i, funcs[rng.IntN(len(funcs))].ref))
	}
	var sample []*probedef.Def
	for i, l := range lines {
		d, err := probedef.Parse(l)
		if err != nil {
			t.Fatalf("sample line %q: %v", l, err)
		}
		d.Line = i + 1
		sample = append(sample, d)
	}
	ik, err := session.NewImageKernel(k)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	_, err = ik.CheckDefs(sample)
	took := time.Since(t0)
	refused := map[int]bool{}
	why := map[string]int{}
	var se probedef.SyntaxErrors
	if errors.As(err, &se) {
		for _, e := range se {
			refused[e.Line] = true
			why[refusalClass(e.Msg)]++
		}
	} else if err != nil {
		t.Fatal(err)
	}
	var defs []*probedef.Def
	for _, d := range sample {
		if !refused[d.Line] {
			defs = append(defs, d)
		}
	}
	t.Logf("sample of %d checked in %v: %d refused before boot %v, %d kept", len(sample), took, len(refused), why, len(defs))
	// HVPROBE_TORTURE_DUMP=FILE writes the kept lines, for bisecting a
	// failure with `hvprobe run --probes FILE`.
	if path := os.Getenv("HVPROBE_TORTURE_DUMP"); path != "" {
		var b strings.Builder
		for _, d := range defs {
			b.WriteString(d.Text + "\n")
		}
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if len(defs) == 0 {
		t.Fatal("the whole sample was refused")
	}
	return defs
}
