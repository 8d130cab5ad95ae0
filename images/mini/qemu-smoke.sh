#!/usr/bin/env bash
# Boots the mini kernel and initramfs under QEMU's TCG (no KVM needed) and
# checks that the in-kernel workload runs: every command has its begin and
# end line, none is an error, and the guest powers off through the i8042
# reset (QEMU's -no-reboot turns it into an exit). It checks the workload
# and the images, not hvprobe; it prints the HVWL lines it saw.
#
#   images/mini/qemu-smoke.sh [<hvprobe_wl command list>]
#
# Needs the outputs of `make images` (images/mini/build.sh and
# mkinitramfs).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
mini=$repo/.cache/images/mini
cmds=${1:-calls:1000,args8:10,str:5,recurse:10,ret:10,block:50,exit,threads:3:100,fileread:2,tasks}

if ! command -v qemu-system-x86_64 >/dev/null; then
	sudo=()
	[ "$(id -u)" -eq 0 ] || sudo=(sudo)
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y qemu-system-x86
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
rc=0
timeout 300 qemu-system-x86_64 -accel tcg -smp 2 -m 256 -nodefaults -no-user-config \
	-display none -serial "file:$log" -no-reboot \
	-kernel "$mini/current/bzImage" -initrd "$mini/initramfs.cpio" \
	-append "console=ttyS0 reboot=k hvprobe_wl=$cmds" || rc=$?

grep -o 'HVWL: .*' "$log" || true
fail() {
	echo "qemu-smoke: $*" >&2
	exit 1
}
[ $rc -eq 0 ] || { tail -20 "$log" >&2; fail "qemu exited with $rc (124: timeout)"; }
grep -q 'HVWL: error' "$log" && fail "a command failed"
IFS=, read -ra list <<<"$cmds"
for c in "${list[@]}"; do
	grep -qF "HVWL: end $c" "$log" || fail "no end line for $c"
done
grep -q 'HVWL: poweroff' "$log" || fail "no poweroff"
echo "qemu-smoke: ok" >&2
