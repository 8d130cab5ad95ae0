package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/hvprobe/hvprobe/runner"
	"github.com/hvprobe/hvprobe/session"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// runFlags registers `run`'s flags (and `check`'s, a subset that boots
// nothing) into c.
func runFlags(fs *flag.FlagSet, c *runner.Config, boots bool) {
	guestFlags(fs, &c.Kernel, &c.SystemMap, &c.Initrd)
	btfFlag(fs, &c.BTF)
	fs.Var((*multiFlag)(&c.Probes), "probe", "probe `LINE` in ftrace kprobe_events syntax, e.g. 'p:myopen do_filp_open path=+0(+0(%si)):string' (repeatable; 'j:' = jprobe)")
	fs.StringVar(&c.ProbesFile, "probes", "", "`FILE` of probe definitions, one per line (# comments)")
	fs.Var((*multiFlag)(&c.Kprobes), "kprobe", "`SYM[+OFF]`: shorthand for --probe 'p SYM[+OFF] di=%di si=%si dx=%dx' (repeatable)")
	fs.Var((*multiFlag)(&c.Jprobes), "jprobe", "`SYM`: shorthand for --probe 'j SYM arg1=$arg1 … arg6=$arg6' (repeatable)")
	fs.Var((*multiFlag)(&c.Kretprobes), "kretprobe", "`SYM[:MAXACTIVE]`: shorthand for --probe 'r[MAXACTIVE] SYM ret=$retval' (repeatable)")
	fs.BoolVar(&c.Stacktrace, "stacktrace", false, "each event carries the guest kernel stack of its hit (ftrace's stacktrace option)")
	fs.BoolVar(&c.Stealth, "stealth", false, "arm p: lines in the vCPUs' debug registers (at most 4), so the guest reading its text sees no int3; refused where KVM does not deliver hardware breakpoints")
	fs.BoolVar(&c.Fast, "fast", false, "arm p: and r: lines exit-less where they can be: a jmp to a stub that records into a per-vCPU ring in guest memory, with no VM exit per hit; the others, each with its reason, take the int3 path")
	fs.IntVar(&c.FastRecords, "fast-records", session.DefaultFastRecords, "with --fast: records per vCPU ring (a power of two); hits that find it full are counted as lost")
	analysisFlags(fs, c)
	if !boots {
		return
	}
	outputFlags(fs, c)
	fs.StringVar(&c.Record, "record", "", "also write every event, before --filter and --hist, to `FILE`, for 'hvprobe report'")
	fs.StringVar(&c.Mem, "mem", "512M", "guest memory `SIZE`: 512M, 512MiB, 1G")
	fs.IntVar(&c.CPUs, "cpus", 1, "number of vCPUs (1 to 8)")
	fs.Var((*multiFlag)(&c.Disks), "disk", "`PATH[,ro]`: a raw disk image the guest sees as a virtio-blk disk, vda first (repeatable)")
	fs.StringVar(&c.CmdlineAppend, "cmdline-append", "", "`ARGS` added to the kernel command line")
	fs.StringVar(&c.Host, "host", "auto", "KVM `KIND`: auto, hardware, or emulating (adds the instruction masks an emulating KVM needs)")
	fs.BoolVar(&c.NoKASLR, "nokaslr", false, "boot the kernel at its link-time addresses")
	fs.DurationVar(&c.Timeout, "timeout", 0, "stop the guest after this long (0 = never); exit status 124")
	fs.StringVar(&c.Console, "console", "", "where the guest console goes: stderr (default), a `FILE`, or - for stdout (with --events FILE)")
	fs.DurationVar(&c.Interval, "interval", 0, "with --hist: also print the hist tables every interval (they always print at exit)")
	fs.BoolVar(&c.KeepGoing, "keep-going", false, "when a probe cannot be armed once the guest runs, report it and carry on (default: stop the guest, exit status 6)")
	fs.BoolVar(&c.DryRun, "dry-run", false, "check everything, the probes against the kernel image included, and boot nothing (as 'hvprobe check')")
	fs.BoolVar(&c.Interactive, "interactive", false, "send standard input to the guest's serial console")
	fs.BoolVar(&c.Control, "control", false, "open a control socket for live probe changes (see 'hvprobe ctl')")
	fs.StringVar(&c.Inspect, "inspect", "", "when a console line contains this `TEXT`, print the KASLR slide and the guest's task list")
	fs.StringVar(&c.Scenario, "scenario", "", "workload `COMMANDS` for the mini guest's mailbox (e.g. calls:5,poweroff), sent once the workload serves")
	fs.StringVar(&c.SnapshotAt, "snapshot-at", "", "when a console line contains this `TEXT`, snapshot the guest to --snapshot-out and stop")
	fs.StringVar(&c.SnapshotOut, "snapshot-out", "", "snapshot `FILE` written at --snapshot-at")
	fs.StringVar(&c.Restore, "restore", "", "start from this snapshot `FILE` instead of booting (memory, vCPUs and command line are the snapshot's)")
}

// analysisFlags are the filter, hist and format flags of run, check and
// report.
func analysisFlags(fs *flag.FlagSet, c *runner.Config) {
	fs.Var((*multiFlag)(&c.Filters), "filter", "`EVENT:EXPR` (repeatable): pass only EVENT's hits that match an ftrace event filter, e.g. 'myev:count > 100 && comm ~ \"kw*\"'")
	fs.Var((*multiFlag)(&c.Hists), "hist", "`EVENT:hist:SPEC` (keys=...[:vals=...][:sort=...], repeatable): aggregate EVENT's hits as an ftrace hist trigger; the table prints at exit instead of the events")
	fs.StringVar(&c.Format, "format", "trace", "event `FORMAT`: trace (trace_pipe lines), json (JSON lines), or perfetto (a Perfetto timeline in --events FILE)")
}

// outputFlags are where run's and report's events go.
func outputFlags(fs *flag.FlagSet, c *runner.Config) {
	fs.StringVar(&c.Events, "events", "-", "where events, hist tables and counts go: - for stdout, or a `FILE`")
	fs.BoolVar(&c.Count, "count", false, "count events per probe and argument values; print the table at exit instead of every event")
	fs.StringVar(&c.Perfetto, "perfetto", "", "also write the events to `FILE` as a Perfetto (Chrome trace-event JSON) timeline")
}

// cmdReport is `hvprobe report [flags] FILE`.
func cmdReport(args []string) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	c := &runner.Config{Events: "-"}
	analysisFlags(fs, c)
	outputFlags(fs, c)
	fs.StringVar(&c.SystemMap, "system-map", "", "System.map `FILE` for .sym and stacktrace hist keys (default: the one the record names; it must be the same file)")
	fs.Usage = func() { printUsage(fs, "report FILE") }
	files, err := parseInterspersed(fs, args)
	if err != nil {
		return usageError(err)
	}
	if len(files) != 1 {
		return runner.Refusals{"report takes one record FILE (written by 'hvprobe run --record FILE')"}
	}
	return runner.Report(c, files[0])
}

// cmdRun is `hvprobe run`; cmdCheck is `hvprobe check`.
func cmdRun(args []string) error   { return runOrCheck("run", args, true) }
func cmdCheck(args []string) error { return runOrCheck("check", args, false) }

func runOrCheck(name string, args []string, boots bool) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	c := &runner.Config{Events: "-", Mem: "512M", CPUs: 1, Host: "auto", FastRecords: session.DefaultFastRecords}
	runFlags(fs, c, boots)
	fs.Usage = func() { printUsage(fs, name) }
	if err := fs.Parse(args); err != nil {
		return usageError(err)
	}
	if fs.NArg() > 0 {
		return runner.Refusals{fmt.Sprintf("unexpected arguments: %q", fs.Args())}
	}
	c.Given = map[string]bool{}
	fs.Visit(func(f *flag.Flag) { c.Given[f.Name] = true })
	if !boots {
		return runner.Check(c)
	}
	return runner.Run(c)
}

// cmdList is `hvprobe list [-v] PATTERN…`.
func cmdList(args []string) error {
	fs := flag.NewFlagSet("list", flag.ContinueOnError)
	var kernel, sysmap, initrd string
	var btf string
	guestFlags(fs, &kernel, &sysmap, &initrd)
	btfFlag(fs, &btf)
	verbose := fs.Bool("v", false, "add each function's BTF signature")
	fs.Usage = func() { printUsage(fs, "list") }
	patterns, err := parseInterspersed(fs, args)
	if err != nil {
		return usageError(err)
	}
	if len(patterns) == 0 {
		patterns = []string{"*"}
	}
	for _, p := range patterns {
		if err := runner.CheckPattern(p); err != nil {
			return err
		}
	}
	c, err := runner.OpenCatalog(kernel, sysmap, btf)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	return c.List(w, patterns, *verbose)
}

// cmdShow is `hvprobe show FUNC`.
func cmdShow(args []string) error {
	fs := flag.NewFlagSet("show", flag.ContinueOnError)
	var kernel, sysmap, initrd, btf string
	guestFlags(fs, &kernel, &sysmap, &initrd)
	btfFlag(fs, &btf)
	fs.Usage = func() { printUsage(fs, "show") }
	names, err := parseInterspersed(fs, args)
	if err != nil {
		return usageError(err)
	}
	if len(names) != 1 {
		return runner.Refusals{"show takes one function name"}
	}
	c, err := runner.OpenCatalog(kernel, sysmap, btf)
	if err != nil {
		return err
	}
	return c.Show(os.Stdout, names[0])
}

// parseInterspersed parses flags before, between and after the
// positional arguments (`list 'vfs_*' -v`), which flag.Parse stops at.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos, args = append(pos, fs.Arg(0)), fs.Args()[1:]
	}
}

func btfFlag(fs *flag.FlagSet, btf *string) {
	fs.StringVar(btf, "btf", "", "raw BTF `FILE` for the kernel's types, instead of its .BTF section (a vmlinux.btf beside the kernel is used when it has none)")
}
