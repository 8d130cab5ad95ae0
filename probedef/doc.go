// Package probedef owns probe definitions written in ftrace's
// kprobe_events syntax (Documentation/trace/kprobetrace.rst): parsing
// them, evaluating their fetch arguments against a stopped guest, and
// printing the resulting events as trace_pipe lines or JSON.
//
// Lines kprobe_events accepts are accepted unchanged, with the kernel's
// names, defaults and limits: group "kprobes", events p_SYM_OFFS /
// r_SYM_OFFS, arguments arg1, arg2… (or a bare parameter's own name),
// x64 when no type is given, MAX_TRACE_ARGS 128, 63-byte expressions,
// x86-64 pt_regs register names (%ax, not %rax). Errors point at a column
// as ftrace's error_log does.
//
// One extension, chosen to stand out: a "j" probe type,
//
//	j[:[GRP/]EVENT] [MOD:]SYM[+0] [FETCHARGS]
//
// is a jprobe: a probe on a function entry whose handler sees the
// function's arguments. Its fetch arguments are evaluated at entry, as
// for "p" on SYM+0; $retval is not available. Everything else is ftrace's.
//
// BTF arguments as kprobe_events takes them: parameter names, and field
// accesses after a name, $argN or $retval ("file->f_path.dentry->d_name.name",
// "->" through a pointer, "." into an embedded struct). ResolveBTF turns
// them into dereferences at the members' offsets, types them from BTF
// when no type is given, and refuses $argN beyond the prototype and
// $retval of a void function, with a caret under the part at fault.
//
// What the package does not own: symbol tables (Validate takes a lookup so
// callers add "did you mean"), BTF (names and fields stay unresolved until
// ResolveParams or ResolveBTF gets the prototype, through BTFFunc), guest memory and registers
// (Evaluate reads them through the Memory, Symbols and Task interfaces and
// a vmm.Regs), and where output goes.
//
// Invariants:
//   - ParseFile is all or nothing: any bad line fails the whole input and
//     the error names every bad line.
//   - Parse(d.String()) equals d (apart from Line and Text) for every
//     parsed d.
//   - Evaluate never fails on guest memory faults; a fault is a value
//     (Value.Fault, printed "(fault)" as ftrace prints unreadable
//     strings).
//   - Precondition of Evaluate: the vCPU is stopped.
//   - Nothing here prints or logs; errors are *SyntaxError, SyntaxErrors
//     and *UnresolvedError, matching the Err* sentinels via errors.Is.
//
// What is done with events after they are made (filters, hists, Perfetto
// traces) is package analysis.
package probedef
