package vmm

import (
	"io"
	"sync"
	"sync/atomic"
)

// asyncWriter decouples the guest console from wherever it is written: a
// vCPU thread printing a character must never wait on a slow terminal,
// pipe or network file system (a stalled write was seen to freeze a
// guest mid-line). Writes are queued to one goroutine; when the queue is
// full the bytes are dropped and counted, so the guest keeps running.
// Console lines for OnConsoleLine are split before this point and never
// dropped.
type asyncWriter struct {
	ch      chan []byte
	dropped atomic.Uint64
	wg      sync.WaitGroup
}

const asyncQueue = 1 << 14

func newAsyncWriter(w io.Writer) *asyncWriter {
	a := &asyncWriter{ch: make(chan []byte, asyncQueue)}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		for b := range a.ch {
			w.Write(b) // a console sink that fails loses output, not the guest
		}
	}()
	return a
}

func (a *asyncWriter) Write(p []byte) (int, error) {
	select {
	case a.ch <- append([]byte(nil), p...):
	default:
		a.dropped.Add(uint64(len(p)))
	}
	return len(p), nil
}

// Close flushes what is queued and stops the writer goroutine.
func (a *asyncWriter) Close() error {
	close(a.ch)
	a.wg.Wait()
	return nil
}
