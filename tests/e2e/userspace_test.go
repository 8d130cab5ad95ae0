package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kguest "github.com/hvprobe/hvprobe/guest"
	"github.com/hvprobe/hvprobe/probedef"
	"github.com/hvprobe/hvprobe/session"
	"github.com/hvprobe/hvprobe/tests/kvmtest"
	"github.com/hvprobe/hvprobe/vmm"
)

// The probes of the user-space test, on the system calls the workload
// (images/user/hvuser.c) makes: the opened path fetched from user memory
// through the calling process's page tables, read counts and results, the
// exec'd path and the comm the exec gives, and the sleep's request and
// duration.
var userProbes = []string{
	"p:hvuser/open do_sys_openat2 dfd=%di:s32 filename=+0(%si):ustring",
	"p:hvuser/read vfs_read count=%dx:u64",
	"r:hvuser/readret vfs_read ret=$retval:s64",
	// bprm_execve(bprm, fd, struct filename *filename, flags): name is
	// struct filename's first member, the kernel's copy of the path.
	"p:hvuser/execve bprm_execve path=+0(+0(%dx)):string",
	// begin_new_exec sets the new comm: $comm at its return is it.
	"r:hvuser/exec begin_new_exec ret=$retval:s32 comm=$comm",
	// hrtimer_nanosleep(ktime_t rqtp, mode, clockid): rqtp in ns.
	"r:hvuser/sleep hrtimer_nanosleep ns=$arg1:s64 ret=$retval:s64",
	// In .entry.text, which Linux's kprobes refuse: the syscall entry
	// right after its stack switch (%rax is the syscall number), and the
	// NMI entry, hit by the NMIs the test injects (userNMIs).
	"p:hvuser/sysent entry_SYSCALL_64_safe_stack nr=%ax:s64",
	"p:hvuser/nmi asm_exc_nmi",
}

// userNMIs is how many NMIs the test injects into vCPU 0 once /init runs.
const userNMIs = 3

// TestUserSpaceSyscalls boots Debian's stock kernel (KASLR on) with the
// user-space initramfs, whose /init is the workload hvuser, and checks the
// events of probes given at boot against the workload's own "HVUSER:"
// lines, exactly, with 1 and 2 vCPUs (the workload's two processes are then
// pinned to one vCPU each, and so are their events). Guest user space
// cannot make system calls under PVM (docs/QUIRKS.md #13): there the test
// skips, and `make e2e-user` runs it in the nested KVM.
func TestUserSpaceSyscalls(t *testing.T) {
	kvmtest.RequireKVM(t)
	if emulatingHost() {
		t.Skip("this KVM emulates guest kernel mode (PVM): guest user space cannot make system calls (docs/QUIRKS.md #13); `make e2e-user` runs this test in the nested KVM")
	}
	// What session.New finds too: the doorbell is installed only where
	// int3 is reflected to the guest.
	h, err := vmm.DetectHost("/sys/module", kvmtest.Device)
	if err != nil {
		t.Fatal(err)
	}
	int3 := "intercepted by KVM: no IDT doorbell"
	if h.Int3Reflected {
		int3 = "reflected to the guest: hvprobe's IDT doorbell takes it (docs/QUIRKS.md #17)"
	}
	t.Logf("host: emulating=%v, HVPROBE_NESTED=%q, int3 %s", h.Emulating, os.Getenv("HVPROBE_NESTED"), int3)
	dir := filepath.Join(imagesDir(), "stock")
	initrd := filepath.Join(imagesDir(), "user", "initramfs.cpio")
	for _, f := range []string{filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "System.map"), initrd} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("missing image (make images-stock images-user): %v", err)
		}
	}
	k, err := kguest.OpenKernel(filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "System.map"))
	if err != nil {
		t.Fatal(err)
	}
	for _, cpus := range []int{1, 2} {
		t.Run(fmt.Sprintf("%dcpu", cpus), func(t *testing.T) {
			lines, events, nmis := bootUser(t, k, dir, initrd, cpus, userProbes, nil)
			reps := parseUserLines(t, lines)
			checkEntryEvents(t, reps, events, nmis)
			checkUserEvents(t, reps, events, cpus)
		})
	}
}

// bootUser boots the stock kernel with a user-space initramfs and probes
// until its /init has rebooted the guest, and returns the console and the
// probes' events; each of opts may change the session's options, and done
// (if not nil) sees the session after its end, before it is closed. A boot
// whose console goes silent (docs/QUIRKS.md #23) or that resets before
// /init without saying so (#44) is retried, and said so.
func bootUser(t *testing.T, k *kguest.Kernel, dir, initrd string, cpus int, probes []string, done func(*session.Session), opts ...func(*session.Options)) ([]session.Line, []probedef.Event, int) {
	t.Helper()
	defs := parseDefs(t, probes...)
	const attempts = 3
	for i := 1; i <= attempts; i++ {
		lines, events, nmis, retry := bootUserOnce(t, k, dir, initrd, cpus, defs, i, done, opts)
		if retry == "" {
			return lines, events, nmis
		}
		t.Logf("attempt %d: %s; retrying", i, retry)
	}
	t.Fatalf("the user-space guest failed to boot in all %d attempts", attempts)
	return nil, nil, 0
}

// bootUserOnce is one boot of bootUser; retry says why a boot that failed
// before /init is worth another.
func bootUserOnce(t *testing.T, k *kguest.Kernel, dir, initrd string, cpus int, defs []*probedef.Def, attempt int, done func(*session.Session), opts []func(*session.Options)) (_ []session.Line, _ []probedef.Event, nmis int, retry string) {
	t.Helper()
	console, err := os.Create(filepath.Join(logDir(), fmt.Sprintf("hvprobe-e2e-%s-%dcpu-console-%d.log", strings.TrimSuffix(filepath.Base(initrd), ".cpio"), cpus, attempt)))
	if err != nil {
		t.Fatal(err)
	}
	defer console.Close()
	var mu sync.Mutex
	var failed []string // probes that could not be armed
	o := session.Options{
		Kernel:    filepath.Join(dir, "vmlinuz"),
		SystemMap: filepath.Join(dir, "System.map"),
		Image:     k,
		Initrd:    initrd,
		CPUs:      cpus,
		// The crypto self-tests are no part of this test and cost boot
		// time. noxsave: the nested KVM's CPUID leaf 0xd makes the kernel
		// WARN and then turn XSAVE off anyway (docs/QUIRKS.md #21).
		CmdlineAppend: "cryptomgr.notests noxsave",
		Console:       console,
		Notify: func(n session.Notice) {
			if n.Kind == session.NoticeFailed {
				mu.Lock()
				failed = append(failed, n.String())
				mu.Unlock()
			}
		},
	}
	for _, f := range opts {
		f(&o)
	}
	s, err := session.New(o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var events eventLog
	var addErr error
	s.AtAttach(func(a *session.Attached) error {
		_, addErr = s.AddDefs(a, defs, events.add)
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), stockBootTimeout())
	defer cancel()
	ended := make(chan struct{})
	var res vmm.Result
	go func() {
		defer close(ended)
		res = s.Run(ctx)
	}()
	silent := cancelWhenSilent(s, ended, cancel)
	// NMIs into vCPU 0 while the workload runs, apart enough for the guest
	// to take each (KVM holds one pending NMI).
	var injected atomic.Int32
	injecting := make(chan struct{})
	go func() {
		defer close(injecting)
		if _, err := s.WaitLineSeen(ctx, "Run /init"); err != nil {
			return
		}
		for range userNMIs {
			if s.VM.InjectNMI(0) != nil {
				return // the guest has ended
			}
			injected.Add(1)
			time.Sleep(100 * time.Millisecond)
		}
	}()
	<-ended
	cancel() // ends the injector's wait if /init never ran
	<-injecting
	if silent.Load() {
		return nil, nil, 0, fmt.Sprintf("the guest's console was silent for %v (console: %s)", stallAfter(), console.Name())
	}
	lines := s.Lines()
	l := s.VM.Layout()
	where := fmt.Sprintf("kernel at physical +%#x, virtual +%#x; console: %s", l.PhysDelta, l.VirtDelta, console.Name())
	if res.Reason == vmm.StopReset && !slices.ContainsFunc(lines, func(l session.Line) bool {
		return strings.Contains(l.Text, "Run /init") || strings.Contains(l.Text, "reboot: ")
	}) {
		return nil, nil, 0, fmt.Sprintf("the guest reset before /init without announcing it (%s); last lines: %s", where, strings.Join(res.Tail, " | "))
	}
	if err := s.AttachErr(); err != nil {
		t.Fatal(err)
	}
	if addErr != nil {
		t.Fatalf("arming at attach: %v", addErr)
	}
	mu.Lock()
	for _, n := range failed {
		t.Errorf("%s", n)
	}
	mu.Unlock()
	var initAt, doneAt time.Duration
	reset := false
	for _, l := range lines {
		switch {
		case strings.Contains(l.Text, "Run /init as init process"):
			initAt = l.At
		case strings.Contains(l.Text, "HVUSER: done"):
			doneAt = l.At
		case strings.Contains(l.Text, "reboot: Restarting system"):
			reset = true
		}
		for _, bad := range []string{"WARNING:", "Oops", "BUG:", "Kernel panic", "segfault", "traps:"} {
			if strings.Contains(l.Text, bad) {
				t.Errorf("console: %s", l.Text)
			}
		}
	}
	if res.Panicked || res.Err != nil || res.Reason != vmm.StopReset || !reset {
		t.Fatalf("the guest did not end in the workload's reboot: %v, err %v, panicked %v, \"reboot: Restarting system\" seen %v (%s); last lines:\n%s",
			res.Reason, res.Err, res.Panicked, reset, where, strings.Join(res.Tail, "\n"))
	}
	if done != nil {
		done(s)
	}
	doneText := ""
	if doneAt > 0 {
		doneText = fmt.Sprintf(", \"HVUSER: done\" after %.1fs", doneAt.Seconds())
	}
	t.Logf("%d vCPU(s): \"Run /init\" %.1fs after the VM started%s; %d events (console: %s)",
		cpus, initAt.Seconds(), doneText, len(events.all()), console.Name())
	return lines, events.all(), int(injected.Load()), ""
}

// checkEntryEvents: the probes in .entry.text fired and the guest lived
// on (checkUserEvents and bootUserOnce check that): one NMI-entry event
// per injected NMI, all on vCPU 0, and one syscall-entry event with
// open's or openat's number for each open the workload reported.
func checkEntryEvents(t *testing.T, reps []userReport, events []probedef.Event, nmis int) {
	t.Helper()
	opens := map[int64]int{}
	for _, r := range reps {
		if r.what == "opened" {
			opens[r.int(t, "pid")]++
		}
	}
	var nmiEvents, sysents int
	sysOpens := map[int64]int{}
	for _, ev := range events {
		switch ev.Def.Event {
		case "nmi":
			nmiEvents++
			if ev.CPU != 0 {
				t.Errorf("an NMI-entry event on CPU %d; the NMIs went to vCPU 0", ev.CPU)
			}
		case "sysent":
			sysents++
			if nr := value(t, ev, "nr").S64; nr == 2 || nr == 85 || nr == 257 || nr == 437 { // open, creat, openat, openat2
				sysOpens[int64(ev.PID)]++
			}
		}
	}
	if nmis == 0 || nmiEvents != nmis {
		t.Errorf("%d NMI-entry events for %d injected NMIs", nmiEvents, nmis)
	}
	for pid, n := range opens {
		if sysOpens[pid] != n {
			t.Errorf("pid %d: %d open/openat syscall entries, the workload reported %d opens", pid, sysOpens[pid], n)
		}
	}
	t.Logf("%d NMIs injected, %d NMI-entry events; %d syscall-entry events, open/openat by pid %v", nmis, nmiEvents, sysents, sysOpens)
}

// userReport is one "HVUSER: <what> k=v ..." line of the workload.
type userReport struct {
	what   string
	fields map[string]string
}

// printkRecord is the start of a kernel console record, "[    9.597444] ".
var printkRecord = regexp.MustCompile(`\[\s*\d+\.\d+\] `)

// userText is a workload line without a kernel record spliced into it. The
// workload writes /dev/console from user space, so a printk can land in
// the middle of its line (docs/QUIRKS.md #54): the record runs to the end
// of the console line, and the rest of the workload's line is the next
// console line.
func userText(text string, next []session.Line) string {
	loc := printkRecord.FindStringIndex(text)
	if loc == nil {
		return text
	}
	text = text[:loc[0]]
	if len(next) > 0 && !startsRecord(next[0].Text) && !strings.Contains(next[0].Text, "HVUSER: ") {
		text += next[0].Text
	}
	return text
}

func startsRecord(s string) bool {
	loc := printkRecord.FindStringIndex(s)
	return loc != nil && loc[0] == 0
}

// parseUserLines returns the workload's lines in console order; it fails
// on the workload's error lines and on a line that is not well formed.
func parseUserLines(t *testing.T, lines []session.Line) []userReport {
	t.Helper()
	var out []userReport
	for n, l := range lines {
		i := strings.Index(l.Text, "HVUSER: ")
		if i < 0 {
			continue
		}
		text := userText(l.Text[i+len("HVUSER: "):], lines[n+1:])
		words := strings.Fields(text)
		if len(words) == 0 {
			t.Fatalf("empty workload line %q", l.Text)
		}
		r := userReport{what: words[0], fields: map[string]string{}}
		for _, w := range words[1:] {
			k, v, ok := strings.Cut(w, "=")
			if !ok {
				t.Fatalf("workload line %q: field %q is not k=v", l.Text, w)
			}
			r.fields[k] = v
		}
		if r.what == "error" {
			t.Errorf("the workload reported: %s", l.Text)
		}
		out = append(out, r)
	}
	if len(out) == 0 || out[len(out)-1].what != "done" {
		t.Fatalf("the workload did not finish: %d HVUSER lines, the last %v", len(out), out[len(out)-1:])
	}
	return out
}

func (r userReport) int(t *testing.T, k string) int64 {
	t.Helper()
	v, err := strconv.ParseInt(r.fields[k], 10, 64)
	if err != nil {
		t.Fatalf("HVUSER %s: field %s=%q: %v", r.what, k, r.fields[k], err)
	}
	return v
}

// value is the event's argument name; a fault is an error.
func value(t *testing.T, ev probedef.Event, name string) probedef.Value {
	t.Helper()
	for _, v := range ev.Values {
		if v.Name == name {
			if v.Fault {
				t.Errorf("%s event of pid %d: %s faulted", ev.Def.Event, ev.PID, name)
			}
			return v
		}
	}
	t.Fatalf("%s event has no argument %s", ev.Def.Event, name)
	return probedef.Value{}
}

// checkUserEvents compares the events of the workload's processes with
// what the workload printed, per process and in order.
func checkUserEvents(t *testing.T, reps []userReport, events []probedef.Event, cpus int) {
	t.Helper()
	// What each process said it did, by pid.
	want := map[int64][]string{} // "open PATH", "read COUNT RET", ... in order
	comm := map[int64]string{}   // the comm each process reported before any exec
	cpuOf := map[int64]int64{}   // the CPU each worker was pinned to
	var execPID, sleepPID, sleepMS int64
	var sleptFor time.Duration // the workload's own CLOCK_MONOTONIC around the call
	for _, r := range reps {
		switch r.what {
		case "start":
			pid := r.int(t, "pid")
			comm[pid] = r.fields["comm"]
			if n := r.int(t, "cpus"); n != int64(cpus) {
				t.Errorf("the workload sees %d CPUs, the guest has %d", n, cpus)
			}
		case "worker":
			pid := r.int(t, "pid")
			comm[pid] = r.fields["comm"]
			cpuOf[pid] = r.int(t, "cpu")
			if n := r.int(t, "n"); cpuOf[pid] != n%int64(cpus) {
				t.Errorf("worker %d runs on CPU %d, want %d", n, cpuOf[pid], n%int64(cpus))
			}
		case "opened":
			pid := r.int(t, "pid")
			want[pid] = append(want[pid], "open "+r.fields["path"])
		case "read":
			pid := r.int(t, "pid")
			want[pid] = append(want[pid], fmt.Sprintf("read %d %d", r.int(t, "count"), r.int(t, "ret")))
		case "exec":
			execPID = r.int(t, "pid")
			want[execPID] = append(want[execPID], "execve "+r.fields["path"], "exec 0 "+r.fields["comm"])
		case "slept":
			sleepPID, sleepMS = r.int(t, "pid"), r.int(t, "ms")
			sleptFor = time.Duration(r.int(t, "elapsed_us")) * time.Microsecond
			want[sleepPID] = append(want[sleepPID], fmt.Sprintf("sleep %d %d", sleepMS*1e6, r.int(t, "ret")))
		case "reaped":
			if st := r.int(t, "status"); st != 0 {
				t.Errorf("workload process %d ended with status %d", r.int(t, "pid"), st)
			}
		}
	}
	if execPID == 0 || sleepPID == 0 || len(cpuOf) != 2 {
		t.Fatalf("the workload did not report its exec, its sleep and two workers: %v", reps)
	}
	// pid 1 was exec'd by the kernel itself, from "Run /init": its first
	// events are the kernel's execve of /init, which names it "init".
	want[1] = append([]string{"execve /init", "exec 0 init"}, want[1]...)

	got := map[int64][]string{}
	pending := map[int64][]string{} // a read's count, waiting for its return
	seenCPU := map[int]bool{}
	var sleep *probedef.Event
	counts := map[string]int{}
	for _, ev := range events {
		pid := int64(ev.PID)
		if _, ours := comm[pid]; !ours || ev.Def.Event == "sysent" || ev.Def.Event == "nmi" {
			continue // kernel threads (usermode helpers' execs, ...); checkEntryEvents
		}
		counts[ev.Def.Event]++
		seenCPU[ev.CPU] = true
		if c, pinned := cpuOf[pid]; pinned && int64(ev.CPU) != c {
			t.Errorf("%s event of pid %d on CPU %d; the process is pinned to CPU %d", ev.Def.Event, pid, ev.CPU, c)
		}
		// Every event but exec's return comes before the process's exec
		// renames it; pid 1's execve is the kernel's, still named after
		// the init task's idle thread.
		wantComm := comm[pid]
		if pid == 1 && ev.Def.Event == "execve" {
			wantComm = "swapper/0"
		}
		if ev.Def.Event != "exec" && ev.Comm != wantComm {
			t.Errorf("%s event of pid %d: comm %q, want %q", ev.Def.Event, pid, ev.Comm, wantComm)
		}
		var e string
		switch ev.Def.Event {
		case "open":
			if dfd := value(t, ev, "dfd").S64; dfd != -100 {
				t.Errorf("open of pid %d: dfd %d, want AT_FDCWD (-100)", pid, dfd)
			}
			e = "open " + value(t, ev, "filename").Str
		case "read":
			pending[pid] = append(pending[pid], strconv.FormatUint(value(t, ev, "count").U64, 10))
			continue
		case "readret":
			if len(pending[pid]) == 0 {
				t.Errorf("vfs_read of pid %d returned without an entry event", pid)
				continue
			}
			e = fmt.Sprintf("read %s %d", pending[pid][0], value(t, ev, "ret").S64)
			pending[pid] = pending[pid][1:]
		case "execve":
			e = "execve " + value(t, ev, "path").Str
		case "exec":
			c := value(t, ev, "comm").Str
			if ev.Comm != c {
				t.Errorf("exec event of pid %d: task comm %q, $comm %q", pid, ev.Comm, c)
			}
			e = fmt.Sprintf("exec %d %s", value(t, ev, "ret").S64, c)
		case "sleep":
			e = fmt.Sprintf("sleep %d %d", value(t, ev, "ns").S64, value(t, ev, "ret").S64)
			if pid == sleepPID {
				sleep = &ev
			}
		}
		got[pid] = append(got[pid], e)
	}
	for pid, w := range want {
		if !slices.Equal(got[pid], w) {
			t.Errorf("pid %d: events differ from the workload's lines\n got  %q\n want %q", pid, got[pid], w)
		}
	}
	for pid, p := range pending {
		if len(p) > 0 {
			t.Errorf("pid %d: %d vfs_read calls without a return event", pid, len(p))
		}
	}
	for pid, g := range got {
		if _, ok := want[pid]; !ok {
			t.Errorf("pid %d: events %q, the workload reported no such process", pid, g)
		}
	}
	if sleep == nil {
		t.Fatalf("no hrtimer_nanosleep return of pid %d", sleepPID)
	}
	// The probe's entry and return happen inside the workload's two clock
	// readings; the slack is for the host's and the guest's clocks.
	const slack = 5 * time.Millisecond
	if d := sleep.Duration; d < time.Duration(sleepMS)*time.Millisecond || d > sleptFor+slack {
		t.Errorf("hrtimer_nanosleep returned after %v: the workload asked for %d ms and measured %v around the call", d, sleepMS, sleptFor)
	}
	if len(seenCPU) != cpus {
		t.Errorf("the workload's events came from CPUs %v, the guest has %d", seenCPU, cpus)
	}
	lines := 0
	for _, w := range want {
		lines += len(w)
	}
	t.Logf("%d vCPU(s): %d workload actions (incl. the kernel's exec of /init), events by kind %v from CPUs %v; the sleep took %v for %d ms (%v by the workload's clock)",
		cpus, lines, counts, seenCPU, sleep.Duration, sleepMS, sleptFor)
}
