package vmm

import "sync/atomic"

// ExitStats counts exits by kind across all vCPUs.
type ExitStats struct {
	Total      atomic.Uint64
	IO         atomic.Uint64
	MMIO       atomic.Uint64
	Debug      atomic.Uint64
	Emulation  atomic.Uint64
	Breakpoint atomic.Uint64 // int3s that arrived as emulation failures
	Assists    atomic.Uint64 // instructions completed by the assists
}
