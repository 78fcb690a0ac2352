#!/usr/bin/env bash
# The soak of issue 8 in one command: builds a Release tree, then runs
# bench/soak.py on it — hsmjwtd under a mixed load for 10 minutes, a line per
# 30 s segment (requests/s, p50/p99, errors, RSS, registry size), exit 1 on
# any error.  Arguments go to soak.py (--minutes, --segment, --connections,
# --workers).  BUILD_DIR: the build directory (default: build-bench).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build-bench}

echo "== building hsmjwtd hsmjwtctl (Release) in $build" >&2
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DHSMJWT_BENCH=ON >/dev/null
cmake --build "$build" --target hsmjwtd hsmjwtctl -j2 >/dev/null

exec /usr/bin/python3 "$root/bench/soak.py" --build-dir "$build" "$@"
