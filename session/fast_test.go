package session

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/hvprobe/hvprobe/introspect"
	"github.com/hvprobe/hvprobe/probedef"
	"github.com/hvprobe/hvprobe/probedef/probedeftest"
	"github.com/hvprobe/hvprobe/stub"
	"github.com/hvprobe/hvprobe/vmm"
)

type testSyms map[string]uint64

func (s testSyms) Address(name string) (uint64, error) {
	if a, ok := s[name]; ok {
		return a, nil
	}
	return 0, errors.New("no symbol " + name)
}
func (s testSyms) Format(addr uint64) string { return fmt.Sprintf("%#x", addr) }

// simulate does what the stub does for cs at a hit with regs over mem
// (the vmm KVM test checks the stub itself against the same semantics).
func simulate(cs []stub.Capture, regs vmm.Regs, current uint64, mem probedeftest.PageMem) stub.Record {
	rec := stub.Record{Current: current}
	read := func(va uint64, n int, str bool) (stub.Captured, bool) {
		c := stub.Captured{VA: va, Asked: n}
		for i := range n {
			var b [1]byte
			if mem.ReadVirt(va+uint64(i), b[:]) != nil {
				c.Fault = true
				return c, false
			}
			c.Bytes = append(c.Bytes, b[0])
			if str && b[0] == 0 {
				break
			}
		}
		return c, true
	}
	for _, c := range cs {
		v := c.Imm
		if c.Current {
			v = current
		}
		if c.Reg != 0 {
			p, _ := regs.GPR(c.Reg)
			v = *p
		}
		ok := true
		for _, off := range c.Derefs {
			var got stub.Captured
			got, ok = read(v+uint64(int64(off)), 8, false)
			rec.Captures = append(rec.Captures, got)
			if !ok {
				break
			}
			v = binary.LittleEndian.Uint64(got.Bytes)
		}
		if ok {
			got, _ := read(v+uint64(int64(c.Off)), c.Size, c.String)
			rec.Captures = append(rec.Captures, got)
		}
	}
	return rec
}

// TestFastCaptures: for each line, the values evaluated from the
// captures a hit records are the values the int3 path evaluates from
// guest memory; lines the stub cannot capture say why.
func TestFastCaptures(t *testing.T) {
	const (
		obj  = 0xffff888000100ff0 // a struct straddling a page boundary
		str  = 0xffff888000200000
		hole = 0xffff888000300ff8 // 8 bytes before an unmapped page
		addr = 0xffffffff81001000
	)
	mem := probedeftest.PageMem{}
	le := binary.LittleEndian
	mem.Put(obj, le.AppendUint64(le.AppendUint64(le.AppendUint64(nil, str), 0x8877665544332211), hole))
	mem.Put(str, []byte("/etc/passwd\x00"))
	mem.Put(hole, []byte("no NUL.."))
	mem.Put(0xffffffff82000000, le.AppendUint64(nil, 12345)) // jiffies
	mem.Put(0xffffffff82000100, le.AppendUint64(nil, str))   // saved_command_line
	stack := uint64(0xffffc90000013f00)
	mem.Put(stack, le.AppendUint64(le.AppendUint64(le.AppendUint64(nil, addr+0x40), obj), 7))
	regs := vmm.Regs{RDI: obj, RSI: str, RDX: 3, RSP: stack, RIP: addr, RFLAGS: 0x246}
	syms := testSyms{"jiffies": 0xffffffff82000000, "saved_command_line": 0xffffffff82000100}
	for line, why := range map[string]string{
		`p:a f x=%di:s64 y=%si sp=$stack f=%flags`:                                      "",
		`p:a f x=$arg2 c=$comm i=\7 s=\"k"`:                                             "",
		`p:a f m=+8(%di):u32 n=+12(%di):x16`:                                            "",
		`p:a f s=+0(%di):u64 t=+0(+0(%di)):string`:                                      "",
		`p:a f s=+0(%si):string u=+0(%si):ustring`:                                      "",
		`p:a f h=+0(+16(%di)):string`:                                                   "", // faults after 8 bytes
		`p:a f st=$stack1 sp2=+0($stack1):u64`:                                          "",
		`p:a f g=@jiffies j=@0xffffffff82000000:u32 k=@jiffies+4:u8`:                    "",
		`p:a f sym=$stack0:symbol ss=+0($stack):symstr`:                                 "",
		`p:a f far=+0(+8(+0(%dx))):u64`:                                                 "", // *(3): faults
		`p:a f a7=$arg7 ip=+0(%ip):x8`:                                                  "",
		`p:a f arr=+0(%di):u8[4]`:                                                       "arrays are not captured",
		`p:a f s1=+0(%si):string s2=+0(%si):string s3=+0(%si):string s4=+0(%si):string`: "a record holds 512",
	} {
		d, err := probedef.Parse(line)
		if err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		cs, got := fastCaptures(d, syms, addr, nil)
		if (why == "") != (got == "") || !strings.Contains(got, why) {
			t.Errorf("%s: %q, want %q", line, got, why)
			continue
		}
		if got != "" {
			continue
		}
		ctx := func(m probedef.Memory) *probedef.Context {
			return &probedef.Context{Regs: regs, CS: 0x10, SS: 0x18, Mem: m, Syms: syms, Task: commOf("sh")}
		}
		want, err := probedef.Evaluate(d, ctx(mem))
		if err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		have, err := probedef.Evaluate(d, ctx(simulate(cs, regs, 0, mem)))
		if err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		if fmt.Sprint(have) != fmt.Sprint(want) {
			t.Errorf("%s:\ncaptured %+v\ngive  %+v\nmemory %+v", line, cs, have, want)
		}
	}
	d, _ := probedef.Parse(`p:a f`)
	d.Stack = true
	if _, why := fastCaptures(d, syms, addr, nil); why == "" {
		t.Error("a stack trace went exit-less")
	}

	// r lines read memory at the return: not through entry arguments.
	for line, why := range map[string]string{
		`r:a f x=$arg1 y=$retval`:  "",
		`r:a f s=+0(%ax):string`:   "",
		`r:a f s=+0($arg1):string`: "reads memory through an entry argument",
		`r:a f a7=$arg7`:           "reads memory through an entry argument",
	} {
		d, err := probedef.Parse(line)
		if err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		if _, got := fastCaptures(d, syms, addr, nil); (why == "") != (got == "") || !strings.Contains(got, why) {
			t.Errorf("%s: %q, want %q", line, got, why)
		}
	}

	// With a task layout, the task's pid and comm are read at the hit.
	const task = 0xffff888000400000
	tl := introspect.TaskLayout{PID: 0x500, Comm: 0x700}
	mem.Put(task+tl.PID, le.AppendUint32(nil, 42))
	mem.Put(task+tl.Comm, []byte("kworker/0:1\x00"))
	d, _ = probedef.Parse(`p:a f x=+8(%di):u64`)
	cs, why := fastCaptures(d, syms, addr, &tl)
	if why != "" || len(cs) != 3 || !cs[0].Current || !cs[1].Current {
		t.Fatalf("captures %+v, %q: want the task's two first", cs, why)
	}
	rec := simulate(cs, regs, task, mem)
	var pid [4]byte
	comm := make([]byte, introspect.TaskCommLen)
	if rec.ReadVirt(task+tl.PID, pid[:]) != nil || rec.ReadVirt(task+tl.Comm, comm) != nil ||
		le.Uint32(pid[:]) != 42 || introspect.CommString(comm) != "kworker/0:1" {
		t.Errorf("task captures: pid %v comm %q", pid, comm)
	}
}
