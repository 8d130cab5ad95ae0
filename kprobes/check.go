package kprobes

import (
	"errors"
	"fmt"
	"strings"
)

// Verdict is how the engine would take a probe at one address.
type Verdict struct {
	Addr   uint64
	Symbol string
	Offset uint64
	Insn   string // the instruction: GNU syntax and bytes
	Len    int
	// Exec is how a hit executes it without a post handler: "emulated"
	// (by the host), "boosted" (from a slot, no step) or "stepped";
	// ExecPost with one: "emulated" or "stepped".
	Exec, ExecPost string
}

// Check makes every check of Register that depends only on the kernel's
// text — kernel text, a symbol to decode from, an instruction boundary,
// an instruction the engine can execute, no text the kernel patches
// itself — without touching the guest. k may be the kernel image before
// boot: this is how a probe set is refused before anything runs. name
// labels errors, as in Register.
func Check(k Kernel, addr uint64, name string) (Verdict, error) {
	read := func(va uint64, n int) ([]byte, error) { return readKernelText(k, va, n) }
	in, sym, off, err := check(k, read, addr, name)
	if err != nil {
		return Verdict{}, err
	}
	v := Verdict{Addr: addr, Symbol: sym, Offset: off, Insn: in.String(), Len: len(in.raw), Exec: "stepped", ExecPost: "stepped"}
	// ExecPost assumes the running kernel's view is an AtomicVirt (k, an
	// image before boot, need not be) and cannot foresee what only the
	// registers decide (an unmapped operand, a long rep).
	if in.emul != emulNone {
		v.ExecPost = "emulated"
	}
	switch {
	case in.emulated(false):
		v.Exec = "emulated"
	case in.boostable:
		v.Exec = "boosted"
	}
	return v, nil
}

// CheckCode judges the instruction at the start of code alone, as Check
// judges the one at a probe's address: it returns the instruction (GNU
// syntax and bytes), or an error whose kind is ErrUndecodable or
// ErrUnsafeInstruction (a *ReservedError). It is how text that does not exist yet — what
// the kernel will patch in at boot — is judged before boot.
func CheckCode(code []byte) (string, error) {
	in, r := analyze(code)
	if r != nil {
		return "", Reserved(r.kind, "%s", r.reason)
	}
	return in.String(), nil
}

// CheckEntry is Check for jprobes and kretprobes, which go on a
// function's first instruction.
func CheckEntry(k Kernel, addr uint64, name string) (Verdict, error) {
	if err := checkEntry(k, addr, name); err != nil {
		return Verdict{}, err
	}
	return Check(k, addr, name)
}

// textReader reads n bytes of kernel text at va as the guest kernel wrote
// them (the engine's own int3s replaced by the originals).
type textReader func(va uint64, n int) ([]byte, error)

// check is the part of arming that decides whether addr can be probed.
func check(k Kernel, read textReader, addr uint64, name string) (*insn, string, uint64, error) {
	if !k.InText(addr) {
		// Text discarded at boot is not text, but saying which is clearer.
		if err := k.Reserved(addr, 1); err != nil {
			return nil, "", 0, probeErr(name, ErrNotInText, "%#x is not kernel text that runs: %v", addr, err)
		}
		return nil, "", 0, probeErr(name, ErrNotInText, "%#x is not in kernel text: it is %s", addr, k.Describe(addr))
	}
	sym, off, _, ok := k.SymbolAt(addr)
	if !ok {
		return nil, "", 0, probeErr(name, ErrNotBoundary, "no function contains %#x, so its instruction boundaries cannot be checked: it is %s", addr, k.Describe(addr))
	}
	if err := checkBoundary(read, addr, sym, off, name); err != nil {
		return nil, "", 0, err
	}
	code, err := read(addr, maxInsnLen)
	if err != nil {
		return nil, "", 0, fmt.Errorf("registering %s: reading the instruction: %w", name, err)
	}
	in, r := analyze(code)
	if r != nil {
		return nil, "", 0, probeErr(name, r.kind, "%s", r.reason)
	}
	if err := k.Reserved(addr, uint64(len(in.raw))); err != nil {
		return nil, "", 0, probeErr(name, kindOf(err), "%s: %v", in, err)
	}
	// The kernel finds an exception-table entry by the faulting rip, which
	// in a boosted slot is the slot's: such an instruction is stepped, so
	// that a fault is redirected to addr (fixFaultFrame).
	if k.HasFixup(addr) {
		in.boostable = false
	}
	return in, sym, off, nil
}

// kindOf keeps a Reserved error's sentinel for the ProbeError.
func kindOf(err error) error {
	for _, k := range []error{ErrNotYetPatched, ErrPatchedText, ErrUndecodable, ErrUnsafeInstruction} {
		if errors.Is(err, k) {
			return k
		}
	}
	return ErrPatchedText
}

// checkBoundary decodes the symbol from its start up to addr.
func checkBoundary(read textReader, addr uint64, sym string, off uint64, name string) error {
	if off == 0 {
		return nil
	}
	start := addr - off
	code, err := read(start, int(off)+maxInsnLen)
	if err != nil {
		return fmt.Errorf("registering %s: reading %s: %w", name, sym, err)
	}
	var starts []uint64
	pos := uint64(0)
	for pos < off {
		starts = append(starts, pos)
		inst, ok := decode(code[pos:])
		if !ok {
			return probeErr(name, ErrNotBoundary, "cannot check the instruction boundary: %s+%#x does not decode (% x)",
				sym, pos, code[pos:min(uint64(len(code)), pos+maxInsnLen)])
		}
		pos += uint64(inst.Len)
	}
	if pos == off {
		return nil
	}
	starts = append(starts, pos)
	// Name the starts around the offset: two before, one after.
	shown := starts[max(0, len(starts)-3):]
	parts := make([]string, len(shown))
	for i, s := range shown {
		parts[i] = fmt.Sprintf("+%#x", s)
	}
	return probeErr(name, ErrNotBoundary, "not on an instruction boundary (instructions start at %s)", strings.Join(parts, ", "))
}

// readKernelText reads n bytes at va, settling for the bytes up to the end
// of va's page when the read runs off the end of mapped text.
func readKernelText(k Kernel, va uint64, n int) ([]byte, error) {
	b := make([]byte, n)
	if err := k.ReadVirt(va, b); err != nil {
		b = b[:min(uint64(n), pageSize-va%pageSize)]
		if err2 := k.ReadVirt(va, b); err2 != nil {
			return nil, err
		}
	}
	return b, nil
}

// checkEntry insists on a function's first instruction.
func checkEntry(k Kernel, addr uint64, name string) error {
	sym, off, _, ok := k.SymbolAt(addr)
	if ok && off != 0 {
		return probeErr(name, ErrBadProbe, "not a function entry (offset %#x); entry probes go at offset 0", off)
	}
	if k.InEntryText(addr) {
		// At an exception or interrupt entry %rsp points at the CPU's
		// frame, not a return address: a kretprobe would overwrite the
		// interrupted rip with its trampoline.
		return probeErr(name, ErrUnsafeContext, "%s is in .entry.text, which exceptions, interrupts and system calls enter without a call: there may be no return address at %%rsp for a return probe or a jprobe (a p: line works there)", sym)
	}
	return nil
}
