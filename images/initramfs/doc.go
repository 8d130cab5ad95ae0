// Package initramfs writes uncompressed initramfs images: cpio archives in
// the "newc" format (magic "070701") that the Linux kernel unpacks into its
// rootfs at boot, and the mini image hvprobe's tests boot with.
//
// Uncompressed on purpose: under the instruction-emulating PVM KVM the
// guest's inflate of a 1 MB gzip initramfs took about five minutes, while an
// uncompressed cpio unpacks in under a second.
//
// What the package owns:
//   - the newc header layout and its padding rules: the header plus the
//     NUL-terminated name is padded to a multiple of 4 bytes, and so is the
//     file data; the archive ends with a "TRAILER!!!" entry and is 4-byte
//     aligned, so archives can be concatenated as the kernel allows;
//   - reproducibility: uid, gid and mtime are always 0, inode numbers are
//     assigned in write order, so the same calls give the same bytes;
//   - the mini image's content (WriteMini), including the file the in-kernel
//     workload's "fileread" scenario reads (DataPath, DataText).
//
// Invariants:
//   - Names are stored relative ("dev/console"), cleaned, never with "..",
//     and each at most once. Missing parent directories are written first
//     (mode 0755), because the kernel does not create them and silently
//     drops an entry whose directory is missing.
//   - A Writer never writes after an error or after Close; it returns the
//     first error again.
package initramfs
