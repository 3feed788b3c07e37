//! A real etcd cluster on loopback for the tests: Debian's `etcd` binary, each member with its own
//! data directory and free loopback ports, started by the test and killed when dropped.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::common::{free_port, wait_for_every};

pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub child: Option<Child>,
    /// The address its peers reach it on (127.0.0.1, or an end of a test's veth pair).
    pub host: String,
    /// The address its clients reach it on.
    pub client_host: String,
}

/// A network namespace made by the test, joined to the host by a veth pair: a member inside it
/// is partitioned by taking the host's end of the pair down.
pub struct Partition {
    pub netns: String,
    host_if: String,
    pub host_ip: String,
    pub ns_ip: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Partition {
    fn new() -> Partition {
        let tag = format!("{:05}", std::process::id() % 100_000);
        let subnet = std::process::id() % 250 + 1;
        let p = Partition {
            netns: format!("sk-etcd-{tag}"),
            host_if: format!("skh{tag}"),
            host_ip: format!("10.231.{subnet}.1"),
            ns_ip: format!("10.231.{subnet}.2"),
        };
        let ns_if = format!("skn{tag}");
        ip(&["netns", "add", &p.netns]);
        ip(&[
            "link", "add", &p.host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &p.netns]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", p.host_ip),
            "dev",
            &p.host_if,
        ]);
        ip(&["link", "set", &p.host_if, "up"]);
        let ns_addr = format!("{}/30", p.ns_ip);
        for args in [
            ["addr", "add", ns_addr.as_str(), "dev", ns_if.as_str()].as_slice(),
            ["link", "set", ns_if.as_str(), "up"].as_slice(),
            ["link", "set", "lo", "up"].as_slice(),
        ] {
            let mut a: Vec<&str> = vec!["netns", "exec", &p.netns, "ip"];
            a.extend_from_slice(args);
            ip(&a);
        }
        p
    }

    /// Cuts the namespace off (its member sees no peer and no client).
    pub fn cut(&self) {
        ip(&["link", "set", &self.host_if, "down"]);
    }

    pub fn heal(&self) {
        ip(&["link", "set", &self.host_if, "up"]);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}

pub struct EtcdCluster {
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
    /// `start_partitionable`: the last member runs in this namespace.
    pub partition: Option<Partition>,
    /// Client TLS with client certificates required (`start_tls`): the files are in `dir`
    /// (ca.crt, server.crt/key, client.crt/key).
    pub tls: bool,
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl.
fn make_certs(dir: &std::path::Path) {
    let script = r#"set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=etcd-test-ca \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
  -keyout ca.key -out ca.crt 2>/dev/null
for who in server client; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=$who -keyout $who.key -out $who.csr 2>/dev/null
done
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' > server.ext
printf 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n' > client.ext
for who in server client; do
  openssl x509 -req -in $who.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile $who.ext -out $who.crt 2>/dev/null
done
"#;
    let out = Command::new("bash")
        .args(["-c", script])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl EtcdCluster {
    /// Starts `n` members and waits until every one answers with a leader.
    pub fn start(n: usize) -> EtcdCluster {
        let dir = tempfile::Builder::new()
            .prefix("sk-etcd-")
            .tempdir()
            .unwrap();
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
                host: "127.0.0.1".into(),
                client_host: "127.0.0.1".into(),
            })
            .collect();
        let mut c = EtcdCluster {
            dir,
            members,
            tls: false,
            partition: None,
        };
        for i in 0..n {
            c.spawn(i, "new");
        }
        c.wait_healthy();
        c
    }

    /// One member whose client port speaks TLS only and requires a client certificate signed by
    /// the test CA (`--client-cert-auth`), as a production etcd does.
    pub fn start_tls() -> EtcdCluster {
        let dir = tempfile::Builder::new()
            .prefix("sk-etcd-tls-")
            .tempdir()
            .unwrap();
        make_certs(dir.path());
        let members = vec![Member {
            name: "m0".into(),
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
            host: "127.0.0.1".into(),
            client_host: "127.0.0.1".into(),
        }];
        let mut c = EtcdCluster {
            dir,
            members,
            tls: true,
            partition: None,
        };
        c.spawn(0, "new");
        c.wait_healthy();
        c
    }

    /// Three members; the third in a network namespace of its own ([`Partition`]), the others on
    /// the host's end of its veth pair.
    pub fn start_partitionable() -> EtcdCluster {
        let dir = tempfile::Builder::new()
            .prefix("sk-etcd-part-")
            .tempdir()
            .unwrap();
        let p = Partition::new();
        let members = (0..3)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
                host: if i == 2 {
                    p.ns_ip.clone()
                } else {
                    p.host_ip.clone()
                },
                client_host: if i == 2 {
                    p.ns_ip.clone()
                } else {
                    "127.0.0.1".into()
                },
            })
            .collect();
        let mut c = EtcdCluster {
            dir,
            members,
            tls: false,
            partition: Some(p),
        };
        for i in 0..3 {
            c.spawn(i, "new");
        }
        c.wait_healthy();
        c
    }

    /// A file of the TLS set-up (`ca.crt`, `client.crt`, `client.key`, ...).
    pub fn tls_file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://{}:{}", m.name, m.host, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let initial = self.initial_cluster();
        let data: PathBuf = self.dir.path().join(&self.members[i].name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(
                self.dir
                    .path()
                    .join(format!("{}.log", self.members[i].name)),
            )
            .unwrap();
        let tls = self.tls;
        let d = self.dir.path().to_path_buf();
        let m = &mut self.members[i];
        let scheme = if tls { "https" } else { "http" };
        let client = format!("{scheme}://{}:{}", m.client_host, m.client_port);
        let peer = format!("http://{}:{}", m.host, m.peer_port);
        let netns = self
            .partition
            .as_ref()
            .filter(|_| i == 2)
            .map(|p| p.netns.clone());
        let mut cmd = match &netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "etcd"]);
                c
            }
            None => Command::new("etcd"),
        };
        if tls {
            cmd.arg("--cert-file")
                .arg(d.join("server.crt"))
                .arg("--key-file")
                .arg(d.join("server.key"))
                .arg("--trusted-ca-file")
                .arg(d.join("ca.crt"))
                .arg("--client-cert-auth");
        }
        let child = cmd
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "sealkeeper-test"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd (Debian's etcd-server) is installed");
        m.child = Some(child);
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        let scheme = if self.tls { "https" } else { "http" };
        self.members
            .iter()
            .map(|m| format!("{scheme}://{}:{}", m.client_host, m.client_port))
            .collect()
    }

    /// The `endpoints = [...]` value for a config.
    pub fn endpoints_toml(&self) -> String {
        let quoted: Vec<String> = self.endpoints().iter().map(|e| format!("{e:?}")).collect();
        format!("[{}]", quoted.join(", "))
    }

    fn etcdctl(&self, endpoints: &[String], args: &[&str]) -> Option<String> {
        let mut cmd = Command::new("etcdctl");
        if self.tls {
            cmd.arg(format!("--cacert={}", self.tls_file("ca.crt").display()))
                .arg(format!("--cert={}", self.tls_file("client.crt").display()))
                .arg(format!("--key={}", self.tls_file("client.key").display()));
        }
        let out = cmd
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .args(["--command-timeout=2s", "--dial-timeout=1s"])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The running members.
    pub fn running(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|i| self.members[*i].child.is_some())
            .collect()
    }

    /// Waits until every running member reports the same leader.
    pub fn wait_healthy(&self) {
        let eps: Vec<String> = self
            .running()
            .iter()
            .map(|i| self.endpoints()[*i].clone())
            .collect();
        wait_for_every(
            Duration::from_millis(100),
            Duration::from_secs(30),
            || self.etcdctl(&eps, &["endpoint", "health"]).map(|_| ()),
            || {
                format!(
                    "etcd did not become healthy; logs in {}",
                    self.dir.path().display()
                )
            },
        );
    }

    /// The index of the current leader, as the running members report it.
    pub fn leader(&self) -> usize {
        wait_for_every(
            Duration::from_millis(100),
            Duration::from_secs(20),
            || {
                for i in self.running() {
                    let out = self.etcdctl(
                        &[self.endpoints()[i].clone()],
                        &["endpoint", "status", "--write-out=json"],
                    )?;
                    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
                    let st = &v[0]["Status"];
                    let leader = st["leader"].as_u64()?;
                    if leader != 0 && leader == st["header"]["member_id"].as_u64()? {
                        return Some(i);
                    }
                }
                None
            },
            || "no etcd member reports itself leader".into(),
        )
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data directory.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i, "existing");
    }

    /// Stops every member.
    pub fn kill_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }

    /// Starts every stopped member again and waits until the cluster is healthy.
    pub fn restart_all(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                self.restart(i);
            }
        }
        self.wait_healthy();
    }

    /// Every key under `prefix` and its value, as etcdctl reads them.
    pub fn dump(&self, prefix: &str) -> String {
        self.etcdctl(&self.endpoints(), &["get", "--prefix", prefix])
            .unwrap_or_default()
    }

    /// A snapshot of the whole key space (etcd's own backup format), as bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        let path = self.dir.path().join("snapshot.db");
        let ep = self.endpoints()[self.running()[0]].clone();
        self.etcdctl(&[ep], &["snapshot", "save", path.to_str().unwrap()])
            .expect("etcdctl snapshot save");
        std::fs::read(path).unwrap()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}
