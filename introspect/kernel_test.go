package introspect

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/hvprobe/hvprobe/kimage"
	"github.com/hvprobe/hvprobe/vmm"
)

// Unslid System.map values of the fake kernel.
const (
	symText        = 0xffff_ffff_8100_0000
	symEntry       = 0xffff_ffff_81a0_0040 // entry_SYSCALL_64
	symBanner      = 0xffff_ffff_8220_0100 // linux_banner
	symInitTask    = 0xffff_ffff_8241_4f40 // init_task: fields straddle a page boundary
	symCurrentTask = 0x1fdc0               // per-cpu offset
	symPcpuHot     = 0x1fd00               // per-cpu offset
	directMap      = 0xffff_8880_0000_0000
	gsBase         = directMap + 0x7e00_0000 // per-cpu area of CPU 0
)

// testLayout is task_struct as a made-up kernel lays it out.
var testLayout = TaskLayout{Tasks: 0x4a8, PID: 0x5a0, TGID: 0x5a4, Comm: 0x758, State: 0x18, HotCurrentTask: 0x28}

// fakeGuest is a kernel image placed with a given slide and physical
// offset, built with MapPage on tables in a fake RAM.
type fakeGuest struct {
	t     testing.TB
	m     *fakeMem
	alloc *pageAlloc
	root  uint64
	k     KASLR
	syms  fakeSyms
	cpu   *fakeCPU
	vm    *VirtMem
	next  uint64 // next free physical page for non-image data
}

func newFakeGuest(t testing.TB, slide, physOffset uint64) *fakeGuest {
	t.Helper()
	g := &fakeGuest{
		t:     t,
		m:     newFakeMem(1 << 31),
		alloc: &pageAlloc{next: 0x10_0000, limit: 0x40_0000},
		k:     KASLR{Slide: slide, PhysOffset: physOffset},
		syms: fakeSyms{
			"_text": symText, "entry_SYSCALL_64": symEntry, "linux_banner": symBanner,
			"init_task": symInitTask, "current_task": symCurrentTask,
		},
		next: 0x7000_0000,
	}
	// PTI allocates the kernel PGD 8 KiB-aligned, user PGD above it.
	g.alloc.next = 0x10_2000
	g.root, _ = g.alloc.page()
	for _, sym := range []uint64{symText, symEntry, symBanner, symInitTask, symInitTask + 0x1000} {
		g.mapImage(g.root, sym)
	}
	if err := g.m.WritePhys(g.imagePA(symBanner), []byte("Linux version 6.1.0-test (gcc) #1 SMP\n\x00")); err != nil {
		t.Fatal(err)
	}
	g.cpu = &fakeCPU{
		sregs: vmm.Sregs{
			CS:   vmm.Segment{Selector: 0x10},
			GS:   vmm.Segment{Base: gsBase},
			CR0:  0x8005_0033,
			CR3:  g.root | 0x3, // a PCID
			CR4:  0x3606f0,
			EFER: 0xd01,
		},
		msrs: map[uint32]uint64{MSRLSTAR: symEntry + slide},
	}
	g.vm = NewVirtMem(g.m, g.root, false)
	return g
}

// imagePA is where the running kernel keeps an image address.
func (g *fakeGuest) imagePA(unslid uint64) uint64 {
	return unslid - kimage.StartKernelMap + g.k.PhysOffset
}

func (g *fakeGuest) mapImage(root, unslid uint64) {
	g.t.Helper()
	va := g.k.Addr(unslid) &^ 0xfff
	err := MapPage(g.m, root, false, va, g.imagePA(unslid)&^0xfff, FlagGlobal, g.alloc.page)
	if err != nil && !errors.Is(err, ErrAlreadyMapped) {
		g.t.Fatal(err)
	}
}

// mapData maps n fresh pages at va (page-aligned) for non-image data.
func (g *fakeGuest) mapData(va uint64, n int) {
	g.t.Helper()
	for i := range n {
		if err := MapPage(g.m, g.root, false, va+uint64(i)*0x1000, g.next, FlagWritable|FlagNX, g.alloc.page); err != nil {
			g.t.Fatal(err)
		}
		g.next += 0x1000
	}
}

func (g *fakeGuest) putU64(va, v uint64) {
	g.t.Helper()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	if err := g.vm.Write(va, b[:]); err != nil {
		g.t.Fatal(err)
	}
}

func (g *fakeGuest) putU32(va uint64, v uint32) {
	g.t.Helper()
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	if err := g.vm.Write(va, b[:]); err != nil {
		g.t.Fatal(err)
	}
}

// writeTask fills the fields of testLayout for a task at va.
func (g *fakeGuest) writeTask(va uint64, pid int32, comm string, state uint32) {
	g.t.Helper()
	g.putU32(va+testLayout.PID, uint32(pid))
	g.putU32(va+testLayout.TGID, uint32(pid))
	g.putU32(va+testLayout.State, state)
	var c [TaskCommLen]byte
	copy(c[:], comm)
	if err := g.vm.Write(va+testLayout.Comm, c[:]); err != nil {
		g.t.Fatal(err)
	}
}

// linkTasks makes the circular list init_task → tasks... → init_task.
func (g *fakeGuest) linkTasks(tasks ...uint64) {
	g.t.Helper()
	all := append([]uint64{g.k.Addr(symInitTask)}, tasks...)
	for i, a := range all {
		next := all[(i+1)%len(all)]
		prev := all[(i+len(all)-1)%len(all)]
		g.putU64(a+testLayout.Tasks, next+testLayout.Tasks)
		g.putU64(a+testLayout.Tasks+8, prev+testLayout.Tasks)
	}
}

func TestDetectKASLR(t *testing.T) {
	for _, tc := range []struct {
		name              string
		slide, physOffset uint64
	}{
		{"nokaslr", 0, 0},
		{"randomized", 0x1e0_0000, 0x3a0_0000},
		{"image below link address", 0x3c00_0000, 0xffff_ffff_ffc0_0000}, // -4 MiB
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newFakeGuest(t, tc.slide, tc.physOffset)
			k, err := DetectKASLR(g.cpu, g.m, g.syms)
			if err != nil {
				t.Fatal(err)
			}
			if k != g.k {
				t.Fatalf("got %+v, want %+v", k, g.k)
			}
			// The offsets hold for any image address, not just _text.
			tr, err := g.vm.Translate(k.Addr(symInitTask))
			if want := symInitTask - kimage.StartKernelMap + k.PhysOffset; err != nil || tr.PA != want {
				t.Fatalf("init_task PA %#x, %v; want %#x", tr.PA, err, want)
			}
		})
	}
}

func TestDetectKASLRFailures(t *testing.T) {
	for _, tc := range []struct {
		name   string
		modify func(g *fakeGuest)
		want   error
	}{
		{"LSTAR not set yet", func(g *fakeGuest) { g.cpu.msrs[MSRLSTAR] = 0 }, ErrBadSlide},
		{"slide not 2M aligned", func(g *fakeGuest) { g.cpu.msrs[MSRLSTAR] += 0x1000 }, ErrBadSlide},
		{"slide beyond 1G", func(g *fakeGuest) { g.cpu.msrs[MSRLSTAR] += 1 << 30 }, ErrBadSlide},
		{"LSTAR unreadable", func(g *fakeGuest) { delete(g.cpu.msrs, MSRLSTAR) }, errNoMSR},
		{"no linux_banner", func(g *fakeGuest) { delete(g.syms, "linux_banner") }, errNoSymbol},
		{"wrong banner", func(g *fakeGuest) { g.m.WritePhys(g.imagePA(symBanner), []byte("Linux  version")) }, ErrBannerMismatch},
		{"wrong slide lands on unmapped VA", func(g *fakeGuest) { g.cpu.msrs[MSRLSTAR] += 0x20_0000 }, ErrNotMapped},
		{"paging off", func(g *fakeGuest) { g.cpu.sregs.CR0 &^= cr0PG }, ErrNotLongMode},
		{"32-bit mode", func(g *fakeGuest) { g.cpu.sregs.EFER &^= eferLMA }, ErrNotLongMode},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newFakeGuest(t, 0x1e0_0000, 0x3a0_0000)
			tc.modify(g)
			if _, err := DetectKASLR(g.cpu, g.m, g.syms); !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
		})
	}
}

// A vCPU stopped in user mode under PTI has the user PGD in CR3; that PGD
// maps the entry text but not linux_banner.
func TestDetectKASLRUserModePTI(t *testing.T) {
	g := newFakeGuest(t, 0x1e0_0000, 0x3a0_0000)
	user := g.root + 0x1000
	g.mapImage(user, symEntry)
	g.cpu.sregs.CS.Selector = 0x33
	g.cpu.sregs.CR3 = user | 1<<11 | 0x3 // PTI's user PCID bit
	k, err := DetectKASLR(g.cpu, g.m, g.syms)
	if err != nil || k != g.k {
		t.Fatalf("got %+v, %v; want %+v", k, err, g.k)
	}
	vm, err := KernelView(g.m, g.cpu.sregs, k.Addr(symBanner))
	if err != nil || vm.CR3() != g.root || vm.LA57() {
		t.Fatalf("KernelView CR3 %#x, %v; want the kernel PGD %#x", vm.CR3(), err, g.root)
	}
	// In kernel mode the same CR3 is not second-guessed.
	g.cpu.sregs.CS.Selector = 0x10
	if _, err := DetectKASLR(g.cpu, g.m, g.syms); !errors.Is(err, ErrNotMapped) {
		t.Fatalf("kernel mode with a user PGD: %v, want ErrNotMapped", err)
	}
}

func TestGSBase(t *testing.T) {
	cpu := &fakeCPU{
		sregs: vmm.Sregs{CS: vmm.Segment{Selector: 0x10}, GS: vmm.Segment{Base: gsBase}},
		msrs:  map[uint32]uint64{MSRKernelGSBase: 0x7f00_dead_0000},
	}
	if b, err := GSBase(cpu); err != nil || b != gsBase {
		t.Fatalf("kernel mode: %#x, %v", b, err)
	}
	// In user mode GS.base is the user's and the kernel's is swapped out.
	cpu.sregs.CS.Selector = 0x33
	cpu.sregs.GS.Base = 0x7f00_0000_1000
	cpu.msrs[MSRKernelGSBase] = gsBase
	if b, err := GSBase(cpu); err != nil || b != gsBase {
		t.Fatalf("user mode: %#x, %v", b, err)
	}
	delete(cpu.msrs, MSRKernelGSBase)
	if _, err := GSBase(cpu); !errors.Is(err, errNoMSR) {
		t.Fatalf("user mode, MSR unreadable: %v", err)
	}
	cpu.sregs.CS.Selector = 0x10
	cpu.sregs.GS.Base = 0
	if _, err := GSBase(cpu); !errors.Is(err, ErrNoPerCPU) {
		t.Fatalf("zero GS base: %v", err)
	}
}

func TestPerCPUAddr(t *testing.T) {
	if a, err := PerCPUAddr(gsBase, symCurrentTask); err != nil || a != gsBase+symCurrentTask {
		t.Fatalf("%#x, %v", a, err)
	}
	if _, err := PerCPUAddr(gsBase, symText); !errors.Is(err, ErrNoPerCPU) {
		t.Fatalf("kernel address as per-cpu offset: %v", err)
	}
}
