#!/usr/bin/env bash
# retry.sh ATTEMPTS [run.sh options] -- COMMAND ARGS... — run.sh, again in a
# fresh L1 (up to ATTEMPTS runs in all) when the L1 kernel itself failed
# under COMMAND: the run ended 125 (L1 died, or stalled with its own
# heartbeat, before COMMAND reported) or L1's console shows an oops
# (docs/QUIRKS.md #24, #43: "stack guard page was hit" in the vCPU thread,
# after which its L2 guest goes silent). A failure or a stall of COMMAND in
# a healthy L1 is final. Every attempt is reported; a crashed L1's console
# is kept as last-console-attempt-N.log; each retry appends a line to
# $HVPROBE_RETRIES_FILE when that is set (tests/stage.sh counts them).
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${HVPROBE_NESTED_CACHE:-$HERE/../../.cache/nested}
attempts=${1:?usage: retry.sh ATTEMPTS [run.sh options] -- COMMAND ARGS...}
shift
for ((i = 1; i <= attempts; i++)); do
	echo "nested/retry.sh: attempt $i of $attempts" >&2
	"$HERE/run.sh" "$@"
	rc=$?
	con=$CACHE/last-console.log
	if [ "$rc" != 125 ] && ! grep -qE 'BUG:|Oops|Kernel panic' "$con" 2>/dev/null; then
		exit "$rc"
	fi
	cp -f "$con" "$CACHE/last-console-attempt-$i.log" 2>/dev/null
	echo "nested/retry.sh: attempt $i: the L1 kernel failed (exit $rc); its console: $CACHE/last-console-attempt-$i.log" >&2
	grep -E -m3 'BUG:|Oops|Kernel panic' "$con" >&2
	if ((i < attempts)) && [ -n "${HVPROBE_RETRIES_FILE:-}" ]; then
		echo "attempt $i: L1 failed (exit $rc)" >> "$HVPROBE_RETRIES_FILE"
	fi
done
echo "nested/retry.sh: the L1 kernel failed in all $attempts attempts" >&2
exit 125
