#!/usr/bin/env bash
# tests/fuzz.sh [FUZZTIME] — run every fuzzer in the tree for FUZZTIME each
# (go test -fuzztime syntax; default 200000x, about 10 s each here), one at
# a time as go test requires. A count, not a duration: a duration races
# Go's fuzz coordinator at its deadline and fails a target with a bare
# "context deadline exceeded" under load (golang/go#75804, fixed in Go
# 1.27; seen here on go1.26.8). A crasher is kept under its package's testdata/fuzz, which
# then replays in plain go test; the first failure fails the script.
# Minimizing each new corpus entry is bounded too: by default Go spends up
# to 60 s on each, and a young fuzzer finds dozens (FuzzKretprobeReturns
# took 290 s for 200000 runs, 30 s with the bound).
set -euo pipefail
cd "$(dirname "$0")/.."
t=${1:-200000x}
n=0
while IFS=: read -r file name; do
	pkg=./$(dirname "$file")
	echo "fuzz: $pkg $name for $t"
	go test -run '^$' -fuzz "^${name}\$" -fuzztime "$t" -fuzzminimizetime 1000x "$pkg"
	n=$((n + 1))
done < <(grep -rHo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*' --exclude-dir=.cache --exclude-dir=out . |
	sed 's#^\./##; s#:func #:#' | sort)
[ "$n" -gt 0 ] || { echo "fuzz: no fuzzers found" >&2; exit 1; }
echo "fuzz: $n fuzzers, $t each, no crash"
