package vmm

import (
	"testing"

	"github.com/hvprobe/hvprobe/vmm/boot"
)

func TestBootSregs(t *testing.T) {
	var s Sregs
	bootSregs(&s)
	if s.CS.Selector != 0x10 || s.CS.L != 1 || s.DS.Selector != 0x18 {
		t.Fatalf("segments: cs=%+v ds=%+v", s.CS, s.DS)
	}
	if s.CR0&(1<<31) == 0 || s.CR4&(1<<5) == 0 || s.EFER&(1<<10) == 0 || s.CR3 != boot.PML4Addr {
		t.Fatalf("long mode not set up: cr0=%#x cr4=%#x efer=%#x cr3=%#x", s.CR0, s.CR4, s.EFER, s.CR3)
	}
	r := bootRegs(0x1000000)
	if r.RIP != 0x1000000 || r.RSI != boot.ZeroPageAddr || r.RFLAGS&FlagIF != 0 {
		t.Fatalf("regs: %+v", r)
	}
}
