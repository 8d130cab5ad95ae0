// Package stub is the code of exit-less probes (issue 14): the stub
// that hvprobe writes into its reserved region of guest memory so a probe
// hit records into a per-vCPU ring buffer in guest RAM without a VM exit,
// and the host-side decoder that drains those rings from hvprobe's own
// mapping of guest RAM. Nothing here touches a VM: kprobes.Manager
// (RegisterFast, DrainFast) places the stubs and rings and patches the
// probed instruction, and the session turns records into events.
//
// # Entry
//
// The probed instruction, 5 bytes or longer (ftrace's fentry nop, or any
// instruction CheckDisplaced accepts: no %rip-relative operand, no
// relative or indirect control transfer, nothing that traps or changes IF
// by design), or a run of such instructions that reaches 5 bytes
// (CheckRun; where else the run can be entered is kprobes.Manager's to
// check), is replaced by Entry: jmp rel32 to the stub, int3 over the
// rest of its bytes. The stub (Stub) does:
//
//	pushfq; cli; push rax … r15              (15 GPRs; 128 bytes of stack)
//	cpu = %gs:CPUNumberOff                    (cpu >= CPUs: lost)
//	ring = VA + cpu*RingStride
//	busy? -> lost (only an NMI or #MC can nest: interrupts are off)
//	busy = 1
//	head - tail >= Records? -> busy = 0; lost
//	record[head & (Records-1)] = {probe, cpu, rdtsc, %gs:CurrentOff,
//	                              rsp at the probe, the 16 saved qwords}
//	captures: the memory the fetch args read (Capture), into the record
//	head++ (after the record's stores: x86 TSO); busy = 0
//	lost: lock incq lost[probe]
//	pop r15 … rax; popfq
//	the displaced instructions (nops omitted); jmp probe+len
//
// A capture loads through no pointer the guest gave it: the stub walks
// the page tables at %cr3 itself (call copy → xlate → walk, reading each
// table through the direct map), refuses a non-canonical address, a
// missing level, a frame at or above the end of RAM, or a direct-map
// alias that is not present, and only then reads the byte at its
// direct-map address; a page is looked up once. So no capture can fault,
// whatever the fetch args point at, and a failed one is recorded as a
// fault, which the host turns into the int3 path's "(fault)".
//
// A CountOnly stub is just pushfq; push %rax; lock incq count[probe];
// pop %rax; popfq; the displaced instruction; jmp back.
//
// Return probes (kretprobes) have an entry stub and a trampoline of
// their own, and a pool of instances: ret.go.
//
// # Ring layout (Layout)
//
// Little-endian, at Layout.GPA for the host and Layout.VA for the stub
// (the same bytes: for instance the kernel's direct-map alias of
// vmm.ReservedRegion):
//
//	+0                   ring 0
//	+cpu*RingStride      ring cpu, for cpu < CPUs; RingStride = 64 + Records*(168+Data)
//	+CPUs*RingStride     lost[Probes]   u64, lock-incremented by the stub
//	  +8*Probes          count[Probes]  u64, hit counters of count-only stubs
//
//	ring header (64 bytes):
//	  +0  head  u64  written by the guest: records published
//	  +8  tail  u64  written by the host: records consumed
//	  +16 busy  u64  written by the guest: 1 while a stub on that CPU records
//	  +24 zero, unused, to the end of the cache line
//	records: Records (a power of two) × S bytes, S = 168 + Data,
//	record i at +64+(i mod Records)*S:
//	  +0  u32 probe id         +4  u32 cpu
//	  +8  u64 rdtsc            +16 u64 current (%gs:CurrentOff)
//	  +24 u64 %rsp at the probe (before the stub's pushes)
//	  +32 16 × u64: r15 r14 r13 r12 r11 r10 r9 r8 rdi rsi rbp rbx rdx rcx rax rflags
//	      (the stub's stack frame, lowest address first: FrameRegs)
//	  +160 u32 captures written, u32 kind (KindHit; KindReturn: RetData
//	      opens the data, the captures follow it)
//	  +168 Data bytes: the captures, each u64 va, u32 bytes read, u32 bytes
//	      asked (bit 31: faulted), the bytes padded to 8
//
// All registers are the values at the probe address, before the displaced
// instruction ran; RFLAGS is as pushed before cli, so IF is the guest's.
//
// # What a hostile guest can do
//
// The rings, counters and stubs are ordinary guest memory: kernel code
// that writes there (a bug, or an attacker in the guest kernel) can fake
// records, drop or overwrite them, inflate or reset the counters, set busy
// forever (every hit is then lost) or rewrite a stub (which only harms
// the guest itself). It cannot crash or stall hvprobe: Drain treats the
// header and records as data — it uses the host's own tail, reads only
// inside the ring, never sizes an allocation from the head (at most one
// ring), reports a head more than a ring away (ahead or behind) as
// Overrun and resynchronises, and drops records whose probe id or cpu is
// out of range (Invalid); FuzzDrain checks this. A return probe's pool
// is guest memory as well: a guest that rewrites it can make its own
// returns go astray or hit the trampoline's ud2. Captures are data too:
// Record.ReadVirt answers only from inside them. The stub's page walk
// reads the guest's own tables, so a guest that points them outside RAM
// can fault itself there, as it could anywhere. The honest stub never
// blocks the guest either: a full ring or a busy word costs one lost
// count, never a wait.
//
// # Preconditions on the caller (kprobes.Manager keeps them)
//
//   - The 5-byte jmp is written with every vCPU paused (a vCPU may not
//     execute a half-written instruction), and restored the same way.
//   - A stub is never reused or freed while the guest runs: after popfq,
//     interrupts are back on, so a task can be preempted in the displaced
//     instruction or the jmp back and resume there at any later time (the
//     same quarantine as boosted slots).
//   - The probed instruction has no exception-table entry (a fault in the
//     stub names the stub's address, for which the kernel has no fixup),
//     runs with the kernel's GS base and stack (not entry code before
//     swapgs, nor anything on the user CR3 under PTI, where the direct
//     map is not mapped), and has 160 bytes of stack below %rsp (the
//     frame and the capture subroutines' return addresses; the kernel has
//     no red zone).
//   - The stub is within ±2 GiB of the probe (rel32 both ways: Stub and
//     Entry check), and the rings' VA is mapped writable in the kernel.
//   - TSC values are raw per-CPU rdtsc: converting to a time needs the
//     guest's TSC frequency/offset.
package stub
