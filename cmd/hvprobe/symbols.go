package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/hvprobe/hvprobe/guest"
	"github.com/hvprobe/hvprobe/runner"
)

func cmdSymbols(args []string) error {
	fs := flag.NewFlagSet("symbols", flag.ExitOnError)
	mapPath := fs.String("system-map", defaultPaths().systemMap, "System.map of the kernel")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: hvprobe symbols [--system-map M] LOOKUP...\n\nLOOKUP is a symbol (name, name:N for the N-th of several, name+0xoff) or an address (0x...).")
		fs.PrintDefaults()
	}
	fs.Parse(args)
	if fs.NArg() == 0 {
		fs.Usage()
		return errors.New("nothing to look up")
	}
	f, err := os.Open(*mapPath)
	if err != nil {
		return err
	}
	defer f.Close()
	syms, err := guest.ParseSystemMap(f)
	if err != nil {
		return fmt.Errorf("parsing %s: %w", *mapPath, err)
	}
	failed := false
	for _, q := range fs.Args() {
		if strings.HasPrefix(q, "0x") {
			a, err := strconv.ParseUint(q[2:], 16, 64)
			if err != nil {
				fmt.Fprintf(os.Stderr, "%s: not a hex address\n", q)
				failed = true
				continue
			}
			if _, _, ok := syms.SymbolAt(a); !ok {
				fmt.Fprintf(os.Stderr, "%s: no symbol covers this address\n", q)
				failed = true
				continue
			}
			fmt.Printf("%s %s\n", q, syms.FormatAddr(a))
			continue
		}
		a, err := syms.Resolve(q)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%v\n", err)
			failed = true
			continue
		}
		fmt.Printf("%s %#x\n", q, a)
	}
	if failed {
		return &runner.ExitError{Code: runner.ExitRuntime, Msg: "some lookups failed"}
	}
	return nil
}
