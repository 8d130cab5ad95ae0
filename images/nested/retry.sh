#!/usr/bin/env bash
# retry.sh ATTEMPTS [run.sh options] -- COMMAND ARGS... — run.sh, again in a
# fresh L1 (up to ATTEMPTS runs in all) when the L1 kernel itself crashed
# under COMMAND: the run ended 125 (L1 died before COMMAND reported) or
# L1's console shows an oops (docs/QUIRKS.md #24, #43: "stack guard page
# was hit" in the vCPU thread, after which its L2 guest goes silent). A
# failure of COMMAND in a healthy L1 is final. Every attempt is reported;
# a crashed L1's console is kept as last-console-attempt-N.log.
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
	echo "nested/retry.sh: attempt $i: the L1 kernel crashed (exit $rc); its console: $CACHE/last-console-attempt-$i.log" >&2
	grep -E -m3 'BUG:|Oops|Kernel panic' "$con" >&2
done
echo "nested/retry.sh: the L1 kernel crashed in all $attempts attempts" >&2
exit 125
