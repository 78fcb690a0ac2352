#!/usr/bin/env bash
# Builds registry_bench (Release) and runs it on a directory of the disk the
# repository is on, printing its figures (bench/README.md says what they
# mean).  Extra arguments go to registry_bench (e.g. --records 200000).
#   BUILD_DIR  the build directory (default: build-bench in the checkout)
#   BENCH_DIR  where to work (default: $TMPDIR or /tmp when it is on the same
#              filesystem as the checkout and not tmpfs, else BUILD_DIR)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build-bench}

echo "== building registry_bench (Release) in $build" >&2
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DHSMJWT_BENCH=ON >/dev/null
cmake --build "$build" --target registry_bench -j2 >/dev/null

# fsync on tmpfs costs nothing, and another filesystem than the checkout's is
# not the disk the daemon's state_dir would be on.
base=${BENCH_DIR:-}
if [ -z "$base" ]; then
	tmp=${TMPDIR:-/tmp}
	if [ "$(stat -f -c %T "$tmp")" != tmpfs ] && [ "$(stat -f -c %i "$tmp")" = "$(stat -f -c %i "$root")" ]; then
		base=$tmp
	else
		base=$build
	fi
fi
if [ "$(stat -f -c %T "$base")" = tmpfs ]; then
	echo "run-registry: $base is tmpfs, where fsync is free; set BENCH_DIR to a directory on disk" >&2
	exit 1
fi

# registry_bench removes its own directory; the timeout keeps the promise of
# a run under 3 minutes even if the registry hangs.
exec timeout --signal=TERM --kill-after=10 180 "$build/bench/registry_bench" "$@" "$base"
