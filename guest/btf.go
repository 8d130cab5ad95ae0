package guest

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf/btf"
)

// Types answers layout questions from a kernel's BTF.
type Types struct {
	spec *btf.Spec
}

// ParseBTF parses a raw .BTF section.
func ParseBTF(raw []byte) (*Types, error) {
	spec, err := btf.LoadSpecFromReader(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("parsing BTF: %w", err)
	}
	return &Types{spec: spec}, nil
}

// BitfieldError is returned for a member that has no byte offset. It is
// ErrBitfield; MemberBitOffset gives its position.
type BitfieldError struct {
	Type, Member string
	BitOffset    uint64
	BitSize      uint32
}

func (e *BitfieldError) Error() string {
	return fmt.Sprintf("%s.%s is a %d-bit bitfield at bit %d", e.Type, e.Member, e.BitSize, e.BitOffset)
}

// Is makes errors.Is(err, ErrBitfield) true.
func (e *BitfieldError) Is(target error) bool { return target == ErrBitfield }

// composite finds the struct or union named name; a struct wins over a
// union, and forward declarations are skipped.
func (t *Types) composite(name string) (btf.Type, error) {
	all, err := t.spec.AnyTypesByName(name)
	if err != nil && !errors.Is(err, btf.ErrNotFound) {
		return nil, fmt.Errorf("looking up type %q: %w", name, err)
	}
	var union btf.Type
	for _, typ := range all {
		switch typ.(type) {
		case *btf.Struct:
			return typ, nil
		case *btf.Union:
			union = typ
		}
	}
	if union != nil {
		return union, nil
	}
	return nil, fmt.Errorf("struct or union %q: %w", name, ErrUnknownType)
}

// StructSize returns sizeof(struct name) (or of union name).
func (t *Types) StructSize(name string) (uint64, error) {
	typ, err := t.composite(name)
	if err != nil {
		return 0, err
	}
	n, err := btf.Sizeof(typ)
	if err != nil {
		return 0, fmt.Errorf("sizing %q: %w", name, err)
	}
	return uint64(n), nil
}

// MemberOffset returns the byte offset of member in struct typeName. member
// may be a dotted path through nested members ("se.vruntime"); members of
// anonymous structs and unions are found as if they were direct members,
// as in C. A bitfield is an error (*BitfieldError); use MemberBitOffset.
func (t *Types) MemberOffset(typeName, member string) (uint64, error) {
	bits, size, err := t.MemberBitOffset(typeName, member)
	if err != nil {
		return 0, err
	}
	if size != 0 || bits%8 != 0 {
		return 0, &BitfieldError{Type: typeName, Member: member, BitOffset: bits, BitSize: size}
	}
	return bits / 8, nil
}

// MemberBitOffset is MemberOffset in bits; bitSize is the bitfield width,
// 0 for an ordinary member.
func (t *Types) MemberBitOffset(typeName, member string) (bitOff uint64, bitSize uint32, err error) {
	typ, err := t.composite(typeName)
	if err != nil {
		return 0, 0, err
	}
	path := strings.Split(member, ".")
	for i, name := range path {
		m, off, ok := findMember(typ, name)
		if !ok {
			return 0, 0, fmt.Errorf("%s has no member %q: %w", typeName, strings.Join(path[:i+1], "."), ErrUnknownType)
		}
		bitOff += off
		bitSize = uint32(m.BitfieldSize)
		if i == len(path)-1 {
			break
		}
		typ = btf.UnderlyingType(m.Type)
		switch typ.(type) {
		case *btf.Struct, *btf.Union:
		default:
			return 0, 0, fmt.Errorf("%s.%s is %s, not a struct or union: %w", typeName, strings.Join(path[:i+1], "."), TypeString(m.Type), ErrUnknownType)
		}
	}
	return bitOff, bitSize, nil
}

// findMember looks name up in a struct or union, descending into
// anonymous members; off is the member's bit offset in typ.
func findMember(typ btf.Type, name string) (btf.Member, uint64, bool) {
	var members []btf.Member
	switch c := typ.(type) {
	case *btf.Struct:
		members = c.Members
	case *btf.Union:
		members = c.Members
	default:
		return btf.Member{}, 0, false
	}
	for _, m := range members {
		if m.Name == name && name != "" {
			return m, uint64(m.Offset), true
		}
	}
	for _, m := range members {
		if m.Name != "" {
			continue
		}
		if inner, off, ok := findMember(btf.UnderlyingType(m.Type), name); ok {
			return inner, uint64(m.Offset) + off, true
		}
	}
	return btf.Member{}, 0, false
}

// Param is one function parameter.
type Param struct {
	Name string
	Type string // C spelling, e.g. "const char *"
	Size int    // bytes
}

// FuncProto returns the parameters and the return type of a kernel
// function.
func (t *Types) FuncProto(name string) ([]Param, string, error) {
	proto, err := t.proto(name)
	if err != nil {
		return nil, "", err
	}
	params := make([]Param, len(proto.Params))
	for i, p := range proto.Params {
		size, _ := btf.Sizeof(p.Type)
		params[i] = Param{Name: p.Name, Type: TypeString(p.Type), Size: size}
	}
	return params, TypeString(proto.Return), nil
}

// TypeString spells a BTF type as C does (without declarator names).
func TypeString(typ btf.Type) string {
	return typeString(typ, 0)
}

// maxTypeDepth stops pathological (cyclic through pointers) spelling.
const maxTypeDepth = 16

func typeString(typ btf.Type, depth int) string {
	if depth > maxTypeDepth {
		return "..."
	}
	switch v := typ.(type) {
	case nil, *btf.Void:
		return "void"
	case *btf.Int:
		return v.Name
	case *btf.Float:
		return v.Name
	case *btf.Typedef:
		return v.Name
	case *btf.Struct:
		return "struct " + orAnon(v.Name)
	case *btf.Union:
		return "union " + orAnon(v.Name)
	case *btf.Enum:
		return "enum " + orAnon(v.Name)
	case *btf.Fwd:
		return v.Kind.String() + " " + v.Name
	case *btf.Pointer:
		if fp, ok := v.Target.(*btf.FuncProto); ok {
			args := make([]string, len(fp.Params))
			for i, p := range fp.Params {
				args[i] = typeString(p.Type, depth+1)
			}
			return typeString(fp.Return, depth+1) + " (*)(" + strings.Join(args, ", ") + ")"
		}
		inner := typeString(v.Target, depth+1)
		if strings.HasSuffix(inner, "*") {
			return inner + "*"
		}
		return inner + " *"
	case *btf.Const:
		return qualify("const", typeString(v.Type, depth+1))
	case *btf.Volatile:
		return qualify("volatile", typeString(v.Type, depth+1))
	case *btf.Restrict:
		return qualify("restrict", typeString(v.Type, depth+1))
	case *btf.TypeTag:
		return typeString(v.Type, depth+1)
	case *btf.Array:
		return fmt.Sprintf("%s[%d]", typeString(v.Type, depth+1), v.Nelems)
	case *btf.FuncProto:
		return "function"
	}
	return fmt.Sprintf("%T", typ)
}

// qualify puts a qualifier where C reads it: before a base type, after a
// pointer ("char * const").
func qualify(q, inner string) string {
	if strings.HasSuffix(inner, "*") {
		return inner + " " + q
	}
	return q + " " + inner
}

func orAnon(name string) string {
	if name == "" {
		return "(anon)"
	}
	return name
}

// Step is one member selection of a field access: "->Name" when Arrow,
// ".Name" otherwise.
type Step struct {
	Name  string
	Arrow bool
}

// ValueKind classifies the type a field access ends on, which is what
// picks its default fetch type and whether it can be a string.
type ValueKind int

const (
	ValueOther       ValueKind = iota // struct, union, float, non-char array
	ValueInt                          // integer, enum, bool
	ValuePointer                      // a pointer other than char *
	ValueCharPointer                  // pointer to a one-byte integer
	ValueCharArray                    // array of one-byte integers
)

// Access is a field access resolved against BTF. Each "->" group loads
// a member: Offsets[i] is the byte offset, from the pointer the previous
// load gave, of the member the group ends on.
type Access struct {
	Offsets []uint64
	Kind    ValueKind
	Size    int  // bytes, for ValueInt
	Signed  bool // for ValueInt
	Type    string
	// A bitfield member has BitSize > 0: its value is BitSize bits from
	// bit BitOffset (0-7) of the byte at the last offset.
	BitOffset, BitSize int
}

// StepError is a field access BTF refuses; Step indexes the step at
// fault. It is ErrUnknownType, or ErrBitfield for a bitfield member.
type StepError struct {
	Step int
	Msg  string
	err  error
}

func (e *StepError) Error() string { return e.Msg }

// Is makes errors.Is match ErrUnknownType or ErrBitfield.
func (e *StepError) Is(target error) bool { return target == e.err }

// FieldAccess resolves steps from a parameter of function fn (arg is
// 0-based) or, with arg -1, from its return value, following typedefs
// and qualifiers as ftrace does. A bitfield can only end the path.
func (t *Types) FieldAccess(fn string, arg int, steps []Step) (Access, error) {
	proto, err := t.proto(fn)
	if err != nil {
		return Access{}, err
	}
	var typ btf.Type
	var what string
	switch {
	case arg == -1:
		typ, what = proto.Return, "the return value"
	case arg >= 0 && arg < len(proto.Params):
		typ, what = proto.Params[arg].Type, proto.Params[arg].Name
	default:
		return Access{}, fmt.Errorf("function %q has no parameter %d: %w", fn, arg+1, ErrUnknownType)
	}
	var acc Access
	var off uint64
	for i, s := range steps {
		cur := btf.UnderlyingType(typ)
		if s.Arrow {
			if i > 0 {
				acc.Offsets = append(acc.Offsets, off)
			}
			p, ok := cur.(*btf.Pointer)
			if !ok || !isComposite(btf.UnderlyingType(p.Target)) {
				return Access{}, &StepError{Step: i, err: ErrUnknownType,
					Msg: fmt.Sprintf("%s is %s, not a pointer to a struct or union", what, TypeString(typ))}
			}
			cur, off = btf.UnderlyingType(p.Target), 0
		} else if !isComposite(cur) {
			return Access{}, &StepError{Step: i, err: ErrUnknownType,
				Msg: fmt.Sprintf("%s is %s, not a struct or union", what, TypeString(typ))}
		}
		m, bits, ok := findMember(cur, s.Name)
		if !ok {
			return Access{}, &StepError{Step: i, err: ErrUnknownType,
				Msg: fmt.Sprintf("%s has no member %s", TypeString(cur), s.Name)}
		}
		off += bits / 8
		acc.BitOffset, acc.BitSize = 0, 0
		if m.BitfieldSize != 0 || bits%8 != 0 {
			acc.BitOffset, acc.BitSize = int(bits%8), int(m.BitfieldSize)
			if acc.BitSize == 0 {
				acc.BitSize = int(8 * sizeOf(m.Type))
			}
		}
		typ, what = m.Type, s.Name
	}
	if len(steps) > 0 {
		acc.Offsets = append(acc.Offsets, off)
	}
	acc.Type = TypeString(typ)
	switch v := btf.UnderlyingType(typ).(type) {
	case *btf.Int:
		acc.Kind, acc.Size, acc.Signed = ValueInt, int(v.Size), v.Encoding&btf.Signed != 0
	case *btf.Enum:
		acc.Kind, acc.Size, acc.Signed = ValueInt, int(v.Size), true
	case *btf.Pointer:
		acc.Kind = ValuePointer
		if isByte(v.Target) {
			acc.Kind = ValueCharPointer
		}
	case *btf.Array:
		if isByte(v.Type) {
			acc.Kind = ValueCharArray
		}
	}
	return acc, nil
}

func (t *Types) proto(fn string) (*btf.FuncProto, error) {
	var f *btf.Func
	if err := t.spec.TypeByName(fn, &f); err != nil {
		if errors.Is(err, btf.ErrNotFound) {
			return nil, fmt.Errorf("function %q: %w", fn, ErrUnknownType)
		}
		return nil, fmt.Errorf("looking up function %q: %w", fn, err)
	}
	proto, ok := f.Type.(*btf.FuncProto)
	if !ok {
		return nil, fmt.Errorf("function %q has no prototype: %w", fn, ErrUnknownType)
	}
	return proto, nil
}

func isComposite(t btf.Type) bool {
	switch t.(type) {
	case *btf.Struct, *btf.Union:
		return true
	}
	return false
}

// isByte: char, signed or unsigned, which ftrace reads as text.
func isByte(t btf.Type) bool {
	i, ok := btf.UnderlyingType(t).(*btf.Int)
	return ok && i.Size == 1
}

// sizeOf is t's size in bytes, 0 when BTF gives none.
func sizeOf(t btf.Type) uint64 {
	n, err := btf.Sizeof(t)
	if err != nil {
		return 0
	}
	return uint64(n)
}
