#!/usr/bin/env bash
# with-kvm.sh COMMAND ARGS... — run COMMAND where KVM works: directly when
# /dev/kvm can be opened, else inside the nested KVM (QEMU TCG with an
# emulated SVM CPU; see README.md), in a fresh L1 again when that L1 fails
# (retry.sh; $HVPROBE_NESTED_ATTEMPTS runs at most, default 3), with
# run.sh's stall check watching $HVPROBE_E2E_LOGDIR too when it is set.
# COMMAND must then be a static binary under the repository (it is shared
# into L1 at the same path).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ -c /dev/kvm ] && { exec 3<>/dev/kvm; } 2>/dev/null; then
	exec 3>&-
	exec "$@"
fi
echo "with-kvm: /dev/kvm is not usable here; running in the nested KVM (images/nested)" >&2
# QEMU TCG's SVM never intercepts int3: say so rather than have hvprobe
# probe it (docs/QUIRKS.md #17, #24). run.sh passes HVPROBE_* through.
export HVPROBE_INT3=reflected
# Nor does it fire debug registers (#18): no scratch guest to find out.
export HVPROBE_HWBP=none
watch=()
[ -n "${HVPROBE_E2E_LOGDIR:-}" ] && watch=(--watch "$HVPROBE_E2E_LOGDIR")
exec "$HERE/retry.sh" "${HVPROBE_NESTED_ATTEMPTS:-3}" --timeout "${HVPROBE_NESTED_TIMEOUT:-4800}" "${watch[@]}" -- "$@"
