package vmm

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"

	"github.com/hvprobe/hvprobe/vmm/devices"

	"golang.org/x/sys/unix"
)

// A snapshot file is a 4 KiB header, the machine state as JSON, then guest
// RAM at a 2 MiB-aligned offset so that a restore maps it copy-on-write
// straight from the file. All-zero pages are holes in the file.
//
//	header  magic "HVPSNAP\0", version, file size, offsets, CRC32C of state,
//	        of RAM and of the header itself
//	state   snapshotState (JSON): per-vCPU KVM state, irqchip, PIT, clock,
//	        devices, layout, and the caller's metadata
//	RAM     MemSize bytes
const (
	snapshotMagic = "HVPSNAP\x00"
	// SnapshotVersion is the file format version; a file of another
	// version is refused, never guessed at.
	SnapshotVersion = 1

	snapHeaderSize = 4096
	snapRAMAlign   = 2 << 20
	pageSize       = 4096
)

// ErrBadSnapshot: the file is not a snapshot this hvprobe can restore.
var ErrBadSnapshot = errors.New("bad snapshot")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type snapHeader struct {
	Magic     [8]byte
	Version   uint32
	StateCRC  uint32
	FileSize  uint64
	StateOff  uint64
	StateLen  uint64
	MemOff    uint64
	MemLen    uint64
	MemCRC    uint32
	HeaderCRC uint32 // over the bytes above
}

// snapshotState is everything but RAM. KVM structs are kept as their raw
// bytes: restored byte for byte into the same mirrors.
type snapshotState struct {
	MemSize   uint64
	Reserved  uint64
	Cmdline   string
	Layout    Layout
	CPUs      []vcpuState
	IRQChips  [][]byte // PIC master, PIC slave, IOAPIC
	PIT       []byte
	Clock     uint64
	Serial    devices.SerialState
	CMOSIndex uint8
	Doorbell  *DoorbellState `json:",omitempty"`
	Meta      json.RawMessage
}

type vcpuState struct {
	CPUID     []CPUIDEntry
	MPState   uint32
	Regs      []byte
	Sregs     []byte
	FPU       []byte `json:",omitempty"` // without XSAVE support
	XSave     []byte `json:",omitempty"`
	XCRs      []byte `json:",omitempty"`
	DebugRegs []byte `json:",omitempty"`
	LAPIC     []byte
	MSRs      []MSREntry
	Events    []byte
}

// DoorbellState is an installed int3 doorbell (doorbell.go).
type DoorbellState struct{ Entry, Handler uint64 }

// SnapshotInfo says what a snapshot holds and how long it took.
type SnapshotInfo struct {
	FileSize  int64 // apparent size
	DiskBytes int64 // allocated blocks (zero pages are holes)
	MemBytes  uint64
	CPUs      int
}

// caps the vCPU state code branches on, read once per VM.
type stateCaps struct {
	xsave, xsave2Size, xcrs, debugRegs int
	msrs                               []uint32
}

func (vm *VM) stateCaps() (stateCaps, error) {
	c := stateCaps{
		xsave:      vm.checkExtension(capXSave),
		xsave2Size: vm.checkExtension(capXSave2),
		xcrs:       vm.checkExtension(capXCRs),
		debugRegs:  vm.checkExtension(capDebugRegs),
	}
	var err error
	c.msrs, err = msrIndexList(int(vm.kvm.Fd()))
	return c, err
}

// completePending finishes an exit's emulation (a port read's value into
// rax, rip past the instruction) without running the guest: KVM completes
// it on the next KVM_RUN, which immediate_exit makes return at once. The
// KVM API requires this before saving state.
func (v *VCPU) completePending() error {
	v.setImmediateExit(true)
	_, err := ioctl(v.fd, kvmRun, 0)
	v.setImmediateExit(false)
	if err != nil && !errors.Is(err, unix.EINTR) {
		return wrap("KVM_RUN (completing the last exit)", err)
	}
	return nil
}

// saveState reads the vCPU's state in the order Firecracker uses: events
// last, since the other GETs may change what is pending.
func (v *VCPU) saveState(c stateCaps) (vcpuState, error) {
	var s vcpuState
	if st := v.State(); st != VCPUPaused {
		return s, &StateError{CPU: v.id, Op: "SaveState", State: st}
	}
	if err := v.completePending(); err != nil {
		return s, err
	}
	fd := v.fd
	steps := []func() error{
		func() (err error) {
			s.CPUID, err = cpuidIoctl(fd, kvmGetCPUID2, make([]CPUIDEntry, 256))
			return wrap("KVM_GET_CPUID2", err)
		},
		func() error { return wrap("KVM_GET_MP_STATE", ioctlPtr(fd, kvmGetMPState, &s.MPState)) },
		getRaw[Regs](fd, kvmGetRegs, "KVM_GET_REGS", &s.Regs),
		getRaw[Sregs](fd, kvmGetSregs, "KVM_GET_SREGS", &s.Sregs),
	}
	switch {
	case c.xsave2Size > 4096:
		s.XSave = make([]byte, c.xsave2Size)
		steps = append(steps, func() error { return wrap("KVM_GET_XSAVE2", ioctlBuf(fd, kvmGetXSave2, s.XSave)) })
	case c.xsave > 0:
		s.XSave = make([]byte, 4096)
		steps = append(steps, func() error { return wrap("KVM_GET_XSAVE", ioctlBuf(fd, kvmGetXSave, s.XSave)) })
	default:
		steps = append(steps, getRaw[FPU](fd, kvmGetFPU, "KVM_GET_FPU", &s.FPU))
	}
	if c.xcrs > 0 {
		steps = append(steps, getRaw[xcrs](fd, kvmGetXCRs, "KVM_GET_XCRS", &s.XCRs))
	}
	if c.debugRegs > 0 {
		steps = append(steps, getRaw[debugRegs](fd, kvmGetDebugRegs, "KVM_GET_DEBUGREGS", &s.DebugRegs))
	}
	steps = append(steps,
		getRaw[LAPICState](fd, kvmGetLAPIC, "KVM_GET_LAPIC", &s.LAPIC),
		func() (err error) { s.MSRs, err = v.readMSRs(c.msrs); return err },
		getRaw[VCPUEvents](fd, kvmGetVCPUEvents, "KVM_GET_VCPU_EVENTS", &s.Events),
	)
	return s, runSteps(steps)
}

// restoreState writes a saved state back. Order matters (Firecracker's
// notes): SET_REGS clears pending exceptions, so events come last;
// SET_SREGS carries the APIC base, so the LAPIC follows it; the TSC
// deadline MSR needs the LAPIC.
func (v *VCPU) restoreState(s vcpuState) error {
	fd := v.fd
	steps := []func() error{
		func() error { return wrap("KVM_SET_MP_STATE", ioctlPtr(fd, kvmSetMPState, &s.MPState)) },
		setRaw[Regs](fd, kvmSetRegs, "KVM_SET_REGS", s.Regs),
		setRaw[Sregs](fd, kvmSetSregs, "KVM_SET_SREGS", s.Sregs),
	}
	switch {
	case len(s.XSave) >= 4096:
		steps = append(steps, func() error { return wrap("KVM_SET_XSAVE", ioctlBuf(fd, kvmSetXSave, s.XSave)) })
	case len(s.XSave) > 0:
		return fmt.Errorf("%w: XSAVE state of %d bytes", ErrBadSnapshot, len(s.XSave))
	default:
		steps = append(steps, setRaw[FPU](fd, kvmSetFPU, "KVM_SET_FPU", s.FPU))
	}
	if len(s.XCRs) > 0 {
		steps = append(steps, setRaw[xcrs](fd, kvmSetXCRs, "KVM_SET_XCRS", s.XCRs))
	}
	if len(s.DebugRegs) > 0 {
		steps = append(steps, setRaw[debugRegs](fd, kvmSetDebugRegs, "KVM_SET_DEBUGREGS", s.DebugRegs))
	}
	steps = append(steps,
		setRaw[LAPICState](fd, kvmSetLAPIC, "KVM_SET_LAPIC", s.LAPIC),
		func() error { return v.writeMSRs(s.MSRs) },
		setRaw[VCPUEvents](fd, kvmSetVCPUEvents, "KVM_SET_VCPU_EVENTS", s.Events),
	)
	if err := runSteps(steps); err != nil {
		return err
	}
	// Tells a kvm-clock guest it was paused, so its watchdogs do not count
	// the pause; EINVAL without kvm-clock is fine.
	ioctl(fd, kvmKVMClockCtrl, 0)
	return nil
}

// runSteps runs steps in order up to the first error.
func runSteps(steps []func() error) error {
	for _, f := range steps {
		if err := f(); err != nil {
			return err
		}
	}
	return nil
}

// Snapshot pauses the guest, writes its complete state and RAM to path
// and lets it run on. meta runs while every vCPU is stopped; what it
// returns (the caller's identity and probe-engine state) is stored as
// given and returned by Restore, and an error from it (a probe mid-step,
// say) cancels the snapshot.
func (vm *VM) Snapshot(path string, meta func() (json.RawMessage, error)) (SnapshotInfo, error) {
	if !vm.life.enter() {
		return SnapshotInfo{}, ErrClosed
	}
	defer vm.life.exit()
	if len(vm.disks) > 0 {
		// A disk's queues live in guest RAM and its image outside it: the
		// two would not restore in step.
		return SnapshotInfo{}, fmt.Errorf("%w: a VM with disks cannot be snapshotted", ErrBadConfig)
	}
	caps, err := vm.stateCaps()
	if err != nil {
		return SnapshotInfo{}, err
	}
	st := snapshotState{
		MemSize: vm.cfg.MemSize, Reserved: vm.cfg.Reserved, Cmdline: vm.cfg.Cmdline,
		Layout: vm.layout, CPUs: make([]vcpuState, len(vm.vcpus)),
	}
	if db := vm.handler.doorbell.Load(); db != nil {
		st.Doorbell = &DoorbellState{Entry: db.entry, Handler: db.handler}
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return SnapshotInfo{}, fmt.Errorf("creating snapshot: %w", err)
	}
	defer func() {
		f.Close()
		os.Remove(tmp)
	}()
	var hdr snapHeader
	err = vm.withAllStopped(func(i int, v *VCPU) error {
		s, err := v.saveState(caps)
		if err != nil {
			return fmt.Errorf("vCPU %d: %w", i, err)
		}
		st.CPUs[i] = s
		return nil
	}, func() error {
		var err error
		if st.Meta, err = meta(); err != nil {
			return err
		}
		if err := vm.saveMachine(&st); err != nil {
			return err
		}
		return vm.mem.with(func(ram []byte) error {
			hdr, err = writeSnapshot(f, &st, ram)
			return err
		})
	})
	if err != nil {
		return SnapshotInfo{}, fmt.Errorf("snapshot %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return SnapshotInfo{}, fmt.Errorf("snapshot %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return SnapshotInfo{}, fmt.Errorf("snapshot %s: %w", path, err)
	}
	info := SnapshotInfo{FileSize: int64(hdr.FileSize), MemBytes: hdr.MemLen, CPUs: len(st.CPUs)}
	var sb unix.Stat_t
	if unix.Fstat(int(f.Fd()), &sb) == nil {
		info.DiskBytes = sb.Blocks * 512
	}
	return info, nil
}

// saveMachine reads the VM-wide state: in-kernel irqchip and PIT, the
// kvm-clock, and the VMM's own devices.
func (vm *VM) saveMachine(st *snapshotState) error {
	for id := uint32(0); id < 3; id++ {
		c := irqChip{ChipID: id}
		if err := ioctlPtr(vm.vmFD, kvmGetIRQChip, &c); err != nil {
			return wrap("KVM_GET_IRQCHIP", err)
		}
		st.IRQChips = append(st.IRQChips, raw(&c))
	}
	var clk clockData
	err := runSteps([]func() error{
		getRaw[pitState2](vm.vmFD, kvmGetPIT2, "KVM_GET_PIT2", &st.PIT),
		func() error { return wrap("KVM_GET_CLOCK", ioctlPtr(vm.vmFD, kvmGetClock, &clk)) },
	})
	st.Clock = clk.Clock
	st.Serial = vm.serial.State()
	st.CMOSIndex = vm.handler.bus.CMOS.Index
	return err
}

func (vm *VM) restoreMachine(st *snapshotState) error {
	if len(st.IRQChips) != 3 {
		return fmt.Errorf("%w: %d irqchip states, want 3", ErrBadSnapshot, len(st.IRQChips))
	}
	var steps []func() error
	for _, b := range st.IRQChips {
		steps = append(steps, setRaw[irqChip](vm.vmFD, kvmSetIRQChip, "KVM_SET_IRQCHIP", b))
	}
	// The guest's clock resumes where it stopped: the time between
	// snapshot and restore never happened for it.
	clk := clockData{Clock: st.Clock}
	steps = append(steps,
		setRaw[pitState2](vm.vmFD, kvmSetPIT2, "KVM_SET_PIT2", st.PIT),
		func() error { return wrap("KVM_SET_CLOCK", ioctlPtr(vm.vmFD, kvmSetClock, &clk)) },
	)
	if err := runSteps(steps); err != nil {
		return err
	}
	vm.serial.SetState(st.Serial)
	vm.handler.bus.CMOS.Index = st.CMOSIndex
	if d := st.Doorbell; d != nil {
		vm.SetInt3Doorbell(d.Entry, d.Handler)
	}
	return nil
}

func (h *snapHeader) bytes() []byte {
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, h)
	return b.Bytes()
}

func (h *snapHeader) seal() {
	b := h.bytes()
	h.HeaderCRC = crc32.Checksum(b[:len(b)-4], castagnoli)
}

// writeSnapshot writes header, state and RAM; zero pages become holes.
func writeSnapshot(f *os.File, st *snapshotState, ram []byte) (snapHeader, error) {
	state, err := json.Marshal(st)
	if err != nil {
		return snapHeader{}, err
	}
	h := snapHeader{Version: SnapshotVersion, StateOff: snapHeaderSize, StateLen: uint64(len(state))}
	copy(h.Magic[:], snapshotMagic)
	h.StateCRC = crc32.Checksum(state, castagnoli)
	h.MemOff = (snapHeaderSize + h.StateLen + snapRAMAlign - 1) &^ (snapRAMAlign - 1)
	h.MemLen = uint64(len(ram))
	h.FileSize = h.MemOff + h.MemLen
	if _, err := f.WriteAt(state, int64(h.StateOff)); err != nil {
		return h, err
	}
	zero := make([]byte, pageSize)
	crc := uint32(0)
	for off := 0; off < len(ram); {
		// One write per run of non-zero pages.
		for off < len(ram) && bytes.Equal(ram[off:off+pageSize], zero) {
			crc = crc32.Update(crc, castagnoli, zero)
			off += pageSize
		}
		start := off
		for off < len(ram) && !bytes.Equal(ram[off:off+pageSize], zero) {
			off += pageSize
		}
		if off > start {
			chunk := ram[start:off]
			crc = crc32.Update(crc, castagnoli, chunk)
			if _, err := f.WriteAt(chunk, int64(h.MemOff)+int64(start)); err != nil {
				return h, err
			}
		}
	}
	h.MemCRC = crc
	if err := f.Truncate(int64(h.FileSize)); err != nil {
		return h, err
	}
	h.seal()
	hb := make([]byte, snapHeaderSize)
	copy(hb, h.bytes())
	_, err = f.WriteAt(hb, 0)
	return h, err
}

// readSnapshotHeader checks a snapshot's header and state and returns
// them. RAM is checked by the caller once mapped.
func readSnapshotHeader(f *os.File) (snapHeader, *snapshotState, error) {
	fi, err := f.Stat()
	if err != nil {
		return snapHeader{}, nil, err
	}
	return parseSnapshotHeader(f, fi.Size(), f.Name())
}

// parseSnapshotHeader is readSnapshotHeader on any file of size bytes.
func parseSnapshotHeader(f io.ReaderAt, size int64, name string) (snapHeader, *snapshotState, error) {
	hb := make([]byte, snapHeaderSize)
	if _, err := f.ReadAt(hb, 0); err != nil {
		return snapHeader{}, nil, fmt.Errorf("%w: %s: %d bytes, too short for a header", ErrBadSnapshot, name, size)
	}
	var h snapHeader
	binary.Read(bytes.NewReader(hb), binary.LittleEndian, &h)
	if string(h.Magic[:]) != snapshotMagic {
		return h, nil, fmt.Errorf("%w: %s is not an hvprobe snapshot", ErrBadSnapshot, name)
	}
	check := h
	check.seal()
	if check.HeaderCRC != h.HeaderCRC {
		return h, nil, fmt.Errorf("%w: %s: header checksum mismatch (corrupted)", ErrBadSnapshot, name)
	}
	if h.Version != SnapshotVersion {
		return h, nil, fmt.Errorf("%w: %s has format version %d; this hvprobe reads version %d", ErrBadSnapshot, name, h.Version, SnapshotVersion)
	}
	if uint64(size) != h.FileSize {
		return h, nil, fmt.Errorf("%w: %s is %d bytes, its header says %d (truncated?)", ErrBadSnapshot, name, size, h.FileSize)
	}
	if err := h.checkSections(); err != nil {
		return h, nil, fmt.Errorf("%w: %s: %v", ErrBadSnapshot, name, err)
	}
	state := make([]byte, h.StateLen)
	if _, err := f.ReadAt(state, int64(h.StateOff)); err != nil {
		return h, nil, fmt.Errorf("%w: %s: reading state: %v", ErrBadSnapshot, name, err)
	}
	if crc32.Checksum(state, castagnoli) != h.StateCRC {
		return h, nil, fmt.Errorf("%w: %s: state checksum mismatch (corrupted)", ErrBadSnapshot, name)
	}
	st := new(snapshotState)
	if err := json.Unmarshal(state, st); err != nil {
		return h, nil, fmt.Errorf("%w: %s: state: %v", ErrBadSnapshot, name, err)
	}
	if st.MemSize != h.MemLen || len(st.CPUs) < 1 || len(st.CPUs) > maxCPUs {
		return h, nil, fmt.Errorf("%w: %s: %d vCPUs, %d bytes of RAM for a %d-byte guest", ErrBadSnapshot, name, len(st.CPUs), h.MemLen, st.MemSize)
	}
	if err := st.check(); err != nil {
		return h, nil, fmt.Errorf("%w: %s: %v", ErrBadSnapshot, name, err)
	}
	return h, st, nil
}

// Caps on what a snapshot file may claim. The file is untrusted input:
// whoever crafts one computes its checksums too.
const (
	maxSnapState    = 16 << 20 // the JSON state; a real one is tens of KiB
	maxCPUIDEntries = 256      // KVM_MAX_CPUID_ENTRIES
	maxSnapMSRs     = 1 << 14  // msrIndexList's limit
	maxXSave        = 1 << 20  // KVM_CAP_XSAVE2 sizes are a few KiB
)

// checkSections checks the header's layout (header, state, 4 KiB-aligned
// RAM to the end of the file) without an overflowing sum.
func (h *snapHeader) checkSections() error {
	switch {
	case h.StateLen > maxSnapState:
		return fmt.Errorf("a state of %d bytes (at most %d)", h.StateLen, maxSnapState)
	case h.MemLen > maxMem:
		return fmt.Errorf("%d bytes of RAM (at most %d)", h.MemLen, uint64(maxMem))
	case h.StateOff < snapHeaderSize || h.MemOff < h.StateOff || h.MemOff-h.StateOff < h.StateLen:
		return fmt.Errorf("the state [%#x,+%#x) is not between the header and RAM at %#x", h.StateOff, h.StateLen, h.MemOff)
	case h.MemOff%pageSize != 0 || h.MemOff > h.FileSize || h.FileSize-h.MemOff != h.MemLen:
		return fmt.Errorf("RAM [%#x,+%#x) does not end a %d-byte file on a page boundary", h.MemOff, h.MemLen, h.FileSize)
	}
	return nil
}

// check refuses saved state that no KVM call could take: every raw
// struct its mirror's size, lists within KVM's limits. Restore then
// reaches KVM only with well-formed state.
func (st *snapshotState) check() error {
	if len(st.IRQChips) != 3 {
		return fmt.Errorf("%d irqchip states, want 3", len(st.IRQChips))
	}
	errs := []error{rawSize[pitState2]("PIT", st.PIT)}
	for _, b := range st.IRQChips {
		errs = append(errs, rawSize[irqChip]("irqchip", b))
	}
	for i, c := range st.CPUs {
		var e []error
		switch {
		case len(c.CPUID) > maxCPUIDEntries:
			e = append(e, fmt.Errorf("%d CPUID entries (at most %d)", len(c.CPUID), maxCPUIDEntries))
		case len(c.MSRs) > maxSnapMSRs:
			e = append(e, fmt.Errorf("%d MSRs (at most %d)", len(c.MSRs), maxSnapMSRs))
		case len(c.XSave) > maxXSave || len(c.XSave) > 0 && len(c.XSave) < 4096:
			e = append(e, fmt.Errorf("XSAVE state of %d bytes", len(c.XSave)))
		}
		e = append(e, rawSize[Regs]("regs", c.Regs), rawSize[Sregs]("sregs", c.Sregs),
			rawSize[LAPICState]("LAPIC", c.LAPIC), rawSize[VCPUEvents]("events", c.Events))
		if len(c.XSave) == 0 {
			e = append(e, rawSize[FPU]("FPU", c.FPU))
		}
		if len(c.XCRs) > 0 {
			e = append(e, rawSize[xcrs]("XCRs", c.XCRs))
		}
		if len(c.DebugRegs) > 0 {
			e = append(e, rawSize[debugRegs]("debug registers", c.DebugRegs))
		}
		if err := errors.Join(e...); err != nil {
			errs = append(errs, fmt.Errorf("vCPU %d: %w", i, err))
		}
	}
	return errors.Join(errs...)
}

// openSnapshot is Restore up to its first KVM call: the file checked
// whole (header, state, RAM checksum) and its RAM mapped, which the
// caller then owns.
func openSnapshot(rc RestoreConfig) (Config, *snapshotState, []byte, error) {
	f, err := os.Open(rc.Path)
	if err != nil {
		return Config{}, nil, nil, fmt.Errorf("opening snapshot: %w", err)
	}
	defer f.Close()
	h, st, err := readSnapshotHeader(f)
	if err != nil {
		return Config{}, nil, nil, err
	}
	cfg := Config{
		MemSize: st.MemSize, CPUs: len(st.CPUs), Reserved: st.Reserved, Cmdline: st.Cmdline,
		Console: rc.Console, OnConsoleLine: rc.OnConsoleLine, Symbolize: rc.Symbolize, DevKVM: rc.DevKVM,
	}
	if cfg.DevKVM == "" {
		cfg.DevKVM = "/dev/kvm"
	}
	if err := cfg.check(); err != nil {
		return Config{}, nil, nil, fmt.Errorf("%w: %s: %v", ErrBadSnapshot, rc.Path, err)
	}
	ram, err := unix.Mmap(int(f.Fd()), int64(h.MemOff), int(h.MemLen),
		unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_NORESERVE)
	if err != nil {
		return Config{}, nil, nil, fmt.Errorf("mapping snapshot RAM: %w", err)
	}
	if ramCRC(f, ram, int64(h.MemOff)) != h.MemCRC {
		unix.Munmap(ram)
		return Config{}, nil, nil, fmt.Errorf("%w: %s: RAM checksum mismatch (corrupted)", ErrBadSnapshot, rc.Path)
	}
	return cfg, st, ram, nil
}

// SnapshotMeta reads a snapshot's caller metadata after checking the
// header and state (not RAM), so a caller can refuse a snapshot of another
// kernel before creating anything.
func SnapshotMeta(path string) (json.RawMessage, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening snapshot: %w", err)
	}
	defer f.Close()
	_, st, err := readSnapshotHeader(f)
	if err != nil {
		return nil, err
	}
	return st.Meta, nil
}

// ramCRC checksums the RAM section. Holes are summed as zeros without
// touching the mapping: reading a hole through it would make the page
// cache allocate zeroed pages for all of RAM (a second on the first restore
// of a fresh file), where a guest touches only what it uses.
func ramCRC(f *os.File, ram []byte, memOff int64) uint32 {
	zero := make([]byte, 1<<20)
	crc := uint32(0)
	fd := int(f.Fd())
	for off := int64(0); off < int64(len(ram)); {
		data, err := unix.Seek(fd, memOff+off, unix.SEEK_DATA)
		if err != nil { // ENXIO: only a hole remains (or no SEEK_DATA: read all)
			data = memOff + int64(len(ram))
			if !errors.Is(err, unix.ENXIO) {
				data = memOff + off
			}
		}
		for end := min(data-memOff, int64(len(ram))); off < end; {
			n := min(end-off, int64(len(zero)))
			crc = crc32.Update(crc, castagnoli, zero[:n])
			off += n
		}
		if off >= int64(len(ram)) {
			break
		}
		hole, err := unix.Seek(fd, memOff+off, unix.SEEK_HOLE)
		end := min(hole-memOff, int64(len(ram)))
		if err != nil || end <= off {
			end = int64(len(ram))
		}
		crc = crc32.Update(crc, castagnoli, ram[off:end])
		off = end
	}
	return crc
}

// RestoreConfig is what a restored VM takes from its caller; everything
// else comes from the snapshot.
type RestoreConfig struct {
	Path          string
	Console       io.Writer
	OnConsoleLine func(line string)
	Symbolize     func(addr uint64) string
	DevKVM        string
}

// Restore creates a VM from a snapshot: RAM mapped copy-on-write from the
// file (the file is never written), every saved state loaded. It returns
// the caller's metadata. The guest continues on Run as if never stopped.
func Restore(rc RestoreConfig) (*VM, json.RawMessage, error) {
	cfg, st, ram, err := openSnapshot(rc)
	if err != nil {
		return nil, nil, err
	}
	vm := blankVM(cfg)
	vm.layout = st.Layout
	if err := vm.create(ram, func(id int, _ []CPUIDEntry) []CPUIDEntry { return st.CPUs[id].CPUID }); err != nil {
		vm.Close()
		return nil, nil, err
	}
	if err := vm.restoreMachine(st); err != nil {
		vm.Close()
		return nil, nil, err
	}
	for i, v := range vm.vcpus {
		if err := v.Do(func(CPU) error { return v.restoreState(st.CPUs[i]) }); err != nil {
			vm.Close()
			return nil, nil, fmt.Errorf("restoring vCPU %d: %w", i, err)
		}
	}
	return vm, st.Meta, nil
}
