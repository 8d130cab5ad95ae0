package vmm

import "github.com/hvprobe/hvprobe/vmm/boot"

// bootSregs are the segment and control registers for the 64-bit entry.
func bootSregs(s *Sregs) {
	code := Segment{Base: 0, Limit: 0xffffffff, Selector: 0x10, Type: 0xb, Present: 1, S: 1, L: 1, G: 1}
	data := Segment{Base: 0, Limit: 0xffffffff, Selector: 0x18, Type: 0x3, Present: 1, S: 1, DB: 1, G: 1}
	s.CS = code
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.TR = Segment{Base: 0, Limit: 0x67, Selector: 0x20, Type: 0xb, Present: 1}
	s.LDT = Segment{Selector: 0, Type: 0x2, Present: 1, Limit: 0xffff}
	s.GDT = DTable{Base: boot.GDTAddr, Limit: 4*8 - 1}
	s.IDT = DTable{}
	const (
		cr0PE, cr0MP, cr0ET, cr0NE, cr0WP, cr0AM, cr0PG = 1 << 0, 1 << 1, 1 << 4, 1 << 5, 1 << 16, 1 << 18, 1 << 31
		cr4PAE                                          = 1 << 5
		eferLME, eferLMA                                = 1 << 8, 1 << 10
	)
	s.CR0 = cr0PE | cr0MP | cr0ET | cr0NE | cr0WP | cr0AM | cr0PG
	s.CR3 = boot.PML4Addr
	s.CR4 = cr4PAE
	s.EFER = eferLME | eferLMA
}

// bootRegs are the general registers for the 64-bit entry: rsi points at
// the zero page, interrupts off.
func bootRegs(entry uint64) Regs {
	return Regs{RIP: entry, RSI: boot.ZeroPageAddr, RSP: boot.BootStackTop, RFLAGS: 0x2}
}
