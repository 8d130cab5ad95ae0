package runner

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hvprobe/hvprobe/stub"
	"github.com/hvprobe/hvprobe/vmm"
)

// Config is one `hvprobe run` (or `hvprobe check`): its flags as given.
type Config struct {
	Kernel, SystemMap, Initrd string
	BTF                       string // raw BTF for the kernel's types, instead of its .BTF section

	Mem           string // a size: 512M, 512MiB, 1G
	CPUs          int
	CmdlineAppend string
	Host          string   // auto, hardware or emulating
	Disks         []string // PATH[,ro] each
	NoKASLR       bool
	Timeout       time.Duration
	Console       string // "" for stderr, or a file
	Interactive   bool

	// Probe lines in ftrace's kprobe_events syntax, and a file of them.
	// Kprobes, Jprobes and Kretprobes are the --kprobe, --jprobe and
	// --kretprobe flags: shorthand that becomes probe lines.
	Probes                       []string
	ProbesFile                   string
	Kprobes, Jprobes, Kretprobes []string
	Stacktrace, Stealth, Fast    bool
	FastRecords                  int
	KeepGoing                    bool

	Format   string // trace, json or perfetto
	Events   string // "-" for stdout, or a file
	Count    bool
	Filters  []string
	Hists    []string
	Interval time.Duration
	Perfetto string
	// Record is --record FILE, where every event goes before the
	// filters and hists, for Report.
	Record string

	Control  bool
	Inspect  string
	Scenario string

	SnapshotAt, SnapshotOut, Restore string

	// DryRun checks everything, the probes against the kernel image
	// included, and boots nothing.
	DryRun bool
	// Given names the flags given on the command line: --restore refuses
	// those the snapshot owns.
	Given map[string]bool

	memSize  uint64
	host     *vmm.Host
	disks    []vmm.Disk
	kernelOK bool     // the kernel and System.map files are there to check probes against
	lines    []string // Probes, then the shorthand flags' lines
}

// Validate runs every check that needs no kernel, before anything is
// opened, and returns all refusals at once (Refusals, exit status 2).
func (c *Config) Validate() error {
	var bad Refusals
	no := func(format string, args ...any) { bad = append(bad, fmt.Sprintf(format, args...)) }
	if (c.SnapshotAt == "") != (c.SnapshotOut == "") {
		no("--snapshot-at and --snapshot-out go together")
	}
	c.lines = append([]string(nil), c.Probes...)
	for _, f := range []struct {
		flag  string
		specs []string
		line  func(string) (string, error)
	}{{"kprobe", c.Kprobes, kprobeLine}, {"jprobe", c.Jprobes, jprobeLine}, {"kretprobe", c.Kretprobes, kretprobeLine}} {
		for _, spec := range f.specs {
			l, err := f.line(spec)
			if err != nil {
				no("--%s %q: %v", f.flag, spec, err)
				continue
			}
			c.lines = append(c.lines, l)
		}
	}
	if c.SnapshotOut != "" && (len(c.lines) > 0 || c.ProbesFile != "" || c.Control) {
		no("--snapshot-out: a snapshot holds no probes; take it without probes and add them after --restore")
	}
	c.disks = nil
	for _, spec := range c.Disks {
		d, err := parseDisk(spec)
		if err == nil {
			err = vmm.CheckDisk(d)
		}
		if err != nil {
			no("--disk %s: %v", spec, err)
			continue
		}
		c.disks = append(c.disks, d)
	}
	if len(c.Disks) > 0 && (c.SnapshotAt != "" || c.Restore != "") {
		no("--disk: a guest with disks cannot be snapshotted or restored (its image would not match its memory)")
	}
	if c.Restore != "" {
		for _, f := range []string{"mem", "cpus", "cmdline-append", "nokaslr", "initrd"} {
			if c.Given[f] {
				no("--restore: --%s is the snapshot's own", f)
			}
		}
	}
	var err error
	if c.memSize, err = ParseSize(c.Mem); err != nil {
		no("--mem: %v", err)
	} else if c.Restore == "" {
		if err := vmm.CheckShape(c.memSize, c.CPUs); err != nil {
			no("--mem %s --cpus %d: %v", c.Mem, c.CPUs, err)
		}
	}
	switch c.Host {
	case "auto", "":
	case "hardware":
		c.host = &vmm.Host{}
	case "emulating":
		c.host = &vmm.Host{Emulating: true}
	default:
		no("--host: %q is not auto, hardware or emulating", c.Host)
	}
	c.checkOutput(no)
	if c.Console == "-" && c.Events == "-" {
		no("--console -: the console and the events would share stdout; give --events FILE")
	}
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{{"timeout", c.Timeout}, {"interval", c.Interval}} {
		if d.v < 0 {
			no("--%s %v: a duration is not negative", d.flag, d.v)
		}
	}
	if c.Interval > 0 && len(c.Hists) == 0 {
		no("--interval prints hist tables: give --hist")
	}
	if c.Fast {
		if c.Stealth {
			no("--fast and --stealth: a p: line is either a jmp in guest text or a debug register, not both")
		}
		if err := stub.CheckRecords(c.FastRecords); err != nil {
			no("--fast-records %d: %v", c.FastRecords, err)
		}
	} else if c.Given["fast-records"] {
		no("--fast-records sizes the rings of --fast: give --fast")
	}
	if c.Stealth && (len(c.Kprobes)+len(c.Jprobes)+len(c.Kretprobes) > 0) {
		no("--stealth: give the probes as p: lines (--probe, --probes); --kprobe, --jprobe and --kretprobe make int3 probes")
	}
	files := []struct{ flag, path string }{{"kernel", c.Kernel}, {"system-map", c.SystemMap}, {"btf", c.BTF}, {"probes", c.ProbesFile}, {"restore", c.Restore}}
	if c.Restore == "" && !c.DryRun {
		files = append(files, struct{ flag, path string }{"initrd", c.Initrd})
	}
	c.kernelOK = true
	for _, f := range files {
		if f.flag == "kernel" || f.flag == "system-map" {
			if _, err := os.Stat(f.path); err != nil || f.path == "" {
				c.kernelOK = false
			}
		}
		if f.path == "" {
			if f.flag == "kernel" || f.flag == "system-map" {
				no("--%s: no file given", f.flag)
			}
			continue
		}
		if st, err := os.Stat(f.path); err != nil {
			no("--%s: %v", f.flag, err)
		} else if !st.Mode().IsRegular() {
			no("--%s %s: not a regular file", f.flag, f.path)
		}
	}
	if len(bad) > 0 {
		return bad
	}
	return nil
}

// parseDisk reads --disk PATH[,ro].
func parseDisk(spec string) (vmm.Disk, error) {
	path, opts, _ := strings.Cut(spec, ",")
	d := vmm.Disk{Path: path}
	if path == "" {
		return d, fmt.Errorf("want PATH[,ro]")
	}
	for _, o := range strings.Split(opts, ",") {
		switch o {
		case "":
		case "ro":
			d.ReadOnly = true
		default:
			return d, fmt.Errorf("unknown option %q (want PATH[,ro])", o)
		}
	}
	return d, nil
}

// checkOutput refuses a --format, --events and --perfetto combination
// that cannot be written (run's and report's).
func (c *Config) checkOutput(no func(format string, args ...any)) {
	switch c.Format {
	case "trace", "json":
	case "perfetto":
		if c.Events == "-" || c.Perfetto != "" {
			no("--format perfetto writes the trace to --events FILE (and replaces --perfetto)")
		}
	default:
		no("--format: %q is not trace, json or perfetto", c.Format)
	}
}

// ParseSize reads a memory size: a number of bytes with an optional unit,
// k, M or G (binary, any case, with or without "iB" or "B").
func ParseSize(s string) (uint64, error) {
	num := strings.TrimRight(s, "kKmMgGiIbB")
	unit := strings.ToLower(strings.TrimSuffix(strings.TrimSuffix(s[len(num):], "B"), "b"))
	unit = strings.TrimSuffix(unit, "i")
	shift, ok := map[string]uint{"": 0, "k": 10, "m": 20, "g": 30}[unit]
	n, err := strconv.ParseUint(num, 10, 64)
	if !ok || err != nil || n > (1<<63)>>shift {
		return 0, fmt.Errorf("%q is not a size like 512M, 512MiB or 1G", s)
	}
	if n == 0 {
		return 0, fmt.Errorf("%q is zero bytes", s)
	}
	return n << shift, nil
}

// kprobeLine is --kprobe SYM[+OFF] as a probe line: a hit shows %di,
// %si and %dx, as the flag always did.
func kprobeLine(spec string) (string, error) {
	if sym, _, _ := strings.Cut(spec, "+"); sym == "" || strings.ContainsAny(spec, " \t") {
		return "", fmt.Errorf("want SYM[+OFF]")
	}
	return "p " + spec + " di=%di si=%si dx=%dx", nil
}

// jprobeArgs is how many arguments a --jprobe hit shows.
const jprobeArgs = 6

// jprobeLine is --jprobe SYM: the function's first six arguments.
func jprobeLine(sym string) (string, error) {
	if sym == "" || strings.ContainsAny(sym, "+ \t") {
		return "", fmt.Errorf("want a function name (jprobes sit at offset 0)")
	}
	l := "j " + sym
	for i := 1; i <= jprobeArgs; i++ {
		l += fmt.Sprintf(" arg%d=$arg%d", i, i)
	}
	return l, nil
}

// kretprobeLine is --kretprobe SYM[:MAXACTIVE]: each return value (the
// event carries the call's duration). SYM may be NAME:N, the N-th of
// several same-named symbols, so MAXACTIVE is the last field.
func kretprobeLine(spec string) (string, error) {
	sym, r := spec, "r"
	if i := strings.LastIndexByte(spec, ':'); i >= 0 {
		n, err := strconv.Atoi(spec[i+1:])
		if err != nil || n <= 0 {
			return "", fmt.Errorf("maxactive %q is not a positive number", spec[i+1:])
		}
		sym, r = spec[:i], fmt.Sprintf("r%d", n)
	}
	if sym == "" || strings.ContainsAny(sym, "+ \t") {
		return "", fmt.Errorf("want SYM[:MAXACTIVE]")
	}
	return r + " " + sym + " ret=$retval", nil
}
