package kprobes

import (
	"time"

	"github.com/hvprobe/hvprobe/vmm"
)

// Context is what a handler sees of one probe hit. It is valid only during
// the handler call.
type Context struct {
	CPU    int       // the vCPU that hit the probe
	Addr   uint64    // the probed address
	Symbol string    // symbol containing Addr
	Offset uint64    // Addr's offset into Symbol
	Time   time.Time // host time of the hit (the exit)

	regs *vmm.Regs
	k    Kernel
	cpu  vmm.CPU
}

// Regs is the vCPU's register file for the handler to read and modify; see
// Kprobe for when modifications take effect.
func (c *Context) Regs() *vmm.Regs { return c.regs }

// Sregs reads the vCPU's special registers: CR3 holds the page tables of
// the task that hit the probe, which user-space fetches walk.
func (c *Context) Sregs() (vmm.Sregs, error) { return c.cpu.Sregs() }

// ReadVirt reads guest kernel memory.
func (c *Context) ReadVirt(va uint64, p []byte) error { return c.k.ReadVirt(va, p) }

// WriteVirt writes guest kernel memory.
func (c *Context) WriteVirt(va uint64, p []byte) error { return c.k.WriteVirt(va, p) }
