#!/usr/bin/env bash
# Installs Sealkeeper on an existing Debian host, idempotently:
#   the binary            /usr/local/bin/sealkeeper
#   the unit              /etc/systemd/system/sealkeeper.service
#   sysusers, tmpfiles    /usr/lib/sysusers.d/sealkeeper.conf, /usr/lib/tmpfiles.d/sealkeeper.conf
#   a config skeleton     /etc/sealkeeper/sealkeeper.toml (only when there is none)
#   docs and profiles     /usr/share/doc/sealkeeper/
#
#   scripts/install.sh [--binary PATH] [--root DIR]
#   scripts/install.sh --uninstall [--root DIR]
#
# --binary   the sealkeeper binary to install (default: target/release/sealkeeper, built if missing)
# --root     install below DIR instead of / (staging, image builds, tests); systemd is not touched
# --uninstall removes what was installed (listed in /usr/share/sealkeeper/installed-files), keeps a
#            config that was changed, and never removes the state directory /var/lib/sealkeeper.
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=/
BINARY=
UNINSTALL=0
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=$2; shift 2 ;;
    --binary) BINARY=$2; shift 2 ;;
    --uninstall) UNINSTALL=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
ROOT=${ROOT%/}
MANIFEST="$ROOT/usr/share/sealkeeper/installed-files"
live() { [ -z "$ROOT" ] && [ -d /run/systemd/system ]; }

if [ "$UNINSTALL" = 1 ]; then
  if [ ! -f "$MANIFEST" ]; then
    echo "install.sh: nothing to uninstall ($MANIFEST not found)" >&2
    exit 0
  fi
  live && systemctl disable --now sealkeeper.service 2>/dev/null || true
  while read -r sum path; do
    f="$ROOT$path"
    [ -e "$f" ] || continue
    if [ "$sum" != "-" ] && [ "$(sha256sum "$f" | cut -d' ' -f1)" != "$sum" ]; then
      echo "keeping $path: it was changed after installation"
      continue
    fi
    rm -f "$f"
    echo "removed $path"
  done < "$MANIFEST"
  rm -f "$MANIFEST"
  rmdir "$ROOT/usr/share/sealkeeper" "$ROOT/usr/share/doc/sealkeeper/hsm-profiles" "$ROOT/usr/share/doc/sealkeeper" 2>/dev/null || true
  live && systemctl daemon-reload || true
  echo "uninstalled; the state directory /var/lib/sealkeeper was left in place"
  exit 0
fi

if [ -z "$BINARY" ]; then
  BINARY=target/release/sealkeeper
  [ -x "$BINARY" ] || cargo build --release --quiet
fi
[ -x "$BINARY" ] || { echo "install.sh: $BINARY is not an executable" >&2; exit 1; }

TMP_MANIFEST=$(mktemp)
trap 'rm -f "$TMP_MANIFEST"' EXIT
# put SRC DEST MODE [keep]: install a file; with "keep", an existing DEST is left alone.
put() {
  local src=$1 dest=$2 mode=$3 keep=${4:-}
  local target="$ROOT$dest"
  mkdir -p "$(dirname "$target")"
  if [ "$keep" = keep ] && [ -e "$target" ]; then
    # Keep the recorded checksum if we installed it, so an unchanged skeleton is still removable.
    grep -F " $dest" "$MANIFEST" 2>/dev/null >> "$TMP_MANIFEST" || true
    echo "kept $dest (already present)"
    return
  fi
  install -m "$mode" "$src" "$target.new"
  mv -f "$target.new" "$target"
  echo "$(sha256sum "$target" | cut -d' ' -f1) $dest" >> "$TMP_MANIFEST"
  echo "installed $dest"
}

put "$BINARY" /usr/local/bin/sealkeeper 0755
put systemd/sealkeeper.service /etc/systemd/system/sealkeeper.service 0644
put systemd/sealkeeper.sysusers /usr/lib/sysusers.d/sealkeeper.conf 0644
put systemd/sealkeeper.tmpfiles /usr/lib/tmpfiles.d/sealkeeper.conf 0644
put README.md /usr/share/doc/sealkeeper/README.md 0644
for p in hsm-profiles/*; do
  put "$p" "/usr/share/doc/sealkeeper/$p" 0644
done

SKELETON=$(mktemp)
cat > "$SKELETON" <<'CONF'
# /etc/sealkeeper/sealkeeper.toml: see /usr/share/doc/sealkeeper/README.md for every key.
# Fill in the HSM members, put the PINs in /etc/sealkeeper/hsm-a.pin and hsm-b.pin (mode 0600;
# the unit passes them as credentials), then: systemctl enable --now sealkeeper
[storage]
path = "/var/lib/sealkeeper"

[listener]
address = "0.0.0.0:8200"
tls_cert_file = "/etc/sealkeeper/tls/server.crt"
tls_key_file = "/etc/sealkeeper/tls/server.key"

[admin]
socket = "/run/sealkeeper/admin.sock"
allowed_uids = [0]

[audit]
path = "/var/log/sealkeeper/audit.log"

[[seal]]
type = "pkcs11"
name = "hsm-pair"
key_label = "sealkeeper-root"
mechanism = "CKM_AES_GCM"

  [[seal.hsm]]
  name = "hsm-a"
  profile = "luna7"                 # see /usr/share/doc/sealkeeper/hsm-profiles/
  token_label = "CHANGE-ME-a"
  pin_credential = "hsm-a-pin"

  [[seal.hsm]]
  name = "hsm-b"
  profile = "luna7"
  token_label = "CHANGE-ME-b"
  pin_credential = "hsm-b-pin"
CONF
put "$SKELETON" /etc/sealkeeper/sealkeeper.toml 0640 keep
rm -f "$SKELETON"

mkdir -p "$(dirname "$MANIFEST")"
sort -u -k2 "$TMP_MANIFEST" > "$MANIFEST"

if live; then
  systemd-sysusers sealkeeper.conf 2>/dev/null || systemd-sysusers
  systemd-tmpfiles --create sealkeeper.conf 2>/dev/null || systemd-tmpfiles --create
  chgrp sealkeeper /etc/sealkeeper/sealkeeper.toml 2>/dev/null || true
  systemctl daemon-reload
  echo "installed; edit /etc/sealkeeper/sealkeeper.toml, then: systemctl enable --now sealkeeper"
else
  echo "installed below ${ROOT:-/}"
fi
