#!/usr/bin/env bash
# Builds a bootable x86_64 disk image (raw and qcow2) of a minimal Debian 12 appliance running
# Sealkeeper, from Debian's packages (debootstrap), with extlinux as the boot loader.
#
#   image/build.sh [--out DIR] [--test-variant] [--binary PATH] [--rootfs DIR]
#
# --out DIR        where sealkeeper.raw, sealkeeper.qcow2 and manifest.txt go (default image/out);
#                  the test variant also puts its self-signed server.crt there
# --test-variant   adds softhsm2 with a provisioned token pair and config, and a first-boot
#                  `operator init` (output on the serial console), for scripts/image-test.sh
# --binary PATH    the release binary (default target/release/sealkeeper, built if missing)
# --rootfs DIR     reuse (or keep) the debootstrapped tree in DIR
#
# The appliance: systemd, the sealkeeper unit enabled, a config skeleton, DHCP on the first
# ethernet interface, nothing listening but Sealkeeper (no remote shell), a read-only root file
# system, state under /var/lib/sealkeeper and logs under /var/log/sealkeeper on a separate
# writable /var partition. Needs root, debootstrap, e2fsprogs,
# extlinux, qemu-utils.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=image/out
TEST=0
BINARY=
ROOTFS=
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --test-variant) TEST=1; shift ;;
    --binary) BINARY=$2; shift 2 ;;
    --rootfs) ROOTFS=$2; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v extlinux >/dev/null || need+=(extlinux)
[ -e /usr/lib/EXTLINUX/mbr.bin ] || need+=(syslinux-common)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v sfdisk >/dev/null || need+=(fdisk)
if [ ${#need[@]} -gt 0 ]; then
  # --no-remove: apt stops rather than remove or replace what is installed (e.g. a newer qemu).
  apt-get update -qq && apt-get install -y -qq --no-remove "${need[@]}"
fi
if [ -z "$BINARY" ]; then
  BINARY=target/release/sealkeeper
  [ -x "$BINARY" ] || cargo build --release --quiet
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
MNT="$WORK/mnt"
VARTREE="$WORK/var"
cleanup() {
  mountpoint -q "$MNT" 2>/dev/null && umount "$MNT"
  # Put a reused tree's /var back if the image step failed half-way.
  if [ -d "$VARTREE" ] && [ -n "${ROOTFS:-}" ]; then rmdir "$ROOTFS/var" 2>/dev/null; mv "$VARTREE" "$ROOTFS/var"; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

PACKAGES=systemd-sysv,linux-image-amd64,udev,kmod,e2fsprogs,iproute2,ca-certificates,curl
[ "$TEST" = 1 ] && PACKAGES="$PACKAGES,softhsm2,opensc,openssl"
if [ -z "$ROOTFS" ]; then ROOTFS="$WORK/rootfs"; fi
if [ ! -x "$ROOTFS/bin/bash" ]; then
  echo "== debootstrap (Debian 12, minbase)"
  debootstrap --variant=minbase --include="$PACKAGES" bookworm "$ROOTFS" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
fi

echo "== configuring the appliance"
echo sealkeeper > "$ROOTFS/etc/hostname"
# The root file system is mounted read-only; /var (state, logs, the test variant's tokens) is a
# separate writable partition, /tmp is a tmpfs.
cat > "$ROOTFS/etc/fstab" <<'FSTAB'
LABEL=sealkeeper / ext4 ro,noatime 0 1
LABEL=sk-var /var ext4 rw,noatime,nodev,nosuid,noexec 0 2
tmpfs /tmp tmpfs rw,nodev,nosuid,noexec,mode=1777,size=64m 0 0
FSTAB
# With / read-only, systemd creates a transient machine ID at boot from an empty file.
: > "$ROOTFS/etc/machine-id"
mkdir -p "$ROOTFS/etc/systemd/network"
cat > "$ROOTFS/etc/systemd/network/10-dhcp.network" <<'NET'
[Match]
Name=en* eth*

[Network]
DHCP=yes
NET
ln -sf /lib/systemd/system/systemd-networkd.service "$ROOTFS/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
# No remote shell; root has no password (console login disabled).
chroot "$ROOTFS" passwd -l root >/dev/null
scripts/install.sh --root "$ROOTFS" --binary "$BINARY" >/dev/null
# The image carries the man pages and completions install.sh generates from the binary.
for f in usr/share/man/man1/sealkeeper.1.gz usr/share/man/man1/sealkeeper-operator-preflight.1.gz \
         usr/share/bash-completion/completions/sealkeeper; do
  [ -s "$ROOTFS/$f" ] || { echo "image/build.sh: /$f is missing from the image" >&2; exit 1; }
done
chroot "$ROOTFS" systemd-sysusers >/dev/null
chroot "$ROOTFS" systemd-tmpfiles --create /usr/lib/tmpfiles.d/sealkeeper.conf >/dev/null 2>&1 || true
ln -sf /etc/systemd/system/sealkeeper.service "$ROOTFS/etc/systemd/system/multi-user.target.wants/sealkeeper.service"

if [ "$TEST" = 1 ]; then
  echo "== test variant: a SoftHSM token pair and a first-boot init"
  cp scripts/setup-softhsm.sh "$ROOTFS/tmp/setup-softhsm.sh"
  chroot "$ROOTFS" bash /tmp/setup-softhsm.sh --dir /var/lib/sealkeeper-hsm --port 8200 --no-install >/dev/null
  rm -f "$ROOTFS/tmp/setup-softhsm.sh"
  H=/var/lib/sealkeeper-hsm
  # The appliance layout: state and logs where the unit expects them, PINs as credentials.
  sed -e "s|^path = \"$H/data\"|path = \"/var/lib/sealkeeper\"|" \
      -e "s|^path = \"$H/audit.log\"|path = \"/var/log/sealkeeper/audit.log\"|" \
      -e "s|^address = \"127.0.0.1:8200\"|address = \"0.0.0.0:8200\"|" \
      -e "s|^socket = \"$H/admin.sock\"|socket = \"/run/sealkeeper/admin.sock\"|" \
      -e "s|^allowed_uids = .*|allowed_uids = [0]|" \
      -e "s|pin_file = \"$H/hsm-\(.\).pin\"|pin_credential = \"hsm-\1-pin\"|" \
      "$ROOTFS$H/sealkeeper.toml" > "$ROOTFS/etc/sealkeeper/sealkeeper.toml"
  cp "$ROOTFS$H/tls/server.crt" "$OUT/server.crt"
  install -m 0600 "$ROOTFS$H/hsm-a.pin" "$ROOTFS/etc/sealkeeper/hsm-a.pin"
  install -m 0600 "$ROOTFS$H/hsm-b.pin" "$ROOTFS/etc/sealkeeper/hsm-b.pin"
  chroot "$ROOTFS" chown -R sealkeeper:sealkeeper "$H" /etc/sealkeeper/sealkeeper.toml
  mkdir -p "$ROOTFS/etc/systemd/system/sealkeeper.service.d"
  cat > "$ROOTFS/etc/systemd/system/sealkeeper.service.d/softhsm.conf" <<CONF
[Service]
Environment=SOFTHSM2_CONF=$H/softhsm2.conf
ReadWritePaths=$H
CONF
  cat > "$ROOTFS/etc/systemd/system/sealkeeper-test-init.service" <<'UNIT'
[Unit]
Description=Test image: initialize Sealkeeper once (recovery key printed on the console)
After=sealkeeper.service
Requires=sealkeeper.service
# The serial getty hangs up ttyS0 when it starts (vhangup), which cuts off a writer that has it
# open: it starts only after the recovery key is on the console.
Before=serial-getty@ttyS0.service getty.target
ConditionPathExists=!/var/lib/sealkeeper/data/core/init

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "root-mount: $(findmnt -no OPTIONS /)" > /dev/ttyS0; for i in $(seq 1 100); do [ -S /run/sealkeeper/admin.sock ] && break; sleep 0.2; done; /usr/local/bin/sealkeeper operator --socket /run/sealkeeper/admin.sock init --recovery-shares 1 --recovery-threshold 1 > /dev/ttyS0 2>&1'

[Install]
WantedBy=multi-user.target
UNIT
  ln -sf /etc/systemd/system/sealkeeper-test-init.service "$ROOTFS/etc/systemd/system/multi-user.target.wants/sealkeeper-test-init.service"
fi

echo "== boot loader and disk image"
KVER=$(ls "$ROOTFS/boot" | sed -n 's/^vmlinuz-//p' | sort -V | tail -1)
mkdir -p "$ROOTFS/boot/extlinux"
cat > "$ROOTFS/boot/extlinux/extlinux.conf" <<CONF
DEFAULT sealkeeper
TIMEOUT 1
LABEL sealkeeper
  LINUX /boot/vmlinuz-$KVER
  INITRD /boot/initrd.img-$KVER
  APPEND root=LABEL=sealkeeper ro console=ttyS0,115200
CONF
# Manifest: package versions and the binary's SHA-256.
{
  echo "sealkeeper $(sha256sum "$BINARY" | cut -d' ' -f1)  /usr/local/bin/sealkeeper"
  echo "kernel $KVER"
  chroot "$ROOTFS" dpkg-query -W -f '${Package} ${Version}\n'
} > "$OUT/manifest.txt"
rm -f "$ROOTFS"/boot/*.dpkg-bak "$ROOTFS"/boot/*.new
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*

# Two partitions: the read-only root (everything but /var) and the writable /var.
RAW="$OUT/sealkeeper.raw"
mv "$ROOTFS/var" "$VARTREE"
mkdir -p "$ROOTFS/var"
restore_var() { rmdir "$ROOTFS/var" && mv "$VARTREE" "$ROOTFS/var"; }
ROOT_MB=$(( $(du -sm "$ROOTFS" | cut -f1) + 128 ))
VAR_MB=$(( $(du -sm "$VARTREE" | cut -f1) + 256 ))
rm -f "$RAW"
truncate -s "$(( 1 + ROOT_MB + VAR_MB ))M" "$RAW"
printf 'label: dos\nstart=1MiB, size=%dMiB, type=83, bootable\nstart=%dMiB, size=%dMiB, type=83\n' \
  "$ROOT_MB" "$(( 1 + ROOT_MB ))" "$VAR_MB" | sfdisk -q "$RAW"
mkfs.ext4 -q -L sealkeeper -d "$ROOTFS" -E offset=1048576 "$RAW" "${ROOT_MB}M"
mkfs.ext4 -q -L sk-var -d "$VARTREE" -E offset=$(( (1 + ROOT_MB) * 1048576 )) "$RAW" "${VAR_MB}M"
restore_var
mkdir -p "$MNT"
mount -o loop,offset=1048576 "$RAW" "$MNT"
extlinux --install "$MNT/boot/extlinux" >/dev/null 2>&1
umount "$MNT"
dd if=/usr/lib/EXTLINUX/mbr.bin of="$RAW" bs=440 count=1 conv=notrunc status=none
qemu-img convert -O qcow2 "$RAW" "$OUT/sealkeeper.qcow2"
echo "image: $RAW ($(du -h "$RAW" | cut -f1)), $OUT/sealkeeper.qcow2, $OUT/manifest.txt"
