// Command hvprobe boots a Linux guest under KVM and probes its kernel
// from the host. It turns flags into a runner.Config and an error into an
// exit status; the work is in the library packages.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/hvprobe/hvprobe/runner"
)

const usage = `usage: hvprobe <command> [flags]

commands:
  run       boot a guest kernel with probes and print their events
  report    print a 'run --record' file's events again, with other filters, hists or formats
  check     check probe lines against a kernel image, booting nothing
  list      list the functions matching patterns (vfs_*), probe-able or refused
  show      a function's signature, size and instructions, each as a probe would run it
  symbols   look up symbols in a System.map (name -> address, address -> sym+off)
  ctl       change probes in a running 'hvprobe run --control' session
  bench     measure probe-hit cost against a bare VM exit on the mini guest

'hvprobe help <command>' or 'hvprobe <command> --help' shows its flags;
'hvprobe --version' the version.
`

var commands = map[string]func([]string) error{
	"run": cmdRun, "report": cmdReport, "check": cmdCheck, "list": cmdList, "show": cmdShow, "symbols": cmdSymbols, "bench": cmdBench, "ctl": cmdCtl,
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(runner.ExitRefused)
	}
	name, args := os.Args[1], os.Args[2:]
	switch name {
	case "-h", "--help", "help":
		if len(args) == 1 && commands[args[0]] != nil {
			name, args = args[0], []string{"--help"}
			break
		}
		fmt.Print(usage)
		return
	case "--version", "version":
		fmt.Println(version())
		return
	}
	cmd := commands[name]
	if cmd == nil {
		fmt.Fprintf(os.Stderr, "hvprobe: unknown command %q\n\n%s", name, usage)
		os.Exit(runner.ExitRefused)
	}
	err := cmd(args)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		var bad runner.Refusals
		if errors.As(err, &bad) {
			for _, b := range bad {
				fmt.Fprintf(os.Stderr, "hvprobe: %s\n", b)
			}
		} else {
			fmt.Fprintf(os.Stderr, "hvprobe: %v\n", err)
		}
	}
	os.Exit(runner.Code(err))
}

// usageError is a flag the FlagSet refused (it has printed why).
func usageError(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return err
	}
	return &runner.ExitError{Code: runner.ExitRefused, Msg: "see --help"}
}
