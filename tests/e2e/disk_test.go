package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"github.com/hvprobe/hvprobe/tests/kvmtest"
)

// TestCLIDisk boots the mini guest with `--disk IMAGE` (virtio-blk over
// virtio-pci): the workload writes 16 blocks with synchronous bios,
// flushes and reads them back. After power-off the image holds exactly
// those bytes and nothing else changed; a probe on the driver's
// virtio_queue_rq fires once per request the device served, and a
// kretprobe on submit_bio_wait once per bio the workload made (16
// writes, the flush, 16 reads).
func TestCLIDisk(t *testing.T) {
	kvmtest.RequireKVM(t)
	bin := hvprobeBinary(t)
	kernel, sysmap, initrd := miniPaths()
	const blocks, size = 16, 1 << 20
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, bytes.Repeat([]byte{0xa5}, size), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "--kernel", kernel, "--system-map", sysmap, "--initrd", initrd,
		"--timeout", "10m", "--format", "json", "--disk", img,
		"--probe", "p:blk/queue_rq virtio_queue_rq",
		"--probe", "r:blk/sbw submit_bio_wait ret=$retval:s32",
		"--cmdline-append", fmt.Sprintf("hvprobe_wl=disk:%d,poweroff", blocks))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("exit %v, want 0; stderr:\n%s", err, tail(stderr.String(), 40))
	}
	want := fmt.Sprintf("HVWL: disk n=%d written=%d bad=0 flush=0 err=0", blocks, blocks)
	if !bytes.Contains(stderr.Bytes(), []byte(want)) {
		t.Fatalf("no %q on the console:\n%s", want, tail(stderr.String(), 40))
	}
	m := regexp.MustCompile(`hvprobe: vda \(.*\): (\d+) requests: (\d+) reads \((\d+) bytes\), (\d+) writes \((\d+) bytes\), (\d+) flushes`).FindSubmatch(stderr.Bytes())
	if m == nil {
		t.Fatalf("no disk statistics line:\n%s", tail(stderr.String(), 20))
	}
	num := func(i int) int { n, _ := strconv.Atoi(string(m[i])); return n }
	requests, writes, written, flushes := num(1), num(4), num(5), num(6)
	if writes != blocks || written != blocks*4096 || flushes != 1 {
		t.Errorf("device: %d writes of %d bytes and %d flushes, want %d, %d and 1", writes, written, flushes, blocks, blocks*4096)
	}
	queued, sbw := 0, 0
	for _, l := range bytes.Split(bytes.TrimSpace(stdout.Bytes()), []byte("\n")) {
		var ev struct {
			Event string         `json:"event"`
			Args  map[string]any `json:"args"`
		}
		if err := json.Unmarshal(l, &ev); err != nil {
			t.Fatalf("not JSON: %q", l)
		}
		switch ev.Event {
		case "queue_rq":
			queued++
		case "sbw":
			if ev.Args["ret"] != 0.0 {
				t.Errorf("submit_bio_wait returned %v", ev.Args["ret"])
			}
			sbw++
		}
	}
	if queued != requests {
		t.Errorf("virtio_queue_rq fired %d times; the device served %d requests", queued, requests)
	}
	if sbw != 2*blocks+1 {
		t.Errorf("submit_bio_wait returned %d times, want %d", sbw, 2*blocks+1)
	}
	got, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < size; i++ {
		w := byte(0xa5)
		if blk := i / 4096; blk < blocks {
			w = byte(blk*131 + i%4096*7 + 1)
		}
		if got[i] != w {
			t.Fatalf("image byte %#x is %#x, want %#x", i, got[i], w)
		}
	}
}
