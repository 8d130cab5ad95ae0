//go:build kvm

package vmm

import (
	"context"
	"errors"
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

// TestPauseAllFromOwnThread: what pauses every vCPU (a write trap, a
// snapshot) refuses to run on a vCPU's own thread, which would wait for
// itself, rather than deadlock.
func TestPauseAllFromOwnThread(t *testing.T) {
	vm := newTinyVM(t, tinyMem)
	done := make(chan error, 1)
	go func() {
		done <- vm.Do(0, func(CPU) error {
			return vm.withAllStopped(func(int, *VCPU) error { return nil }, func() error { return nil })
		})
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrOwnThread) {
			t.Fatalf("pausing all from a vCPU's thread = %v, want ErrOwnThread", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("pausing all from a vCPU's own thread deadlocked")
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

// TestCloseWhileInUse: Close while the guest runs a probed loop and other
// goroutines read registers (as --inspect does), write guest memory (as
// a control connection arming a probe does) and poll the dirty log: no
// crash (run with -race), and typed errors afterwards.
func TestCloseWhileInUse(t *testing.T) {
	vm := newTinyVM(t, tinyMem)
	if err := vm.WatchWrites(tinyWatch, tinyEnd); err != nil && !errors.Is(err, ErrNoDirtyLog) {
		t.Fatal(err)
	}
	if err := vm.Memory().WritePhys(tinyCode, spinLoop); err != nil {
		t.Fatal(err)
	}
	hook := &countingHook{mem: vm.Memory()}
	if err := vm.SetDebugHook(hook); err != nil {
		t.Fatal(err)
	}
	if err := vm.Do(0, func(c CPU) error {
		if err := c.SetRegs(Regs{RIP: tinyCode, RSP: 0x800, RFLAGS: 0x2}); err != nil {
			return err
		}
		return c.SetSingleStep(true)
	}); err != nil {
		t.Fatal(err)
	}
	ran := make(chan Result, 1)
	go func() { ran <- vm.Run(context.Background()) }()

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
