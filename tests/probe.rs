//! `sealkeeper hsm probe` and `sealkeeper seal probe` against SoftHSM, including their failures.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::{Command, Output};

use common::*;
use serde_json::Value;

fn probe(f: &Fixture, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["hsm", "probe"])
        .args(args)
        .env("SOFTHSM2_CONF", f.softhsm_conf())
        .output()
        .unwrap()
}

#[test]
fn lists_tokens_and_checks_the_key_with_a_round_trip() {
    let f = Fixture::new();
    let pin = f.path("hsm-a.pin");
    let out = probe(
        &f,
        &[
            "--profile",
            "softhsm2",
            "--token-label",
            "sealkeeper-a",
            "--pin-file",
            pin.to_str().unwrap(),
            "--key-label",
            "sealkeeper-root",
            "--format",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let labels: Vec<&str> = v["slots"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["token"]["label"].as_str())
        .collect();
    assert!(
        labels.contains(&"sealkeeper-a") && labels.contains(&"sealkeeper-b"),
        "{labels:?}"
    );
    assert_eq!(v["mechanism_supported"], true);
    assert!(
        v["selected"]["mechanisms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "CKM_AES_GCM")
    );
    assert_eq!(v["key_check"]["ok"], true, "{v}");
    // Nothing was stored: the probe uses no config and no storage.
    assert!(
        !f.path("data/data").exists() || walk(&f.path("data")).iter().all(|p| p.ends_with("LOCK"))
    );
}

#[test]
fn each_failure_is_named_and_exits_1() {
    let f = Fixture::new();
    let pin = f.path("hsm-a.pin").to_str().unwrap().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--lib", "/nonexistent/lib.so"],
            "/nonexistent/lib.so does not exist",
        ),
        (
            vec!["--profile", "softhsm2", "--token-label", "nope"],
            "no token with token label \"nope\"",
        ),
        (
            vec![
                "--profile",
                "softhsm2",
                "--token-label",
                "sealkeeper-a",
                "--pin-file",
                &pin,
                "--key-label",
                "missing-key",
            ],
            "no secret key with label \"missing-key\"",
        ),
        (
            vec!["--profile", "hsm9000"],
            "unknown HSM profile \"hsm9000\"",
        ),
        (
            vec!["--profile", "softhsm2", "--mechanism", "CKM_DES"],
            "is not supported",
        ),
    ];
    for (args, expect) in cases {
        let out = probe(&f, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(stderr(&out).contains(expect), "{args:?}: {}", stderr(&out));
        // As the README says: one line, `Error: ...`.
        let e = stderr(&out);
        assert!(
            e.starts_with("Error: ") && e.trim_end().lines().count() == 1,
            "{e}"
        );
    }
    // A wrong command line exits 2 with the parser's own error and the usage (README).
    let out = probe(&f, &["--profile", "softhsm2", "--no-such-option"]);
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    assert!(
        e.starts_with("error: unexpected argument") && e.contains("Usage:"),
        "{e}"
    );
    std::fs::write(f.path("bad.pin"), "000000\n").unwrap();
    std::fs::set_permissions(
        f.path("bad.pin"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let bad = f.path("bad.pin");
    let out = probe(
        &f,
        &[
            "--profile",
            "softhsm2",
            "--token-label",
            "sealkeeper-a",
            "--pin-file",
            bad.to_str().unwrap(),
            "--key-label",
            "sealkeeper-root",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(e.contains("C_Login failed: CKR_PIN_INCORRECT"), "{e}");
    // A one-shot command's own advice, not the daemon's.
    assert!(e.contains("failed-login limit"), "{e}");
    assert!(!e.contains("operator unseal"), "{e}");

    // A key check asked for without a token: said, and exit 1, not a silent skip.
    let out = probe(
        &f,
        &[
            "--profile",
            "softhsm2",
            "--pin-file",
            &pin,
            "--key-label",
            "sealkeeper-root",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no key check ran: --key-label needs the token it is on"),
        "{}",
        stderr(&out)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("sealkeeper-a"));
}

#[test]
fn a_mechanism_the_token_cannot_do_with_this_key_is_reported() {
    // An RSA key on the token, and OAEP with SHA-256, which SoftHSM 2.6 does not do.
    let f = Fixture::new();
    let key = f.path("rsa.pem");
    assert!(
        Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out"
            ])
            .arg(&key)
            .status()
            .unwrap()
            .success()
    );
    let out = Command::new("softhsm2-util")
        .arg("--import")
        .arg(&key)
        .args([
            "--token",
            "sealkeeper-a",
            "--label",
            "rsa",
            "--id",
            "02",
            "--pin",
            &f.pin("a"),
        ])
        .env("SOFTHSM2_CONF", f.softhsm_conf())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let pin = f.path("hsm-a.pin");
    let args = [
        "--profile",
        "softhsm2",
        "--token-label",
        "sealkeeper-a",
        "--pin-file",
        pin.to_str().unwrap(),
        "--key-label",
        "rsa",
        "--mechanism",
        "CKM_RSA_PKCS_OAEP",
    ];
    let out = probe(&f, &[&args[..], &["--rsa-oaep-hash", "sha256"]].concat());
    assert_eq!(out.status.code(), Some(1));
    // SoftHSM refuses the parameters in C_EncryptInit (CKR_ARGUMENTS_BAD); the function and code
    // are what the operator needs.
    assert!(
        stderr(&out).contains("key check failed: C_EncryptInit failed: CKR_"),
        "{}",
        stderr(&out)
    );
    let out = probe(&f, &[&args[..], &["--rsa-oaep-hash", "sha1"]].concat());
    assert!(
        out.status.success(),
        "SHA-1 OAEP works on SoftHSM: {}",
        stderr(&out)
    );
}

fn seal_probe(f: &Fixture, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["seal", "probe", "--config"])
        .arg(f.config_path())
        .args(args)
        .env("SOFTHSM2_CONF", f.softhsm_conf())
        .output()
        .unwrap()
}

fn seal_probe_json(f: &Fixture) -> (i32, Value) {
    let out = seal_probe(f, &["--format", "json"]);
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stderr(&out)));
    (out.status.code().unwrap(), v)
}

#[test]
fn seal_probe_checks_each_member_and_says_whether_a_restart_would_unseal() {
    let f = Fixture::new();
    let data = f.path("data");
    let listing = |p: &std::path::Path| if p.exists() { walk(p) } else { vec![] };
    let before = listing(&data);
    let (code, v) = seal_probe_json(&f);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["restart_would_unseal"], true);
    assert_eq!(v["unseals_with"], "hsm-pair");
    let members = v["seals"][0]["members"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{v:#}");
    for m in members {
        assert_eq!(m["round_trip_ok"], true, "{v:#}");
        assert!(m["round_trip_ms"].is_u64(), "{v:#}");
    }
    // No stored state is touched.
    assert_eq!(listing(&data), before, "the probe wrote storage");

    // One member away: a restart still unseals, and the table names the member.
    let a = f.remove_token("sealkeeper-a");
    let out = seal_probe(&f, &[]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("A restart now would unseal with seal hsm-pair"),
        "{text}"
    );
    assert!(
        text.contains("hsm-a") && text.contains("round trip failed"),
        "{text}"
    );

    // Both away: it would not, and says so with exit code 1.
    let _b = f.remove_token("sealkeeper-b");
    let out = seal_probe(&f, &[]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("would NOT unseal"), "{text}");
    f.restore_token(&a);

    // --seal names one seal; an unknown name is an error naming the configured ones.
    let out = seal_probe(&f, &["--seal", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("configured: hsm-pair"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_pkcs11_uri_names_module_token_key_and_pin() {
    let f = Fixture::new();
    let uri = format!(
        "pkcs11:token=sealkeeper-b;object=sealkeeper-root;type=secret-key?module-path={}&pin-source=file:{}",
        module(),
        f.path("hsm-b.pin").display()
    );
    let out = probe(&f, &["--uri", &uri, "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["selected"]["token"]["label"], "sealkeeper-b", "{v}");
    assert_eq!(v["key_check"]["ok"], true, "{v}");
    // A key that is not on the token fails the round trip, and a URI that does not parse is named.
    let wrong = uri.replace("object=sealkeeper-root", "object=missing");
    let out = probe(&f, &["--uri", &wrong]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("missing"), "{}", stderr(&out));
    let out = probe(&f, &["--uri", "pkcs11:token=a?pin-value=1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--uri: pin-value"),
        "{}",
        stderr(&out)
    );
}
