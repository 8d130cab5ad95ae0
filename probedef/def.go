package probedef

import (
	"fmt"
	"strconv"
	"strings"
)

// Kind is what a definition line asks for.
type Kind int

const (
	// Probe is "p": a kprobe at SYM+offs or MEMADDR.
	Probe Kind = iota
	// Retprobe is "r" (or "p ... SYM%return"): a kretprobe.
	Retprobe
	// Jprobe is "j", this package's extension: a probe on a function entry
	// whose handler sees the function's arguments.
	Jprobe
	// Delete is "-:[GRP/]EVENT": remove an event.
	Delete
	// Watch is "w": a watch on data access, in the syntax of ftrace's
	// wprobe events (Documentation/trace/wprobetrace.rst).
	Watch
)

func (k Kind) String() string {
	switch k {
	case Probe:
		return "p"
	case Retprobe:
		return "r"
	case Jprobe:
		return "j"
	case Delete:
		return "-"
	case Watch:
		return "w"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// DefaultGroup is the group ftrace gives events defined without one.
const DefaultGroup = "kprobes"

// Limits ftrace enforces, mirrored so a line accepted here is accepted by
// kprobe_events too (kernel/trace/trace_probe.h, trace.h, kprobes.h).
const (
	MaxTraceArgs    = 128  // MAX_TRACE_ARGS
	MaxArgStrLen    = 63   // MAX_ARGSTR_LEN: one fetch expression
	MaxArrayLen     = 64   // MAX_ARRAY_LEN
	MaxArgNameLen   = 32   // MAX_ARG_NAME_LEN
	MaxEventNameLen = 64   // MAX_EVENT_NAME_LEN
	MaxStringSize   = 4096 // MAX_STRING_SIZE (PATH_MAX), NUL included
	MaxActiveMax    = 4096 // KRETPROBE_MAXACTIVE_MAX
	// MaxStackIndex is PARAM_MAX_STACK for x86-64's 16 KiB kernel stacks:
	// the largest N in $stackN and $argN.
	MaxStackIndex = 16384 / 8
	// fetchInsnMax is FETCH_INSN_MAX; one slot is the END sentinel, which
	// bounds how deep dereferences may nest.
	fetchInsnMax = 16
)

// Def is one parsed kprobe_events line.
//
// Invariants after Parse: Group and Event are set (Group may be empty only
// for Delete, meaning "any group", as ftrace's -: does); exactly one of
// Symbol and Addr names the location of p/r/j probes (Symbol == "" means
// Addr); Args holds at most MaxTraceArgs entries with unique names.
type Def struct {
	Kind      Kind
	Group     string
	Event     string
	MaxActive int // r only; 0 is the kernel default

	Module string // from MOD:SYM; empty for vmlinux
	Symbol string
	Offset uint64 // SYM+offs; a w line's SYM-offs is stored negated
	Addr   uint64 // MEMADDR, when Symbol is empty

	// Access and Len are a w line's: which accesses of the Len bytes at
	// the location it reports.
	Access WatchAccess
	Len    int

	Args []Arg

	// Stack asks for the kernel stack of each hit in its event
	// (Event.Stack), as ftrace's stacktrace trigger does; it is set by
	// the tool, not written in the line.
	Stack bool
	// Stealth asks for a p line to be armed in a debug register, which
	// leaves guest memory untouched; set by the tool, like Stack.
	Stealth bool
	// Fast asks for a p line to be armed exit-less where its instruction
	// and fetch args allow it (kprobes.FastProbe), else with an int3;
	// set by the tool, like Stack.
	Fast bool

	// Line and Text locate the definition in its source for error
	// reports (Validate); they are not part of the definition itself.
	Line int
	Text string
}

// OnEntry reports whether the probe sits on a function entry, where
// $argN and parameter names mean the function's arguments.
func (d *Def) OnEntry() bool {
	return (d.Kind == Probe || d.Kind == Jprobe) && d.Symbol != "" && d.Offset == 0
}

// Arg is one fetch argument: NAME=FETCHARG:TYPE.
type Arg struct {
	Name  string
	Fetch *Fetch
	Type  Type
	// BTFType: the line gives no type for a fetch BTF can type (a field
	// access, a parameter by name or from $arg*, $retval), so ResolveBTF
	// types it as ftrace does; Type is DefaultType until then.
	BTFType bool
}

// btfTyped reports whether ftrace types f from BTF when the line gives
// no type: a field access, a parameter name, or $retval.
func (f *Fetch) btfTyped() bool {
	return len(f.Fields) > 0 || f.Kind == FetchParam || f.Kind == FetchRetval
}

// FetchKind says where a fetch expression takes its value from.
type FetchKind int

const (
	FetchReg        FetchKind = iota // %REG: Reg
	FetchStack                       // $stackN: N
	FetchStackPtr                    // $stack
	FetchRetval                      // $retval
	FetchComm                        // $comm
	FetchArg                         // $argN: N (1-based)
	FetchImm                         // \IMM: Imm
	FetchImmString                   // \"STR": Str
	FetchMem                         // @ADDR: memory at Imm
	FetchSymMem                      // @SYM[+|-offs]: memory at Sym+Off
	FetchDeref                       // +|-[u]OFFS(Inner): memory at Inner+Off
	FetchParam                       // a bare parameter name (BTF style): Str
	FetchAllArgs                     // $arg*: every parameter, expanded by ResolveParams
	FetchWatchAddr                   // $addr (w lines): the watched address
	FetchWatchValue                  // $value (w lines): memory at $addr, after the access
	FetchWatchOld                    // $old (w lines, hvprobe's): the bytes at $addr before a write
)

// Fetch is a fetch expression. Only the fields its Kind names are set.
type Fetch struct {
	Kind  FetchKind
	Reg   string // register name as ftrace spells it ("ax", "r8", "ip")
	N     uint64 // $stackN / $argN index
	Imm   uint64 // immediate value or absolute address
	Sym   string
	Str   string // immediate string or parameter name
	Off   int64
	User  bool // +u...(): the address is in user space
	Inner *Fetch
	// Fields follow a parameter name, $argN or $retval: a BTF field
	// access such as file->f_path.dentry, which ResolveBTF turns into
	// dereferences.
	Fields []Field
}

// Field is one member selection of a field access: "->Name" when Arrow,
// ".Name" otherwise. Off is the byte offset of Name in the text of the
// fetch it belongs to, which String spells as parsed, for error columns.
type Field struct {
	Name  string
	Arrow bool
	Off   int
}

// memory reports whether the expression ends in a memory access, which is
// what string and array types need: ftrace replaces that last load by the
// store of the string or the array.
func (f *Fetch) memory() bool {
	return f.Kind == FetchMem || f.Kind == FetchSymMem || f.Kind == FetchDeref || f.Kind == FetchWatchValue
}

// ops counts the fetch instructions ftrace would emit before the store.
func (f *Fetch) ops() int {
	switch f.Kind {
	case FetchMem:
		return 2 // IMM, DEREF
	case FetchSymMem:
		return 3 // NOP_SYMBOL, IMM, DEREF
	case FetchDeref:
		return f.Inner.ops() + 1
	}
	n := 1
	for _, fl := range f.Fields {
		if fl.Arrow {
			n++
		}
	}
	return n
}

func (f *Fetch) String() string {
	s := f.base()
	for _, fl := range f.Fields {
		if fl.Arrow {
			s += "->"
		} else {
			s += "."
		}
		s += fl.Name
	}
	return s
}

func (f *Fetch) base() string {
	switch f.Kind {
	case FetchReg:
		return "%" + f.Reg
	case FetchStack:
		return "$stack" + strconv.FormatUint(f.N, 10)
	case FetchStackPtr:
		return "$stack"
	case FetchRetval:
		return "$retval"
	case FetchComm:
		return "$comm"
	case FetchArg:
		return "$arg" + strconv.FormatUint(f.N, 10)
	case FetchAllArgs:
		return "$arg*"
	case FetchWatchAddr:
		return "$addr"
	case FetchWatchValue:
		return "$value"
	case FetchWatchOld:
		return "$old"
	case FetchImm:
		imm := shortest(f.Imm)
		if int64(f.Imm) < 0 {
			if neg := "-" + shortest(-f.Imm); len(neg) < len(imm) {
				imm = neg
			}
		}
		return `\` + imm
	case FetchImmString:
		return `\"` + f.Str + `"`
	case FetchMem:
		return "@" + shortest(f.Imm)
	case FetchSymMem:
		if f.Off == 0 {
			return "@" + f.Sym
		}
		return "@" + f.Sym + signedOff(f.Off)
	case FetchDeref:
		u := ""
		if f.User {
			u = "u"
		}
		off := signedOff(f.Off)
		return off[:1] + u + off[1:] + "(" + f.Inner.String() + ")"
	case FetchParam:
		return f.Str
	}
	return "?"
}

func signedOff(off int64) string {
	if off < 0 {
		return "-" + shortest(uint64(-off))
	}
	return "+" + shortest(uint64(off))
}

// shortest spells v in decimal or hex, whichever is shorter, so that the
// canonical form of an argument never outgrows MaxArgStrLen when the
// spelling it was parsed from fit.
func shortest(v uint64) string {
	d, x := strconv.FormatUint(v, 10), "0x"+strconv.FormatUint(v, 16)
	if len(x) < len(d) {
		return x
	}
	return d
}

// BaseType is a fetch type without array suffix.
type BaseType int

const (
	U8 BaseType = iota
	U16
	U32
	U64
	S8
	S16
	S32
	S64
	X8
	X16
	X32
	X64
	Char
	String
	UString
	Symbol
	SymStr
	Bitfield
)

var baseNames = [...]string{
	U8: "u8", U16: "u16", U32: "u32", U64: "u64",
	S8: "s8", S16: "s16", S32: "s32", S64: "s64",
	X8: "x8", X16: "x16", X32: "x32", X64: "x64",
	Char: "char", String: "string", UString: "ustring",
	Symbol: "symbol", SymStr: "symstr", Bitfield: "bitfield",
}

func (b BaseType) String() string {
	if b >= 0 && int(b) < len(baseNames) {
		return baseNames[b]
	}
	return "BaseType(" + strconv.Itoa(int(b)) + ")"
}

// Type is a fetch type: a base type, bitfield parameters, and an array
// length (0 for a scalar).
type Type struct {
	Base BaseType
	// Bitfield only: b<BitWidth>@<BitOffset>/<ContainerBits>.
	BitWidth, BitOffset, ContainerBits int
	Array                              int
}

// DefaultType is what ftrace stores when no type is given on x86-64.
var DefaultType = Type{Base: X64}

func (t Type) String() string {
	s := t.Base.String()
	if t.Base == Bitfield {
		s = fmt.Sprintf("b%d@%d/%d", t.BitWidth, t.BitOffset, t.ContainerBits)
	}
	if t.Array > 0 {
		s += "[" + strconv.Itoa(t.Array) + "]"
	}
	return s
}

// Size is the byte size of one element as stored; strings store a
// pointer-sized location.
func (t Type) Size() int {
	switch t.Base {
	case U8, S8, X8, Char:
		return 1
	case U16, S16, X16:
		return 2
	case U32, S32, X32:
		return 4
	case Bitfield:
		return t.ContainerBits / 8
	}
	return 8
}

// IsString reports whether values of t are text fetched into the event.
func (t Type) IsString() bool {
	return t.Base == String || t.Base == UString || t.Base == SymStr
}

// Signed reports whether t prints as a signed decimal.
func (t Type) Signed() bool { return t.Base >= S8 && t.Base <= S64 }

// String renders d in the canonical kprobe_events form: explicit group,
// event, argument names and types. Parse(d.String()) yields d again
// (apart from Line and Text).
func (d *Def) String() string {
	var b strings.Builder
	if d.Kind == Delete {
		b.WriteString("-:")
		if d.Group != "" {
			b.WriteString(d.Group + "/")
		}
		b.WriteString(d.Event)
		return b.String()
	}
	b.WriteString(d.Kind.String())
	if d.MaxActive > 0 {
		b.WriteString(strconv.Itoa(d.MaxActive))
	}
	b.WriteString(":" + d.Group + "/" + d.Event + " ")
	if d.Kind == Watch {
		b.WriteString(d.Access.String() + "@")
	}
	switch {
	case d.Symbol == "":
		fmt.Fprintf(&b, "%#x", d.Addr)
	default:
		if d.Module != "" {
			b.WriteString(d.Module + ":")
		}
		b.WriteString(d.Symbol)
		if d.Kind == Watch && int64(d.Offset) < 0 {
			fmt.Fprintf(&b, "-%#x", -d.Offset)
		} else if d.Offset != 0 {
			fmt.Fprintf(&b, "+%#x", d.Offset)
		}
	}
	if d.Kind == Watch {
		fmt.Fprintf(&b, ":%d", d.Len)
	}
	for _, a := range d.Args {
		b.WriteByte(' ')
		if a.Fetch.Kind == FetchAllArgs {
			b.WriteString("$arg*")
			continue
		}
		// A bare parameter names itself, and may do so beyond
		// MaxArgNameLen, which NAME= does not allow.
		if a.Fetch.Kind != FetchParam || a.Name != a.Fetch.Str || len(a.Fetch.Fields) > 0 {
			b.WriteString(a.Name + "=")
		}
		b.WriteString(a.Fetch.String())
		// Default types stay implicit, which keeps the expression within
		// MaxArgStrLen whenever the parsed one was.
		implicit := DefaultType
		switch a.Fetch.Kind {
		case FetchComm, FetchImmString:
			implicit = Type{Base: String}
		case FetchWatchValue, FetchWatchOld:
			implicit = watchType(d.Len)
		}
		if a.Type != implicit || (a.Fetch.btfTyped() && !a.BTFType) {
			b.WriteString(":" + a.Type.String())
		}
	}
	return b.String()
}
