// Command hvprobe boots a Linux guest under KVM and probes its kernel
// from the host. It only parses flags and prints; the work is in the
// library packages.
package main

import (
	"fmt"
	"os"
)

const usage = `usage: hvprobe <command> [flags]

commands:
  run       boot a guest kernel, optionally with probes, and print events
  symbols   look up symbols in a System.map (name -> address, address -> sym+off)
  ctl       change probes in a running 'hvprobe run --control' session
  bench     measure probe-hit cost against a bare VM exit on the mini guest

Run 'hvprobe <command> -h' for the command's flags.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = cmdRun(os.Args[2:])
	case "symbols":
		err = cmdSymbols(os.Args[2:])
	case "bench":
		err = cmdBench(os.Args[2:])
	case "ctl":
		err = cmdCtl(os.Args[2:])
	case "-h", "--help", "help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "hvprobe: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "hvprobe: %v\n", err)
		var ec exitCoder
		if asExitCoder(err, &ec) {
			os.Exit(ec.ExitCode())
		}
		os.Exit(1)
	}
}
