#!/bin/sh
# smoke.sh FUZZER SCRATCH CORPUS RUNS MAX_LEN — one fuzz.<name> ctest test:
# every seed of CORPUS, then new inputs up to RUNS executions in all, with
# a fixed seed so that a run is repeatable.  New inputs land in SCRATCH
# (emptied first), never in the committed CORPUS.  Exit status: 0, or
# non-zero for a crash, a sanitizer report, a leak, an invariant broken
# (abort), an input over the RSS limit or one running for minutes.
set -eu
[ $# -eq 5 ] || { echo "usage: smoke.sh FUZZER SCRATCH CORPUS RUNS MAX_LEN" >&2; exit 2; }
fuzzer=$1 scratch=$2 corpus=$3 runs=$4 max_len=$5
[ -d "$corpus" ] || { echo "smoke.sh: no corpus $corpus" >&2; exit 2; }
rm -rf "$scratch"
mkdir -p "$scratch"
cd "$scratch"
# -error_exitcode=1: libFuzzer's default (77) is ctest's usual skip code.
exec "$fuzzer" -runs="$runs" -max_len="$max_len" -rss_limit_mb=2048 -malloc_limit_mb=2048 \
	-timeout=300 -seed=1 -error_exitcode=1 -timeout_exitcode=1 -print_final_stats=1 \
	-artifact_prefix="$scratch/" "$scratch" "$corpus"
