package e2e

import (
	"bytes"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/hvprobe/hvprobe/internal/x86dec"
	"github.com/hvprobe/hvprobe/kprobes"
)

func counting(sym string, off uint64, n *atomic.Int64) *kprobes.Kprobe {
	return &kprobes.Kprobe{Symbol: sym, Offset: off, PreHandler: func(*kprobes.Context) bool {
		n.Add(1)
		return false
	}}
}

// TestKprobeCountsExactly: N calls reported by the workload → N hits.
func TestKprobeCountsExactly(t *testing.T) {
	g := miniGuest(t)
	m := g.a.Manager
	var hits atomic.Int64
	p := counting("hvwl_target_add", 0, &hits)
	register(t, m, p)
	defer unregister(t, m, p)
	r := report(t, g.run(t, "calls:500"), "calls")
	n := num(t, r, "n")
	if hits.Load() != n || int64(p.Hits()) != n {
		t.Fatalf("workload made %d calls; pre handler saw %d, Hits() = %d", n, hits.Load(), p.Hits())
	}
	if p.NMissed() != 0 {
		t.Errorf("nmissed = %d, want 0", p.NMissed())
	}
}

// instructionOffsets decodes the start of sym in the running guest.
func instructionOffsets(t *testing.T, g *guest, sym string, count int) []uint64 {
	t.Helper()
	va, err := g.a.Kernel.Resolve(sym, 0)
	if err != nil {
		t.Fatal(err)
	}
	code := make([]byte, 64)
	if err := g.a.Kernel.ReadVirt(va, code); err != nil {
		t.Fatal(err)
	}
	var offs []uint64
	for off := 0; len(offs) < count; {
		inst, err := x86dec.Decode(code[off:])
		if err != nil {
			t.Fatalf("decoding %s+%#x: %v", sym, off, err)
		}
		offs = append(offs, uint64(off))
		off += inst.Len
	}
	return offs
}

// TestKprobesInsideBody probes instructions past the entry: each is hit
// once per call, whatever way the engine executes it.
func TestKprobesInsideBody(t *testing.T) {
	g := miniGuest(t)
	m := g.a.Manager
	offs := instructionOffsets(t, g, "hvwl_target_ret", 4)[1:]
	counts := make([]atomic.Int64, len(offs))
	var ps []*kprobes.Kprobe
	for i, off := range offs {
		p := counting("hvwl_target_ret", off, &counts[i])
		register(t, m, p)
		ps = append(ps, p)
	}
	r := report(t, g.run(t, "ret:300"), "ret")
	for _, p := range ps {
		unregister(t, m, p)
	}
	n := num(t, r, "n")
	for i, off := range offs {
		if counts[i].Load() != n {
			t.Errorf("hvwl_target_ret+%#x: %d hits, workload made %d calls", off, counts[i].Load(), n)
		}
	}
	// The probed function still computes what it did: the workload's sum
	// of x*3+1 over x < n.
	if want := 3*n*(n-1)/2 + n; num(t, r, "sum") != want {
		t.Errorf("workload sum %d with probes in its body, want %d", num(t, r, "sum"), want)
	}
}

// TestAggregateAndUnregister: two probes on one address both see every
// call; removing one leaves the other armed; removing both stops counting
// while the guest goes on.
func TestAggregateAndUnregister(t *testing.T) {
	g := miniGuest(t)
	m := g.a.Manager
	var a, b atomic.Int64
	var order []string
	pa := &kprobes.Kprobe{Symbol: "hvwl_target_add", PreHandler: func(*kprobes.Context) bool {
		a.Add(1)
		if len(order) < 2 {
			order = append(order, "a")
		}
		return false
	}}
	pb := &kprobes.Kprobe{Symbol: "hvwl_target_add", PreHandler: func(*kprobes.Context) bool {
		b.Add(1)
		if len(order) < 2 {
			order = append(order, "b")
		}
		return false
	}}
	register(t, m, pa)
	register(t, m, pb)
	n1 := num(t, report(t, g.run(t, "calls:200"), "calls"), "n")
	if a.Load() != n1 || b.Load() != n1 {
		t.Fatalf("aggregate: a=%d b=%d, want %d each", a.Load(), b.Load(), n1)
	}
	if fmt.Sprint(order) != "[a b]" {
		t.Errorf("handlers ran in order %v, want registration order [a b]", order)
	}
	unregister(t, m, pa)
	n2 := num(t, report(t, g.run(t, "calls:150"), "calls"), "n")
	if a.Load() != n1 || b.Load() != n1+n2 {
		t.Fatalf("after removing a: a=%d (want %d) b=%d (want %d)", a.Load(), n1, b.Load(), n1+n2)
	}
	unregister(t, m, pb)
	g.run(t, "calls:100")
	if b.Load() != n1+n2 {
		t.Fatalf("after removing b it still counted: %d, want %d", b.Load(), n1+n2)
	}
	if err := m.Unregister(pb); err == nil {
		t.Error("unregistering a probe twice gave no error")
	}
}

// TestRealKernelPath probes kernel functions the workload drives
// (filp_open, kernel_read) rather than its own targets.
func TestRealKernelPath(t *testing.T) {
	g := miniGuest(t)
	m := g.a.Manager
	var opens, reads atomic.Int64
	po := counting("filp_open", 0, &opens)
	pr := counting("kernel_read", 0, &reads)
	register(t, m, po)
	register(t, m, pr)
	r := report(t, g.run(t, "fileread:40"), "fileread")
	unregister(t, m, po)
	unregister(t, m, pr)
	n := num(t, r, "n")
	if opens.Load() != n {
		t.Errorf("filp_open: %d hits, workload opened %d times", opens.Load(), n)
	}
	if reads.Load() < n {
		t.Errorf("kernel_read: %d hits, workload read at least %d times", reads.Load(), n)
	}
}

// TestThreadsInterleave: several kernel threads call the probed function.
func TestThreadsInterleave(t *testing.T) {
	g := miniGuest(t)
	m := g.a.Manager
	var hits atomic.Int64
	p := counting("hvwl_target_add", 0, &hits)
	register(t, m, p)
	r := report(t, g.run(t, "threads:4:150"), "threads")
	unregister(t, m, p)
	if total := num(t, r, "total"); hits.Load() != total {
		t.Fatalf("%d hits, threads made %d calls", hits.Load(), total)
	}
}

// TestTextRestoredByteExact: after every kind of probe is added, hit and
// removed, the kernel text is byte-identical to before.
func TestTextRestoredByteExact(t *testing.T) {
	g := miniGuest(t)
	m := g.a.Manager
	before := g.text(t)
	var n atomic.Int64
	kp := counting("hvwl_target_add", 0, &n)
	body := counting("hvwl_target_ret", instructionOffsets(t, g, "hvwl_target_ret", 2)[1], &n)
	jp := &kprobes.Jprobe{Symbol: "hvwl_target_add", Entry: func(*kprobes.JprobeContext) {}}
	rp := &kprobes.Kretprobe{Symbol: "hvwl_target_add", Handler: func(*kprobes.RetContext) {}}
	register(t, m, kp)
	register(t, m, body)
	if err := m.RegisterJprobe(jp); err != nil {
		t.Fatal(err)
	}
	if err := m.RegisterKretprobe(rp); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(before, g.text(t)) {
		t.Fatal("registering probes changed no kernel text byte: the probes are not armed")
	}
	g.run(t, "calls:50,ret:50")
	// Remove in an order different from registration.
	if err := m.UnregisterKretprobe(rp); err != nil {
		t.Fatal(err)
	}
	unregister(t, m, body)
	if err := m.UnregisterJprobe(jp); err != nil {
		t.Fatal(err)
	}
	unregister(t, m, kp)
	after := g.text(t)
	if !bytes.Equal(before, after) {
		for i := range before {
			if before[i] != after[i] {
				t.Fatalf("kernel text differs at _stext+%#x: %#x before, %#x after", i, before[i], after[i])
			}
		}
	}
	// And the guest still runs.
	report(t, g.run(t, "calls:10"), "calls")
}
