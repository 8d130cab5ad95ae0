package e2e

import (
	"strings"
	"testing"

	"github.com/hvprobe/hvprobe/introspect"
	"github.com/hvprobe/hvprobe/vmm"
)

// TestKASLRAndBanner: the guest boots with KASLR; the slide recovered from
// the running vCPU equals the one hvprobe chose, the page walker agrees
// with KVM_TRANSLATE, and linux_banner read through the guest's page
// tables is the banner the guest printed.
func TestKASLRAndBanner(t *testing.T) {
	g := miniGuest(t)
	layout := g.s.VM.Layout()
	var got introspect.KASLR
	var kvmPA uint64
	var kvmOK bool
	bannerVA, err := g.a.Kernel.Resolve("linux_banner", 0)
	if err != nil {
		t.Fatal(err)
	}
	in, err := g.s.Inspect()
	if err != nil {
		t.Fatal(err)
	}
	got = in.KASLR
	err = g.s.VM.Do(0, func(c vmm.CPU) error {
		var err error
		kvmPA, kvmOK, err = c.(*vmm.VCPU).Translate(bannerVA)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("KASLR: slide %#x, physical offset %#x (hvprobe chose %#x, %#x)", got.Slide, got.PhysOffset, layout.VirtDelta, layout.PhysDelta)
	if got.Slide != layout.VirtDelta || got.PhysOffset != layout.PhysDelta {
		t.Fatalf("detected slide %#x / phys %#x, hvprobe placed the kernel at %#x / %#x", got.Slide, got.PhysOffset, layout.VirtDelta, layout.PhysDelta)
	}
	if layout.VirtDelta == 0 {
		t.Log("note: KASLR picked slide 0 this boot")
	}
	walk, err := g.a.Kernel.Translate(bannerVA)
	if err != nil {
		t.Fatal(err)
	}
	if !kvmOK || walk != kvmPA {
		t.Fatalf("linux_banner: page walker says %#x, KVM_TRANSLATE says %#x (valid=%v)", walk, kvmPA, kvmOK)
	}
	banner, err := g.a.Kernel.Mem.ReadCString(bannerVA, 512)
	if err != nil {
		t.Fatal(err)
	}
	banner = strings.TrimSpace(banner)
	for _, l := range g.s.Lines() {
		if i := strings.Index(l.Text, "Linux version "); i >= 0 {
			if strings.TrimSpace(l.Text[i:]) != banner {
				t.Fatalf("banner in memory %q, on the console %q", banner, l.Text[i:])
			}
			return
		}
	}
	t.Fatal("the guest never printed its banner")
}

// TestTaskList: the workload's thread is in the task list with the pid and
// name it printed for itself, and is the current task of a vCPU stopped
// in it.
func TestTaskList(t *testing.T) {
	g := miniGuest(t)
	l, err := g.s.TaskLayout()
	if err != nil {
		t.Fatalf("the mini kernel must carry BTF for task layouts: %v", err)
	}
	r := report(t, g.run(t, "tasks"), "task")
	initTask, err := g.a.Kernel.Resolve("init_task", 0)
	if err != nil {
		t.Fatal(err)
	}
	tasks, err := introspect.Tasks(g.a.Kernel.Mem, initTask, l)
	if err != nil {
		t.Fatal(err)
	}
	pid := num(t, r, "pid")
	for _, task := range tasks {
		if int64(task.PID) == pid {
			if task.Comm != r["comm"] {
				t.Fatalf("task %d is %q in the task list, the workload calls itself %q", pid, task.Comm, r["comm"])
			}
			t.Logf("%d tasks; workload pid %d comm %q found", len(tasks), pid, task.Comm)
			return
		}
	}
	t.Fatalf("pid %d (%s) not among %d tasks: %+v", pid, r["comm"], len(tasks), tasks)
}
