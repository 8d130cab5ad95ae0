package session

import (
	"fmt"

	"github.com/hvprobe/hvprobe/guest"
	"github.com/hvprobe/hvprobe/introspect"
	"github.com/hvprobe/hvprobe/vmm"
)

// Inspection is a look at the running guest.
type Inspection struct {
	KASLR introspect.KASLR // recovered from vCPU 0, not from what hvprobe chose
	Tasks []introspect.Task
}

// unslid adapts the System.map to introspect.Symbols.
type unslid struct{ t *guest.SymbolTable }

func (u unslid) Address(name string) (uint64, error) {
	s, err := u.t.Lookup(name)
	return s.Addr, err
}

// TaskLayout reads task_struct member offsets from the kernel's BTF.
func (s *Session) TaskLayout() (introspect.TaskLayout, error) {
	var l introspect.TaskLayout
	types, err := s.Kernel.BTF()
	if err != nil {
		return l, fmt.Errorf("task layout: %w", err)
	}
	for _, f := range []struct {
		member string
		dst    *uint64
	}{{"tasks", &l.Tasks}, {"pid", &l.PID}, {"tgid", &l.TGID}, {"comm", &l.Comm}, {"__state", &l.State}} {
		if *f.dst, err = types.MemberOffset("task_struct", f.member); err != nil {
			return l, fmt.Errorf("task layout: %w", err)
		}
	}
	return l, nil
}

// Inspect recovers the KASLR placement from vCPU 0 (MSR_LSTAR against
// System.map, cross-checked through the page tables) and walks the task
// list. The vCPU is stopped while its registers are read.
func (s *Session) Inspect() (Inspection, error) {
	var in Inspection
	err := s.VM.Do(0, func(c vmm.CPU) error {
		var err error
		in.KASLR, err = introspect.DetectKASLR(c, s.VM.Mem(), unslid{s.Kernel.Symbols})
		return err
	})
	if err != nil {
		return in, err
	}
	a, err := s.Attached()
	if err != nil {
		return in, err
	}
	l, err := s.TaskLayout()
	if err != nil {
		return in, err
	}
	initTask, err := a.Kernel.Resolve("init_task", 0)
	if err != nil {
		return in, err
	}
	in.Tasks, err = introspect.Tasks(a.Kernel.Mem, initTask, l)
	return in, err
}

// WhereCPUs says where each vCPU is: rip as symbol+offset, rsp, and
// whether interrupts are on. For a guest that stopped making progress;
// call it after Run has returned (or on a running guest, which it stops
// one vCPU at a time).
func (s *Session) WhereCPUs() []string {
	var out []string
	for i := 0; i < s.VM.NumCPUs(); i++ {
		err := s.VM.Do(i, func(c vmm.CPU) error {
			r, err := c.Regs()
			if err != nil {
				return err
			}
			irq := "off"
			if r.RFLAGS&vmm.FlagIF != 0 {
				irq = "on"
			}
			out = append(out, fmt.Sprintf("vCPU %d: rip %#x %s rsp %#x interrupts %s", i, r.RIP, s.symbolize(r.RIP), r.RSP, irq))
			return nil
		})
		if err != nil {
			out = append(out, fmt.Sprintf("vCPU %d: %v", i, err))
		}
	}
	return out
}
