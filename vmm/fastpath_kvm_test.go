//go:build kvm

package vmm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"golang.org/x/arch/x86/x86asm"
	"golang.org/x/sys/unix"

	"github.com/hvprobe/hvprobe/stub"
	"github.com/hvprobe/hvprobe/vmm/boot"
)

// The exit-less probe stub (kprobes/fastpath) run by a real vCPU: a tiny
// 64-bit guest at CPL 0 with paging and a per-CPU area at its GS base runs
// a loop whose first instruction is probed by a jmp rel32 to a stub, as
// hvprobe would patch a kernel; the rings are written through a
// direct-map style alias (VA != GPA) and drained from the host's mapping.
const (
	fpCode     = 0x100000 // the loop
	fpStub     = 0x101000 // the stub
	fpPerCPU   = 0x102000 // GS base
	fpCPUNum   = 0x10     // per-CPU offset of cpu_number (u32)
	fpCurrent  = 0x20     // per-CPU offset of current_task (u64)
	fpStackTop = 0x180000
	fpRings    = 0x200000
	fpDirect   = 0xffff888000000000 // PML4[273] aliases the identity map, as Linux's direct map
	fpBenchIO  = 0xe1
	fpAddImm   = 0x12345678
	fpCurTask  = 0xffff888001234500
)

// fpLoop is the guest: r12 iterations of the probed add, r13 counting.
//
//	+0  add $fpAddImm,%rax   (6 bytes: probed)
//	+6  inc %r13
//	+9  dec %r12
//	+12 jnz +0
//	+14 out %al,$tinyPort; hlt
var fpLoop = []byte{
	0x48, 0x05, 0x78, 0x56, 0x34, 0x12,
	0x49, 0xff, 0xc5,
	0x49, 0xff, 0xcc,
	0x75, 0xf2,
	0xe6, tinyPort, 0xf4,
}

// fpExitLoop is the same loop with a bare port-I/O exit in each iteration.
var fpExitLoop = []byte{
	0x48, 0x05, 0x78, 0x56, 0x34, 0x12,
	0xe6, fpBenchIO, // out %al,$fpBenchIO
	0x49, 0xff, 0xc5,
	0x49, 0xff, 0xcc,
	0x75, 0xf0,
	0xe6, tinyPort, 0xf4,
}

func newFastpathVM(t testing.TB) *VM {
	t.Helper()
	vm := newTinyVM(t, tinyMem)
	ram := vm.mem.b
	le := binary.LittleEndian
	for i, d := range []uint64{0, 0, 0x00af9b000000ffff, 0x00cf93000000ffff} {
		le.PutUint64(ram[boot.GDTAddr+8*i:], d)
	}
	le.PutUint64(ram[boot.PML4Addr:], boot.PDPTAddr|3)
	le.PutUint64(ram[boot.PML4Addr+8*((fpDirect>>39)&511):], boot.PDPTAddr|3)
	le.PutUint64(ram[boot.PDPTAddr:], boot.PDAddr|3)
	for j := range uint64(512) {
		le.PutUint64(ram[boot.PDAddr+8*j:], j<<21|0x83)
	}
	le.PutUint32(ram[fpPerCPU+fpCPUNum:], 0)
	le.PutUint64(ram[fpPerCPU+fpCurrent:], fpCurTask)
	v := vm.vcpus[0]
	s, err := v.Sregs()
	if err != nil {
		t.Fatal(err)
	}
	bootSregs(&s)
	s.GS.Base = fpPerCPU
	if err := v.SetSregs(s); err != nil {
		t.Fatal(err)
	}
	return vm
}

// fpStart is the register state the loop starts from: every GPR distinct.
func fpStart(iters uint64) Regs {
	return Regs{
		RAX: 0, RBX: 0x1111111111111111, RCX: 0x2222222222222222, RDX: 0x3333333333333333,
		RSI: 0x4444444444444444, RDI: 0x5555555555555555, RSP: fpStackTop, RBP: 0x6666666666666666,
		R8: 0x8888888888888888, R9: 0x9999999999999999, R10: 0xaaaaaaaaaaaaaaaa, R11: 0xbbbbbbbbbbbbbbbb,
		R12: iters, R13: 0, R14: 0xeeeeeeeeeeeeeeee, R15: 0xffffffffffffff0f,
		RIP: fpCode, RFLAGS: 0x2,
	}
}

// fpRun runs vCPU 0 from regs until the guest writes tinyPort; port
// writes to fpBenchIO are counted and resumed. It returns the final
// registers, the number of fpBenchIO exits and the wall time.
func fpRun(t testing.TB, v *VCPU, regs Regs) (Regs, int, time.Duration) {
	t.Helper()
	var (
		out   Regs
		exits int
		took  time.Duration
	)
	err := v.Do(func(CPU) error {
		if err := v.SetRegs(regs); err != nil {
			return err
		}
		start := time.Now()
		for range 10_000_000 {
			e, err := rawRun(v)
			if errors.Is(err, unix.EINTR) {
				continue // a Do's kick
			}
			if err != nil {
				return err
			}
			switch {
			case e.reason == exitIO && e.io.Port == fpBenchIO:
				exits++
			case e.reason == exitIO && e.io.Port == tinyPort:
				took = time.Since(start)
				if err := v.completePending(); err != nil {
					return err
				}
				var err error
				out, err = v.Regs()
				return err
			case e.reason == exitIntr:
			case e.reason == exitInternalError:
				r, _ := v.Regs()
				return fmt.Errorf("internal error, suberror %d, data %#x, rip %#x", e.internal.Suberror, e.internal.Data[:min(e.internal.NData, 16)], r.RIP)
			default:
				r, _ := v.Regs()
				return fmt.Errorf("unexpected exit %d at rip %#x", e.reason, r.RIP)
			}
		}
		return errors.New("the guest never finished")
	})
	if err != nil {
		t.Fatal(err)
	}
	return out, exits, took
}

// fpArm writes the stub for layout l and patches the loop's first
// instruction with the jmp to it, as hvprobe would with the vCPUs paused.
func fpArm(t testing.TB, vm *VM, l stub.Layout, probe uint32) { fpArmMode(t, vm, l, probe, false) }

func fpArmMode(t testing.TB, vm *VM, l stub.Layout, probe uint32, countOnly bool) {
	t.Helper()
	code, err := stub.Stub(stub.StubParams{
		Layout: l, Probe: probe, CPUNumberOff: fpCPUNum, CurrentOff: fpCurrent,
		StubAddr: fpStub, ProbeAddr: fpCode, Displaced: fpLoop[:6], CountOnly: countOnly,
	})
	if err != nil {
		t.Fatal(err)
	}
	entry, err := stub.Entry(fpCode, fpStub, 6)
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.mem.WritePhys(fpStub, code); err != nil {
		t.Fatal(err)
	}
	if err := vm.mem.WritePhys(fpCode, entry); err != nil {
		t.Fatal(err)
	}
}

func fpLayout(records int) stub.Layout {
	return stub.Layout{GPA: fpRings, VA: fpDirect + fpRings, CPUs: 1, Records: records, Probes: 4}
}

func TestFastpathStubLongMode(t *testing.T) {
	const iters = 100
	vm := newFastpathVM(t)
	v := vm.vcpus[0]
	mem := vm.Memory()
	if err := mem.WritePhys(fpCode, fpLoop); err != nil {
		t.Fatal(err)
	}
	want, _, _ := fpRun(t, v, fpStart(iters))
	if want.RAX != iters*fpAddImm || want.R13 != iters || want.R12 != 0 || want.RSP != fpStackTop {
		t.Fatalf("unprobed loop ended with %+v", want)
	}
	same := func(what string, got Regs) {
		t.Helper()
		if got != want {
			t.Errorf("%s: the guest ended with\n%+v, want (unprobed)\n%+v", what, got, want)
		}
	}

	t.Run("records", func(t *testing.T) {
		l := fpLayout(128)
		d, err := stub.NewDrainer(mem, l)
		if err != nil {
			t.Fatal(err)
		}
		fpArm(t, vm, l, 2)
		got, _, _ := fpRun(t, v, fpStart(iters))
		same("probed", got)
		res, err := d.Drain(0, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Records) != iters || res.Overrun != 0 || res.Invalid != 0 {
			t.Fatalf("drained %d records (overrun %d, invalid %d), want %d", len(res.Records), res.Overrun, res.Invalid, iters)
		}
		start := fpStart(iters)
		for k, rec := range res.Records {
			r := rec.Regs
			kk := uint64(k)
			ok := rec.Probe == 2 && rec.CPU == 0 && rec.Current == fpCurTask &&
				r.RAX == kk*fpAddImm && r.R12 == iters-kk && r.R13 == kk && r.RSP == fpStackTop &&
				r.RBX == start.RBX && r.RCX == start.RCX && r.RDX == start.RDX && r.RSI == start.RSI &&
				r.RDI == start.RDI && r.RBP == start.RBP && r.R8 == start.R8 && r.R9 == start.R9 &&
				r.R10 == start.R10 && r.R11 == start.R11 && r.R14 == start.R14 && r.R15 == start.R15 &&
				r.RFLAGS&(1<<1) != 0 && r.RFLAGS&(FlagIF|FlagTF) == 0 && (k != 0 || r.RFLAGS == 0x2)
			if !ok {
				t.Fatalf("record %d: %+v", k, rec)
			}
			if k > 0 && rec.TSC <= res.Records[k-1].TSC {
				t.Fatalf("record %d: tsc %d after %d", k, rec.TSC, res.Records[k-1].TSC)
			}
		}
		if lost, err := d.Lost(); err != nil || lost[2] != 0 {
			t.Errorf("lost = %v, %v", lost, err)
		}
		// Drained: a second run fits again, later in TSC.
		last := res.Records[iters-1].TSC
		fpRun(t, v, fpStart(iters))
		if res, err := d.Drain(0, nil); err != nil || len(res.Records) != iters || res.Records[0].TSC <= last {
			t.Errorf("second run: %d records, %v", len(res.Records), err)
		}
	})

	t.Run("full", func(t *testing.T) {
		l := fpLayout(4)
		d, err := stub.NewDrainer(mem, l)
		if err != nil {
			t.Fatal(err)
		}
		fpArm(t, vm, l, 1)
		got, _, _ := fpRun(t, v, fpStart(iters))
		same("probed, ring full", got)
		lost, err := d.Lost()
		if err != nil || lost[1] != iters-4 || lost[0]+lost[2]+lost[3] != 0 {
			t.Fatalf("lost = %v, %v; want %d for probe 1", lost, err, iters-4)
		}
		res, err := d.Drain(0, nil)
		if err != nil || len(res.Records) != 4 {
			t.Fatalf("drained %d records, %v; want 4", len(res.Records), err)
		}
		for k, rec := range res.Records {
			if rec.Probe != 1 || rec.Regs.R13 != uint64(k) {
				t.Fatalf("record %d: %+v", k, rec)
			}
		}
	})

	t.Run("busy", func(t *testing.T) {
		l := fpLayout(8)
		d, err := stub.NewDrainer(mem, l)
		if err != nil {
			t.Fatal(err)
		}
		fpArm(t, vm, l, 3)
		// A stub already recording on this CPU (as an NMI would find it).
		if err := mem.StorePhys(l.RingGPA(0)+stub.BusyOff, 8, 1); err != nil {
			t.Fatal(err)
		}
		got, _, _ := fpRun(t, v, fpStart(iters))
		same("probed, busy", got)
		busy, _ := mem.LoadPhys(l.RingGPA(0)+stub.BusyOff, 8)
		lost, _ := d.Lost()
		res, _ := d.Drain(0, nil)
		if busy != 1 || lost[3] != iters || len(res.Records) != 0 {
			t.Fatalf("busy %d, lost %v, %d records; want the busy word kept, %d lost, none", busy, lost, len(res.Records), iters)
		}
	})

	t.Run("cpu out of range", func(t *testing.T) {
		l := fpLayout(8)
		d, err := stub.NewDrainer(mem, l)
		if err != nil {
			t.Fatal(err)
		}
		fpArm(t, vm, l, 0)
		if err := mem.StorePhys(fpPerCPU+fpCPUNum, 4, 1); err != nil { // cpu 1 of a one-ring layout
			t.Fatal(err)
		}
		defer mem.StorePhys(fpPerCPU+fpCPUNum, 4, 0)
		got, _, _ := fpRun(t, v, fpStart(iters))
		same("probed, cpu 1", got)
		lost, _ := d.Lost()
		res, _ := d.Drain(0, nil)
		if lost[0] != iters || len(res.Records) != 0 {
			t.Fatalf("lost %v, %d records; want %d lost, none", lost, len(res.Records), iters)
		}
	})

	t.Run("count only", func(t *testing.T) {
		l := fpLayout(8)
		d, err := stub.NewDrainer(mem, l)
		if err != nil {
			t.Fatal(err)
		}
		fpArmMode(t, vm, l, 1, true)
		got, _, _ := fpRun(t, v, fpStart(iters))
		same("count only", got)
		counts, _ := d.Counts()
		lost, _ := d.Lost()
		res, _ := d.Drain(0, nil)
		if counts[1] != iters || counts[0]+counts[2]+counts[3] != 0 || lost[1] != 0 || len(res.Records) != 0 {
			t.Fatalf("counts %v, lost %v, %d records; want %d hits of probe 1 only", counts, lost, len(res.Records), iters)
		}
	})

	t.Run("disarmed", func(t *testing.T) {
		l := fpLayout(8)
		d, err := stub.NewDrainer(mem, l)
		if err != nil {
			t.Fatal(err)
		}
		fpArm(t, vm, l, 0)
		if err := mem.WritePhys(fpCode, fpLoop[:6]); err != nil { // the original bytes back
			t.Fatal(err)
		}
		got, _, _ := fpRun(t, v, fpStart(iters))
		same("disarmed", got)
		lost, _ := d.Lost()
		res, _ := d.Drain(0, nil)
		if lost[0] != 0 || len(res.Records) != 0 || res.Head != 0 {
			t.Fatalf("disarmed probe recorded: lost %v, %d records, head %d", lost, len(res.Records), res.Head)
		}
	})
}

// TestFastpathCost measures one stub execution against one bare port-I/O
// exit in the same guest (logged, not asserted: the target is a
// ratio of at most 0.2 on hardware KVM).
func TestFastpathCost(t *testing.T) {
	const iters = 2000
	vm := newFastpathVM(t)
	v := vm.vcpus[0]
	mem := vm.Memory()
	best := func(f func() time.Duration) time.Duration {
		b := time.Duration(1 << 62)
		for range 3 {
			b = min(b, f())
		}
		return b
	}
	if err := mem.WritePhys(fpCode, fpLoop); err != nil {
		t.Fatal(err)
	}
	plain := best(func() time.Duration { _, _, d := fpRun(t, v, fpStart(iters)); return d })
	if err := mem.WritePhys(fpCode, fpExitLoop); err != nil {
		t.Fatal(err)
	}
	exit := best(func() time.Duration {
		_, n, d := fpRun(t, v, fpStart(iters))
		if n != iters {
			t.Fatalf("%d port exits, want %d", n, iters)
		}
		return d
	})
	if err := mem.WritePhys(fpCode, fpLoop); err != nil {
		t.Fatal(err)
	}
	l := fpLayout(iters * 2) // never full
	l.Records = 4096
	d, err := stub.NewDrainer(mem, l)
	if err != nil {
		t.Fatal(err)
	}
	fpArm(t, vm, l, 0)
	probed := best(func() time.Duration {
		_, _, took := fpRun(t, v, fpStart(iters))
		if res, err := d.Drain(0, nil); err != nil || len(res.Records) != iters {
			t.Fatalf("drained %d records, %v", len(res.Records), err)
		}
		return took
	})
	fpArmMode(t, vm, l, 1, true)
	counted := best(func() time.Duration { _, _, took := fpRun(t, v, fpStart(iters)); return took })
	perExit := (exit - plain) / iters
	perStub := (probed - plain) / iters
	perCount := (counted - plain) / iters
	t.Logf("%d iterations: loop %v, with a port exit %v, probed (record) %v, probed (count) %v", iters, plain, exit, probed, counted)
	t.Logf("per bare exit %v; per recording stub %v: stub/exit = %.3f; per count-only stub %v: %.3f",
		perExit, perStub, float64(perStub)/float64(perExit), perCount, float64(perCount)/float64(perExit))
}

// Memory the capture test reads through the stub. The 2 MiB at 4 MiB are
// mapped by 4 KiB pages with the page at 4 MiB + 4 KiB left out, and the
// GiB at 1 GiB is one 1 GiB page aliasing the first.
const (
	fpData     = 0x300000 // the struct %rsi points at
	fpPT       = 0x103000 // page table of the 4 KiB pages
	fp4K       = 0x400000
	fpHole     = fp4K + 0x1000 // not present
	fpGiB      = 0x40000000
	fpStackVal = 0x5a5a5a5a00c0ffee
)

func TestFastpathCaptures(t *testing.T) {
	vm := newFastpathVM(t)
	v := vm.vcpus[0]
	mem := vm.Memory()
	ram := vm.mem.b
	le := binary.LittleEndian
	le.PutUint64(ram[boot.PDAddr+8*2:], fpPT|3)
	for j := range uint64(512) {
		if fp4K+j<<12 != fpHole {
			le.PutUint64(ram[fpPT+8*j:], fp4K+j<<12|3)
		}
	}
	le.PutUint64(ram[boot.PDPTAddr+8:], 0x83) // 1 GiB page at 1 GiB -> gpa 0
	put := func(gpa uint64, s string) { copy(ram[gpa:], s+"\x00") }
	put(fpData+0x100, "hello, captures")
	put(fpHole-8, "faulting")            // its NUL would be on the missing page
	put(fp4K+0x2ffa, "across two pages") // 6 bytes, then the next page
	for i, q := range []uint64{fpData + 0x100, 0x1122334455667788, fpHole - 8, fp4K + 0x2ffa, 1 << 63, 2 * tinyMem} {
		le.PutUint64(ram[fpData+8*uint64(i):], q)
	}
	le.PutUint64(ram[fpStackTop:], fpStackVal)
	if err := mem.WritePhys(fpCode, fpLoop); err != nil {
		t.Fatal(err)
	}
	start := fpStart(3)
	start.RSI = fpData
	want, _, _ := fpRun(t, v, start)

	rsi := x86asm.RSI
	caps := []stub.Capture{
		{Reg: rsi, Derefs: []int32{0}, Size: 64, String: true},        // +0(+0(%si)):string
		{Reg: rsi, Off: 8, Size: 8},                                   // +8(%si):u64
		{Reg: rsi, Off: 12, Size: 4},                                  // +12(%si):u32
		{Reg: rsi, Derefs: []int32{16}, Size: 64, String: true},       // runs into the missing page
		{Reg: rsi, Derefs: []int32{24}, Size: 64, String: true},       // crosses into a present page
		{Reg: rsi, Derefs: []int32{32}, Size: 8},                      // a non-canonical pointer
		{Reg: rsi, Derefs: []int32{40}, Size: 8},                      // mapped, but past guest RAM
		{Reg: x86asm.RSP, Size: 8},                                    // $stack0
		{Imm: fpData + 8, Size: 8},                                    // @addr
		{Imm: fpGiB + fpData + 8, Size: 8},                            // through the 1 GiB page
		{Reg: rsi, Derefs: []int32{32, 0}, Size: 8},                   // a fault ends the fetch
		{Reg: rsi, Derefs: []int32{0}, Off: 6, Size: 4, String: true}, // cut at its bound
		{Current: true, Off: 0x10, Size: 8},                           // fpCurTask is past guest RAM
	}
	l := fpLayout(8)
	l.Data = stub.DataSize(caps)
	d, err := stub.NewDrainer(mem, l)
	if err != nil {
		t.Fatal(err)
	}
	code, err := stub.Stub(stub.StubParams{
		Layout: l, Probe: 1, CPUNumberOff: fpCPUNum, CurrentOff: fpCurrent,
		StubAddr: fpStub, ProbeAddr: fpCode, Displaced: fpLoop[:6],
		Captures: caps, DirectMap: fpDirect, PhysLimit: tinyMem,
	})
	if err != nil {
		t.Fatal(err)
	}
	entry, err := stub.Entry(fpCode, fpStub, 6)
	if err != nil {
		t.Fatal(err)
	}
	if err := mem.WritePhys(fpStub, code); err != nil {
		t.Fatal(err)
	}
	if err := mem.WritePhys(fpCode, entry); err != nil {
		t.Fatal(err)
	}
	got, _, _ := fpRun(t, v, start)
	if got != want {
		t.Errorf("the guest ended with\n%+v, want (unprobed)\n%+v", got, want)
	}
	res, err := d.Drain(0, nil)
	if err != nil || len(res.Records) != 3 {
		t.Fatalf("drained %d records, %v; want 3", len(res.Records), err)
	}
	type c struct {
		va    uint64
		bytes string
		fault bool
	}
	q := func(v uint64) string { return string(le.AppendUint64(nil, v)) }
	wantCaps := []c{
		{fpData, q(fpData + 0x100), false}, {fpData + 0x100, "hello, captures\x00", false},
		{fpData + 8, q(0x1122334455667788), false},
		{fpData + 12, q(0x1122334455667788)[4:], false},
		{fpData + 16, q(fpHole - 8), false}, {fpHole - 8, "faulting", true},
		{fpData + 24, q(fp4K + 0x2ffa), false}, {fp4K + 0x2ffa, "across two pages\x00", false},
		{fpData + 32, q(1 << 63), false}, {1 << 63, "", true},
		{fpData + 40, q(2 * tinyMem), false}, {2 * tinyMem, "", true},
		{fpStackTop, q(fpStackVal), false},
		{fpData + 8, q(0x1122334455667788), false},
		{fpGiB + fpData + 8, q(0x1122334455667788), false},
		{fpData + 32, q(1 << 63), false}, {1 << 63, "", true},
		{fpData, q(fpData + 0x100), false}, {fpData + 0x106, " cap", false},
		{fpCurTask + 0x10, "", true},
	}
	for k, rec := range res.Records {
		var have []c
		for _, x := range rec.Captures {
			have = append(have, c{x.VA, string(x.Bytes), x.Fault})
		}
		if !slices.Equal(have, wantCaps) {
			t.Fatalf("record %d captured\n%+v\nwant\n%+v", k, have, wantCaps)
		}
		// What the evaluator reads back.
		b := make([]byte, 8)
		if err := rec.ReadVirt(fpData+8, b); err != nil || le.Uint64(b) != 0x1122334455667788 {
			t.Errorf("ReadVirt(+8) = %x, %v", b, err)
		}
		if err := rec.ReadVirt(fpHole-8, make([]byte, 16)); err == nil {
			t.Errorf("ReadVirt past a fault succeeded")
		}
		if err := rec.ReadVirt(fpData+0x200, b); err == nil {
			t.Errorf("ReadVirt of memory never captured succeeded")
		}
	}
}

// A loop calling a function, for exit-less return probes: r12 calls of
// fpFn(r12), the returns summed in r13.
//
//	+0  mov %r12,%rdi; call fpFn; add %rax,%r13; dec %r12; jnz +0
//	+16 out %al,$tinyPort; hlt
//	fpFn: nopl 0(%rax,%rax,1) (the site); lea 1(%rdi,%rdi,2),%rax; ret
const (
	fpFn      = fpCode + 0x80
	fpTramp   = fpStub + 0x800
	fpPool    = 0x104000
	fpRetSite = fpCode + 8 // the call's return address
)

func fpCallLoop() []byte {
	code := make([]byte, 0x90)
	copy(code, []byte{
		0x4c, 0x89, 0xe7, // mov %r12,%rdi
		0xe8, 0, 0, 0, 0, // call fpFn
		0x49, 0x01, 0xc5, // add %rax,%r13
		0x49, 0xff, 0xcc, // dec %r12
		0x75, 0xf0, // jnz +0
		0xe6, tinyPort, 0xf4,
	})
	binary.LittleEndian.PutUint32(code[4:], uint32(fpFn-fpRetSite))
	copy(code[fpFn-fpCode:], []byte{0x0f, 0x1f, 0x44, 0x00, 0x00, 0x48, 0x8d, 0x44, 0x7f, 0x01, 0xc3})
	return code
}

func TestFastpathReturn(t *testing.T) {
	const iters = 40
	vm := newFastpathVM(t)
	v := vm.vcpus[0]
	mem := vm.Memory()
	if err := mem.WritePhys(fpCode, fpCallLoop()); err != nil {
		t.Fatal(err)
	}
	start := fpStart(iters)
	want, _, _ := fpRun(t, v, start)
	if want.R13 != 3*iters*(iters+1)/2+iters {
		t.Fatalf("unprobed loop summed %d", want.R13)
	}
	const maxActive = 4
	arm := func(t *testing.T, l stub.Layout) {
		t.Helper()
		p := stub.RetParams{
			StubParams: stub.StubParams{Layout: l, Probe: 2, CPUNumberOff: fpCPUNum, CurrentOff: fpCurrent,
				StubAddr: fpStub, ProbeAddr: fpFn, Displaced: []byte{0x0f, 0x1f, 0x44, 0x00, 0x00},
				Captures: []stub.Capture{{Reg: x86asm.RSP, Size: 8}}, DirectMap: fpDirect, PhysLimit: tinyMem},
			Trampoline: fpTramp, Pool: fpDirect + fpPool, MaxActive: maxActive,
		}
		entry, err := stub.RetEntry(p)
		if err != nil {
			t.Fatal(err)
		}
		tramp, err := stub.RetTrampoline(p)
		if err != nil {
			t.Fatal(err)
		}
		jmp, err := stub.Entry(fpFn, fpStub, 5)
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range []struct {
			gpa uint64
			b   []byte
		}{{fpStub, entry}, {fpTramp, tramp}, {fpPool, make([]byte, maxActive*stub.InstanceSize)}, {fpFn, jmp}} {
			if err := mem.WritePhys(w.gpa, w.b); err != nil {
				t.Fatal(err)
			}
		}
	}
	layout := func() stub.Layout {
		l := fpLayout(64)
		l.Data = stub.RetDataSize + 32
		return l
	}
	pool := func(t *testing.T) []uint64 {
		t.Helper()
		var st []uint64
		for i := range maxActive {
			s, _ := mem.LoadPhys(fpPool+uint64(i*stub.InstanceSize), 8)
			st = append(st, s)
		}
		return st
	}

	// armed fills the pool with armed instances of live frames (slots
	// away from the loop's), the first at slot0.
	armed := func(t *testing.T, slot0 uint64) {
		t.Helper()
		for i := range maxActive {
			slot := slot0
			if i > 0 {
				slot = uint64(0x170000 + 8*i)
			}
			if err := mem.WritePhys(fpPool+uint64(i*stub.InstanceSize), le64(1, slot, 0xdead)); err != nil {
				t.Fatal(err)
			}
		}
	}

	t.Run("returns", func(t *testing.T) {
		l := layout()
		d, err := stub.NewDrainer(mem, l)
		if err != nil {
			t.Fatal(err)
		}
		arm(t, l)
		got, _, _ := fpRun(t, v, start)
		if got != want {
			t.Errorf("the guest ended with\n%+v, want (unprobed)\n%+v", got, want)
		}
		res, err := d.Drain(0, nil)
		if err != nil || len(res.Records) != iters {
			t.Fatalf("drained %d records, %v; want %d", len(res.Records), err, iters)
		}
		for k, rec := range res.Records {
			x := uint64(iters - k)
			rd, ok := rec.Return()
			sp := make([]byte, 8)
			capErr := rec.ReadVirt(fpStackTop, sp)
			if !ok || rec.Probe != 2 || rd.Ret != fpRetSite || rd.Args[0] != x || rec.Regs.RAX != 3*x+1 ||
				rd.Task != fpCurTask || rec.Regs.RSP != fpStackTop || rd.EntryTSC >= rec.TSC || capErr != nil {
				t.Fatalf("record %d: %+v, return %+v (%v), $stack0 capture %v", k, rec, rd, ok, capErr)
			}
		}
		counts, _ := d.Counts()
		if counts[2] != 0 || !slices.Equal(pool(t), make([]uint64, maxActive)) {
			t.Errorf("missed %d, pool states %v; want none missed, every instance free", counts[2], pool(t))
		}
	})

	t.Run("dead frame at the slot", func(t *testing.T) {
		l := layout()
		d, err := stub.NewDrainer(mem, l)
		if err != nil {
			t.Fatal(err)
		}
		arm(t, l)
		// Every instance armed: one for the slot the loop's call uses (a
		// frame that died there), the rest elsewhere (live frames).
		armed(t, fpStackTop-8)
		got, _, _ := fpRun(t, v, start)
		if got != want {
			t.Errorf("the guest ended with\n%+v, want\n%+v", got, want)
		}
		res, _ := d.Drain(0, nil)
		counts, _ := d.Counts()
		if len(res.Records) != iters || counts[2] != 0 || !slices.Equal(pool(t), []uint64{0, 1, 1, 1}) {
			t.Fatalf("%d records, %d missed, pool %v; want %d, 0, the dead frame's instance reused", len(res.Records), counts[2], pool(t), iters)
		}
	})

	t.Run("pool exhausted", func(t *testing.T) {
		l := layout()
		d, err := stub.NewDrainer(mem, l)
		if err != nil {
			t.Fatal(err)
		}
		arm(t, l)
		armed(t, 0x170000)
		got, _, _ := fpRun(t, v, start)
		if got != want {
			t.Errorf("the guest ended with\n%+v, want\n%+v", got, want)
		}
		res, _ := d.Drain(0, nil)
		counts, _ := d.Counts()
		if len(res.Records) != 0 || counts[2] != iters {
			t.Fatalf("%d records, %d missed; want none recorded, %d missed", len(res.Records), counts[2], iters)
		}
	})
}

func le64(vs ...uint64) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint64(b, v)
	}
	return b
}
