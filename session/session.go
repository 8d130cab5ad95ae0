package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hvprobe/hvprobe/guest"
	"github.com/hvprobe/hvprobe/vmm"
)

// Options describe a guest to boot.
type Options struct {
	Kernel    string // bzImage or vmlinux path
	SystemMap string // its System.map
	Initrd    string // optional
	MemSize   uint64 // default 512 MiB
	CPUs      int    // default 1
	// CmdlineAppend is added after hvprobe's base command line.
	CmdlineAppend string
	// Host selects the KVM workarounds; DetectHost("/sys/module") by default.
	Host *vmm.Host
	// NoKASLR boots the kernel at its link-time addresses (and adds
	// "nokaslr" to the command line).
	NoKASLR bool
	Console io.Writer
	// Notify hears of every change in a probe's state that the session
	// makes on its own (deferred, armed later, failed, retired). It runs
	// on a vCPU thread and must not block.
	Notify func(Notice)
	// FastRecords is the size of each vCPU's ring for exit-less probes
	// (a power of two; DefaultFastRecords when 0).
	FastRecords int
	// Disks are virtio-blk disks (vda, vdb, …).
	Disks []vmm.Disk
	// Image, when set, is the kernel already opened from Kernel and
	// SystemMap (to check probes before boot without opening it twice).
	Image *guest.Kernel
}

// Session is one guest: the VM, its kernel as data, and its console.
type Session struct {
	VM     *vmm.VM
	Kernel *guest.Kernel
	start  time.Time
	// offset is the run time before start: a restored guest's lines and
	// events go on from the snapshot's time.
	offset time.Duration
	opts   Options

	host        vmm.Host
	mux         *hookMux
	attachTried atomic.Bool
	attachMu    sync.Mutex
	attached    *Attached
	attachErr   error
	atAttach    []func(*Attached) error
	attachedCh  chan struct{}
	probes      probeSet
	watches     watchSet
	stealth     stealthSet
	fast        fastSet
	textLogErr  error
	// done ends the session's own goroutines (workers) at Close.
	done      chan struct{}
	closeOnce sync.Once
	workers   sync.WaitGroup
	closeMu   sync.Mutex
	closers   []io.Closer // CloseWith's
	orcOnce   sync.Once   // the image's ORC tables, read at the first need
	orc       *guest.ORC
	orcErr    error
	// consoleDropped is the console loss last reported (NoticeConsoleDropped).
	consoleDropped atomic.Uint64

	mu      sync.Mutex
	subs    []*subscriber
	lines   []Line
	firstAt time.Duration
}

// Line is one console line and when it arrived, relative to Run's start.
type Line struct {
	Text string
	At   time.Duration
}

type subscriber struct {
	match func(string) bool
	ch    chan Line
}

// ErrConsoleTimeout: a console line did not appear in time.
var ErrConsoleTimeout = errors.New("console line did not appear")

// New opens the kernel and its System.map (refusing a map that does not
// belong to the image), and creates the VM. Nothing runs until Run.
func New(o Options) (*Session, error) {
	k := o.Image
	if k == nil {
		var err error
		if k, err = guest.OpenKernel(o.Kernel, o.SystemMap); err != nil {
			return nil, err
		}
	}
	var err error
	var initrd []byte
	if o.Initrd != "" {
		if initrd, err = os.ReadFile(o.Initrd); err != nil {
			return nil, fmt.Errorf("reading initrd: %w", err)
		}
	}
	host, err := o.detectHost()
	if err != nil {
		return nil, err
	}
	extra := []string{o.CmdlineAppend}
	if o.NoKASLR {
		extra = append([]string{"nokaslr"}, extra...)
	}
	s := newSession(o, k, host)
	vm, err := vmm.New(vmm.Config{
		Kernel:        k.Image,
		Initrd:        initrd,
		Cmdline:       host.Cmdline(extra...),
		Host:          host,
		MemSize:       o.MemSize,
		CPUs:          o.CPUs,
		KASLR:         !o.NoKASLR,
		Console:       o.Console,
		OnConsoleLine: s.onLine,
		Symbolize:     s.symbolize,
		Disks:         o.Disks,
	})
	if err != nil {
		return nil, err
	}
	if err := s.setVM(vm); err != nil {
		return nil, err
	}
	s.logTextWrites()
	return s, nil
}

func newSession(o Options, k *guest.Kernel, host vmm.Host) *Session {
	return &Session{Kernel: k, opts: o, host: host, mux: &hookMux{}, attachedCh: make(chan struct{}), done: make(chan struct{})}
}

// setVM adopts vm and installs the hook mux, so that the VM intercepts
// int3 before the guest runs.
func (s *Session) setVM(vm *vmm.VM) error {
	s.VM = vm
	if err := vm.SetDebugHook(s.mux); err != nil {
		vm.Close()
		return err
	}
	return nil
}

func (s *Session) symbolize(a uint64) string {
	return s.Kernel.Symbols.Slid(vmLayoutSlide(s)).FormatAddr(a)
}

func (o Options) detectHost() (vmm.Host, error) {
	if o.Host != nil {
		return *o.Host, nil
	}
	return vmm.DetectHost("/sys/module", "/dev/kvm")
}

func vmLayoutSlide(s *Session) uint64 {
	if s.VM == nil {
		return 0
	}
	return s.VM.Layout().VirtDelta
}

// Run runs the guest until it ends or ctx is done.
func (s *Session) Run(ctx context.Context) vmm.Result {
	s.mu.Lock()
	s.start = time.Now()
	s.mu.Unlock()
	return s.VM.Run(ctx)
}

// CloseWith has Close close c (a control socket, say) after stopping the
// guest and before releasing the VM.
func (s *Session) CloseWith(c io.Closer) {
	s.closeMu.Lock()
	s.closers = append(s.closers, c)
	s.closeMu.Unlock()
}

// Close stops the guest, closes what CloseWith was given (control sockets
// join their connections) and the session's own goroutines, then
// releases the VM.
// Calls still in flight on the VM or its memory from elsewhere finish
// first (vmm.VM.Close); later ones fail with vmm.ErrClosed.
func (s *Session) Close() error {
	s.VM.Stop()
	s.closeMu.Lock()
	closers := s.closers
	s.closers = nil
	s.closeMu.Unlock()
	var errs []error
	for _, c := range closers {
		errs = append(errs, c.Close())
	}
	s.closeOnce.Do(func() { close(s.done) })
	s.workers.Wait()
	errs = append(errs, s.VM.Close())
	return errors.Join(errs...)
}

func (s *Session) onLine(text string) {
	s.maybeAttach()
	s.noteConsoleDropped()
	s.mu.Lock()
	l := Line{Text: text, At: s.sinceLocked(time.Now())}
	if len(s.lines) == 0 {
		s.firstAt = l.At
	}
	s.lines = append(s.lines, l)
	subs := append([]*subscriber(nil), s.subs...)
	s.mu.Unlock()
	for _, sub := range subs {
		if sub.match(text) {
			select {
			case sub.ch <- l:
			default: // a subscriber that stopped reading loses lines, not the guest
			}
		}
	}
}

// noteConsoleDropped tells, once, that console output is being lost (the
// console writer cannot keep up); the total is VM.ConsoleDropped.
func (s *Session) noteConsoleDropped() {
	n := s.VM.ConsoleDropped()
	if n == 0 || !s.consoleDropped.CompareAndSwap(0, n) {
		return
	}
	s.notify(Notice{Kind: NoticeConsoleDropped, Probe: "console", Why: fmt.Sprintf("%d bytes of guest console output dropped so far (the console writer cannot keep up; the guest does not wait for it)", n)})
}

// sinceLocked is t as run time (s.mu held, or s.start already set).
func (s *Session) sinceLocked(t time.Time) time.Duration { return t.Sub(s.start) + s.offset }

// Lines returns every console line so far (a restored guest's include
// those printed before the snapshot).
func (s *Session) Lines() []Line {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Line(nil), s.lines...)
}

// LastLine is the console's latest line, if any.
func (s *Session) LastLine() (Line, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.lines) == 0 {
		return Line{}, false
	}
	return s.lines[len(s.lines)-1], true
}

// Subscribe delivers future console lines for which match is true.
// cancel stops delivery.
func (s *Session) Subscribe(match func(string) bool) (lines <-chan Line, cancel func()) {
	sub := &subscriber{match: match, ch: make(chan Line, 4096)}
	s.mu.Lock()
	s.subs = append(s.subs, sub)
	s.mu.Unlock()
	return sub.ch, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		for i, x := range s.subs {
			if x == sub {
				s.subs = append(s.subs[:i], s.subs[i+1:]...)
				return
			}
		}
	}
}

// WaitLine waits for a future console line containing substr.
func (s *Session) WaitLine(ctx context.Context, substr string) (Line, error) {
	ch, cancel := s.Subscribe(func(l string) bool { return strings.Contains(l, substr) })
	defer cancel()
	return s.waitOn(ctx, ch, substr)
}

// WaitLineSeen is WaitLine that also accepts a line already printed.
func (s *Session) WaitLineSeen(ctx context.Context, substr string) (Line, error) {
	ch, cancel := s.Subscribe(func(l string) bool { return strings.Contains(l, substr) })
	defer cancel()
	for _, l := range s.Lines() {
		if strings.Contains(l.Text, substr) {
			return l, nil
		}
	}
	return s.waitOn(ctx, ch, substr)
}

func (s *Session) waitOn(ctx context.Context, ch <-chan Line, what string) (Line, error) {
	select {
	case l := <-ch:
		return l, nil
	case <-ctx.Done():
		return Line{}, fmt.Errorf("waiting for %q on the console: %w (%v)", what, ErrConsoleTimeout, ctx.Err())
	}
}
