// Package introspect reads and writes a running Linux/x86-64 guest from the
// host: it walks the guest's page tables, maps pages into them, accesses
// guest-virtual memory, recovers the KASLR slide and physical load offset,
// and finds tasks (the current one per vCPU, and the global task list).
//
// Everything here is a pure function of guest-physical memory (vmm.PhysMem),
// register state (vmm.Sregs and MSRs) and symbol addresses from System.map,
// so it is tested on synthesized page tables and task structures without
// KVM.
//
// What the package owns:
//   - the x86-64 4- and 5-level paging format (Translate, MapPage,
//     UnmapPage), as the CPU interprets it, not as Linux's C macros do;
//   - VirtMem, a (PhysMem, CR3, LA57) triple that reads and writes across
//     page boundaries;
//   - the Linux conventions it relies on: __START_KERNEL_map, the 2 MiB
//     KASLR alignment, zero-based x86-64 per-cpu symbols, PTI's
//     kernel/user PGD pair, and circular task lists.
//
// It does not own symbol parsing or struct layouts: callers pass a Symbols
// lookup (unslid System.map values) and a TaskLayout (from BTF or a table).
//
// Invariants and preconditions:
//   - Precondition: every vCPU that can touch the structures being read or
//     written is stopped. Page tables, per-cpu data and task lists are
//     changed by the guest without any lock the host could take; a walk
//     done while a vCPU runs may see torn state. The walkers stay safe
//     anyway: every loop is bounded and every pointer is checked, so torn
//     state yields an error, never a hang or a panic.
//   - Nothing here flushes guest TLBs. Installing a mapping where none was
//     present needs no flush (x86 never caches non-present translations);
//     removing or changing one does, and that is the caller's job (see
//     UnmapPage).
//   - Addresses named "unslid" are System.map values; "slid" ones are
//     unslid + KASLR.Slide. Per-cpu symbols are offsets and never slide.
//
// Unwinder (unwind.go) walks a stopped vCPU's kernel stack on the host:
// with a guest.ORC as the kernel's ORC unwinder does (sp/bp rules, full
// and iret-only pt_regs frames, stopping at a user-mode pt_regs or an
// end-of-stack entry), else along the rbp chain. Every walk is bounded
// (MaxDepth, a repeated frame, an rbp that does not move up) and returns
// the frames found even when it stops early with ErrUnwind. Return maps
// kretprobe trampoline addresses back to the real return addresses,
// which only the probe engine knows.
package introspect
