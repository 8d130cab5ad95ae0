package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/hvprobe/hvprobe/runner"
)

// cmdCtl sends one command to a running hvprobe's control socket.
func cmdCtl(args []string) error {
	fs := flag.NewFlagSet("ctl", flag.ExitOnError)
	sock := fs.String("socket", "", "control socket printed by 'hvprobe run --control'")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: hvprobe ctl --socket S add 'LINE' | remove EVENT | list | stats | pause | resume |\n       filter EVENT EXPR | unfilter EVENT | hist EVENT hist:SPEC | hist [EVENT] [json] | unhist EVENT")
		fs.PrintDefaults()
	}
	fs.Parse(args)
	if *sock == "" || fs.NArg() == 0 {
		fs.Usage()
		return errors.New("need --socket and a command")
	}
	conn, err := net.Dial("unix", *sock)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := fmt.Fprintln(conn, strings.Join(fs.Args(), " ")); err != nil {
		return err
	}
	sc := bufio.NewScanner(conn)
	var body []string
	for sc.Scan() {
		switch l := sc.Text(); l {
		case "ok":
			for _, b := range body {
				fmt.Fprintln(os.Stdout, b)
			}
			return nil
		case "error":
			return &runner.ExitError{Code: runner.ExitRuntime, Msg: strings.Join(body, "\n")}
		default:
			body = append(body, l)
		}
	}
	return errors.New("control socket closed without a reply")
}
