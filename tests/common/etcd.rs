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
}

pub struct EtcdCluster {
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
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
            })
            .collect();
        let mut c = EtcdCluster { dir, members };
        for i in 0..n {
            c.spawn(i, "new");
        }
        c.wait_healthy();
        c
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
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
        let m = &mut self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let child = Command::new("etcd")
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
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// The `endpoints = [...]` value for a config.
    pub fn endpoints_toml(&self) -> String {
        let quoted: Vec<String> = self.endpoints().iter().map(|e| format!("{e:?}")).collect();
        format!("[{}]", quoted.join(", "))
    }

    fn etcdctl(&self, endpoints: &[String], args: &[&str]) -> Option<String> {
        let out = Command::new("etcdctl")
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
