#!/bin/sh
# Creates (or reuses) a SoftHSM2 development token under STATE_DIR:
#   STATE_DIR/softhsm2.conf   private SoftHSM config (never the system one)
#   STATE_DIR/tokens/         the token's files
#   STATE_DIR/pin             the user PIN, mode 0600
# and prints `SOFTHSM2_CONF=...` on stdout for the caller to export.
# Usage: hsm/softhsm-setup.sh STATE_DIR [LABEL]
# For production PKCS#11 modules (YubiHSM, Nitrokey, network HSMs, cloud KMS)
# and the PIN as a systemd credential, see hsm/README.md.
set -eu

state_dir=${1:?usage: softhsm-setup.sh STATE_DIR [LABEL]}
label=${2:-hsmjwt-dev}

command -v softhsm2-util >/dev/null 2>&1 || {
	echo "softhsm-setup: softhsm2-util not found (apt-get install softhsm2)" >&2
	exit 1
}

umask 077
mkdir -p "$state_dir/tokens"
state_dir=$(cd "$state_dir" && pwd)
conf="$state_dir/softhsm2.conf"
cat >"$conf" <<CONF
directories.tokendir = $state_dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
export SOFTHSM2_CONF="$conf"

if ! softhsm2-util --show-slots 2>/dev/null | grep -q "Label:[[:space:]]*$label[[:space:]]*\$"; then
	# Random PINs: the development token is still a token, and a PIN that is the
	# same everywhere teaches the wrong habit.
	pin=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
	so_pin=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
	# softhsm2-util takes PINs only as arguments or from a terminal, so they
	# are in its argv (visible to this machine's `ps') for the instant the
	# token is initialised.  Acceptable for a development token on the
	# developer's own machine; production tokens are initialised with the
	# vendor's tools, and hsmjwt itself never puts a PIN in argv.
	printf '%s\n' "$pin" >"$state_dir/pin"
	chmod 600 "$state_dir/pin"
	softhsm2-util --init-token --free --label "$label" --pin "$pin" --so-pin "$so_pin" >/dev/null
	unset pin so_pin
	echo "softhsm-setup: created token '$label' in $state_dir/tokens" >&2
fi
[ -s "$state_dir/pin" ] || { echo "softhsm-setup: token '$label' exists but $state_dir/pin is missing" >&2; exit 1; }
echo "SOFTHSM2_CONF=$conf"
