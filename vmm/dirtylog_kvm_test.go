//go:build kvm

package vmm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hvprobe/hvprobe/tests/kvmtest"
	"github.com/hvprobe/hvprobe/vmm/boot"
)

// A tiny real-mode guest on a real KVM, with no kernel: vCPU 0 runs code
// placed at tinyCode with CS = 0, DS based at the watched range, ES at 0
// and FS at tinyHigh. Each phase ends with `out %al,$tinyPort; hlt`.
const (
	tinyMem   = 16 << 20
	tinyCode  = 0x1000
	tinyPort  = 0xe0
	tinyWatch = 0x10000 // watched: [tinyWatch, tinyWatch+8 pages), DS base
	tinyEnd   = tinyWatch + 8*pageSize
	tinyLow   = 0x8000  // unwatched page in the slot below (ES:0x8000)
	tinyHigh  = 0x20000 // unwatched page in the slot above (FS:0)
)

// Watched pages, as DS offsets and guest-physical addresses.
const (
	pageA = 0x1000 // written in phase 1, read in phase 2
	pageZ = 0x2000 // only read; never written by anyone (host zero page)
	pageB = 0x3000 // only read by the guest; written by the host before the watch
	pageC = 0x4000 // read by the guest; written by the host in phase 2
	pageD = 0x5000 // written in phase 2
	pageE = 0x6000 // written in a loop in phase 4
	pageF = 0x7000 // the loop's stop flag, set by the host
)

func gpa(dsOff uint64) uint64 { return tinyWatch + dsOff }

var (
	// Phase 1: write A; read Z and B; write the unwatched pages.
	tinyPhase1 = []byte{
		0xc6, 0x06, 0x00, 0x10, 0xa1, // movb $0xa1, A
		0xa0, 0x00, 0x20, // mov Z, %al
		0xa0, 0x00, 0x30, // mov B, %al
		0x26, 0xc6, 0x06, 0x00, 0x80, 0xb2, // movb $0xb2, %es:0x8000
		0x64, 0xc6, 0x06, 0x00, 0x00, 0xb3, // movb $0xb3, %fs:0
		0xe6, tinyPort, 0xf4, // out %al,$tinyPort; hlt
	}
	// Phase 2: write D; read A, Z, B, C; write the unwatched page again.
	tinyPhase2 = []byte{
		0xc6, 0x06, 0x00, 0x50, 0xd4, // movb $0xd4, D
		0xa0, 0x00, 0x10, // mov A, %al
		0xa0, 0x00, 0x20, // mov Z, %al
		0xa0, 0x00, 0x30, // mov B, %al
		0xa0, 0x00, 0x40, // mov C, %al
		0x26, 0xc6, 0x06, 0x00, 0x80, 0xb2, // movb $0xb2, %es:0x8000
		0xe6, tinyPort, 0xf4,
	}
	// Phase 4 (under VM.Run): increment E until the host sets F, then
	// pulse the i8042 reset line, which ends Run.
	tinyPhase4 = []byte{
		0xfe, 0x06, 0x00, 0x60, // 1: incb E
		0x80, 0x3e, 0x00, 0x70, 0x00, // cmpb $0, F
		0x74, 0xf5, // je 1b
		0xb0, 0xfe, 0xe6, 0x64, 0xf4, // mov $0xfe,%al; out %al,$0x64; hlt
	}
)

const (
	tinyPhase1At = tinyCode
	tinyPhase2At = tinyCode + 0x100
	tinyPhase4At = tinyCode + 0x200
)

// newTinyVM creates a VM with real KVM and no kernel: RAM, irqchip, PIT and
// one vCPU in real mode, as New would before loading a kernel.
func newTinyVM(t testing.TB, memSize uint64) *VM { return newTinyVMs(t, memSize, 1) }

// newTinyVMs is newTinyVM with n vCPUs, all runnable in real mode (the
// APs do not wait for a SIPI).
func newTinyVMs(t testing.TB, memSize uint64, n int) *VM {
	t.Helper()
	kvmtest.RequireKVM(t)
	ram, err := mmapAnon(int(memSize))
	if err != nil {
		t.Fatal(err)
	}
	vm := blankVM(Config{MemSize: memSize, CPUs: n, DevKVM: kvmtest.Device})
	t.Cleanup(func() { vm.Close() })
	if err := vm.create(ram, func(id int, s []CPUIDEntry) []CPUIDEntry { return vcpuCPUID(id, s) }); err != nil {
		t.Fatal(err)
	}
	for _, v := range vm.vcpus {
		err := v.Do(func(CPU) error {
			s, err := v.Sregs()
			if err != nil {
				return err
			}
			s.CS.Base, s.CS.Selector = 0, 0
			s.SS.Base, s.SS.Selector = 0, 0
			s.DS.Base, s.DS.Selector = tinyWatch, tinyWatch>>4
			s.ES.Base, s.ES.Selector = 0, 0
			s.FS.Base, s.FS.Selector = tinyHigh, tinyHigh>>4
			if err := v.SetSregs(s); err != nil {
				return err
			}
			runnable := uint32(0) // KVM_MP_STATE_RUNNABLE
			return wrap("KVM_SET_MP_STATE", ioctlPtr(v.fd, kvmSetMPState, &runnable))
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return vm
}

// runTo runs vCPU 0 from rip on its own thread until it writes to
// tinyPort, as the exit loop would, without the VM's Run.
func runTo(t testing.TB, v *VCPU, rip uint64) {
	t.Helper()
	if err := v.Do(func(CPU) error { return runToOnThread(v, rip) }); err != nil {
		t.Fatal(err)
	}
}

// rawRun is one KVM_RUN on v's thread and its decoded exit; an EINTR
// (a Do's kick) clears immediate_exit and is returned for the caller to
// run again.
func rawRun(v *VCPU) (exitInfo, error) {
	if _, err := ioctl(v.fd, kvmRun, 0); err != nil {
		if errors.Is(err, unix.EINTR) {
			v.setImmediateExit(false)
			return exitInfo{}, err
		}
		return exitInfo{}, fmt.Errorf("KVM_RUN: %w", err)
	}
	return v.decode(v.run.run()), nil
}

func runToOnThread(v *VCPU, rip uint64) error {
	if err := v.SetRegs(Regs{RIP: rip, RSP: 0x800, RFLAGS: 0x2}); err != nil {
		return err
	}
	for range 1000 {
		e, err := rawRun(v)
		if errors.Is(err, unix.EINTR) {
			continue // a Do's kick
		}
		if err != nil {
			return err
		}
		switch {
		case e.reason == exitIO && e.io.Port == tinyPort:
			// Complete the out now: an emulating KVM finishes it on the
			// next KVM_RUN from the decode it saved, which would undo a
			// new rip set for the next phase.
			return v.completePending()
		case e.reason == exitIntr:
			continue
		case e.reason == exitInternalError:
			return fmt.Errorf("tiny guest: internal error, suberror %d, data %#x", e.internal.Suberror, e.internal.Data[:min(e.internal.NData, 16)])
		default:
			r, _ := v.Regs()
			return fmt.Errorf("tiny guest: unexpected exit %d at rip %#x (io %+v)", e.reason, r.RIP, e.io)
		}
	}
	return errors.New("tiny guest never reached its port write")
}

func wantDirty(t *testing.T, vm *VM, what string, want ...uint64) {
	t.Helper()
	wantDirtyFirst(t, vm, what, nil, want...)
}

// wantDirtyFirst is wantDirty where the pages in first, which the guest
// accessed for the first time since the watch began, may be reported too
// (DirtyPages' doc): logged, not required.
func wantDirtyFirst(t *testing.T, vm *VM, what string, first []uint64, want ...uint64) {
	t.Helper()
	got, err := vm.DirtyPages()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if extra := slices.DeleteFunc(slices.Clone(got), func(a uint64) bool { return !slices.Contains(first, a) }); len(extra) > 0 {
		t.Logf("%s: %#x reported on the guest's first access", what, extra)
		got = slices.DeleteFunc(got, func(a uint64) bool { return slices.Contains(first, a) })
	}
	if !slices.Equal(got, want) {
		t.Errorf("%s: DirtyPages = %#x, want %#x", what, got, want)
	}
}

// TestDirtyLogTinyGuest: KVM logs exactly the watched pages the guest
// wrote, not the ones it only read, not pages outside the range and not
// hvprobe's own writes; a read re-arms; DirtyPages works while the vCPU runs.
func TestDirtyLogTinyGuest(t *testing.T) {
	vm := newTinyVM(t, tinyMem)
	t.Logf("KVM_CAP_NR_MEMSLOTS=%d KVM_CAP_READONLY_MEM=%d KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2=%#x KVM_CAP_DIRTY_LOG_RING=%d",
		vm.checkExtension(capNRMemslots), vm.checkExtension(capReadonlyMem),
		vm.checkExtension(capManualDirtyLogProtect2), vm.checkExtension(capDirtyLogRing))
	m := vm.Memory()
	for at, code := range map[uint64][]byte{tinyPhase1At: tinyPhase1, tinyPhase2At: tinyPhase2, tinyPhase4At: tinyPhase4} {
		if err := m.WritePhys(at, code); err != nil {
			t.Fatal(err)
		}
	}
	// B holds data the host wrote, as kernel text does.
	if err := m.WritePhys(gpa(pageB), []byte{0x5a}); err != nil {
		t.Fatal(err)
	}

	// A memslot change KVM refuses leaves the slots as they were.
	before := slices.Clone(vm.slots)
	bad := []memslot{{id: slotLow, size: tinyMem / 2}, {id: slotWatched, gpa: tinyMem / 2, size: tinyMem / 2, flags: 1 << 15}}
	if err := vm.setMemslots(bad); err == nil {
		t.Fatal("KVM accepted memslot flag 1<<15")
	}
	if !slices.Equal(vm.slots, before) {
		t.Fatalf("after a refused change the slots are %+v, want %+v", vm.slots, before)
	}

	if err := vm.LogDirty(tinyWatch, tinyEnd); err != nil {
		t.Fatalf("LogDirty: %v", err)
	}
	if err := vm.LogDirty(tinyWatch, tinyEnd); !errors.Is(err, ErrDirtyLogRefused) {
		t.Errorf("second LogDirty: %v, want ErrDirtyLogRefused", err)
	}
	wantDirty(t, vm, "before the guest ran")

	v := vm.vcpus[0]
	runTo(t, v, tinyPhase1At)
	// B, read here for the first time, may be reported (DirtyPages' doc).
	// Z, never written by anyone, cannot be, but in the nested KVM, whose
	// L1 kernel maps even a never-written page writable on a first read
	// (docs/QUIRKS.md #51).
	first := []uint64{gpa(pageB)}
	if os.Getenv("HVPROBE_NESTED") == "1" {
		first = append(first, gpa(pageZ))
	}
	wantDirtyFirst(t, vm, "phase 1", first, gpa(pageA))
	var b [1]byte
	for _, c := range []struct {
		at   uint64
		want byte
	}{{gpa(pageA), 0xa1}, {tinyLow, 0xb2}, {tinyHigh, 0xb3}} {
		if m.ReadPhys(c.at, b[:]); b[0] != c.want {
			t.Fatalf("guest's write to %#x not in RAM: %#x, want %#x", c.at, b[0], c.want)
		}
	}

	// The host writes C (as hvprobe writes an int3); the guest writes D
	// and reads A (written before the last DirtyPages), Z, B and C.
	if err := m.WritePhys(gpa(pageC), []byte{0xcc}); err != nil {
		t.Fatal(err)
	}
	runTo(t, v, tinyPhase2At)
	wantDirtyFirst(t, vm, "phase 2", []uint64{gpa(pageC)}, gpa(pageD))
	wantDirty(t, vm, "a second call with nothing new")
	if err := m.WritePhys(gpa(pageA), []byte{0xcc}); err != nil {
		t.Fatal(err)
	}
	wantDirty(t, vm, "after a host write into the range")

	// Phase 4: DirtyPages from this goroutine while the vCPU spins
	// writing E under VM.Run; each call re-arms, so E comes back.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := v.SetRegs(Regs{RIP: tinyPhase4At, RSP: 0x800, RFLAGS: 0x2}); err != nil {
		t.Fatal(err)
	}
	done := make(chan Result, 1)
	go func() { done <- vm.Run(ctx) }()
	for seen := 0; seen < 3; {
		got, err := vm.DirtyPages()
		if err != nil {
			t.Fatalf("DirtyPages while running: %v", err)
		}
		// F, the flag the loop reads, may come on its first read.
		got = slices.DeleteFunc(got, func(a uint64) bool { return a == gpa(pageF) })
		switch {
		case slices.Equal(got, []uint64{gpa(pageE)}):
			seen++
		case len(got) != 0:
			t.Fatalf("DirtyPages while running = %#x, want only E %#x", got, gpa(pageE))
		}
		select {
		case r := <-done:
			t.Fatalf("guest stopped early: %v %v", r.Reason, r.Err)
		case <-ctx.Done():
			t.Fatal("E was never reported while the guest ran")
		case <-time.After(time.Millisecond):
		}
	}
	if err := m.WritePhys(gpa(pageF), []byte{1}); err != nil {
		t.Fatal(err)
	}
	if r := <-done; r.Reason != StopReset {
		t.Fatalf("phase 4 ended with %v (%v), want the guest's reset", r.Reason, r.Err)
	}
	got, err := vm.DirtyPages()
	if err != nil {
		t.Fatal(err)
	}
	got = slices.DeleteFunc(got, func(a uint64) bool { return a == gpa(pageF) })
	if len(got) > 1 || len(got) == 1 && got[0] != gpa(pageE) {
		t.Errorf("after phase 4: DirtyPages = %#x, want at most E (the host's flag write is not logged)", got)
	}
}

// The loops the cost is measured with: real-mode code at tinyCode.
var (
	// benchPages writes one byte to each of 128 pages at 0x20000-0x9ffff
	// (DS stepped by one page).
	benchPages = []byte{
		0xb9, 0x80, 0x00, // mov $128, %cx
		0xb8, 0x00, 0x20, // mov $0x2000, %ax
		0x8e, 0xd8, // 1: mov %ax, %ds
		0xc6, 0x06, 0x00, 0x00, 0x01, // movb $1, 0
		0x05, 0x00, 0x01, // add $0x100, %ax
		0xe2, 0xf4, // loop 1b
		0xe6, tinyPort, 0xf4,
	}
	// benchHot writes the same byte 65535 times.
	benchHot = []byte{
		0xb8, 0x00, 0x20, // mov $0x2000, %ax
		0x8e, 0xd8, // mov %ax, %ds
		0xb9, 0xff, 0xff, // mov $0xffff, %cx
		0xc6, 0x06, 0x00, 0x00, 0x01, // 1: movb $1, 0
		0xe2, 0xf9, // loop 1b
		0xe6, tinyPort, 0xf4,
	}
)

// BenchmarkGuestWrites measures the tiny guest's loops with and without
// the write watch over the pages they write: go test -run - -bench
// GuestWrites ./vmm/ (cost numbers only; nothing is asserted on them).
func BenchmarkGuestWrites(b *testing.B) {
	for _, loop := range []struct {
		name  string
		code  []byte
		pages int
	}{{"128pages", benchPages, 128}, {"samepage", benchHot, 1}} {
		for _, watched := range []bool{false, true} {
			name := loop.name + "/unwatched"
			if watched {
				name = loop.name + "/watched"
			}
			b.Run(name, func(b *testing.B) {
				vm := newTinyVM(b, tinyMem)
				if err := vm.Memory().WritePhys(tinyCode, loop.code); err != nil {
					b.Fatal(err)
				}
				if watched {
					if err := vm.LogDirty(0x20000, 0xa0000); err != nil {
						b.Fatal(err)
					}
				}
				v := vm.vcpus[0]
				for b.Loop() {
					runTo(b, v, tinyCode)
					if watched {
						// Re-arms the write protection: every round faults again.
						got, err := vm.DirtyPages()
						if err != nil || len(got) != loop.pages {
							b.Fatalf("DirtyPages: %d pages, %v; want %d", len(got), err, loop.pages)
						}
					}
				}
			})
		}
	}
}

// BenchmarkDirtyPagesIdle is one KVM_GET_DIRTY_LOG over a 16 MiB watch
// (a kernel's text and rodata) with nothing written.
func BenchmarkDirtyPagesIdle(b *testing.B) {
	vm := newTinyVM(b, 64<<20)
	if err := vm.LogDirty(16<<20, 32<<20); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if got, err := vm.DirtyPages(); err != nil || len(got) != 0 {
			b.Fatalf("DirtyPages = %d pages, %v", len(got), err)
		}
	}
}

// TestDirtyLogLongMode: the same in 64-bit mode at CPL 0 with paging,
// the guest writing its watched pages through a kernel-style high virtual
// mapping (as Linux writes its text through text_poke's or the direct
// map's alias): KVM logs the guest-physical page whatever the VA. On an
// emulating KVM this is its instruction emulator's store path.
func TestDirtyLogLongMode(t *testing.T) {
	const (
		watch    = 0x200000 // watched: [watch, watch+8 pages)
		highVA   = 0xffffffff80000000
		pdptHigh = 0xc000
		pdHigh   = 0xd000
		ptHigh   = 0xe000
		unwLow   = 0x100000 // unwatched, slot below
		unwHigh  = 0x300000 // unwatched, slot above
	)
	vm := newTinyVM(t, tinyMem)
	ram := vm.mem.b
	le := binary.LittleEndian
	// Identity map of the first 1 GiB (2 MiB pages), and highVA+i*4K ->
	// watch+i*4K through 4 KiB pages, as PML4[511]/PDPT[510] map Linux's text.
	setupLongMode(t, vm)
	le.PutUint64(ram[boot.PML4Addr+8*511:], pdptHigh|3)
	le.PutUint64(ram[pdptHigh+8*510:], pdHigh|3)
	le.PutUint64(ram[pdHigh:], ptHigh|3)
	for i := range uint64(8) {
		le.PutUint64(ram[ptHigh+8*i:], (watch+i*pageSize)|3)
	}
	movabsRAX := func(v uint64) []byte { return le.AppendUint64([]byte{0x48, 0xb8}, v) }
	movbAbs := func(addr uint32, v byte) []byte { // movb $v, addr (absolute)
		return append(le.AppendUint32([]byte{0xc6, 0x04, 0x25}, addr), v)
	}
	var code []byte
	code = append(code, movabsRAX(highVA+0x1000)...)
	code = append(code, 0xc6, 0x00, 0xa1) // movb $0xa1, (%rax): page 1
	code = append(code, movabsRAX(highVA+0x2000)...)
	code = append(code, 0x8a, 0x18) // mov (%rax), %bl: page 2, read only
	code = append(code, movbAbs(watch+0x3000, 0xa3)...)
	// The stores text patching uses: memcpy (rep movsb), a locked
	// cmpxchg, and an 8-byte store across a page boundary.
	code = append(code, 0x48, 0xbe) // movabs $highVA+0x1000, %rsi
	code = le.AppendUint64(code, highVA+0x1000)
	code = append(code, 0x48, 0xbf) // movabs $highVA+0x4000, %rdi
	code = le.AppendUint64(code, highVA+0x4000)
	code = append(code, 0xb9, 0x10, 0, 0, 0, 0xfc, 0xf3, 0xa4) // mov $16,%ecx; cld; rep movsb
	code = append(code, 0x48, 0xba)                            // movabs $highVA+0x5000, %rdx
	code = le.AppendUint64(code, highVA+0x5000)
	code = append(code, 0x31, 0xc0, 0xb9, 0x77, 0, 0, 0) // xor %eax,%eax; mov $0x77,%ecx
	code = append(code, 0xf0, 0x0f, 0xb1, 0x0a)          // lock cmpxchg %ecx,(%rdx)
	code = append(code, movabsRAX(highVA+0x7000-4)...)
	code = append(code, 0x48, 0x89, 0x08) // mov %rcx,(%rax): pages 6 and 7
	code = append(code, movbAbs(unwLow, 0xb1)...)
	code = append(code, movbAbs(unwHigh, 0xb2)...)
	code = append(code, 0xe6, tinyPort, 0xf4)
	copy(ram[tinyCode:], code)

	v := vm.vcpus[0]
	if err := vm.LogDirty(watch, watch+8*pageSize); err != nil {
		t.Fatalf("LogDirty: %v", err)
	}
	runTo(t, v, tinyCode)
	if ram[watch+0x1000] != 0xa1 || ram[watch+0x3000] != 0xa3 || ram[watch+0x4000] != 0xa1 ||
		ram[watch+0x5000] != 0x77 || ram[watch+0x6ffc] != 0x77 || ram[unwLow] != 0xb1 || ram[unwHigh] != 0xb2 {
		t.Fatalf("the 64-bit guest's writes are not in RAM")
	}
	page := func(i uint64) uint64 { return watch + i*pageSize }
	wantDirtyFirst(t, vm, "64-bit guest", []uint64{page(2)}, page(1), page(3), page(4), page(5), page(6), page(7))
	wantDirty(t, vm, "a second call")
}
