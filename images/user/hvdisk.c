// SPDX-License-Identifier: GPL-2.0
// hvdisk: /init of the stock kernel's disk initramfs (images/user/build.sh).
//
// It loads the virtio modules the initramfs carries (/lib/modules/*.ko, in
// the order of /etc/modules.order: Debian builds virtio-pci and virtio-blk
// as modules), waits for /dev/vda, then writes N 4 KiB blocks to its start
// with O_DIRECT (block i, byte j is (i*131 + j*7 + 1) mod 256, as the mini
// kernel's disk:N), fsyncs (a FLUSH), reads every block back with
// O_DIRECT and compares. It prints its ground truth in one line,
//   HVDISK: disk n=N written=N bad=0 fsync=0
// and reboots (RB_AUTOBOOT: the i8042 reset hvprobe takes as the end).
// N comes from hvdisk.n=N on the kernel command line (default 16).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define BLOCK 4096

static void say(const char *fmt, ...)
{
	char line[256];
	va_list ap;
	int n, fd;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	fd = open("/dev/console", O_WRONLY);

	if (fd >= 0) {
		write(fd, line, n); // one write: the line stays whole
		close(fd);
	}
}

static void end(void)
{
	sync();
	reboot(RB_AUTOBOOT);
	for (;;)
		pause();
}

static void fail(const char *what, long err)
{
	say("HVDISK: fail %s err=%ld\n", what, err);
	end();
}

// blocks is hvdisk.n=N from /proc/cmdline.
static long blocks(void)
{
	char buf[4096] = {0};
	int fd = open("/proc/cmdline", O_RDONLY);
	char *p;

	if (fd < 0)
		return 16;
	read(fd, buf, sizeof(buf) - 1);
	close(fd);
	p = strstr(buf, "hvdisk.n=");
	return p ? strtol(p + strlen("hvdisk.n="), NULL, 10) : 16;
}

static void load_modules(void)
{
	char name[128], path[256];
	FILE *order = fopen("/etc/modules.order", "r");

	if (!order)
		fail("modules.order", -errno);
	while (fscanf(order, "%127s", name) == 1) {
		snprintf(path, sizeof(path), "/lib/modules/%s.ko", name);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0 || syscall(SYS_finit_module, fd, "", 0) != 0)
			fail("insmod", -errno);
		close(fd);
	}
	fclose(order);
}

int main(void)
{
	long n, i, j, written = 0, bad = 0;
	int fd, fs;
	unsigned char *p;

	mkdir("/proc", 0755);
	mkdir("/dev", 0755);
	if (mount("proc", "/proc", "proc", 0, NULL) || mount("devtmpfs", "/dev", "devtmpfs", 0, NULL))
		fail("mount", -errno);
	n = blocks();
	load_modules();
	// The disk's node appears when devtmpfs's thread gets to it.
	for (i = 0; (fd = open("/dev/vda", O_RDWR | O_DIRECT)) < 0 && i < 1000; i++)
		usleep(10000);
	if (fd < 0)
		fail("open", -errno);
	if (posix_memalign((void **)&p, BLOCK, BLOCK))
		fail("memalign", -ENOMEM);
	for (i = 0; i < n; i++) {
		for (j = 0; j < BLOCK; j++)
			p[j] = (unsigned char)(i * 131 + j * 7 + 1);
		if (pwrite(fd, p, BLOCK, i * BLOCK) != BLOCK)
			break;
		written++;
	}
	fs = fsync(fd) ? -errno : 0;
	for (i = 0; i < written; i++) {
		memset(p, 0, BLOCK);
		if (pread(fd, p, BLOCK, i * BLOCK) != BLOCK) {
			bad++;
			continue;
		}
		for (j = 0; j < BLOCK; j++)
			if (p[j] != (unsigned char)(i * 131 + j * 7 + 1)) {
				bad++;
				break;
			}
	}
	close(fd);
	say("HVDISK: disk n=%ld written=%ld bad=%ld fsync=%ld\n", n, written, bad, fs);
	end();
	return 0;
}
