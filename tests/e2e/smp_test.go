package e2e

import (
	"bytes"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hvprobe/hvprobe/kprobes"
)

// TestSMPCountsRepeated: a kernel thread bound to each vCPU calls the
// probed function concurrently; kprobe, jprobe and kretprobe counts equal
// what the workload reports, with nothing missed, 20 times over.
func TestSMPCountsRepeated(t *testing.T) {
	g := twoCPUGuest(t)
	m := g.a.Manager
	var k, j, r atomic.Int64
	var cpus sync.Map
	kp := &kprobes.Kprobe{Symbol: "hvwl_target_add", PreHandler: func(c *kprobes.Context) bool {
		k.Add(1)
		cpus.Store(c.CPU, true)
		return false
	}}
	jp := &kprobes.Jprobe{Symbol: "hvwl_target_add", Entry: func(*kprobes.JprobeContext) { j.Add(1) }}
	rp := &kprobes.Kretprobe{Symbol: "hvwl_target_add", Handler: func(*kprobes.RetContext) { r.Add(1) }}
	register(t, m, kp)
	if err := m.RegisterJprobe(jp); err != nil {
		t.Fatal(err)
	}
	if err := m.RegisterKretprobe(rp); err != nil {
		t.Fatal(err)
	}
	defer func() {
		m.UnregisterKretprobe(rp)
		m.UnregisterJprobe(jp)
		unregister(t, m, kp)
	}()
	for round := 0; round < 20; round++ {
		k0, j0, r0 := k.Load(), j.Load(), r.Load()
		total := num(t, report(t, g.run(t, "threads:2:200"), "threads"), "total")
		if k.Load()-k0 != total || j.Load()-j0 != total || r.Load()-r0 != total {
			t.Fatalf("round %d: kprobe %d, jprobe %d, kretprobe %d; the threads made %d calls",
				round, k.Load()-k0, j.Load()-j0, r.Load()-r0, total)
		}
	}
	if kp.NMissed() != 0 || jp.NMissed() != 0 || rp.NMissed() != 0 {
		t.Fatalf("nmissed: kprobe %d jprobe %d kretprobe %d, want 0", kp.NMissed(), jp.NMissed(), rp.NMissed())
	}
	n := 0
	cpus.Range(func(any, any) bool { n++; return true })
	if n != 2 {
		t.Fatalf("hits came from %d vCPUs, want 2", n)
	}
}

// TestSMPArmDisarmStress arms and disarms a probe in a tight loop from the
// host while both vCPUs call the probed function: the guest survives, the
// workload's own result is right, and the text is byte-identical after.
func TestSMPArmDisarmStress(t *testing.T) {
	g := twoCPUGuest(t)
	m := g.a.Manager
	before := g.text(t)
	var hits atomic.Int64
	stop := make(chan struct{})
	var cycles int
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			p := &kprobes.Kprobe{Symbol: "hvwl_target_add", PreHandler: func(*kprobes.Context) bool { hits.Add(1); return false }}
			if err := m.Register(p); err != nil {
				t.Errorf("cycle %d: register: %v", cycles, err)
				return
			}
			time.Sleep(time.Millisecond)
			if err := m.Unregister(p); err != nil {
				t.Errorf("cycle %d: unregister: %v", cycles, err)
				return
			}
			cycles++
		}
	}()
	// g.run fails at once if the guest dies; the loop stops either way.
	stopLoop := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopLoop()
	lines := g.run(t, "threads:2:5000")
	stopLoop()
	r := report(t, lines, "threads")
	total := num(t, r, "total")
	t.Logf("%d arm/disarm cycles, %d hits counted of %d calls", cycles, hits.Load(), total)
	if hits.Load() > total || cycles == 0 {
		t.Fatalf("%d hits for %d calls over %d cycles", hits.Load(), total, cycles)
	}
	if !bytes.Equal(before, g.text(t)) {
		t.Fatal("kernel text differs after the stress")
	}
	// The guest still runs and computes right.
	c := report(t, g.run(t, "calls:100"), "calls")
	if want := fmt.Sprint(int64(100*99/2 + 100*(1000+1099)/2)); c["sum"] != want {
		t.Fatalf("calls sum %s, want %s", c["sum"], want)
	}
}
