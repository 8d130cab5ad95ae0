package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/hvprobe/hvprobe/session"
)

// The mini guest's in-kernel workload (images/mini/hvprobe_wl.c), booted
// with hvprobe_wl=serve, waits on a mailbox: a command string the host
// writes into hvwl_mailbox, then a new sequence number in
// hvwl_mailbox_seq. It runs the command and prints "HVWL: done seq=N".

// ErrWorkload: the workload reported a failure or cannot be reached.
var ErrWorkload = errors.New("workload")

// Report is one workload result line "HVWL: <what> k=v ...".
type Report struct {
	What   string
	Fields map[string]string
}

// Int returns a numeric field.
func (r Report) Int(k string) (int64, error) {
	v, ok := r.Fields[k]
	if !ok {
		return 0, fmt.Errorf("%w: %q report has no field %q", ErrWorkload, r.What, k)
	}
	return strconv.ParseInt(v, 0, 64)
}

var fieldRE = regexp.MustCompile(`(\w+)=("[^"]*"|\S+)`)

// ParseReport parses one "HVWL: ..." line.
func ParseReport(line string) (Report, bool) {
	rest, ok := strings.CutPrefix(line, "HVWL: ")
	if !ok {
		return Report{}, false
	}
	what, _, _ := strings.Cut(rest, " ")
	r := Report{What: what, Fields: map[string]string{}}
	for _, f := range fieldRE.FindAllStringSubmatch(rest, -1) {
		r.Fields[f[1]] = strings.Trim(f[2], `"`)
	}
	return r, true
}

// Mailbox is the way to a session's workload. One Mailbox serves one
// session: its scenarios run one at a time.
type Mailbox struct {
	s  *session.Session
	mu sync.Mutex
}

// NewMailbox is the mailbox of s's guest.
func NewMailbox(s *session.Session) *Mailbox { return &Mailbox{s: s} }

// Scenario runs cmd through the workload's mailbox and returns the
// workload's "HVWL:" lines up to and including "HVWL: done seq=N". The
// engine must be attached (the mailbox is found through the running
// kernel's symbols).
func (m *Mailbox) Scenario(ctx context.Context, cmd string) ([]string, error) {
	s := m.s
	a, err := s.Attached()
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	k := a.Kernel
	box, err := k.Resolve("hvwl_mailbox", 0)
	if err != nil {
		return nil, fmt.Errorf("%w: no mailbox in this kernel: %v", ErrWorkload, err)
	}
	seqVA, err := k.Resolve("hvwl_mailbox_seq", 0)
	if err != nil {
		return nil, fmt.Errorf("%w: no mailbox in this kernel: %v", ErrWorkload, err)
	}
	var b [8]byte
	if err := k.ReadVirt(seqVA, b[:]); err != nil {
		return nil, err
	}
	seq := binary.LittleEndian.Uint64(b[:]) + 1
	done := fmt.Sprintf("HVWL: done seq=%d", seq)
	lines, cancel := s.Subscribe(func(l string) bool { return strings.Contains(l, "HVWL: ") })
	defer cancel()
	if err := k.WriteVirt(box, append([]byte(cmd), 0)); err != nil {
		return nil, fmt.Errorf("writing the mailbox: %w", err)
	}
	binary.LittleEndian.PutUint64(b[:], seq)
	if err := k.WriteVirt(seqVA, b[:]); err != nil {
		return nil, fmt.Errorf("writing the mailbox sequence: %w", err)
	}
	var out []string
	for {
		select {
		case l := <-lines:
			text := l.Text[strings.Index(l.Text, "HVWL: "):]
			out = append(out, text)
			if text != done {
				continue
			}
			for _, o := range out {
				if strings.HasPrefix(o, "HVWL: error") || strings.Contains(o, " fail ") {
					return out, fmt.Errorf("%w: running %q: %s", ErrWorkload, cmd, o)
				}
			}
			return out, nil
		case <-ctx.Done():
			return out, fmt.Errorf("%w: %q did not finish: %v (got %v)", ErrWorkload, cmd, ctx.Err(), out)
		}
	}
}

// FindReport returns the first report named what among lines.
func FindReport(lines []string, what string) (Report, error) {
	for _, l := range lines {
		if r, ok := ParseReport(l); ok && r.What == what {
			return r, nil
		}
	}
	return Report{}, fmt.Errorf("%w: no %q report in %v", ErrWorkload, what, lines)
}
