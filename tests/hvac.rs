//! Compatibility with hvac, the Python Vault client, over TLS: the Transit seal client's exact
//! sequence, health and seal-status; and optional mutual TLS on the listener.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::Command;

use common::*;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/compat/hvac_seal_client.py"
);

fn prepare(d: &Daemon) -> String {
    d.init();
    d.operator_ok(&["key", "create", "vault-prod"]);
    d.operator_ok(&["key", "create", "vault-staging"]);
    d.policy_and_token("prod", "vault-prod", "encrypt,decrypt,read")
}

fn hvac(
    f: &Fixture,
    token: &str,
    client_cert: Option<(&std::path::Path, &std::path::Path)>,
) -> std::process::Output {
    let mut c = Command::new("python3");
    c.arg(SCRIPT)
        .arg(format!("https://localhost:{}", f.port))
        .arg(token)
        .arg(f.path("tls/server.crt"));
    if let Some((crt, key)) = client_cert {
        c.arg(crt).arg(key);
    }
    c.output().unwrap()
}

#[test]
fn hvac_replays_the_transit_seal_client_over_tls() {
    let f = Fixture::with_tls();
    let d = f.start();
    let token = prepare(&d);
    let out = hvac(&f, &token, None);
    assert!(
        out.status.success(),
        "{}{}\n(hvac missing? scripts/test.sh installs it: pip install hvac)",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("hvac compatibility: ok"));
}

#[test]
fn mutual_tls_requires_a_client_certificate_when_configured() {
    let f = Fixture::with_tls();
    f.require_client_certificates();
    let d = f.start();
    let token = prepare(&d);
    let with = hvac(
        &f,
        &token,
        Some((&f.path("client.crt"), &f.path("client.key"))),
    );
    assert!(
        with.status.success(),
        "{}{}",
        String::from_utf8_lossy(&with.stdout),
        stderr(&with)
    );
    let without = hvac(&f, &token, None);
    assert!(
        !without.status.success(),
        "a client without a certificate was served"
    );
    // The refusal is logged (rate-limited) and audited.
    let audited = wait_for(
        std::time::Duration::from_secs(10),
        || {
            std::fs::read_to_string(f.path("audit.log"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|r| r["operation"] == "tls-handshake")
        },
        || "no tls-handshake record".into(),
    );
    assert_eq!(audited["outcome"], "denied", "{audited}");
    assert_eq!(audited["reason"], "tls_client_certificate", "{audited}");
    assert!(
        d.log().contains("TLS client certificate refused"),
        "{}",
        d.log()
    );
    // A certificate from another CA is refused too.
    let curl = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(f.path("tls/server.crt"))
        .arg("--cert")
        .arg(f.path("tls/server.crt"))
        .arg("--key")
        .arg(f.path("tls/server.key"))
        .arg(format!("https://localhost:{}/v1/sys/health", f.port))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "000");
}
