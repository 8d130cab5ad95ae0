package vmm

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// WatchCaps is what this host's KVM offers the memory watches, found by
// DetectWatchCaps, so that the session layer can choose: a data watch
// goes to a debug register when HWData holds and it fits (4 slots, 1/2/4/8
// bytes aligned), else to a write trap (ReadonlyMem).
type WatchCaps struct {
	// HWExecute: execute breakpoints in DR0-3 give KVM_EXIT_DEBUG
	// (hardware KVM, PVM; not the nested KVM under QEMU TCG, QUIRKS #18).
	HWExecute bool
	// HWData: data watchpoints give KVM_EXIT_DEBUG (hardware KVM; not
	// PVM, QUIRKS #38).
	HWData bool
	// ReadonlyMem: KVM_CAP_READONLY_MEM, which write traps need.
	ReadonlyMem bool
}

// EnvHWBreak names the variable that states the hardware-breakpoint
// answer instead of probing: "none", "exec" or "all". images/nested
// should set "none" (QEMU TCG arms no debug registers, and scratch guests
// were seen to crash its L1 kernel, QUIRKS #24).
const EnvHWBreak = "HVPROBE_HWBP"

// DetectWatchCaps reads KVM_CAP_READONLY_MEM and finds out whether debug
// registers fire: from $HVPROBE_HWBP when set, else with
// ProbeHWBreakpoints.
func DetectWatchCaps(devKVM string) (WatchCaps, error) {
	var c WatchCaps
	f, err := os.OpenFile(devKVM, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return c, fmt.Errorf("%w: %v", ErrNoKVM, err)
	}
	r, err := ioctl(int(f.Fd()), kvmCheckExtension, capReadonlyMem)
	f.Close()
	c.ReadonlyMem = err == nil && r > 0
	switch v := os.Getenv(EnvHWBreak); v {
	case "none":
		return c, nil
	case "exec":
		c.HWExecute = true
		return c, nil
	case "all":
		c.HWExecute, c.HWData = true, true
		return c, nil
	case "":
	default:
		return c, fmt.Errorf("%w: %s=%q, want none, exec or all", ErrBadConfig, EnvHWBreak, v)
	}
	c.HWExecute, c.HWData, err = ProbeHWBreakpoints(devKVM)
	return c, err
}

// ProbeHWBreakpoints runs a scratch real-mode guest, `nop; movb $1,0x300;
// out %al,$0xe0; hlt`, with an execute breakpoint on the nop (DR0) and a
// one-byte write watchpoint on 0x300 (DR1), and reports which of them
// gave KVM_EXIT_DEBUG.
func ProbeHWBreakpoints(devKVM string) (exec, data bool, err error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	f, err := os.OpenFile(devKVM, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, false, fmt.Errorf("%w: %v", ErrNoKVM, err)
	}
	defer f.Close()
	fail := func(err error) (bool, bool, error) {
		return false, false, fmt.Errorf("probing debug registers: %w", err)
	}
	vmfd, err := ioctl(int(f.Fd()), kvmCreateVM, 0)
	if err != nil {
		return fail(wrap("KVM_CREATE_VM", err))
	}
	defer unix.Close(int(vmfd))
	const size = 0x10000
	ram, err := mmapAnon(size)
	if err != nil {
		return fail(err)
	}
	defer unix.Munmap(ram)
	const port = 0xe0
	copy(ram[0x100:], []byte{0x90, 0xc6, 0x06, 0x00, 0x03, 0x01, 0xe6, port, 0xf4})
	region := userspaceMemoryRegion{MemorySize: size, UserspaceAddr: uint64(bytesAddr(ram))}
	if err := ioctlPtr(int(vmfd), kvmSetUserMemoryRegion, &region); err != nil {
		return fail(err)
	}
	if _, err := ioctl(int(vmfd), kvmSetTSSAddr, tssAddr); err != nil {
		return fail(wrap("KVM_SET_TSS_ADDR", err))
	}
	cfd, err := ioctl(int(vmfd), kvmCreateVCPU, 0)
	if err != nil {
		return fail(wrap("KVM_CREATE_VCPU", err))
	}
	defer unix.Close(int(cfd))
	msize, err := ioctl(int(f.Fd()), kvmGetVCPUMmapSize, 0)
	if err != nil {
		return fail(err)
	}
	buf, err := mmapShared(int(cfd), int(msize))
	if err != nil {
		return fail(err)
	}
	defer unix.Munmap(buf)
	v := &VCPU{fd: int(cfd), runBuf: buf, run: newRunView(buf)}
	s, err := v.Sregs()
	if err != nil {
		return fail(err)
	}
	s.CS.Base, s.CS.Selector = 0, 0
	s.SS.Base, s.SS.Selector = 0, 0
	s.DS.Base, s.DS.Selector = 0, 0
	if err := v.SetSregs(s); err != nil {
		return fail(err)
	}
	if err := v.SetRegs(Regs{RIP: 0x100, RSP: 0x8000, RFLAGS: 0x2}); err != nil {
		return fail(err)
	}
	watch := HWBreakpoint{Kind: HWWrite, Addr: 0x300, Len: 1}
	setDR := func(withExec bool) error {
		d := guestDebug{Control: guestDbgEnable | guestDbgUseHWBP}
		d.DebugReg[1] = watch.Addr
		d.DebugReg[7] = dr7Reserved | dr7LE | dr7GE | dr7Bits(1, watch)
		if withExec {
			d.DebugReg[0] = 0x100
			d.DebugReg[7] |= dr7Bits(0, HWBreakpoint{Kind: HWExecute})
		}
		return wrap("KVM_SET_GUEST_DEBUG", ioctlPtr(v.fd, kvmSetGuestDebug, &d))
	}
	if err := setDR(true); err != nil {
		return fail(err)
	}
	for range 8 {
		if _, err := ioctl(v.fd, kvmRun, 0); err != nil {
			if err == unix.EINTR {
				continue
			}
			return fail(wrap("KVM_RUN", err))
		}
		e := v.decode(v.run.run())
		switch {
		case e.reason == exitDebug && e.debug.Exception == 1 && e.debug.DR6&1 != 0:
			exec = true
			// An execute breakpoint is a fault: drop it to go on.
			if err := setDR(false); err != nil {
				return fail(err)
			}
		case e.reason == exitDebug && e.debug.Exception == 1 && e.debug.DR6&2 != 0:
			data = true
		case e.reason == exitIO && e.io.Port == port:
			return exec, data, nil
		case e.reason == exitIntr:
		default:
			return exec, data, nil // anything else: what fired so far
		}
	}
	return exec, data, nil
}

// WatchCaps is DetectWatchCaps for this VM's KVM device.
func (vm *VM) WatchCaps() (WatchCaps, error) { return DetectWatchCaps(vm.cfg.DevKVM) }
