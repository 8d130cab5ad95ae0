package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/hvprobe/hvprobe/runner"
)

// TestRefusalsExit2: every input refused before boot ends with exit
// status 2, as README's table says, and creates nothing.
func TestRefusalsExit2(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk")
	if err := os.WriteFile(junk, []byte("not a kernel, not a map\x00\x01"), 0o644); err != nil {
		t.Fatal(err)
	}
	files := []string{"--kernel", junk, "--system-map", junk, "--initrd", ""}
	events := filepath.Join(dir, "events.out")
	record := filepath.Join(dir, "record.jsonl")
	for _, args := range [][]string{
		{"extra", "args"},
		{"--bogus"},
		{"--cpus", "9"},
		{"--mem", "1"},
		{"--mem", "0G"},
		{"--host", "bogus"},
		{"--format", "xml"},
		{"--timeout", "-5s"},
		{"--restore", junk, "--mem", "1G"},
		{"--snapshot-at", "x"},
		{"--disk", filepath.Join(dir, "missing")},
		{"--disk", dir},          // a directory
		{"--disk", junk},         // 24 bytes: not whole sectors
		{"--disk", junk + ",rw"}, // an unknown option
		{"--kernel", filepath.Join(dir, "missing"), "--system-map", junk},
		append(files, "--events", events, "--record", record),    // a garbage kernel and map
		append(files, "--probes", filepath.Join(dir, "missing")), // a missing probe file
	} {
		if got := runner.Code(cmdRun(args)); got != runner.ExitRefused {
			t.Errorf("run %q: exit %d, want 2", args, got)
		}
	}
	for _, f := range []string{events, record} {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("a refused run created %s: %v", f, err)
		}
	}
	for _, args := range [][]string{{}, {junk, junk}, {filepath.Join(dir, "missing")}, {junk}, {junk, "--format", "xml"}} {
		if got := runner.Code(cmdReport(args)); got != runner.ExitRefused {
			t.Errorf("report %q: exit %d, want 2", args, got)
		}
	}
	if got := runner.Code(cmdCheck([]string{"--kernel", junk, "--system-map", junk})); got != runner.ExitRefused {
		t.Errorf("check with a garbage kernel: exit %d, want 2", got)
	}
	if got := runner.Code(cmdBench([]string{"--calls", "0", "--kernel", junk, "--system-map", junk, "--initrd", junk})); got != runner.ExitRefused {
		t.Errorf("bench --calls 0: exit %d, want 2", got)
	}
}
