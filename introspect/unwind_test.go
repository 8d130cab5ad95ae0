package introspect

import (
	"errors"
	"reflect"
	"testing"

	"github.com/hvprobe/hvprobe/guest"
	"github.com/hvprobe/hvprobe/vmm"
)

// wordMem is guest memory of 8-byte words; anything else faults.
type wordMem map[uint64]uint64

func (m wordMem) ReadVirt(va uint64, p []byte) error {
	v, ok := m[va]
	if !ok || len(p) != 8 {
		return errors.New("fault")
	}
	for i := range p {
		p[i] = byte(v >> (8 * i))
	}
	return nil
}

const kt = 0xffffffff81000000 // kernel text base of the synthetic kernel

// testORC describes five pieces of code:
//
//	A  kt+0x1000  push %rbp; mov %rsp,%rbp at +0..+4, then CFA = rbp+16
//	B  kt+0x2000  push %rbx at +0, then CFA = rsp+16
//	X  kt+0x3000  exception entry: iret frame at rsp, then (+0x10) pt_regs at rsp
//	C  kt+0x4000  a leaf, CFA = rsp+8
//	D  kt+0x5000  outermost code (end of stack)
//	   kt+0x6000  no rule
func testORC(t *testing.T) *guest.ORC {
	t.Helper()
	call := func(sp int16) guest.ORCEntry {
		return guest.ORCEntry{SPReg: guest.ORCRegSP, SPOffset: sp, Type: guest.ORCCall}
	}
	o, err := guest.NewORC(
		[]uint64{kt + 0x1000, kt + 0x1004, kt + 0x2000, kt + 0x2001, kt + 0x3000, kt + 0x3010, kt + 0x4000, kt + 0x5000, kt + 0x6000},
		[]guest.ORCEntry{
			call(8),
			{SPReg: guest.ORCRegBP, SPOffset: 16, BPReg: guest.ORCRegPrevSP, BPOffset: -16, Type: guest.ORCCall},
			call(8),
			call(16),
			{SPReg: guest.ORCRegSP, Type: guest.ORCRegsPartial, Signal: true},
			{SPReg: guest.ORCRegSP, Type: guest.ORCRegs, Signal: true},
			call(8),
			{Type: guest.ORCEndOfStack},
			{Type: guest.ORCUndefined},
		})
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// Stack addresses: S the top at the hit, P a pt_regs, I an iret frame, Q
// B's frame, R A's frame (rbp chain).
const (
	stS = 0xffffc90000003e00
	stP = stS + 8
	stQ = 0xffffc90000003f00
	stR = 0xffffc90000003f40
	stI = 0xffffc90000003d00
)

// interrupted is the stack of C called from X's handler after an
// exception hit B at +5; B was called by A, A by D. cs is the pt_regs'
// code selector; ret is A's return address into D as stored on the stack.
func interrupted(cs, ret uint64) wordMem {
	return wordMem{
		stS:               kt + 0x3015, // C's return into X, after the pt_regs rule
		stP + ptBP:        stR,         // rbp at the exception: A's frame
		stP + ptIP:        kt + 0x2005, // interrupted in B
		stP + ptCS:        cs,          // kernel or user mode
		stP + ptSP:        stQ,         // B's stack
		stQ:               0x1234,      // B's saved rbx
		stQ + 8:           kt + 0x1010, // B's return into A
		stR:               0,           // D's rbp
		stR + 8:           ret,         // A's return into D
		stI:               kt + 0x2005, // an iret frame (partial pt_regs)
		stI + ptCS - ptIP: 0x10,
		stI + ptSP - ptIP: stQ,
	}
}

func TestUnwindORC(t *testing.T) {
	o := testORC(t)
	for _, tc := range []struct {
		name   string
		mem    wordMem
		regs   vmm.Regs
		ret    func(addr, slot uint64) uint64
		want   []uint64
		errSub bool
	}{
		{
			name: "through an exception's pt_regs",
			mem:  interrupted(0x10, kt+0x5008),
			regs: vmm.Regs{RIP: kt + 0x4000, RSP: stS, RBP: 0xdead},
			want: []uint64{kt + 0x4000, kt + 0x3015, kt + 0x2005, kt + 0x1010, kt + 0x5008},
		},
		{
			name: "stops at a user-mode pt_regs",
			mem:  interrupted(0x33, kt+0x5008),
			regs: vmm.Regs{RIP: kt + 0x4000, RSP: stS},
			want: []uint64{kt + 0x4000, kt + 0x3015},
		},
		{
			name: "partial frame at the exception entry takes rbp from the vCPU",
			mem:  interrupted(0x10, kt+0x5008),
			regs: vmm.Regs{RIP: kt + 0x3000, RSP: stI, RBP: stR},
			want: []uint64{kt + 0x3000, kt + 0x2005, kt + 0x1010, kt + 0x5008},
		},
		{
			name: "kretprobe trampoline mapped back",
			mem:  interrupted(0x10, kt+0x7000),
			regs: vmm.Regs{RIP: kt + 0x4000, RSP: stS},
			ret: func(a, slot uint64) uint64 {
				if a == kt+0x7000 && slot == stR+8 {
					return kt + 0x5008
				}
				return a
			},
			want: []uint64{kt + 0x4000, kt + 0x3015, kt + 0x2005, kt + 0x1010, kt + 0x5008},
		},
		{
			name:   "no rule",
			mem:    interrupted(0x10, kt+0x6008),
			regs:   vmm.Regs{RIP: kt + 0x4000, RSP: stS},
			want:   []uint64{kt + 0x4000, kt + 0x3015, kt + 0x2005, kt + 0x1010, kt + 0x6008},
			errSub: true,
		},
		{
			name:   "unreadable stack",
			mem:    wordMem{},
			regs:   vmm.Regs{RIP: kt + 0x4000, RSP: stS},
			want:   []uint64{kt + 0x4000},
			errSub: true,
		},
	} {
		u := &Unwinder{ORC: o, Return: tc.ret}
		got, err := u.Unwind(tc.mem, tc.regs)
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: frames %#x, want %#x", tc.name, got, tc.want)
		}
		if tc.errSub != errors.Is(err, ErrUnwind) {
			t.Errorf("%s: err %v", tc.name, err)
		}
	}
}

func TestUnwindORCDepth(t *testing.T) {
	u := &Unwinder{ORC: testORC(t), MaxDepth: 3}
	got, err := u.Unwind(interrupted(0x10, kt+0x5008), vmm.Regs{RIP: kt + 0x4000, RSP: stS})
	if err != nil || len(got) != 3 {
		t.Errorf("got %#x, %v", got, err)
	}
}

func TestUnwindFramePointers(t *testing.T) {
	const b0, b1 = 0xffffc90000003f00, 0xffffc90000003f40
	chain := wordMem{b0: b1, b0 + 8: kt + 0x1111, b1: 0, b1 + 8: kt + 0x2222}
	loop := wordMem{b0: b1, b0 + 8: kt + 0x1111, b1: b0, b1 + 8: kt + 0x2222}
	user := wordMem{b0: b1, b0 + 8: kt + 0x1111, b1: 0x7ffc0000, b1 + 8: 0x401000}
	regs := vmm.Regs{RIP: kt + 0x10, RBP: b0}
	for _, tc := range []struct {
		name  string
		mem   wordMem
		regs  vmm.Regs
		depth int
		want  []uint64
		err   bool
	}{
		{"chain to rbp 0", chain, regs, 0, []uint64{kt + 0x10, kt + 0x1111, kt + 0x2222}, false},
		{"depth bound", chain, regs, 2, []uint64{kt + 0x10, kt + 0x1111}, false},
		{"loop", loop, regs, 0, []uint64{kt + 0x10, kt + 0x1111, kt + 0x2222}, true},
		{"user return address ends", user, regs, 0, []uint64{kt + 0x10, kt + 0x1111}, false},
		{"misaligned rbp", chain, vmm.Regs{RIP: kt + 0x10, RBP: b0 + 1}, 0, []uint64{kt + 0x10}, true},
		{"unreadable", wordMem{}, regs, 0, []uint64{kt + 0x10}, true},
		{"user rip", chain, vmm.Regs{RIP: 0x401000, RBP: b0}, 0, nil, false},
	} {
		u := &Unwinder{MaxDepth: tc.depth}
		got, err := u.Unwind(tc.mem, tc.regs)
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: frames %#x, want %#x", tc.name, got, tc.want)
		}
		if tc.err != errors.Is(err, ErrUnwind) {
			t.Errorf("%s: err %v", tc.name, err)
		}
	}
}
