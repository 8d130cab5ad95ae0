package session

import (
	"fmt"
	"time"

	"github.com/hvprobe/hvprobe/kprobes"
)

// writePoll is how often the guest's writes to kernel text are looked at.
// A probe whose instruction the guest rewrote is re-armed within this
// much time; hits in between run the old slot (see Recheck).
const writePoll = 20 * time.Millisecond

// logTextWrites has KVM log the guest's writes to its kernel text (_text to
// _etext, physically contiguous), so that probes follow the kernel's own
// patches. It runs before the vCPUs do; WriteWatch tells whether it works.
func (s *Session) logTextWrites() {
	l := s.VM.Layout()
	text := s.Kernel.Symbols.Slid(l.VirtDelta)
	start, err1 := text.Lookup("_text")
	end, err2 := text.Lookup("_etext")
	if err1 != nil || err2 != nil {
		s.textLogErr = fmt.Errorf("finding kernel text: no _text/_etext in the System.map")
		return
	}
	lo := kernelGPA(l, start.Addr) &^ 0xfff
	hi := (kernelGPA(l, end.Addr) + 0xfff) &^ 0xfff
	if err := s.VM.LogDirty(lo, hi); err != nil {
		s.textLogErr = fmt.Errorf("watching the guest's writes to its text: %w", err)
	}
}

// FollowText is nil when the guest's writes to its own text are detected
// (and probes there re-checked); otherwise it says why they are not.
func (s *Session) FollowText() error { return s.textLogErr }

// followWrites hands the text pages the guest wrote to the engine until
// the session closes, and reports what the engine did about them.
func (s *Session) followWrites(a *Attached) {
	defer s.workers.Done()
	t := time.NewTicker(writePoll)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		pages, err := s.VM.DirtyPages()
		if err != nil {
			s.notify(Notice{Kind: NoticeFailed, Probe: "write watch", Err: err})
			return
		}
		if len(pages) == 0 {
			continue
		}
		for _, c := range a.Manager.Recheck(pages) {
			s.textChanged(a, c)
		}
	}
}

// textChanged forgets the probes the engine retired and says what
// happened to each probe at the rewritten address.
func (s *Session) textChanged(a *Attached, c kprobes.TextChange) {
	if !c.Rearmed {
		s.probes.mu.Lock()
		var keep []*Probe
		for _, p := range s.probes.armed {
			if !p.owns(c.Owners) {
				keep = append(keep, p)
			}
		}
		s.probes.armed = keep
		s.probes.mu.Unlock()
	}
	for _, name := range c.Probes {
		n := Notice{Kind: NoticeRearmed, Probe: name, Why: fmt.Sprintf("the guest rewrote %s as %s", c.Old, c.New)}
		if !c.Rearmed {
			n = Notice{Kind: NoticeRetired, Probe: name, Why: fmt.Sprintf("the guest rewrote %s", c.Old), Err: c.Err}
		}
		s.notify(n)
	}
}
