package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hvprobe/hvprobe/kprobes"
	"github.com/hvprobe/hvprobe/session"
	"github.com/hvprobe/hvprobe/tests/kvmtest"
	"github.com/hvprobe/hvprobe/vmm"
)

// stockBootTimeout: Debian's kernel reaches /init in about a minute on
// hardware or nested KVM (55–101 s measured), but needs 15+ minutes where
// kernel mode is emulated (docs/QUIRKS.md); HVPROBE_STOCK_TIMEOUT overrides.
func stockBootTimeout() time.Duration {
	def := 12 * time.Minute
	if emulatingHost() {
		def = 35 * time.Minute
	}
	return envDuration("HVPROBE_STOCK_TIMEOUT", def)
}

// emulatingHost: guest kernel mode is instruction-emulated here (PVM).
func emulatingHost() bool {
	h, err := vmm.DetectHost("/sys/module", "")
	return err == nil && h.Emulating
}

func envDuration(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil {
		return d
	}
	return def
}

// TestStockKernelBootProbe boots Debian's stock cloud kernel (its real
// System.map, KASLR on) with a probe on do_one_initcall armed during boot.
// Ground truth: with initcall_debug the kernel itself prints one
// "calling  fn @ pid" line per initcall; those do_one_initcall runs are
// the ones from kernel_init, pid 1 (console_init calls the console
// initcalls directly, from pid 0). The probe must hit exactly that often
// before the kernel runs /init.
func TestStockKernelBootProbe(t *testing.T) {
	kvmtest.RequireKVM(t)
	stopSharedGuests()
	dir := filepath.Join(imagesDir(), "stock")
	for _, f := range []string{"vmlinuz", "System.map"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatalf("stock kernel not fetched (make images-stock): %v", err)
		}
	}
	// A stock boot on the nested KVM sometimes stops making progress
	// (docs/QUIRKS.md #23, not yet diagnosed): a boot whose console is
	// silent for stallAfter is abandoned and retried, and said so.
	const attempts = 3
	for i := 1; i <= attempts; i++ {
		stalled := bootStockOnce(t, dir, i)
		if !stalled {
			return
		}
		t.Logf("attempt %d: the stock guest's console was silent for %v; retrying", i, stallAfter())
	}
	t.Fatalf("the stock guest stalled in all %d attempts", attempts)
}

// stallAfter is how long a booting stock guest may print nothing. Where
// kernel mode is emulated, single initcalls run for minutes without a word
// (ftrace's check of every mcount site took ~7 minutes, docs/QUIRKS.md).
func stallAfter() time.Duration {
	if emulatingHost() {
		return 15 * time.Minute
	}
	return 90 * time.Second
}

// bootStockOnce boots the stock kernel once and checks the probe against
// the kernel's own initcall count. It reports a stall instead of failing.
func bootStockOnce(t *testing.T, dir string, attempt int) (stalled bool) {
	console, err := os.Create(filepath.Join(logDir(), fmt.Sprintf("hvprobe-e2e-stock-console-%d.log", attempt)))
	if err != nil {
		t.Fatal(err)
	}
	defer console.Close()
	s, err := session.New(session.Options{
		Kernel:    filepath.Join(dir, "vmlinuz"),
		SystemMap: filepath.Join(dir, "System.map"),
		Initrd:    filepath.Join(imagesDir(), "mini", "initramfs.cpio"),
		// cryptomgr.notests: the crypto self-tests are no initcalls and take
		// over 5 minutes where kernel mode is emulated (docs/QUIRKS.md #31).
		CmdlineAppend: "initcall_debug ignore_loglevel cryptomgr.notests",
		Console:       console,
	})
	if err != nil {
		t.Fatal(err)
	}
	stuck := false
	defer func() {
		if !stuck { // a vCPU thread that never stopped may still use its kvm_run page
			s.Close()
		}
	}()
	var hits atomic.Int64
	p := &kprobes.Kprobe{Symbol: "do_one_initcall", PreHandler: func(*kprobes.Context) bool {
		hits.Add(1)
		return false
	}}
	s.AtAttach(func(a *session.Attached) error { return a.Manager.Register(p) })
	ctx, cancel := context.WithTimeout(context.Background(), stockBootTimeout())
	defer cancel()
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		r := s.Run(ctx)
		if r.Panicked {
			t.Errorf("stock kernel panicked: %s", strings.Join(r.Tail, "\n"))
		}
		if r.Err != nil {
			t.Errorf("the stock guest stopped: %v", r.Err)
		}
		cancel() // a guest that ended will print nothing more
	}()
	var silent atomic.Bool
	go func() {
		last, since := 0, time.Now()
		for {
			select {
			case <-ended:
				return
			case <-time.After(5 * time.Second):
			}
			if n := len(s.Lines()); n != last {
				last, since = n, time.Now()
			} else if time.Since(since) > stallAfter() {
				silent.Store(true)
				cancel()
				return
			}
		}
	}()
	l, err := s.WaitLineSeen(ctx, "Run /init as init process")
	atInit := hits.Load()
	s.VM.Stop()
	select {
	case <-ended:
	case <-time.After(30 * time.Second):
		stuck = true
		t.Fatalf("attempt %d: the stock guest's vCPU did not stop within 30 s of Stop: the VMM itself is stuck", attempt)
	}
	if silent.Load() {
		return true
	}
	if err != nil {
		t.Fatalf("stock kernel did not reach /init: %v (console: %s)", err, console.Name())
	}
	if err := s.AttachErr(); err != nil {
		t.Fatal(err)
	}
	calls := 0
	for _, line := range s.Lines() {
		if line.At > l.At {
			break
		}
		if strings.Contains(line.Text, "calling  ") && strings.HasSuffix(line.Text, " @ 1") {
			calls++
		}
	}
	t.Logf("stock kernel reached /init after %.1fs; %d initcalls printed, probe hit %d times", l.At.Seconds(), calls, atInit)
	if calls == 0 || atInit != int64(calls) {
		t.Fatalf("do_one_initcall: %d hits, the kernel printed %d \"calling\" lines", atInit, calls)
	}
	return false
}
