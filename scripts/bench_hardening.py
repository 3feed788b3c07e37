#!/usr/bin/env python3
"""Hardening benchmarks (run by `scripts/bench.sh hardening`); every figure beside a peer or a floor
measured in the same run, all traffic on loopback.

- health latency (p50/p99, a new TLS connection per probe) with 1,000 idle connections open, under
  the unit's descriptor limit (LimitNOFILE=4096), against the same probes with none open;
- peak RSS (VmHWM) growth for the largest accepted batch (transit.max_batch_items items in
  max_request_bytes), three at once;
- audit bytes per second and records under a failed-token flood, against the requests sent;
- secrets in a core dump (gcore as root) after traffic: copies of a canary plaintext (raw and
  base64) and of the client token;
- OpenBao 2.7.2 with seal "transit": start of an initialized node to unsealed, through Sealkeeper
  and through a second OpenBao acting as the transit server.

usage: bench_hardening.py BIN BAO WORKDIR
"""
import base64, http.client, json, os, resource, secrets, shutil, signal, socket, ssl, statistics
import subprocess, sys, threading, time

BIN, BAO, WORK = sys.argv[1], sys.argv[2], sys.argv[3]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


from benchlib import free_port, wait


class Sealkeeper:
    def __init__(self, name, extra_listener="", prlimit=None):
        self.port = free_port()
        self.dir = subprocess.run(
            [f"{ROOT}/scripts/setup-softhsm.sh", "--dir", f"{WORK}/{name}", "--port", str(self.port)],
            check=True, capture_output=True, text=True).stdout.strip()
        cfg = open(f"{self.dir}/sealkeeper.toml").read()
        cfg = cfg.replace("[listener]\n", f"[listener]\n{extra_listener}\n", 1)
        open(f"{self.dir}/sealkeeper.toml", "w").write(cfg)
        self.env = dict(os.environ, SOFTHSM2_CONF=f"{self.dir}/softhsm2.conf",
                        SEALKEEPER_SOCKET=f"{self.dir}/admin.sock")
        self.ctx = ssl.create_default_context(cafile=f"{self.dir}/tls/server.crt")
        cmd = [BIN, "server", "--config", f"{self.dir}/sealkeeper.toml"]
        if prlimit:
            cmd = ["prlimit", f"--nofile={prlimit}:{prlimit}", "--"] + cmd
        self.proc = subprocess.Popen(cmd, env=self.env, stderr=subprocess.DEVNULL)
        wait(lambda: os.path.exists(f"{self.dir}/admin.sock") and self.op("status").returncode == 0, "sealkeeper")
        self.op("init", "--recovery-shares", "1", "--recovery-threshold", "1", check=True)
        self.op("key", "create", "bench", check=True)
        self.op("policy", "write", "bench", "--key", "bench", "--capabilities", "encrypt,decrypt", check=True)
        out = self.op("token", "create", "--policy", "bench", "--format", "json", check=True)
        self.token = json.loads(out.stdout)["client_token"]

    def op(self, *args, check=False):
        return subprocess.run([BIN, "operator", *args], env=self.env, capture_output=True, text=True, check=check)

    def conn(self):
        return http.client.HTTPSConnection("localhost", self.port, context=self.ctx, timeout=30)

    def pid(self):
        # Under prlimit the daemon is prlimit's exec'd image: the same pid.
        return self.proc.pid

    def status(self, field):
        for line in open(f"/proc/{self.pid()}/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return 0

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait()


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def health_latencies(sk, n):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        c = sk.conn()
        c.request("GET", "/v1/sys/health")
        r = c.getresponse()
        r.read()
        c.close()
        assert r.status == 200, r.status
        out.append((time.perf_counter() - t0) * 1000)
    return out


def bench_idle(results):
    resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))
    sk = Sealkeeper("idle", prlimit=4096)
    base = health_latencies(sk, 200)
    idle = []
    for _ in range(1000):
        s = socket.create_connection(("127.0.0.1", sk.port))
        idle.append(s)
    loaded = health_latencies(sk, 200)
    members = json.loads(sk.op("status", "--format", "json").stdout)["seal"]["members"]
    for s in idle:
        s.close()
    sk.stop()
    results.append(("health, no idle connections", f"p50 {pct(base, 50):.2f} ms, p99 {pct(base, 99):.2f} ms"))
    results.append(("health, 1,000 idle connections (LimitNOFILE=4096)",
                    f"p50 {pct(loaded, 50):.2f} ms, p99 {pct(loaded, 99):.2f} ms "
                    f"({pct(loaded, 50) / pct(base, 50):.2f}x / {pct(loaded, 99) / pct(base, 99):.2f}x); "
                    f"members: {', '.join(m['name'] + ' ' + m['state'] for m in members)}"))


def bench_batch(results):
    sk = Sealkeeper("batch")
    # 1,024 items of 735 random bytes (980 base64 characters): just under 1 MiB of body.
    items = [{"plaintext": base64.b64encode(secrets.token_bytes(735)).decode()} for _ in range(1024)]
    body = json.dumps({"batch_input": items})
    assert len(body) < 1024 * 1024, len(body)
    time.sleep(0.5)
    before = sk.status("VmHWM")
    rss_before = sk.status("VmRSS")

    def one():
        c = sk.conn()
        c.request("PUT", "/v1/transit/encrypt/bench", body, {"X-Vault-Token": sk.token})
        r = c.getresponse()
        r.read()
        assert r.status == 200, r.status

    ts = [threading.Thread(target=one) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    after = sk.status("VmHWM")
    # The old amplification: ~349,000 empty items in 1 MiB, now refused before it is built.
    empty = "{\"batch_input\":[" + ",".join(["{}"] * 349000) + "]}"
    c = sk.conn()
    c.request("PUT", "/v1/transit/encrypt/bench", empty, {"X-Vault-Token": sk.token})
    r = c.getresponse()
    r.read()
    refused = r.status
    peak_after_refusal = sk.status("VmHWM")
    sk.stop()
    results.append(("largest accepted batch (1,024 items, %.2f MiB body), 3 at once" % (len(body) / 2**20),
                    f"peak RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB (+{(after - before) / 1024:.1f} MiB; "
                    f"idle RSS {rss_before / 1024:.1f} MiB)"))
    results.append(("349,000 empty items in 1 MiB", f"HTTP {refused}; peak RSS after it {peak_after_refusal / 1024:.1f} MiB"))


def bench_flood(results):
    sk = Sealkeeper("flood")
    log = f"{sk.dir}/audit.log"
    time.sleep(0.5)
    size0 = os.path.getsize(log)
    stop = time.time() + 5
    counts = {}
    lock = threading.Lock()

    def flood():
        c = sk.conn()
        while time.time() < stop:
            c.request("PUT", "/v1/transit/encrypt/bench", '{"plaintext":"YQ=="}', {"X-Vault-Token": "sks.wrong"})
            r = c.getresponse()
            r.read()
            with lock:
                counts[r.status] = counts.get(r.status, 0) + 1

    ts = [threading.Thread(target=flood) for _ in range(4)]
    t0 = time.time()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    secs = time.time() - t0
    # Let the summary of the last interval be written.
    time.sleep(11)
    size1 = os.path.getsize(log)
    recs = [json.loads(l) for l in open(log).read().splitlines()[-50:]]
    summarized = sum(r.get("suppressed", 0) for r in recs if r.get("operation") == "denied-summary")
    # A valid client from the same address is throttled too (same address); one from another
    # address would not be: see tests/hostile.rs.
    sk.stop()
    n = sum(counts.values())
    results.append(("failed-token flood, 4 connections, 5 s",
                    f"{n / secs:.0f} requests/s ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))}); "
                    f"audit grew {size1 - size0} bytes = {(size1 - size0) / secs:.0f} bytes/s "
                    f"({summarized} denials summarized)"))


def count_in_core(pid, needles):
    core = f"{WORK}/core"
    subprocess.run(["gcore", "-o", core, str(pid)], check=True, capture_output=True)
    path = f"{core}.{pid}"
    data = open(path, "rb").read()
    os.remove(path)
    return {k: data.count(v) for k, v in needles.items()}


def bench_core(results):
    if not shutil.which("gcore"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "gdb"], check=True, capture_output=True)
    sk = Sealkeeper("core")
    canary = b"CANARY-" + secrets.token_hex(12).encode()
    b64 = base64.b64encode(canary)
    c = sk.conn()
    cts = []
    for _ in range(100):
        c.request("PUT", "/v1/transit/encrypt/bench", json.dumps({"plaintext": b64.decode()}), {"X-Vault-Token": sk.token})
        r = c.getresponse()
        cts.append(json.loads(r.read())["data"]["ciphertext"])
    for ct in cts:
        c.request("PUT", "/v1/transit/decrypt/bench", json.dumps({"ciphertext": ct}), {"X-Vault-Token": sk.token})
        r = c.getresponse()
        assert json.loads(r.read())["data"]["plaintext"] == b64.decode()
    c.close()
    time.sleep(0.5)
    counts = count_in_core(sk.pid(), {"plaintext": canary, "plaintext (base64)": b64,
                                      "client token": sk.token.encode()})
    sk.stop()
    results.append(("core dump after 100 encrypts + 100 decrypts (connection closed)",
                    ", ".join(f"{k}: {v}" for k, v in counts.items())))


def bao_node(name, seal_stanza):
    d = f"{WORK}/{name}"
    os.makedirs(f"{d}/raft", exist_ok=True)
    port, cport = free_port(), free_port()
    open(f"{d}/bao.hcl", "w").write(f'''
storage "raft" {{ path = "{d}/raft"  node_id = "{name}" }}
listener "tcp" {{ address = "127.0.0.1:{port}"  cluster_address = "127.0.0.1:{cport}"  tls_disable = true }}
api_addr = "http://127.0.0.1:{port}"
cluster_addr = "http://127.0.0.1:{cport}"
{seal_stanza}
''')
    return d, port


def bao_health(port):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        c.request("GET", "/v1/sys/health")
        return c.getresponse().status
    except OSError:
        return 0


def time_unseal(d, port, runs):
    env = dict(os.environ, BAO_ADDR=f"http://127.0.0.1:{port}", HOME=d)
    p = subprocess.Popen([BAO, "server", f"-config={d}/bao.hcl"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait(lambda: bao_health(port) == 501, "bao uninitialized")
    subprocess.run([BAO, "operator", "init", "-format=json"], env=env, check=True, capture_output=True)
    wait(lambda: bao_health(port) == 200, "bao unsealed")
    p.send_signal(signal.SIGTERM)
    p.wait()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        p = subprocess.Popen([BAO, "server", f"-config={d}/bao.hcl"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while bao_health(port) != 200:
            if p.poll() is not None:
                sys.exit("bao exited")
            time.sleep(0.005)
        times.append(time.perf_counter() - t0)
        p.send_signal(signal.SIGTERM)
        p.wait()
    return times


def bench_bao(results, runs=7):
    sk = Sealkeeper("bao-sk")
    d1, p1 = bao_node("bao-through-sk", f'''seal "transit" {{
  address = "https://localhost:{sk.port}"  token = "{sk.token}"  key_name = "bench"
  mount_path = "transit/"  tls_ca_cert = "{sk.dir}/tls/server.crt"
}}''')
    via_sk = time_unseal(d1, p1, runs)
    sk.stop()
    # The peer: a second OpenBao (dev mode, transit engine) as the transit server.
    dev_port = free_port()
    env = dict(os.environ, BAO_ADDR=f"http://127.0.0.1:{dev_port}", BAO_TOKEN="root", HOME=WORK)
    dev = subprocess.Popen([BAO, "server", "-dev", "-dev-root-token-id=root", f"-dev-listen-address=127.0.0.1:{dev_port}"],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait(lambda: bao_health(dev_port) == 200, "bao dev")
    subprocess.run([BAO, "secrets", "enable", "transit"], env=env, check=True, capture_output=True)
    subprocess.run([BAO, "write", "-f", "transit/keys/bench"], env=env, check=True, capture_output=True)
    d2, p2 = bao_node("bao-through-bao", f'''seal "transit" {{
  address = "http://127.0.0.1:{dev_port}"  token = "root"  key_name = "bench"  mount_path = "transit/"
}}''')
    via_bao = time_unseal(d2, p2, runs)
    dev.send_signal(signal.SIGTERM)
    dev.wait()
    m1, m2 = statistics.median(via_sk), statistics.median(via_bao)
    results.append((f"OpenBao start to unsealed, through Sealkeeper ({runs} runs)", f"median {m1 * 1000:.0f} ms (min {min(via_sk) * 1000:.0f})"))
    results.append((f"OpenBao start to unsealed, through a second OpenBao ({runs} runs)",
                    f"median {m2 * 1000:.0f} ms (min {min(via_bao) * 1000:.0f}); Sealkeeper / OpenBao {m1 / m2:.2f}x"))


results = []
for part in sys.argv[4:] or ["idle", "batch", "flood", "core", "bao"]:
    globals()[f"bench_{part}"](results)
for k, v in results:
    print(f"{k:<72} {v}")
