package runner

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hvprobe/hvprobe/session"
	"golang.org/x/sys/unix"
)

// printer serializes event lines from vCPU threads onto one writer without
// making a vCPU wait for the terminal: when its queue is full, or after
// close, a line is dropped and counted, and close reports the count.
type printer struct {
	mu      sync.Mutex
	closed  bool
	dropped uint64
	ch      chan string
	done    chan struct{}
	w       io.Writer
	// dropLine, when set, is close's line for n dropped lines, instead
	// of the message for people.
	dropLine func(n uint64) string
}

func newPrinter(w io.Writer) *printer {
	p := &printer{ch: make(chan string, 65536), done: make(chan struct{}), w: w}
	go func() {
		defer close(p.done)
		bw := bufio.NewWriter(w)
		defer bw.Flush()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		shown := false // a progress line is on the terminal, without newline
		for {
			select {
			case l, ok := <-p.ch:
				if shown {
					bw.WriteString("\r\x1b[K") // the progress line goes
					shown = false
				}
				if !ok {
					return
				}
				if rest, isProgress := strings.CutPrefix(l, progressMark); isProgress {
					bw.WriteString(rest)
					bw.Flush()
					shown = true
					continue
				}
				bw.WriteString(l)
				bw.WriteByte('\n')
			case <-t.C:
				bw.Flush()
			}
		}
	}()
	return p
}

func (p *printer) printf(format string, args ...any) {
	l := fmt.Sprintf(format, args...)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		p.dropped++
		return
	}
	select {
	case p.ch <- l:
	default:
		p.dropped++
	}
}

// drop counts a line that was never made.
func (p *printer) drop() {
	p.mu.Lock()
	p.dropped++
	p.mu.Unlock()
}

// progressMark starts a progress line: written in place of the last
// one, without a newline, and wiped before the next line.
const progressMark = "\x00"

// progress shows s as the one-line status, until the next line.
func (p *printer) progress(s string) { p.printf("%s%s", progressMark, s) }

// close writes what is queued, then the number of lines dropped, if any.
func (p *printer) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	close(p.ch)
	p.mu.Unlock()
	<-p.done
	p.mu.Lock()
	n := p.dropped
	p.mu.Unlock()
	switch {
	case n > 0 && p.dropLine != nil:
		fmt.Fprintln(p.w, p.dropLine(n))
	case n > 0:
		fmt.Fprintf(p.w, "hvprobe: %d event lines dropped (the output could not keep up)\n", n)
	}
}

// forwardInput copies what the user types to the guest's UART until EOF.
func forwardInput(r io.Reader, send func([]byte)) {
	buf := make([]byte, 256)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			send(append([]byte(nil), buf[:n]...))
		}
		if err != nil {
			return
		}
	}
}

// outputTo opens an output flag's destination: "-" is standard output.
func outputTo(path string) (io.Writer, func() error, error) {
	if path == "-" {
		return os.Stdout, func() error { return nil }, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, nil, err
	}
	return f, f.Close, nil
}

// terminalWidth is f's width in columns when f is a terminal.
func terminalWidth(f *os.File) (int, bool) {
	ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
	if err != nil {
		return 0, false
	}
	if ws.Col == 0 {
		return 80, true
	}
	return int(ws.Col), true
}

// showProgress rewrites one status line on stderr every second until ctx
// ends: elapsed time, hits so far and the last console line. It is for a
// terminal whose console output goes to a file; a long stock boot shows
// it is alive.
func showProgress(ctx context.Context, s *session.Session, status *printer, width int) {
	t0 := time.Now()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		line := fmt.Sprintf("hvprobe: %s", time.Since(t0).Round(time.Second))
		if a, err := s.Attached(); err == nil {
			line += fmt.Sprintf(", %d hits", a.Manager.Stats().Hits)
		}
		if l, ok := s.LastLine(); ok {
			line += " | " + strings.Map(func(r rune) rune {
				if r < ' ' {
					return -1
				}
				return r
			}, l.Text)
		}
		if r := []rune(line); len(r) > width-1 {
			line = string(r[:width-1])
		}
		status.progress(line)
	}
}
