package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hvprobe/hvprobe/kprobes"
)

// TestJprobeArguments: the jprobe sees exactly the arguments the workload
// passed, including the two passed on the stack, and guest state is
// unchanged (the workload's return values are still right).
func TestJprobeArguments(t *testing.T) {
	g := miniGuest(t)
	m := g.a.Manager
	var mu sync.Mutex
	var last []uint64
	var calls int64
	jp := &kprobes.Jprobe{Symbol: "hvwl_target_args8", Entry: func(c *kprobes.JprobeContext) {
		args := make([]uint64, 8)
		for i := range args {
			v, err := c.Arg(i)
			if err != nil {
				t.Errorf("Arg(%d): %v", i, err)
			}
			args[i] = v
		}
		// The handler may scribble on registers: the guest must not see it.
		c.Regs().RDI = 0xdead
		mu.Lock()
		last, calls = args, calls+1
		mu.Unlock()
	}}
	if err := m.RegisterJprobe(jp); err != nil {
		t.Fatal(err)
	}
	r := report(t, g.run(t, "args8:100"), "args8")
	if err := m.UnregisterJprobe(jp); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if n := num(t, r, "n"); calls != n {
		t.Fatalf("jprobe saw %d calls, workload made %d", calls, n)
	}
	var got []string
	for _, a := range last {
		got = append(got, fmt.Sprint(int64(a)))
	}
	if strings.Join(got, ",") != r["last"] {
		t.Fatalf("jprobe saw last args %s, workload passed %s", strings.Join(got, ","), r["last"])
	}
	var sum int64
	for _, a := range last {
		sum += int64(a)
	}
	if num(t, r, "ret") != sum {
		t.Fatalf("workload got %d from the probed call, want the sum %d: the handler's writes leaked", num(t, r, "ret"), sum)
	}
}

// TestJprobeStringArgument reads a pointer argument through guest memory.
func TestJprobeStringArgument(t *testing.T) {
	g := miniGuest(t)
	m := g.a.Manager
	var mu sync.Mutex
	var last string
	jp := &kprobes.Jprobe{Symbol: "hvwl_target_str", Entry: func(c *kprobes.JprobeContext) {
		p, _ := c.Arg(0)
		s, err := c.ReadString(p, 64)
		if err != nil {
			t.Errorf("reading the string argument: %v", err)
		}
		mu.Lock()
		last = s
		mu.Unlock()
	}}
	if err := m.RegisterJprobe(jp); err != nil {
		t.Fatal(err)
	}
	r := report(t, g.run(t, "str:20"), "str")
	m.UnregisterJprobe(jp)
	mu.Lock()
	defer mu.Unlock()
	if last != r["last"] {
		t.Fatalf("jprobe read %q, workload passed %q", last, r["last"])
	}
}

// TestKretprobeReturnValues: N returns, each value the workload got.
func TestKretprobeReturnValues(t *testing.T) {
	g := miniGuest(t)
	m := g.a.Manager
	var n, sum, last atomic.Int64
	rp := &kprobes.Kretprobe{Symbol: "hvwl_target_ret", Handler: func(c *kprobes.RetContext) {
		n.Add(1)
		sum.Add(int64(c.RetVal()))
		last.Store(int64(c.RetVal()))
	}}
	if err := m.RegisterKretprobe(rp); err != nil {
		t.Fatal(err)
	}
	r := report(t, g.run(t, "ret:200"), "ret")
	if err := m.UnregisterKretprobe(rp); err != nil {
		t.Fatal(err)
	}
	if n.Load() != num(t, r, "n") || sum.Load() != num(t, r, "sum") || last.Load() != num(t, r, "last") {
		t.Fatalf("kretprobe saw n=%d sum=%d last=%d; workload: %v", n.Load(), sum.Load(), last.Load(), r)
	}
	if rp.NMissed() != 0 {
		t.Errorf("nmissed = %d, want 0", rp.NMissed())
	}
}

// TestKretprobeRecursionNMissed: with recursion depth d the function is
// active d+1 times at once; with maxactive m, the outer m calls hold the
// instances and the inner d+1-m are missed.
func TestKretprobeRecursionNMissed(t *testing.T) {
	g := miniGuest(t)
	m := g.a.Manager
	const depth, maxActive = 12, 5
	var returns atomic.Int64
	rp := &kprobes.Kretprobe{Symbol: "hvwl_recurse", MaxActive: maxActive, Handler: func(*kprobes.RetContext) { returns.Add(1) }}
	if err := m.RegisterKretprobe(rp); err != nil {
		t.Fatal(err)
	}
	r := report(t, g.run(t, fmt.Sprintf("recurse:%d", depth)), "recurse")
	if err := m.UnregisterKretprobe(rp); err != nil {
		t.Fatal(err)
	}
	calls := num(t, r, "calls")
	wantMissed := max(0, calls-maxActive)
	if int64(rp.NMissed()) != wantMissed || returns.Load() != calls-wantMissed {
		t.Fatalf("depth %d (%d calls), maxactive %d: nmissed=%d returns=%d; want nmissed=%d returns=%d",
			depth, calls, maxActive, rp.NMissed(), returns.Load(), wantMissed, calls-wantMissed)
	}
	if want := depth * (depth + 1) / 2; num(t, r, "ret") != int64(want) {
		t.Fatalf("recursion returned %d under the kretprobe, want %d", num(t, r, "ret"), want)
	}
}

// TestAllThreeOnOneFunction: kprobe, jprobe and kretprobe on one function.
func TestAllThreeOnOneFunction(t *testing.T) {
	g := miniGuest(t)
	m := g.a.Manager
	var k, j, ret atomic.Int64
	kp := counting("hvwl_target_add", 0, &k)
	jp := &kprobes.Jprobe{Symbol: "hvwl_target_add", Entry: func(*kprobes.JprobeContext) { j.Add(1) }}
	rp := &kprobes.Kretprobe{Symbol: "hvwl_target_add", Handler: func(*kprobes.RetContext) { ret.Add(1) }}
	register(t, m, kp)
	if err := m.RegisterJprobe(jp); err != nil {
		t.Fatal(err)
	}
	if err := m.RegisterKretprobe(rp); err != nil {
		t.Fatal(err)
	}
	n := num(t, report(t, g.run(t, "calls:120"), "calls"), "n")
	m.UnregisterJprobe(jp)
	unregister(t, m, kp)
	m.UnregisterKretprobe(rp)
	if k.Load() != n || j.Load() != n || ret.Load() != n {
		t.Fatalf("kprobe %d, jprobe %d, kretprobe %d; workload made %d calls", k.Load(), j.Load(), ret.Load(), n)
	}
}

// TestKretprobeThreads: kernel threads calling the probed function each get
// their returns paired: every call returns once, with its own value.
func TestKretprobeThreads(t *testing.T) {
	g := miniGuest(t)
	m := g.a.Manager
	var returns, sum atomic.Int64
	rp := &kprobes.Kretprobe{Symbol: "hvwl_target_add", Handler: func(c *kprobes.RetContext) {
		returns.Add(1)
		sum.Add(int64(c.RetVal()))
	}}
	if err := m.RegisterKretprobe(rp); err != nil {
		t.Fatal(err)
	}
	const k, n = 4, 100
	r := report(t, g.run(t, fmt.Sprintf("threads:%d:%d", k, n)), "threads")
	if err := m.UnregisterKretprobe(rp); err != nil {
		t.Fatal(err)
	}
	// Thread j calls hvwl_target_add(j, i) for i < n: the returns sum to
	// n*sum(j) + k*sum(i).
	want := int64(n*(k*(k-1)/2) + k*(n*(n-1)/2))
	if total := num(t, r, "total"); returns.Load() != total || sum.Load() != want || rp.NMissed() != 0 {
		t.Fatalf("returns %d (calls %d), sum %d (want %d), nmissed %d", returns.Load(), total, sum.Load(), want, rp.NMissed())
	}
}

// TestKretprobeUnregisterMidFlight: the kretprobe is removed while a call
// it instrumented is still asleep inside the function. The call must
// still return to its real caller with its real value; no handler runs.
func TestKretprobeUnregisterMidFlight(t *testing.T) {
	g := miniGuest(t)
	m := g.a.Manager
	var returns atomic.Int64
	rp := &kprobes.Kretprobe{Symbol: "hvwl_target_block", Handler: func(*kprobes.RetContext) { returns.Add(1) }}
	if err := m.RegisterKretprobe(rp); err != nil {
		t.Fatal(err)
	}
	type result struct {
		lines []string
		err   error
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
		defer cancel()
		l, err := g.box.Scenario(ctx, "block:3000")
		done <- result{l, err}
	}()
	deadline := time.Now().Add(2 * time.Minute)
	for rp.Hits() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the workload never entered hvwl_target_block")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := m.UnregisterKretprobe(rp); err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	r := report(t, res.lines, "block")
	if num(t, r, "ret") != num(t, r, "ms") || returns.Load() != 0 {
		t.Fatalf("after unregistering mid-flight: the call returned %s (want %s), handler ran %d times (want 0)", r["ret"], r["ms"], returns.Load())
	}
	report(t, g.run(t, "calls:10"), "calls") // and the guest goes on
}
