package stub

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/arch/x86/x86asm"
)

// A Capture is guest memory a stub reads at the hit and keeps in the
// record, for fetch args such as +8(+0(%di)):u32 or +0(%si):string. The
// address starts as a value at the probe: Reg's (x86asm.RSP: %rsp at the
// probe, not the stub's), the current task if Current (for its pid and
// comm as they were at the hit), or else Imm. Each of Derefs then adds
// its offset and loads 8 bytes, which become the value; the last load
// adds Off and reads Size bytes, or a NUL-terminated string of at most
// Size bytes (NUL included) if String. Every load is captured, so the
// host can evaluate the fetch again from the record (Record.ReadVirt).
//
// The stub's loads cannot fault: each page is looked up by a software
// walk of the page tables at %cr3 (read through the direct map), must be
// present, below StubParams.PhysLimit, and present again at its direct-map
// address, which is where the byte is read. A load that fails this ends
// its capture (faulted) and the rest of the fetch.
type Capture struct {
	Reg     x86asm.Reg
	Current bool
	Imm     uint64
	Derefs  []int32
	Off     int32
	Size    int
	String  bool
}

// CaptureHeader is each capture's header in the record's data: u64 va,
// u32 bytes read, u32 bytes asked (bit 31: the read faulted after the
// bytes read). The bytes follow, padded to 8.
const CaptureHeader = 16

const captureFault = 1 << 31

// MaxCaptureSize bounds one capture's Size.
const MaxCaptureSize = MaxData - CaptureHeader

// DataSize is the bytes of record data the captures take at most.
func DataSize(cs []Capture) int {
	n := 0
	for _, c := range cs {
		n += len(c.Derefs) * (CaptureHeader + 8)
		n += CaptureHeader + (c.Size+7)&^7
	}
	return n
}

// Captured is one load as the record has it: data the guest wrote.
type Captured struct {
	VA    uint64
	Bytes []byte // what was read
	Asked int    // bytes the stub was to read
	Fault bool   // the read stopped at a fault after Bytes
}

// decodeCaptures parses n captures from data, stopping at the first that
// does not fit: the guest may write anything there.
func decodeCaptures(n uint32, data []byte) []Captured {
	var out []Captured
	le := binary.LittleEndian
	for ; n > 0 && len(data) >= CaptureHeader; n-- {
		got, asked := int(le.Uint32(data[8:])), le.Uint32(data[12:])
		size := int(asked &^ captureFault)
		stride := CaptureHeader + (size+7)&^7
		if size > MaxCaptureSize || got > size || stride > len(data) {
			break
		}
		out = append(out, Captured{VA: le.Uint64(data), Bytes: data[CaptureHeader : CaptureHeader+got : CaptureHeader+got],
			Asked: size, Fault: asked&captureFault != 0})
		data = data[stride:]
	}
	return out
}

// ReadVirt reads guest memory as it was at the hit, from r's captures:
// [va, va+len(p)) must start inside one capture. Bytes past what a
// capture read are zero if it stopped at a NUL or its bound (a string
// ends there), and a fault if it stopped at one. It is what probedef's
// evaluator reads through for the stub's records.
func (r Record) ReadVirt(va uint64, p []byte) error {
	for _, c := range r.Captures {
		if va < c.VA || va-c.VA >= uint64(max(c.Asked, 1)) {
			continue
		}
		off := va - c.VA
		n := copy(p, c.Bytes[min(off, uint64(len(c.Bytes))):])
		if n < len(p) && c.Fault {
			return fmt.Errorf("stub: %d bytes at %#x: the stub's read faulted at %#x", len(p), va, c.VA+uint64(len(c.Bytes)))
		}
		clear(p[n:])
		return nil
	}
	return fmt.Errorf("stub: %d bytes at %#x were not captured at the hit", len(p), va)
}

// Stub registers while captures run (after the frame is copied):
//
//	rbx ring  rbp head  r12 record  r13 capture cursor  r14 direct-map base  r15 PTE address mask
//	copy:  rsi va, rcx size, r8 string?, r9 count, rdi dest, rax mapped byte, rdx byte
//	xlate/walk: rax va in, rax mapped out; r10 table/phys, r11 status, rdx scratch
const (
	labelCopy   = "copy"
	labelXlate  = "xlate"
	labelWalk   = "walk"
	pteAddrMask = 0x000ffffffffff000
	pagePresent = 1
	pageLarge   = 0x80
)

// captures emits the capture code, from after the record's frame copy
// (rdi at RecNCapOff, rdx head) to before head is published (rdx head
// again), writing the captures from the record's dataOff on; frameTop
// is the distance from %rsp to the probe's %rsp. It returns the
// subroutines to place after the stub's exit, or nil.
func captures(e *emitter, p StubParams, dataOff, frameTop int32) func() {
	var (
		rax, rcx, rdx, rsi, rbp, rsp = x86asm.RAX, x86asm.RCX, x86asm.RDX, x86asm.RSI, x86asm.RBP, x86asm.RSP
		r8, r12, r13, r14, r15       = x86asm.R8, x86asm.R12, x86asm.R13, x86asm.R14, x86asm.R15
	)
	if len(p.Captures) == 0 {
		return nil
	}
	e.lea(r12, m(x86asm.RDI, -RecNCapOff))
	e.mov(rdx, rbp)
	e.lea(r13, m(r12, dataOff))
	e.movabs(r14, p.DirectMap)
	e.movabs(r15, pteAddrMask)
	for i, c := range p.Captures {
		next := fmt.Sprintf("capture_%d_done", i)
		switch {
		case c.Current:
			e.load(nil, true, rsi, m(r12, RecCurrentOff))
		case c.Reg == rsp:
			e.lea(rsi, m(rsp, frameTop))
		case c.Reg != 0:
			e.load(nil, true, rsi, m(rsp, frameSlot(c.Reg)))
		default:
			e.movabs(rsi, c.Imm)
		}
		for _, off := range c.Derefs {
			if off != 0 {
				e.aluImm(true, 0, r(rsi), off)
			}
			e.movImm32(rcx, 8)
			e.xor32(r8, r8)
			e.call(labelCopy)
			e.test32(rax, rax)
			e.jcc(ccNE, next)
			e.load(nil, true, rsi, m(r13, -8))
		}
		if c.Off != 0 {
			e.aluImm(true, 0, r(rsi), c.Off)
		}
		e.movImm32(rcx, int32(c.Size))
		e.movImm32(r8, b2i(c.String))
		e.call(labelCopy)
		e.bind(next)
	}
	e.mov(rbp, rdx)
	return func() { subroutines(e, p) }
}

func b2i(b bool) int32 {
	if b {
		return 1
	}
	return 0
}

// frameSlot is reg's offset in the stub's frame from %rsp.
func frameSlot(reg x86asm.Reg) int32 {
	for i := len(saved) - 1; i >= 0; i-- {
		if saved[i] == reg {
			return int32(8 * (len(saved) - 1 - i))
		}
	}
	panic(fmt.Sprintf("stub: %v is not saved in the frame", reg))
}

// subroutines emits copy, xlate and walk.
func subroutines(e *emitter, p StubParams) {
	var (
		rax, rcx, rdx, rsi, rdi = x86asm.RAX, x86asm.RCX, x86asm.RDX, x86asm.RSI, x86asm.RDI
		r8, r9, r10, r11        = x86asm.R8, x86asm.R9, x86asm.R10, x86asm.R11
		r12, r13, r14, r15      = x86asm.R12, x86asm.R13, x86asm.R14, x86asm.R15
	)
	// copy: capture up to rcx bytes at rsi (stopping after a NUL if r8)
	// into the entry at r13; advance r13 past it. eax = 0, or 1 on a fault.
	e.bind(labelCopy)
	e.store(true, rsi, m(r13, 0))
	e.store(false, rcx, m(r13, 12))
	e.lea(rdi, m(r13, CaptureHeader))
	e.xor32(r9, r9)
	e.xor32(rax, rax) // no page mapped yet
	e.bind("copy_loop")
	e.cmp32(rcx, r9) // r9d - ecx
	e.jcc(ccAE, "copy_ok")
	e.test(rax, rax)
	e.jcc(ccNE, "copy_mapped")
	e.mov(rsi, rax)
	e.call(labelXlate)
	e.test(rax, rax)
	e.jcc(ccE, "copy_fault")
	e.bind("copy_mapped")
	e.movzxb(rdx, m(rax, 0))
	e.storeByte(rdx, m(rdi, 0))
	e.inc(rdi)
	e.inc(rax)
	e.inc(rsi)
	e.inc(r9)
	e.testImm(false, r(rsi), pageSize-1)
	e.jcc(ccNE, "copy_same_page")
	e.xor32(rax, rax) // the next byte is on the next page
	e.bind("copy_same_page")
	e.test32(r8, r8)
	e.jcc(ccE, "copy_loop")
	e.testByte(rdx, rdx)
	e.jcc(ccNE, "copy_loop")
	e.bind("copy_ok")
	e.store(false, r9, m(r13, 8))
	e.xor32(rax, rax)
	e.jmp("copy_next")
	e.bind("copy_fault")
	e.store(false, r9, m(r13, 8))
	e.aluImm(false, 1, m(r13, 12), -captureFault) // or: the fault bit
	e.movImm32(rax, 1)
	e.bind("copy_next")
	e.inc32(m(r12, RecNCapOff))
	e.lea32(rdx, m(rcx, 7))
	e.aluImm(false, 4, r(rdx), -8)
	e.lea(r13, mi(r13, rdx, CaptureHeader))
	e.ret()

	// xlate: rax = the direct-map address of the byte at va rax, or 0.
	canon := byte(47)
	if p.LA57 {
		canon = 56
	}
	e.bind(labelXlate)
	e.mov(rax, rdx)
	e.sar(rdx, canon)
	e.inc(rdx)
	e.aluImm(true, 7, r(rdx), 1)
	e.jcc(ccA, "xlate_bad") // not canonical
	e.call(labelWalk)
	e.test(r11, r11)
	e.jcc(ccNE, "xlate_bad")
	e.movabs(rdx, p.PhysLimit)
	e.cmp(rdx, r10) // r10 - rdx
	e.jcc(ccAE, "xlate_bad")
	e.lea(rax, mi(r14, r10, 0))
	e.call(labelWalk) // the direct map has the page too
	e.test(r11, r11)
	e.jcc(ccNE, "xlate_bad")
	e.ret()
	e.bind("xlate_bad")
	e.xor32(rax, rax)
	e.ret()

	// walk: r10 = the physical address of va rax under %cr3, r11 = 0; or
	// r11 = 1 if a level is not present (or has a reserved PS bit).
	e.bind(labelWalk)
	e.movFromCR3(r10)
	e.and(r15, r10)
	shifts := []byte{39, 30, 21, 12}
	if p.LA57 {
		shifts = append([]byte{48}, shifts...)
	}
	for _, s := range shifts {
		e.mov(rax, rdx)
		e.shr(rdx, s)
		e.aluImm(false, 4, r(rdx), 0x1ff)
		e.shl(rdx, 3)
		e.add(r14, r10)
		e.load(nil, true, r10, mi(r10, rdx, 0))
		e.testImm(false, r(r10), pagePresent)
		e.jcc(ccE, "walk_bad")
		switch s {
		case 30, 21:
			e.testImm(false, r(r10), pageLarge)
			e.jcc(ccNE, fmt.Sprintf("walk_large_%d", s))
		case 39, 48:
			e.testImm(false, r(r10), pageLarge)
			e.jcc(ccNE, "walk_bad")
		}
		e.and(r15, r10)
	}
	e.mov(rax, rdx)
	e.aluImm(false, 4, r(rdx), pageSize-1)
	e.add(rdx, r10)
	e.xor32(r11, r11)
	e.ret()
	for _, s := range []byte{30, 21} {
		e.bind(fmt.Sprintf("walk_large_%d", s))
		e.and(r15, r10)
		e.aluImm(true, 4, r(r10), -1<<s)
		e.mov(rax, rdx)
		e.aluImm(false, 4, r(rdx), 1<<s-1)
		e.add(rdx, r10)
		e.xor32(r11, r11)
		e.ret()
	}
	e.bind("walk_bad")
	e.movImm32(r11, 1)
	e.ret()
}

const pageSize = 4096
