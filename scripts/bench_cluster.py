#!/usr/bin/env python3
"""Cluster benchmarks (run by `scripts/bench.sh cluster`), all traffic on loopback.

A 3-member etcd cluster (Debian's etcd) and three Sealkeeper nodes (a release build with
`--features etcd`), each with its own SoftHSM token pair holding the same key, audit on:

- transit encrypt throughput through haproxy (HTTP mode, health-checked, as the README documents
  it) with 1, 2 and 3 nodes behind it, at 16 and 64 connections (wrk), as ratios to the one-node
  figure of the same run; the 2 cores are shared by wrk, haproxy, etcd and the nodes;
- how long a token revoked on node 2 takes to be refused on node 3, and a key rotated on node 3 to
  be used for encryption by node 1 (polled every millisecond; ROUNDS rounds each);
- active-standby: the time from kill -9 of the leader to another node answering 200 on
  /v1/sys/health, with lease_ttl = 2s (ROUNDS rounds, the killed node restarted in between).

usage: bench_cluster.py BIN WORKDIR [SECONDS] [ROUNDS]
"""
import base64, http.client, json, os, re, shutil, signal, socket, statistics, subprocess, sys, time

BIN, WORK = sys.argv[1], sys.argv[2]
SECS = int(sys.argv[3]) if len(sys.argv) > 3 else 5
ROUNDS = int(sys.argv[4]) if len(sys.argv) > 4 else 10
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


from benchlib import free_port, wait


def request(port, method, path, token=None, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"X-Vault-Token": token} if token else {}
    try:
        c.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        r = c.getresponse()
        data = r.read()
        return r.status, (json.loads(data) if data.startswith(b"{") else {})
    except OSError:
        return 0, {}
    finally:
        c.close()


class Etcd:
    def __init__(self, n=3):
        self.members = [(f"m{i}", free_port(), free_port()) for i in range(n)]
        initial = ",".join(f"{m}=http://127.0.0.1:{p}" for m, _, p in self.members)
        self.procs = []
        for name, client, peer in self.members:
            self.procs.append(subprocess.Popen(
                ["etcd", "--name", name, "--data-dir", f"{WORK}/etcd-{name}",
                 "--listen-client-urls", f"http://127.0.0.1:{client}",
                 "--advertise-client-urls", f"http://127.0.0.1:{client}",
                 "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-cluster", initial, "--initial-cluster-state", "new",
                 "--heartbeat-interval", "50", "--election-timeout", "500"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        eps = ",".join(self.endpoints())
        wait(lambda: subprocess.run(["etcdctl", f"--endpoints={eps}", "endpoint", "health"],
                                    capture_output=True, env=dict(os.environ, ETCDCTL_API="3")).returncode == 0,
             "etcd", poll=0.1)

    def endpoints(self):
        return [f"http://127.0.0.1:{c}" for _, c, _ in self.members]

    def stop(self):
        for p in self.procs:
            p.kill()
            p.wait()


class Node:
    def __init__(self, name, etcd, prefix, hsms_of=None, cluster=""):
        self.name = name
        self.port = free_port()
        self.dir = f"{WORK}/{name}"
        subprocess.run([f"{ROOT}/scripts/setup-softhsm.sh", "--dir", self.dir, "--port", str(self.port)],
                       check=True, capture_output=True)
        if hsms_of:
            shutil.rmtree(f"{self.dir}/tokens")
            shutil.copytree(f"{hsms_of.dir}/tokens", f"{self.dir}/tokens")
            for pin in ("hsm-a.pin", "hsm-b.pin"):
                shutil.copy(f"{hsms_of.dir}/{pin}", f"{self.dir}/{pin}")
        cfg = open(f"{self.dir}/sealkeeper.toml").read()
        eps = ", ".join(f'"{e}"' for e in etcd.endpoints())
        cfg = re.sub(r'\[storage\]\npath = "[^"]*"\n',
                     f'[storage]\ntype = "etcd"\nendpoints = [{eps}]\nprefix = "{prefix}"\n\n'
                     f'[cluster]\nnode_name = "{name}"\n{cluster}\n', cfg)
        cfg = cfg.replace("tls_cert_file", "# tls_cert_file").replace("tls_key_file", "# tls_key_file")
        cfg = cfg.replace("[admin]", "tls_disable = true\n\n[admin]")
        open(f"{self.dir}/sealkeeper.toml", "w").write(cfg)
        self.env = dict(os.environ, SOFTHSM2_CONF=f"{self.dir}/softhsm2.conf",
                        SEALKEEPER_SOCKET=f"{self.dir}/admin.sock")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([BIN, "server", "--config", f"{self.dir}/sealkeeper.toml"],
                                     env=self.env, stderr=open(f"{self.dir}/daemon.log", "a"))
        wait(lambda: os.path.exists(f"{self.dir}/admin.sock") and self.op("status").returncode == 0, self.name)

    def op(self, *args, check=False):
        return subprocess.run([BIN, "operator", *args], env=self.env, capture_output=True, text=True, check=check)

    def health(self):
        return request(self.port, "GET", "/v1/sys/health")[0]

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait()


def haproxy(ports):
    port = free_port()
    servers = "".join(f"    server node{i + 1} 127.0.0.1:{p} check\n" for i, p in enumerate(ports))
    cfg = f"{WORK}/haproxy-{port}.cfg"
    template = open(f"{ROOT}/scripts/haproxy-loopback.cfg").read()
    open(cfg, "w").write(template.replace("@PORT@", str(port)).replace("@SERVERS@\n", servers))
    p = subprocess.Popen(["haproxy", "-db", "-f", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait(lambda: request(port, "GET", "/v1/sys/health")[0] == 200, "haproxy")
    # Wait until every backend passed its checks (2 x 250 ms).
    time.sleep(0.6)
    return p, port


def wrk(port, token, conns):
    lua = f"{WORK}/put.lua"
    open(lua, "w").write('wrk.method = "PUT"\nwrk.body = os.getenv("BODY")\n'
                         'wrk.headers["Content-Type"] = "application/json"\n'
                         'wrk.headers["X-Vault-Token"] = os.getenv("TOKEN")\n')
    body = json.dumps({"plaintext": base64.b64encode(b"x" * 32).decode()})
    out = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{SECS}s", "-s", lua,
                          f"http://127.0.0.1:{port}/v1/transit/encrypt/bench"],
                         env=dict(os.environ, BODY=body, TOKEN=token), capture_output=True, text=True).stdout
    errs = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errs:
        sys.exit(f"{errs.group(1)} failed requests through haproxy")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def ms(values):
    values = sorted(values)
    p95 = values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]
    return f"median {statistics.median(values):6.1f} ms   p95 {p95:6.1f} ms   max {values[-1]:6.1f} ms"


def poll_until(pred, within=10):
    t0 = time.perf_counter()
    while not pred():
        if time.perf_counter() - t0 > within:
            sys.exit("a change never arrived")
        time.sleep(0.001)
    return (time.perf_counter() - t0) * 1000


def main():
    os.makedirs(WORK, exist_ok=True)
    etcd = Etcd()
    nodes = []
    try:
        first = Node("node1", etcd, "bench/")
        nodes = [first, Node("node2", etcd, "bench/", first), Node("node3", etcd, "bench/", first)]
        nodes[0].start()
        nodes[0].op("init", "--recovery-shares", "1", "--recovery-threshold", "1", check=True)
        for n in nodes[1:]:
            n.start()
        for n in nodes:
            wait(lambda: n.health() == 200, f"{n.name} unsealed")
        a = nodes[0]
        a.op("key", "create", "bench", check=True)
        a.op("policy", "write", "bench", "--key", "bench", "--capabilities", "encrypt,decrypt", check=True)
        token = json.loads(a.op("token", "create", "--policy", "bench", "--format", "json",
                                check=True).stdout)["client_token"]

        print("== transit encrypt through haproxy (audit on), ratio to 1 node in the same run")
        print(f"{'nodes':>5} {'conns':>5} {'req/s':>10} {'ratio':>6}")
        for conns in (16, 64):
            base = None
            for k in (1, 2, 3):
                lb, port = haproxy([n.port for n in nodes[:k]])
                try:
                    rps = wrk(port, token, conns)
                finally:
                    lb.kill()
                    lb.wait()
                base = base or rps
                print(f"{k:>5} {conns:>5} {rps:>10.0f} {rps / base:>6.2f}")

        print(f"== propagation through the change feed ({ROUNDS} rounds, polled every 1 ms)")
        ct = request(nodes[2].port, "PUT", "/v1/transit/encrypt/bench", token,
                     {"plaintext": base64.b64encode(b"p").decode()})[1]["data"]["ciphertext"]
        revokes, rotations = [], []
        for _ in range(ROUNDS):
            made = json.loads(a.op("token", "create", "--policy", "bench", "--format", "json", check=True).stdout)
            tok = made["client_token"]
            poll_until(lambda: request(nodes[2].port, "PUT", "/v1/transit/decrypt/bench", tok,
                                       {"ciphertext": ct})[0] == 200)
            nodes[1].op("token", "revoke", made["accessor"], check=True)
            revokes.append(poll_until(lambda: request(nodes[2].port, "PUT", "/v1/transit/decrypt/bench", tok,
                                                      {"ciphertext": ct})[0] == 403))
            out = nodes[2].op("key", "rotate", "bench", check=True).stdout
            v = re.search(r"latest version (\d+)", out).group(1)
            rotations.append(poll_until(lambda: request(a.port, "PUT", "/v1/transit/encrypt/bench", token,
                                                        {"plaintext": "eA=="})[1]
                                        .get("data", {}).get("ciphertext", "").startswith(f"vault:v{v}:")))
        print(f"revoke on node 2 -> 403 on node 3:          {ms(revokes)}")
        print(f"rotate on node 3 -> new version on node 1:  {ms(rotations)}")
        print("   (from the operator command's exit; the command itself is not counted)")
        for n in nodes:
            n.stop()

        print(f"== active-standby takeover after kill -9 of the leader (lease_ttl = 2s, {ROUNDS} rounds)")
        for n in nodes:
            cfg = open(f"{n.dir}/sealkeeper.toml").read()
            cfg = cfg.replace("[cluster]\n", '[cluster]\nmode = "active-standby"\nlease_ttl = "2s"\n', 1)
            open(f"{n.dir}/sealkeeper.toml", "w").write(cfg)
            n.start()
        takeovers = []
        for _ in range(ROUNDS):
            leader = wait(lambda: [n for n in nodes if n.health() == 200], "a leader")[0]
            leader.kill()
            t0 = time.perf_counter()
            wait(lambda: any(n.health() == 200 for n in nodes if n is not leader), "a takeover", poll=0.005)
            takeovers.append((time.perf_counter() - t0) * 1000)
            leader.start()
            wait(lambda: leader.health() == 429, "the old leader back as a standby")
        print(f"takeover: {ms(takeovers)}")
    finally:
        for n in nodes:
            if n.proc and n.proc.poll() is None:
                n.proc.kill()
        etcd.stop()


main()
