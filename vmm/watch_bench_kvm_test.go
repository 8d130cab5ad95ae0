//go:build kvm

package vmm

import (
	"testing"
)

// benchExits is how many exits one round of each loop makes.
const benchExits = 1000

// Real-mode loops of benchExits iterations at tinyCode (DS base tinyWatch).
var (
	// benchPortLoop: a bare port-I/O exit per iteration (port 0xe2 has no
	// device): the floor an exit costs on this host.
	benchPortLoop = []byte{
		0xb9, benchExits & 0xff, benchExits >> 8, // mov $N, %cx
		0xe6, 0xe2, // 1: out %al, $0xe2
		0xe2, 0xfc, // loop 1b
		0xe6, tinyPort, 0xf4,
	}
	// benchStoreLoop: a one-byte store to DS:0x100 per iteration.
	benchStoreLoop = []byte{
		0xb9, benchExits & 0xff, benchExits >> 8, // mov $N, %cx
		0xfe, 0x06, 0x00, 0x01, // 1: incb 0x100
		0xe2, 0xfa, // loop 1b
		0xe6, tinyPort, 0xf4,
	}
	// benchExecLoop: a nop per iteration (the execute breakpoint's target).
	benchExecLoop = []byte{
		0xb9, benchExits & 0xff, benchExits >> 8, // mov $N, %cx
		0x90,       // 1: nop  (+3)
		0xe2, 0xfd, // loop 1b
		0xe6, tinyPort, 0xf4,
	}
)

type nopWriteHook struct{ n int }

func (h *nopWriteHook) HandleWrite(CPU, WriteEvent) { h.n++ }

type nopHWHook struct{ n int }

func (h *nopHWHook) HandleHWBreak(CPU, HWBreakEvent) { h.n++ }

// BenchmarkWatchExit is the cost of one watch event against a bare
// port-I/O exit, through the VMM's exit handler: go test -run - -bench
// WatchExit ./vmm/. ns/exit is per guest iteration: portio is one bare
// exit; writetrap one store exit (completed by the VMM, reported to a
// hook: KVM_GET_REGS included); untrapped the same loop with no trap (no
// exit: the store's own cost); hwexec one execute breakpoint (its exit
// plus the step-over's).
func BenchmarkWatchExit(b *testing.B) {
	for _, c := range []struct {
		name string
		code []byte
		arm  func(b *testing.B, vm *VM)
	}{
		{"portio", benchPortLoop, nil},
		{"untrapped", benchStoreLoop, nil},
		{"writetrap", benchStoreLoop, func(b *testing.B, vm *VM) {
			vm.SetWriteHook(&nopWriteHook{})
			if _, err := vm.TrapWrites(tinyWatch+0x100, 1); err != nil {
				b.Fatal(err)
			}
		}},
		{"hwexec", benchExecLoop, func(b *testing.B, vm *VM) {
			vm.SetHWBreakHook(&nopHWHook{})
			if err := vm.SetHWBreakpoint(0, 0, HWBreakpoint{Kind: HWExecute, Addr: tinyCode + 3}); err != nil {
				b.Fatal(err)
			}
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			vm := newTinyVM(b, tinyMem)
			copy(vm.mem.b[tinyCode:], c.code)
			if c.arm != nil {
				c.arm(b, vm)
			}
			for b.Loop() {
				runHandled(b, vm, tinyCode)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*benchExits), "ns/exit")
		})
	}
}
