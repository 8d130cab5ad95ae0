#!/usr/bin/env bash
# images/nested/run.sh — run a command where a real /dev/kvm exists, on a
# machine that has none.
#
# Boots an L1 Linux (Debian's stock 6.1 kernel) under QEMU TCG with an
# emulated AMD CPU that has SVM + NPT, loads kvm + kvm_amd inside it, and
# runs COMMAND there. The repository root is shared into L1 over virtio-9p at
# the same absolute path, so prebuilt binaries and absolute paths work
# unchanged. COMMAND's stdout/stderr come out on this script's stdout/stderr
# and its exit status becomes this script's exit status.
#
# Usage: images/nested/run.sh [options] -- COMMAND ARGS...
#   --mem SIZE      L1 memory (QEMU -m syntax), default 4G
#   --cpus N        L1 vCPUs (MTTCG threads), default 2
#   --pin CPUS      run COMMAND on these L1 CPUs only (taskset list),
#                   default 0; "" = anywhere. Pinned, L1 survives hvprobe's
#                   guests (docs/QUIRKS.md #49)
#   --timeout SECS  kill L1 after SECS (exit 124); default 3600, 0 = none
#   --stall SECS    kill L1 when neither COMMAND's output, L1's console nor a
#                   --watch directory has changed for SECS (exit 123);
#                   default 300, 0 = never. With the check on, an L1 whose
#                   heartbeat is 90 s old is killed at once (exit 125)
#   --watch DIR     a directory whose files count as progress (repeatable:
#                   where COMMAND's guests write their consoles)
#   --share DIR     also share DIR at the same path (repeatable)
#   --env NAME      also pass host variable NAME through (repeatable)
#   --console       copy L1's kernel console to stderr (it always goes to
#                   $CACHE/last-console.log)
#   --prepare       only fetch and build the cached files, then exit 0
#
# Variables passed through to COMMAND: every HVPROBE_* variable, GOTRACEBACK,
# GODEBUG, GOMAXPROCS, plus --env names. Inside, HVPROBE_NESTED=1 is set,
# PATH is busybox's, HOME=/root and TMPDIR=/tmp (a tmpfs in L1 RAM).
# COMMAND runs with the host's current directory if that is inside a shared
# directory, else in /. COMMAND must be a static binary or a busybox sh
# script: L1 has busybox and nothing else (no libc).
#
# Exit status: COMMAND's; 123 when COMMAND stalled (--stall) while L1 was
# alive; 124 on timeout; 125 when L1 failed before COMMAND could report a
# status (see the console log), or stalled itself.
#
# COMMAND's stdin is /dev/null.
#
# Environment: HVPROBE_NESTED_CACHE overrides the cache directory (default
# <repo>/.cache/nested); HVPROBE_NESTED_KERNEL boots another L1 kernel image
# (it must match the pinned modules, so this is for experiments only).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${HVPROBE_NESTED_CACHE:-$ROOT/.cache/nested}

# The L1 kernel, pinned. Debian's generic (not cloud) flavour: the cloud one
# lacks 9p. Both .ko files we need (kvm, kvm-amd) are modules in it.
KPKG=linux-image-6.1.0-50-amd64-unsigned
KPKGVER=6.1.176-1
KPKGSHA=439422e41d2dbb840b60b81e3bf5e5955bfa56b7a8c268aec83c9ff882d421e6
KREL=6.1.0-50-amd64
# Modules to load in L1 (dependencies are resolved from the .ko files).
WANT_MODULES="virtio_pci 9pnet_virtio 9p virtio_rng kvm_amd"

MEM=4G
CPUS=2
TIMEOUT=3600
PIN=0
STALL=300
WATCH=()
CONSOLE=0
PREPARE=0
SHARES=("$ROOT")
EXTRA_ENV=()

die() { echo "nested/run.sh: $*" >&2; exit 125; }
log() { echo "nested/run.sh: $*" >&2; }

while [ $# -gt 0 ]; do
	case "$1" in
	--mem) MEM=$2; shift 2 ;;
	--cpus) CPUS=$2; shift 2 ;;
	--pin) PIN=$2; shift 2 ;;
	--timeout) TIMEOUT=$2; shift 2 ;;
	--stall) STALL=$2; shift 2 ;;
	--watch) WATCH+=("$2"); shift 2 ;;
	--share) SHARES+=("$(cd "$2" && pwd)"); shift 2 ;;
	--env) EXTRA_ENV+=("$2"); shift 2 ;;
	--console) CONSOLE=1; shift ;;
	--prepare) PREPARE=1; shift ;;
	--) shift; break ;;
	-h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown option $1 (usage: run.sh [options] -- COMMAND ARGS...)" ;;
	esac
done
[ $# -gt 0 ] || [ "$PREPARE" = 1 ] || die "no COMMAND (usage: run.sh [options] -- COMMAND ARGS...)"

# ---------------------------------------------------------------- host deps
ensure_deps() {
	local missing=()
	command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
	dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || missing+=(busybox-static)
	command -v cpio >/dev/null || missing+=(cpio)
	command -v modinfo >/dev/null || missing+=(kmod)
	command -v xz >/dev/null || missing+=(xz-utils)
	command -v sha256sum >/dev/null || missing+=(coreutils)
	if [ ${#missing[@]} -gt 0 ]; then
		log "installing ${missing[*]}"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq >&2
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
	fi
}

# ---------------------------------------------------------------- kernel
fetch_kernel() {
	local deb="$CACHE/deb/${KPKG}_${KPKGVER}_amd64.deb"
	if [ ! -f "$deb" ] || ! echo "$KPKGSHA  $deb" | sha256sum -c --quiet - >/dev/null 2>&1; then
		mkdir -p "$CACHE/deb"
		rm -f "$deb"
		log "downloading $KPKG=$KPKGVER"
		(cd "$CACHE/deb" && apt-get download "$KPKG=$KPKGVER" >&2 2>/dev/null) ||
			(export DEBIAN_FRONTEND=noninteractive; apt-get update -qq >&2 && cd "$CACHE/deb" && apt-get download "$KPKG=$KPKGVER" >&2) ||
			die "cannot download $KPKG=$KPKGVER (no longer in the archive? bump KPKG/KPKGVER/KPKGSHA/KREL)"
		echo "$KPKGSHA  $deb" | sha256sum -c --quiet - >&2 || { rm -f "$deb"; die "sha256 mismatch for $deb"; }
	fi
	KDIR="$CACHE/kernel-$KPKGVER"
	if [ ! -f "$KDIR/.done" ]; then
		log "extracting $KPKG"
		rm -rf "$KDIR"; mkdir -p "$KDIR"
		dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$KDIR" ./boot ./lib/modules
		touch "$KDIR/.done"
	fi
	VMLINUZ="$KDIR/boot/vmlinuz-$KREL"
	MODDIR="$KDIR/lib/modules/$KREL"
	[ -f "$VMLINUZ" ] || die "no $VMLINUZ in $KPKG"
	# Decompressing the XZ bzImage under TCG costs tens of seconds; QEMU
	# boots the uncompressed ELF vmlinux directly (PVH entry, CONFIG_PVH=y).
	VMLINUX="$KDIR/vmlinux"
	if [ ! -f "$VMLINUX" ]; then
		local off
		off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$VMLINUZ" | head -1 | cut -d: -f1)
		[ -n "$off" ] || die "no XZ payload in $VMLINUZ"
		xz -dc --single-stream < <(tail -c +$((off + 1)) "$VMLINUZ") > "$VMLINUX.tmp" || die "cannot decompress $VMLINUZ"
		mv "$VMLINUX.tmp" "$VMLINUX"
	fi
}

# ---------------------------------------------------------------- initramfs
# The L1 /init (busybox ash). Reads /run/hvctl/{mounts,cmd.sh} from the
# per-run control share, writes /run/hvctl/status.
INIT_SCRIPT='#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /tmp /run/hvctl
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs -o mode=1777 tmpfs /tmp
say() { echo "hvnested: $*" > /dev/ttyS0; }
say "init at $(cut -d" " -f1 /proc/uptime)s"
while read -r m; do
	insmod "/lib/modules/$m.ko" || say "insmod $m failed"
done < /etc/modules.order
if [ -c /dev/kvm ]; then
	say "/dev/kvm ready at $(cut -d" " -f1 /proc/uptime)s"
else
	say "NO /dev/kvm at $(cut -d" " -f1 /proc/uptime)s"
fi
for p in nested npt avic; do
	[ -r /sys/module/kvm_amd/parameters/$p ] && say "kvm_amd.$p=$(cat /sys/module/kvm_amd/parameters/$p)"
done
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=none hvctl /run/hvctl; then
	say "cannot mount control share"; poweroff -f
fi
while read -r tag path; do
	mkdir -p "$path" && mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose "$tag" "$path" ||
		say "cannot mount $tag at $path"
done < /run/hvctl/mounts
# A heartbeat tells a stalled COMMAND (or L2) from a stalled L1.
( while :; do cut -d" " -f1 /proc/uptime > /run/hvctl/heartbeat; sleep 10; done ) &
for t in /dev/ttyS1 /dev/ttyS2; do stty -F $t raw -echo 2>/dev/null; done
echo 1 > /proc/sys/kernel/printk
say "running command at $(cut -d" " -f1 /proc/uptime)s"
sh /run/hvctl/cmd.sh < /dev/null > /dev/ttyS1 2> /dev/ttyS2
rc=$?
say "command exited $rc at $(cut -d" " -f1 /proc/uptime)s"
echo $rc > /run/hvctl/status
sync
umount -a -r 2>/dev/null
poweroff -f
'

declare -A KOPATH=()
build_initramfs() {
	# Resolve module dependencies on the host (busybox insmod does not);
	# cached per kernel and module list.
	local orderfile="$KDIR/modules.order.$(echo "$WANT_MODULES" | tr ' ' '+')"
	if [ ! -f "$orderfile" ]; then
		declare -A KO=() SEEN=()
		local f n
		while IFS= read -r f; do
			n=${f##*/}; n=${n%.xz}; n=${n%.ko}; n=${n//-/_}
			KO[$n]=${f#"$MODDIR/"}
		done < <(find "$MODDIR/kernel" -name '*.ko' -o -name '*.ko.xz')
		ORDER=()
		resolve() {
			local n=${1//-/_} d
			[ -n "${SEEN[$n]:-}" ] && return
			SEEN[$n]=1
			[ -n "${KO[$n]:-}" ] || die "module $n not found in $KPKG"
			for d in $(modinfo -F depends "$MODDIR/${KO[$n]}" | tr ',' ' '); do resolve "$d"; done
			ORDER+=("$n ${KO[$n]}")
		}
		for n in $WANT_MODULES; do resolve "$n"; done
		printf '%s\n' "${ORDER[@]}" > "$orderfile.tmp"
		mv "$orderfile.tmp" "$orderfile"
	fi
	ORDER=()
	local n rel
	while read -r n rel; do ORDER+=("$n"); KOPATH[$n]=$rel; done < "$orderfile"

	local key
	key=$( { echo "$KPKGVER ${ORDER[*]}"; echo "$INIT_SCRIPT"; sha256sum /bin/busybox; } | sha256sum | cut -c1-16)
	INITRD="$CACHE/initramfs-$key.cpio"
	[ -f "$INITRD" ] && return
	log "building initramfs (${ORDER[*]})"
	local tmp
	tmp=$(mktemp -d "$CACHE/initramfs.XXXXXX")
	mkdir -p "$tmp/bin" "$tmp/etc" "$tmp/lib/modules" "$tmp/dev" "$tmp/root"
	cp /bin/busybox "$tmp/bin/busybox"
	ldd "$tmp/bin/busybox" >/dev/null 2>&1 && die "/bin/busybox is dynamic; install busybox-static"
	printf '%s' "$INIT_SCRIPT" > "$tmp/init"
	chmod 755 "$tmp/init"
	: > "$tmp/etc/modules.order"
	for n in "${ORDER[@]}"; do
		case "${KOPATH[$n]}" in
		*.xz) xz -dc "$MODDIR/${KOPATH[$n]}" > "$tmp/lib/modules/$n.ko" ;;
		*) cp "$MODDIR/${KOPATH[$n]}" "$tmp/lib/modules/$n.ko" ;;
		esac
		echo "$n" >> "$tmp/etc/modules.order"
	done
	# The kernel opens /dev/console for /init before devtmpfs is mounted.
	mknod -m 600 "$tmp/dev/console" c 5 1
	# Uncompressed newc cpio: no decompression cost under TCG.
	(cd "$tmp" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet --owner=0:0) > "$INITRD.tmp"
	rm -rf "$tmp"
	mv "$INITRD.tmp" "$INITRD"
}

# ---------------------------------------------------------------- main
mkdir -p "$CACHE"
ensure_deps
fetch_kernel
build_initramfs
[ "$PREPARE" = 1 ] && { log "prepared: $VMLINUZ $INITRD"; exit 0; }

# Per-run control directory (shared as tag hvctl).
mkdir -p "$CACHE/runs"
RUN=$(mktemp -d "$CACHE/runs/run.XXXXXX")
CATS=()
QPID=
WPID=
cleanup() {
	[ -n "$QPID" ] && kill "$QPID" 2>/dev/null
	[ -n "$WPID" ] && kill "$WPID" 2>/dev/null
	local p
	for p in "${CATS[@]}"; do kill "$p" 2>/dev/null || true; done
	rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

sq() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }

{
	echo "export HOME=/root TMPDIR=/tmp PATH=/bin HVPROBE_NESTED=1"
	for name in $(compgen -e); do
		case "$name" in
		HVPROBE_NESTED_CACHE) ;;
		HVPROBE_*|GOTRACEBACK|GODEBUG|GOMAXPROCS) echo "export $name=$(sq "${!name}")" ;;
		esac
	done
	for name in "${EXTRA_ENV[@]}"; do
		[ -n "${!name+x}" ] && echo "export $name=$(sq "${!name}")"
	done
	cwd=/
	for s in "${SHARES[@]}"; do
		case "$PWD/" in "$s"/*) cwd=$PWD ;; esac
	done
	echo "cd $(sq "$cwd") || exit 125"
	printf 'exec'
	[ -n "$PIN" ] && printf ' taskset -c %s' "$(sq "$PIN")"
	for a in "$@"; do printf ' %s' "$(sq "$a")"; done
	echo
} > "$RUN/cmd.sh"

VIRTFS=(-virtfs "local,path=$RUN,mount_tag=hvctl,security_model=none")
: > "$RUN/mounts"
i=0
for s in "${SHARES[@]}"; do
	case "$s" in *[[:space:]]*) die "share path with whitespace not supported: $s" ;; esac
	VIRTFS+=(-virtfs "local,path=$s,mount_tag=hvshare$i,security_model=none,multidevs=remap")
	echo "hvshare$i $s" >> "$RUN/mounts"
	i=$((i + 1))
done

# COMMAND's stdout/stderr come out of L1's ttyS1/ttyS2 into these FIFOs.
mkfifo "$RUN/out" "$RUN/err"
# Copies of both count as progress for the stall check.
tee "$RUN/out.log" < "$RUN/out" & CATS+=($!)
tee "$RUN/err.log" < "$RUN/err" >&2 & CATS+=($!)
# L1's kernel console goes to $RUN/console.log, kept as last-console.log.
CONSOLE_LOG="$CACHE/last-console.log"
if [ "$CONSOLE" = 1 ]; then
	mkfifo "$RUN/con"
	tee "$RUN/console.log" < "$RUN/con" >&2 & CATS+=($!)
	CONPATH=$RUN/con
else
	CONPATH=$RUN/console.log
fi

# -xsave: QEMU TCG's SVM does not intercept XSETBV, so L1's KVM never
# sees L2's XCR0 and reloads a stale one on every VMRUN; without XSAVE the
# guests use FXSAVE (docs/QUIRKS.md #52).
CMDLINE="console=ttyS0 rdinit=/init panic=-1 mitigations=off nowatchdog tsc=reliable no_timer_check random.trust_cpu=on"
QEMU=(qemu-system-x86_64
	-accel tcg,thread=multi,tb-size=512
	-machine pc -cpu max,+svm,+npt,-xsave
	-smp "$CPUS" -m "$MEM"
	-nodefaults -no-user-config -display none -no-reboot
	-kernel "${HVPROBE_NESTED_KERNEL:-$VMLINUX}" -initrd "$INITRD" -append "$CMDLINE"
	-chardev "file,id=con,path=$CONPATH"
	-chardev "file,id=out,path=$RUN/out,append=on"
	-chardev "file,id=err,path=$RUN/err,append=on"
	-serial chardev:con -serial chardev:out -serial chardev:err
	-device virtio-rng-pci
	"${VIRTFS[@]}")

START=$(date +%s)
if [ "$TIMEOUT" != 0 ]; then
	timeout -k 10 "$TIMEOUT" "${QEMU[@]}" < /dev/null &
else
	"${QEMU[@]}" < /dev/null &
fi
QPID=$!
# The stall check: a hash of the sizes and times of everything that shows
# progress, every 10 s; a run whose hash stays put for STALL seconds is
# stopped (a stalled L2 or L1 would otherwise hold the stage to its
# timeout, docs/QUIRKS.md #23, #43).
if [ "$STALL" != 0 ]; then
	(
		last= quiet=0
		while sleep 10; do
			sig=$({ stat -c '%s %Y' "$RUN/out.log" "$RUN/err.log" "$RUN/console.log"
				for d in "${WATCH[@]}"; do find "$d" -maxdepth 1 -type f -printf '%s %T@\n'; done; } 2>/dev/null | sort | md5sum)
			if [ "$sig" = "$last" ]; then quiet=$((quiet + 10)); else quiet=0 last=$sig; fi
			# A frozen L1 (docs/QUIRKS.md #49) writes no heartbeat: no need
			# to wait out STALL for it.
			beat=$(stat -c %Y "$RUN/heartbeat" 2>/dev/null || echo)
			if [ "$quiet" -ge "$STALL" ] || { [ -n "$beat" ] && [ $(( $(date +%s) - beat )) -ge 90 ]; }; then
				: > "$RUN/stalled"
				kill "$QPID" 2>/dev/null
				exit 0
			fi
		done
	) &
	WPID=$!
fi
qrc=0
wait "$QPID" || qrc=$?
QPID=
if [ -n "$WPID" ]; then kill "$WPID" 2>/dev/null || true; wait "$WPID" 2>/dev/null || true; WPID=; fi
# The readers end at EOF once QEMU has closed the FIFOs; one still blocked in
# open() (QEMU never started) is ended after a grace period.
for _ in $(seq 50); do
	alive=0
	for p in "${CATS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
	[ "$alive" = 0 ] && break
	sleep 0.1
done
for p in "${CATS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
CATS=()
mv -f "$RUN/console.log" "$CONSOLE_LOG" 2>/dev/null || true

if [ -f "$RUN/stalled" ]; then
	beat=$(( $(date +%s) - $(stat -c %Y "$RUN/heartbeat" 2>/dev/null || echo 0) ))
	log "stalled: no output from COMMAND, L1's console${WATCH[*]:+ or ${WATCH[*]}} for ${STALL}s, or no L1 heartbeat for 90 s; L1 stopped after $(( $(date +%s) - START ))s; L1's last heartbeat ${beat}s before; last L1 console lines ($CONSOLE_LOG):"
	tail -n 20 "$CONSOLE_LOG" >&2 2>/dev/null || true
	# L1's own heartbeat stopped too: L1 failed, not COMMAND.
	[ "$beat" -gt 60 ] && exit 125
	exit 123
fi
if [ -f "$RUN/status" ]; then
	rc=$(cat "$RUN/status")
	exit "$rc"
fi
if [ "$qrc" = 124 ]; then
	log "timeout after ${TIMEOUT}s; L1 console: $CONSOLE_LOG"
	tail -n 20 "$CONSOLE_LOG" >&2 2>/dev/null || true
	exit 124
fi
log "L1 exited (qemu status $qrc, $(( $(date +%s) - START ))s) without a command status; last console lines ($CONSOLE_LOG):"
tail -n 30 "$CONSOLE_LOG" >&2 2>/dev/null || true
exit 125
