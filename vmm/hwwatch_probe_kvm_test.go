//go:build kvm

package vmm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"github.com/hvprobe/hvprobe/vmm/boot"
	"golang.org/x/sys/unix"
)

// Measurements of what this host's KVM does with debug registers and a
// read-only memslot (docs/QUIRKS.md rows 36 on): each test logs what it
// saw, so `go test -v -run Probe ./vmm/` shows the host's answers. The
// asserting tests are in hwbreak_kvm_test.go and writetrap_kvm_test.go.

// probeExit is one exit of a tiny guest as the recorder saw it.
type probeExit struct {
	reason uint32
	debug  debugExit
	mmio   mmioExit
	rip    uint64 // KVM_GET_REGS at the exit
}

func (e probeExit) String() string {
	switch e.reason {
	case exitDebug:
		return fmt.Sprintf("DEBUG exc=%d pc=%#x dr6=%#x dr7=%#x rip=%#x", e.debug.Exception, e.debug.PC, e.debug.DR6, e.debug.DR7, e.rip)
	case exitMMIO:
		return fmt.Sprintf("MMIO write=%d gpa=%#x len=%d data=% x rip=%#x", e.mmio.IsWrite, e.mmio.PhysAddr, e.mmio.Len, e.mmio.Data[:e.mmio.Len], e.rip)
	}
	return fmt.Sprintf("exit %d rip=%#x", e.reason, e.rip)
}

// recordExits runs vCPU 0 from rip until it writes tinyPort, recording
// every other exit. A debug exit at an execute breakpoint is resumed with
// RFLAGS.RF (the #DB of an instruction breakpoint is a fault: without RF
// the instruction would hit again); an MMIO read floats high.
func recordExits(t testing.TB, v *VCPU, rip uint64, regs *Regs) []probeExit {
	return recordExitsStep(t, v, rip, regs, probeStepRF)
}

// probeStepRF resumes past an execute breakpoint with RFLAGS.RF.
func probeStepRF(v *VCPU, r Regs) error {
	r.RFLAGS |= flagRF
	return v.SetRegs(r)
}

// probeStepOver resumes past an execute breakpoint the way debuggers do
// without RF: the breakpoints off, one single-step, the breakpoints back.
func probeStepOver(dr [8]uint64) func(v *VCPU, r Regs) error {
	return func(v *VCPU, r Regs) error {
		d := guestDebug{Control: guestDbgEnable | guestDbgUseHWBP | guestDbgSingleStep}
		if err := ioctlPtr(v.fd, kvmSetGuestDebug, &d); err != nil {
			return err
		}
		if _, err := ioctl(v.fd, kvmRun, 0); err != nil {
			return err
		}
		e := v.decode(v.run.run())
		r2, _ := v.Regs()
		probeLog = append(probeLog, fmt.Sprintf("step-over from %#x: exit %d exc %d dr6 %#x pc %#x rip %#x", r.RIP, e.reason, e.debug.Exception, e.debug.DR6, e.debug.PC, r2.RIP))
		d = guestDebug{Control: guestDbgEnable | guestDbgUseHWBP, DebugReg: dr}
		return ioctlPtr(v.fd, kvmSetGuestDebug, &d)
	}
}

var probeLog []string

func recordExitsStep(t testing.TB, v *VCPU, rip uint64, regs *Regs, stepOver func(*VCPU, Regs) error) []probeExit {
	t.Helper()
	var out []probeExit
	err := v.Do(func(CPU) error {
		r := Regs{RIP: rip, RSP: 0x800, RFLAGS: 0x2}
		if regs != nil {
			r = *regs
			r.RIP = rip
		}
		if err := v.SetRegs(r); err != nil {
			return err
		}
		for range 200 {
			e, err := rawRun(v)
			if errors.Is(err, unix.EINTR) {
				continue // a Do's kick
			}
			if err != nil {
				return err
			}
			if e.reason == exitIO && e.io.Port == tinyPort {
				return v.completePending()
			}
			if e.reason == exitIntr {
				continue
			}
			r, err := v.Regs()
			if err != nil {
				return err
			}
			out = append(out, probeExit{reason: e.reason, debug: e.debug, mmio: e.mmio, rip: r.RIP})
			switch e.reason {
			case exitDebug:
				if e.debug.Exception == 1 && e.debug.DR6&0xf != 0 && r.RIP == e.debug.PC && stepOver != nil {
					if err := stepOver(v, r); err != nil {
						return err
					}
				}
			case exitMMIO:
				if e.mmio.IsWrite == 0 {
					u := v.run.union()
					for i := range 8 {
						u[8+i] = 0xff
					}
				}
			case exitInternalError:
				return fmt.Errorf("internal error suberror %d data %#x (exits so far %v)", e.internal.Suberror, e.internal.Data[:min(e.internal.NData, 4)], out)
			default:
				return fmt.Errorf("unexpected exit %d at rip %#x", e.reason, r.RIP)
			}
		}
		return fmt.Errorf("the guest never reached its port write; first exits %v", out[:min(len(out), 4)])
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// setGuestDebugRaw is KVM_SET_GUEST_DEBUG with explicit debug registers.
func setGuestDebugRaw(t testing.TB, v *VCPU, ctl uint32, dr [8]uint64) {
	t.Helper()
	err := v.Do(func(CPU) error {
		d := guestDebug{Control: ctl, DebugReg: dr}
		return wrap("KVM_SET_GUEST_DEBUG", ioctlPtr(v.fd, kvmSetGuestDebug, &d))
	})
	if err != nil {
		t.Fatal(err)
	}
}

func getDebugRegsT(t testing.TB, v *VCPU) debugRegs {
	t.Helper()
	var d debugRegs
	if err := v.Do(func(CPU) error { return wrap("KVM_GET_DEBUGREGS", ioctlPtr(v.fd, kvmGetDebugRegs, &d)) }); err != nil {
		t.Fatal(err)
	}
	return d
}

// probeRealMode: real-mode code at tinyCode, DS based at tinyWatch.
//
//	+0  nop
//	+1  movb $0x11, 0x100      (DS:0x100 = tinyWatch+0x100)
//	+6  mov 0x200, %al          (read)
//	+9  nop
//	+10 out %al,$tinyPort; hlt
var probeRealCode = []byte{
	0x90,
	0xc6, 0x06, 0x00, 0x01, 0x11,
	0xa0, 0x00, 0x02,
	0x90,
	0xe6, tinyPort, 0xf4,
}

func TestProbeHWBreakpointsRealMode(t *testing.T) {
	vm := newTinyVM(t, tinyMem)
	t.Logf("KVM_CAP_SET_GUEST_DEBUG=%d KVM_CAP_SET_GUEST_DEBUG2=%#x KVM_CAP_DEBUGREGS=%d",
		vm.checkExtension(capSetGuestDebug), vm.checkExtension(capSetGuestDebug2), vm.checkExtension(capDebugRegs))
	copy(vm.mem.b[tinyCode:], probeRealCode)
	v := vm.vcpus[0]
	ctl := uint32(guestDbgEnable | guestDbgUseHWBP)
	cases := []struct {
		name string
		dr   [8]uint64
	}{
		{"exec DR0 at +9", [8]uint64{0: tinyCode + 9, 7: 1}},
		{"write DR1 len1 at DS:0x100", [8]uint64{1: tinyWatch + 0x100, 7: 1<<2 | 1<<20}},
		{"rw DR2 len2 at DS:0x200", [8]uint64{2: tinyWatch + 0x200, 7: 1<<4 | 3<<24 | 1<<26}},
		{"write DR3 len4 at DS:0x100 (GE)", [8]uint64{3: tinyWatch + 0x100, 7: 1<<6 | 1<<9 | 1<<28 | 3<<30}},
	}
	for _, c := range cases {
		setGuestDebugRaw(t, v, ctl, c.dr)
		probeLog = nil
		ex := recordExitsStep(t, v, tinyCode, nil, probeStepOver(c.dr))
		t.Logf("real mode, %s: %d exits %v %v", c.name, len(ex), ex, probeLog)
	}
	setGuestDebugRaw(t, v, 0, [8]uint64{})
}

func TestProbeHWBreakpointsLongMode(t *testing.T) {
	vm := newTinyVM(t, tinyMem)
	setupLongMode(t, vm)
	// +0 nop; +1 movb $0x11,(0x300100); +9 mov (0x300200),%al; +16 nop; +17 out; hlt
	code := []byte{0x90}
	code = append(code, 0xc6, 0x04, 0x25, 0x00, 0x01, 0x30, 0x00, 0x11)
	code = append(code, 0x8a, 0x04, 0x25, 0x00, 0x02, 0x30, 0x00)
	code = append(code, 0x90, 0xe6, tinyPort, 0xf4)
	copy(vm.mem.b[tinyCode:], code)
	v := vm.vcpus[0]
	ctl := uint32(guestDbgEnable | guestDbgUseHWBP)
	for _, c := range []struct {
		name string
		dr   [8]uint64
	}{
		{"exec DR0 at +16", [8]uint64{0: tinyCode + 16, 7: 1}},
		{"write DR1 len8 at 0x300100", [8]uint64{1: 0x300100, 7: 1<<2 | 1<<20 | 2<<22}},
		{"rw DR2 len1 at 0x300200", [8]uint64{2: 0x300200, 7: 1<<4 | 3<<24}},
	} {
		setGuestDebugRaw(t, v, ctl, c.dr)
		probeLog = nil
		ex := recordExitsStep(t, v, tinyCode, nil, probeStepOver(c.dr))
		t.Logf("long mode, %s: %d exits %v %v", c.name, len(ex), ex, probeLog)
	}
	setGuestDebugRaw(t, v, 0, [8]uint64{})
}

// TestProbeGuestDebugRegs: the guest's own DR0/DR7 as KVM_GET/SET_DEBUGREGS
// see them, across KVM_SET_GUEST_DEBUG with USE_HW_BP; and a guest `mov
// %dr7` under hvprobe's breakpoints.
func TestProbeGuestDebugRegs(t *testing.T) {
	vm := newTinyVM(t, tinyMem)
	v := vm.vcpus[0]
	var d0 debugRegs
	err := v.Do(func(CPU) error {
		d := debugRegs{DB: [4]uint64{0x1234, 0, 0, 0x5678}, DR6: 0xffff0ff0, DR7: 0x401 | 1<<6}
		if err := ioctlPtr(v.fd, kvmSetDebugRegs, &d); err != nil {
			return wrap("KVM_SET_DEBUGREGS", err)
		}
		return wrap("KVM_GET_DEBUGREGS", ioctlPtr(v.fd, kvmGetDebugRegs, &d0))
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after SET_DEBUGREGS: db=%#x dr6=%#x dr7=%#x flags=%#x", d0.DB, d0.DR6, d0.DR7, d0.Flags)
	setGuestDebugRaw(t, v, guestDbgEnable|guestDbgUseHWBP, [8]uint64{1: 0x9999, 7: 1 << 2})
	d1 := getDebugRegsT(t, v)
	t.Logf("with hvprobe's DR1: db=%#x dr6=%#x dr7=%#x", d1.DB, d1.DR6, d1.DR7)
	// The guest reads its DR7 and DR0 into eax/ebx and writes DR3; real mode.
	code := []byte{
		0x0f, 0x21, 0xf8, // mov %dr7, %eax
		0x0f, 0x21, 0xc3, // mov %dr0, %ebx
		0x66, 0xb9, 0x00, 0x40, 0x00, 0x00, // mov $0x4000, %ecx
		0x0f, 0x23, 0xd9, // mov %ecx, %dr3
		0xe6, tinyPort, 0xf4,
	}
	copy(vm.mem.b[tinyCode:], code)
	ex := recordExits(t, v, tinyCode, nil)
	var r Regs
	if err := v.Do(func(CPU) error { var e error; r, e = v.Regs(); return e }); err != nil {
		t.Fatal(err)
	}
	d2 := getDebugRegsT(t, v)
	t.Logf("guest read dr7=%#x dr0=%#x (exits %v); after its mov to dr3: db=%#x dr7=%#x", r.RAX, r.RBX, ex, d2.DB, d2.DR7)
	setGuestDebugRaw(t, v, 0, [8]uint64{})
	d3 := getDebugRegsT(t, v)
	t.Logf("after clearing guest debug: db=%#x dr6=%#x dr7=%#x", d3.DB, d3.DR6, d3.DR7)
}

// TestProbeReadonlyMemslot: a guest write to a KVM_MEM_READONLY slot.
func TestProbeReadonlyMemslot(t *testing.T) {
	vm := newTinyVM(t, tinyMem)
	t.Logf("KVM_CAP_READONLY_MEM=%d", vm.checkExtension(capReadonlyMem))
	setupLongMode(t, vm)
	const ro = 0x300000
	le := binary.LittleEndian
	vm.mem.b[ro+0x200] = 0x5a
	// +0 movb $0x11,(ro+0x100) [8]; +8 mov (ro+0x200),%bl [7]; +15 movq %rcx,(ro+0xffc) [8]
	// +23 out; hlt
	code := []byte{0xc6, 0x04, 0x25}
	code = le.AppendUint32(code, ro+0x100)
	code = append(code, 0x11)
	code = append(code, 0x8a, 0x1c, 0x25)
	code = le.AppendUint32(code, ro+0x200)
	code = append(code, 0x48, 0x89, 0x0c, 0x25)
	code = le.AppendUint32(code, ro+0xffc)
	// rep movsb of 3 bytes from ro+0x200 to ro+0x300
	code = append(code, 0xbe)
	code = le.AppendUint32(code, ro+0x200)
	code = append(code, 0xbf)
	code = le.AppendUint32(code, ro+0x300)
	code = append(code, 0xb9, 3, 0, 0, 0, 0xfc, 0xf3, 0xa4)
	// lock cmpxchg %ecx,(ro+0x400): eax 0 = memory 0, so it stores
	code = append(code, 0x31, 0xc0, 0xf0, 0x0f, 0xb1, 0x0c, 0x25)
	code = le.AppendUint32(code, ro+0x400)
	code = append(code, 0xe6, tinyPort, 0xf4)
	copy(vm.mem.b[tinyCode:], code)
	slots := []memslot{
		{id: 0, gpa: 0, size: ro},
		{id: 1, gpa: ro, size: 2 * pageSize, flags: memReadonly},
		{id: 2, gpa: ro + 2*pageSize, size: tinyMem - ro - 2*pageSize},
	}
	if err := vm.setMemslots(slots); err != nil {
		t.Fatalf("read-only memslot: %v", err)
	}
	v := vm.vcpus[0]
	ex := recordExits(t, v, tinyCode, &Regs{RSP: 0x800, RFLAGS: 2, RCX: 0x0102030405060708})
	var r Regs
	if err := v.Do(func(CPU) error { var e error; r, e = v.Regs(); return e }); err != nil {
		t.Fatal(err)
	}
	t.Logf("code at %#x: movb +0, read +8, movq +15, rep movsb at +%d, cmpxchg at +%d", tinyCode, 15+8+5+5+5+2, 15+8+5+5+5+3+2)
	t.Logf("read-only slot: %d exits; bl after the read = %#x (RAM has 0x5a)", len(ex), r.RBX&0xff)
	for _, e := range ex {
		t.Logf("  %v", e)
	}
	t.Logf("RAM at ro+0x100 = %#x (the guest's write must not land)", vm.mem.b[ro+0x100])
}

// setupLongMode puts vCPU 0 of a tiny VM in 64-bit mode at CPL 0 with the
// first 1 GiB identity-mapped by 2 MiB pages.
func setupLongMode(t testing.TB, vm *VM) {
	t.Helper()
	ram := vm.mem.b
	le := binary.LittleEndian
	for i, d := range []uint64{0, 0, 0x00af9b000000ffff, 0x00cf93000000ffff} {
		le.PutUint64(ram[boot.GDTAddr+8*i:], d)
	}
	le.PutUint64(ram[boot.PML4Addr:], boot.PDPTAddr|3)
	le.PutUint64(ram[boot.PDPTAddr:], boot.PDAddr|3)
	for j := range uint64(512) {
		le.PutUint64(ram[boot.PDAddr+8*j:], j<<21|0x83)
	}
	v := vm.vcpus[0]
	err := v.Do(func(CPU) error {
		s, err := v.Sregs()
		if err != nil {
			return err
		}
		bootSregs(&s)
		return v.SetSregs(s)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestProbeRF: does RFLAGS.RF survive KVM_SET_REGS, and does it suppress
// an execute breakpoint?
func TestProbeRF(t *testing.T) {
	vm := newTinyVM(t, tinyMem)
	copy(vm.mem.b[tinyCode:], probeRealCode)
	v := vm.vcpus[0]
	setGuestDebugRaw(t, v, guestDbgEnable|guestDbgUseHWBP, [8]uint64{0: tinyCode + 9, 7: 1})
	var got []string
	err := v.Do(func(CPU) error {
		if err := v.SetRegs(Regs{RIP: tinyCode, RSP: 0x800, RFLAGS: 2 | flagRF}); err != nil {
			return err
		}
		r, _ := v.Regs()
		got = append(got, fmt.Sprintf("rflags after SET_REGS with RF: %#x", r.RFLAGS))
		for range 3 {
			if _, err := ioctl(v.fd, kvmRun, 0); err != nil {
				if errors.Is(err, unix.EINTR) {
					v.setImmediateExit(false)
					if _, err = ioctl(v.fd, kvmRun, 0); err != nil {
						return err
					}
				} else {
					return err
				}
			}
			e := v.decode(v.run.run())
			r, _ = v.Regs()
			got = append(got, fmt.Sprintf("exit %d exc %d rip %#x rflags %#x", e.reason, e.debug.Exception, r.RIP, r.RFLAGS))
			if e.reason != exitDebug {
				return v.completePending()
			}
			r.RFLAGS |= flagRF
			if err := v.SetRegs(r); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%v", got)
	setGuestDebugRaw(t, v, 0, [8]uint64{})
}

// TestProbeGuestOwnDebugRegs: with no guest debug from hvprobe, does the
// guest's own DR0 (execute) or DR1 (write) deliver #DB to the guest? Real
// mode, IVT[1] -> `out %al,$0xe1; hlt`.
func TestProbeGuestOwnDebugRegs(t *testing.T) {
	for _, c := range []struct {
		name string
		d    debugRegs
	}{
		{"guest exec DR0", debugRegs{DB: [4]uint64{tinyCode + 9}, DR6: dr6Fixed, DR7: 0x401}},
		{"guest write DR1", debugRegs{DB: [4]uint64{1: tinyWatch + 0x100}, DR6: dr6Fixed, DR7: 0x701&^1 | 1<<2 | 1<<20}},
	} {
		vm := newTinyVM(t, tinyMem)
		copy(vm.mem.b[tinyCode:], probeRealCode)
		copy(vm.mem.b[4:], []byte{0x00, 0x05, 0x00, 0x00}) // IVT[1] = 0000:0500
		copy(vm.mem.b[0x500:], []byte{0xe6, 0xe1, 0xf4})
		v := vm.vcpus[0]
		var port uint16
		var rip uint64
		var dr debugRegs
		err := v.Do(func(CPU) error {
			if err := v.setGuestDRs(c.d); err != nil {
				return err
			}
			if err := v.SetRegs(Regs{RIP: tinyCode, RSP: 0x800, RFLAGS: 2}); err != nil {
				return err
			}
			for range 20 {
				if _, err := ioctl(v.fd, kvmRun, 0); err != nil {
					if errors.Is(err, unix.EINTR) {
						v.setImmediateExit(false)
						continue
					}
					return err
				}
				e := v.decode(v.run.run())
				if e.reason == exitIO {
					port = e.io.Port
					r, _ := v.Regs()
					rip = r.RIP
					dr, _ = v.guestDRs()
					return v.completePending()
				}
				if e.reason != exitIntr {
					return fmt.Errorf("exit %d", e.reason)
				}
			}
			return errors.New("no port exit")
		})
		if err != nil {
			t.Fatal(err)
		}
		// The #DB frame: ip, cs, flags at ss:sp.
		sp := binary.LittleEndian.Uint16(vm.mem.b[0x800-6:])
		t.Logf("%s: port %#x at rip %#x (0xe1 = the guest's #DB handler ran); frame ip %#x; guest dr6 %#x", c.name, port, rip, sp, dr.DR6)
	}
}
