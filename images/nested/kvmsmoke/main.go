// Command kvmsmoke is a minimal, dependency-free check that /dev/kvm is a
// working KVM: it creates a VM with one vCPU, runs a few bytes of real-mode
// code and checks the exits, then exercises the guest-debug features the
// probe engine relies on (single-step and software breakpoints).
//
// Build it static so it runs inside the nested L1 initramfs:
//
//	CGO_ENABLED=0 go build -o /work/main/.cache/nested/kvmsmoke ./images/nested/kvmsmoke
//
// Exit status: 0 when every required check passed (API version, I/O and HLT
// exits, single-step, the int3-through-the-guest's-vector workaround), 1
// when one failed, 2 when /dev/kvm could not be opened at all. Software and
// hardware breakpoints are reported as MISSING without failing the run,
// because QEMU's TCG SVM does not deliver them (see images/nested/README.md);
// -strict makes them required.
//
// ioctl numbers and struct layouts follow include/uapi/linux/kvm.h
// (KVMIO = 0xAE) and arch/x86/include/uapi/asm/kvm.h.
package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl request numbers: _IO(0xAE, n) = 0xAE00|n; _IOW/_IOR add the size
// (bits 16..29) and the direction (bit 30 write, bit 31 read).
const (
	kvmGetAPIVersion       = 0xAE00
	kvmCreateVM            = 0xAE01
	kvmCheckExtension      = 0xAE03
	kvmGetVCPUMmapSize     = 0xAE04
	kvmCreateVCPU          = 0xAE41
	kvmSetUserMemoryRegion = 0x4020AE46 // _IOW(KVMIO, 0x46, struct kvm_userspace_memory_region /* 32 */)
	kvmSetTSSAddr          = 0xAE47
	kvmRun                 = 0xAE80
	kvmGetRegs             = 0x8090AE81 // _IOR(KVMIO, 0x81, struct kvm_regs /* 144 */)
	kvmSetRegs             = 0x4090AE82 // _IOW(KVMIO, 0x82, struct kvm_regs)
	kvmGetSregs            = 0x8138AE83 // _IOR(KVMIO, 0x83, struct kvm_sregs /* 312 */)
	kvmSetSregs            = 0x4138AE84 // _IOW(KVMIO, 0x84, struct kvm_sregs)
	kvmSetGuestDebug       = 0x4048AE9B // _IOW(KVMIO, 0x9b, struct kvm_guest_debug /* 72 */)
)

// KVM_CAP_* values.
var caps = []struct {
	name string
	id   uintptr
}{
	{"KVM_CAP_IRQCHIP", 0},
	{"KVM_CAP_SET_GUEST_DEBUG", 23},
	{"KVM_CAP_VCPU_EVENTS", 41},
	{"KVM_CAP_DEBUGREGS", 50},
	{"KVM_CAP_X86_ROBUST_SINGLESTEP", 51},
	{"KVM_CAP_XSAVE", 55},
	{"KVM_CAP_SYNC_REGS", 74},
	{"KVM_CAP_IMMEDIATE_EXIT", 136},
	{"KVM_CAP_NESTED_STATE", 157},
	{"KVM_CAP_SET_GUEST_DEBUG2", 195},
	{"KVM_CAP_EXIT_ON_EMULATION_FAILURE", 204},
}

// KVM_EXIT_* reasons.
const (
	exitUnknown       = 0
	exitException     = 1
	exitIO            = 2
	exitDebug         = 4
	exitHLT           = 5
	exitMMIO          = 6
	exitShutdown      = 8
	exitFailEntry     = 9
	exitInternalError = 17
)

// KVM_GUESTDBG_* flags.
const (
	guestDbgEnable     = 0x00000001
	guestDbgSingleStep = 0x00000002
	guestDbgUseSWBP    = 0x00010000
	guestDbgUseHWBP    = 0x00020000
	guestDbgBlockIRQ   = 0x00100000
)

// struct kvm_regs (x86): 18 u64.
type regs struct {
	RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11, R12, R13, R14, R15   uint64
	RIP, RFLAGS                            uint64
}

// struct kvm_segment.
type segment struct {
	Base                           uint64
	Limit                          uint32
	Selector                       uint16
	Type                           uint8
	Present, DPL, DB, S, L, G, AVL uint8
	Unusable                       uint8
	_                              uint8
}

// struct kvm_dtable.
type dtable struct {
	Base  uint64
	Limit uint16
	_     [3]uint16
}

// struct kvm_sregs (x86).
type sregs struct {
	CS, DS, ES, FS, GS, SS, TR, LDT         segment
	GDT, IDT                                dtable
	CR0, CR2, CR3, CR4, CR8, EFER, APICBase uint64
	InterruptBitmap                         [4]uint64
}

// struct kvm_userspace_memory_region.
type memRegion struct {
	Slot, Flags                             uint32
	GuestPhysAddr, MemorySize, UserspaceAdr uint64
}

// struct kvm_guest_debug (x86).
type guestDebug struct {
	Control  uint32
	_        uint32
	DebugReg [8]uint64
}

func init() {
	if unsafe.Sizeof(regs{}) != 144 || unsafe.Sizeof(sregs{}) != 312 ||
		unsafe.Sizeof(memRegion{}) != 32 || unsafe.Sizeof(guestDebug{}) != 72 {
		panic("kvm struct layout mismatch")
	}
}

// ioctlP passes a pointer; it becomes a uintptr only in the Syscall call
// expression, the one place the compiler keeps a stack object in place.
func ioctlP(fd int, req uintptr, p unsafe.Pointer) (uintptr, error) {
	for {
		r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(p))
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return r, e
		}
		return r, nil
	}
}

func ioctl(fd int, req uintptr, arg uintptr) (uintptr, error) {
	for {
		r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return r, e
		}
		return r, nil
	}
}

type vm struct {
	kvm, fd int
	mem     []byte
	runSize int
}

type vcpu struct {
	fd  int
	run []byte
}

const (
	memSize  = 0x10000 // 64 KiB of guest RAM at GPA 0
	codeAddr = 0x1000
)

func newVM(kvm int) (*vm, error) {
	fd, err := ioctl(kvm, kvmCreateVM, 0)
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	v := &vm{kvm: kvm, fd: int(fd)}
	// Needed on Intel (real-mode emulation); harmless on AMD.
	if _, err := ioctl(v.fd, kvmSetTSSAddr, 0xfffbd000); err != nil {
		fmt.Printf("note: KVM_SET_TSS_ADDR: %v\n", err)
	}
	v.mem, err = unix.Mmap(-1, 0, memSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("mmap guest memory: %w", err)
	}
	r := memRegion{Slot: 0, GuestPhysAddr: 0, MemorySize: memSize, UserspaceAdr: uint64(uintptr(unsafe.Pointer(&v.mem[0])))}
	if _, err := ioctlP(v.fd, kvmSetUserMemoryRegion, unsafe.Pointer(&r)); err != nil {
		return nil, fmt.Errorf("KVM_SET_USER_MEMORY_REGION: %w", err)
	}
	sz, err := ioctl(kvm, kvmGetVCPUMmapSize, 0)
	if err != nil {
		return nil, fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	v.runSize = int(sz)
	return v, nil
}

func (v *vm) close() {
	unix.Munmap(v.mem)
	unix.Close(v.fd)
}

// newVCPU creates vCPU id, loads code at codeAddr and points real-mode
// CS:IP at it.
func (v *vm) newVCPU(id int, code []byte) (*vcpu, error) {
	fd, err := ioctl(v.fd, kvmCreateVCPU, uintptr(id))
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VCPU: %w", err)
	}
	c := &vcpu{fd: int(fd)}
	c.run, err = unix.Mmap(c.fd, 0, v.runSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap kvm_run: %w", err)
	}
	for i := range v.mem {
		v.mem[i] = 0xf4 // hlt everywhere, so a runaway stops quickly
	}
	copy(v.mem[codeAddr:], code)
	var s sregs
	if _, err := ioctlP(c.fd, kvmGetSregs, unsafe.Pointer(&s)); err != nil {
		return nil, fmt.Errorf("KVM_GET_SREGS: %w", err)
	}
	s.CS.Base, s.CS.Selector = 0, 0
	if _, err := ioctlP(c.fd, kvmSetSregs, unsafe.Pointer(&s)); err != nil {
		return nil, fmt.Errorf("KVM_SET_SREGS: %w", err)
	}
	r := regs{RIP: codeAddr, RFLAGS: 0x2, RSP: 0x8000}
	if _, err := ioctlP(c.fd, kvmSetRegs, unsafe.Pointer(&r)); err != nil {
		return nil, fmt.Errorf("KVM_SET_REGS: %w", err)
	}
	return c, nil
}

func (c *vcpu) close() {
	unix.Munmap(c.run)
	unix.Close(c.fd)
}

func (c *vcpu) runOnce() (uint32, error) {
	if _, err := ioctl(c.fd, kvmRun, 0); err != nil {
		return 0, fmt.Errorf("KVM_RUN: %w", err)
	}
	return binary.LittleEndian.Uint32(c.run[8:]), nil
}

func (c *vcpu) regs() regs {
	var r regs
	ioctlP(c.fd, kvmGetRegs, unsafe.Pointer(&r))
	return r
}

func (c *vcpu) setGuestDebug(control uint32, dr ...uint64) error {
	d := guestDebug{Control: control}
	copy(d.DebugReg[:], dr)
	_, err := ioctlP(c.fd, kvmSetGuestDebug, unsafe.Pointer(&d))
	return err
}

// debugExit decodes struct kvm_debug_exit_arch at kvm_run offset 32.
func (c *vcpu) debugExit() (exception uint32, pc, dr6, dr7 uint64) {
	u := c.run[32:]
	return binary.LittleEndian.Uint32(u), binary.LittleEndian.Uint64(u[8:]),
		binary.LittleEndian.Uint64(u[16:]), binary.LittleEndian.Uint64(u[24:])
}

func (c *vcpu) describeExit(reason uint32) string {
	u := c.run[32:]
	switch reason {
	case exitIO:
		dir, size, port := u[0], u[1], binary.LittleEndian.Uint16(u[2:])
		count, off := binary.LittleEndian.Uint32(u[4:]), binary.LittleEndian.Uint64(u[8:])
		return fmt.Sprintf("IO dir=%d size=%d port=%#x count=%d data=%#x", dir, size, port, count, c.run[off])
	case exitDebug:
		ex, pc, dr6, dr7 := c.debugExit()
		return fmt.Sprintf("DEBUG exception=%d pc=%#x dr6=%#x dr7=%#x", ex, pc, dr6, dr7)
	case exitHLT:
		return "HLT"
	case exitShutdown:
		return "SHUTDOWN"
	case exitFailEntry:
		return fmt.Sprintf("FAIL_ENTRY hw_reason=%#x", binary.LittleEndian.Uint64(u))
	case exitInternalError:
		sub, n := binary.LittleEndian.Uint32(u), binary.LittleEndian.Uint32(u[4:])
		s := fmt.Sprintf("INTERNAL_ERROR suberror=%d ndata=%d", sub, n)
		for i := 0; i < int(n) && i < 16; i++ {
			s += fmt.Sprintf(" %#x", binary.LittleEndian.Uint64(u[8+8*i:]))
		}
		return s
	default:
		return fmt.Sprintf("exit_reason=%d", reason)
	}
}

var (
	failed   bool     // a required check failed
	missing  []string // optional features that did not work
	optional bool     // checks made now are optional (see -strict)
	section  string
)

func check(ok bool, format string, args ...any) {
	tag := "PASS"
	if !ok {
		if optional {
			tag = "MISSING"
			if len(missing) == 0 || missing[len(missing)-1] != section {
				missing = append(missing, section)
			}
		} else {
			tag, failed = "FAIL", true
		}
	}
	fmt.Printf("%s: %s\n", tag, fmt.Sprintf(format, args...))
}

// feature runs one group of checks; optional groups only fail the run
// under -strict.
func feature(name string, opt bool, f func()) {
	section, optional = name, opt
	f()
	optional = false
}

func main() {
	loop := flag.Uint64("loop", 0, "if >0, also time a dec/jnz busy loop of this many iterations in the guest")
	doIcebp := flag.Bool("icebp", false, "also test icebp (0xf1) as a one-byte breakpoint")
	exits := flag.Int("exits", 2000, "measure the KVM_RUN -> KVM_EXIT_IO -> KVM_RUN round trip over this many exits (0 = skip)")
	strict := flag.Bool("strict", false, "fail when an optional feature (software/hardware breakpoints) does not work")
	flag.Parse()

	t0 := time.Now()
	kvm, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		fmt.Printf("FAIL: open /dev/kvm: %v\n", err)
		os.Exit(2)
	}
	api, err := ioctl(kvm, kvmGetAPIVersion, 0)
	check(err == nil && api == 12, "KVM_GET_API_VERSION = %d (err %v), want 12", api, err)
	for _, c := range caps {
		r, err := ioctl(kvm, kvmCheckExtension, c.id)
		if err != nil {
			fmt.Printf("cap %s (%d): error %v\n", c.name, c.id, err)
		} else {
			fmt.Printf("cap %s (%d) = %#x\n", c.name, c.id, r)
		}
	}
	dbg2, _ := ioctl(kvm, kvmCheckExtension, 195)

	v, err := newVM(kvm)
	if err != nil {
		fmt.Printf("FAIL: %v\n", err)
		os.Exit(1)
	}

	// 1. mov $0x42,%al; out %al,$0x10; hlt
	feature("basic", false, func() { smoke(v) })
	// 2. single-step: one KVM_EXIT_DEBUG per instruction.
	feature("single-step", false, func() { singleStep(v, false) })
	if dbg2&guestDbgBlockIRQ != 0 {
		feature("single-step+BLOCKIRQ", false, func() { singleStep(v, true) })
	} else {
		fmt.Printf("note: KVM_GUESTDBG_BLOCKIRQ not in KVM_CAP_SET_GUEST_DEBUG2 (%#x); skipped\n", dbg2)
	}
	// 3. int3 with KVM_GUESTDBG_USE_SW_BP.
	feature("sw-bp", !*strict, func() { swBreakpoint(v) })
	// 4. hardware execute breakpoint (DR0) with KVM_GUESTDBG_USE_HW_BP.
	feature("hw-bp", !*strict, func() { hwBreakpoint(v) })
	// 5. int3 caught through the guest's own #BP vector.
	feature("int3-via-handler-stub", false, func() { int3ViaHandlerStub(v) })
	if *doIcebp {
		feature("icebp", !*strict, func() { icebp(v) })
	}
	// 6. cost of a userspace exit round trip.
	if *exits > 0 {
		feature("exit-cost", false, func() { exitCost(v, *exits) })
	}
	// 7. optional speed test.
	if *loop > 0 {
		feature("busy-loop", false, func() { busyLoop(v, *loop) })
	}
	v.close()
	fmt.Printf("total %v\n", time.Since(t0).Round(time.Millisecond))
	switch {
	case failed:
		fmt.Println("kvmsmoke: FAILED")
		os.Exit(1)
	case len(missing) > 0:
		fmt.Printf("kvmsmoke: OK, but these do not work here: %v\n", missing)
	default:
		fmt.Println("kvmsmoke: OK")
	}
}

var nextID int

func vcpuFor(v *vm, code []byte) *vcpu {
	c, err := v.newVCPU(nextID, code)
	nextID++
	if err != nil {
		fmt.Printf("FAIL: %v\n", err)
		os.Exit(1)
	}
	return c
}

func smoke(v *vm) {
	c := vcpuFor(v, []byte{0xb0, 0x42, 0xe6, 0x10, 0xf4})
	defer c.close()
	t := time.Now()
	reason, err := c.runOnce()
	if err != nil {
		check(false, "first KVM_RUN: %v", err)
		return
	}
	u := c.run[32:]
	ok := reason == exitIO && u[0] == 1 && u[1] == 1 && binary.LittleEndian.Uint16(u[2:]) == 0x10 &&
		c.run[binary.LittleEndian.Uint64(u[8:])] == 0x42
	check(ok, "first exit: %s (want IO out port 0x10 data 0x42) in %v", c.describeExit(reason), time.Since(t))
	reason, err = c.runOnce()
	check(err == nil && reason == exitHLT, "second exit: %s err=%v (want HLT)", c.describeExit(reason), err)
}

func singleStep(v *vm, blockIRQ bool) {
	// inc %ax; inc %ax; nop; inc %ax; hlt  -> 4 instructions before hlt
	code := []byte{0x40, 0x40, 0x90, 0x40, 0xf4}
	c := vcpuFor(v, code)
	defer c.close()
	ctl := uint32(guestDbgEnable | guestDbgSingleStep)
	name := "single-step"
	if blockIRQ {
		ctl |= guestDbgBlockIRQ
		name = "single-step+BLOCKIRQ"
	}
	if err := c.setGuestDebug(ctl); err != nil {
		check(false, "%s: KVM_SET_GUEST_DEBUG: %v", name, err)
		return
	}
	var pcs []uint64
	var trace string
	t := time.Now()
	for i := 0; i < 20; i++ {
		reason, err := c.runOnce()
		if err != nil {
			check(false, "%s: %v", name, err)
			return
		}
		trace += " [" + c.describeExit(reason) + "]"
		if reason != exitDebug {
			if reason == exitHLT {
				break
			}
			check(false, "%s: unexpected exit %s", name, c.describeExit(reason))
			return
		}
		ex, pc, _, _ := c.debugExit()
		if ex != 1 {
			check(false, "%s: debug exit with exception %d, want 1", name, ex)
			return
		}
		pcs = append(pcs, pc)
	}
	el := time.Since(t)
	// Expected: pc after each of inc,inc,nop,inc = 0x1001..0x1004; the step
	// onto hlt may or may not report one more exit before KVM_EXIT_HLT.
	want := []uint64{codeAddr + 1, codeAddr + 2, codeAddr + 3, codeAddr + 4}
	ok := len(pcs) >= len(want)
	for i := range want {
		if !ok || pcs[i] != want[i] {
			ok = false
		}
	}
	r := c.regs()
	ok = ok && r.RAX&0xffff == 3
	check(ok, "%s: %d debug exits, pcs=%#x, ax=%d (want pcs starting 0x1001..0x1004, ax=3); %v for %d exits;%s",
		name, len(pcs), pcs, r.RAX&0xffff, el, len(pcs)+1, trace)
}

func swBreakpoint(v *vm) {
	// mov $1,%al; int3; mov $2,%al; hlt
	code := []byte{0xb0, 0x01, 0xcc, 0xb0, 0x02, 0xf4}
	c := vcpuFor(v, code)
	defer c.close()
	if err := c.setGuestDebug(guestDbgEnable | guestDbgUseSWBP); err != nil {
		check(false, "sw-bp: KVM_SET_GUEST_DEBUG: %v", err)
		return
	}
	reason, err := c.runOnce()
	if err != nil {
		check(false, "sw-bp: %v", err)
		return
	}
	r := c.regs()
	ex, pc, _, _ := c.debugExit()
	check(reason == exitDebug && ex == 3 && pc == codeAddr+2,
		"sw-bp: exit %s, regs.rip=%#x al=%d (want DEBUG exception=3 pc=0x1002)", c.describeExit(reason), r.RIP, r.RAX&0xff)
	// Resume past the int3 the way a debugger would: rip += 1.
	r.RIP = codeAddr + 3
	ioctlP(c.fd, kvmSetRegs, unsafe.Pointer(&r))
	c.setGuestDebug(0)
	reason, err = c.runOnce()
	r = c.regs()
	check(err == nil && reason == exitHLT && r.RAX&0xff == 2, "sw-bp resume: exit %s al=%d (want HLT, al=2)", c.describeExit(reason), r.RAX&0xff)
}

func busyLoop(v *vm, n uint64) {
	// mov $n,%ecx; 1: dec %ecx; jnz 1b; hlt   (32-bit operands in real mode)
	code := []byte{0x66, 0xb9, 0, 0, 0, 0, 0x66, 0x49, 0x75, 0xfc, 0xf4}
	binary.LittleEndian.PutUint32(code[2:], uint32(n))
	c := vcpuFor(v, code)
	defer c.close()
	t := time.Now()
	exits := 0
	for {
		reason, err := c.runOnce()
		exits++
		if err != nil || reason != exitHLT {
			if err == nil && reason == exitUnknown {
				continue // e.g. an interrupted run
			}
			check(false, "busy loop: exit %s err=%v", c.describeExit(reason), err)
			return
		}
		break
	}
	el := time.Since(t)
	r := c.regs()
	check(r.RCX&0xffffffff == 0, "busy loop: %d iterations of dec/jnz in the guest took %v (%.1f M iter/s, %d KVM_RUN)",
		n, el.Round(time.Millisecond), float64(n)/el.Seconds()/1e6, exits)
}

func hwBreakpoint(v *vm) {
	// mov $1,%al; mov $2,%al; mov $3,%al; hlt, DR0 on the second mov.
	code := []byte{0xb0, 0x01, 0xb0, 0x02, 0xb0, 0x03, 0xf4}
	c := vcpuFor(v, code)
	defer c.close()
	dr := []uint64{codeAddr + 2, 0, 0, 0, 0, 0, 0, 0x1 /* L0, execute, len 1 */}
	if err := c.setGuestDebug(guestDbgEnable|guestDbgUseHWBP, dr...); err != nil {
		check(false, "hw-bp: KVM_SET_GUEST_DEBUG: %v", err)
		return
	}
	reason, err := c.runOnce()
	if err != nil {
		check(false, "hw-bp: %v", err)
		return
	}
	r := c.regs()
	ex, pc, dr6, _ := c.debugExit()
	check(reason == exitDebug && ex == 1 && pc == codeAddr+2 && dr6&1 == 1 && r.RAX&0xff == 1,
		"hw-bp: exit %s al=%d (want DEBUG exception=1 pc=0x1002 dr6.B0, al=1)", c.describeExit(reason), r.RAX&0xff)
	// Continue: KVM sets RF for us? Disarm to be sure, then run to hlt.
	c.setGuestDebug(0)
	reason, err = c.runOnce()
	r = c.regs()
	check(err == nil && reason == exitHLT && r.RAX&0xff == 3, "hw-bp resume: exit %s al=%d (want HLT, al=3)", c.describeExit(reason), r.RAX&0xff)
}

// int3ViaHandlerStub shows a way around TCG's missing #BP intercept (see
// README): the int3 is delivered to the guest through its own vector 3,
// whose handler the VMM has replaced by `out %al,$0xe9; iret`. The I/O exit
// tells the VMM an int3 fired, and the return address on the guest stack
// says which one.
func int3ViaHandlerStub(v *vm) {
	const handler, port = 0x2000, 0xe9
	// mov $1,%al; int3; mov $2,%al; hlt
	code := []byte{0xb0, 0x01, 0xcc, 0xb0, 0x02, 0xf4}
	c := vcpuFor(v, code)
	defer c.close()
	copy(v.mem[handler:], []byte{0xe6, port, 0xcf})     // out %al,$0xe9; iret
	binary.LittleEndian.PutUint16(v.mem[3*4:], handler) // IVT[3] = 0000:2000
	binary.LittleEndian.PutUint16(v.mem[3*4+2:], 0)
	reason, err := c.runOnce()
	if err != nil {
		check(false, "int3-via-handler-stub: %v", err)
		return
	}
	r := c.regs()
	u := c.run[32:]
	retIP := binary.LittleEndian.Uint16(v.mem[r.RSP&0xffff:])
	check(reason == exitIO && binary.LittleEndian.Uint16(u[2:]) == port && retIP == codeAddr+3,
		"int3-via-handler-stub: exit %s, return IP on guest stack %#x (want IO port 0xe9, return IP 0x1003 = int3+1)",
		c.describeExit(reason), retIP)
	// Emulate the handler's iret from the host, as a VMM would for a probe
	// hit: pop IP, CS, FLAGS; the pending `out` must not be skipped on top.
	sp := r.RSP & 0xffff
	r.RIP = uint64(retIP)
	r.RFLAGS = uint64(binary.LittleEndian.Uint16(v.mem[sp+4:])) | 2
	r.RSP = sp + 6
	if _, err := ioctlP(c.fd, kvmSetRegs, unsafe.Pointer(&r)); err != nil {
		check(false, "int3-via-handler-stub: KVM_SET_REGS: %v", err)
		return
	}
	reason, err = c.runOnce()
	r = c.regs()
	check(err == nil && reason == exitHLT && r.RAX&0xff == 2 && r.RIP == codeAddr+6,
		"int3-via-handler-stub, iret emulated by the host: exit %s al=%d rip=%#x (want HLT, al=2, rip=0x1006)", c.describeExit(reason), r.RAX&0xff, r.RIP)
}

// icebp checks whether the one-byte int1/icebp (0xf1) arrives as a #DB
// KVM_EXIT_DEBUG when guest debugging with USE_HW_BP is on.
func icebp(v *vm) {
	const handler = 0x2000
	// mov $1,%al; icebp; mov $2,%al; hlt
	code := []byte{0xb0, 0x01, 0xf1, 0xb0, 0x02, 0xf4}
	c := vcpuFor(v, code)
	defer c.close()
	copy(v.mem[handler:], []byte{0xb0, 0x07, 0xcf})     // mov $7,%al; iret
	binary.LittleEndian.PutUint16(v.mem[1*4:], handler) // IVT[1] = 0000:2000
	binary.LittleEndian.PutUint16(v.mem[1*4+2:], 0)
	if err := c.setGuestDebug(guestDbgEnable | guestDbgUseHWBP); err != nil {
		check(false, "icebp: KVM_SET_GUEST_DEBUG: %v", err)
		return
	}
	reason, err := c.runOnce()
	if err != nil {
		check(false, "icebp: %v", err)
		return
	}
	r := c.regs()
	ex, pc, _, _ := c.debugExit()
	check(reason == exitDebug && ex == 1 && pc == codeAddr+3,
		"icebp: exit %s al=%d (want DEBUG exception=1 pc=0x1003; al=7 means the guest's #DB vector ran instead)", c.describeExit(reason), r.RAX&0xff)
}

func exitCost(v *vm, n int) {
	// 1: out %al,$0x10; jmp 1b
	c := vcpuFor(v, []byte{0xe6, 0x10, 0xeb, 0xfc})
	defer c.close()
	t := time.Now()
	for i := 0; i < n; i++ {
		reason, err := c.runOnce()
		if err != nil || reason != exitIO {
			check(false, "exit cost: exit %s err=%v after %d exits", c.describeExit(reason), err, i)
			return
		}
	}
	el := time.Since(t)
	check(true, "exit cost: %d I/O exits in %v = %.1f µs per KVM_RUN round trip", n, el.Round(time.Millisecond), float64(el.Microseconds())/float64(n))
}
