package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
)

// flagGroups orders `run --help`; a flag in no group is listed last.
var flagGroups = []struct {
	title string
	flags []string
}{
	{"guest", []string{"kernel", "system-map", "btf", "initrd", "disk", "mem", "cpus", "cmdline-append", "host", "nokaslr", "timeout", "console", "interactive"}},
	{"probes", []string{"probe", "probes", "kprobe", "jprobe", "kretprobe", "stacktrace", "stealth", "fast", "fast-records", "keep-going", "dry-run"}},
	{"output", []string{"format", "events", "count", "perfetto", "record"}},
	{"analysis", []string{"filter", "hist", "interval"}},
	{"live", []string{"control", "inspect", "scenario"}},
	{"snapshots", []string{"snapshot-at", "snapshot-out", "restore"}},
}

const examples = `examples:
  hvprobe run --probe 'p:open do_sys_openat2 name=+0($arg2):ustring' --timeout 30s
  hvprobe run --probe 'r:rd vfs_read ret=$retval' --hist 'rd:hist:keys=ret' --format json
  hvprobe check --kernel vmlinuz --system-map System.map --probes my.probes
  hvprobe run --probes my.probes --record rec.jsonl; hvprobe report rec.jsonl --hist 'ev:hist:keys=comm'
`

const exitCodes = `exit status:
  0    the guest ended cleanly (it announced a restart or power-off)
  1    a runtime failure (KVM, I/O, the guest stopped on an error)
  2    a flag, file or probe line refused before boot: nothing ran
  3    the guest kernel panicked
  5    the guest reset without announcing it (an early crash)
  6    a probe could not be armed once the guest ran (see --keep-going)
  124  --timeout
  130  interrupted (Ctrl-C)
`

// printUsage is a command's --help: its flags by group, GNU style.
func printUsage(fs *flag.FlagSet, name string) {
	w := os.Stderr
	fmt.Fprintf(w, "usage: hvprobe %s [flags]\n", name)
	done := map[string]bool{}
	group := func(title string, names []string) {
		var lines []string
		for _, n := range names {
			if f := fs.Lookup(n); f != nil && !done[n] {
				done[n] = true
				lines = append(lines, flagLine(f))
			}
		}
		if len(lines) > 0 {
			fmt.Fprintf(w, "\n%s:\n%s", title, strings.Join(lines, ""))
		}
	}
	for _, g := range flagGroups {
		group(g.title, g.flags)
	}
	var rest []string
	fs.VisitAll(func(f *flag.Flag) { rest = append(rest, f.Name) })
	group("flags", rest)
	if name == "run" || name == "check" {
		fmt.Fprintf(w, "\n%s\n%s", examples, exitCodes)
	}
}

func flagLine(f *flag.Flag) string {
	kind, usage := flag.UnquoteUsage(f)
	head := "  --" + f.Name
	if kind != "" {
		head += " " + kind
	}
	if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "0s" {
		usage += fmt.Sprintf(" (default %s)", f.DefValue)
	}
	return fmt.Sprintf("%-28s %s\n", head, usage)
}

// version is the module version, the commit and the Go toolchain.
func version() string {
	v, commit := "(devel)", "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		v = bi.Main.Version
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					commit += "+dirty"
				}
			}
		}
	}
	return fmt.Sprintf("hvprobe %s, commit %s, %s", v, commit, runtime.Version())
}
