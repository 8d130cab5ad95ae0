package main

import (
	"flag"
	"os"
	"path/filepath"
)

// paths are the default guest files: the mini guest that `make images`
// builds under .cache/images (or $HVPROBE_IMAGES).
type paths struct {
	kernel, systemMap, initrd string
}

func defaultPaths() paths {
	root := os.Getenv("HVPROBE_IMAGES")
	if root == "" {
		root = filepath.Join(".cache", "images")
	}
	mini := filepath.Join(root, "mini", "current")
	return paths{
		kernel:    filepath.Join(mini, "bzImage"),
		systemMap: filepath.Join(mini, "System.map"),
		initrd:    filepath.Join(root, "mini", "initramfs.cpio"),
	}
}

// guestFlags registers the flags that name the guest's files. The
// defaults are the mini guest under $HVPROBE_IMAGES (.cache/images).
func guestFlags(fs *flag.FlagSet, kernel, sysmap, initrd *string) {
	d := defaultPaths()
	fs.StringVar(kernel, "kernel", d.kernel, "guest kernel: `FILE`, a bzImage or vmlinux")
	fs.StringVar(sysmap, "system-map", d.systemMap, "the kernel's System.map `FILE`")
	fs.StringVar(initrd, "initrd", d.initrd, "initramfs `FILE` (uncompressed cpio recommended); empty for none")
}
