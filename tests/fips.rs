//! fips_mode: approved algorithms and TLS suites only, self-tests at start and a pairwise round
//! trip with each HSM member at unseal.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn fips(f: &Fixture) {
    f.edit_config(|c| format!("fips_mode = true\n{c}"));
}

#[test]
fn unapproved_settings_are_refused_by_name() {
    let f = Fixture::with_tls();
    fips(&f);
    f.edit_config(|c| {
        c.replace(
            "mechanism = \"CKM_AES_GCM\"",
            "mechanism = \"CKM_RSA_PKCS_OAEP\"\nrsa_oaep_hash = \"sha1\"",
        )
    });
    let e = f.start_fails();
    assert!(
        e.contains("seal[0].rsa_oaep_hash") && e.contains("not approved in fips_mode"),
        "{e}"
    );

    let f = Fixture::new();
    fips(&f);
    let e = f.start_fails();
    assert!(
        e.contains("listener.tls_disable") && e.contains("fips_mode requires TLS"),
        "{e}"
    );
}

fn curl(f: &Fixture, extra: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(f.path("tls/server.crt"))
        .args(extra)
        .arg(format!("https://localhost:{}/v1/sys/health", f.port))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn fips_mode_serves_approved_tls_only_and_self_tests_every_member() {
    let f = Fixture::with_tls();
    fips(&f);
    let mut d = f.start();
    d.init();
    d.stop();
    let d = f.start();
    d.wait_status("unsealed", Duration::from_secs(10), |s| {
        s["state"] == "unsealed"
    });
    let st = d.status_json();
    assert_eq!(st["fips_mode"], true);
    // The validated module is active exactly when the fips feature is built in.
    assert_eq!(st["fips_module"], cfg!(feature = "fips"), "{st}");
    let kats = st["self_tests"].as_array().unwrap();
    assert!(
        kats.len() >= 5 && kats.iter().all(|t| t["ok"] == true),
        "{st}"
    );
    let hsm: Vec<&Value> = st["hsm_self_tests"].as_array().unwrap().iter().collect();
    assert_eq!(hsm.len(), 2, "{st}");
    assert!(hsm.iter().all(|t| t["ok"] == true), "{st}");

    assert_eq!(curl(&f, &[]), "200");
    assert_eq!(
        curl(
            &f,
            &[
                "--tlsv1.2",
                "--tls-max",
                "1.2",
                "--ciphers",
                "ECDHE-ECDSA-AES256-GCM-SHA384"
            ]
        ),
        "200"
    );
    // Unapproved suites and groups are refused. Each is served by a node without fips_mode in the
    // same run, so a refusal here is the listener's, not this curl's.
    let plain = Fixture::with_tls();
    let _plain = plain.start();
    for (opts, what) in [
        (
            &["--tls13-ciphers", "TLS_CHACHA20_POLY1305_SHA256"][..],
            "ChaCha20 is not approved",
        ),
        (
            &[
                "--tlsv1.2",
                "--tls-max",
                "1.2",
                "--ciphers",
                "ECDHE-ECDSA-CHACHA20-POLY1305",
            ][..],
            "ChaCha20 (TLS 1.2) is not approved",
        ),
        (
            &["--curves", "X25519"][..],
            "X25519 is not an approved group here",
        ),
    ] {
        assert_eq!(
            curl(&plain, opts),
            "501",
            "control without fips_mode: {what}"
        );
        assert_eq!(curl(&f, opts), "000", "{what}");
    }

    let audit = std::fs::read_to_string(f.path("audit.log")).unwrap();
    assert!(
        audit.contains("\"operation\":\"self-test\"")
            && audit.contains("\"operation\":\"hsm-self-test\""),
        "{audit}"
    );
}

#[test]
fn without_fips_mode_chacha_is_served_and_software_self_tests_still_run() {
    let f = Fixture::with_tls();
    let d = f.start();
    assert_eq!(
        curl(&f, &["--tls13-ciphers", "TLS_CHACHA20_POLY1305_SHA256"]),
        "501"
    );
    let st = d.status_json();
    assert_eq!(st["fips_mode"], false);
    assert!(
        st["self_tests"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["ok"] == true)
    );
    assert!(d.log().contains("cryptographic self-tests passed"));
}
