package initramfs

import (
	"fmt"
	"io"
	"io/fs"
)

// DataPath is the file the workload's "fileread" scenario reads
// (HVWL_FILE in images/mini/hvprobe_wl.c).
const DataPath = "/hvwl/data.txt"

// DataLines and DataLineSize shape DataText: 256 lines of 20 bytes, 5120
// bytes, so that reading it with the workload's 4096-byte buffer takes two
// kernel_read calls with data and a third that returns 0.
const (
	DataLines    = 256
	DataLineSize = len("hvwl-data-line-0000\n")
	DataSize     = DataLines * DataLineSize
)

// DataText returns the content of DataPath: "hvwl-data-line-0000\n" through
// "hvwl-data-line-0255\n". The workload reports its length as bytes=5120.
func DataText() []byte {
	b := make([]byte, 0, DataSize)
	for i := range DataLines {
		b = fmt.Appendf(b, "hvwl-data-line-%04d\n", i)
	}
	return b
}

// InitScript is /init when busybox is included. It only runs where guest
// user space can make system calls (hardware KVM, not PVM). It prints
// "HVINIT: up", runs /hvwl/init.sh if one was added, then reboots, which a
// guest booted with reboot=k turns into an i8042 reset: a clean exit for
// the VMM.
const InitScript = `#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
echo "HVINIT: up"
if [ -f /hvwl/init.sh ]; then /bin/busybox sh /hvwl/init.sh; fi
echo "HVINIT: reboot"
exec /bin/busybox reboot -f
`

// MiniFile is an extra file for the mini image.
type MiniFile struct {
	Name string // path in the guest, e.g. "/hvwl/init.sh"
	Mode fs.FileMode
	Data []byte
}

// MiniOptions says what goes into the mini image beyond its fixed content.
type MiniOptions struct {
	// Busybox is a static busybox binary. When set, the image gets
	// /bin/busybox, /bin/sh and InitScript as /init; when nil it has no
	// /init, which is fine for workloads that never leave the kernel
	// (serve, or a command list that ends in poweroff).
	Busybox []byte
	// Extra files, written after the fixed content. Their names must not
	// repeat a fixed one.
	Extra []MiniFile
}

// WriteMini writes the mini initramfs to w: /dev/console (c 5 1, needed for
// init's stdio), empty /proc, /sys and /tmp, DataPath with DataText, and
// what opts adds. The output depends only on opts.
func WriteMini(w io.Writer, opts MiniOptions) error {
	cw := NewWriter(w)
	for _, d := range []string{"dev", "proc", "sys", "tmp", "hvwl"} {
		if err := cw.Dir(d, 0o755); err != nil {
			return err
		}
	}
	if err := cw.CharDev("dev/console", 0o600, 5, 1); err != nil {
		return err
	}
	if err := cw.File(DataPath, 0o644, DataText()); err != nil {
		return err
	}
	if opts.Busybox != nil {
		if err := cw.Dir("bin", 0o755); err != nil {
			return err
		}
		if err := cw.File("bin/busybox", 0o755, opts.Busybox); err != nil {
			return err
		}
		if err := cw.Symlink("bin/sh", "busybox"); err != nil {
			return err
		}
		if err := cw.File("init", 0o755, []byte(InitScript)); err != nil {
			return err
		}
	}
	for _, f := range opts.Extra {
		if err := cw.File(f.Name, f.Mode, f.Data); err != nil {
			return err
		}
	}
	return cw.Close()
}
