#!/usr/bin/env bash
# The HTTP bench of issue 7, in one command: builds a Release tree, then runs
# bench/bench.py on it (bench/README.md says what it does and what each line
# means).  About 6 minutes; `--smoke' takes under a minute and measures
# nothing worth keeping.  Extra arguments go to bench.py (--rounds, --duration,
# --connections, --wrk-threads, --workers...).
#   BUILD_DIR  the build directory (default: build-bench in the checkout)
#   BENCH_OUT  the Markdown report (default: bench/results-latest.md)
#   BENCH_DIR  where the token and the registries live (default: $TMPDIR or
#              /tmp unless it is tmpfs, else BUILD_DIR)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build-bench}

echo "== building hsmjwtd hsmjwtctl sign_bench registry_bench (Release) in $build" >&2
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DHSMJWT_BENCH=ON >/dev/null
cmake --build "$build" --target hsmjwtd hsmjwtctl sign_bench registry_bench -j2 >/dev/null

# 1,000 keep-alive connections, on wrk's side and on the daemon's.
hard=$(ulimit -Hn)
if [ "$hard" = unlimited ] || [ "$hard" -ge 8192 ]; then
	ulimit -n 8192
else
	ulimit -n "$hard"
fi

exec /usr/bin/python3 "$root/bench/bench.py" --build-dir "$build" "$@"
