// Package session ties the layers together for one guest: it opens the
// kernel and its System.map (guest), boots it (vmm), follows its console,
// and — once the kernel runs — attaches the probe engine (kprobes) through
// the running-kernel view (introspect). cmd/hvprobe and the e2e tests use
// it; it holds no flags, terminal or output-format knowledge.
//
// It also owns hvprobe's rule for text the kernel rewrites itself
// (textPolicy, over guest.PatchSites): ImageKernel checks probes against
// the image before boot with it, RunningKernel applies it at Register; Arm
// defers probes on text the kernel patches at boot and arms them when
// alternative_instructions is done, retires .init.text probes at
// free_initmem, and followWrites hands the text pages the guest wrote
// (vmm's dirty log) to the engine. Every such change is a Notice.
//
// Events of probe definitions (AddDefs) carry the current task, the
// evaluated fetch args, a return probe's duration and, for definitions
// with Stack set, the kernel stack unwound on the host (ORC or frame
// pointers). An analysis.Set holds ftrace filters and hist triggers by event
// name, for the command line and the control socket alike.
//
// w lines (AddDefs) are watches: w@ traps stores to the watched bytes in
// guest-physical memory (vmm.TrapWrites), rw@ is a debug-register
// watchpoint where the host fires them; p lines with Def.Stealth are
// hardware execute breakpoints. Neither changes guest memory; both take
// debug-register slots or memslot changes. A memslot change pauses every
// vCPU, from a vCPU thread too; a debug-register slot is set through each
// vCPU's thread, so it is set off the vCPU thread when asked for on one
// (at attach).
//
// p lines with Def.Fast are exit-less where they can be (fast.go,
// kprobes.FastProbe): a jmp to a recording stub, patched with every vCPU
// paused (from a vCPU thread too); the rings are drained every fastPoll
// and at Flush, Remove and Close, and each record becomes the event the int3
// path would give. A NoticePath says which path a line took, a
// NoticeLost when a ring was full.
//
// Lifetime: Close stops the guest, closes what CloseWith was given (the
// control sockets of session/control, which join their connections) and
// its own goroutines (the write-watch poller, the ring drainer, whose last
// drain runs then), then closes the VM, which waits for any call still in
// flight; afterwards guest-memory and vCPU calls fail with vmm.ErrClosed.
//
// Layering: session → kprobes → introspect / guest → vmm.
package session
