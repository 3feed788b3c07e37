#!/usr/bin/env bash
# Provisions a self-contained SoftHSMv2 "HA pair" and a ready Sealkeeper config in one directory.
#
#   scripts/setup-softhsm.sh [--dir DIR] [--port PORT] [--no-install]
#
# Idempotent: an existing token pair, PINs and certificate in DIR are kept. It creates
#   DIR/softhsm2.conf          a private SoftHSM config (export SOFTHSM2_CONF=DIR/softhsm2.conf)
#   DIR/tokens/                two tokens, sealkeeper-a and sealkeeper-b, holding the same AES-256 key
#                              "sealkeeper-root" (id 01), sensitive and non-extractable; the key is
#                              generated once, imported into both (as a cloned HA pair holds it) and
#                              the temporary copy is shredded
#   DIR/hsm-a.pin, hsm-b.pin   user PINs (mode 0600); DIR/so.pin the SO PIN
#   DIR/tls/server.{crt,key}   a self-signed P-256 certificate for localhost / 127.0.0.1
#   DIR/sealkeeper.toml        a config using all of the above, storage in DIR/data
set -euo pipefail

DIR=./demo
PORT=8200
INSTALL=1
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) DIR=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "setup-softhsm.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

MODULE=${SEALKEEPER_PKCS11_MODULE:-/usr/lib/softhsm/libsofthsm2.so}

if [ "$INSTALL" = 1 ] && { ! command -v softhsm2-util >/dev/null || ! command -v pkcs11-tool >/dev/null || ! command -v openssl >/dev/null; }; then
  echo "installing softhsm2, opensc and openssl" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-remove softhsm2 opensc openssl >&2
fi
for tool in softhsm2-util pkcs11-tool openssl; do
  command -v "$tool" >/dev/null || { echo "setup-softhsm.sh: $tool is missing (apt-get install softhsm2 opensc openssl)" >&2; exit 1; }
done

umask 077
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
mkdir -p "$DIR/tokens" "$DIR/tls" "$DIR/data"
chmod 700 "$DIR" "$DIR/tokens" "$DIR/data"

cat > "$DIR/softhsm2.conf" <<CONF
directories.tokendir = $DIR/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
export SOFTHSM2_CONF="$DIR/softhsm2.conf"

newpin() { [ -s "$1" ] || { od -An -N8 -tu8 /dev/urandom | tr -d ' \n' | cut -c1-12 > "$1"; }; chmod 600 "$1"; }
newpin "$DIR/hsm-a.pin"
newpin "$DIR/hsm-b.pin"
newpin "$DIR/so.pin"

token_exists() { softhsm2-util --show-slots 2>/dev/null | grep -q "Label: *$1 *$"; }

if ! token_exists sealkeeper-a || ! token_exists sealkeeper-b; then
  rm -rf "${DIR:?}/tokens/"*
  KEYFILE=$(mktemp "$DIR/.root-key.XXXXXX")
  trap 'shred -u "$KEYFILE" 2>/dev/null || rm -f "$KEYFILE"' EXIT
  head -c 32 /dev/urandom > "$KEYFILE"
  for member in a b; do
    softhsm2-util --init-token --free --label "sealkeeper-$member" \
      --so-pin "$(cat "$DIR/so.pin")" --pin "$(cat "$DIR/hsm-$member.pin")" >/dev/null
    pkcs11-tool --module "$MODULE" --token-label "sealkeeper-$member" --login --pin "$(cat "$DIR/hsm-$member.pin")" \
      --write-object "$KEYFILE" --type secrkey --key-type AES:32 --label sealkeeper-root --id 01 \
      --sensitive --usage-decrypt >/dev/null 2>&1
  done
  echo "provisioned SoftHSM tokens sealkeeper-a and sealkeeper-b with one AES-256 key (sealkeeper-root, id 01)" >&2
fi

if [ ! -s "$DIR/tls/server.crt" ] || [ ! -s "$DIR/tls/server.key" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
    -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$DIR/tls/server.key" -out "$DIR/tls/server.crt" >/dev/null 2>&1
  chmod 600 "$DIR/tls/server.key"
  chmod 644 "$DIR/tls/server.crt"
fi

cat > "$DIR/sealkeeper.toml" <<CONF
# Written by scripts/setup-softhsm.sh. Run with SOFTHSM2_CONF=$DIR/softhsm2.conf in the environment.
[storage]
path = "$DIR/data"

[listener]
address = "127.0.0.1:$PORT"
tls_cert_file = "$DIR/tls/server.crt"
tls_key_file = "$DIR/tls/server.key"

[admin]
socket = "$DIR/admin.sock"
allowed_uids = [$(id -u)]

[audit]
path = "$DIR/audit.log"

[unseal]
retry_initial = "1s"
retry_max = "60s"
probe_interval = "30s"

[[seal]]
type = "pkcs11"
name = "hsm-pair"
key_label = "sealkeeper-root"
key_id = "01"
mechanism = "CKM_AES_GCM"

  [[seal.hsm]]
  name = "hsm-a"
  lib = "$MODULE"
  token_label = "sealkeeper-a"
  pin_file = "$DIR/hsm-a.pin"

  [[seal.hsm]]
  name = "hsm-b"
  lib = "$MODULE"
  token_label = "sealkeeper-b"
  pin_file = "$DIR/hsm-b.pin"
CONF
chmod 600 "$DIR/sealkeeper.toml"
echo "$DIR"
