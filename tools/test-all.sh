#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run):
#   1. install what is missing (tools/setup-debian.sh test, npm ci included)
#   2. build/       RelWithDebInfo, every test under ctest
#   3. build-asan/  AddressSanitizer + UndefinedBehaviorSanitizer, every test
#                   again, with any sanitizer report fatal
#   4. build-fuzz/  clang, libFuzzer + ASan + UBSan: each fuzz target over its
#                   seed corpus and a fixed count of new inputs (ctest -L fuzz)
# Stops at the first failing step and exits non-zero; the last line says
# what happened.  Works from a fresh clone: nothing outside the repository.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
total_passed=0
total_failed=0

fail() {
	echo "test-all: FAILED: $1"
	echo "test-all: $total_passed passed, $((total_failed > 0 ? total_failed : 1)) failed"
	exit 1
}

# "NN% tests passed, F tests failed out of T" → adds to the totals.
count() {
	line=$(grep -E 'tests failed out of [0-9]+' "$1" | tail -n 1)
	[ -n "$line" ] || return 0
	f=$(echo "$line" | sed -E 's/.* ([0-9]+) tests failed out of ([0-9]+).*/\1/')
	t=$(echo "$line" | sed -E 's/.* tests failed out of ([0-9]+).*/\1/')
	total_passed=$((total_passed + t - f))
	total_failed=$((total_failed + f))
}

# run_suite NAME BUILD_DIR CMAKE_ARGS...
run_suite() {
	name=$1
	dir=$2
	shift 2
	echo "== $name: configure and build ($dir)"
	cmake -S "$root" -B "$dir" -DHSMJWT_TESTS=ON "$@" || fail "$name: cmake configure"
	cmake --build "$dir" -j2 || fail "$name: build"
	echo "== $name: ctest"
	# TEST_REQUIRE_ALL: every tool was just installed, so a test that would
	# skip for a missing one fails instead of passing as skipped.
	if (cd "$dir" && TEST_REQUIRE_ALL=1 ctest --output-on-failure -j2) 2>&1 | tee "$dir/ctest.log"; then
		count "$dir/ctest.log"
		if grep -qE '^[[:space:]]*[0-9]+/[0-9]+ Test +#[0-9]+: .*\*\*\*Skipped' "$dir/ctest.log"; then
			fail "$name: a test was skipped"
		fi
	else
		count "$dir/ctest.log"
		fail "$name: ctest (see the output above)"
	fi
}

echo "== setup"
"$root/tools/setup-debian.sh" test || fail "setup (tools/setup-debian.sh test)"

run_suite release "$root/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHSMJWT_SANITIZE=OFF

# Sanitizer reports end the process with an error (halt_on_error) and leaks
# fail it at exit (detect_leaks).  fast_unwind_on_malloc=0 gives complete
# allocation stacks through the uninstrumented libcrypto and SoftHSM; the
# suppressions are only for leaks inside SoftHSM (see the file's comments).
ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:abort_on_error=0:fast_unwind_on_malloc=0"
UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
LSAN_OPTIONS="suppressions=$root/tests/lsan.supp:print_suppressions=0"
export ASAN_OPTIONS UBSAN_OPTIONS LSAN_OPTIONS
# Debug: the -O0 build next to the RelWithDebInfo one, and exact stacks.
run_suite asan "$root/build-asan" -DCMAKE_BUILD_TYPE=Debug -DHSMJWT_SANITIZE=ON

# The libFuzzer targets (tests/fuzz/): a clang build with ASan+UBSan and
# coverage, only the fuzz targets built, each run over its seed corpus and
# a fixed count of new inputs (ctest -L fuzz).  Not with -j2: each fuzzer
# takes a core, and the tests are RUN_SERIAL.
fuzz_dir="$root/build-fuzz"
echo "== fuzz: configure and build ($fuzz_dir)"
CC=clang cmake -S "$root" -B "$fuzz_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHSMJWT_FUZZ=ON \
	-DHSMJWT_TESTS=OFF -DHSMJWT_BENCH=OFF || fail "fuzz: cmake configure"
cmake --build "$fuzz_dir" -j2 --target fuzz || fail "fuzz: build"
echo "== fuzz: ctest"
if (cd "$fuzz_dir" && TEST_REQUIRE_ALL=1 ctest --output-on-failure -L fuzz) 2>&1 | tee "$fuzz_dir/ctest.log"; then
	count "$fuzz_dir/ctest.log"
	if grep -qE '^[[:space:]]*[0-9]+/[0-9]+ Test +#[0-9]+: .*\*\*\*Skipped' "$fuzz_dir/ctest.log"; then
		fail "fuzz: a test was skipped"
	fi
	if ! grep -qE 'tests failed out of [1-9]' "$fuzz_dir/ctest.log"; then
		fail "fuzz: no fuzz test ran"
	fi
else
	count "$fuzz_dir/ctest.log"
	fail "fuzz: ctest (see the output above)"
fi

echo "test-all: every suite passed (RelWithDebInfo, ASan/UBSan and the fuzz smoke runs)"
echo "test-all: $total_passed passed, $total_failed failed"
