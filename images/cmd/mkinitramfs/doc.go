// Command mkinitramfs writes the uncompressed mini initramfs that hvprobe's
// tests boot the mini kernel with (see initramfs.WriteMini and
// images/README.md):
//
//	mkinitramfs -o .cache/images/mini/initramfs.cpio [-busybox /bin/busybox] [-add host=guest]...
//
// Busybox is included when the -busybox file exists (busybox-static's
// /bin/busybox by default); -busybox "" leaves it and /init out. Each -add
// copies a host file into the image, keeping its permission bits.
// The output is written to a temporary file and renamed, so a reader never
// sees a partial image.
package main
