#!/usr/bin/env bash
# Development run: installs what is missing, builds, creates the SoftHSM
# development token under var/ and runs hsmjwtd in the foreground on
# http://127.0.0.1:8080 (Ctrl-C stops it).  HSMJWT_<KEY> variables you export
# yourself (HSMJWT_ALGORITHMS="ES256 RS256", ...) apply to the daemon and to
# the printed hsmjwtctl command alike.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

"$root/tools/setup-debian.sh" runtime
# The unit tests need cmocka, which a runtime machine does not have.
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHSMJWT_TESTS=OFF
cmake --build "$root/build" --target hsmjwtd hsmjwtctl -j2

conf_line=$("$root/hsm/softhsm-setup.sh" "$root/var" hsmjwt-dev)
SOFTHSM2_CONF=${conf_line#SOFTHSM2_CONF=}
export SOFTHSM2_CONF
HSMJWT_LISTEN=127.0.0.1:8080
HSMJWT_ISSUER=${HSMJWT_ISSUER:-http://127.0.0.1:8080}
HSMJWT_STATE_DIR=$root/var
HSMJWT_PIN_FILE=$root/var/pin
HSMJWT_TOKEN=hsmjwt-dev
export HSMJWT_LISTEN HSMJWT_ISSUER HSMJWT_STATE_DIR HSMJWT_PIN_FILE HSMJWT_TOKEN

cat <<EOF

hsmjwtd starts on http://127.0.0.1:8080 (token 'hsmjwt-dev' in $root/var).
Mint an admin token (in another terminal, once the daemon says "listening"):

  SOFTHSM2_CONF=$SOFTHSM2_CONF HSMJWT_STATE_DIR=$HSMJWT_STATE_DIR HSMJWT_PIN_FILE=$HSMJWT_PIN_FILE HSMJWT_TOKEN=$HSMJWT_TOKEN HSMJWT_ISSUER=$HSMJWT_ISSUER $root/build/hsmjwtctl mint --roles admin --ttl 3600

then, for example:

  curl -s http://127.0.0.1:8080/.well-known/jwks.json
  curl -s -H "Authorization: Bearer \$ADMIN" -H 'Content-Type: application/json' \\
       -d '{"subject": "alice"}' http://127.0.0.1:8080/token

EOF
exec "$root/build/hsmjwtd"
