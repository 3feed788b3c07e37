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

/// The haproxy configuration for `backends` (plain-HTTP Sealkeeper listeners on loopback).
pub fn config(port: u16, backends: &[u16]) -> String {
    let mut c = format!(
        "global
    maxconn 1024

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 10s
    # A request that found its node dead (refused, reset, no answer) goes to another node.
    retries 3
    option redispatch 1
    retry-on all-retryable-errors

frontend sealkeeper
    bind 127.0.0.1:{port}
    default_backend sealkeeper_nodes

backend sealkeeper_nodes
    balance roundrobin
    # Only unsealed nodes take traffic: sealed (503), standby (429) and dead nodes are out.
    option httpchk GET /v1/sys/health
    http-check expect status 200
    default-server inter 250ms fall 2 rise 2
"
    );
    for (i, b) in backends.iter().enumerate() {
        c.push_str(&format!("    server node{} 127.0.0.1:{b} check\n", i + 1));
    }
    c
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
