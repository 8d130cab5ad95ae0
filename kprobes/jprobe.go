package kprobes

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Jprobe runs Entry at a function's entry with the function's arguments
// at hand (JprobeContext.Arg).
//
// Guest state is guaranteed unchanged by Entry, whatever it writes through
// its context: the registers and the 64 bytes above the stack pointer (the
// seeds' MIN_STACK_SIZE argument area; fewer when the page ends sooner and
// the next one is unreadable) are snapshotted before Entry and restored
// after it if they differ. Other memory Entry writes stays written, as in
// the seeds. Several jprobes, kprobes and kretprobes may share the address.
//
// A Jprobe must not be copied or modified while registered.
type Jprobe struct {
	Symbol string
	Addr   uint64 // the function's entry; set by RegisterJprobe
	Entry  func(*JprobeContext)

	c counters
}

// Hits counts entries of the probed function.
func (jp *Jprobe) Hits() uint64 { return jp.c.hits.Load() }

// NMissed counts entries Entry did not see because the vCPU was inside
// another probe hit.
func (jp *Jprobe) NMissed() uint64 { return jp.c.nmissed.Load() }

// JprobeContext is the Context of a jprobe hit, at the function's first
// instruction.
type JprobeContext struct {
	*Context
}

// Arg returns the function's argument i (from 0) of integer class per the
// x86-64 SysV ABI: registers rdi, rsi, rdx, rcx, r8, r9, then the stack
// above the return address.
func (j *JprobeContext) Arg(i int) (uint64, error) {
	if i < 0 {
		return 0, fmt.Errorf("argument %d: %w", i, ErrBadProbe)
	}
	v, stack, inReg := j.regs.Arg(i)
	if inReg {
		return v, nil
	}
	v, err := j.ReadU64(stack)
	if err != nil {
		return 0, fmt.Errorf("reading argument %d: %w", i, err)
	}
	return v, nil
}

// ReadU64 reads one little-endian 64-bit word of guest kernel memory.
func (j *JprobeContext) ReadU64(va uint64) (uint64, error) {
	var b [8]byte
	if err := j.ReadVirt(va, b[:]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// ReadString reads a NUL-terminated string of at most maxLen bytes.
func (j *JprobeContext) ReadString(va uint64, maxLen int) (string, error) {
	var out []byte
	var chunk [64]byte
	for len(out) < maxLen {
		// Chunks never cross a page, so a string ending just before an
		// unmapped page reads fine.
		n := min(len(chunk), maxLen-len(out), int(pageSize-(va%pageSize)))
		if err := j.ReadVirt(va, chunk[:n]); err != nil {
			return string(out), fmt.Errorf("reading string at %#x: %w", va, err)
		}
		if i := bytes.IndexByte(chunk[:n], 0); i >= 0 {
			return string(append(out, chunk[:i]...)), nil
		}
		out = append(out, chunk[:n]...)
		va += uint64(n)
	}
	return string(out), nil
}

// RegisterJprobe arms jp at its function's entry (offset 0 only). On error
// nothing has changed.
func (m *Manager) RegisterJprobe(jp *Jprobe) error {
	addr, name, err := m.resolve(jp.Symbol, 0, jp.Addr)
	if err != nil {
		return err
	}
	if jp.Entry == nil {
		return probeErr(name, ErrBadProbe, "jprobe without an Entry handler")
	}
	if err := checkEntry(m.k, addr, name); err != nil {
		return err
	}
	mb := &member{kind: "jprobe", owner: jp, name: name, c: &jp.c,
		pre: func(ctx *Context) bool { return m.jprobeEntry(jp, ctx) }}
	prev := jp.Addr
	jp.Addr = addr
	if err := m.add(mb, addr); err != nil {
		jp.Addr = prev
		return err
	}
	return nil
}

// UnregisterJprobe removes jp.
func (m *Manager) UnregisterJprobe(jp *Jprobe) error { return m.remove(jp) }

// jprobeEntry runs jp.Entry between a snapshot and a restore of the
// registers and the argument area (the seeds' setjmp_pre_handler and
// longjmp_break_handler, without leaving the host).
func (m *Manager) jprobeEntry(jp *Jprobe, ctx *Context) bool {
	saved := *ctx.regs
	rsp := saved.RSP
	stack := make([]byte, stackSnap)
	if m.k.ReadVirt(rsp, stack) != nil {
		stack = stack[:min(stackSnap, pageSize-rsp%pageSize)]
		if m.k.ReadVirt(rsp, stack) != nil {
			stack = nil
		}
	}
	jp.Entry(&JprobeContext{ctx})
	restored := false
	if *ctx.regs != saved {
		*ctx.regs = saved
		restored = true
	}
	if stack != nil {
		now := make([]byte, len(stack))
		if m.k.ReadVirt(rsp, now) != nil || !bytes.Equal(now, stack) {
			if err := m.k.WriteVirt(rsp, stack); err != nil {
				m.noteErr(fmt.Errorf("jprobe at %#x: restoring the stack at %#x: %w", ctx.Addr, rsp, err))
			}
			restored = true
		}
	}
	if restored {
		m.st.jprobeRestores.Add(1)
	}
	return false
}
