#!/usr/bin/env bash
# The quick start, end to end: provisions a SoftHSMv2 token pair, builds sealkeeper, starts it,
# initializes it (printing the recovery keys once), restarts it, and shows that it unsealed itself
# from the HSM with nobody typing a key. Then it keeps the daemon running until Ctrl-C.
#
#   scripts/demo.sh [--dir DIR] [--port PORT] [--exit]
#
#   --dir DIR    where tokens, PINs, TLS files, config and state live (default ./demo)
#   --port PORT  HTTPS port on 127.0.0.1 (default 8200)
#   --exit       stop the daemon after the demonstration instead of keeping it running
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=./demo
PORT=8200
EXIT=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) DIR=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --exit) EXIT=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

# Bold headings on a terminal only.
if [ -t 1 ]; then say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }; else say() { printf '\n== %s\n' "$*"; }; fi

say "provisioning SoftHSM tokens in $DIR"
DIR=$(scripts/setup-softhsm.sh --dir "$DIR" --port "$PORT")
export SOFTHSM2_CONF="$DIR/softhsm2.conf"
CONFIG="$DIR/sealkeeper.toml"

say "building sealkeeper (release)"
cargo build --release --quiet
BIN=$PWD/target/release/sealkeeper
export SEALKEEPER_SOCKET="$DIR/admin.sock"

PID=
start() {
  "$BIN" server --config "$CONFIG" 2>>"$DIR/sealkeeper.log" &
  PID=$!
  for _ in $(seq 1 200); do
    [ -S "$SEALKEEPER_SOCKET" ] && return 0
    kill -0 "$PID" 2>/dev/null || { echo "sealkeeper exited; see $DIR/sealkeeper.log" >&2; tail -5 "$DIR/sealkeeper.log" >&2; exit 1; }
    sleep 0.05
  done
  echo "sealkeeper did not open its admin socket" >&2; exit 1
}
stop() { [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" || true; PID=; }
trap stop EXIT

health() { curl -s -o /dev/null -w '%{http_code}' --cacert "$DIR/tls/server.crt" "https://localhost:$PORT/v1/sys/health"; }
wait_health() {
  for _ in $(seq 1 200); do [ "$(health)" = "$1" ] && return 0; sleep 0.05; done
  echo "health never reached $1 (is $(health))" >&2; exit 1
}

say "starting sealkeeper (log: $DIR/sealkeeper.log)"
start
if [ "$("$BIN" operator status --format json | grep -c '"initialized": true')" = 0 ]; then
  echo "GET /v1/sys/health -> $(health) (not initialized)"
  say "sealkeeper operator init --recovery-shares 3 --recovery-threshold 2"
  "$BIN" operator init --recovery-shares 3 --recovery-threshold 2
fi
wait_health 200
echo "GET /v1/sys/health -> $(health)"

say "restarting: the daemon unseals itself from the HSM"
stop
start
wait_health 200
echo "GET /v1/sys/health -> $(health)"
sleep 1.5  # the first health probe of every member runs one second after start
say "sealkeeper operator status"
"$BIN" operator status

if [ "$EXIT" = 1 ]; then
  say "done (--exit): stopping"
  exit 0
fi
say "sealkeeper is running on https://localhost:$PORT (Ctrl-C stops it)"
echo "  export SOFTHSM2_CONF=$SOFTHSM2_CONF SEALKEEPER_SOCKET=$SEALKEEPER_SOCKET"
echo "  $BIN operator status"
trap 'stop; exit 0' INT TERM
wait "$PID"
