#!/usr/bin/env bash
# Benchmarks. Results go to BENCHMARKS.md by hand, with the command and the machine.
#
#   scripts/bench.sh startup [RUNS]
#
# startup: median time from exec of `sealkeeper server` to its first 200 from /v1/sys/health (an
# initialized node auto-unsealing from SoftHSM over TLS), over RUNS restarts (default 25), beside a
# floor measured in the same run: examples/pkcs11_floor, a process that only loads the PKCS#11
# module, logs in and decrypts the stored blob; and the same floor plus the one-time seeding of
# AWS-LC's generator, which the daemon's TLS stack needs before its first handshake. Also the idle
# RSS of the unsealed daemon and the release binary's size.
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-}
RUNS=${2:-25}
[ "$what" = startup ] || { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

cargo build --release --quiet --bin sealkeeper --example pkcs11_floor
BIN=$PWD/target/release/sealkeeper
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

python3 - "$BIN" "$FLOOR" "$DIR" "$PORT" "$RUNS" <<'PY'
import http.client, os, signal, ssl, statistics, subprocess, sys, time
binary, floor, d, port, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
ctx = ssl.create_default_context(cafile=f"{d}/tls/server.crt")
module = "/usr/lib/softhsm/libsofthsm2.so"
for line in open(f"{d}/sealkeeper.toml"):
    if line.strip().startswith("lib ="):
        module = line.split('"')[1]
        break

def health():
    c = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=2)
    try:
        c.request("GET", "/v1/sys/health")
        return c.getresponse().status
    except OSError:
        return 0
    finally:
        c.close()

daemon, base, base_rng, rss = [], [], [], None
for i in range(runs):
    t0 = time.perf_counter()
    p = subprocess.Popen([binary, "server", "--config", f"{d}/sealkeeper.toml"], stderr=subprocess.DEVNULL)
    while health() != 200:
        if p.poll() is not None:
            sys.exit("daemon exited")
        time.sleep(0.003)
    daemon.append(time.perf_counter() - t0)
    if i == runs - 1:
        time.sleep(2)
        rss = next(int(l.split()[1]) for l in open(f"/proc/{p.pid}/status") if l.startswith("VmRSS:"))
    p.send_signal(signal.SIGTERM)
    p.wait()
    t0 = time.perf_counter()
    args = [floor, module, "sealkeeper-a", f"{d}/hsm-a.pin", "sealkeeper-root", f"{d}/data/data/core/seal/hsm-pair/root"]
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
print(f"idle RSS (unsealed, 2 s)     {rss/1024:.1f} MiB")
print(f"release binary               {size/1024/1024:.1f} MiB")
PY
