//go:build kvm

package vmm

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestDoFromOwnThread: a request made on the vCPU's own thread (inside a
// Do callback, as a debug hook would) is refused, not deadlocked.
func TestDoFromOwnThread(t *testing.T) {
	vm := newTinyVM(t, tinyMem)
	done := make(chan error, 1)
	go func() {
		done <- vm.Do(0, func(CPU) error { return vm.Do(0, func(CPU) error { return nil }) })
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrOwnThread) {
			t.Fatalf("Do from the vCPU's thread = %v, want ErrOwnThread", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Do from the vCPU's own thread deadlocked")
	}
	if st := vm.VCPUState(0); st != VCPUCreated {
		t.Fatalf("state before Run = %v, want created", st)
	}
}

// TestPauseAllFromOwnThread: pausing every vCPU from a vCPU's own thread
// (a debug hook) runs that vCPU's part there instead of waiting for it
// to park, which would deadlock.
func TestPauseAllFromOwnThread(t *testing.T) {
	vm := newTinyVM(t, tinyMem)
	var perCPU, whole int
	done := make(chan error, 1)
	go func() {
		done <- vm.Do(0, func(CPU) error {
			return vm.withAllStopped(func(int, *VCPU) error { perCPU++; return nil }, func() error { whole++; return nil })
		})
	}()
	select {
	case err := <-done:
		if err != nil || perCPU != 1 || whole != 1 {
			t.Fatalf("pausing all from a vCPU's thread = %v, perCPU ran %d times, whole %d; want nil, 1, 1", err, perCPU, whole)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("pausing all from a vCPU's own thread deadlocked")
	}
}

// pauseHook pauses every vCPU from the vCPU threads themselves, on every
// 64th single-step of each, as a probe handler arming an exit-less probe
// does.
type pauseHook struct {
	vm    *VM
	check func() error
	hits  [2]atomic.Int64
	done  [2]atomic.Int64 // pauses made from each vCPU's thread
	errs  chan error
}

func (h *pauseHook) HandleDebug(c CPU, ev DebugEvent) bool {
	id := c.ID()
	if h.hits[id].Add(1)%64 == 0 {
		if err := h.vm.WithAllPaused(h.check); err != nil {
			select {
			case h.errs <- fmt.Errorf("vCPU %d's hook: %w", id, err):
			default:
			}
		} else {
			h.done[id].Add(1)
		}
	}
	return true
}

// TestPauseStress: many goroutines and both vCPUs' own hooks pause every
// vCPU at once, on a running 2-vCPU guest that increments one byte on
// each. Every pause finishes (no two callers each hold one vCPU), and
// while one lasts the byte does not move (no vCPU is in guest mode).
// Run it under -race too (make race).
func TestPauseStress(t *testing.T) {
	const goroutines, each, fromHooks = 6, 25, 20
	vm := newTinyVMs(t, tinyMem, 2)
	if err := vm.Memory().WritePhys(tinyCode, spinLoop); err != nil {
		t.Fatal(err)
	}
	var moved atomic.Int64
	still := func() error {
		var a, b [1]byte
		if err := vm.Memory().ReadPhys(gpa(pageE), a[:]); err != nil {
			return err
		}
		time.Sleep(200 * time.Microsecond)
		if err := vm.Memory().ReadPhys(gpa(pageE), b[:]); err != nil {
			return err
		}
		if a != b {
			moved.Add(1)
		}
		return nil
	}
	hook := &pauseHook{vm: vm, check: still, errs: make(chan error, 1)}
	if err := vm.SetDebugHook(hook); err != nil {
		t.Fatal(err)
	}
	ran := runStepped(t, vm)
	for hook.hits[0].Load() == 0 || hook.hits[1].Load() == 0 {
		time.Sleep(time.Millisecond) // both vCPUs run: every pause below parks them
	}

	var wg sync.WaitGroup
	errs := make(chan error, goroutines+1)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				var err error
				if (g+i)%2 == 0 {
					err = vm.WithAllPaused(still)
				} else {
					err = vm.WithAllPausedAt(func(rips []uint64) error {
						if len(rips) != 2 {
							return fmt.Errorf("WithAllPausedAt gave %d rips, want 2", len(rips))
						}
						return still()
					})
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Add(1)
	go func() { // requests between the pauses, as --inspect makes
		defer wg.Done()
		for range goroutines * each {
			if err := vm.Do(1, func(c CPU) error { _, err := c.Regs(); return err }); err != nil {
				errs <- err
				return
			}
		}
	}()
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	deadline := time.After(2 * time.Minute)
	select {
	case <-finished:
	case <-deadline:
		t.Fatalf("the pausing goroutines deadlocked: hook pauses %d+%d", hook.done[0].Load(), hook.done[1].Load())
	}
	for hook.done[0].Load() < fromHooks || hook.done[1].Load() < fromHooks {
		select {
		case err := <-hook.errs:
			t.Fatal(err)
		case <-deadline:
			t.Fatalf("the hooks' pauses stalled: %d and %d of %d (steps %d and %d)", hook.done[0].Load(), hook.done[1].Load(),
				fromHooks, hook.hits[0].Load(), hook.hits[1].Load())
		case <-time.After(10 * time.Millisecond):
		}
	}
	vm.Stop()
	if r := <-ran; r.Reason != StopRequested {
		t.Errorf("Run ended with %v (%v), want stopped by request", r.Reason, r.Err)
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := moved.Load(); n != 0 {
		t.Errorf("the guest's counter moved during %d pauses", n)
	}
}

// spinLoop is a real-mode loop counting in E: 1: incb E; jmp 1b.
var spinLoop = []byte{0xfe, 0x06, 0x00, 0x60, 0xeb, 0xfa}

// countingHook is a probe handler on every single-step of the loop: it
// reads registers and guest memory on the vCPU's thread.
type countingHook struct {
	mem  *Memory
	hits atomic.Int64
}

func (h *countingHook) HandleDebug(c CPU, ev DebugEvent) bool {
	var b [1]byte
	h.mem.ReadPhys(gpa(pageE), b[:])
	c.Regs()
	h.hits.Add(1)
	return true
}

// runStepped starts every vCPU single-stepping from tinyCode under Run,
// whose result it returns.
func runStepped(t *testing.T, vm *VM) <-chan Result {
	t.Helper()
	for cpu := range vm.NumCPUs() {
		if err := vm.Do(cpu, func(c CPU) error {
			if err := c.SetRegs(Regs{RIP: tinyCode, RSP: 0x800, RFLAGS: 0x2}); err != nil {
				return err
			}
			return c.SetSingleStep(true)
		}); err != nil {
			t.Fatal(err)
		}
	}
	ran := make(chan Result, 1)
	go func() { ran <- vm.Run(context.Background()) }()
	return ran
}

// TestCloseWhileInUse: Close while the guest runs a probed loop and other
// goroutines read registers (as --inspect does), write guest memory (as
// a control connection arming a probe does) and poll the dirty log: no
// crash (run with -race), and typed errors afterwards.
func TestCloseWhileInUse(t *testing.T) {
	vm := newTinyVM(t, tinyMem)
	if err := vm.LogDirty(tinyWatch, tinyEnd); err != nil && !errors.Is(err, ErrNoDirtyLog) {
		t.Fatal(err)
	}
	if err := vm.Memory().WritePhys(tinyCode, spinLoop); err != nil {
		t.Fatal(err)
	}
	hook := &countingHook{mem: vm.Memory()}
	if err := vm.SetDebugHook(hook); err != nil {
		t.Fatal(err)
	}
	ran := runStepped(t, vm)

	var wg sync.WaitGroup
	var stop atomic.Bool
	errs := make(chan error, 3)
	user := func(f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				if err := f(); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	user(func() error { // inspect: registers, then memory
		if err := vm.Do(0, func(c CPU) error { _, err := c.Regs(); return err }); err != nil {
			return err
		}
		var b [8]byte
		return vm.Memory().ReadPhys(tinyCode, b[:])
	})
	user(func() error { return vm.Memory().WritePhys(gpa(pageF), []byte{0xcc}) }) // control: arm
	user(func() error { _, err := vm.DirtyPages(); return err })                  // write-watch poller

	deadline := time.Now().Add(30 * time.Second)
	for hook.hits.Load() < 50 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if hook.hits.Load() == 0 {
		t.Fatal("the stepped loop never reached the hook")
	}
	if err := vm.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-ran:
		if r.Reason != StopRequested {
			t.Errorf("Run ended with %v (%v), want stopped by request", r.Reason, r.Err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after Close")
	}
	for range 3 {
		select {
		case err := <-errs:
			if !errors.Is(err, ErrClosed) && !errors.Is(err, ErrNotWatching) {
				t.Errorf("a user got %v, want ErrClosed", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a user never saw the VM close")
		}
	}
	stop.Store(true)
	wg.Wait()

	var b [1]byte
	for what, err := range map[string]error{
		"ReadPhys":   vm.Memory().ReadPhys(0, b[:]),
		"WritePhys":  vm.Memory().WritePhys(0, b[:]),
		"Do":         vm.Do(0, func(CPU) error { return nil }),
		"Run":        vm.Run(context.Background()).Err,
		"DirtyPages": func() error { _, err := vm.DirtyPages(); return err }(),
	} {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close = %v, want ErrClosed", what, err)
		}
	}
	if _, err := vm.Snapshot(t.TempDir()+"/s", nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Snapshot after Close = %v, want ErrClosed", err)
	}
}

// TestPauseRefusedAfterExit: once the loop has ended a vCPU cannot be
// paused (a snapshot of a stopped guest is refused with a StateError),
// but Do still runs on its thread until Close.
func TestPauseRefusedAfterExit(t *testing.T) {
	vm := newTinyVM(t, tinyMem)
	// mov $0xfe,%al; out %al,$0x64 (i8042 reset); hlt
	if err := vm.Memory().WritePhys(tinyCode, []byte{0xb0, 0xfe, 0xe6, 0x64, 0xf4}); err != nil {
		t.Fatal(err)
	}
	if err := vm.Do(0, func(c CPU) error { return c.SetRegs(Regs{RIP: tinyCode, RSP: 0x800, RFLAGS: 0x2}) }); err != nil {
		t.Fatal(err)
	}
	if r := vm.Run(context.Background()); r.Reason != StopReset {
		t.Fatalf("Run = %v (%v), want a reset", r.Reason, r.Err)
	}
	if st := vm.VCPUState(0); st != VCPUExited {
		t.Fatalf("state after Run = %v, want exited", st)
	}
	var se *StateError
	if err := vm.vcpus[0].pause(func() error { return nil }); !errors.As(err, &se) || se.State != VCPUExited || !errors.Is(err, ErrVCPUState) {
		t.Fatalf("pause after exit = %v, want a StateError (exited)", err)
	}
	if err := vm.Do(0, func(c CPU) error { _, err := c.Regs(); return err }); err != nil {
		t.Fatalf("Do after exit: %v", err)
	}
	if r := vm.Run(context.Background()); !errors.Is(r.Err, ErrVCPUState) {
		t.Fatalf("a second Run = %v, want ErrVCPUState", r.Err)
	}
}
