package runner

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/hvprobe/hvprobe/session"
	"github.com/hvprobe/hvprobe/vmm"
)

// endOf maps how the guest ended to the command's exit status.
func endOf(res vmm.Result, ctx context.Context, lines []session.Line) error {
	tail := func() string {
		if len(res.Tail) == 0 {
			return ""
		}
		return "\nlast console lines:\n  " + strings.Join(res.Tail, "\n  ")
	}
	switch {
	case res.Panicked:
		return &ExitError{Code: ExitPanic, Msg: "guest kernel panicked" + tail()}
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return &ExitError{Code: ExitTimeout, Msg: "timed out: the guest was still running" + tail()}
	case res.Reason == vmm.StopRequested:
		return &ExitError{Code: ExitInterrupted, Msg: "interrupted"}
	case res.Err != nil:
		return &ExitError{Code: ExitRuntime, Msg: fmt.Sprintf("guest stopped: %v%s", res.Err, tail())}
	case res.Reason == vmm.StopReset || res.Reason == vmm.StopShutdown:
		// A reset is a clean end only if the kernel said it was restarting
		// or powering down; a reset with neither is a crash that happened
		// before the console could say so.
		for _, l := range lines {
			if strings.Contains(l.Text, "reboot: Restarting system") || strings.Contains(l.Text, "reboot: Power down") {
				return nil
			}
		}
		msg := "the guest reset without announcing a restart or power-off (early crash?)"
		if res.Fault != nil {
			msg += ": " + res.Fault.String()
		}
		return &ExitError{Code: ExitReset, Msg: msg + tail()}
	}
	return &ExitError{Code: ExitRuntime, Msg: "guest stopped: " + res.Reason.String() + tail()}
}
