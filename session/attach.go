package session

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/hvprobe/hvprobe/guest"
	"github.com/hvprobe/hvprobe/introspect"
	"github.com/hvprobe/hvprobe/kimage"
	"github.com/hvprobe/hvprobe/kprobes"
	"github.com/hvprobe/hvprobe/vmm"
)

// AttachAfter names the kernel variable that says the engine may attach:
// x86's after_bootmem, set by mem_init. start_kernel runs it after
// setup_arch (whose cleanup_highmap clears the kernel-image PMDs outside
// the image, so hvprobe's slot mapping there stays) and after trap_init
// (whose IDT setup would undo the int3 doorbell). The engine attaches on
// the first console line printed once it is set: the printing vCPU is then
// stopped in a port-I/O exit, long before any initcall runs.
const AttachAfter = "after_bootmem"

// Errors from attaching.
var (
	ErrNotAttached = errors.New("probe engine not attached yet")
	ErrNoSlotVA    = errors.New("no free 2 MiB of kernel-image address space for instruction slots")
)

// Attached is the running kernel as the probe engine sees it.
type Attached struct {
	Manager *kprobes.Manager
	Kernel  *RunningKernel
	Slots   kprobes.SlotArea
}

// RunningKernel is the guest kernel at run time: slid symbols and its page
// tables. It implements kprobes.Kernel.
type RunningKernel struct {
	Syms   *guest.SymbolTable // slid
	Mem    *introspect.VirtMem
	Layout vmm.Layout
	policy *textPolicy
}

// Address and Format make the running kernel a probedef.Symbols.
func (k *RunningKernel) Address(name string) (uint64, error) { return k.Resolve(name, 0) }
func (k *RunningKernel) Format(addr uint64) string           { return k.Syms.FormatAddr(addr) }

// kernelGPA is where the kernel image keeps a slid image address
// physically: the kernel maps its image linearly, from its first
// instruction on.
func kernelGPA(l vmm.Layout, va uint64) uint64 {
	return va - l.VirtDelta - kimage.StartKernelMap + l.PhysDelta
}

// Resolve returns sym's address plus off, off within sym.
func (k *RunningKernel) Resolve(sym string, off uint64) (uint64, error) { return k.Syms.At(sym, off) }

// SymbolAt names the symbol containing va.
func (k *RunningKernel) SymbolAt(va uint64) (string, uint64, uint64, bool) {
	s, off, ok := k.Syms.SymbolAt(va)
	return s.Name, off, s.Size, ok
}

// Describe says where va is when no function contains it.
func (k *RunningKernel) Describe(va uint64) string { return k.Syms.Describe(va) }

// InText reports whether va is kernel text.
func (k *RunningKernel) InText(va uint64) bool { return k.Syms.InText(va) }

// InEntryText implements kprobes.Kernel.
func (k *RunningKernel) InEntryText(va uint64) bool { return k.Syms.InEntryText(va) }

// Translate walks the kernel's page tables.
func (k *RunningKernel) Translate(va uint64) (uint64, error) {
	t, err := k.Mem.Translate(va)
	if err != nil {
		return 0, err
	}
	return t.PA, nil
}

// ReadVirt reads kernel virtual memory.
func (k *RunningKernel) ReadVirt(va uint64, p []byte) error { return k.Mem.Read(va, p) }

// WriteVirt writes kernel virtual memory.
func (k *RunningKernel) WriteVirt(va uint64, p []byte) error { return k.Mem.Write(va, p) }

// LoadVirt and StoreVirt make RunningKernel a kprobes.AtomicVirt, which
// lets the engine emulate instructions with memory operands.
var _ kprobes.AtomicVirt = (*RunningKernel)(nil)

func (k *RunningKernel) LoadVirt(va uint64, size int) (uint64, error) { return k.Mem.Load(va, size) }
func (k *RunningKernel) StoreVirt(va uint64, size int, v uint64) error {
	return k.Mem.Store(va, size, v)
}

// Reserved applies hvprobe's rule for text the kernel patches itself.
func (k *RunningKernel) Reserved(va, n uint64) error { return k.policy.reserved(va, n) }

// HasFixup looks va up in the kernel's exception table.
func (k *RunningKernel) HasFixup(va uint64) bool { return k.policy.hasFixup(va) }

// Entered says whether an exception fixup or a jump label lands inside
// (va, va+n).
func (k *RunningKernel) Entered(va, n uint64) bool { return k.policy.entered(va, n) }

// hookMux is the VM's one debug hook, installed before the guest runs so
// that the VM intercepts int3 from the start; it forwards to the engine
// once attached.
type hookMux struct {
	engine atomic.Pointer[engineBox]
}

type engineBox struct{ h vmm.DebugHook }

func (h *hookMux) HandleDebug(c vmm.CPU, ev vmm.DebugEvent) bool {
	if e := h.engine.Load(); e != nil && e.h != nil {
		return e.h.HandleDebug(c, ev)
	}
	return false
}

// vmAdapter gives the engine the VM with its hook routed through the mux.
type vmAdapter struct {
	vm  *vmm.VM
	mux *hookMux
}

func (a vmAdapter) Mem() vmm.PhysMem { return a.vm.Mem() }
func (a vmAdapter) NumCPUs() int     { return a.vm.NumCPUs() }

// WithAllPaused makes the adapter a kprobes.Pauser (exit-less probes).
func (a vmAdapter) WithAllPaused(f func() error) error { return a.vm.WithAllPaused(f) }

// WithAllPausedAt makes it a kprobes.PauserAt (exit-less runs).
func (a vmAdapter) WithAllPausedAt(f func([]uint64) error) error { return a.vm.WithAllPausedAt(f) }
func (a vmAdapter) SetDebugHook(h vmm.DebugHook) {
	a.mux.engine.Store(&engineBox{h})
}

// maybeAttach runs on every console line until the engine is attached.
func (s *Session) maybeAttach() {
	if s.attachTried.Load() {
		return
	}
	l := s.VM.Layout()
	flag, err := s.Kernel.Symbols.Lookup(AttachAfter)
	if err != nil {
		s.attachTried.Store(true)
		s.setAttachErr(fmt.Errorf("finding the attach point: %w", err))
		return
	}
	var b [4]byte
	if err := s.VM.Mem().ReadPhys(kernelGPA(l, flag.Addr+l.VirtDelta), b[:]); err != nil || b == [4]byte{} {
		return
	}
	s.attachTried.Store(true)
	err = s.attach()
	s.setAttachErr(err)
	if err != nil {
		s.notify(Notice{Kind: NoticeFailed, Probe: "engine", Err: fmt.Errorf("attaching the probe engine: %w", err)})
	}
}

func (s *Session) setAttachErr(err error) {
	s.attachMu.Lock()
	s.attachErr = err
	s.attachMu.Unlock()
}

// attach builds the running-kernel view, maps the slot area and starts the
// probe engine, then runs the callbacks queued with AtAttach. It runs on a
// vCPU thread with that vCPU stopped at the attach point.
func (s *Session) attach() error {
	rk, err := s.runningKernel()
	if err != nil {
		return err
	}
	slots, err := s.mapSlots(rk)
	if err != nil {
		return err
	}
	if s.host.Int3Reflected {
		if err := s.installDoorbell(rk, slots); err != nil {
			return err
		}
	}
	return s.startEngine(rk, slots, slots)
}

// runningKernel is the kernel's view through its own page tables.
func (s *Session) runningKernel() (*RunningKernel, error) {
	l := s.VM.Layout()
	syms := s.Kernel.Symbols.Slid(l.VirtDelta)
	pgd, err := syms.Lookup("init_top_pgt")
	if err != nil {
		return nil, fmt.Errorf("finding the kernel page tables: %w", err)
	}
	vmem := introspect.NewVirtMem(s.VM.Mem(), kernelGPA(l, pgd.Addr), false)
	pol, err := newTextPolicy(s.Kernel, l.VirtDelta)
	if err != nil {
		return nil, err
	}
	return &RunningKernel{Syms: syms, Mem: vmem, Layout: l, policy: pol}, nil
}

// startEngine starts the probe engine on free, a part of the mapped slot
// area (all of it, but after a restore), and runs the AtAttach callbacks.
func (s *Session) startEngine(rk *RunningKernel, area, free kprobes.SlotArea) error {
	mgr, err := kprobes.NewManager(vmAdapter{s.VM, s.mux}, rk, free)
	if err != nil {
		return fmt.Errorf("starting the probe engine: %w", err)
	}
	a := &Attached{Manager: mgr, Kernel: rk, Slots: area}
	s.watchBoot(a)
	if s.textLogErr == nil {
		s.workers.Add(1)
		go s.followWrites(a)
	}
	s.attachMu.Lock()
	s.attached = a
	cbs := s.atAttach
	s.atAttach = nil
	close(s.attachedCh)
	s.attachMu.Unlock()
	var errs []error
	for _, f := range cbs {
		if err := f(a); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// mapSlots maps hvprobe's reserved region (slots and doorbell page) into
// the kernel's address space in the kernel-image window, outside the
// image, within ±2 GiB of text.
func (s *Session) mapSlots(rk *RunningKernel) (kprobes.SlotArea, error) {
	r := s.VM.Reserved()
	gpa, size := r.Mapped()
	_, slotBytes := r.Slots()
	alloc, reset := r.TableAllocator(s.VM.Mem())
	end, err := rk.Syms.Lookup("_end")
	if err != nil {
		return kprobes.SlotArea{}, err
	}
	text, err := rk.Syms.Lookup("_text")
	if err != nil {
		return kprobes.SlotArea{}, err
	}
	const pmd = 2 << 20
	const window = kimage.StartKernelMap + kimage.KernelImageSize
	var candidates []uint64
	for va := (end.Addr+pmd-1)&^(pmd-1) + pmd; va+pmd <= window; va += pmd {
		candidates = append(candidates, va)
	}
	for va := (text.Addr&^(pmd-1) - 2*pmd); va >= kimage.StartKernelMap+pmd && va < text.Addr; va -= pmd {
		candidates = append(candidates, va)
	}
	for _, va := range candidates {
		if _, err := rk.Mem.Translate(va); err == nil {
			continue // something is there
		}
		reset()
		err := introspect.MapRange(s.VM.Mem(), rk.Mem.CR3(), false, va, gpa, size,
			introspect.FlagPresent|introspect.FlagGlobal, alloc)
		if err == nil {
			return kprobes.SlotArea{VA: va, GPA: gpa, Size: slotBytes}, nil
		}
	}
	return kprobes.SlotArea{}, ErrNoSlotVA
}

// AtAttach queues f to run when the probe engine attaches (at once, on
// the caller's goroutine, when it already has). Boot-time probes are
// registered this way so that they are armed before the guest runs on.
func (s *Session) AtAttach(f func(*Attached) error) error {
	s.attachMu.Lock()
	if s.attached == nil {
		s.atAttach = append(s.atAttach, f)
		s.attachMu.Unlock()
		return nil
	}
	a := s.attached
	s.attachMu.Unlock()
	return f(a)
}

// Attached returns the probe engine once attached.
func (s *Session) Attached() (*Attached, error) {
	s.attachMu.Lock()
	defer s.attachMu.Unlock()
	if s.attached == nil {
		return nil, ErrNotAttached
	}
	return s.attached, nil
}

// AttachedCh is closed when the probe engine has attached.
func (s *Session) AttachedCh() <-chan struct{} { return s.attachedCh }

// AttachErr reports what went wrong attaching the engine, if anything.
func (s *Session) AttachErr() error {
	s.attachMu.Lock()
	defer s.attachMu.Unlock()
	return s.attachErr
}

// installDoorbell points the guest's #BP vector at hvprobe's doorbell page
// (vmm/doorbell.go), for hosts whose KVM never intercepts int3. The gate
// is in idt_table, which every vCPU loads.
func (s *Session) installDoorbell(rk *RunningKernel, slots kprobes.SlotArea) error {
	idt, err := rk.Syms.Lookup("idt_table")
	if err != nil {
		return fmt.Errorf("installing the int3 doorbell: %w", err)
	}
	gate := kernelGPA(rk.Layout, idt.Addr) + 3*vmm.IDTGateSize
	entry := slots.VA + s.VM.Reserved().DoorbellOffset()
	return s.VM.InstallInt3Doorbell(gate, entry, func(handler uint64) error {
		if _, _, _, ok := rk.SymbolAt(handler); !ok || !rk.InText(handler) {
			return fmt.Errorf("installing the int3 doorbell: IDT vector 3 points at %#x, not kernel text", handler)
		}
		return nil
	})
}
