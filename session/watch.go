package session

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hvprobe/hvprobe/introspect"
	"github.com/hvprobe/hvprobe/probedef"
	"github.com/hvprobe/hvprobe/vmm"
)

// ErrWatch: a w line cannot be armed on this kernel or host.
var ErrWatch = errors.New("watch")

// Watch is one armed w line. A write watch (w@) traps the guest-physical
// pieces of its Len bytes (vmm.TrapWrites) and reports each store that
// touches them with the bytes it overwrote; a read/write watch (rw@) is a
// debug-register watchpoint, where the host's KVM fires them. The pages stay readable: a guest that reads them,
// or its own text, sees nothing of the watch.
type Watch struct {
	Def   *probedef.Def
	VA    uint64 // the watched address
	s     *Session
	env   *eventEnv
	emit  func(probedef.Event)
	parts []watchPart // write traps, for w@
	dr    *drSlot     // the debug register, for rw@
	hits  atomic.Uint64
	// armed and removed change under watchSet.armMu.
	armed, removed bool
}

// watchPart is a physically contiguous piece of the watched bytes, from
// byte off of the watch.
type watchPart struct {
	gpa  uint64
	n    int
	off  int
	trap vmm.TrapID
}

// Hits is how many stores touched the watched bytes.
func (w *Watch) Hits() uint64 { return w.hits.Load() }

// watchSet is the session's armed watches, which its one write hook
// dispatches to.
type watchSet struct {
	armMu sync.Mutex // serializes arming and removal; held while vCPUs pause
	hook  bool       // the VM's write hook is installed (armMu)
	mu    sync.Mutex // guards list, which the hook reads on vCPU threads
	list  []*Watch
}

// addWatch arms a w line: writes trapped page by page in guest memory
// (the pages become read-only to the guest and the VMM completes each
// store), reads and writes in a debug register.
func (s *Session) addWatch(a *Attached, env *eventEnv, d *probedef.Def, emit func(probedef.Event)) (*Watch, error) {
	va, err := defAddr(a.Kernel.Resolve, d)
	if err != nil {
		return nil, err
	}
	if va>>63 == 0 {
		return nil, fmt.Errorf("%w: %#x is not a kernel address", ErrWatch, va)
	}
	w := &Watch{Def: d, VA: va, s: s, env: env, emit: emit}
	if err := watchAccess(d, va); err != nil {
		return nil, err
	}
	if d.Access == probedef.AccessRW {
		return w, s.addDRWatch(w)
	}
	for off := 0; off < d.Len; {
		t, err := a.Kernel.Mem.Translate(va + uint64(off))
		if err != nil {
			return nil, fmt.Errorf("%w: %#x: %v", ErrWatch, va+uint64(off), err)
		}
		n := min(d.Len-off, int(uint64(introspect.Size4K)-t.PA%uint64(introspect.Size4K)))
		w.parts = append(w.parts, watchPart{gpa: t.PA, n: n, off: off})
		off += n
	}
	// Trapping pauses every vCPU, from a vCPU's own thread too (at
	// attach): the watch is in force before the guest runs on.
	if err := w.arm(); err != nil {
		return nil, err
	}
	return w, nil
}

// onOtherThread runs arm, which sets a debug register on every vCPU
// through a request to its thread. Called on a vCPU's own thread (at
// attach, in an AtAttach callback) it cannot wait for itself, so it arms
// from a session goroutine as soon as that vCPU runs on, and a failure
// then is a NoticeFailed for what.
func (s *Session) onOtherThread(arm func() error, what string) error {
	err := arm()
	if !errors.Is(err, vmm.ErrOwnThread) {
		return err
	}
	s.workers.Add(1)
	go func() {
		defer s.workers.Done()
		if err := arm(); err != nil {
			s.notify(Notice{Kind: NoticeFailed, Probe: what, Err: err})
		}
	}()
	return nil
}

// arm traps the watch's pieces and lists it for the hook; a removed watch
// stays removed.
func (w *Watch) arm() error {
	s := w.s
	// Trapping pauses every vCPU, which may be waiting in HandleWrite
	// for watches.mu: arm under armMu only.
	s.watches.armMu.Lock()
	defer s.watches.armMu.Unlock()
	if w.removed {
		return nil
	}
	for i := range w.parts {
		id, err := s.VM.TrapWrites(w.parts[i].gpa, uint64(w.parts[i].n))
		if err != nil {
			w.untrap(i)
			return fmt.Errorf("%w: trapping writes to %#x: %v", ErrWatch, w.VA+uint64(w.parts[i].off), err)
		}
		w.parts[i].trap = id
	}
	w.armed = true
	s.watches.mu.Lock()
	s.watches.list = append(s.watches.list, w)
	s.watches.mu.Unlock()
	if !s.watches.hook {
		s.VM.SetWriteHook(writeHook{s})
		s.watches.hook = true
	}
	return nil
}

// watchAccess refuses what x86 cannot watch: reads alone (DR7 has no
// read-only breakpoint; ftrace refuses r@ on x86 too) and a read/write
// watch off its length's alignment (the CPU ignores the low bits).
func watchAccess(d *probedef.Def, va uint64) error {
	switch {
	case d.Access == probedef.AccessRead:
		return fmt.Errorf("%w: x86 debug registers watch writes, or reads and writes, not reads alone: use rw@ or w@", ErrWatch)
	case d.Access == probedef.AccessRW && va%uint64(d.Len) != 0:
		return fmt.Errorf("%w: rw@ %#x is a debug-register watch, which must be aligned to its length %d", ErrWatch, va, d.Len)
	}
	return nil
}

// addDRWatch arms a read/write watch in a debug-register slot of every
// vCPU, where this host's KVM fires data watchpoints.
func (s *Session) addDRWatch(w *Watch) error {
	caps, err := s.VM.WatchCaps()
	if err != nil {
		return err
	}
	if !caps.HWData {
		return fmt.Errorf("%w: rw@ needs data watchpoints in the debug registers, which this host's KVM does not fire (docs/QUIRKS.md #38); w@ watches writes in memory", ErrWatch)
	}
	kind := vmm.HWReadWrite
	w.dr = &drSlot{s: s, bp: vmm.HWBreakpoint{Kind: kind, Addr: w.VA, Len: w.Def.Len}}
	if err := w.dr.take(w); err != nil {
		return err
	}
	if err := s.onOtherThread(func() error { return w.dr.arm(w) }, w.Def.String()); err != nil {
		w.dr.free(w)
		return err
	}
	return nil
}

// fire is a read/write watch's hit: rip is after the access, and nothing
// tells what a write overwrote ($old faults).
func (w *Watch) fire(cpu vmm.CPU, ev vmm.HWBreakEvent, now time.Time) {
	if ev.Kind != vmm.HWReadWrite {
		return
	}
	w.hits.Add(1)
	regs, err := cpu.Regs()
	w.emit(w.env.eventAt(w.Def, ev.CPU, regs, err, now, ev.RIP, func(c *probedef.Context) { c.WatchAddr = w.VA }))
}

// untrap removes the traps of parts [0, n).
func (w *Watch) untrap(n int) error {
	var errs []error
	for _, p := range w.parts[:n] {
		errs = append(errs, w.s.VM.UntrapWrites(p.trap))
	}
	return errors.Join(errs...)
}

// Remove disarms the watch; the pages become plain RAM again, holding
// exactly what the guest wrote.
func (w *Watch) Remove() error {
	if w.dr != nil {
		return w.dr.remove(w)
	}
	s := w.s
	s.watches.armMu.Lock()
	defer s.watches.armMu.Unlock()
	w.removed = true
	if !w.armed {
		return nil
	}
	w.armed = false
	s.watches.mu.Lock()
	s.watches.list = slices.DeleteFunc(s.watches.list, func(x *Watch) bool { return x == w })
	s.watches.mu.Unlock()
	return w.untrap(len(w.parts))
}

type writeHook struct{ s *Session }

// HandleWrite turns a completed store into an event for every watch whose
// bytes it touched.
func (h writeHook) HandleWrite(cpu vmm.CPU, ev vmm.WriteEvent) {
	now := time.Now()
	h.s.watches.mu.Lock()
	var hit []*Watch
	for _, w := range h.s.watches.list {
		if w.touched(ev) {
			hit = append(hit, w)
		}
	}
	h.s.watches.mu.Unlock()
	for _, w := range hit {
		w.hits.Add(1)
		w.emit(w.event(cpu, ev, now))
	}
}

func (w *Watch) touched(ev vmm.WriteEvent) bool {
	for _, p := range w.parts {
		if ev.GPA < p.gpa+uint64(p.n) && p.gpa < ev.GPA+uint64(ev.Size) {
			return true
		}
	}
	return false
}

// old is the watched bytes as they were before the store: memory now,
// with the bytes the store overwrote put back.
func (w *Watch) old(ev vmm.WriteEvent) []byte {
	b := make([]byte, w.Def.Len)
	if err := w.env.k.ReadVirt(w.VA, b); err != nil {
		return nil
	}
	for _, p := range w.parts {
		for i := range p.n {
			if g := p.gpa + uint64(i); g >= ev.GPA && g < ev.GPA+uint64(ev.Size) {
				b[p.off+i] = ev.Old[g-ev.GPA]
			}
		}
	}
	return b
}

// event is ftrace's wprobe event: where the writer is (rip after the
// store, as a debug trap reports it), the task, and the fetch args.
func (w *Watch) event(cpu vmm.CPU, ev vmm.WriteEvent, now time.Time) probedef.Event {
	regs, err := cpu.Regs()
	return w.env.eventAt(w.Def, ev.CPU, regs, err, now, ev.RIP, func(c *probedef.Context) {
		c.WatchAddr, c.WatchOld = w.VA, w.old(ev)
	})
}
