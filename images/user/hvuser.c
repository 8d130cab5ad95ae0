// hvuser: the user-space workload of the user initramfs (images/user/build.sh).
// It runs as /init of a stock kernel wherever guest user space can make
// system calls (hardware KVM, the nested KVM of images/nested; not PVM) and
// prints its own ground truth on the console, one "HVUSER: ..." line per
// action, so that probes on the system calls it makes can be checked
// against it. Line formats: images/README.md, "User-space workload".
//
// As /init (pid 1): forks two workers, pinned to CPU 0 and CPU 1 (mod the
// CPUs it may use), waits for both, prints "HVUSER: done" and reboots
// (RB_AUTOBOOT: with reboot=k that is the i8042 reset hvprobe's VMM takes
// for a clean end; a power-off has no ACPI to go to in hvprobe's guest).
//   worker 0: reads a.txt and b.txt with a 4096-byte buffer, then execs
//             /bin/hvuser-child (a symlink to this binary)
//   worker 1: reads c.txt and d.txt with a 1000-byte buffer, then sleeps
//             SLEEP_MS in clock_nanosleep(CLOCK_MONOTONIC)
// As hvuser-child (argv[0]): reports its pid and comm, and exits 0.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DIR "/etc/hvuser/"
#define CHILD "/bin/hvuser-child"
#define SLEEP_MS 150

// say writes one line with one write(2): lines of concurrent processes
// never mix on the console (the tty serialises whole writes).
static void say(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	int n = snprintf(buf, sizeof(buf), "HVUSER: ");
	va_start(ap, fmt);
	n += vsnprintf(buf + n, sizeof(buf) - n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	if (write(1, buf, n) < 0) {
		// Nothing else to report to; the test sees the line missing.
	}
}

static void fail(const char *what)
{
	say("error what=%s errno=%d pid=%d", what, errno, getpid());
}

static const char *comm(void)
{
	static char name[17];
	if (prctl(PR_GET_NAME, name) != 0)
		strcpy(name, "?");
	return name;
}

// readfile opens path with openat and reads it to EOF in count-byte read(2)
// calls, one line per call (the EOF read included).
static void readfile(const char *path, size_t count)
{
	static char buf[4096];
	int fd = openat(AT_FDCWD, path, O_RDONLY);
	if (fd < 0) {
		fail("openat");
		return;
	}
	say("opened path=%s fd=%d pid=%d", path, fd, getpid());
	for (;;) {
		ssize_t r = read(fd, buf, count);
		say("read path=%s fd=%d count=%zu ret=%zd pid=%d", path, fd, count, r, getpid());
		if (r <= 0) {
			if (r < 0)
				fail("read");
			break;
		}
	}
	close(fd);
}

static int ncpus(void)
{
	cpu_set_t set;
	if (sched_getaffinity(0, sizeof(set), &set) != 0)
		return 1;
	return CPU_COUNT(&set);
}

// pin binds the calling process to CPU cpu and reports where it runs.
static void pin(int worker, int cpu)
{
	cpu_set_t set;
	unsigned int now = -1;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set) != 0)
		fail("sched_setaffinity");
	if (syscall(SYS_getcpu, &now, NULL, NULL) != 0)
		fail("getcpu");
	say("worker n=%d pid=%d cpu=%u comm=%s", worker, getpid(), now, comm());
}

static void worker0(void)
{
	readfile(DIR "a.txt", 4096);
	readfile(DIR "b.txt", 4096);
	char *argv[] = {"hvuser-child", NULL};
	char *envp[] = {NULL};
	execve(CHILD, argv, envp);
	fail("execve");
	_exit(1);
}

static void worker1(void)
{
	readfile(DIR "c.txt", 1000);
	readfile(DIR "d.txt", 1000);
	struct timespec req = {.tv_sec = SLEEP_MS / 1000, .tv_nsec = (SLEEP_MS % 1000) * 1000000L};
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	int ret = clock_nanosleep(CLOCK_MONOTONIC, 0, &req, NULL);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	long us = (t1.tv_sec - t0.tv_sec) * 1000000L + (t1.tv_nsec - t0.tv_nsec) / 1000;
	say("slept ms=%d ret=%d elapsed_us=%ld pid=%d", SLEEP_MS, ret, us, getpid());
	_exit(0);
}

int main(int argc, char **argv)
{
	(void)argc;
	const char *base = strrchr(argv[0], '/');
	base = base ? base + 1 : argv[0];
	if (strcmp(base, "hvuser-child") == 0) {
		say("exec path=%s pid=%d comm=%s", CHILD, getpid(), comm());
		return 0;
	}
	int n = ncpus();
	say("start pid=%d comm=%s cpus=%d", getpid(), comm(), n);
	void (*work[2])(void) = {worker0, worker1};
	pid_t pids[2];
	for (int w = 0; w < 2; w++) {
		pids[w] = fork();
		if (pids[w] < 0) {
			fail("fork");
			continue;
		}
		if (pids[w] == 0) {
			pin(w, w % n);
			work[w]();
		}
		say("forked worker=%d pid=%d", w, pids[w]);
	}
	for (int w = 0; w < 2; w++) {
		int st;
		if (pids[w] > 0 && waitpid(pids[w], &st, 0) == pids[w])
			say("reaped pid=%d status=%d", pids[w], WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
		else if (pids[w] > 0)
			fail("waitpid");
	}
	say("done");
	sync();
	reboot(RB_AUTOBOOT);
	fail("reboot");
	for (;;)
		pause(); // pid 1 must not exit: the kernel would panic
}
