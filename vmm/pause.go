package vmm

import (
	"errors"
	"fmt"
)

// Pausing every vCPU is serialized by one lock, vm.pauseCh: two callers
// that each held some vCPUs parked would otherwise wait for each other.
// Run takes it too, so no vCPU starts during a pause. Its order comes
// before every other lock in vmm (slotMu). The rule for callers: never
// pause while holding a lock that a vCPU thread may wait for, since a
// vCPU blocked on it cannot park.

// WithAllPaused runs f with no vCPU in guest mode: every vCPU is paused on
// its own thread for it (or none is, before Run or after every vCPU has
// exited), so f may rewrite guest code or memslots that a vCPU must never
// see half-done. From a vCPU's thread (a debug hook) it pauses the
// others, and that vCPU runs on only after f.
func (vm *VM) WithAllPaused(f func() error) error {
	return vm.pauseAll(true, func(int, *VCPU) error { return nil }, func(bool) error { return f() })
}

// WithAllPausedAt is WithAllPaused that also gives f the rip each vCPU
// will resume at (nil when none runs), for patches that must not land
// under one.
func (vm *VM) WithAllPausedAt(f func(rips []uint64) error) error {
	rips := make([]uint64, len(vm.vcpus))
	return vm.pauseAll(true, func(i int, v *VCPU) error {
		r, err := v.Regs()
		rips[i] = r.RIP // each vCPU its own index; f reads after all are done
		return err
	}, func(paused bool) error {
		if !paused {
			return f(nil)
		}
		return f(rips)
	})
}

// withAllStopped pauses every vCPU on its own thread whether or not the
// guest runs (a snapshot's state is read there), runs each one's perCPU
// there once all are paused, then whole(), and lets them go.
func (vm *VM) withAllStopped(perCPU func(i int, v *VCPU) error, whole func() error) error {
	return vm.pauseAll(false, perCPU, func(bool) error { return whole() })
}

// pauseAll is the pause; whole learns whether it paused. With idleOK and
// no vCPU running (before Run, or all exited) it runs whole alone, under
// the lock.
//
// From a vCPU's own thread that vCPU is out of KVM_RUN already: its
// perCPU runs right there and only the others are paused. Whenever it
// waits, it keeps serving its own requests, so that the holder of the
// lock can park it and another vCPU's hook can reach it.
func (vm *VM) pauseAll(idleOK bool, perCPU func(i int, v *VCPU) error, whole func(paused bool) error) error {
	self, selfIdx := (*VCPU)(nil), -1
	var others []int
	for i, v := range vm.vcpus {
		if v.onThread() {
			self, selfIdx = v, i
		} else {
			others = append(others, i)
		}
	}
	var reqs chan request // nil (never ready) off the vCPU threads
	if self != nil {
		reqs = self.reqs
	}
	serve := func(r request) { r.reply <- r.f(self) }
	for locked := false; !locked; {
		select {
		case vm.pauseCh <- struct{}{}:
			locked = true
		case r := <-reqs:
			serve(r)
		}
	}
	defer vm.unlockPause()
	if idleOK && (!vm.ran.Load() || vm.allExited()) {
		return whole(false)
	}
	recv := func(ch <-chan error) error {
		for {
			select {
			case e := <-ch:
				return e
			case r := <-reqs:
				serve(r)
			}
		}
	}

	parked := make(chan struct{}, len(others))
	start := make(chan bool)
	finished := make(chan error, len(others))
	release := make(chan struct{})
	returned := make(chan error, len(others))
	for _, i := range others {
		v := vm.vcpus[i]
		go func() {
			returned <- v.pause(func() error {
				parked <- struct{}{}
				if run := <-start; run {
					finished <- perCPU(i, v)
				}
				<-release
				return nil
			})
		}()
	}
	var err error
	waiting := len(others) // pause requests not yet returned
	for got := 0; got < waiting && err == nil; {
		select {
		case <-parked:
			got++
		case e := <-returned:
			// A vCPU that returns before parking has left its loop.
			err = fmt.Errorf("pausing the guest: %w", e)
			waiting--
		case r := <-reqs:
			serve(r)
		}
	}
	if err != nil {
		close(start) // a parked vCPU reads false: its perCPU does not run
		close(release)
		for range waiting {
			recv(returned)
		}
		return err
	}
	for range others {
		start <- true
	}
	var errs []error
	if self != nil {
		errs = append(errs, perCPU(selfIdx, self))
	}
	for range others {
		errs = append(errs, recv(finished))
	}
	if e := errors.Join(errs...); e == nil {
		errs = append(errs, whole(true))
	}
	close(release)
	for range others {
		errs = append(errs, recv(returned))
	}
	return errors.Join(errs...)
}

// lockPause takes the pause lock off the vCPU threads (Run).
func (vm *VM) lockPause()   { vm.pauseCh <- struct{}{} }
func (vm *VM) unlockPause() { <-vm.pauseCh }

func (vm *VM) allExited() bool {
	for _, v := range vm.vcpus {
		if v.State() != VCPUExited {
			return false
		}
	}
	return true
}
