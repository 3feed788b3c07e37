//! The RSA-OAEP mechanism (for HSMs without AES-GCM, e.g. YubiHSM 2): the HSM wraps an envelope
//! key, the envelope (AES-256-GCM) binds the associated data.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// One RSA-2048 key pair, imported into both tokens (as a cloned pair holds it).
fn rsa_fixture(hash: &str, bits: u32) -> Fixture {
    let f = Fixture::new();
    let key = f.path("rsa.pem");
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            &format!("rsa_keygen_bits:{bits}"),
            "-out",
        ])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    for m in ["a", "b"] {
        let pin = f.pin(m);
        let out = Command::new("softhsm2-util")
            .arg("--import")
            .arg(&key)
            .args([
                "--token",
                &format!("sealkeeper-{m}"),
                "--label",
                "sealkeeper-rsa",
                "--id",
                "02",
                "--pin",
                &pin,
            ])
            .env("SOFTHSM2_CONF", f.softhsm_conf())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    std::fs::remove_file(&key).unwrap();
    f.edit_config(|c| {
        c.replace(
            "key_label = \"sealkeeper-root\"",
            "key_label = \"sealkeeper-rsa\"",
        )
        .replace("key_id = \"01\"", "key_id = \"02\"")
        .replace(
            "mechanism = \"CKM_AES_GCM\"",
            &format!("mechanism = \"0x0009\"\nrsa_oaep_hash = \"{hash}\""),
        )
    });
    f
}

#[test]
fn rsa_oaep_init_restart_and_tamper() {
    let f = rsa_fixture("sha1", 2048);
    let mut d = f.start();
    d.init();
    assert_eq!(d.health("").status, 200);
    d.stop();
    let (header, state) = f.read_state();
    let blob = state["wrappings"]["hsm-pair"]["blob"].clone();
    assert_eq!(blob["mechanism"], "CKM_RSA_PKCS_OAEP");
    assert_eq!(blob["oaep_hash"], "sha1");
    assert!(
        blob["wrapped_key"].as_str().unwrap().len() > 300,
        "a 2048-bit OAEP block"
    );

    let mut d = f.start();
    d.wait_health(200, Duration::from_secs(10));
    assert_eq!(d.status_json()["unsealed_by"], "hsm-a");
    d.stop();

    // Changing the associated data the envelope is bound to is detected.
    let mut state = state;
    let ct = blob["ciphertext"].as_str().unwrap().to_string();
    let mut bytes = base64_decode(&ct);
    bytes[0] ^= 1;
    state["wrappings"]["hsm-pair"]["blob"]["ciphertext"] = base64_encode(&bytes).into();
    f.write_state(header, &state);
    let d = f.start();
    d.wait_unseal_attempts(1);
    assert_eq!(d.health("").status, 503);
    let err = d.last_unseal_error();
    assert!(err.contains("envelope: authentication failed"), "{err}");
}

#[test]
fn oaep_hash_the_hsm_lacks_fails_clearly() {
    // SoftHSM 2.6 does OAEP with SHA-1 only.
    let f = rsa_fixture("sha256", 2048);
    let d = f.start();
    let e = d.init_fails();
    assert!(e.contains("C_Encrypt") && e.contains("CKR_"), "{e}");
    assert_eq!(d.health("").status, 501);
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn fips_mode_refuses_an_rsa_key_below_2048_bits() {
    let f = rsa_fixture("sha256", 1024);
    let tls = Fixture::with_tls();
    // fips_mode needs TLS: take the TLS settings of a fresh fixture's config.
    let cert = tls.path("tls/server.crt");
    let key = tls.path("tls/server.key");
    f.edit_config(|c| {
        format!("fips_mode = true\n{c}").replace(
            "tls_disable = true",
            &format!(
                "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
                cert.display(),
                key.display()
            ),
        )
    });
    let d = f.start();
    let e = d.init_fails();
    assert!(
        e.contains("has 1024 bits; fips_mode requires at least 2048"),
        "{e}"
    );
}
