package guest

import (
	"errors"
	"fmt"
	"strings"
)

var (
	// ErrSyntax: a System.map line or a "sym+off" expression is malformed.
	ErrSyntax = errors.New("syntax error")
	// ErrUnknownSymbol: no symbol has the name.
	ErrUnknownSymbol = errors.New("unknown symbol")
	// ErrAmbiguous: several symbols have the name.
	ErrAmbiguous = errors.New("ambiguous symbol")
	// ErrMismatch: the System.map does not belong to the kernel image.
	ErrMismatch = errors.New("System.map does not match kernel image")
	// ErrNoBTF: the kernel image carries no .BTF section.
	ErrNoBTF = errors.New("kernel has no BTF")
	// ErrUnknownType: BTF has no such type or member.
	ErrUnknownType = errors.New("unknown type")
	// ErrBitfield: the member is a bitfield and has no byte offset.
	ErrBitfield = errors.New("member is a bitfield")
	// ErrPastEnd: sym+off lies at or past the end of sym.
	ErrPastEnd = errors.New("offset past the end of the symbol")
)

// PastEndError is sym+off with off at or past sym's size (where the next
// symbol starts), which Linux's kprobes refuse too. It is ErrPastEnd.
type PastEndError struct {
	Name      string
	Off, Size uint64
}

func (e *PastEndError) Error() string {
	return fmt.Sprintf("offset %#x is past the end of %s, which is %#x bytes long", e.Off, e.Name, e.Size)
}

// Is makes errors.Is(err, ErrPastEnd) true.
func (e *PastEndError) Is(target error) bool { return target == ErrPastEnd }

// LineError locates a System.map syntax error. It is ErrSyntax.
type LineError struct {
	Line int    // 1-based
	Text string // the offending line, shortened
	Msg  string
}

func (e *LineError) Error() string {
	return fmt.Sprintf("line %d: %s: %q", e.Line, e.Msg, e.Text)
}

// Is makes errors.Is(err, ErrSyntax) true.
func (e *LineError) Is(target error) bool { return target == ErrSyntax }

// UnknownSymbolError is returned for a name no symbol has. It is
// ErrUnknownSymbol.
type UnknownSymbolError struct {
	Name string
	// Similar holds up to 5 existing names close to Name, closest first.
	Similar []string
}

func (e *UnknownSymbolError) Error() string {
	if len(e.Similar) == 0 {
		return fmt.Sprintf("unknown symbol %q", e.Name)
	}
	return fmt.Sprintf("unknown symbol %q (did you mean %s?)", e.Name, strings.Join(e.Similar, ", "))
}

// Is makes errors.Is(err, ErrUnknownSymbol) true.
func (e *UnknownSymbolError) Is(target error) bool { return target == ErrUnknownSymbol }

// AmbiguousError is returned when several symbols share a name (static
// functions in different files). It is ErrAmbiguous.
type AmbiguousError struct {
	Name       string
	Candidates []Symbol // in address order; name:N picks Candidates[N-1]
}

func (e *AmbiguousError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d symbols named %q:", len(e.Candidates), e.Name)
	for i, c := range e.Candidates {
		fmt.Fprintf(&b, " %s:%d=%#x", e.Name, i+1, c.Addr)
	}
	b.WriteString(" (use name:N)")
	return b.String()
}

// Is makes errors.Is(err, ErrAmbiguous) true.
func (e *AmbiguousError) Is(target error) bool { return target == ErrAmbiguous }

// MismatchError says why a System.map was refused for an image. It is
// ErrMismatch.
type MismatchError struct {
	MapVersion   string // release the map is for, "" when unknown
	ImageVersion string
	Msg          string
}

func (e *MismatchError) Error() string {
	mv := e.MapVersion
	if mv == "" {
		mv = "another kernel"
	}
	return fmt.Sprintf("System.map is for %s but kernel image is %s: %s", mv, e.ImageVersion, e.Msg)
}

// Is makes errors.Is(err, ErrMismatch) true.
func (e *MismatchError) Is(target error) bool { return target == ErrMismatch }
