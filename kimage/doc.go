// Package kimage parses a Linux x86-64 kernel image — a bzImage or an ELF
// vmlinux — and loads it into guest RAM, applying KASLR relocations itself.
//
// It owns: the setup header mirror (SetupHeader, bootparam.h), payload
// decompression (gzip, xz without BCJ, legacy LZ4, zstd), the split of the
// decompressed payload into the ELF and its appended relocation table
// (CONFIG_X86_NEED_RELOCS), and the relocation algorithm of
// arch/x86/boot/compressed/misc.c handle_relocations.
//
// Invariants:
//   - Pure parsing: no KVM, no files. Open takes bytes; Image never refers
//     to memory it did not get from Open.
//   - Every offset read from the input is bounds-checked; bad or truncated
//     input yields an error wrapping ErrFormat (or ErrUnsupported), never a
//     panic.
//   - Load never writes outside the ram slice it is given and never applies
//     part of a relocation table: all relocations are checked before the
//     first is applied.
//   - An Image is immutable after Open and safe for concurrent readers.
package kimage
