#!/usr/bin/env bash
# Boots the test variant of the appliance image in QEMU and checks auto-unseal across a reboot:
# the first boot must have a read-only root file system and runs `operator init` inside (the test
# variant's first-boot unit, output on the serial console), /v1/sys/health must answer 200 through
# the forwarded port; then the VM is reset (a reboot without any operator action) and
# /v1/sys/health must answer 200 again.
#
#   scripts/image-test.sh [--image DIR] [--rootfs DIR] [--port PORT]
#
# --image DIR   where image/build.sh --test-variant put sealkeeper.qcow2 (built when missing)
# --rootfs DIR  passed to image/build.sh (reuse a debootstrapped tree)
# Uses KVM when /dev/kvm works, TCG otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=image/out-test
ROOTFS=
PORT=18600
while [ $# -gt 0 ]; do
  case "$1" in
    --image) IMAGE=$2; shift 2 ;;
    --rootfs) ROOTFS=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "image-test.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
# Only what is missing, and never at the cost of what is installed: --no-remove makes apt stop
# rather than remove or replace a qemu package already on the machine. A qemu-utils from
# backports (newer than the release's) gets the qemu-system-x86 of the same version, from the
# same backports suite (enabled for this install only).
if ! command -v qemu-system-x86_64 >/dev/null; then
  QEMU_VERSION=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
  if [[ "$QEMU_VERSION" == *bpo* ]]; then
    SUITE="$(. /etc/os-release && echo "$VERSION_CODENAME")-backports"
    BPO_LIST=/etc/apt/sources.list.d/sealkeeper-image-test-backports.list
    echo "deb http://deb.debian.org/debian $SUITE main" > "$BPO_LIST"
    apt-get update -qq
    apt-get install -y -qq --no-remove -t "$SUITE" "qemu-system-x86=$QEMU_VERSION" || {
      rm -f "$BPO_LIST"
      echo "image-test.sh: cannot install qemu-system-x86 $QEMU_VERSION (matching the installed" \
        "qemu-utils) from $SUITE" >&2
      exit 1
    }
    rm -f "$BPO_LIST"
    apt-get update -qq
  else
    apt-get update -qq
    apt-get install -y -qq --no-remove qemu-system-x86 || {
      echo "image-test.sh: installing qemu-system-x86 would remove or replace installed packages;" \
        "install a qemu-system-x86_64 that matches them, then run this again" >&2
      exit 1
    }
  fi
fi
START=$(date +%s)
if [ ! -f "$IMAGE/sealkeeper.qcow2" ]; then
  image/build.sh --test-variant --out "$IMAGE" ${ROOTFS:+--rootfs "$ROOTFS"}
fi
BUILT=$(date +%s)

WORK=$(mktemp -d)
trap '[ -f "$WORK/qemu.pid" ] && kill "$(cat "$WORK/qemu.pid")" 2>/dev/null; rm -rf "$WORK"' EXIT
cp "$IMAGE/sealkeeper.qcow2" "$WORK/vm.qcow2"
CERT="$IMAGE/server.crt"

ACCEL="-accel tcg -cpu max"
if [ -w /dev/kvm ] && qemu-system-x86_64 -accel kvm -cpu host -machine none -display none -S -daemonize -pidfile "$WORK/probe.pid" 2>/dev/null; then
  kill "$(cat "$WORK/probe.pid")" 2>/dev/null || true
  ACCEL="-accel kvm -cpu host"
fi
# shellcheck disable=SC2086
qemu-system-x86_64 $ACCEL -m 1024 -smp 2 \
  -drive file="$WORK/vm.qcow2",if=virtio,format=qcow2 \
  -netdev user,id=n0,hostfwd=tcp:127.0.0.1:$PORT-:8200 -device virtio-net-pci,netdev=n0 \
  -display none -serial file:"$WORK/console.log" \
  -monitor unix:"$WORK/monitor.sock",server,nowait -daemonize -pidfile "$WORK/qemu.pid"

health() { curl -s -o /dev/null -w '%{http_code}' --max-time 3 --cacert "$CERT" "https://localhost:$PORT/v1/sys/health" || true; }
wait_health() { # code seconds
  local end=$(( $(date +%s) + $2 ))
  while [ "$(date +%s)" -lt "$end" ]; do [ "$(health)" = "$1" ] && return 0; sleep 1; done
  echo "image-test: health never reached $1; console:" >&2; tail -30 "$WORK/console.log" >&2; return 1
}
monitor() { python3 -c 'import socket,sys,time; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); time.sleep(0.3); s.recv(65536); s.sendall((sys.argv[2]+"\n").encode()); time.sleep(0.5)' "$WORK/monitor.sock" "$1"; }

# The console line comes from the first-boot unit after init returns, so it can reach the
# console after health is already 200: wait for the line itself, not for the health answer.
wait_console() { # pattern seconds
  local end=$(( $(date +%s) + $2 ))
  while [ "$(date +%s)" -lt "$end" ]; do grep -q "$1" "$WORK/console.log" && return 0; sleep 1; done
  return 1
}

wait_health 200 300
BOOT1=$(date +%s)
wait_console "Recovery Key 1:" 60 || { echo "image-test: no operator init on first boot" >&2; tail -30 "$WORK/console.log" >&2; exit 1; }
wait_console "root-mount: " 60 || { echo "image-test: no root-mount line on the console" >&2; exit 1; }
grep -q "root-mount: ro," "$WORK/console.log" || { echo "image-test: the root file system is not read-only:" >&2; grep root-mount "$WORK/console.log" >&2; exit 1; }
echo "first boot: initialized inside the VM, /v1/sys/health 200 ($(( BOOT1 - BUILT ))s)"

monitor system_reset
# The reset takes the service away, then it must come back by itself.
end=$(( $(date +%s) + 60 ))
while [ "$(health)" = 200 ] && [ "$(date +%s)" -lt "$end" ]; do sleep 0.5; done
[ "$(health)" != 200 ] || { echo "image-test: the VM did not go down after the reset" >&2; exit 1; }
wait_health 200 300
BOOT2=$(date +%s)
boots=$(grep -c "Linux version" "$WORK/console.log" || true)
inits=$(grep -c "Recovery Key 1:" "$WORK/console.log" || true)
[ "$boots" -ge 2 ] || { echo "image-test: the VM did not reboot ($boots boots)" >&2; exit 1; }
[ "$inits" = 1 ] || { echo "image-test: init ran $inits times" >&2; exit 1; }
echo "after reboot: auto-unsealed without operator action, /v1/sys/health 200 ($(( BOOT2 - BOOT1 ))s)"
echo "image-test: ok (accelerator: ${ACCEL%% -cpu*}; build $(( BUILT - START ))s, total $(( BOOT2 - START ))s)"
