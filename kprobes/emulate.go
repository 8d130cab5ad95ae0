package kprobes

import (
	"encoding/binary"
	"math/bits"

	"github.com/hvprobe/hvprobe/vmm"
	"golang.org/x/arch/x86/x86asm"
)

// Arithmetic flags in RFLAGS.
const (
	flagCF = 1 << 0
	flagPF = 1 << 2
	flagAF = 1 << 4
	flagZF = 1 << 6
	flagSF = 1 << 7
	flagOF = 1 << 11

	arithFlags = flagCF | flagPF | flagAF | flagZF | flagSF | flagOF
)

// More RFLAGS bits: what pushf clears in its image, what popf may change
// at CPL 0 (every flag but RF, VM, VIF, VIP; RF is cleared, bit 1 is
// always set).
const (
	flagDF   = 1 << 10
	flagRF   = 1 << 16
	flagVM   = 1 << 17
	popfMask = arithFlags | vmm.FlagTF | vmm.FlagIF | flagDF | 3<<12 | 1<<14 | 1<<18 | 1<<21
)

// regRef returns the vmm.Regs field holding the GPR r, r's bit offset in
// it (8 for AH..BH) and its width.
func regRef(regs *vmm.Regs, r x86asm.Reg) (*uint64, uint, uint) {
	switch {
	case r >= x86asm.AL && r <= x86asm.BL:
		return regs.GPRNum(int(r - x86asm.AL)), 0, 8
	case r >= x86asm.AH && r <= x86asm.BH:
		return regs.GPRNum(int(r - x86asm.AH)), 8, 8
	case r >= x86asm.SPB && r <= x86asm.R15B:
		return regs.GPRNum(int(r - x86asm.SPB + 4)), 0, 8
	case r >= x86asm.AX && r <= x86asm.R15W:
		return regs.GPRNum(int(r - x86asm.AX)), 0, 16
	case r >= x86asm.EAX && r <= x86asm.R15L:
		return regs.GPRNum(int(r - x86asm.EAX)), 0, 32
	case r >= x86asm.RAX && r <= x86asm.R15:
		return regs.GPRNum(int(r - x86asm.RAX)), 0, 64
	}
	panic("kprobes: regRef called with non-GPR " + r.String())
}

// gpr returns the vmm.Regs field holding the 64-bit register r.
func gpr(regs *vmm.Regs, r x86asm.Reg) *uint64 {
	p, _, _ := regRef(regs, r)
	return p
}

func readReg(regs *vmm.Regs, r x86asm.Reg) uint64 {
	p, sh, w := regRef(regs, r)
	return *p >> sh & widthMask(w)
}

// writeReg writes v to r as the CPU does: a 32-bit write zero-extends
// into the 64-bit register, an 8- or 16-bit one merges.
func writeReg(regs *vmm.Regs, r x86asm.Reg, v uint64) {
	p, sh, w := regRef(regs, r)
	if w == 32 {
		*p = uint64(uint32(v))
		return
	}
	*p = *p&^(widthMask(w)<<sh) | (v&widthMask(w))<<sh
}

func widthMask(w uint) uint64 {
	if w >= 64 {
		return ^uint64(0)
	}
	return 1<<w - 1
}

// resultFlags computes ZF, SF and PF of a w-bit result.
func resultFlags(res uint64, w uint) uint64 {
	var f uint64
	if res&widthMask(w) == 0 {
		f |= flagZF
	}
	if res>>(w-1)&1 != 0 {
		f |= flagSF
	}
	if bits.OnesCount8(uint8(res))%2 == 0 {
		f |= flagPF
	}
	return f
}

// arith returns a+b (or a-b) in w bits and the arithmetic flags ADD (SUB)
// sets at that width.
func arith(sub bool, a, b uint64, w uint) (uint64, uint64) {
	m := widthMask(w)
	a, b = a&m, b&m
	var res, carry, over uint64
	if sub {
		res = (a - b) & m
		carry = boolBit(a < b)
		over = (a ^ b) & (a ^ res)
	} else {
		res = (a + b) & m
		carry = boolBit(res < a)
		over = ^(a ^ b) & (a ^ res)
	}
	f := resultFlags(res, w) | carry*flagCF
	if over>>(w-1)&1 != 0 {
		f |= flagOF
	}
	if (a^b^res)&0x10 != 0 {
		f |= flagAF
	}
	return res, f
}

func boolBit(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// alu executes op on a and b at width w with the incoming flags; write
// says whether the result goes to the destination (not for cmp, test).
// Logical ops clear CF and OF; AF is architecturally undefined there and
// cleared by current CPUs. inc and dec keep CF.
func alu(op x86asm.Op, a, b uint64, w uint, flags uint64) (res, f uint64, write bool) {
	switch op {
	case x86asm.ADD:
		res, f = arith(false, a, b, w)
	case x86asm.SUB, x86asm.CMP:
		res, f = arith(true, a, b, w)
	case x86asm.INC, x86asm.DEC:
		res, f = arith(op == x86asm.DEC, a, 1, w)
		f = f&^flagCF | flags&flagCF
	case x86asm.AND, x86asm.TEST:
		res = a & b & widthMask(w)
		f = resultFlags(res, w)
	case x86asm.OR:
		res = (a | b) & widthMask(w)
		f = resultFlags(res, w)
	case x86asm.XOR:
		res = (a ^ b) & widthMask(w)
		f = resultFlags(res, w)
	default:
		panic("kprobes: alu called with " + op.String())
	}
	return res, flags&^arithFlags | f, op != x86asm.CMP && op != x86asm.TEST
}

// machine is what emulation reaches beyond the registers.
type machine struct {
	k  Kernel
	av AtomicVirt // nil: no data operands; stack words through ReadVirt/WriteVirt
	// cpu gives the FS/GS bases (KVM_GET_SREGS), read once and only when
	// an operand has an FS/GS override.
	cpu   vmm.CPU
	sregs *vmm.Sregs
}

func newMachine(k Kernel, cpu vmm.CPU) *machine {
	av, _ := k.(AtomicVirt)
	return &machine{k: k, av: av, cpu: cpu}
}

// emulate executes an emulable instruction on regs (and on guest memory
// through g), as the CPU would at addr; regs are those the pre handlers
// left. It returns false when it cannot (a memory access failed, a
// target is not canonical): the caller then executes the instruction in
// a slot so that the guest takes the fault the CPU would have raised.
// regs and memory are then untouched, except after the first iterations
// of a repeated string instruction: regs then say how far it got, as the
// CPU's own registers do between iterations, and the slot goes on from
// there.
func emulate(in *insn, addr uint64, regs *vmm.Regs, g *machine) bool {
	if in.data && g.av == nil {
		return false
	}
	// A guest with TF set expects the #DB trap after this instruction,
	// which only the CPU gives it.
	if regs.RFLAGS&vmm.FlagTF != 0 {
		return false
	}
	r := *regs // all or nothing: regs is written only on success
	next := addr + uint64(in.inst.Len)
	r.RIP = next
	// Every case does its reads first and at most one write, last.
	switch in.emul {
	case emulNop:
	case emulPush:
		if !g.push(&r, *gpr(regs, in.src)) {
			return false
		}
	case emulPushImm:
		if !g.push(&r, in.imm) {
			return false
		}
	case emulPushMem:
		// The operand's address uses %rsp from before the push.
		va, ok := g.effAddr(in.mem, next, regs)
		if !ok {
			return false
		}
		v, ok := g.load(va, 8)
		if !ok || !g.push(&r, v) {
			return false
		}
	case emulPopMem:
		// The destination's address uses %rsp from after the pop.
		v, ok := g.load(r.RSP, 8)
		if !ok {
			return false
		}
		r.RSP += 8
		va, ok := g.effAddr(in.mem, next, &r)
		if !ok || !g.store(va, 8, v) {
			return false
		}
	case emulPop:
		v, ok := g.load(r.RSP, 8)
		if !ok {
			return false
		}
		r.RSP += 8
		*gpr(&r, in.dst) = v // pop %rsp loads the popped word
	case emulLeave:
		v, ok := g.load(r.RBP, 8)
		if !ok {
			return false
		}
		r.RSP, r.RBP = r.RBP+8, v
	case emulMove:
		if !g.move(in, next, regs, &r) {
			return false
		}
	case emulALU:
		if !g.alu(in, next, regs, &r) {
			return false
		}
	case emulPushf:
		if !g.push(&r, r.RFLAGS&^(flagRF|flagVM)) {
			return false
		}
	case emulPopf:
		v, ok := g.load(r.RSP, 8)
		if !ok {
			return false
		}
		r.RSP += 8
		r.RFLAGS = (r.RFLAGS&^popfMask | v&popfMask | 2) &^ flagRF
	case emulCli:
		r.RFLAGS &^= vmm.FlagIF
	case emulCmov:
		// The source is read (and may fault) whatever the condition; a
		// 32-bit destination is zero-extended even when not moved.
		dst, src := in.inst.Args[0].(x86asm.Reg), in.inst.Args[1]
		v, ok := g.read(in, src, next, regs)
		if !ok {
			return false
		}
		if !jccTaken(condOf[in.inst.Op], &r) {
			v = readReg(regs, dst)
		}
		writeReg(&r, dst, v)
	case emulSetcc:
		if !g.write(in, in.inst.Args[0], boolBit(jccTaken(condOf[in.inst.Op], &r)), next, regs, &r) {
			return false
		}
	case emulString:
		if !g.str(in, regs, &r) {
			return false
		}
	case emulJmp:
		if !branchTo(&r, next+uint64(in.rel)) {
			return false
		}
	case emulJcc:
		if jccTaken(in.inst.Op, &r) && !branchTo(&r, next+uint64(in.rel)) {
			return false
		}
	case emulCall:
		if !branchTo(&r, next+uint64(in.rel)) || !g.push(&r, next) {
			return false
		}
	case emulJmpInd:
		to, ok := g.indirectTarget(in, next, regs)
		if !ok || !branchTo(&r, to) {
			return false
		}
	case emulCallInd:
		to, ok := g.indirectTarget(in, next, regs)
		if !ok || !branchTo(&r, to) || !g.push(&r, next) {
			return false
		}
	case emulRet:
		to, ok := g.load(r.RSP, 8)
		if !ok || !branchTo(&r, to) {
			return false
		}
		r.RSP += 8 + in.imm
	default:
		return false
	}
	*regs = r
	return true
}

// width is an operand's width in bits: a register's own, a memory
// operand's from the instruction.
func (in *insn) width(a x86asm.Arg) uint {
	if reg, ok := a.(x86asm.Reg); ok {
		_, _, w := regRef(&vmm.Regs{}, reg)
		return w
	}
	return uint(8 * in.inst.MemBytes)
}

// read reads a source operand (regs from before the instruction).
func (g *machine) read(in *insn, a x86asm.Arg, next uint64, regs *vmm.Regs) (uint64, bool) {
	switch a := a.(type) {
	case x86asm.Reg:
		return readReg(regs, a), true
	case x86asm.Imm:
		return uint64(int64(a)), true
	case x86asm.Mem:
		va, ok := g.effAddr(a, next, regs)
		if !ok {
			return 0, false
		}
		return g.load(va, in.inst.MemBytes)
	}
	return 0, false
}

// write writes the destination operand: a register in r, or memory at the
// address computed from regs (from before the instruction).
func (g *machine) write(in *insn, a x86asm.Arg, v, next uint64, regs, r *vmm.Regs) bool {
	switch a := a.(type) {
	case x86asm.Reg:
		writeReg(r, a, v)
		return true
	case x86asm.Mem:
		va, ok := g.effAddr(a, next, regs)
		return ok && g.store(va, in.inst.MemBytes, v)
	}
	return false
}

func (g *machine) move(in *insn, next uint64, regs, r *vmm.Regs) bool {
	dst, src := in.inst.Args[0], in.inst.Args[1]
	var v uint64
	if in.inst.Op == x86asm.LEA {
		// The address alone: no access, no segment base.
		v = effAddr(src.(x86asm.Mem), next, regs)
	} else {
		var ok bool
		if v, ok = g.read(in, src, next, regs); !ok {
			return false
		}
		if op := in.inst.Op; op == x86asm.MOVSX || op == x86asm.MOVSXD {
			w := in.width(src)
			v = uint64(int64(v<<(64-w)) >> (64 - w))
		}
	}
	return g.write(in, dst, v, next, regs, r)
}

func (g *machine) alu(in *insn, next uint64, regs, r *vmm.Regs) bool {
	dst := in.inst.Args[0]
	a, ok := g.read(in, dst, next, regs)
	if !ok {
		return false
	}
	var b uint64
	if src := in.inst.Args[1]; src != nil {
		if b, ok = g.read(in, src, next, regs); !ok {
			return false
		}
	}
	res, f, write := alu(in.inst.Op, a, b, in.width(dst), regs.RFLAGS)
	if write && !g.write(in, dst, res, next, regs, r) {
		return false
	}
	r.RFLAGS = f
	return true
}

// stringMax bounds the bytes an emulated string instruction moves: one
// page, at most two page walks per side for each piece's access.
const stringMax = pageSize

// str emulates movs/stos (rep or not) with DF either way, from regs into
// r. Sources are read whole first; destinations are then written in the
// CPU's order, each naturally aligned piece of up to 8 bytes one store
// (as wide as fast-string operation itself writes). Overlapping movs,
// unaligned multi-byte elements and counts beyond stringMax go to the slot.
func (g *machine) str(in *insn, regs, r *vmm.Regs) bool {
	var n uint64
	movs := false
	switch in.inst.Op {
	case x86asm.MOVSB, x86asm.MOVSW, x86asm.MOVSD, x86asm.MOVSQ:
		movs = true
	}
	switch in.inst.Op {
	case x86asm.MOVSB, x86asm.STOSB:
		n = 1
	case x86asm.MOVSW, x86asm.STOSW:
		n = 2
	case x86asm.MOVSD, x86asm.STOSD:
		n = 4
	default:
		n = 8
	}
	count := uint64(1)
	if in.rep {
		count = regs.RCX
	}
	if count == 0 {
		return true
	}
	if count > stringMax/n {
		return false
	}
	total := count * n
	step := n
	// [lo, lo+total) of each side: the first element's address, or with
	// DF the last's.
	span := func(start uint64) (uint64, bool) {
		lo := start
		if regs.RFLAGS&flagDF != 0 {
			step = -n
			lo = start - (count-1)*n
		}
		ok := start%n == 0 && lo>>63 != 0 && lo+total > lo && canonical(lo) && canonical(lo+total-1)
		return lo, ok
	}
	dst, ok := span(regs.RDI)
	if !ok {
		return false
	}
	var buf [stringMax + 8]byte // +8: a piece's Uint64 at the end
	if movs {
		src, ok := span(regs.RSI)
		if !ok || src < dst+total && dst < src+total {
			return false
		}
		for off := uint64(0); off < total; {
			sz := pieceSize(src+off, total-off)
			v, ok := g.load(src+off, int(sz))
			if !ok {
				return false
			}
			binary.LittleEndian.PutUint64(buf[off:], v)
			off += sz
		}
	} else {
		for i := uint64(0); i < total; i++ {
			buf[i] = byte(regs.RAX >> (8 * (i % n)))
		}
	}
	// Pieces in the CPU's order: up with DF clear, down with it set.
	pieces := make([][2]uint64, 0, total/8+2)
	for off := uint64(0); off < total; {
		sz := pieceSize(dst+off, total-off)
		pieces = append(pieces, [2]uint64{off, sz})
		off += sz
	}
	down := regs.RFLAGS&flagDF != 0
	done := uint64(0) // bytes stored
	for i := range pieces {
		p := pieces[i]
		if down {
			p = pieces[len(pieces)-1-i]
		}
		v := binary.LittleEndian.Uint64(buf[p[0]:])
		if !g.store(dst+p[0], int(p[1]), v) {
			if done == 0 {
				return false
			}
			// Stopped between iterations: the slot goes on from here.
			k := done / n
			regs.RDI += k * step
			if movs {
				regs.RSI += k * step
			}
			if in.rep {
				regs.RCX -= k
			}
			return false
		}
		done += p[1]
	}
	r.RDI += count * step
	if movs {
		r.RSI += count * step
	}
	if in.rep {
		r.RCX = 0
	}
	return true
}

// pieceSize is the largest naturally aligned access of 8, 4, 2 or 1
// bytes at va within n bytes and one page.
func pieceSize(va, n uint64) uint64 {
	for sz := uint64(8); sz > 1; sz /= 2 {
		if va%sz == 0 && sz <= n {
			return sz
		}
	}
	return 1
}

// branchTo sets r.RIP to a branch target. A non-canonical one would fail
// the VM entry; the CPU raises #GP at the branch instead, which the slot
// reproduces, so it is refused.
func branchTo(r *vmm.Regs, to uint64) bool {
	r.RIP = to
	return canonical(to)
}

func (g *machine) indirectTarget(in *insn, next uint64, regs *vmm.Regs) (uint64, bool) {
	if in.src != 0 {
		return *gpr(regs, in.src), true
	}
	va, ok := g.effAddr(in.mem, next, regs)
	if !ok {
		return 0, false
	}
	return g.load(va, 8)
}

// jccTaken evaluates a conditional branch's condition on r; loop*
// decrement %rcx first (flags untouched), as the CPU does.
func jccTaken(op x86asm.Op, r *vmm.Regs) bool {
	f := r.RFLAGS
	cf, zf, sf, of, pf := f&flagCF != 0, f&flagZF != 0, f&flagSF != 0, f&flagOF != 0, f&flagPF != 0
	switch op {
	case x86asm.JO:
		return of
	case x86asm.JNO:
		return !of
	case x86asm.JB:
		return cf
	case x86asm.JAE:
		return !cf
	case x86asm.JE:
		return zf
	case x86asm.JNE:
		return !zf
	case x86asm.JBE:
		return cf || zf
	case x86asm.JA:
		return !cf && !zf
	case x86asm.JS:
		return sf
	case x86asm.JNS:
		return !sf
	case x86asm.JP:
		return pf
	case x86asm.JNP:
		return !pf
	case x86asm.JL:
		return sf != of
	case x86asm.JGE:
		return sf == of
	case x86asm.JLE:
		return zf || sf != of
	case x86asm.JG:
		return !zf && sf == of
	case x86asm.JRCXZ:
		return r.RCX == 0
	case x86asm.LOOP:
		r.RCX--
		return r.RCX != 0
	case x86asm.LOOPE:
		r.RCX--
		return r.RCX != 0 && zf
	case x86asm.LOOPNE:
		r.RCX--
		return r.RCX != 0 && !zf
	}
	panic("kprobes: jccTaken called with " + op.String())
}

// effAddr computes a memory operand's offset from regs; next is the
// address of the following instruction (the base of %rip-relative ones).
func effAddr(m x86asm.Mem, next uint64, regs *vmm.Regs) uint64 {
	if m.Base == 0 && m.Index == 0 && m.Scale == 0 {
		return uint64(m.Disp) // moffs: a 64-bit absolute address
	}
	a := uint64(int64(int32(m.Disp))) // x86asm may zero-extend a disp32
	switch {
	case m.Base == x86asm.RIP:
		a += next
	case m.Base != 0:
		a += *gpr(regs, m.Base)
	}
	if m.Index != 0 {
		a += *gpr(regs, m.Index) * uint64(m.Scale)
	}
	return a
}

// effAddr is the linear address of a data operand: its offset plus the
// FS or GS base it names (other segments have base 0 in 64-bit mode).
func (g *machine) effAddr(m x86asm.Mem, next uint64, regs *vmm.Regs) (uint64, bool) {
	a := effAddr(m, next, regs)
	if m.Segment != x86asm.FS && m.Segment != x86asm.GS {
		return a, true
	}
	if g.sregs == nil {
		sr, err := g.cpu.Sregs()
		if err != nil {
			return 0, false
		}
		g.sregs = &sr
	}
	if m.Segment == x86asm.FS {
		return a + g.sregs.FS.Base, true
	}
	return a + g.sregs.GS.Base, true
}

// canonical is the 48-bit rule; a 57-bit address beyond it is left to the
// slot, which is always right.
func canonical(va uint64) bool { return uint64(int64(va<<16)>>16) == va }

// reachable: an access the host may make for the guest. The kernel's
// page tables map the kernel half alike in every mm; a lower-half address
// is a user one only the guest's current mm maps, so it is left to the
// CPU, as is an access crossing a page (two walks, two faults).
func reachable(va uint64, size int) bool {
	return va>>63 != 0 && canonical(va) && va%pageSize+uint64(size) <= pageSize
}

// load reads size bytes at va. Without AtomicVirt only the 8-byte words
// of the stack and of code pointers are read, through ReadVirt.
func (g *machine) load(va uint64, size int) (uint64, bool) {
	if !reachable(va, size) {
		return 0, false
	}
	if g.av != nil {
		v, err := g.av.LoadVirt(va, size)
		return v, err == nil
	}
	var b [8]byte
	if size != 8 || g.k.ReadVirt(va, b[:]) != nil {
		return 0, false
	}
	return binary.LittleEndian.Uint64(b[:]), true
}

// store writes the low size bytes of v at va (see load).
func (g *machine) store(va uint64, size int, v uint64) bool {
	if !reachable(va, size) {
		return false
	}
	if g.av != nil {
		return g.av.StoreVirt(va, size, v) == nil
	}
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	return size == 8 && g.k.WriteVirt(va, b[:]) == nil
}

// push stores v below r.RSP and moves r.RSP down.
func (g *machine) push(r *vmm.Regs, v uint64) bool {
	if !g.store(r.RSP-8, 8, v) {
		return false
	}
	r.RSP -= 8
	return true
}
