#!/usr/bin/env bash
# Installs what hsmjwt needs on Debian 12, and nothing when it is all there.
#   tools/setup-debian.sh [runtime|test]
#     runtime  build the daemon and run it on a SoftHSM token (the default)
#     test     also the test suite: cmocka, libp11, PyJWT, jwcrypto, node +
#              npm, nginx (with auth_request, for POST /authorize behind a
#              real proxy), wrk (the HTTP bench, bench/run.sh, and its smoke
#              test), and npm's jose in tests/integration/node_modules and
#              bench/peer/node_modules (npm ci), clang and libclang-rt-14-dev
#              (libFuzzer: the fuzz targets of tests/fuzz/), e2fsprogs,
#              mount and util-linux (integration.disk_faults' ext4 loop
#              device, integration.secrets' setpriv)
# apt runs only when a package is missing (then as root: apt-get update once,
# then one install); a machine that has everything needs neither root nor the
# network, except `npm ci' the first time.  Safe to run again and again.
set -eu

flavour=${1:-runtime}
case "$flavour" in
runtime | test) ;;
*)
	echo "usage: tools/setup-debian.sh [runtime|test]" >&2
	exit 2
	;;
esac
root=$(cd "$(dirname "$0")/.." && pwd)

# Debian 12 (bookworm) package names.
runtime_packages="build-essential cmake pkg-config libp11-kit-dev libssl-dev libevent-dev
libjansson-dev libsystemd-dev zlib1g-dev softhsm2 curl"
# systemd, man-db, groff-base, libseccomp2: integration.install checks the
# installed units, man pages and sandbox (a container may lack them).
# clang and libclang-rt-14-dev (libFuzzer, the sanitizer runtimes): the fuzz
# step of tools/test-all.sh (tests/fuzz/).
test_packages="libcmocka-dev libp11-dev python3 python3-jwt python3-jwcrypto python3-prometheus-client nodejs npm nginx
systemd man-db groff-base libseccomp2 wrk clang libclang-rt-14-dev e2fsprogs mount util-linux"

packages=$runtime_packages
[ "$flavour" = test ] && packages="$packages $test_packages"

installed() {
	case "$1" in
	nodejs | npm)
		# node and npm may come from elsewhere than Debian (NodeSource's
		# nodejs ships its own npm and conflicts with Debian's npm package):
		# a working command is what the tests need.
		command -v "$([ "$1" = nodejs ] && echo node || echo npm)" >/dev/null 2>&1
		;;
	*)
		[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null)" = "ii " ]
		;;
	esac
}

missing=""
for p in $packages; do
	installed "$p" || missing="$missing $p"
done

if [ -n "$missing" ]; then
	echo "setup-debian: installing:$missing"
	if [ "$(id -u)" -ne 0 ]; then
		echo "setup-debian: ERROR: packages missing:$missing — run this script as root (or install them)" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	if ! apt-get update -q; then
		echo "setup-debian: ERROR: apt-get update failed" >&2
		exit 1
	fi
	# shellcheck disable=SC2086  # one word per package
	if ! apt-get install -y -q --no-install-recommends $missing; then
		# Find the culprit(s) one by one, so that the message names them.
		failed=""
		for p in $missing; do
			apt-get install -y -q --no-install-recommends "$p" >/dev/null 2>&1 || failed="$failed $p"
		done
		echo "setup-debian: ERROR: cannot install:${failed:-$missing}" >&2
		exit 1
	fi
	for p in $missing; do
		installed "$p" || {
			echo "setup-debian: ERROR: $p is still missing after apt-get install" >&2
			exit 1
		}
	done
	# The tests run their own nginx in the foreground; the service Debian's
	# package enables would only hold port 80 on a machine that did not
	# have nginx before.
	case " $missing " in
	*" nginx "*)
		if [ -d /run/systemd/system ]; then
			systemctl disable --now nginx >/dev/null 2>&1 || true
			echo "setup-debian: nginx installed for the tests: its system service is disabled"
		fi
		;;
	esac
else
	echo "setup-debian: every $flavour package is installed"
fi

if [ "$flavour" = test ]; then
	# The integration tests' verifiers and the bench's Node peer, each with
	# its own lock file.
	for dir in tests/integration bench/peer; do
		it="$root/$dir"
		# npm ci again when the lock file changed since the last install.
		if [ ! -f "$it/node_modules/.package-lock.json" ] ||
			[ "$it/package-lock.json" -nt "$it/node_modules/.package-lock.json" ] ||
			[ ! -d "$it/node_modules/jose" ]; then
			echo "setup-debian: npm ci in $dir"
			if ! (cd "$it" && npm ci --no-audit --no-fund); then
				echo "setup-debian: ERROR: npm ci failed in $dir (package: jose)" >&2
				exit 1
			fi
		fi
	done
fi
