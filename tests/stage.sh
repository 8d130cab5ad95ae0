#!/usr/bin/env bash
# stage.sh NAME COMMAND ARGS...   run one stage of `make test`: time it,
#                                 count its nested-KVM retries, and add a row
#                                 to $HVPROBE_STAGES; exit with COMMAND's status
# stage.sh --record NAME SECS     add a row for work timed elsewhere (.ci/run's setup)
# stage.sh --table                print the rows as a table, with the total
#
# A retry is a fresh L1 after the L1 kernel failed (images/nested/retry.sh
# appends one line per retry to $HVPROBE_RETRIES_FILE); a test failure is
# never retried, so "failed" in the table is final.
set -uo pipefail
STAGES=${HVPROBE_STAGES:?HVPROBE_STAGES names the stage table file}
mkdir -p "$(dirname "$STAGES")"

row() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$STAGES"; }

case "${1:-}" in
--record)
	row "$2" "$3" 0 ok
	exit 0 ;;
--table)
	[ -f "$STAGES" ] || exit 0
	awk -F'\t' '
		BEGIN { printf "\n%-12s %9s %8s  %s\n", "stage", "seconds", "retries", "result" }
		{ printf "%-12s %9d %8d  %s\n", $1, $2, $3, $4; s += $2; r += $3 }
		END { printf "%-12s %9d %8d  (%.1f min)\n", "total", s, r, s / 60 }' "$STAGES"
	exit 0 ;;
esac

name=${1:?usage: stage.sh NAME COMMAND ARGS...}
shift
retries=$(mktemp)
start=$(date +%s)
echo "stage $name: start $(date -u +%T)"
HVPROBE_RETRIES_FILE=$retries "$@"
rc=$?
secs=$(( $(date +%s) - start ))
n=$(wc -l < "$retries")
rm -f "$retries"
result=ok
[ "$rc" = 0 ] || result="failed (exit $rc)"
row "$name" "$secs" "$n" "$result"
echo "stage $name: $result after ${secs}s, $n retries"
exit "$rc"
