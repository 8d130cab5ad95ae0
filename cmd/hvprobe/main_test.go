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
		{"--kernel", filepath.Join(dir, "missing"), "--system-map", junk},
		append(files, "--events", events),                        // a garbage kernel and map
		append(files, "--probes", filepath.Join(dir, "missing")), // a missing probe file
	} {
		if got := runner.Code(cmdRun(args)); got != runner.ExitRefused {
			t.Errorf("run %q: exit %d, want 2", args, got)
		}
	}
	if _, err := os.Stat(events); !os.IsNotExist(err) {
		t.Errorf("a refused run created its --events file: %v", err)
	}
	if got := runner.Code(cmdCheck([]string{"--kernel", junk, "--system-map", junk})); got != runner.ExitRefused {
		t.Errorf("check with a garbage kernel: exit %d, want 2", got)
	}
	if got := runner.Code(cmdBench([]string{"--calls", "0", "--kernel", junk, "--system-map", junk, "--initrd", junk})); got != runner.ExitRefused {
		t.Errorf("bench --calls 0: exit %d, want 2", got)
	}
}
