package probedef

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Sentinel errors; the typed errors below match them through errors.Is.
var (
	// ErrSyntax: a definition line is not valid kprobe_events syntax.
	ErrSyntax = errors.New("invalid probe definition")
	// ErrUnresolved: a parameter name or $arg* was not resolved with
	// ResolveParams before evaluation.
	ErrUnresolved = errors.New("unresolved parameter name")
	// ErrNoEntryRegs: a return probe reads $argN or a parameter but the
	// Context has no registers from the function entry.
	ErrNoEntryRegs = errors.New("return probe needs registers from function entry")
	// ErrNotProbe: the definition deletes an event; there is nothing to
	// evaluate.
	ErrNotProbe = errors.New("definition is not a probe")
	// ErrMissingContext: the Context lacks the memory, symbol table or
	// task accessor an argument needs.
	ErrMissingContext = errors.New("evaluation context incomplete")
)

// SyntaxError is one rejected line, pointing at the offending column the
// way ftrace's error_log does.
type SyntaxError struct {
	Line  int    // 1-based line number; 0 when parsing a single line
	Col   int    // 1-based byte column in Input
	Input string // the line as given
	Msg   string
	Err   error // underlying cause (Validate's lookup error), if any
}

func (e *SyntaxError) Error() string {
	prefix := ""
	if e.Line > 0 {
		prefix = fmt.Sprintf("line %d: ", e.Line)
	}
	return e.Render(prefix)
}

// Render shows the line after prefix, with the caret under the column on
// a terminal: the padding counts prefix too, which is all on the same
// line as the input.
func (e *SyntaxError) Render(prefix string) string {
	// Tabs stay tabs under the caret so it lines up in any tab width.
	pad := []byte(strings.Repeat(" ", utf8.RuneCountInString(prefix)))
	for i := 0; i < e.Col-1 && i < len(e.Input); i++ {
		if e.Input[i] == '\t' {
			pad = append(pad, '\t')
		} else {
			pad = append(pad, ' ')
		}
	}
	return prefix + e.Input + "\n" + string(pad) + "^ " + e.Msg
}

// Is makes errors.Is(err, ErrSyntax) true.
func (e *SyntaxError) Is(target error) bool { return target == ErrSyntax }

// Unwrap returns the cause, if any.
func (e *SyntaxError) Unwrap() error { return e.Err }

// SyntaxErrors is every bad line of one input, in line order.
type SyntaxErrors []*SyntaxError

func (es SyntaxErrors) Error() string {
	parts := make([]string, len(es))
	for i, e := range es {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "\n")
}

// Unwrap exposes each line's error to errors.Is and errors.As.
func (es SyntaxErrors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// UnresolvedError names a parameter that ResolveParams could not find in
// the prototype, or that Evaluate met unresolved.
type UnresolvedError struct {
	Event string
	Name  string
	// Func and Params are the probed function and its parameters, when
	// the prototype is known.
	Func   string
	Params []string
}

func (e *UnresolvedError) Error() string {
	msg := fmt.Sprintf("event %s: parameter %q not resolved", e.Event, e.Name)
	switch {
	case e.Func != "" && len(e.Params) == 0:
		msg += fmt.Sprintf(": %s takes no parameters", e.Func)
	case e.Func != "":
		msg += fmt.Sprintf(": %s's parameters are %s", e.Func, strings.Join(e.Params, ", "))
	}
	return msg
}

// Is makes errors.Is(err, ErrUnresolved) true.
func (e *UnresolvedError) Is(target error) bool { return target == ErrUnresolved }
