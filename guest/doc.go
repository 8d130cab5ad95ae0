// Package guest describes the guest kernel as data: its symbols (from
// System.map), its image (kimage) and its types (BTF).
//
// It owns: the System.map parser and SymbolTable (name and address
// lookups, KASLR slide views, text ranges, per-CPU detection), the
// map-to-image consistency check (Kernel.Verify), BTF queries (Types),
// symbol demangling, the "sym+off" syntax, and the kernel's
// self-patching tables (PatchSites: alternatives, retpolines, return
// thunks, paravirt, SMP locks, endbr seals, static calls, jump labels,
// ftrace's mcount sites, the exception table, text freed after boot).
//
// Invariants:
//   - A SymbolTable stores link-time (unrelocated) addresses and is
//     immutable once parsed; Slid returns a view sharing its storage in
//     which every returned Symbol.Addr, and every address argument, is a
//     runtime address. Per-CPU and absolute symbols never slide.
//   - Address lookups (SymbolAt, InText) do not allocate.
//   - Parsers read io.Reader or []byte and return errors naming the input
//     line; they never panic on bad input.
//   - Nothing here touches a running VM: reading guest memory belongs to
//     introspect, which is above this package.
//
// ORC (orc.go): ReadORC and Kernel.ORC decode the kernel's ORC unwind
// tables (.orc_unwind_ip, .orc_unwind) into a sorted, immutable ORC whose
// Lookup binary-searches an address (link-time, or runtime in a Slid
// view). struct orc_entry changed twice, and the layout is chosen by
// .orc_header (present from 6.4) and else the release: 6.1-6.2
// sp_reg:4 bp_reg:4 type:2 end:1; 6.3 type:2 signal:1 end:1; 6.4+ type:3
// signal:1 with its own undefined and end-of-stack types. ORCEntry
// normalizes all three. .orc_lookup is not read.
package guest
