package session

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/hvprobe/hvprobe/guest"
	"github.com/hvprobe/hvprobe/kprobes"
	"github.com/hvprobe/hvprobe/vmm"
)

// ErrSnapshotMismatch: a snapshot belongs to another kernel, System.map
// or kind of host.
var ErrSnapshotMismatch = errors.New("snapshot does not match")

// snapshotMeta is the session's part of a snapshot file. Probes are not
// part of it: a snapshot is taken with none registered (kprobes.Manager
// Quiescent), and probes are registered anew after a restore.
type snapshotMeta struct {
	Kernel        fileID
	SystemMap     fileID
	Int3Reflected bool
	Attached      bool
	Slots         kprobes.SlotArea // the mapped slot area
	SlotsUsed     uint64           // bytes of it ever handed out
	// Console is every line printed before the snapshot, and At the run
	// time it was taken: a restored session goes on from there.
	Console []Line
	At      time.Duration
}

type fileID struct {
	Path   string
	SHA256 string
}

func identify(path string) (fileID, error) {
	f, err := os.Open(path)
	if err != nil {
		return fileID{}, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return fileID{}, fmt.Errorf("reading %s: %w", path, err)
	}
	return fileID{Path: path, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// Snapshot writes the running guest to path: every vCPU is stopped for
// the time it takes, then runs on. It is refused, and nothing is written,
// while the probe engine holds guest state (kprobes.ErrBusy).
func (s *Session) Snapshot(path string) (vmm.SnapshotInfo, error) {
	kid, err := identify(s.opts.Kernel)
	if err != nil {
		return vmm.SnapshotInfo{}, err
	}
	mid, err := identify(s.opts.SystemMap)
	if err != nil {
		return vmm.SnapshotInfo{}, err
	}
	return s.VM.Snapshot(path, func() (json.RawMessage, error) {
		m := snapshotMeta{Kernel: kid, SystemMap: mid, Int3Reflected: s.host.Int3Reflected}
		s.mu.Lock()
		m.Console, m.At = append([]Line(nil), s.lines...), s.sinceLocked(time.Now())
		s.mu.Unlock()
		s.attachMu.Lock()
		a := s.attached
		s.attachMu.Unlock()
		if a != nil {
			if err := a.Manager.Quiescent(); err != nil {
				return nil, err
			}
			m.Attached, m.Slots, m.SlotsUsed = true, a.Slots, a.Manager.SlotsUsed()
		}
		return json.Marshal(m)
	})
}

// Restore creates a session from a snapshot of o.Kernel with o.SystemMap
// (o's machine shape and command line are the snapshot's and must be
// left zero). It refuses a snapshot of any other kernel or map before
// creating a VM. When the engine had attached, it is attached again at
// once, with no probes; the guest continues on Run.
func Restore(o Options, path string) (*Session, error) {
	if o.MemSize != 0 || o.CPUs != 0 || o.CmdlineAppend != "" || o.NoKASLR {
		return nil, fmt.Errorf("%w: memory, vCPUs, command line and KASLR are the snapshot's own", vmm.ErrBadConfig)
	}
	raw, err := vmm.SnapshotMeta(path)
	if err != nil {
		return nil, err
	}
	var m snapshotMeta
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("%w: %s: session state: %v", vmm.ErrBadSnapshot, path, err)
	}
	for _, c := range []struct {
		what string
		have string
		id   fileID
	}{{"kernel", o.Kernel, m.Kernel}, {"System.map", o.SystemMap, m.SystemMap}} {
		got, err := identify(c.have)
		if err != nil {
			return nil, err
		}
		if got.SHA256 != c.id.SHA256 {
			return nil, fmt.Errorf("%w: %s was taken with %s %s (sha256 %.12s), not %s (sha256 %.12s)",
				ErrSnapshotMismatch, path, c.what, c.id.Path, c.id.SHA256, c.have, got.SHA256)
		}
	}
	k := o.Image
	if k == nil {
		if k, err = guest.OpenKernel(o.Kernel, o.SystemMap); err != nil {
			return nil, err
		}
	}
	host, err := o.detectHost()
	if err != nil {
		return nil, err
	}
	if host.Int3Reflected != m.Int3Reflected {
		return nil, fmt.Errorf("%w: %s was taken on a host where int3 is %s, this one %s it",
			ErrSnapshotMismatch, path, reflectedWord(m.Int3Reflected), interceptVerb(host.Int3Reflected))
	}
	s := newSession(o, k, host)
	s.lines, s.offset = m.Console, m.At
	if len(s.lines) > 0 {
		s.firstAt = s.lines[0].At
	}
	vm, _, err := vmm.Restore(vmm.RestoreConfig{
		Path: path, Console: o.Console, OnConsoleLine: s.onLine, Symbolize: s.symbolize,
	})
	if err != nil {
		return nil, err
	}
	if err := s.setVM(vm); err != nil {
		return nil, err
	}
	s.logTextWrites()
	if !m.Attached {
		return s, nil // attaches on a console line, as during a boot
	}
	s.attachTried.Store(true)
	rk, err := s.runningKernel()
	if err == nil {
		free := m.Slots
		free.VA += m.SlotsUsed
		free.GPA += m.SlotsUsed
		free.Size -= m.SlotsUsed
		err = s.startEngine(rk, m.Slots, free)
	}
	if err != nil {
		vm.Close()
		return nil, err
	}
	return s, nil
}

func reflectedWord(r bool) string {
	if r {
		return "reflected to the guest"
	}
	return "intercepted"
}

func interceptVerb(r bool) string {
	if r {
		return "reflects"
	}
	return "intercepts"
}
