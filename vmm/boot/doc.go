// Package boot writes what the x86 64-bit boot protocol
// (Documentation/arch/x86/boot.rst) and an SMP guest need in guest RAM
// before the first KVM_RUN: the zero page with its e820 map, command line
// and setup_data (an RNG seed, hvprobe's private region), the GDT and the
// identity page tables startup_64 runs on, and, for more than one vCPU,
// an MP table and an ACPI MADT. It works on a []byte of guest RAM and
// knows nothing of KVM; vmm sets the registers that point at it.
package boot
