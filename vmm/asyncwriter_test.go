package vmm

import (
	"bytes"
	"sync"
	"testing"
)

type blockingWriter struct {
	mu      sync.Mutex
	b       bytes.Buffer
	release chan struct{}
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	<-w.release
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// A stuck console sink must not block the writer (the vCPU); output is
// delivered in order once the sink moves, or dropped past the queue.
func TestAsyncWriterNeverBlocks(t *testing.T) {
	w := &blockingWriter{release: make(chan struct{})}
	a := newAsyncWriter(w)
	for i := 0; i < asyncQueue+100; i++ {
		a.Write([]byte{'x'}) // would hang if Write waited on the sink
	}
	if a.dropped.Load() == 0 {
		t.Fatal("nothing dropped with a stuck sink and a full queue")
	}
	close(w.release)
	a.Close()
	if got := uint64(w.b.Len()) + a.dropped.Load(); got != asyncQueue+100 {
		t.Fatalf("%d bytes written + dropped, want %d", got, asyncQueue+100)
	}
}
