package main

import (
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
