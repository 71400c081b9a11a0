#!/bin/sh
# Fuzz every fuzz target of the decoders of outside input, one at a time,
# for FUZZTIME each (go test -fuzz takes one target per run). A crash is
# written to the package's testdata/fuzz/<target>/ and fails the run.
#
# Go 1.26's fuzz coordinator can report "context deadline exceeded" at the
# -fuzztime boundary when a starved worker has not stopped yet
# (go.dev/issue/75804, fixed in Go 1.27): no input failed and none was
# written. Such a run is tried once more, then once with -fuzztime as a count
# of inputs (FUZZCOUNT, 500x), which sets no deadline; any run that wrote a
# failing input, or failed in any other way, fails this script.
set -eu
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-10s}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

for pkg in ./internal/events ./internal/policy ./internal/rollback; do
	targets=$($GO test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true)
	if [ -z "$targets" ]; then
		echo "no fuzz targets in $pkg" >&2
		exit 1
	fi
	for target in $targets; do
		ft=$FUZZTIME
		for attempt in 1 2 3; do
			echo "== $pkg $target ($ft)"
			if $GO test -run='^$' -fuzz="^$target\$" -fuzztime="$ft" "$pkg" >"$log" 2>&1; then
				cat "$log"
				break
			fi
			cat "$log"
			if [ "$attempt" -lt 3 ] && grep -q 'context deadline exceeded' "$log" &&
				! grep -q 'Failing input written' "$log"; then
				# A count has no deadline to race: the last try runs that
				# many inputs instead (a starved machine hit the race twice).
				[ "$attempt" = 2 ] && ft=${FUZZCOUNT:-500x}
				echo "fuzz: $target stopped on Go's fuzztime race (go.dev/issue/75804), no failing input; again ($ft)" >&2
				continue
			fi
			exit 1
		done
	done
done
