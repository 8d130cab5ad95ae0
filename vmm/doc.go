// Package vmm is hvprobe's virtual machine monitor on Linux KVM: guest
// RAM, vCPUs, the 64-bit Linux boot protocol (vmlinux ELF, or the ELF
// extracted from a bzImage, with host-side KASLR), a 16550 UART, the
// i8042 reset line, an RTC, the exit loop, guest-debug control and the
// assists an emulating KVM needs.
//
// Layering: vmm imports nothing of hvprobe but kimage. Every KVM
// ioctl goes through ioctl() or, with a pointer argument, ioctlP() in
// ioctl_unsafe.go (the pointer must stay an unsafe.Pointer until the
// Syscall expression: docs/QUIRKS.md #25); with the kvm_run views and the
// snapshot mirrors' raw bytes that is the package's only unsafe code.
// kvm.go and kvmstate.go mirror the kernel's structs, and sizes_test.go
// checks each against its ioctl number.
//
// Threading invariants:
//   - Each vCPU is one goroutine locked to one OS thread from creation to
//     Close; every ioctl on a vCPU fd happens there, set-up and restore
//     included. Other goroutines use VM.Do / VCPU.Do, which queue a
//     request, kick the vCPU out of KVM_RUN (immediate_exit plus a signal)
//     and run a function on its thread. The vCPU's state (VCPUState:
//     created, running, paused, exited) changes only on that thread; a
//     request the state does not allow fails with a *StateError
//     (ErrVCPUState), one made on the vCPU's own thread (a DebugHook or Do
//     callback) with ErrOwnThread instead of deadlocking.
//   - Pausing every vCPU (WithAllPaused, snapshots, write traps) is one
//     serialized primitive (pause.go), callable from a vCPU's own thread
//     too: that vCPU is out of KVM_RUN already and only the others park.
//   - Guest memory (Memory) may be read and written from any goroutine. A
//     one-byte write is a single store, so arming an int3 while other
//     vCPUs run is safe; multi-byte patches are not atomic to the guest.
//     The mapping is never handed out.
//   - Lifetime: VM.Close stops the guest, waits for every call in flight
//     on the VM (Run, Do, Snapshot, DirtyPages, ...) and on its Memory,
//     then ends the vCPU threads and unmaps; every later call fails with
//     ErrClosed (lifetime.go).
//
// The reserved region at the top of RAM has its layout in one place,
// ReservedRegion (reserved.go): header page, instruction slots, the int3
// doorbell page, the page tables that map them. Regs.Reg / Regs.GPR are
// the one register-by-name table, GateOffset / SetGateOffset the one IDT
// gate decoder.
//
// The only difference between hardware KVM and an emulating KVM that this
// package acts on is Host (host.go): the kernel command-line masks, the
// hypercall PV features hidden in CPUID, and int3/fwait/ldmxcsr arriving
// as emulation failures (assist.go), which are turned into the same
// DebugEvent a KVM_EXIT_DEBUG gives.
//
// Guest RAM is one host mapping; KVM sees it as memslots set in one place
// (setMemslots, dirtylog.go): one slot, or three once LogDirty has
// split off a dirty-logged range (kernel text) so that DirtyPages reports
// the pages the guest wrote there. The layout is fixed once the vCPUs have
// run. hvprobe's own writes to guest memory are never logged.
// Write traps (writetrap.go) split trapped pages off into KVM_MEM_READONLY
// slots (memslotLayoutTraps) before or while the vCPUs run, with every
// vCPU paused for the change and the dirty-logged slot left in place; the
// VMM completes the guest's stores there itself. Hardware breakpoints
// (hwbreak.go) share a vCPU's debug registers with the guest's own. Which
// of the two a host fires is the second host difference the package
// reports, WatchCaps (watchcaps.go): PVM has no data watchpoints.
//
// Snapshots (snapshot.go) stop every vCPU on its own thread, save KVM's
// and the devices' state and RAM to a file, and restore a VM from one with
// RAM mapped copy-on-write from the file.
package vmm
