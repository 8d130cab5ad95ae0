package session

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/hvprobe/hvprobe/guest"
	"github.com/hvprobe/hvprobe/introspect"
	"github.com/hvprobe/hvprobe/kprobes"
	"github.com/hvprobe/hvprobe/vmm"
)

// AttachSymbol is where the probe engine attaches during boot: the first
// function start_kernel calls after setup_arch, by which time the kernel
// runs on its own page tables (init_top_pgt) and cleanup_highmap has
// cleared the kernel-image PMDs outside the image, so hvprobe's slot
// mapping there will not be undone.
const AttachSymbol = "trap_init"

// Errors from attaching.
var (
	ErrNotAttached = errors.New("probe engine not attached yet")
	ErrNoSlotVA    = errors.New("no free 2 MiB of kernel-image address space for instruction slots")
)

// slotTablePages is how many pages of the reserved region are kept for the
// page tables that map the slots (one page table suffices for 2 MiB; the
// rest guard against a missing intermediate level).
const slotTablePages = 3

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
}

// kernelGPA is where the kernel image keeps a slid image address
// physically: the kernel maps its image linearly, from its first
// instruction on.
func kernelGPA(l vmm.Layout, va uint64) uint64 {
	return va - l.VirtDelta - introspect.StartKernelMap + l.PhysDelta
}

// Resolve returns sym's address plus off.
func (k *RunningKernel) Resolve(sym string, off uint64) (uint64, error) {
	s, err := k.Syms.Lookup(sym)
	if err != nil {
		return 0, err
	}
	return s.Addr + off, nil
}

// SymbolAt names the symbol containing va.
func (k *RunningKernel) SymbolAt(va uint64) (string, uint64, uint64, bool) {
	s, off, ok := k.Syms.SymbolAt(va)
	return s.Name, off, s.Size, ok
}

// InText reports whether va is kernel text.
func (k *RunningKernel) InText(va uint64) bool { return k.Syms.InText(va) }

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

// hookMux is the VM's one debug hook: the boot-time attach breakpoint
// first, then the probe engine.
type hookMux struct {
	mu       sync.Mutex
	attachVA uint64
	attachPA uint64
	orig     byte
	armed    bool
	onAttach func() error
	attachEr error
	engine   atomic.Pointer[engineBox]
}

type engineBox struct{ h vmm.DebugHook }

func (h *hookMux) HandleDebug(c vmm.CPU, ev vmm.DebugEvent) bool {
	if ev.Kind == vmm.DebugBreakpoint {
		h.mu.Lock()
		if h.armed && ev.RIP == h.attachVA {
			h.armed = false
			h.mu.Unlock()
			h.fire()
			// rip still points at the now-restored instruction.
			return true
		}
		h.mu.Unlock()
	}
	if e := h.engine.Load(); e != nil && e.h != nil {
		return e.h.HandleDebug(c, ev)
	}
	return false
}

func (h *hookMux) fire() {
	err := h.onAttach()
	h.mu.Lock()
	h.attachEr = err
	h.mu.Unlock()
}

// vmAdapter gives the engine the VM with its hook routed through the mux.
type vmAdapter struct {
	vm  *vmm.VM
	mux *hookMux
}

func (a vmAdapter) Mem() vmm.PhysMem { return a.vm.Mem() }
func (a vmAdapter) NumCPUs() int     { return a.vm.NumCPUs() }
func (a vmAdapter) SetDebugHook(h vmm.DebugHook) {
	a.mux.engine.Store(&engineBox{h})
}

// armAttach plants the attach breakpoint in the freshly loaded kernel.
func (s *Session) armAttach() error {
	sym, err := s.Kernel.Symbols.Lookup(AttachSymbol)
	if err != nil {
		return fmt.Errorf("finding the attach point: %w", err)
	}
	l := s.VM.Layout()
	va := sym.Addr + l.VirtDelta
	pa := kernelGPA(l, va)
	var b [1]byte
	if err := s.VM.Mem().ReadPhys(pa, b[:]); err != nil {
		return fmt.Errorf("arming the attach point %s: %w", AttachSymbol, err)
	}
	m := &hookMux{attachVA: va, attachPA: pa, orig: b[0], armed: true}
	m.onAttach = func() error {
		if err := s.VM.Mem().WritePhys(pa, []byte{m.orig}); err != nil {
			return err
		}
		return s.attach()
	}
	if err := s.VM.Mem().WritePhys(pa, []byte{0xcc}); err != nil {
		return err
	}
	s.mux = m
	return s.VM.SetDebugHook(m)
}

// attach builds the running-kernel view, maps the slot area and starts the
// probe engine, then runs the callbacks queued with AtAttach. It runs on a
// vCPU thread with that vCPU stopped at the attach point.
func (s *Session) attach() error {
	l := s.VM.Layout()
	syms := s.Kernel.Symbols.Slid(l.VirtDelta)
	pgd, err := syms.Lookup("init_top_pgt")
	if err != nil {
		return fmt.Errorf("finding the kernel page tables: %w", err)
	}
	vmem := introspect.NewVirtMem(s.VM.Mem(), kernelGPA(l, pgd.Addr), false)
	rk := &RunningKernel{Syms: syms, Mem: vmem, Layout: l}
	slots, err := s.mapSlots(rk)
	if err != nil {
		return err
	}
	mgr, err := kprobes.NewManager(vmAdapter{s.VM, s.mux}, rk, slots)
	if err != nil {
		return fmt.Errorf("starting the probe engine: %w", err)
	}
	a := &Attached{Manager: mgr, Kernel: rk, Slots: slots}
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

// mapSlots maps hvprobe's reserved region into the kernel's address space
// in the kernel-image window, outside the image, within ±2 GiB of text.
func (s *Session) mapSlots(rk *RunningKernel) (kprobes.SlotArea, error) {
	gpa, size := s.VM.Reserved()
	tables := gpa + size - slotTablePages*4096
	next := tables
	alloc := func() (uint64, error) {
		if next >= gpa+size {
			return 0, fmt.Errorf("slot page tables: reserved region exhausted")
		}
		p := next
		next += 4096
		zero := make([]byte, 4096)
		return p, s.VM.Mem().WritePhys(p, zero)
	}
	slotBytes := tables - gpa
	end, err := rk.Syms.Lookup("_end")
	if err != nil {
		return kprobes.SlotArea{}, err
	}
	text, err := rk.Syms.Lookup("_text")
	if err != nil {
		return kprobes.SlotArea{}, err
	}
	const pmd = 2 << 20
	const window = introspect.StartKernelMap + 1<<30
	var candidates []uint64
	for va := (end.Addr+pmd-1)&^(pmd-1) + pmd; va+pmd <= window; va += pmd {
		candidates = append(candidates, va)
	}
	for va := (text.Addr&^(pmd-1) - 2*pmd); va >= introspect.StartKernelMap+pmd && va < text.Addr; va -= pmd {
		candidates = append(candidates, va)
	}
	for _, va := range candidates {
		if _, err := rk.Mem.Translate(va); err == nil {
			continue // something is there
		}
		next = tables
		ok := true
		for off := uint64(0); off < slotBytes; off += 4096 {
			err := introspect.MapPage(s.VM.Mem(), rk.Mem.CR3(), false, va+off, gpa+off,
				introspect.FlagPresent|introspect.FlagGlobal, alloc)
			if err != nil {
				for o := uint64(0); o < off; o += 4096 {
					introspect.UnmapPage(s.VM.Mem(), rk.Mem.CR3(), false, va+o)
				}
				ok = false
				break
			}
		}
		if ok {
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

// AttachErr reports what went wrong at the attach point, if anything.
func (s *Session) AttachErr() error {
	if s.mux == nil {
		return nil
	}
	s.mux.mu.Lock()
	defer s.mux.mu.Unlock()
	return s.mux.attachEr
}
