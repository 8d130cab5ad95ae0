package probedef

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/hvprobe/hvprobe/vmm"
)

// Memory reads guest-virtual memory as the stopped vCPU sees it. Any error
// is taken as a fault at that address.
type Memory interface {
	ReadVirt(va uint64, p []byte) error
}

// Symbols is the guest kernel's symbol table, with KASLR applied.
type Symbols interface {
	Address(name string) (uint64, error)
	// Format renders an address as %pS does: "sym+0x1a/0x200".
	Format(addr uint64) string
}

// Task gives the current task of the stopped vCPU.
type Task interface {
	Comm() (string, error)
}

// Context is what Evaluate reads from one stopped vCPU at a probe hit.
// Precondition: the vCPU stays stopped while Evaluate runs.
type Context struct {
	// Regs are the registers at the hit: for p and j probes at the probed
	// instruction, for return probes at the return (RAX is $retval).
	Regs vmm.Regs
	// Entry are the registers at function entry, which return probes need
	// for $argN and parameter names; nil otherwise.
	Entry *vmm.Regs
	// CS and SS are the selectors %cs and %ss read; vmm.Regs has no
	// segment registers.
	CS, SS uint16
	Mem    Memory
	Syms   Symbols
	Task   Task
	// WatchAddr and WatchOld are a w event's: the watched address and,
	// for a write, the Len bytes there before it.
	WatchAddr uint64
	WatchOld  []byte
}

// Value is one evaluated argument.
type Value struct {
	Name string
	Type Type
	// U64 holds the stored bits zero-extended: the integer for u/x/char
	// and bitfields, the address for symbol and symstr.
	U64 uint64
	// S64 is U64 sign-extended from the type's size, for s types.
	S64 int64
	// Str is the text of string, ustring and symstr values, and the
	// "sym+off/size" rendering of symbol values.
	Str string
	// Fault is set when guest memory (or $comm) could not be read; the
	// value fields are then zero. ftrace prints "(fault)" for strings.
	Fault bool
	// Elems are the elements of an array type, each with Type.Array 0.
	Elems []Value
}

// errFault marks a guest memory fault, which ends up in Value.Fault
// rather than failing the event.
var errFault = errors.New("guest memory fault")

// Evaluate computes def's arguments against a stopped guest. Faults are
// per-value (Value.Fault); errors mean the definition cannot be evaluated
// in ctx at all: unresolved parameters (ErrUnresolved), a return probe
// without entry registers (ErrNoEntryRegs), a missing context piece
// (ErrMissingContext), or a symbol the table does not know.
func Evaluate(def *Def, ctx *Context) ([]Value, error) {
	if def.Kind == Delete {
		return nil, ErrNotProbe
	}
	e := &evaluator{d: def, c: ctx}
	vals := make([]Value, 0, len(def.Args))
	for _, a := range def.Args {
		v, err := e.arg(a)
		if err != nil {
			return nil, fmt.Errorf("evaluating %s/%s argument %s: %w", def.Group, def.Event, a.Name, err)
		}
		vals = append(vals, v)
	}
	return vals, nil
}

type evaluator struct {
	d *Def
	c *Context
}

func (e *evaluator) arg(a Arg) (Value, error) {
	f, t := a.Fetch, a.Type
	v := Value{Name: a.Name, Type: t}
	var err error
	switch {
	case f.Kind == FetchParam || f.Kind == FetchAllArgs || len(f.Fields) > 0:
		return v, &UnresolvedError{Event: e.d.Event, Name: f.String()}
	case f.Kind == FetchComm:
		if e.c.Task == nil {
			return v, fmt.Errorf("$comm without a task accessor: %w", ErrMissingContext)
		}
		// A task that cannot be read is a fault, like unreadable memory.
		if v.Str, err = e.c.Task.Comm(); err != nil {
			return Value{Name: a.Name, Type: t, Fault: true}, nil
		}
		return v, nil
	case f.Kind == FetchImmString:
		v.Str = f.Str
		return v, nil
	case t.Array > 0:
		err = e.array(&v, f, t)
	case t.Base == String || t.Base == UString:
		var addr uint64
		if addr, err = e.stringAddr(f); err == nil {
			v.Str, err = e.readString(addr)
		}
	case t.Base == SymStr:
		var x uint64
		if x, err = e.value(f); err == nil {
			err = e.symbolize(&v, x)
		}
	default:
		var x uint64
		if x, err = e.scalar(f, t); err == nil {
			err = e.store(&v, x)
		}
	}
	if errors.Is(err, errFault) {
		return Value{Name: a.Name, Type: t, Fault: true}, nil
	}
	return v, err
}

// stringAddr is where a string lives: ftrace turns the last dereference
// into the string copy, and takes an immediate as the address itself.
func (e *evaluator) stringAddr(f *Fetch) (uint64, error) {
	if f.Kind == FetchImm {
		return f.Imm, nil
	}
	return e.addr(f)
}

func (e *evaluator) array(v *Value, f *Fetch, t Type) error {
	base, err := e.addr(f)
	if err != nil {
		return err
	}
	et := t
	et.Array = 0
	v.Elems = make([]Value, t.Array)
	for i := range v.Elems {
		el := &v.Elems[i]
		el.Type = et
		var err error
		if t.IsString() {
			// string[N] is N char pointers starting at the address.
			var p uint64
			if p, err = e.readU64(base + 8*uint64(i)); err == nil {
				el.Str, err = e.readString(p)
			}
		} else {
			var x uint64
			if x, err = e.readN(base+uint64(i*et.Size()), et.Size()); err == nil {
				err = e.store(el, x)
			}
		}
		if errors.Is(err, errFault) {
			*el = Value{Type: et, Fault: true}
		} else if err != nil {
			return err
		}
	}
	return nil
}

// scalar is the stored integer: a load of the type's size from memory
// fetches, the low bytes of the value otherwise, then the bitfield step.
func (e *evaluator) scalar(f *Fetch, t Type) (uint64, error) {
	var x uint64
	var err error
	if f.memory() {
		var addr uint64
		if addr, err = e.addr(f); err == nil {
			x, err = e.readN(addr, t.Size())
		}
	} else {
		x, err = e.value(f)
	}
	return x, err
}

// store fills v from the stored bits x.
func (e *evaluator) store(v *Value, x uint64) error {
	t := v.Type
	bits := uint(t.Size() * 8)
	if bits < 64 {
		x &= 1<<bits - 1
	}
	if t.Base == Bitfield {
		cs := uint(t.ContainerBits)
		x = x << (64 - cs) << (cs - uint(t.BitWidth+t.BitOffset)) >> (64 - uint(t.BitWidth))
	}
	v.U64 = x
	if t.Signed() {
		v.S64 = int64(x<<(64-bits)) >> (64 - bits)
	}
	if t.Base == Symbol {
		return e.symbolize(v, x)
	}
	return nil
}

func (e *evaluator) symbolize(v *Value, x uint64) error {
	if e.c.Syms == nil {
		return fmt.Errorf("symbol type without a symbol table: %w", ErrMissingContext)
	}
	v.U64, v.Str = x, e.c.Syms.Format(x)
	return nil
}

// value is what ftrace's fetch stages compute before the store: an
// unsigned long.
func (e *evaluator) value(f *Fetch) (uint64, error) {
	if len(f.Fields) > 0 {
		return 0, &UnresolvedError{Event: e.d.Event, Name: f.String()}
	}
	switch f.Kind {
	case FetchReg:
		return e.reg(f.Reg), nil
	case FetchStack:
		return e.readU64(e.c.Regs.RSP + 8*f.N)
	case FetchStackPtr:
		return e.c.Regs.RSP, nil
	case FetchRetval:
		return e.c.Regs.RAX, nil
	case FetchArg:
		return e.funcArg(f.N)
	case FetchImm:
		return f.Imm, nil
	case FetchWatchAddr:
		return e.c.WatchAddr, nil
	case FetchWatchOld:
		if e.c.WatchOld == nil {
			return 0, errFault // a read watch: nothing was overwritten
		}
		var b [8]byte
		copy(b[:], e.c.WatchOld)
		return binary.LittleEndian.Uint64(b[:]), nil
	case FetchMem, FetchSymMem, FetchDeref, FetchWatchValue:
		addr, err := e.addr(f)
		if err != nil {
			return 0, err
		}
		return e.readU64(addr)
	case FetchParam, FetchAllArgs:
		return 0, &UnresolvedError{Event: e.d.Event, Name: f.String()}
	}
	return 0, fmt.Errorf("%s has no numeric value: %w", f, ErrSyntax)
}

// addr is the address a memory fetch loads from.
func (e *evaluator) addr(f *Fetch) (uint64, error) {
	switch f.Kind {
	case FetchMem:
		return f.Imm, nil
	case FetchSymMem:
		if e.c.Syms == nil {
			return 0, fmt.Errorf("@%s without a symbol table: %w", f.Sym, ErrMissingContext)
		}
		a, err := e.c.Syms.Address(f.Sym)
		if err != nil {
			return 0, fmt.Errorf("resolving @%s: %w", f.Sym, err)
		}
		return a + uint64(f.Off), nil
	case FetchDeref:
		v, err := e.value(f.Inner)
		return v + uint64(f.Off), err
	case FetchWatchValue:
		return e.c.WatchAddr, nil
	}
	return 0, fmt.Errorf("%s is not a memory fetch: %w", f, ErrSyntax)
}

// funcArg is regs_get_kernel_argument() for x86-64 SysV: six registers,
// then the stack above the return address ($arg7 is *(rsp+8) at entry).
// Return probes use the entry registers; their stack slots are read now,
// so a callee that overwrote its own stack arguments shows the new value.
func (e *evaluator) funcArg(n uint64) (uint64, error) {
	r := &e.c.Regs
	if e.d.Kind == Retprobe {
		if e.c.Entry == nil {
			return 0, ErrNoEntryRegs
		}
		r = e.c.Entry
	}
	v, stack, inReg := r.Arg(int(n - 1))
	if inReg {
		return v, nil
	}
	return e.readU64(stack)
}

func (e *evaluator) reg(name string) uint64 {
	if p, ok := e.c.Regs.Reg(name); ok {
		return *p
	}
	switch name {
	case "cs":
		return uint64(e.c.CS)
	case "ss":
		return uint64(e.c.SS)
	}
	// orig_ax: the int3 entry pushes -1 there ("no syscall to restart"),
	// which is what a kprobe handler sees.
	return ^uint64(0)
}

func (e *evaluator) readU64(va uint64) (uint64, error) { return e.readN(va, 8) }

// readN loads an n-byte little-endian integer.
func (e *evaluator) readN(va uint64, n int) (uint64, error) {
	if e.c.Mem == nil {
		return 0, fmt.Errorf("memory fetch without guest memory: %w", ErrMissingContext)
	}
	var b [8]byte
	if err := e.c.Mem.ReadVirt(va, b[:n]); err != nil {
		return 0, errFault
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// readString copies a NUL-terminated string as ftrace does: a fault
// anywhere faults the whole string, and it stops at MaxStringSize-1
// bytes. Reads stay within one page so a string ending just before an
// unmapped page still reads.
func (e *evaluator) readString(va uint64) (string, error) {
	if e.c.Mem == nil {
		return "", fmt.Errorf("string fetch without guest memory: %w", ErrMissingContext)
	}
	const page = 4096
	var buf []byte
	for len(buf) < MaxStringSize-1 {
		n := min(page-int(va%page), MaxStringSize-1-len(buf))
		chunk := make([]byte, n)
		if err := e.c.Mem.ReadVirt(va, chunk); err != nil {
			return "", errFault
		}
		if i := bytes.IndexByte(chunk, 0); i >= 0 {
			return string(append(buf, chunk[:i]...)), nil
		}
		buf = append(buf, chunk...)
		va += uint64(n)
	}
	return string(buf), nil
}
