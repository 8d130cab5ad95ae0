package kprobes

import (
	"fmt"
	"sync"
	"testing"
)

// Two fake vCPUs driving one Manager at once. Run with -race: the hit path
// of one vCPU must share nothing unsynchronised with the other's.

// secondCPU adds vCPU 1 with its own stack in the lower half of the stack
// mapping (vCPU 0 uses the top, see reset).
func (e *env) secondCPU() *fakeCPU {
	e.vm.n = 2
	c := &fakeCPU{id: 1}
	c.sregs = e.cpu.sregs
	c.regs = e.cpu.regs
	c.regs.RSP = stackVA + stackSize/2 - 0x200
	return c
}

// callOn calls the function at va on c and runs c until it returns to the
// sentinel.
func (e *env) callOn(c *fakeCPU, va uint64) error {
	c.regs.RSP -= 8
	writeU64(e.k, c.regs.RSP, sentinel)
	c.regs.RIP = va
	return e.runOn(c, sentinel)
}

// runOn steps c until its rip is stop.
func (e *env) runOn(c *fakeCPU, stop uint64) error {
	for i := 0; c.regs.RIP != stop; i++ {
		if i == 10000 {
			return fmt.Errorf("vCPU %d did not reach %#x (rip %#x)", c.id, stop, c.regs.RIP)
		}
		if _, err := e.exec(c); err != nil {
			return err
		}
	}
	return nil
}

// TestSMPConcurrentHits: both vCPUs call one function carrying a kprobe, a
// jprobe and a kretprobe on its entry (emulated push), a kprobe with a post
// handler on a stepped instruction and one on a boosted instruction. Every
// call computes its own result, every handler sees its own vCPU's
// registers, and every count adds up.
func TestSMPConcurrentHits(t *testing.T) {
	e := newEnv(t)
	// push %rbp; mov %rsp,%rbp (emulated); xadd %rsi,%rdi (stepped with
	// a post handler); xchg %rax,%rdi (boosted); pop %rbp; ret
	f := e.fn("smp_add", 0x55, 0x48, 0x89, 0xe5, 0x48, 0x0f, 0xc1, 0xf7, 0x48, 0x87, 0xf8, 0x5d, 0xc3)
	c1 := e.secondCPU()
	cpus := []*fakeCPU{e.cpu, c1}
	const calls = 300
	errs := make(chan error, 16)
	report := func(format string, a ...any) {
		select {
		case errs <- fmt.Errorf(format, a...):
		default:
		}
	}
	kp := &Kprobe{Symbol: "smp_add", PreHandler: func(c *Context) bool {
		if c.Regs().RDI != uint64(c.CPU) {
			report("kprobe on vCPU %d sees rdi %d", c.CPU, c.Regs().RDI)
		}
		return false
	}}
	jp := &Jprobe{Symbol: "smp_add", Entry: func(j *JprobeContext) {
		if a, _ := j.Arg(0); a != uint64(j.CPU) {
			report("jprobe on vCPU %d sees arg0 %d", j.CPU, a)
		}
		j.Regs().RDI = 99 // undone before the function runs
	}}
	rp := &Kretprobe{Symbol: "smp_add", Handler: func(r *RetContext) {
		if r.RetVal()>>32 != uint64(r.CPU) {
			report("kretprobe on vCPU %d sees return value %#x", r.CPU, r.RetVal())
		}
	}}
	post := &Kprobe{Symbol: "smp_add", Offset: 4, PostHandler: func(c *Context) {
		if c.Regs().RDI>>32 != uint64(c.CPU) {
			report("post handler on vCPU %d sees rdi %#x", c.CPU, c.Regs().RDI)
		}
	}}
	boost := &Kprobe{Symbol: "smp_add", Offset: 8}
	for _, p := range []*Kprobe{kp, post, boost} {
		if err := e.m.Register(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.m.RegisterJprobe(jp); err != nil {
		t.Fatal(err)
	}
	if err := e.m.RegisterKretprobe(rp); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, c := range cpus {
		wg.Add(1)
		go func(c *fakeCPU) {
			defer wg.Done()
			for i := uint64(0); i < calls; i++ {
				rsp, rbp := c.regs.RSP, c.regs.RBP
				c.regs.RDI, c.regs.RSI = uint64(c.id), uint64(c.id)<<32|i
				if err := e.callOn(c, f); err != nil {
					report("call %d: %v", i, err)
					return
				}
				if want := uint64(c.id)<<32 | i + uint64(c.id); c.regs.RAX != want || c.regs.RSP != rsp || c.regs.RBP != rbp {
					report("vCPU %d call %d: rax %#x rsp %#x rbp %#x, want %#x %#x %#x", c.id, i, c.regs.RAX, c.regs.RSP, c.regs.RBP, want, rsp, rbp)
					return
				}
			}
		}(c)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	st := e.m.Stats()
	for _, n := range []uint64{kp.Hits(), jp.Hits(), rp.Hits(), post.Hits(), boost.Hits(), st.Returns} {
		if n != 2*calls {
			t.Errorf("counts %d %d %d %d %d, returns %d; want %d each", kp.Hits(), jp.Hits(), rp.Hits(), post.Hits(), boost.Hits(), st.Returns, 2*calls)
			break
		}
	}
	if kp.NMissed()+jp.NMissed()+rp.NMissed()+post.NMissed() != 0 || st.Reentered != 0 || st.LostSteps != 0 || st.Errors != 0 {
		t.Errorf("missed %d/%d/%d/%d, stats %+v, err %v", kp.NMissed(), jp.NMissed(), rp.NMissed(), post.NMissed(), st, e.m.Err())
	}
	if st.Stepped != 2*calls || st.Boosted != 2*calls || st.Emulated != 2*calls {
		t.Errorf("stepped %d boosted %d emulated %d, want %d each", st.Stepped, st.Boosted, st.Emulated, 2*calls)
	}
}

// TestSMPReturnRacesReclaim: vCPU 0 is completing a return (its handler
// runs) when vCPU 1 enters with no free instance. The stack slot of
// vCPU 0's frame no longer holds the trampoline — on a KVM that reflects
// int3 through the doorbell the #BP frame's SS is pushed exactly there —
// but its instance is still vCPU 0's: vCPU 1 must miss the call, not
// recycle that instance (which vCPU 0 then freed under it, sending its
// return to an instance with no return address).
func TestSMPReturnRacesReclaim(t *testing.T) {
	e := newEnv(t)
	// push %rbp; mov %rsp,%rbp; pop %rbp; ret
	f := e.fn("smp_wait", 0x55, 0x48, 0x89, 0xe5, 0x5d, 0xc3)
	c1 := e.secondCPU()
	inHandler, resume := make(chan struct{}), make(chan struct{})
	var returns [2]int
	rp := &Kretprobe{Symbol: "smp_wait", MaxActive: 1, Handler: func(r *RetContext) {
		returns[r.CPU]++
		if r.CPU == 0 {
			writeU64(e.k, r.Regs().RSP-8, 0x18)
			close(inHandler)
			<-resume
		}
	}}
	if err := e.m.RegisterKretprobe(rp); err != nil {
		t.Fatal(err)
	}
	done0 := make(chan error, 1)
	go func() { done0 <- e.callOn(e.cpu, f) }()
	<-inHandler
	// vCPU 1 enters and runs up to its ret while vCPU 0 is still in the
	// middle of its return.
	c1.regs.RSP -= 8
	writeU64(e.k, c1.regs.RSP, sentinel)
	c1.regs.RIP = f
	if err := e.runOn(c1, f+5); err != nil {
		t.Fatal(err)
	}
	close(resume)
	if err := <-done0; err != nil {
		t.Fatal(err)
	}
	if err := e.runOn(c1, sentinel); err != nil {
		t.Fatal(err)
	}
	st := e.m.Stats()
	if returns != [2]int{1, 0} || rp.NMissed() != 1 || st.Reclaimed != 0 || st.OrphanReturns != 0 || st.Errors != 0 {
		t.Errorf("returns %v, nmissed %d, reclaimed %d, orphan returns %d, errors %d (%v); want [1 0], 1 missed, none else",
			returns, rp.NMissed(), st.Reclaimed, st.OrphanReturns, st.Errors, e.m.Err())
	}
}
