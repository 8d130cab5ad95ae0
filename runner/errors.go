package runner

import (
	"errors"
	"fmt"
	"strings"
)

// Exit statuses of `hvprobe run` and `hvprobe check`; README's table is
// this one.
const (
	ExitRuntime     = 1   // a failure while running: KVM, I/O, the guest stopped on an error
	ExitRefused     = 2   // a flag, file or probe line refused before boot: nothing ran
	ExitPanic       = 3   // the guest kernel panicked
	ExitReset       = 5   // the guest reset without announcing a restart or power-off
	ExitProbeFailed = 6   // a probe could not be armed once the guest ran
	ExitTimeout     = 124 // --timeout, as timeout(1)
	ExitInterrupted = 130 // Ctrl-C
)

// ExitError ends the command with Code and message Msg.
type ExitError struct {
	Code int
	Msg  string
}

func (e *ExitError) Error() string { return e.Msg }

// ExitCode is the process's exit status.
func (e *ExitError) ExitCode() int { return e.Code }

// refused is an ExitRefused error.
func refused(format string, args ...any) error {
	return &ExitError{Code: ExitRefused, Msg: fmt.Sprintf(format, args...)}
}

// Refusals is every reason a Config was refused, one per line.
type Refusals []string

func (r Refusals) Error() string { return strings.Join(r, "\n") }

// ExitCode is ExitRefused: nothing was opened or booted.
func (r Refusals) ExitCode() int { return ExitRefused }

// Code is err's exit status: 0 for nil, an ExitCode method's, else 1.
func Code(err error) int {
	var ec interface{ ExitCode() int }
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ec):
		return ec.ExitCode()
	}
	return ExitRuntime
}
