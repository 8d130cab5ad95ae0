package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	kguest "github.com/hvprobe/hvprobe/guest"
	"github.com/hvprobe/hvprobe/session"
	"github.com/hvprobe/hvprobe/tests/kvmtest"
	"github.com/hvprobe/hvprobe/vmm"
)

// TestUserSpaceDisk boots Debian's stock kernel with a disk (virtio-blk on
// virtio-pci) and the disk initramfs, whose /init loads the kernel's own
// virtio modules from its .deb and writes 16 blocks to /dev/vda with
// O_DIRECT, fsyncs and reads them back (images/user/hvdisk.c). After the
// reboot the image holds exactly those bytes; a probe on
// blk_mq_submit_bio fires once per request the device served (O_DIRECT
// bios of one block each do not merge), and a kretprobe on blkdev_fsync
// sees the one fsync succeed. It needs guest user space, so like
// TestUserSpaceSyscalls it runs in the nested KVM (`make e2e-user`).
func TestUserSpaceDisk(t *testing.T) {
	kvmtest.RequireKVM(t)
	if emulatingHost() {
		t.Skip("this KVM emulates guest kernel mode (PVM): guest user space cannot make system calls (docs/QUIRKS.md #13); `make e2e-user` runs this test in the nested KVM")
	}
	dir := filepath.Join(imagesDir(), "stock")
	initrd := filepath.Join(imagesDir(), "user", "disk.cpio")
	if _, err := os.Stat(initrd); err != nil {
		t.Fatalf("missing image (make images-stock images-user): %v", err)
	}
	k, err := kguest.OpenKernel(filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "System.map"))
	if err != nil {
		t.Fatal(err)
	}
	const blocks, size = 16, 4 << 20
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, bytes.Repeat([]byte{0xa5}, size), 0o644); err != nil {
		t.Fatal(err)
	}
	var stats []vmm.DiskStats
	lines, events, _ := bootUser(t, k, dir, initrd, 1, []string{
		"p:blk/submit blk_mq_submit_bio",
		"r:blk/fsync blkdev_fsync ret=$retval:s32",
	}, func(s *session.Session) { stats = s.VM.Disks() }, func(o *session.Options) {
		o.Disks = []vmm.Disk{{Path: img}}
		o.CmdlineAppend += fmt.Sprintf(" hvdisk.n=%d", blocks)
	})
	want := fmt.Sprintf("HVDISK: disk n=%d written=%d bad=0 fsync=0", blocks, blocks)
	var seen bool
	for _, l := range lines {
		seen = seen || strings.Contains(l.Text, want)
	}
	if !seen {
		t.Fatalf("no %q on the console", want)
	}
	if len(stats) != 1 {
		t.Fatalf("disk statistics %+v", stats)
	}
	st := stats[0]
	t.Logf("device: %d requests: %d reads, %d writes, %d flushes, %d other", st.Requests(), st.Reads, st.Writes, st.Flushes, st.Other)
	if st.Writes != blocks || st.BytesWritten != blocks*4096 || st.Flushes == 0 {
		t.Errorf("device: %d writes of %d bytes, %d flushes; want %d writes of %d bytes and a flush", st.Writes, st.BytesWritten, st.Flushes, blocks, blocks*4096)
	}
	var submits, fsyncs int
	for _, ev := range events {
		switch ev.Def.Event {
		case "submit":
			submits++
		case "fsync":
			fsyncs++
			if rv := value(t, ev, "ret").S64; rv != 0 {
				t.Errorf("blkdev_fsync returned %d", rv)
			}
		}
	}
	if uint64(submits) != st.Requests() || fsyncs != 1 {
		t.Errorf("blk_mq_submit_bio fired %d times for %d requests; blkdev_fsync returned %d times, want 1", submits, st.Requests(), fsyncs)
	}
	got, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	for i := range got {
		w := byte(0xa5)
		if b := i / 4096; b < blocks {
			w = byte(b*131 + i%4096*7 + 1)
		}
		if got[i] != w {
			t.Fatalf("image byte %#x is %#x, want %#x", i, got[i], w)
		}
	}
}
