package introspect

import (
	"encoding/binary"
	"errors"
	"slices"
	"testing"
)

const taskArea = directMap + 0x0400_0f00 // task_structs straddle pages

// guestWithTasks builds a KASLR'd guest with init_task, three more tasks
// and a per-cpu area whose current_task points at the second task.
func guestWithTasks(t testing.TB) (*fakeGuest, []uint64) {
	g := newFakeGuest(t, 0x1e0_0000, 0x3a0_0000)
	g.mapData((taskArea&^0xfff)-0x1000, 8)
	g.mapData(gsBase, 0x20)
	tasks := []uint64{taskArea, taskArea + 0x2000, taskArea + 0x1000}
	g.writeTask(g.k.Addr(symInitTask), 0, "swapper/0", 0)
	g.writeTask(tasks[0], 1, "init", 1)
	g.writeTask(tasks[1], 2, "kthreadd", 1)
	g.writeTask(tasks[2], 37, "exactly16bytes!!", 0x402)
	g.linkTasks(tasks...)
	g.putU64(gsBase+symCurrentTask, tasks[1])
	g.putU64(gsBase+symPcpuHot+testLayout.HotCurrentTask, tasks[2])
	return g, tasks
}

func TestCurrentTask(t *testing.T) {
	g, tasks := guestWithTasks(t)
	gs, err := GSBase(g.cpu)
	if err != nil {
		t.Fatal(err)
	}
	cur, err := CurrentTask(g.vm, gs, g.syms, testLayout)
	want := Task{Addr: tasks[1], PID: 2, TGID: 2, Comm: "kthreadd", State: 1}
	if err != nil || cur != want {
		t.Fatalf("got %+v, %v; want %+v", cur, err, want)
	}

	// 6.2-6.14: no current_task symbol, the pointer lives in pcpu_hot.
	delete(g.syms, "current_task")
	g.syms["pcpu_hot"] = symPcpuHot
	cur, err = CurrentTask(g.vm, gs, g.syms, testLayout)
	want = Task{Addr: tasks[2], PID: 37, TGID: 37, Comm: "exactly16bytes!!", State: 0x402}
	if err != nil || cur != want {
		t.Fatalf("pcpu_hot: got %+v, %v; want %+v", cur, err, want)
	}

	delete(g.syms, "pcpu_hot")
	if _, err := CurrentTask(g.vm, gs, g.syms, testLayout); !errors.Is(err, errNoSymbol) {
		t.Fatalf("no symbol: %v", err)
	}
	g.syms["current_task"] = symInitTask // a !SMP kernel's address
	if _, err := CurrentTask(g.vm, gs, g.syms, testLayout); !errors.Is(err, ErrNoPerCPU) {
		t.Fatalf("non-per-cpu symbol: %v", err)
	}
	g.syms["current_task"] = symCurrentTask
	g.putU64(gsBase+symCurrentTask, 0)
	if _, err := CurrentTask(g.vm, gs, g.syms, testLayout); !errors.Is(err, ErrNotMapped) {
		t.Fatalf("NULL current: %v", err)
	}
}

func TestTasks(t *testing.T) {
	g, tasks := guestWithTasks(t)
	got, err := Tasks(g.vm, g.k.Addr(symInitTask), testLayout)
	if err != nil {
		t.Fatal(err)
	}
	want := []Task{
		{Addr: g.k.Addr(symInitTask), PID: 0, TGID: 0, Comm: "swapper/0", State: 0},
		{Addr: tasks[0], PID: 1, TGID: 1, Comm: "init", State: 1},
		{Addr: tasks[1], PID: 2, TGID: 2, Comm: "kthreadd", State: 1},
		{Addr: tasks[2], PID: 37, TGID: 37, Comm: "exactly16bytes!!", State: 0x402},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
}

func TestTasksOnlyInitTask(t *testing.T) {
	g, _ := guestWithTasks(t)
	g.linkTasks()
	got, err := Tasks(g.vm, g.k.Addr(symInitTask), testLayout)
	if err != nil || len(got) != 1 || got[0].Comm != "swapper/0" {
		t.Fatalf("got %+v, %v", got, err)
	}
}

func TestTasksCorrupt(t *testing.T) {
	t.Run("cycle missing init_task", func(t *testing.T) {
		g, tasks := guestWithTasks(t)
		g.putU64(tasks[2]+testLayout.Tasks, tasks[1]+testLayout.Tasks)
		got, err := Tasks(g.vm, g.k.Addr(symInitTask), testLayout)
		if !errors.Is(err, ErrTaskList) || len(got) != 4 {
			t.Fatalf("got %d tasks, %v; want 4 and ErrTaskList", len(got), err)
		}
	})
	t.Run("unmapped next", func(t *testing.T) {
		g, tasks := guestWithTasks(t)
		g.putU64(tasks[0]+testLayout.Tasks, 0xffff_8880_dead_0000)
		got, err := Tasks(g.vm, g.k.Addr(symInitTask), testLayout)
		if !errors.Is(err, ErrNotMapped) || len(got) != 2 || got[1].PID != 1 {
			t.Fatalf("got %+v, %v; want init_task, init and ErrNotMapped", got, err)
		}
	})
	t.Run("init_task unmapped", func(t *testing.T) {
		g, _ := guestWithTasks(t)
		if _, err := Tasks(g.vm, g.k.Addr(symInitTask)+0x10_0000, testLayout); !errors.Is(err, ErrNotMapped) {
			t.Fatalf("%v", err)
		}
	})
}

// A list of more than MaxTasks distinct, readable tasks stops at the bound.
func TestTasksBound(t *testing.T) {
	g := newFakeGuest(t, 0, 0)
	g.alloc.limit = 0 // the tables for 1 K pages
	l := TaskLayout{Tasks: 0, PID: 16, TGID: 20, State: 24, Comm: 32}
	const stride = 64
	n := MaxTasks + 1
	base := uint64(directMap + 0x1000_0000)
	g.mapData(base, n*stride/0x1000+1)
	head := g.k.Addr(symInitTask) + l.Tasks
	next := make([]byte, 8*n)
	for i := range n - 1 {
		va := base + uint64(i)*stride
		binary.LittleEndian.PutUint64(next[8*i:], va+stride)
		if err := g.vm.Write(va, next[8*i:8*i+8]); err != nil {
			t.Fatal(err)
		}
	}
	last := base + uint64(n-1)*stride
	binary.LittleEndian.PutUint64(next[8*(n-1):], head)
	if err := g.vm.Write(last, next[8*(n-1):]); err != nil {
		t.Fatal(err)
	}
	g.putU64(head, base)
	got, err := Tasks(g.vm, g.k.Addr(symInitTask), l)
	if !errors.Is(err, ErrTaskList) || len(got) != MaxTasks {
		t.Fatalf("got %d tasks, %v; want %d and ErrTaskList", len(got), err, MaxTasks)
	}
}

func BenchmarkTasks(b *testing.B) {
	g, _ := guestWithTasks(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Tasks(g.vm, g.k.Addr(symInitTask), testLayout); err != nil {
			b.Fatal(err)
		}
	}
}
