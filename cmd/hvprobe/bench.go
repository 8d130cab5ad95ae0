package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/hvprobe/hvprobe/bench"
	"github.com/hvprobe/hvprobe/runner"
	"github.com/hvprobe/hvprobe/session"
	"github.com/hvprobe/hvprobe/vmm"
)

func cmdBench(args []string) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var kernel, sysmap, initrd string
	guestFlags(fs, &kernel, &sysmap, &initrd)
	calls := fs.Int("calls", 2000, "probed calls per measurement")
	cpus := fs.Int("cpus", 1, "number of vCPUs; with more than one, every case is measured again with all vCPUs hitting the probe at once")
	bootTimeout := fs.Duration("boot-timeout", 20*time.Minute, "how long the guest may take to reach its workload")
	fs.Usage = func() { printUsage(fs, "bench") }
	if err := fs.Parse(args); err != nil {
		return usageError(err)
	}
	var bad runner.Refusals
	if fs.NArg() > 0 {
		bad = append(bad, fmt.Sprintf("unexpected arguments: %q", fs.Args()))
	}
	if *calls < 1 {
		bad = append(bad, fmt.Sprintf("--calls %d: at least one call", *calls))
	}
	if err := vmm.CheckShape(512<<20, *cpus); err != nil {
		bad = append(bad, fmt.Sprintf("--cpus %d: %v", *cpus, err))
	}
	if *bootTimeout <= 0 {
		bad = append(bad, fmt.Sprintf("--boot-timeout %v: must be positive", *bootTimeout))
	}
	for _, f := range []struct{ flag, path string }{{"kernel", kernel}, {"system-map", sysmap}, {"initrd", initrd}} {
		if _, err := os.Stat(f.path); err != nil {
			bad = append(bad, fmt.Sprintf("--%s: %v", f.flag, err))
		}
	}
	if len(bad) > 0 {
		return bad
	}

	s, err := session.New(session.Options{
		Kernel: kernel, SystemMap: sysmap, Initrd: initrd,
		CmdlineAppend: "hvprobe_wl=serve", Console: nil, CPUs: *cpus,
	})
	if err != nil {
		return err
	}
	defer s.Close()
	ended := make(chan vmm.Result, 1)
	go func() { ended <- s.Run(context.Background()) }()
	ctx, cancel := context.WithTimeout(context.Background(), *bootTimeout)
	defer cancel()
	ready, err := s.WaitLineSeen(ctx, "HVWL: ready")
	if err != nil {
		s.VM.Stop()
		r := <-ended
		return fmt.Errorf("guest did not reach its workload: %v (guest: %v %v)", err, r.Reason, r.Err)
	}
	fmt.Printf("guest ready after %.2fs\n", ready.At.Seconds())
	res, err := bench.Run(context.Background(), s, *calls)
	s.VM.Stop()
	<-ended
	if err != nil {
		return err
	}
	w := os.Stdout
	fmt.Fprintf(w, "calls per measurement: %d\n", res.Calls)
	fmt.Fprintf(w, "bare exit round trip:  %v\n", res.BareExit)
	fmt.Fprintf(w, "unprobed call:         %v\n", res.PerCall)
	fmt.Fprintf(w, "%-60s %12s %14s %12s\n", "probe", "cost/hit", "÷ bare exit", "exits/hit")
	for _, c := range res.Cases {
		fmt.Fprintf(w, "%-60s %12v %14.2f %12.2f\n", c.Name, c.PerHit, float64(c.PerHit)/float64(res.BareExit), noNegZero(c.ExitsPerHit))
	}
	if len(res.Parallel) == 0 {
		return nil
	}
	fmt.Fprintf(w, "\nall %d vCPUs hitting at once (%d calls each; cost/hit is per call of one vCPU):\n", res.CPUs, res.Calls)
	fmt.Fprintf(w, "%-60s %12s %14s %12s\n", "probe", "cost/hit", "÷ 1 vCPU", "exits/hit")
	for i, c := range res.Parallel {
		fmt.Fprintf(w, "%-60s %12v %14.2f %12.2f\n", c.Name, c.PerHit, float64(c.PerHit)/float64(res.Cases[i].PerHit), noNegZero(c.ExitsPerHit))
	}
	return nil
}

// noNegZero prints a count that stray exits in the unprobed run pushed
// just below zero as 0.00, not -0.00.
func noNegZero(x float64) float64 {
	if x < 0 && x > -0.005 {
		return 0
	}
	return x
}
