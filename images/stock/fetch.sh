#!/usr/bin/env bash
# Fetches the stock Debian bookworm cloud kernel hvprobe must keep working
# against, pinned by exact version and sha256:
#   .cache/images/stock/vmlinuz     boot/vmlinuz-* of the -unsigned image .deb
#   .cache/images/stock/config      boot/config-* of the same .deb
#   .cache/images/stock/System.map  the real System.map from the -dbg .deb
#                                   (the image .deb only has a placeholder)
# Work already cached is skipped. The 280 MB -dbg .deb is deleted once its
# System.map is out.
#
# When Debian publishes a newer kernel the pinned one leaves the archive and
# apt-get download fails: bump VERSION, ABI and both sha256s together
# (apt-cache show linux-image-$ABI-cloud-amd64-unsigned prints SHA256).
set -euo pipefail

VERSION=6.1.192-2
ABI=6.1.0-56
IMAGE_PKG=linux-image-$ABI-cloud-amd64-unsigned
IMAGE_SHA256=7ff7fc8da85d313242c20698c6b34542aea447673c7c1975b0d38bd6005100b5
DBG_PKG=linux-image-$ABI-cloud-amd64-dbg
DBG_SHA256=a835edf97e22ec84ddcd4d773596376be9eaae0c5094053b14c8e557cf9d8fb7

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=$repo/.cache/images/stock

log() { echo "stock: $*" >&2; }

sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)

# apt-get download and dpkg-deb only need apt's package lists.
apt_update_once() {
	[ -n "${updated:-}" ] && return
	log "apt-get update"
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
	updated=1
}

# fetch PKG SHA256: leaves the verified PKG_VERSION_amd64.deb in $out and
# prints its name.
fetch() {
	local pkg=$1 sum=$2 deb=${1}_${VERSION}_amd64.deb
	if [ -f "$deb" ] && echo "$sum  $deb" | sha256sum -c --status; then
		echo "$deb"
		return
	fi
	rm -f "$deb"
	apt-cache show "$pkg=$VERSION" >/dev/null 2>&1 || apt_update_once
	log "downloading $pkg=$VERSION"
	apt-get download "$pkg=$VERSION" >&2
	if ! echo "$sum  $deb" | sha256sum -c --status; then
		log "$deb: sha256 mismatch, want $sum"
		rm -f "$deb"
		exit 1
	fi
	echo "$deb"
}

# extract DEB PATTERN DEST: the single member matching PATTERN, atomically.
extract() {
	dpkg-deb --fsys-tarfile "$1" | tar -x -O --wildcards "$2" >"$3.tmp"
	[ -s "$3.tmp" ] || { log "$1: nothing matched $2"; exit 1; }
	mv "$3.tmp" "$3"
}

mkdir -p "$out"
cd "$out"
# A different pin invalidates what was extracted for the old one.
if [ "$(cat pin 2>/dev/null)" != "$VERSION $ABI" ]; then
	rm -f vmlinuz config System.map
fi

if [ ! -f vmlinuz ] || [ ! -f config ]; then
	deb=$(fetch "$IMAGE_PKG" "$IMAGE_SHA256")
	extract "$deb" "./boot/vmlinuz-$ABI-cloud-amd64" vmlinuz
	extract "$deb" "./boot/config-$ABI-cloud-amd64" config
fi
if [ ! -f System.map ]; then
	deb=$(fetch "$DBG_PKG" "$DBG_SHA256")
	extract "$deb" "*/System.map-$ABI-cloud-amd64" System.map
	rm -f "$deb"
fi
echo "$VERSION $ABI" >pin

log "vmlinuz, config, System.map for $VERSION ($ABI) in $out"
echo "$out"
