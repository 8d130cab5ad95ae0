package vmm

import (
	"errors"
	"sync/atomic"
	"time"
)

// ErrClosed: the VM (or its Memory) has been closed; its fds and RAM are
// gone.
var ErrClosed = errors.New("VM closed")

// lifetime guards a resource that Close releases while other goroutines
// may still use it. Each use is enter/exit; close refuses new uses and
// waits for those in flight. Uses may nest (a Snapshot calling Do), which
// a RWMutex with a waiting writer would deadlock.
type lifetime struct {
	n atomic.Int64 // uses in flight, plus lifeClosed once closed
}

const lifeClosed = 1 << 62

// enter starts a use; false once closed.
func (l *lifetime) enter() bool {
	if l.n.Add(1)&lifeClosed != 0 {
		l.n.Add(-1)
		return false
	}
	return true
}

func (l *lifetime) exit() { l.n.Add(-1) }

// close refuses new uses and waits until none is in flight. It reports
// false if already closed (the first caller does the releasing).
func (l *lifetime) close() bool {
	for {
		old := l.n.Load()
		if old&lifeClosed != 0 {
			return false
		}
		if l.n.CompareAndSwap(old, old|lifeClosed) {
			break
		}
	}
	// Uses are short (a copy, one ioctl request); polling keeps enter/exit
	// two atomic adds on the vCPU threads' hot path.
	for l.n.Load() != lifeClosed {
		time.Sleep(100 * time.Microsecond)
	}
	return true
}

func (l *lifetime) closed() bool { return l.n.Load()&lifeClosed != 0 }
