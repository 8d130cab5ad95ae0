package introspect

import (
	"encoding/binary"
	"errors"
	"testing"
	"unicode/utf8"

	"github.com/hvprobe/hvprobe/guest"
	"github.com/hvprobe/hvprobe/vmm"
)

// The guest may be hostile (issue 27): these fuzzers give the readers of
// guest memory bytes the guest chose. None may panic or run unbounded.

// selfMapped is a VirtMem over ram whose page tables the fuzzer wrote;
// CR3 0, so the first entries of ram are the tables themselves.
func selfMapped(ram []byte) *VirtMem { return NewVirtMem(sliceMem(ram), 0, false) }

// seedRAM maps VA 0 onto PA 0 through one self-referencing table (every
// level of the walk is page 0), so a structure at a small VA is read from
// the same offset of ram.
func seedRAM(n int) []byte {
	ram := make([]byte, n)
	binary.LittleEndian.PutUint64(ram, kP|kW)
	return ram
}

// FuzzTasks: the task-list walk ends (revisits, MaxTasks, a read error)
// whatever the list holds, and never returns more than MaxTasks tasks.
func FuzzTasks(f *testing.F) {
	ram := seedRAM(0x400)
	// A cycle that misses init_task: 0x100 → 0x200 → 0x200.
	binary.LittleEndian.PutUint64(ram[0x100+0x10:], 0x200+0x10)
	binary.LittleEndian.PutUint64(ram[0x200+0x10:], 0x200+0x10)
	f.Add(ram, uint64(0x100), uint64(0x10))
	f.Add(seedRAM(0x40), uint64(0xfffffffffffffff0), uint64(0x20))
	f.Fuzz(func(t *testing.T, ram []byte, initTask, tasksOff uint64) {
		l := TaskLayout{Tasks: tasksOff % 0x800, PID: 0x30, TGID: 0x34, Comm: 0x40, State: 0x18}
		got, err := Tasks(selfMapped(ram), initTask, l)
		if len(got) > MaxTasks {
			t.Fatalf("%d tasks", len(got))
		}
		if err == nil && len(got) == 0 {
			t.Fatal("no error and no init_task")
		}
		for _, task := range got {
			if !utf8.ValidString(task.Comm) && len(task.Comm) > TaskCommLen {
				t.Fatalf("comm %q longer than TASK_COMM_LEN", task.Comm)
			}
		}
	})
}

// FuzzReadCString: a string read is bounded by max however far the
// guest's bytes run without a NUL, or wherever they end.
func FuzzReadCString(f *testing.F) {
	f.Add(seedRAM(0x40), uint64(8), 16)
	f.Add(seedRAM(0x2000), uint64(0xff8), 4096)
	f.Fuzz(func(t *testing.T, ram []byte, va uint64, max int) {
		max %= 1 << 16
		s, err := selfMapped(ram).ReadCString(va, max)
		if err == nil && max >= 0 && len(s) > max {
			t.Fatalf("%d bytes read, max %d", len(s), max)
		}
	})
}

// fuzzStack is guest memory the fuzzer wrote: words at base, base+8, ...
type fuzzStack struct {
	base uint64
	b    []byte
}

func (m fuzzStack) ReadVirt(va uint64, p []byte) error {
	off := va - m.base
	if va < m.base || off > uint64(len(m.b)) || uint64(len(p)) > uint64(len(m.b))-off {
		return errors.New("fault")
	}
	copy(p, m.b[off:])
	return nil
}

// FuzzUnwind: both unwinders stop (MaxDepth, a loop, a fault, no rule)
// on any stack and register values, and return at most MaxDepth frames.
// The ORC table is the test kernel's (testORC) with entries the fuzzer
// may rewrite.
func FuzzUnwind(f *testing.F) {
	stack := make([]byte, 0x100)
	for i := 0; i < len(stack); i += 8 {
		binary.LittleEndian.PutUint64(stack[i:], kt+0x1004)
	}
	f.Add(stack, uint64(kt+0x1004), uint64(stS), uint64(stS), []byte{5, 8, 4, 16, 1, 0}, uint8(3))
	f.Add(stack, uint64(kt+0x3010), uint64(stS), uint64(stS+8), []byte{9, 0xf0, 8, 0, 2, 1}, uint8(0))
	f.Fuzz(func(t *testing.T, stack []byte, rip, rsp, rbp uint64, rule []byte, depth uint8) {
		ips := []uint64{kt + 0x1000, kt + 0x1004, kt + 0x2000, kt + 0x3000, kt + 0x3010, kt + 0x6000}
		entries := make([]guest.ORCEntry, len(ips))
		for i := range entries {
			entries[i] = guest.ORCEntry{SPReg: guest.ORCRegSP, SPOffset: 8, Type: guest.ORCCall}
		}
		if len(rule) >= 6 {
			// One rule the fuzzer chose, on the entry rip falls in.
			e := guest.ORCEntry{SPReg: guest.ORCReg(rule[0] % 10), SPOffset: int16(int8(rule[1])) * 8,
				BPReg: guest.ORCReg(rule[2] % 10), BPOffset: int16(int8(rule[3])) * 8,
				Type: guest.ORCType(rule[4] % 5), Signal: rule[5]&1 != 0}
			entries[int(rip%uint64(len(ips)))] = e
		}
		orc, err := guest.NewORC(ips, entries)
		if err != nil {
			t.Fatal(err)
		}
		mem := fuzzStack{base: stS &^ 0xfff, b: stack}
		regs := vmm.Regs{RIP: rip, RSP: rsp, RBP: rbp}
		for _, u := range []*Unwinder{{MaxDepth: int(depth)}, {ORC: orc, MaxDepth: int(depth)}} {
			frames, _ := u.Unwind(mem, regs)
			max := int(depth)
			if max == 0 {
				max = DefaultUnwindDepth
			}
			if len(frames) > max {
				t.Fatalf("%d frames, MaxDepth %d", len(frames), max)
			}
		}
	})
}
