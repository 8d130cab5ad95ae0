package runner

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
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
}

func newPrinter(w io.Writer) *printer {
	p := &printer{ch: make(chan string, 65536), done: make(chan struct{}), w: w}
	go func() {
		defer close(p.done)
		bw := bufio.NewWriter(w)
		defer bw.Flush()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case l, ok := <-p.ch:
				if !ok {
					return
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
	if n > 0 {
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
