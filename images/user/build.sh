#!/usr/bin/env bash
# images/user/build.sh OUT_DIR — builds the user-space initramfs for the
# stock kernel (images/README.md, "User-space workload"):
#   OUT_DIR/hvuser          the static workload (images/user/hvuser.c)
#   OUT_DIR/initramfs.cpio  uncompressed newc: /init = hvuser,
#                           /bin/hvuser-child -> /init, /etc/hvuser/{a,b,c,d}.txt
#                           (123, 4096, 5000 and 1 bytes), /dev/console
#   OUT_DIR/disk.cpio       /init = hvdisk (images/user/hvdisk.c), with the
#                           stock kernel's virtio-pci and virtio-blk modules
#                           from its cached .deb (images/stock/fetch.sh) and
#                           /etc/modules.order, dependencies first
# Only runs where guest user space can make system calls (not PVM).
set -euo pipefail
OUT=${1:?usage: build.sh OUT_DIR}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$OUT"
command -v cpio >/dev/null || {
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq && apt-get install -y -qq cpio
}
gcc -static -O2 -s -Wall -Wextra -o "$OUT/hvuser.tmp" "$HERE/hvuser.c"
mv "$OUT/hvuser.tmp" "$OUT/hvuser"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin" "$tmp/dev" "$tmp/etc/hvuser"
cp "$OUT/hvuser" "$tmp/init"
ln -s /init "$tmp/bin/hvuser-child"
# Distinct sizes, so each file's read sequence is its own: 123 (one short
# read), 4096 (one full 4096-byte read), 5000 (five 1000-byte reads), 1.
for f in a:123 b:4096 c:5000 d:1; do
	# (head ends the generator early: no pipe, which pipefail would fail)
	head -c "${f#*:}" < <(yes "hvuser-${f%%:*}") > "$tmp/etc/hvuser/${f%%:*}.txt"
done
# The kernel opens /dev/console for /init's stdio; no devtmpfs is mounted.
mknod -m 600 "$tmp/dev/console" c 5 1
(cd "$tmp" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet --owner=0:0 --reproducible) > "$OUT/initramfs.cpio.tmp"
mv "$OUT/initramfs.cpio.tmp" "$OUT/initramfs.cpio"
# The disk initramfs: hvdisk and the modules it loads.
gcc -static -O2 -s -Wall -Wextra -o "$OUT/hvdisk.tmp" "$HERE/hvdisk.c"
mv "$OUT/hvdisk.tmp" "$OUT/hvdisk"
"$HERE/../stock/fetch.sh" >/dev/null
deb=$(ls "$HERE"/../../.cache/images/stock/linux-image-*-cloud-amd64-unsigned_*.deb)
disk=$(mktemp -d)
trap 'rm -rf "$tmp" "$disk"' EXIT
mkdir -p "$disk/dev" "$disk/etc" "$disk/lib/modules" "$disk/x"
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$disk/x" --wildcards './lib/modules/*/kernel/drivers/virtio/*' './lib/modules/*/kernel/drivers/block/virtio_blk.ko'
# The order modinfo's depends gives: virtio_ring, virtio, the PCI helper
# libraries, virtio_pci, virtio_blk.
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do
	cp "$(find "$disk/x" -name "$m.ko")" "$disk/lib/modules/"
	echo "$m" >> "$disk/etc/modules.order"
done
rm -rf "$disk/x"
cp "$OUT/hvdisk" "$disk/init"
mknod -m 600 "$disk/dev/console" c 5 1
(cd "$disk" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet --owner=0:0 --reproducible) > "$OUT/disk.cpio.tmp"
mv "$OUT/disk.cpio.tmp" "$OUT/disk.cpio"
echo "user: $OUT/disk.cpio ($(stat -c %s "$OUT/disk.cpio") bytes)"

echo "user: $OUT/initramfs.cpio ($(stat -c %s "$OUT/initramfs.cpio") bytes; hvuser $(stat -c %s "$OUT/hvuser") bytes)"
