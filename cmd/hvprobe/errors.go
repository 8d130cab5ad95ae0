package main

import "errors"

type exitCoder interface{ ExitCode() int }

// exitError ends the command with a given status and message.
type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return e.msg }
func (e exitError) ExitCode() int { return e.code }

func asExitCoder(err error, ec *exitCoder) bool { return errors.As(err, ec) }
