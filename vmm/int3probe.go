package vmm

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// ProbeInt3Intercept finds out whether this KVM reports a guest int3 to
// user space when KVM_GUESTDBG_USE_SW_BP is on. It runs four bytes of
// real-mode code, `int3; hlt` with vector 3 pointing at `out %al,$0xe9;
// hlt`, in a scratch VM: KVM_EXIT_DEBUG means intercepted; the doorbell
// port means the int3 went to the guest (QEMU TCG's SVM); an emulation
// failure means an emulating KVM (PVM), which hands int3 back that way.
func ProbeInt3Intercept(devKVM string) (intercepted bool, err error) {
	// The scratch vCPU lives only in this call: this thread is its one thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	f, err := os.OpenFile(devKVM, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Errorf("%w: %v", ErrNoKVM, err)
	}
	defer f.Close()
	vmfd, err := ioctl(int(f.Fd()), kvmCreateVM, 0)
	if err != nil {
		return false, fmt.Errorf("probing int3: KVM_CREATE_VM: %w", err)
	}
	defer unix.Close(int(vmfd))
	const size = 0x10000
	ram, err := mmapAnon(size)
	if err != nil {
		return false, err
	}
	defer unix.Munmap(ram)
	// IVT[3] = 0000:0200; code at 0x100.
	copy(ram[3*4:], []byte{0x00, 0x02, 0x00, 0x00})
	copy(ram[0x100:], []byte{0xcc, 0xf4})
	copy(ram[0x200:], []byte{0xe6, DoorbellPort, 0xf4})
	region := userspaceMemoryRegion{MemorySize: size, UserspaceAddr: uint64(bytesAddr(ram))}
	if err := ioctlPtr(int(vmfd), kvmSetUserMemoryRegion, &region); err != nil {
		return false, fmt.Errorf("probing int3: %w", err)
	}
	if _, err := ioctl(int(vmfd), kvmSetTSSAddr, tssAddr); err != nil {
		return false, fmt.Errorf("probing int3: KVM_SET_TSS_ADDR: %w", err)
	}
	cfd, err := ioctl(int(vmfd), kvmCreateVCPU, 0)
	if err != nil {
		return false, fmt.Errorf("probing int3: KVM_CREATE_VCPU: %w", err)
	}
	defer unix.Close(int(cfd))
	msize, err := ioctl(int(f.Fd()), kvmGetVCPUMmapSize, 0)
	if err != nil {
		return false, err
	}
	buf, err := mmapShared(int(cfd), int(msize))
	if err != nil {
		return false, err
	}
	defer unix.Munmap(buf)
	v := &VCPU{fd: int(cfd), runBuf: buf, run: newRunView(buf)}
	s, err := v.Sregs()
	if err != nil {
		return false, err
	}
	s.CS.Base, s.CS.Selector = 0, 0
	s.SS.Base, s.SS.Selector = 0, 0
	if err := v.SetSregs(s); err != nil {
		return false, err
	}
	if err := v.SetRegs(Regs{RIP: 0x100, RSP: 0x8000, RFLAGS: 0x2}); err != nil {
		return false, err
	}
	if err := v.setSoftwareBreakpoints(true); err != nil {
		return false, err
	}
	for i := 0; i < 4; i++ {
		if _, err := ioctl(v.fd, kvmRun, 0); err != nil {
			if err == unix.EINTR {
				continue
			}
			return false, fmt.Errorf("probing int3: KVM_RUN: %w", err)
		}
		e := v.decode(v.run.run())
		switch {
		case e.reason == exitDebug && e.debug.Exception == 3:
			return true, nil
		case e.reason == exitIO && e.io.Port == DoorbellPort:
			return false, nil
		case e.reason == exitInternalError:
			return true, nil
		}
	}
	return false, fmt.Errorf("probing int3: the scratch guest neither trapped nor reached its #BP handler")
}
