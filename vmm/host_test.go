package vmm

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDetectHostAndCmdline(t *testing.T) {
	dir := t.TempDir()
	if h, _ := DetectHost(dir, ""); h.Emulating {
		t.Fatal("empty /sys/module detected as emulating")
	}
	h0, _ := DetectHost(dir, "")
	hw := h0.Cmdline("nokaslr", " ")
	if hw != BaseCmdline+" nokaslr" {
		t.Fatalf("hardware cmdline = %q", hw)
	}
	if err := os.Mkdir(filepath.Join(dir, "kvm_pvm"), 0o755); err != nil {
		t.Fatal(err)
	}
	h, _ := DetectHost(dir, "")
	if !h.Emulating {
		t.Fatal("kvm_pvm present but not detected")
	}
	c := h.Cmdline("hvprobe_wl=calls:3")
	for _, want := range []string{"noxsave", "clearcpuid=cx16,smap,popcnt", "reboot=k", "panic=-1", "nowatchdog"} {
		if !strings.Contains(c, want) {
			t.Errorf("emulating-KVM cmdline lacks %q: %s", want, c)
		}
	}
	if !strings.HasSuffix(c, " hvprobe_wl=calls:3") {
		t.Errorf("extra args must come last (they override): %s", c)
	}
}

func TestVCPUCPUID(t *testing.T) {
	in := []CPUIDEntry{{Function: 1, EBX: 0xff0a0800, ECX: 0x1}, {Function: 0xb, Index: 1, EDX: 0}, {Function: 0x40000000, EAX: 0x40000001}}
	out := vcpuCPUID(3, in)
	if out[0].EBX>>24 != 3 || out[0].EBX&0xffffff != 0x0a0800 || out[0].ECX != 1|1<<31 {
		t.Errorf("leaf 1: %+v", out[0])
	}
	if out[1].EDX != 3 || out[2] != in[2] {
		t.Errorf("leaves: %+v", out)
	}
	if in[0].ECX != 1 {
		t.Error("input modified")
	}
}

func TestDetectHostInt3FromEnvironment(t *testing.T) {
	dir := t.TempDir()
	// devKVM does not exist: a probe would fail, so success proves none ran.
	dev := filepath.Join(dir, "no-kvm")
	t.Setenv(EnvInt3, "reflected")
	if h, err := DetectHost(dir, dev); err != nil || !h.Int3Reflected {
		t.Fatalf("reflected: %+v %v", h, err)
	}
	t.Setenv(EnvInt3, "intercepted")
	if h, err := DetectHost(dir, dev); err != nil || h.Int3Reflected {
		t.Fatalf("intercepted: %+v %v", h, err)
	}
	t.Setenv(EnvInt3, "maybe")
	if _, err := DetectHost(dir, dev); !errors.Is(err, ErrBadConfig) {
		t.Fatalf("bad value: %v", err)
	}
	t.Setenv(EnvInt3, "")
	if _, err := DetectHost(dir, dev); !errors.Is(err, ErrNoKVM) {
		t.Fatalf("no override, no KVM: %v, want ErrNoKVM from the probe", err)
	}
	// PVM: int3 comes back as an emulation failure; no probe runs.
	if err := os.Mkdir(filepath.Join(dir, "kvm_pvm"), 0o755); err != nil {
		t.Fatal(err)
	}
	if h, err := DetectHost(dir, dev); err != nil || !h.Emulating || h.Int3Reflected {
		t.Fatalf("emulating KVM: %+v %v, want Emulating and int3 intercepted without a probe", h, err)
	}
}

func TestRegsArg(t *testing.T) {
	r := Regs{RDI: 1, RSI: 2, RDX: 3, RCX: 4, R8: 5, R9: 6, RSP: 0x1000}
	for i := 0; i < 6; i++ {
		if v, _, in := r.Arg(i); !in || v != uint64(i+1) {
			t.Errorf("Arg(%d) = %d, %v", i, v, in)
		}
	}
	// [rsp] is the return address: the 7th argument sits at rsp+8.
	if _, at, in := r.Arg(6); in || at != 0x1008 {
		t.Errorf("Arg(6) at %#x, in register %v", at, in)
	}
	if _, at, _ := r.Arg(7); at != 0x1010 {
		t.Errorf("Arg(7) at %#x", at)
	}
}

func TestHostCPUIDHidesHypercallFeaturesWhenEmulating(t *testing.T) {
	in := []CPUIDEntry{{Function: 1, ECX: 0x80000000}, {Function: cpuidKVMFeatures, EAX: 0x01ffffff}}
	hw := Host{}.CPUID(append([]CPUIDEntry(nil), in...))
	if hw[1].EAX != 0x01ffffff {
		t.Fatalf("hardware KVM: features %#x changed", hw[1].EAX)
	}
	em := Host{Emulating: true}.CPUID(append([]CPUIDEntry(nil), in...))
	want := uint32(0x01ffffff &^ (1<<7 | 1<<11 | 1<<13))
	if em[1].EAX != want || em[0] != in[0] {
		t.Fatalf("emulating KVM: features %#x, want %#x (PV_UNHALT, PV_SEND_IPI, PV_SCHED_YIELD off); leaf 1 %+v", em[1].EAX, want, em[0])
	}
}
