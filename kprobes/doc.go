// Package kprobes gives a running Linux guest kernel the kprobe, jprobe and
// kretprobe semantics of Linux 2.6.13–2.6.18 (arch/x86_64/kernel/kprobes.c,
// kernel/kprobes.c, Documentation/kprobes.txt), from outside the guest:
// int3 bytes and out-of-line instruction slots are written into guest
// physical memory, the guest's breakpoints and single-steps arrive as KVM
// exits, and the handlers run on the host.
//
// # What it owns
//
// A Manager owns, for one guest:
//   - the armed sites, keyed by guest-physical address, each with the
//     original byte its int3 replaced and the probes sharing it;
//   - the SlotArea: one slot per site (the displaced instruction, its
//     %rip-relative displacement re-based, and for boostable instructions a
//     jmp back), plus slot 0, the kretprobe trampoline (an int3);
//   - per-vCPU hit state (the seeds' current_kprobe/kprobe_status);
//   - kretprobe instances, keyed by the stack slot of the return address;
//   - once EnableFast has run, the exit-less probes (fast.go): per-vCPU
//     rings carved from the slot area, a stub per probe in a run of slots,
//     and the jmp rel32 over each probed instruction (RegisterFast patches
//     it with every vCPU paused, DrainFast reads the records back).
//
// It is the VM's vmm.DebugHook.
//
// # Life of a hit
//
// A vCPU executes an armed int3; HandleDebug gets a DebugBreakpoint with RIP
// at the int3. Pre handlers run in registration order (the seeds insert
// non-jprobes at the head of their list; hvprobe keeps the order callers
// see). Then the displaced instruction executes in one of three ways:
//   - emulated by the host from the registers the pre handlers left, post
//     handlers in the same exit, for the instruction kinds of insn.go's
//     emulation table (emulNop … emulRet, each with what it covers: the
//     one list of them). One exit, no slot. Memory goes through the guest's page
//     tables, data operands through AtomicVirt (one host access of the
//     CPU's width, so other vCPUs never see a torn value). A lower-half,
//     unmapped, read-only, MMIO, page-crossing or non-canonical access
//     sends the instruction to its slot instead, so the guest takes the
//     CPU's own fault; so does a hit with TF set. Without a post handler
//     a boostable instruction with a data operand is boosted instead
//     (the same one exit, no host page walk). Locked instructions are
//     never emulated: that would take an atomic read-modify-write of
//     guest RAM from the host;
//   - boosted: rip = slot, which ends with a jmp back; one exit; only when
//     no post handler is registered at the address and the kernel has no
//     exception-table entry for it (a fault in the slot names the slot,
//     which no entry does; any other fault oopses or is resolved alike in
//     place and in the slot). Repeated string instructions run to
//     completion there;
//   - single-stepped in the slot with IF cleared (an interrupt must not land
//     in the step): two exits; on the step event the seeds' resume_execution
//     fixups are applied, IF restored (unless the instruction set it: cli,
//     sti, popf), post handlers run. A repeated string instruction traps
//     after each iteration with rip still on it; the step goes on until it
//     leaves, one exit per iteration, post handlers once at the end.
//
// # Text the kernel rewrites
//
// Check makes Register's text checks without a guest (the kernel image
// before boot, through a Kernel whose ReadVirt reads the file), so a bad
// probe set is refused before anything runs. Kernel.Reserved is the
// caller's rule for text the kernel patches itself; its *ReservedError
// says ErrPatchedText (refused) or ErrNotYetPatched (the caller arms the
// probe later). Recheck follows the guest's own writes to armed text:
// each written site is decoded anew and re-armed on the new instruction
// in a new slot, or retired with its probes (TextChange).
//
// # Invariants
//
//   - A slot is written completely before the int3 that leads to it.
//   - Disarming restores the original byte only if the int3 is still there;
//     otherwise the guest rewrote its text and its bytes are kept
//     (*TextModifiedError).
//   - A stepped slot is reused only when no vCPU is mid-step in it; a slot
//     that ever ran boosted is never reused (see slotAlloc).
//   - The trampoline lives as long as the Manager, so calls in flight when
//     a kretprobe is unregistered still return correctly.
//   - Registration changes nothing when it fails.
//
// # Preconditions on the VMM
//
// HandleDebug runs on the vCPU's own thread, one call at a time per vCPU;
// different vCPUs may call it concurrently. When HandleDebug returns true
// without writing registers, the vCPU resumes where it stands (for a
// breakpoint: at the int3's address). When it returns false for a
// breakpoint, the VMM delivers #BP to the guest.
//
// # Not handled
//
// A step that ends neither after its instruction nor at the entry of an
// exception handler whose frame names the slot (for instance a
// non-maskable interrupt taken after the instruction completed) cannot be
// accounted for; it is counted in Stats.LostSteps and reported by Err.
// Probes are looked up by the VA the guest executes at; text reached
// through an alias mapping is not probed. A stepped repeated string
// instruction keeps interrupts off for all its iterations. An emulated
// indirect call or jmp skips the CPU's ENDBR (IBT) check of its target.
// Emulated accesses do not set the page tables' accessed and dirty bits
// (Linux maps kernel memory with both set) and bypass the guest's TLB,
// seeing the page tables as they are now.
// A kretprobed function returning with ret $imm16 reaches the trampoline
// with its frame no longer at rsp-8: an orphan return.
package kprobes
