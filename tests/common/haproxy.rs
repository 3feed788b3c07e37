//! Debian's haproxy in front of Sealkeeper nodes, as the README documents it: HTTP mode, health
//! checks on `/v1/sys/health` (200 = unsealed and serving), layer-7 retries on another node.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::common::{free_port, http, wait_for};

pub struct Haproxy {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
}

/// The haproxy configuration for `backends` (plain-HTTP Sealkeeper listeners on loopback): the
/// project's scripts/haproxy-loopback.cfg, which the cluster benchmark uses too.
pub fn config(port: u16, backends: &[u16]) -> String {
    let template = include_str!("../../scripts/haproxy-loopback.cfg");
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("    server node{} 127.0.0.1:{b} check\n", i + 1))
        .collect();
    template
        .replace("@PORT@", &port.to_string())
        .replace("@SERVERS@\n", &servers)
}

impl Haproxy {
    pub fn start(backends: &[u16]) -> Haproxy {
        let dir = tempfile::Builder::new()
            .prefix("sk-haproxy-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, config(port, backends)).unwrap();
        let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("haproxy (Debian's haproxy) is installed");
        let h = Haproxy { port, dir, child };
        wait_for(
            Duration::from_secs(20),
            || {
                http(h.port, "GET", "/v1/sys/health")
                    .ok()
                    .filter(|r| r.status == 200)
                    .map(|_| ())
            },
            || format!("haproxy never answered 200: {}", h.log()),
        );
        h
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
