package introspect

import (
	"bytes"
	"errors"
	"fmt"
)

// TaskLayout gives byte offsets of the task_struct fields this package
// reads; the caller fills it from BTF or a built-in table for the kernel.
type TaskLayout struct {
	Tasks uint64 // struct list_head tasks
	PID   uint64 // pid_t pid
	TGID  uint64 // pid_t tgid
	Comm  uint64 // char comm[TASK_COMM_LEN]
	// State is __state (unsigned int) since 5.14, state (long) before;
	// only its low 32 bits are read, which covers every state value.
	State uint64
	// HotCurrentTask is the offset of current_task in struct pcpu_hot. It
	// is used only for kernels (6.2 to 6.14) where current_task is a member
	// of pcpu_hot rather than a per-cpu variable of its own.
	HotCurrentTask uint64
}

// TaskCommLen is TASK_COMM_LEN.
const TaskCommLen = 16

// MaxTasks bounds the task-list walk.
const MaxTasks = 1 << 16

// Task is a snapshot of one task_struct.
type Task struct {
	Addr  uint64 // VA of the task_struct
	PID   int32
	TGID  int32
	Comm  string
	State uint32
}

// ReadTask reads the task_struct at addr.
func ReadTask(vm *VirtMem, addr uint64, l TaskLayout) (Task, error) {
	t := Task{Addr: addr}
	pid, err := vm.ReadU32(addr + l.PID)
	if err != nil {
		return t, fmt.Errorf("reading task %#x: pid: %w", addr, err)
	}
	tgid, err := vm.ReadU32(addr + l.TGID)
	if err != nil {
		return t, fmt.Errorf("reading task %#x: tgid: %w", addr, err)
	}
	state, err := vm.ReadU32(addr + l.State)
	if err != nil {
		return t, fmt.Errorf("reading task %#x: state: %w", addr, err)
	}
	var comm [TaskCommLen]byte
	if err := vm.Read(addr+l.Comm, comm[:]); err != nil {
		return t, fmt.Errorf("reading task %#x: comm: %w", addr, err)
	}
	t.Comm = CommString(comm[:])
	t.PID, t.TGID, t.State = int32(pid), int32(tgid), state
	return t, nil
}

// CommString is a comm read from a task_struct: the kernel keeps it
// NUL-terminated, but a torn read need not be.
func CommString(comm []byte) string {
	if i := bytes.IndexByte(comm, 0); i >= 0 {
		comm = comm[:i]
	}
	return string(comm)
}

// CurrentTask returns the task running on the CPU whose per-cpu base is
// gsbase (see GSBase). The pointer is the per-cpu variable current_task
// when System.map has it (up to 6.1, and again from 6.15), else
// pcpu_hot + l.HotCurrentTask. vm must map the kernel half (KernelView).
func CurrentTask(vm *VirtMem, gsbase uint64, syms Symbols, l TaskLayout) (Task, error) {
	off, err := syms.Address("current_task")
	if err != nil {
		hot, herr := syms.Address("pcpu_hot")
		if herr != nil {
			return Task{}, fmt.Errorf("locating current task: %w", errors.Join(err, herr))
		}
		off = hot + l.HotCurrentTask
	}
	va, err := PerCPUAddr(gsbase, off)
	if err != nil {
		return Task{}, fmt.Errorf("locating current task: %w", err)
	}
	task, err := vm.ReadU64(va)
	if err != nil {
		return Task{}, fmt.Errorf("reading current task pointer at %#x: %w", va, err)
	}
	return ReadTask(vm, task, l)
}

// Tasks walks the circular task list from initTask (the slid address of
// init_task), which it returns first, followed by every task linked through
// tasks.next until the walk returns to init_task. It stops with an error
// wrapping ErrTaskList on a cycle that misses init_task or after MaxTasks
// entries, and with the read error on an unmapped pointer; the tasks read
// until then are returned along with the error.
func Tasks(vm *VirtMem, initTask uint64, l TaskLayout) ([]Task, error) {
	head := initTask + l.Tasks
	first, err := ReadTask(vm, initTask, l)
	if err != nil {
		return nil, fmt.Errorf("walking task list: %w", err)
	}
	out := []Task{first}
	seen := map[uint64]struct{}{head: {}}
	next, err := vm.ReadU64(head)
	for err == nil && next != head {
		if len(out) >= MaxTasks {
			return out, fmt.Errorf("walking task list: more than %d tasks: %w", MaxTasks, ErrTaskList)
		}
		if _, dup := seen[next]; dup {
			return out, fmt.Errorf("walking task list: %#x revisited after %d tasks: %w", next, len(out), ErrTaskList)
		}
		seen[next] = struct{}{}
		t, terr := ReadTask(vm, next-l.Tasks, l)
		if terr != nil {
			return out, fmt.Errorf("walking task list: %w", terr)
		}
		out = append(out, t)
		next, err = vm.ReadU64(next)
	}
	if err != nil {
		return out, fmt.Errorf("walking task list: reading tasks.next after %d tasks: %w", len(out), err)
	}
	return out, nil
}
