// SPDX-License-Identifier: GPL-2.0
/*
 * hvprobe_wl: the in-kernel workload that hvprobe's end-to-end tests probe.
 *
 * Guest user space cannot make system calls under the PVM KVM these tests
 * run on, so the workload lives in the kernel: a late initcall reads the
 * command list from "hvprobe_wl=" on the kernel command line and runs it.
 * Every scenario prints its own ground truth (call counts, sums, last
 * arguments) from the CALLER of a probe target, never from the target, so a
 * probe's hit count can be checked against the console independently of
 * printk. The console line formats are an interface: images/README.md
 * documents them and the host parses them.
 *
 * The targets are noipa (implies noinline and noclone) and non-static so
 * that each keeps its exact System.map name, its C calling convention and a
 * real call per iteration; HVWL_FRAME gives each the same entry sequence.
 */

#define pr_fmt(fmt) "HVWL: " fmt

#include <linux/bio.h>
#include <linux/blkdev.h>
#include <linux/completion.h>
#include <linux/cpumask.h>
#include <linux/delay.h>
#include <linux/err.h>
#include <linux/fcntl.h>
#include <linux/fs.h>
#include <linux/init.h>
#include <linux/initrd.h>
#include <linux/kernel.h>
#include <linux/kstrtox.h>
#include <linux/kthread.h>
#include <linux/io.h>
#include <linux/jump_label.h>
#include <linux/printk.h>
#include <linux/reboot.h>
#include <linux/sched.h>
#include <linux/sched/task.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/mm.h>
#include <linux/vmalloc.h>
#include <asm/syscall.h>

#define HVWL_TARGET noinline __used __attribute__((__noipa__))

/*
 * In every target's body: the memory clobber keeps the compiler from
 * treating the target as pure, and taking the frame address forces the
 * frame-pointer prologue even in leaf functions, which gcc otherwise
 * leaves out. So every target starts with push %rbp; mov %rsp,%rbp.
 */
#define HVWL_FRAME() asm volatile("" : : "r"(__builtin_frame_address(0)) : "memory")

/* Longest command list accepted, from the command line or the mailbox. */
#define HVWL_CMDS_MAX 512
/* recurse:D runs on the caller's 16 KiB kernel stack; each frame is ~32 B. */
#define HVWL_RECURSE_MAX 200
#define HVWL_THREADS_MAX 64
#define HVWL_FILE "/hvwl/data.txt"

/*
 * The host's command mailbox for "serve". The host writes a NUL-terminated
 * command list into hvwl_mailbox, then increments hvwl_mailbox_seq; after
 * running it the workload stores the seq into hvwl_mailbox_done (and prints
 * "done seq="), so a host may poll memory instead of the console. They live
 * in .data, so a host may also preset them in the image before boot.
 */
__used __section(".data") char hvwl_mailbox[256];
__used __section(".data") unsigned long hvwl_mailbox_seq;
__used __section(".data") unsigned long hvwl_mailbox_done;

static char hvwl_cmdline[HVWL_CMDS_MAX] __initdata;
static bool hvwl_cmdline_set __initdata;

static int __init hvwl_setup(char *s)
{
	strscpy(hvwl_cmdline, s, sizeof(hvwl_cmdline));
	hvwl_cmdline_set = true;
	return 1;
}
__setup("hvprobe_wl=", hvwl_setup);

/* ---- probe targets ---- */

HVWL_TARGET long hvwl_target_add(long a, long b)
{
	HVWL_FRAME();
	return a + b;
}

/*
 * Opens with the 5-byte nop that ftrace leaves at every function entry of
 * a distro kernel (nopl 0x0(%rax,%rax,1), after the frame here; this
 * kernel has no ftrace): the site an exit-less probe replaces with one
 * jmp rel32.
 */
HVWL_TARGET long hvwl_target_fentry(long a, long b)
{
	asm volatile(".byte 0x0f, 0x1f, 0x44, 0x00, 0x00" ::: "memory");
	HVWL_FRAME();
	return a + b;
}

/*
 * As hvwl_target_add, called by nothing but the run:N scenario: the
 * exit-less run test arms it before it has ever run, so no task can have
 * been interrupted inside it.
 */
HVWL_TARGET long hvwl_target_run(long a, long b)
{
	HVWL_FRAME();
	return a + b;
}

/*
 * Like hvwl_target_fentry, with its argument in memory: exit-less probes
 * whose fetch args dereference (+0(%di), +0(+8(%di)):string) read it.
 */
struct hvwl_fs {
	long i;
	const char *name;	/* "file-<i>", on the caller's stack */
	long sq;		/* i * i */
	const char *null;	/* NULL: a fetch through it faults */
};

HVWL_TARGET long hvwl_target_fstr(const struct hvwl_fs *p)
{
	asm volatile(".byte 0x0f, 0x1f, 0x44, 0x00, 0x00" ::: "memory");
	HVWL_FRAME();
	return p->i + p->sq;
}

HVWL_TARGET long hvwl_target_args8(long a1, long a2, long a3, long a4,
				   long a5, long a6, long a7, long a8)
{
	HVWL_FRAME();
	return a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8;
}

HVWL_TARGET int hvwl_target_str(const char *s, int len)
{
	HVWL_FRAME();
	return len + (unsigned char)s[0];
}

HVWL_TARGET long hvwl_recurse(long depth)
{
	long r;

	HVWL_FRAME();
	if (depth <= 0)
		return 0;
	r = hvwl_recurse(depth - 1);
	/* Hide r from the optimizer: no tail-recursion-to-loop rewrite. */
	asm volatile("" : "+r"(r) :: "memory");
	return depth + r;
}

HVWL_TARGET long hvwl_target_ret(long x)
{
	HVWL_FRAME();
	return x * 3 + 1;
}

HVWL_TARGET long hvwl_target_block(long ms)
{
	HVWL_FRAME();
	msleep(ms);
	return ms;
}

HVWL_TARGET void __noreturn hvwl_target_exit(void)
{
	HVWL_FRAME();
	kthread_exit(0);
}

/*
 * Bitfields for BTF-typed field fetches: widths of 3, 9, 1 and 40 bits,
 * one starting mid-byte and crossing four bytes, one of another type.
 */
struct hvwl_bits {
	unsigned int lo:3;
	unsigned int mid:9;
	unsigned char flag:1;
	unsigned long wide:40;
	long tag;
};

HVWL_TARGET long hvwl_target_bits(struct hvwl_bits *b)
{
	HVWL_FRAME();
	return b->lo + b->mid + b->flag + b->tag;
}

/*
 * Data watches: write:N stores to hvwl_wvar.watched through
 * hvwl_target_write only, and to its neighbour on the same page from the
 * scenario itself, so a watch on the one sees none of the other's stores.
 */
struct hvwl_wvar {
	long watched;
	long next;
};
struct hvwl_wvar hvwl_wvar;

HVWL_TARGET void hvwl_target_write(long v)
{
	HVWL_FRAME();
	WRITE_ONCE(hvwl_wvar.watched, v);
}

/*
 * sysent:NR replaces sys_call_table[NR] and puts it back the way a rootkit
 * does: through a writable alias (vmap) of the table's read-only page, so
 * only a watch on physical memory sees the stores.
 */
HVWL_TARGET void hvwl_target_sysent(unsigned long *slot, unsigned long v)
{
	HVWL_FRAME();
	WRITE_ONCE(*slot, v);
}

/*
 * Text the kernel rewrites while it runs: hvwl_keyed's static branch on
 * hvwl_key. With CONFIG_JUMP_LABEL the branch is a jump-label site (a
 * 2- or 5-byte nop while the key is disabled, a jmp to the "on" arm while
 * it is enabled; an entry of __jump_table) that static_branch_enable and
 * static_branch_disable rewrite through text_poke_bp, which puts an int3
 * on the site while it writes the rest.
 */
DEFINE_STATIC_KEY_FALSE(hvwl_key);

/*
 * Written, never read: a volatile store of its own starts each arm, so no
 * other path reaches an arm's first instruction, and one comes before the
 * branch. They record nothing the host relies on.
 */
static long hvwl_keyed_last, hvwl_keyed_on_last, hvwl_keyed_off_last;

/* Returns 2i+1 from the "on" arm, 2i from the "off" arm. */
HVWL_TARGET long hvwl_keyed(long i)
{
	HVWL_FRAME();
	WRITE_ONCE(hvwl_keyed_last, i);
	if (static_branch_unlikely(&hvwl_key)) {
		WRITE_ONCE(hvwl_keyed_on_last, i);
		return 2 * i + 1;
	}
	WRITE_ONCE(hvwl_keyed_off_last, i);
	return 2 * i;
}

/* ---- scenarios ---- */

static void hvwl_calls(long n)
{
	long i, sum = 0;

	for (i = 0; i < n; i++)
		sum += hvwl_target_add(i, 1000 + i);
	pr_info("calls n=%ld sum=%ld last_a=%ld last_b=%ld\n",
		n, sum, n - 1, 1000 + n - 1);
}

static void hvwl_fentry(long n)
{
	long i, sum = 0;

	for (i = 0; i < n; i++)
		sum += hvwl_target_fentry(i, 1000 + i);
	pr_info("fentry n=%ld sum=%ld last_a=%ld last_b=%ld\n",
		n, sum, n - 1, 1000 + n - 1);
}

static void hvwl_args8(long n)
{
	long i, ret = 0;

	for (i = 0; i < n; i++)
		ret = hvwl_target_args8(0x100 + i, 0x200 + i, 0x300 + i,
					0x400 + i, 0x500 + i, 0x600 + i,
					0x700 + i, 0x800 + i);
	i = n - 1;
	pr_info("args8 n=%ld last=%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld ret=%ld\n",
		n, 0x100 + i, 0x200 + i, 0x300 + i, 0x400 + i, 0x500 + i,
		0x600 + i, 0x700 + i, 0x800 + i, ret);
}

static void hvwl_run(long n)
{
	long i, sum = 0;

	for (i = 0; i < n; i++)
		sum += hvwl_target_run(i, 1000 + i);
	pr_info("run n=%ld sum=%ld\n", n, sum);
}

static void hvwl_fstr(long n)
{
	char buf[32] = "";
	struct hvwl_fs fs = { .name = buf };
	long i, sum = 0;

	for (i = 0; i < n; i++) {
		scnprintf(buf, sizeof(buf), "file-%ld", i);
		fs.i = i;
		fs.sq = i * i;
		sum += hvwl_target_fstr(&fs);
	}
	pr_info("fstr n=%ld sum=%ld last=\"%s\"\n", n, sum, buf);
}

static void hvwl_str(long n)
{
	char buf[32] = "";
	long i;
	int len;

	for (i = 0; i < n; i++) {
		len = scnprintf(buf, sizeof(buf), "hvwl-str-%ld", i);
		hvwl_target_str(buf, len);
	}
	pr_info("str n=%ld last=\"%s\"\n", n, buf);
}

static void hvwl_recurse_scenario(long depth)
{
	long ret = hvwl_recurse(depth);

	pr_info("recurse depth=%ld ret=%ld calls=%ld\n", depth, ret, depth + 1);
}

static void hvwl_ret(long n)
{
	long i, sum = 0, last = 0;

	for (i = 0; i < n; i++) {
		last = hvwl_target_ret(i);
		sum += last;
	}
	pr_info("ret n=%ld sum=%ld last=%ld\n", n, sum, last);
}

struct hvwl_block {
	long ms;
	long ret;
	u64 ns;		/* the call's duration as the guest's clock saw it */
	struct completion done;
};

static int hvwl_block_fn(void *data)
{
	struct hvwl_block *b = data;
	u64 t0 = ktime_get_ns();

	b->ret = hvwl_target_block(b->ms);
	b->ns = ktime_get_ns() - t0;
	complete(&b->done);
	return 0;
}

static void hvwl_block_scenario(long ms)
{
	struct hvwl_block b = { .ms = ms };
	struct task_struct *t;

	init_completion(&b.done);
	t = kthread_run(hvwl_block_fn, &b, "hvwl-block");
	if (IS_ERR(t)) {
		pr_info("block fail err=%ld\n", PTR_ERR(t));
		return;
	}
	wait_for_completion(&b.done);
	pr_info("block ms=%ld ret=%ld ns=%llu\n", ms, b.ret, b.ns);
}

static int hvwl_exit_fn(void *data)
{
	complete(data);
	hvwl_target_exit();
}

static void hvwl_exit_scenario(void)
{
	DECLARE_COMPLETION_ONSTACK(started);
	struct task_struct *t;
	pid_t pid;

	t = kthread_create(hvwl_exit_fn, &started, "hvwl-exit");
	if (IS_ERR(t)) {
		pr_info("exit fail err=%ld\n", PTR_ERR(t));
		return;
	}
	/* The reference keeps t valid for kthread_stop after it exits itself. */
	get_task_struct(t);
	pid = task_pid_nr(t);
	wake_up_process(t);
	/*
	 * kthread_stop before the thread fn ran would skip the fn entirely;
	 * after "started" it only waits for the exit (the kthread's "exited"
	 * completion, signalled from do_exit).
	 */
	wait_for_completion(&started);
	kthread_stop(t);
	put_task_struct(t);
	pr_info("exit pid=%d done\n", pid);
}

struct hvwl_thread {
	long k;
	long n;
	bool fentry;	/* call hvwl_target_fentry instead of hvwl_target_add */
	long calls;
	atomic_t *left;
	struct completion *all_done;
};

static int hvwl_thread_fn(void *data)
{
	struct hvwl_thread *th = data;
	long i;

	for (i = 0; i < th->n; i++) {
		if (th->fentry)
			hvwl_target_fentry(th->k, i);
		else
			hvwl_target_add(th->k, i);
	}
	th->calls = i;
	pr_info("thread name=%s pid=%d calls=%ld\n",
		current->comm, task_pid_nr(current), th->calls);
	if (atomic_dec_and_test(th->left))
		complete(th->all_done);
	return 0;
}

/* The (k mod online)-th online CPU: online CPU ids need not be dense. */
static unsigned int hvwl_nth_online_cpu(long k)
{
	unsigned int cpu, nth = k % num_online_cpus();

	for_each_online_cpu(cpu)
		if (nth-- == 0)
			return cpu;
	return cpumask_first(cpu_online_mask);
}

static void hvwl_threads(long k, long n, bool fentry)
{
	DECLARE_COMPLETION_ONSTACK(all_done);
	struct hvwl_thread *ths;
	struct task_struct *t;
	atomic_t left;
	long i, total = 0;

	ths = kcalloc(k, sizeof(*ths), GFP_KERNEL);
	if (!ths) {
		pr_info("threads fail err=%d\n", -ENOMEM);
		return;
	}
	atomic_set(&left, k);
	for (i = 0; i < k; i++) {
		ths[i] = (struct hvwl_thread){ .k = i, .n = n, .fentry = fentry, .left = &left,
					       .all_done = &all_done };
		t = kthread_create(hvwl_thread_fn, &ths[i], "hvwl/%ld", i);
		if (IS_ERR(t)) {
			/* Account for this and every thread never started. */
			pr_info("threads fail err=%ld\n", PTR_ERR(t));
			if (atomic_sub_and_test(k - i, &left))
				complete(&all_done);
			break;
		}
		kthread_bind(t, hvwl_nth_online_cpu(i));
		wake_up_process(t);
	}
	if (k > 0)
		wait_for_completion(&all_done);
	for (i = 0; i < k; i++)
		total += ths[i].calls;
	kfree(ths);
	pr_info("threads k=%ld total=%ld\n", k, total);
}

static void hvwl_fileread(long n)
{
	struct file *f;
	loff_t pos;
	ssize_t got, bytes = 0;
	char *buf;
	long i;

	buf = kmalloc(PAGE_SIZE, GFP_KERNEL);
	if (!buf) {
		pr_info("fileread fail err=%d\n", -ENOMEM);
		return;
	}
	/* populate_rootfs unpacks asynchronously; the file must be there. */
	wait_for_initramfs();
	for (i = 0; i < n; i++) {
		f = filp_open(HVWL_FILE, O_RDONLY, 0);
		if (IS_ERR(f)) {
			pr_info("fileread fail err=%ld\n", PTR_ERR(f));
			goto out;
		}
		pos = 0;
		bytes = 0;
		while ((got = kernel_read(f, buf, PAGE_SIZE, &pos)) > 0)
			bytes += got;
		filp_close(f, NULL);
		if (got < 0) {
			pr_info("fileread fail err=%zd\n", got);
			goto out;
		}
	}
	pr_info("fileread path=%s n=%ld bytes=%zd\n", HVWL_FILE, n, bytes);
out:
	kfree(buf);
}

static void hvwl_bits_scenario(long n)
{
	struct hvwl_bits b = {};
	long i;

	for (i = 0; i < n; i++) {
		b.lo = i;
		b.mid = 0x155 + i;
		b.flag = i;
		b.wide = 0xabcdef1234UL + i;
		b.tag = i;
		hvwl_target_bits(&b);
		pr_info("bits i=%ld lo=%u mid=%u flag=%u wide=%lu\n",
			i, b.lo, b.mid, b.flag, (unsigned long)b.wide);
	}
}

static void hvwl_write_scenario(long n)
{
	long i, old = READ_ONCE(hvwl_wvar.watched);

	for (i = 0; i < n; i++) {
		hvwl_target_write(7 * i + 1);
		WRITE_ONCE(hvwl_wvar.next, i);
	}
	pr_info("write n=%ld old=%ld last=%ld next=%ld\n", n, old,
		READ_ONCE(hvwl_wvar.watched), READ_ONCE(hvwl_wvar.next));
}

static long hvwl_fake_syscall(const struct pt_regs *regs)
{
	return -ENOSYS;
}

static void hvwl_sysent_scenario(long nr)
{
	unsigned long *entry = (unsigned long *)&sys_call_table[nr];
	struct page *page = pfn_to_page(PHYS_PFN(__pa_symbol(entry)));
	unsigned long orig = (unsigned long)sys_call_table[nr];
	unsigned long fake = (unsigned long)hvwl_fake_syscall;
	unsigned long *alias;
	void *map;
	bool seen;

	if (nr < 0 || nr >= NR_syscalls) {
		pr_info("sysent fail nr=%ld\n", nr);
		return;
	}
	map = vmap(&page, 1, VM_MAP, PAGE_KERNEL);
	if (!map) {
		pr_info("sysent fail err=%d\n", -ENOMEM);
		return;
	}
	alias = map + offset_in_page(entry);
	hvwl_target_sysent(alias, fake);
	seen = READ_ONCE(*entry) == fake;
	hvwl_target_sysent(alias, orig);
	vunmap(map);
	pr_info("sysent nr=%ld orig=0x%lx fake=0x%lx seen=%d restored=%d\n", nr,
		orig, fake, seen, READ_ONCE(*entry) == orig);
}

/* The first bytes of hvwl_target_add as the guest itself reads them. */
static void hvwl_textsum(void)
{
	pr_info("text sym=hvwl_target_add bytes=%*phN\n", 8, (const u8 *)hvwl_target_add);
}

static void hvwl_tasks(void)
{
	pr_info("task pid=%d comm=%s\n", task_pid_nr(current), current->comm);
}

/*
 * exits:N makes N port writes nothing in the guest or KVM handles, so each
 * is one VM exit to the VMM and back: the "bare exit" that hvprobe bench
 * compares probe hits with. Port 0x80 is the POST-code port.
 */
static void hvwl_exits(long n)
{
	long i;

	for (i = 0; i < n; i++)
		outb(0, 0x80);
	pr_info("exits n=%ld\n", n);
}

/*
 * hvwl_target_mix(x) holds, in one known order, the instruction classes
 * hvprobe bench measures beyond a function entry: a %rip-relative load, a
 * jcc, a rep movsb, a call and a ret. Written in assembly so the compiler
 * cannot change them. Returns hvwl_mix_val + x.
 */
long hvwl_target_mix(long x);
long hvwl_mix_val = 7;
char hvwl_mix_buf[64];
asm(".pushsection .text, \"ax\"\n"
    ".globl hvwl_target_mix\n"
    ".type hvwl_target_mix, @function\n"
    "hvwl_target_mix:\n"
    "	push %rbp\n"
    "	mov %rsp, %rbp\n"
    "	mov hvwl_mix_val(%rip), %rax\n"
    "	test %rdi, %rdi\n"
    "	jz 1f\n"
    "	add %rdi, %rax\n"
    "1:	lea hvwl_mix_buf(%rip), %rdi\n"
    "	lea hvwl_mix_buf+32(%rip), %rsi\n"
    "	mov $32, %ecx\n"
    "	rep movsb\n"
    "	call hvwl_mix_leaf\n"
    "	pop %rbp\n"
    "	ret\n"
    ".size hvwl_target_mix, .-hvwl_target_mix\n"
    ".type hvwl_mix_leaf, @function\n"
    "hvwl_mix_leaf:\n"
    "	ret\n"
    ".size hvwl_mix_leaf, .-hvwl_mix_leaf\n"
    ".popsection\n");

/* mix:N calls hvwl_target_mix(i) for i = 0..N-1. */
static void hvwl_mix(long n)
{
	long i, sum = 0;

	for (i = 0; i < n; i++)
		sum += hvwl_target_mix(i);
	pr_info("mix n=%ld sum=%ld\n", n, sum);
}

/* Turns hvwl_key on or off: the guest rewrites hvwl_keyed's text. */
static void hvwl_key_set(bool on)
{
	if (on)
		static_branch_enable(&hvwl_key);
	else
		static_branch_disable(&hvwl_key);
}

/*
 * static:N:K calls hvwl_keyed(i) for i = 0..N-1 and flips hvwl_key before
 * every call i > 0 with i mod K = 0 (never with K = 0). The key starts
 * disabled (turned off first, uncounted, if an earlier run left it on).
 * on/off count the arms that ran by the return value; bad counts calls
 * whose arm disagrees with the key state set or whose value is wrong.
 */
static void hvwl_static(long n, long k)
{
	long i, r, on = 0, off = 0, flips = 0, bad = 0;
	bool enabled = false;

	hvwl_key_set(false);
	for (i = 0; i < n; i++) {
		if (k > 0 && i > 0 && i % k == 0) {
			enabled = !enabled;
			hvwl_key_set(enabled);
			flips++;
		}
		r = hvwl_keyed(i);
		if (r & 1)
			on++;
		else
			off++;
		if ((r & 1) != enabled || r >> 1 != i)
			bad++;
	}
	pr_info("static n=%ld on=%ld off=%ld flips=%ld key=%d bad=%ld\n",
		n, on, off, flips, static_key_enabled(&hvwl_key), bad);
}

struct hvwl_racer {
	long n;
	long on, off, bad;
	atomic_t *left;
	struct completion *all_done;
};

static int hvwl_racer_fn(void *data)
{
	struct hvwl_racer *rc = data;
	long i, r;

	for (i = 0; i < rc->n; i++) {
		r = hvwl_keyed(i);
		if (r & 1)
			rc->on++;
		else
			rc->off++;
		if (r >> 1 != i)
			rc->bad++;
		/* Let the flipper run when it shares this CPU. */
		cond_resched();
	}
	if (atomic_dec_and_test(rc->left))
		complete(rc->all_done);
	return 0;
}

/*
 * staticrace:K:N: K kthreads "hvwl-key/<k>", bound as in threads:K:N,
 * each call hvwl_keyed(i) for i = 0..N-1 while the caller flips hvwl_key
 * back and forth (at least once) until they are all done, so that on SMP
 * a thread can meet the site mid-rewrite (text_poke_bp's int3). The key
 * starts disabled, as in static.
 */
static void hvwl_staticrace(long k, long n)
{
	DECLARE_COMPLETION_ONSTACK(all_done);
	struct hvwl_racer *rcs;
	struct task_struct *t;
	atomic_t left;
	long i, on = 0, off = 0, bad = 0, flips = 0;
	bool enabled = false;

	rcs = kcalloc(k, sizeof(*rcs), GFP_KERNEL);
	if (!rcs) {
		pr_info("staticrace fail err=%d\n", -ENOMEM);
		return;
	}
	hvwl_key_set(false);
	atomic_set(&left, k);
	for (i = 0; i < k; i++) {
		rcs[i] = (struct hvwl_racer){ .n = n, .left = &left,
					      .all_done = &all_done };
		t = kthread_create(hvwl_racer_fn, &rcs[i], "hvwl-key/%ld", i);
		if (IS_ERR(t)) {
			pr_info("staticrace fail err=%ld\n", PTR_ERR(t));
			if (atomic_sub_and_test(k - i, &left))
				complete(&all_done);
			break;
		}
		kthread_bind(t, hvwl_nth_online_cpu(i));
		wake_up_process(t);
	}
	do {
		enabled = !enabled;
		hvwl_key_set(enabled);
		flips++;
		/* The racers may share this CPU: let them run. */
		cond_resched();
	} while (k > 0 && !completion_done(&all_done));
	if (k > 0)
		wait_for_completion(&all_done);
	for (i = 0; i < k; i++) {
		on += rcs[i].on;
		off += rcs[i].off;
		bad += rcs[i].bad;
	}
	kfree(rcs);
	pr_info("staticrace k=%ld n=%ld total=%ld on=%ld off=%ld flips=%ld key=%d bad=%ld\n",
		k, n, on + off, on, off, flips, static_key_enabled(&hvwl_key), bad);
}

/*
 * disk:N writes N 4 KiB blocks to the start of vda (block i, byte j is
 * i * 131 + j * 7 + 1), one synchronous bio each, flushes the disk's
 * cache, and reads every block back. The host checks the image file
 * against the same formula after power-off, and the device's request
 * count against probes on the driver.
 */
static u8 hvwl_disk_byte(long i, long j)
{
	return (u8)(i * 131 + j * 7 + 1);
}

static int hvwl_disk_bio(struct block_device *bdev, blk_opf_t op, long i, struct page *page)
{
	struct bio *bio = bio_alloc(bdev, 1, op, GFP_KERNEL);
	int err;

	bio->bi_iter.bi_sector = i * (PAGE_SIZE >> SECTOR_SHIFT);
	__bio_add_page(bio, page, PAGE_SIZE, 0);
	err = submit_bio_wait(bio);
	bio_put(bio);
	return err;
}

static void hvwl_disk(long n)
{
	struct device *dev = class_find_device_by_name(&block_class, "vda");
	struct block_device *bdev;
	struct page *page;
	long i, j, written = 0, bad = 0;
	int err = 0, flush;
	u8 *p;

	if (!dev) {
		pr_info("disk fail err=%d\n", -ENODEV);
		return;
	}
	bdev = blkdev_get_by_dev(dev->devt, FMODE_READ | FMODE_WRITE, NULL);
	put_device(dev);
	if (IS_ERR(bdev)) {
		pr_info("disk fail err=%ld\n", PTR_ERR(bdev));
		return;
	}
	page = alloc_page(GFP_KERNEL);
	if (!page) {
		blkdev_put(bdev, FMODE_READ | FMODE_WRITE);
		pr_info("disk fail err=%d\n", -ENOMEM);
		return;
	}
	p = page_address(page);
	for (i = 0; i < n && !err; i++) {
		for (j = 0; j < PAGE_SIZE; j++)
			p[j] = hvwl_disk_byte(i, j);
		err = hvwl_disk_bio(bdev, REQ_OP_WRITE | REQ_SYNC, i, page);
		if (!err)
			written++;
	}
	flush = blkdev_issue_flush(bdev);
	for (i = 0; i < written && !err; i++) {
		memset(p, 0, PAGE_SIZE);
		err = hvwl_disk_bio(bdev, REQ_OP_READ, i, page);
		for (j = 0; j < PAGE_SIZE && !err; j++)
			if (p[j] != hvwl_disk_byte(i, j)) {
				bad++;
				break;
			}
	}
	__free_page(page);
	blkdev_put(bdev, FMODE_READ | FMODE_WRITE);
	pr_info("disk n=%ld written=%ld bad=%ld flush=%d err=%d\n", n, written, bad, flush, err);
}

static void hvwl_poweroff(void)
{
	pr_info("poweroff\n");
	kernel_restart(NULL);
}

/* ---- command list ---- */

static void hvwl_serve(void);

/*
 * Splits "name:arg:arg" in place at the first ':' and parses the
 * non-negative decimal arguments. Returns their number, or -EINVAL.
 */
static int hvwl_args(char *cmd, long *args, int max)
{
	char *rest = strchr(cmd, ':'), *tok;
	int n = 0;

	if (!rest)
		return 0;
	*rest++ = '\0';
	while ((tok = strsep(&rest, ":")) != NULL) {
		if (n == max || kstrtol(tok, 10, &args[n]) || args[n] < 0)
			return -EINVAL;
		n++;
	}
	return n;
}

/* Runs one command; "serve" only from the command line, not the mailbox. */
static void hvwl_run_one(char *cmd, bool may_serve)
{
	char name[64];
	long a[2];
	int n;

	pr_info("begin %s\n", cmd);
	strscpy(name, cmd, sizeof(name));
	n = hvwl_args(name, a, ARRAY_SIZE(a));

	if (!strcmp(name, "calls") && n == 1)
		hvwl_calls(a[0]);
	else if (!strcmp(name, "args8") && n == 1)
		hvwl_args8(a[0]);
	else if (!strcmp(name, "str") && n == 1)
		hvwl_str(a[0]);
	else if (!strcmp(name, "recurse") && n == 1 && a[0] <= HVWL_RECURSE_MAX)
		hvwl_recurse_scenario(a[0]);
	else if (!strcmp(name, "ret") && n == 1)
		hvwl_ret(a[0]);
	else if (!strcmp(name, "block") && n == 1)
		hvwl_block_scenario(a[0]);
	else if (!strcmp(name, "exit") && n == 0)
		hvwl_exit_scenario();
	else if (!strcmp(name, "threads") && n == 2 && a[0] <= HVWL_THREADS_MAX)
		hvwl_threads(a[0], a[1], false);
	else if (!strcmp(name, "fthreads") && n == 2 && a[0] <= HVWL_THREADS_MAX)
		hvwl_threads(a[0], a[1], true);
	else if (!strcmp(name, "fentry") && n == 1)
		hvwl_fentry(a[0]);
	else if (!strcmp(name, "fstr") && n == 1)
		hvwl_fstr(a[0]);
	else if (!strcmp(name, "run") && n == 1)
		hvwl_run(a[0]);
	else if (!strcmp(name, "fileread") && n == 1)
		hvwl_fileread(a[0]);
	else if (!strcmp(name, "text") && n == 0)
		hvwl_textsum();
	else if (!strcmp(name, "write") && n == 1)
		hvwl_write_scenario(a[0]);
	else if (!strcmp(name, "sysent") && n == 1)
		hvwl_sysent_scenario(a[0]);
	else if (!strcmp(name, "bits") && n == 1)
		hvwl_bits_scenario(a[0]);
	else if (!strcmp(name, "tasks") && n == 0)
		hvwl_tasks();
	else if (!strcmp(name, "static") && n == 2)
		hvwl_static(a[0], a[1]);
	else if (!strcmp(name, "staticrace") && n == 2 && a[0] <= HVWL_THREADS_MAX)
		hvwl_staticrace(a[0], a[1]);
	else if (!strcmp(name, "exits") && n == 1)
		hvwl_exits(a[0]);
	else if (!strcmp(name, "mix") && n == 1)
		hvwl_mix(a[0]);
	else if (!strcmp(name, "disk") && n == 1)
		hvwl_disk(a[0]);
	else if (!strcmp(name, "poweroff") && n == 0)
		hvwl_poweroff();
	else if (!strcmp(name, "serve") && n == 0 && may_serve)
		hvwl_serve(); /* never returns */
	else
		pr_info("error cmd=%s\n", cmd);
	pr_info("end %s\n", cmd);
}

/* Runs a ","-separated command list in place (list is modified). */
static void hvwl_run_list(char *list, bool may_serve)
{
	char *cmd;

	while ((cmd = strsep(&list, ",")) != NULL)
		if (*cmd)
			hvwl_run_one(cmd, may_serve);
}

static void hvwl_serve(void)
{
	static char cmds[sizeof(hvwl_mailbox)];
	unsigned long seen = READ_ONCE(hvwl_mailbox_seq), seq;

	pr_info("ready\n");
	for (;;) {
		msleep(10);
		seq = READ_ONCE(hvwl_mailbox_seq);
		if (seq == seen)
			continue;
		/* Pairs with the host writing the string before the seq. */
		smp_rmb();
		memcpy(cmds, hvwl_mailbox, sizeof(cmds));
		cmds[sizeof(cmds) - 1] = '\0';
		seen = seq;
		hvwl_run_list(cmds, false);
		WRITE_ONCE(hvwl_mailbox_done, seq);
		pr_info("done seq=%lu\n", seq);
	}
}

static int __init hvwl_init(void)
{
	pr_info("workload pid=%d comm=%s\n", task_pid_nr(current), current->comm);
	if (!hvwl_cmdline_set) {
		pr_info("idle\n");
		return 0;
	}
	hvwl_run_list(hvwl_cmdline, true);
	hvwl_poweroff();
	return 0;
}
/* _sync: after every other late initcall, so the system is fully up. */
late_initcall_sync(hvwl_init);
