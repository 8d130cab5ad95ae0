package kprobes

import (
	"errors"
	"fmt"
)

// ErrBusy: the engine holds guest state that a snapshot cannot carry.
var ErrBusy = errors.New("probe engine busy")

// Quiescent reports why the engine's state could not be left behind in a
// snapshot: probes are registered (their int3s are in guest text), a vCPU
// is mid-step in a slot, or a kretprobe instance is live (a return
// address on a guest stack points at the trampoline). Call it with every
// vCPU stopped; nil means guest memory holds nothing the next engine
// would have to know about, but the slots already handed out.
func (m *Manager) Quiescent() error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if n := len(m.members); n > 0 {
		return fmt.Errorf("%w: %d probes registered; unregister them first", ErrBusy, n)
	}
	if m.fast != nil && len(m.fast.sites) > 0 {
		return fmt.Errorf("%w: %d exit-less probes registered; unregister them first", ErrBusy, len(m.fast.sites))
	}
	for i, st := range m.cpus {
		if st.status != statusIdle {
			return fmt.Errorf("%w: vCPU %d is single-stepping a probed instruction", ErrBusy, i)
		}
	}
	m.retMu.Lock()
	defer m.retMu.Unlock()
	live := 0
	for _, l := range m.rets.live {
		live += len(l)
	}
	if live > 0 {
		return fmt.Errorf("%w: %d kretprobe instances live (calls not yet returned)", ErrBusy, live)
	}
	return nil
}

// SlotsUsed is how many bytes at the start of the slot area were ever
// handed out. A guest task may still be inside a boosted slot, so an
// engine attached to the same guest later (after a restore) starts above.
func (m *Manager) SlotsUsed() uint64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.slots.next * slotSize
}
