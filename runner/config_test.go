package runner

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hvprobe/hvprobe/probedef"
)

// files gives a Config real (empty) kernel and map files, so that only
// the refusal under test refuses.
func files(t *testing.T) Config {
	dir := t.TempDir()
	c := Config{Mem: "512M", CPUs: 1, Host: "auto", Format: "trace", Events: "-", FastRecords: 512, Given: map[string]bool{},
		Kernel: filepath.Join(dir, "kernel"), SystemMap: filepath.Join(dir, "map")}
	for _, f := range []string{c.Kernel, c.SystemMap} {
		if err := os.WriteFile(f, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// TestValidateRefusals: every flag refused before anything is opened,
// each with exit status 2 and a message naming the flag.
func TestValidateRefusals(t *testing.T) {
	if c := files(t); c.Validate() != nil {
		t.Fatalf("the defaults are refused: %v", c.Validate())
	}
	for _, tc := range []struct {
		name string
		set  func(c *Config)
		want string
	}{
		{"snapshot-at alone", func(c *Config) { c.SnapshotAt = "HVWL: ready" }, "--snapshot-at and --snapshot-out go together"},
		{"snapshot-out alone", func(c *Config) { c.SnapshotOut = "x.snap" }, "--snapshot-at and --snapshot-out go together"},
		{"snapshot with probes", func(c *Config) { c.SnapshotAt, c.SnapshotOut, c.Kprobes = "m", "x.snap", []string{"f"} }, "a snapshot holds no probes"},
		{"restore --mem", func(c *Config) { c.Restore, c.Given["mem"] = c.Kernel, true }, "--restore: --mem is the snapshot's own"},
		{"restore --cmdline-append", func(c *Config) { c.Restore, c.Given["cmdline-append"] = c.Kernel, true }, "--cmdline-append is the snapshot's own"},
		{"restore missing", func(c *Config) { c.Restore = "/nonexistent.snap" }, "--restore: stat /nonexistent.snap"},
		{"bad size", func(c *Config) { c.Mem = "lots" }, `--mem: "lots" is not a size`},
		{"zero size", func(c *Config) { c.Mem = "0M" }, "zero bytes"},
		{"tiny memory", func(c *Config) { c.Mem = "1" }, "too little"},
		{"nine cpus", func(c *Config) { c.CPUs = 9 }, "9 vCPUs requested"},
		{"no cpu", func(c *Config) { c.CPUs = 0 }, "0 vCPUs requested"},
		{"host", func(c *Config) { c.Host = "bogus" }, `--host: "bogus"`},
		{"format", func(c *Config) { c.Format = "xml" }, `--format: "xml"`},
		{"perfetto to stdout", func(c *Config) { c.Format = "perfetto" }, "--format perfetto writes the trace to --events FILE"},
		{"console with events", func(c *Config) { c.Console = "-" }, "share stdout"},
		{"negative timeout", func(c *Config) { c.Timeout = -1 }, "--timeout -1ns"},
		{"interval without hist", func(c *Config) { c.Interval = 1 }, "give --hist"},
		{"fast and stealth", func(c *Config) { c.Fast, c.Stealth = true, true }, "--fast and --stealth"},
		{"ring size", func(c *Config) { c.Fast, c.FastRecords = true, 300 }, "--fast-records 300"},
		{"ring without fast", func(c *Config) { c.Given["fast-records"] = true }, "give --fast"},
		{"stealth shorthand", func(c *Config) { c.Stealth, c.Jprobes = true, []string{"f"} }, "--stealth: give the probes as p: lines"},
		{"kprobe", func(c *Config) { c.Kprobes = []string{"+4"} }, `--kprobe "+4": want SYM[+OFF]`},
		{"jprobe offset", func(c *Config) { c.Jprobes = []string{"f+4"} }, "jprobes sit at offset 0"},
		{"kretprobe maxactive", func(c *Config) { c.Kretprobes = []string{"f:x"} }, `maxactive "x"`},
		{"missing kernel", func(c *Config) { c.Kernel = "/nonexistent" }, "--kernel: stat /nonexistent"},
		{"directory as map", func(c *Config) { c.SystemMap = os.TempDir() }, "--system-map " + os.TempDir() + ": not a regular file"},
		{"missing probes file", func(c *Config) { c.ProbesFile = "/nonexistent.probes" }, "--probes: stat"},
		{"missing initrd", func(c *Config) { c.Initrd = "/nonexistent.cpio" }, "--initrd: stat"},
	} {
		c := files(t)
		tc.set(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) || Code(err) != ExitRefused {
			t.Errorf("%s: %v (exit %d), want %q and exit 2", tc.name, err, Code(err), tc.want)
		}
	}
	// All refusals come at once.
	c := files(t)
	c.Host, c.Format, c.CPUs = "bogus", "xml", 9
	if bad, _ := c.Validate().(Refusals); len(bad) != 3 {
		t.Errorf("three bad flags: %q", bad)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint64{"512m": 512 << 20, "512M": 512 << 20, "512MiB": 512 << 20, "512MB": 512 << 20,
		"1G": 1 << 30, "1g": 1 << 30, "1GiB": 1 << 30, "64k": 64 << 10, "4096": 4096} {
		if n, err := ParseSize(in); err != nil || n != want {
			t.Errorf("%s: %d %v, want %d", in, n, err, want)
		}
	}
	for _, in := range []string{"lots", "12Q", "", "M", "-1M", "0", "0G", "99999999999G"} {
		if n, err := ParseSize(in); err == nil {
			t.Errorf("%q accepted as %d", in, n)
		}
	}
}

// TestShorthandLines: --kprobe, --jprobe and --kretprobe are probe lines,
// so that --format, --filter and --hist apply to them.
func TestShorthandLines(t *testing.T) {
	c := files(t)
	c.Kprobes = []string{"vfs_read+0x10", "dup:2+4"}
	c.Jprobes = []string{"do_sys_open"}
	c.Kretprobes = []string{"vfs_read", "dup:2:16"}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"p vfs_read+0x10 di=%di si=%si dx=%dx", "p dup:2+4 di=%di si=%si dx=%dx",
		"j do_sys_open arg1=$arg1 arg2=$arg2 arg3=$arg3 arg4=$arg4 arg5=$arg5 arg6=$arg6",
		"r vfs_read ret=$retval", "r16 dup:2 ret=$retval",
	}
	if strings.Join(c.lines, "\n") != strings.Join(want, "\n") {
		t.Fatalf("lines:\n%s\nwant:\n%s", strings.Join(c.lines, "\n"), strings.Join(want, "\n"))
	}
	for _, l := range c.lines {
		if _, err := probedef.Parse(l); err != nil {
			t.Errorf("%s: %v", l, err)
		}
	}
}
