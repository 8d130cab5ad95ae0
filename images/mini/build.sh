#!/usr/bin/env bash
# Builds hvprobe's mini guest kernel: Debian's linux-source-6.1 with
# `make tinyconfig` + images/mini/config and the in-kernel workload
# images/mini/hvprobe_wl.c built in (see images/README.md).
#
# Outputs go to $CACHE/<key>/{bzImage,vmlinux,vmlinux.btf,System.map,config,
# build-info}
# where CACHE=.cache/images/mini under the repository root and key hashes
# everything that determines the build (source package version, config
# fragment, workload, this script). $CACHE/current links to the latest
# build. A key whose outputs exist is not rebuilt, so running this again is
# cheap; the build tree $CACHE/build is reused, so a changed workload
# rebuilds incrementally.
#
# Environment: HVPROBE_MINI_CONFIG overrides the fragment (for measuring a
# variant; it gets its own key), JOBS the make parallelism (default 2).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=$repo/.cache/images/mini
fragment=${HVPROBE_MINI_CONFIG:-$here/config}
workload=$here/hvprobe_wl.c
jobs=${JOBS:-2}
tarball=/usr/src/linux-source-6.1.tar.xz

log() { echo "mini: $*" >&2; }

# CI starts on a fresh machine: install whatever the build needs.
# dwarves provides pahole, which encodes the BTF.
install_deps() {
	local pkgs=(linux-source-6.1 build-essential bc flex bison libelf-dev
		libssl-dev dwarves xz-utils lz4)
	local missing=() p sudo=()
	for p in "${pkgs[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
			missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return
	[ "$(id -u)" -eq 0 ] || sudo=(sudo)
	log "installing ${missing[*]}"
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
}

# Fails when an option the fragment sets did not survive olddefconfig
# (an unmet dependency silently drops it, e.g. a choice or a "depends on").
verify_config() {
	local cfg=$1 line opt bad=0
	while IFS= read -r line; do
		case $line in
		CONFIG_*=*)
			grep -qxF "$line" "$cfg" || { log "config: wanted $line, got: $(grep -E "^(# )?${line%%=*}[= ]" "$cfg" || echo unset)"; bad=1; }
			;;
		"# CONFIG_"*" is not set")
			opt=${line#\# }
			opt=${opt%% *}
			if grep -q "^$opt=" "$cfg"; then
				log "config: wanted $opt off, got: $(grep "^$opt=" "$cfg")"
				bad=1
			fi
			;;
		esac
	done <"$fragment"
	return $bad
}

install_deps

ver=$(dpkg-query -W -f='${Version}' linux-source-6.1)
key=$({
	echo "linux-source-6.1 $ver"
	sha256sum <"$fragment"
	sha256sum <"$workload"
	sha256sum <"$here/build.sh"
} | sha256sum | cut -c1-16)
out=$cache/$key
mkdir -p "$cache"

# One build at a time per cache: the build tree is shared.
exec 9>"$cache/.lock"
flock 9

if [ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ] && [ -f "$out/System.map" ] && [ -f "$out/vmlinux.btf" ]; then
	log "up to date: $out"
else
	src=$cache/src-$ver
	if [ ! -f "$src/.hvprobe-unpacked" ]; then
		log "unpacking $tarball into $src"
		rm -rf "$src" "$src.tmp"
		mkdir -p "$src.tmp"
		tar -xJf "$tarball" -C "$src.tmp"
		mv "$src.tmp/linux-source-6.1" "$src"
		rmdir "$src.tmp"
		touch "$src/.hvprobe-unpacked"
	fi

	# Built in via kernel/Makefile: no Kconfig symbol, always on.
	cp "$workload" "$src/kernel/hvprobe_wl.c"
	grep -qxF 'obj-y += hvprobe_wl.o' "$src/kernel/Makefile" ||
		echo 'obj-y += hvprobe_wl.o' >>"$src/kernel/Makefile"

	build=$cache/build
	mkdir -p "$build"
	# tinyconfig reports every option its own fragments override: noise.
	make -s -C "$src" O="$build" tinyconfig >/dev/null
	"$src/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "$fragment" >/dev/null
	# merge_config appends, so every choice the fragment overrides
	# (PREEMPT, HZ, ...) warns "override"; expected, everything else shows.
	make -s -C "$src" O="$build" olddefconfig 2> >(grep -v 'warning: override:' >&2)
	verify_config "$build/.config"

	log "building bzImage in $build (make -j$jobs)"
	start=$SECONDS
	nice -n 19 make -s -C "$src" O="$build" -j"$jobs" bzImage
	secs=$((SECONDS - start))

	rm -rf "$out.tmp"
	mkdir -p "$out.tmp"
	cp "$build/arch/x86/boot/bzImage" "$build/System.map" "$out.tmp/"
	# BTF from the DWARF, with the kernel's own pahole options for 1.24,
	# attached as a .BTF section the guest never loads (see config).
	nice -n 19 pahole --btf_gen_floats -j"$jobs" --lang_exclude=rust \
		--btf_encode_detached="$out.tmp/vmlinux.btf" "$build/vmlinux"
	objcopy --add-section .BTF="$out.tmp/vmlinux.btf" --set-section-flags .BTF=readonly \
		"$build/vmlinux" "$out.tmp/vmlinux"
	cp "$build/.config" "$out.tmp/config"
	printf 'linux-source-6.1 %s\nkey %s\nbuild_seconds %s\n' "$ver" "$key" "$secs" >"$out.tmp/build-info"
	rm -rf "$out"
	mv "$out.tmp" "$out"
	log "built in ${secs}s"
fi

ln -sfn "$key" "$cache/current"
echo "$out"
