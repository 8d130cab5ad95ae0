package vmm

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hvprobe/hvprobe/vmm/devices"

	"github.com/hvprobe/hvprobe/vmm/boot"

	"golang.org/x/sys/unix"

	"github.com/hvprobe/hvprobe/kimage"
)

// Config describes a VM to boot.
type Config struct {
	Kernel  *kimage.Image // opened bzImage or vmlinux ELF
	Initrd  []byte        // optional
	Cmdline string
	// Host is the KVM underneath; it decides the CPUID the guest gets
	// (Host.CPUID).
	Host     Host
	MemSize  uint64 // bytes; default 512 MiB
	CPUs     int    // default 1
	Reserved uint64 // bytes kept from the guest at the top of RAM for hvprobe; default 2 MiB
	// KASLR randomizes the kernel's physical and virtual placement the way
	// the decompressor would (hvprobe boots the ELF directly, skipping it).
	KASLR bool
	// Console receives the guest's serial output.
	Console io.Writer
	// OnConsoleLine is called with each complete console line (without
	// the newline), on a vCPU thread: keep it short.
	OnConsoleLine func(line string)
	// Symbolize names an address in error reports (symbol+offset).
	Symbolize func(addr uint64) string
	// DevKVM is the KVM device path; default /dev/kvm.
	DevKVM string
	// Disks are virtio-blk disks over raw images, on a PCI bus.
	Disks []Disk
}

// Layout is where the kernel was placed, as the guest will see it.
type Layout struct {
	PhysDelta uint64 // physical offset from the ELF's load addresses
	VirtDelta uint64 // KASLR slide of kernel virtual addresses
	Entry     uint64 // physical entry point (startup_64)
	KernelEnd uint64 // first physical byte above the kernel image
}

// Result is how a Run ended.
type Result struct {
	Reason StopReason
	Err    error
	// Panicked is set when the console showed "Kernel panic".
	Panicked bool
	// Tail is the last console lines, for error reports.
	Tail []string
	// Fault is set when the reset was a triple fault.
	Fault *TripleFault
}

// Errors for bad configuration.
var (
	ErrNoKVM     = errors.New("KVM is not available")
	ErrBadConfig = errors.New("bad VM configuration")
)

const (
	defaultMem      = 512 << 20
	defaultReserved = 2 << 20
	maxMem          = 3 << 30 // below the PCI hole; hvprobe puts no devices there
	tssAddr         = 0xfffbd000
	identityMapAddr = 0xfffbc000
	maxCPUs         = 8 // the mini kernel's NR_CPUS
)

// VM is a booted-but-not-yet-running or running virtual machine.
type VM struct {
	cfg     Config
	kvm     *os.File
	vmFD    int
	mem     *Memory
	vcpus   []*VCPU
	layout  Layout
	serial  *devices.Serial
	disks   []*disk
	console *lineTracker
	handler *exitHandler
	stats   ExitStats

	hook    atomic.Pointer[hookBox]
	stop    atomic.Bool
	resetCh chan struct{}
	once    sync.Once
	// life guards the fds, the kvm_run pages and the vCPU threads: every
	// public method that reaches them enters it, and Close waits for those
	// in flight before releasing anything.
	life    lifetime
	closing atomic.Bool

	// slotMu guards the memslot layout (dirtylog.go): the slots KVM has
	// and the write watch. ran (whether the vCPUs have run, after which
	// the watch's layout is fixed) is set under it and read anywhere.
	slotMu sync.Mutex
	slots  []memslot
	watch  *dirtyRange
	ran    atomic.Bool

	// pauseCh is the pause lock (pause.go), a channel so that a vCPU
	// thread can serve requests while it waits for it.
	pauseCh chan struct{}
}

// blankVM is a VM with no KVM state yet.
func blankVM(cfg Config) *VM {
	return &VM{cfg: cfg, vmFD: -1, resetCh: make(chan struct{}), pauseCh: make(chan struct{}, 1)}
}

type hookBox struct{ h DebugHook }

// New creates the VM, loads the kernel and prepares vCPU 0 for the 64-bit
// boot protocol. Nothing runs until Run.
func New(cfg Config) (*VM, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	vm := blankVM(cfg)
	ram, err := mmapAnon(int(cfg.MemSize))
	if err != nil {
		return nil, fmt.Errorf("mapping %d MiB of guest RAM: %w", cfg.MemSize>>20, err)
	}
	cpuid := func(id int, supported []CPUIDEntry) []CPUIDEntry {
		return cfg.Host.CPUID(vcpuCPUID(id, supported))
	}
	if err := vm.create(ram, cpuid); err != nil {
		vm.Close()
		return nil, err
	}
	if err := vm.load(cfg.Kernel); err != nil {
		vm.Close()
		return nil, err
	}
	return vm, nil
}

func (c *Config) defaults() error {
	if c.MemSize == 0 {
		c.MemSize = defaultMem
	}
	if c.CPUs == 0 {
		c.CPUs = 1
	}
	if c.Reserved == 0 {
		c.Reserved = defaultReserved
	}
	if c.DevKVM == "" {
		c.DevKVM = "/dev/kvm"
	}
	if c.Kernel == nil {
		return fmt.Errorf("%w: no kernel image", ErrBadConfig)
	}
	return c.check()
}

// CheckShape refuses a machine of memSize bytes and cpus vCPUs that New
// would refuse, before anything is opened.
func CheckShape(memSize uint64, cpus int) error {
	return (&Config{MemSize: memSize, CPUs: cpus}).check()
}

// check validates the machine's shape (also a restored snapshot's).
func (c *Config) check() error {
	switch {
	case c.MemSize < 64<<20:
		return fmt.Errorf("%w: %d MiB of memory is too little (at least 64 MiB)", ErrBadConfig, c.MemSize>>20)
	case c.MemSize > maxMem:
		return fmt.Errorf("%w: %d MiB of memory is more than the %d MiB hvprobe maps below 4 GiB", ErrBadConfig, c.MemSize>>20, maxMem>>20)
	case c.MemSize%(2<<20) != 0 || c.Reserved%(2<<20) != 0:
		return fmt.Errorf("%w: memory and reserved sizes must be multiples of 2 MiB", ErrBadConfig)
	case c.CPUs < 1 || c.CPUs > maxCPUs:
		return fmt.Errorf("%w: %d vCPUs requested; 1 to %d", ErrBadConfig, c.CPUs, maxCPUs)
	}
	return nil
}

// create makes the KVM VM over ram (which it then owns) and its vCPUs;
// cpuidFor gives vCPU id its CPUID from what KVM supports.
func (vm *VM) create(ram []byte, cpuidFor func(id int, supported []CPUIDEntry) []CPUIDEntry) error {
	vm.mem = &Memory{b: ram}
	f, err := os.OpenFile(vm.cfg.DevKVM, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("%w: opening %s: %v", ErrNoKVM, vm.cfg.DevKVM, err)
	}
	vm.kvm = f
	kfd := int(f.Fd())
	if v, err := ioctl(kfd, kvmGetAPIVersion, 0); err != nil || v != 12 {
		return fmt.Errorf("%w: KVM API version %d (%v), want 12", ErrNoKVM, v, err)
	}
	fd, err := ioctl(kfd, kvmCreateVM, 0)
	if err != nil {
		return fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	vm.vmFD = int(fd)
	if _, err := ioctl(vm.vmFD, kvmSetTSSAddr, tssAddr); err != nil {
		return fmt.Errorf("KVM_SET_TSS_ADDR: %w", err)
	}
	idmap := uint64(identityMapAddr)
	if err := ioctlPtr(vm.vmFD, kvmSetIdentityMapAddr, &idmap); err != nil {
		return fmt.Errorf("KVM_SET_IDENTITY_MAP_ADDR: %w", err)
	}
	if _, err := ioctl(vm.vmFD, kvmCreateIRQChip, 0); err != nil {
		return fmt.Errorf("KVM_CREATE_IRQCHIP: %w", err)
	}
	pit := pitConfig{Flags: pitSpeakerDummy}
	if err := ioctlPtr(vm.vmFD, kvmCreatePIT2, &pit); err != nil {
		return fmt.Errorf("KVM_CREATE_PIT2: %w", err)
	}
	if vm.checkExtension(capExitOnEmulationFailure) > 0 {
		// Emulation failures then carry the instruction bytes the assists decode.
		c := enableCap{Cap: capExitOnEmulationFailure, Args: [4]uint64{1}}
		if err := ioctlPtr(vm.vmFD, kvmEnableCap, &c); err != nil {
			return fmt.Errorf("enabling KVM_CAP_EXIT_ON_EMULATION_FAILURE: %w", err)
		}
	}
	if err := vm.setMemslots(memslotLayout(vm.mem.Size(), nil)); err != nil {
		return err
	}

	vm.console = newLineTracker(vm.cfg.Console, vm.cfg.OnConsoleLine)
	vm.serial = devices.NewSerial(vm.console, func(level bool) { vm.irqLine(devices.COM1IRQ, level) })
	vm.handler = &exitHandler{
		bus:       &devices.Bus{Serial: vm.serial, Reset: vm.requestReset},
		mem:       vm.mem,
		hook:      vm.currentHook,
		symbolize: vm.cfg.Symbolize,
		stats:     &vm.stats,
	}
	if err := vm.attachDisks(); err != nil {
		return err
	}

	mmapSize, err := ioctl(kfd, kvmGetVCPUMmapSize, 0)
	if err != nil {
		return fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	cpuid, err := vm.supportedCPUID()
	if err != nil {
		return err
	}
	for i := 0; i < vm.cfg.CPUs; i++ {
		if _, err := vm.createVCPU(i, int(mmapSize), cpuidFor(i, cpuid)); err != nil {
			return err
		}
	}
	return nil
}

func (vm *VM) checkExtension(c uintptr) int {
	r, err := ioctl(vm.vmFD, kvmCheckExtension, c)
	if err != nil {
		return 0
	}
	return int(r)
}

func (vm *VM) supportedCPUID() ([]CPUIDEntry, error) {
	for n := 128; n <= 4096; n *= 2 {
		e, err := cpuidIoctl(int(vm.kvm.Fd()), kvmGetSupportedCPUID, make([]CPUIDEntry, n))
		if errors.Is(err, unix.E2BIG) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %w", err)
		}
		return e, nil
	}
	return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: more than 4096 entries")
}

func (vm *VM) createVCPU(id, mmapSize int, cpuid []CPUIDEntry) (*VCPU, error) {
	fd, err := ioctl(vm.vmFD, kvmCreateVCPU, uintptr(id))
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VCPU %d: %w", id, err)
	}
	buf, err := mmapShared(int(fd), mmapSize)
	if err != nil {
		unix.Close(int(fd))
		return nil, fmt.Errorf("mapping kvm_run of vCPU %d: %w", id, err)
	}
	v := newVCPU(id, int(fd), buf, &vm.life)
	vm.vcpus = append(vm.vcpus, v) // Close ends its thread from here on
	return v, v.Do(func(CPU) error {
		if _, err := cpuidIoctl(v.fd, kvmSetCPUID2, cpuid); err != nil {
			return fmt.Errorf("KVM_SET_CPUID2 on vCPU %d: %w", id, err)
		}
		// Legacy interrupts (PIC: PIT and UART) reach the CPU through LINT0 as
		// ExtINT until the guest programs its APIC; NMIs through LINT1.
		l, err := v.lapic()
		if err != nil {
			return err
		}
		setLVTDeliveryMode(&l, 0x350, 7)
		setLVTDeliveryMode(&l, 0x360, 4)
		return v.setLAPIC(l)
	})
}

// vcpuCPUID gives each vCPU its own APIC ID in the CPUID leaves that carry
// it, and announces the hypervisor.
func vcpuCPUID(id int, supported []CPUIDEntry) []CPUIDEntry {
	out := make([]CPUIDEntry, len(supported))
	copy(out, supported)
	for i := range out {
		switch out[i].Function {
		case 1:
			out[i].EBX = out[i].EBX&0x00ffffff | uint32(id)<<24
			// KVM leaves the hypervisor bit to user space; without it Linux
			// never looks at the KVM leaves (kvm-clock, PV features) and
			// falls back to calibrating against the PIT.
			out[i].ECX |= 1 << 31
		case 0xb, 0x1f:
			out[i].EDX = uint32(id)
		}
	}
	return out
}

func setLVTDeliveryMode(l *LAPICState, reg int, mode uint32) {
	v := binary.LittleEndian.Uint32(l.Regs[reg:])
	v = v&^0x700 | mode<<8
	binary.LittleEndian.PutUint32(l.Regs[reg:], v)
}

// load places the kernel (with KASLR when asked), writes the boot
// structures and points vCPU 0 at the kernel's 64-bit entry.
func (vm *VM) load(img *kimage.Image) error {
	var kernelLow, kernelHigh uint64 = ^uint64(0), 0
	for _, s := range img.Segments {
		kernelLow = min(kernelLow, s.Paddr)
		kernelHigh = max(kernelHigh, s.Paddr+s.Memsz)
	}
	if len(img.Segments) == 0 {
		return fmt.Errorf("kernel image has no loadable segments")
	}
	usable := boot.ReservedStart(vm.cfg.MemSize, vm.cfg.Reserved)
	var physDelta, virtDelta uint64
	if vm.cfg.KASLR {
		span := kernelHigh - kernelLow
		// Physical: anywhere from the default load address up to where the
		// image plus the initrd still fit.
		room := usable - uint64(len(vm.cfg.Initrd)) - kernelHigh
		if usable > kernelHigh+uint64(len(vm.cfg.Initrd)) && room >= 2<<20 {
			physDelta = randomAligned(room)
		}
		vroom := uint64(kimage.KernelImageSize) - (kernelLow + span)
		virtDelta = randomAligned(vroom)
	}
	if kernelHigh+physDelta > usable {
		return fmt.Errorf("%w: kernel needs %d MiB, guest has %d MiB usable", ErrBadConfig, (kernelHigh+physDelta)>>20, usable>>20)
	}
	entry, err := img.Load(vm.mem.b, physDelta, virtDelta)
	if err != nil {
		return fmt.Errorf("loading kernel: %w", err)
	}
	vm.layout = Layout{PhysDelta: physDelta, VirtDelta: virtDelta, Entry: entry, KernelEnd: kernelHigh + physDelta}

	seed := make([]byte, 32)
	if _, err := rand.Read(seed); err != nil {
		return fmt.Errorf("seeding the guest RNG: %w", err)
	}
	spec := boot.Spec{
		MemSize: vm.cfg.MemSize, Reserved: vm.cfg.Reserved, Cmdline: vm.cfg.Cmdline,
		Initrd: vm.cfg.Initrd, RNGSeed: seed, KASLR: vm.cfg.KASLR,
	}
	if err := boot.Write(vm.mem.b, spec, vm.layout.KernelEnd); err != nil {
		return err
	}
	if vm.cfg.CPUs > 1 {
		if err := boot.WriteMPTable(vm.mem.b, vm.cfg.CPUs); err != nil {
			return err
		}
		if err := boot.WriteACPI(vm.mem.b, vm.cfg.CPUs); err != nil {
			return err
		}
	}
	bsp := vm.vcpus[0]
	return bsp.Do(func(CPU) error {
		s, err := bsp.Sregs()
		if err != nil {
			return err
		}
		bootSregs(&s)
		if err := bsp.SetSregs(s); err != nil {
			return err
		}
		if err := bsp.SetRegs(bootRegs(entry)); err != nil {
			return err
		}
		return bsp.setFPU(FPU{FCW: 0x37f, MXCSR: 0x1f80})
	})
}

// randomAligned returns a random multiple of 2 MiB in [0, limit).
func randomAligned(limit uint64) uint64 {
	slots := limit / (2 << 20)
	if slots == 0 {
		return 0
	}
	n, err := rand.Int(rand.Reader, new(big.Int).SetUint64(slots))
	if err != nil {
		return 0
	}
	return n.Uint64() * (2 << 20)
}

func (vm *VM) irqLine(irq uint32, level bool) {
	l := irqLevel{IRQ: irq}
	if level {
		l.Level = 1
	}
	// An IRQ line that cannot be driven shows up as a silent console;
	// there is no one to report it to from a device callback.
	_ = ioctlPtr(vm.vmFD, kvmIRQLine, &l)
}

func (vm *VM) requestReset() {
	vm.once.Do(func() { close(vm.resetCh) })
}

func (vm *VM) currentHook() DebugHook {
	if b := vm.hook.Load(); b != nil {
		return b.h
	}
	return nil
}

// SetDebugHook installs (or, with nil, removes) the debug hook and turns
// software-breakpoint interception on every vCPU on or off accordingly.
// Safe while the VM runs.
func (vm *VM) SetDebugHook(h DebugHook) error {
	if h == nil {
		vm.hook.Store(nil)
	} else {
		vm.hook.Store(&hookBox{h})
	}
	for _, v := range vm.vcpus {
		err := v.Do(func(CPU) error { return v.setSoftwareBreakpoints(h != nil) })
		if err != nil {
			return fmt.Errorf("setting guest debug on vCPU %d: %w", v.id, err)
		}
	}
	return nil
}

// Do runs f on vCPU cpu's thread while that vCPU is stopped (VCPU.Do).
func (vm *VM) Do(cpu int, f func(CPU) error) error {
	if cpu < 0 || cpu >= len(vm.vcpus) {
		return fmt.Errorf("%w: no vCPU %d", ErrBadConfig, cpu)
	}
	return vm.vcpus[cpu].Do(f)
}

// GuestTSC reads vCPU cpu's time-stamp counter as the guest sees it, with
// the host time of the read and the guest's TSC rate, so guest rdtsc
// values can be placed on the host's clock.
func (vm *VM) GuestTSC(cpu int) (tsc uint64, at time.Time, khz uint64, err error) {
	err = vm.Do(cpu, func(c CPU) error {
		v, ok := c.(*VCPU)
		if !ok {
			return fmt.Errorf("reading the TSC: vCPU %d is not a KVM vCPU", cpu)
		}
		r, err := ioctl(v.fd, kvmGetTSCKHz, 0)
		if err != nil {
			return wrap("KVM_GET_TSC_KHZ", err)
		}
		khz = uint64(r)
		tsc, err = c.MSR(msrIA32TSC)
		at = time.Now()
		return err
	})
	return tsc, at, khz, err
}

// InjectNMI queues an NMI on vCPU cpu (KVM_NMI), as another CPU's NMI
// IPI or a watchdog would raise it. KVM holds one pending NMI: a second
// one before the guest takes the first is lost, as on hardware.
func (vm *VM) InjectNMI(cpu int) error {
	return vm.Do(cpu, func(c CPU) error {
		v, ok := c.(*VCPU)
		if !ok {
			return fmt.Errorf("injecting an NMI: vCPU %d is not a KVM vCPU", cpu)
		}
		_, err := ioctl(v.fd, kvmNMI, 0)
		return wrap("KVM_NMI", err)
	})
}

// Mem is guest RAM.
func (vm *VM) Mem() PhysMem { return vm.mem }

// OnVCPUThread reports whether the caller runs on one of the vCPUs'
// threads (a debug or exit hook), where requests to vCPUs fail with
// ErrOwnThread.
func (vm *VM) OnVCPUThread() bool {
	for _, v := range vm.vcpus {
		if v.onThread() {
			return true
		}
	}
	return false
}

// Memory is guest RAM with its size and raw bytes.
func (vm *VM) Memory() *Memory { return vm.mem }

// NumCPUs is the number of vCPUs.
func (vm *VM) NumCPUs() int { return len(vm.vcpus) }

// Reserved is hvprobe's private guest-physical region: reserved by the
// kernel, never allocated by it, but in its direct map (see e820Map).
func (vm *VM) Reserved() ReservedRegion {
	return ReservedRegion{Start: boot.ReservedStart(vm.cfg.MemSize, vm.cfg.Reserved), Size: vm.cfg.Reserved}
}

// Layout is where the kernel was placed.
func (vm *VM) Layout() Layout { return vm.layout }

// Stats are the exit counters.
func (vm *VM) Stats() *ExitStats { return &vm.stats }

// ConsoleInput sends bytes to the guest's serial port (dropped once the
// VM is closed).
func (vm *VM) ConsoleInput(p []byte) {
	if !vm.life.enter() {
		return
	}
	defer vm.life.exit()
	vm.serial.Input(p)
}

// ConsoleDropped is how many console bytes were lost because the console
// writer could not keep up (the guest never waits for it).
func (vm *VM) ConsoleDropped() uint64 { return vm.console.dropped() }

// VCPUState is vCPU cpu's state now.
func (vm *VM) VCPUState(cpu int) VCPUState { return vm.vcpus[cpu].State() }

// Stop makes Run return with StopRequested.
func (vm *VM) Stop() {
	if !vm.life.enter() {
		return
	}
	defer vm.life.exit()
	vm.stopAll()
}

func (vm *VM) stopAll() {
	vm.stop.Store(true)
	for _, v := range vm.vcpus {
		v.kick()
	}
}

// Run runs every vCPU until the guest resets or halts, an error occurs, Stop
// is called or ctx ends.
func (vm *VM) Run(ctx context.Context) Result {
	if !vm.life.enter() {
		return Result{Reason: StopError, Err: ErrClosed}
	}
	defer vm.life.exit()
	// From here on the memslot layout is fixed (LogDirty refuses).
	// Under both locks: no pause and no memslot change is half-way.
	vm.lockPause()
	vm.slotMu.Lock()
	ran := vm.ran.Swap(true)
	vm.slotMu.Unlock()
	vm.unlockPause()
	if ran {
		return Result{Reason: StopError, Err: &StateError{CPU: 0, Op: "Run", State: vm.vcpus[0].State()}}
	}
	ends := make(chan loopEnd, len(vm.vcpus))
	for _, v := range vm.vcpus {
		v.runs <- runStart{h: vm.handler, stop: &vm.stop, end: ends}
	}
	first := loopEnd{}
	running := len(vm.vcpus)
	select {
	case e := <-ends:
		first = e
		running--
	case <-vm.resetCh:
		first = loopEnd{reason: StopReset}
	case <-ctx.Done():
		first = loopEnd{reason: StopRequested, err: ctx.Err()}
	}
	vm.stopAll()
	// Every vCPU must be out of its loop before Run returns: the guest is
	// not to run behind the caller's back.
	for ; running > 0; running-- {
		<-ends
	}
	if first.reason == StopRequested && first.err == nil {
		select {
		case <-vm.resetCh:
			first.reason = StopReset
		default:
		}
	}
	vm.console.flush()
	return Result{Reason: first.reason, Err: first.err, Panicked: vm.console.panicked(), Tail: vm.console.tail(), Fault: vm.handler.fault.Load()}
}

// Close stops the guest if it runs, waits for every call in flight
// (Run, Do, Snapshot, guest-memory accesses), ends the vCPU threads and
// releases the VM's file descriptors and memory. Afterwards those calls
// fail with ErrClosed.
func (vm *VM) Close() error {
	if !vm.closing.CompareAndSwap(false, true) {
		return nil
	}
	vm.stopAll()
	vm.closeDisks() // their workers signal MSIs through the VM fd
	vm.life.close()
	for _, v := range vm.vcpus {
		v.stopThread()
		unix.Munmap(v.runBuf)
		unix.Close(v.fd)
	}
	if vm.vmFD >= 0 {
		unix.Close(vm.vmFD)
	}
	if vm.mem != nil {
		if ram := vm.mem.close(); ram != nil {
			unix.Munmap(ram)
		}
	}
	if vm.kvm != nil {
		vm.kvm.Close()
	}
	return nil
}

// lineTracker splits console output into lines for callbacks, keeps the
// last few for error reports, and notices a kernel panic.
type lineTracker struct {
	mu     sync.Mutex
	out    io.Writer
	async  *asyncWriter // out's queue, kept for its drop count after flush
	onLine func(string)
	cur    []byte
	last   []string
	panic  bool
}

const tailLines = 25

func newLineTracker(out io.Writer, onLine func(string)) *lineTracker {
	t := &lineTracker{onLine: onLine}
	if out != nil {
		t.async = newAsyncWriter(out)
		t.out = t.async
	}
	return t
}

func (t *lineTracker) dropped() uint64 {
	if t == nil || t.async == nil {
		return 0
	}
	return t.async.dropped.Load()
}

func (t *lineTracker) Write(p []byte) (int, error) {
	if t.out != nil {
		t.out.Write(p)
	}
	t.mu.Lock()
	var lines []string
	for _, b := range p {
		if b == '\n' {
			lines = append(lines, strings.TrimRight(string(t.cur), "\r"))
			t.cur = t.cur[:0]
			continue
		}
		t.cur = append(t.cur, b)
	}
	for _, l := range lines {
		t.addLocked(l)
	}
	t.mu.Unlock()
	if t.onLine != nil {
		for _, l := range lines {
			t.onLine(l)
		}
	}
	return len(p), nil
}

func (t *lineTracker) addLocked(l string) {
	if strings.Contains(l, "Kernel panic - not syncing") {
		t.panic = true
	}
	t.last = append(t.last, l)
	if len(t.last) > tailLines {
		t.last = t.last[len(t.last)-tailLines:]
	}
}

func (t *lineTracker) flush() {
	if a, ok := t.out.(*asyncWriter); ok {
		a.Close()
		t.out = nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.cur) > 0 {
		t.addLocked(string(t.cur))
		t.cur = nil
	}
}

func (t *lineTracker) tail() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string(nil), t.last...)
}

func (t *lineTracker) panicked() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.panic
}
