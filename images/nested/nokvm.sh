#!/usr/bin/env bash
# nokvm.sh COMMAND ARGS... — run COMMAND as on a machine without /dev/kvm:
# in a private mount namespace whose /dev is a tmpfs holding every node of
# the real /dev (bind-mounted) but kvm, so opening /dev/kvm fails with
# ENOENT as it does there (docs/QUIRKS.md #16). The kvm modules stay loaded,
# as they are on such machines. Needs root (unshare, mount).
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: nokvm.sh COMMAND ARGS..." >&2; exit 2; }
if [ "$1" != --inside ]; then
	exec unshare --mount --propagation private "$0" --inside "$@"
fi
shift
old=$(mktemp -d /tmp/nokvm-dev.XXXXXX)
mount --bind /dev "$old"
mount -t tmpfs -o mode=755,size=64k nokvm-dev /dev
for e in "$old"/* "$old"/.[!.]*; do
	[ -e "$e" ] || [ -L "$e" ] || continue
	n=${e##*/}
	[ "$n" = kvm ] && continue
	if [ -L "$e" ]; then cp -a "$e" /dev/
	elif [ -d "$e" ]; then mkdir "/dev/$n"; mount --rbind "$e" "/dev/$n"
	else : > "/dev/$n"; mount --bind "$e" "/dev/$n"; fi
done
umount -l "$old"; rmdir "$old"
exec "$@"
