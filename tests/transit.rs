//! The Transit API against the real daemon: round trips, restarts, rotation, rewrap, minimum
//! versions, associated data, token scoping and revocation, sealed 503, batches, bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use serde_json::{Value, json};

/// An unsealed daemon with keys `vault-prod` and `vault-staging`, a policy per key and a token for
/// vault-prod (all capabilities) created through the operator CLI.
struct Env {
    f: Fixture,
    d: Daemon,
    token: String,
}

fn env() -> Env {
    let f = Fixture::new();
    let d = f.start();
    d.init();
    for k in ["vault-prod", "vault-staging"] {
        d.operator_ok(&["key", "create", k]);
    }
    let token = d.policy_and_token("prod", "vault-prod", "encrypt,decrypt,rewrap,datakey,read");
    d.operator_ok(&[
        "policy",
        "write",
        "staging",
        "--key",
        "vault-staging",
        "--capabilities",
        "encrypt,decrypt",
    ]);
    Env { f, d, token }
}

impl Env {
    fn call(&self, method: &str, path: &str, token: Option<&str>, body: Value) -> HttpResponse {
        http_with(
            self.d.port,
            method,
            path,
            token,
            body.to_string().as_bytes(),
        )
        .unwrap()
    }

    fn op(&self, op: &str, key: &str, body: Value) -> HttpResponse {
        self.call(
            "PUT",
            &format!("/v1/transit/{op}/{key}"),
            Some(&self.token),
            body,
        )
    }

    fn encrypt(&self, key: &str, plaintext: &[u8]) -> String {
        let r = self.op(
            "encrypt",
            key,
            json!({ "plaintext": B64.encode(plaintext) }),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["data"]["ciphertext"].as_str().unwrap().to_string()
    }

    fn decrypt(&self, key: &str, ct: &str) -> HttpResponse {
        self.op("decrypt", key, json!({ "ciphertext": ct }))
    }

    fn plaintext(&self, key: &str, ct: &str) -> Vec<u8> {
        let r = self.decrypt(key, ct);
        assert_eq!(r.status, 200, "{}", r.body);
        B64.decode(r.json()["data"]["plaintext"].as_str().unwrap())
            .unwrap()
    }
}

fn error_of(r: &HttpResponse) -> String {
    r.json()["errors"][0].as_str().unwrap_or("").to_string()
}

#[test]
fn round_trip_and_restart() {
    let mut e = env();
    // What Vault's seal client sends at startup: encrypt "a", then decrypt.
    let ct = e.encrypt("vault-prod", b"a");
    assert!(ct.starts_with("vault:v1:"), "{ct}");
    assert_eq!(e.plaintext("vault-prod", &ct), b"a");
    let r = e.op("encrypt", "vault-prod", json!({ "plaintext": "YQ==" }));
    assert_eq!(r.json()["data"]["key_version"], 1);
    assert!(r.json()["request_id"].is_string() && r.json()["lease_id"] == "");
    let big = vec![7u8; 4096];
    let ct_big = e.encrypt("vault-prod", &big);

    // After a restart and auto-unseal, every earlier ciphertext decrypts and the token still works.
    e.d.stop();
    e.d = e.f.start();
    e.d.wait_health(200, Duration::from_secs(10));
    assert_eq!(e.plaintext("vault-prod", &ct), b"a");
    assert_eq!(e.plaintext("vault-prod", &ct_big), big);

    // Key material, policies and tokens are stored only encrypted.
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    let mut transit_records = 0;
    for entry in walk(&e.f.path("data")) {
        let bytes = std::fs::read(&entry).unwrap();
        for needle in [
            e.token.as_bytes(),
            b"\"versions\"",
            b"latest_version",
            b"capabilities",
            b"vault-prod",
            b"policies",
        ] {
            assert!(
                !contains(&bytes, needle),
                "{:?} in {}",
                String::from_utf8_lossy(needle),
                entry.display()
            );
        }
        transit_records += usize::from(entry.to_string_lossy().contains("/transit/keys/"));
    }
    assert_eq!(transit_records, 2);
}

#[test]
fn rotation_rewrap_and_minimum_versions() {
    let e = env();
    let v1 = e.encrypt("vault-prod", b"secret");
    e.d.operator_ok(&["key", "rotate", "vault-prod"]);
    let v2 = e.encrypt("vault-prod", b"secret");
    assert!(v2.starts_with("vault:v2:"), "{v2}");
    assert_eq!(
        e.plaintext("vault-prod", &v1),
        b"secret",
        "old versions still decrypt"
    );

    let r = e.op("rewrap", "vault-prod", json!({ "ciphertext": v1 }));
    assert_eq!(r.status, 200, "{}", r.body);
    let rewrapped = r.json()["data"]["ciphertext"].as_str().unwrap().to_string();
    assert!(rewrapped.starts_with("vault:v2:"));
    assert_eq!(e.plaintext("vault-prod", &rewrapped), b"secret");

    // Encrypting with an explicit older version works until min_encryption_version forbids it.
    let r = e.op(
        "encrypt",
        "vault-prod",
        json!({ "plaintext": "YQ==", "key_version": 1 }),
    );
    assert_eq!(r.json()["data"]["key_version"], 1, "{}", r.body);

    e.d.operator_ok(&[
        "key",
        "config",
        "vault-prod",
        "--min-decryption-version",
        "2",
    ]);
    let r = e.decrypt("vault-prod", &v1);
    assert_eq!(r.status, 400);
    assert!(
        error_of(&r).contains("below the key's min_decryption_version 2"),
        "{}",
        r.body
    );
    assert_eq!(e.plaintext("vault-prod", &v2), b"secret");

    let meta = e.call(
        "GET",
        "/v1/transit/keys/vault-prod",
        Some(&e.token),
        Value::Null,
    );
    assert_eq!(meta.status, 200, "{}", meta.body);
    let m = &meta.json()["data"];
    assert_eq!(m["type"], "aes256-gcm96");
    assert_eq!(m["latest_version"], 2);
    assert_eq!(m["min_decryption_version"], 2);
    assert_eq!(m["exportable"], false);
    assert_eq!(m["supports_encryption"], true);
    assert!(m["keys"]["1"].is_u64() && m["keys"]["2"].is_u64(), "{m}");

    // A version prefix cannot be swapped: v2's body under a v1 label fails.
    let body = v2.split(':').nth(2).unwrap();
    e.d.operator_ok(&[
        "key",
        "config",
        "vault-prod",
        "--min-decryption-version",
        "1",
    ]);
    let r = e.decrypt("vault-prod", &format!("vault:v1:{body}"));
    assert_eq!(r.status, 400);
    assert!(
        error_of(&r).contains("message authentication failed"),
        "{}",
        r.body
    );
}

#[test]
fn associated_data_must_match() {
    let e = env();
    let aad = B64.encode(b"row-17");
    let r = e.op(
        "encrypt",
        "vault-prod",
        json!({ "plaintext": "c2VjcmV0", "associated_data": aad }),
    );
    let ct = r.json()["data"]["ciphertext"].as_str().unwrap().to_string();
    let ok = e.op(
        "decrypt",
        "vault-prod",
        json!({ "ciphertext": ct, "associated_data": aad }),
    );
    assert_eq!(ok.json()["data"]["plaintext"], "c2VjcmV0");
    for bad in [
        json!({ "ciphertext": ct }),
        json!({ "ciphertext": ct, "associated_data": B64.encode(b"row-18") }),
    ] {
        let r = e.op("decrypt", "vault-prod", bad);
        assert_eq!(r.status, 400);
        assert!(
            error_of(&r).contains("associated_data does not match"),
            "{}",
            r.body
        );
    }
}

#[test]
fn tokens_are_scoped_revocable_and_expire() {
    let e = env();
    // The vault-prod token cannot touch vault-staging, and a staging token cannot read metadata.
    let r = e.op("encrypt", "vault-staging", json!({ "plaintext": "YQ==" }));
    assert_eq!(r.status, 403);
    assert_eq!(error_of(&r), "permission denied");
    // The table shows the display name, and periods as they are written.
    let table = e.d.operator_ok(&[
        "token",
        "create",
        "--policy",
        "staging",
        "--display-name",
        "vault-staging-1",
    ]);
    assert!(
        table.contains("token_display     vault-staging-1"),
        "{table}"
    );
    assert!(table.contains("token_period      768h"), "{table}");
    let table =
        e.d.operator_ok(&["token", "create", "--policy", "staging", "--ttl", "90m"]);
    assert!(table.contains("token_display     token"), "{table}");
    assert!(table.contains("token_duration    90m"), "{table}");
    let staging = e.d.token("staging", &[]);
    let r = e.call(
        "PUT",
        "/v1/transit/encrypt/vault-staging",
        Some(&staging),
        json!({ "plaintext": "YQ==" }),
    );
    assert_eq!(r.status, 200);
    let r = e.call(
        "GET",
        "/v1/transit/keys/vault-staging",
        Some(&staging),
        Value::Null,
    );
    assert_eq!(r.status, 403, "read is not in the staging policy");
    let r = e.call(
        "PUT",
        "/v1/transit/rewrap/vault-staging",
        Some(&staging),
        json!({ "ciphertext": "vault:v1:AAAA" }),
    );
    assert_eq!(r.status, 403, "rewrap is not in the staging policy");

    // Missing and unknown tokens.
    let r = e.call(
        "PUT",
        "/v1/transit/encrypt/vault-prod",
        None,
        json!({ "plaintext": "YQ==" }),
    );
    assert_eq!(r.status, 403);
    let r = e.call(
        "PUT",
        "/v1/transit/encrypt/vault-prod",
        Some("sks.not-a-token"),
        json!({ "plaintext": "YQ==" }),
    );
    assert_eq!(r.status, 403);

    // lookup-self and renew-self (what the seal client does) for a periodic token.
    let r = e.call(
        "GET",
        "/v1/auth/token/lookup-self",
        Some(&e.token),
        Value::Null,
    );
    let d = &r.json()["data"];
    assert_eq!(d["policies"], json!(["prod"]));
    assert_eq!(d["period"], 768 * 3600);
    assert!(d["ttl"].as_u64().unwrap() > 768 * 3600 - 60);
    assert!(d["expire_time"].is_string() && d["accessor"].is_string());
    let r = e.call(
        "PUT",
        "/v1/auth/token/renew-self",
        Some(&e.token),
        json!({ "increment": 0 }),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["auth"]["lease_duration"],
        768 * 3600,
        "renew-self returns the period as the TTL"
    );
    assert_eq!(r.json()["auth"]["renewable"], true);

    // Revocation: 403 at once.
    let accessor = d["accessor"].as_str().unwrap().to_string();
    let list = e.d.operator_ok(&["token", "list"]);
    assert!(
        list.contains(&accessor) && !list.contains(&e.token),
        "{list}"
    );
    e.d.operator_ok(&["token", "revoke", &accessor]);
    let r = e.op("encrypt", "vault-prod", json!({ "plaintext": "YQ==" }));
    assert_eq!(r.status, 403);

    // A token with a TTL expires.
    let short = e.d.token("prod", &["--ttl", "1s"]);
    let r = e.call(
        "PUT",
        "/v1/transit/encrypt/vault-prod",
        Some(&short),
        json!({ "plaintext": "YQ==" }),
    );
    assert_eq!(r.status, 200);
    // Accepted until its TTL ends, then refused.
    let r = wait_for(
        Duration::from_secs(10),
        || {
            let r = e.call(
                "PUT",
                "/v1/transit/encrypt/vault-prod",
                Some(&short),
                json!({ "plaintext": "YQ==" }),
            );
            (r.status != 200).then_some(r)
        },
        || "the 1s token never expired".into(),
    );
    assert_eq!(r.status, 403);
    assert!(error_of(&r).contains("token expired"), "{}", r.body);

    // Token creation checks its policies.
    let out = e.d.operator(&["token", "create", "--policy", "nope"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("policy \"nope\" does not exist"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn sealed_answers_503_on_transit_and_token_paths() {
    let e = env();
    let ct = e.encrypt("vault-prod", b"a");
    e.d.operator_ok(&["seal"]);
    for (m, p, b) in [
        (
            "PUT",
            "/v1/transit/encrypt/vault-prod",
            json!({ "plaintext": "YQ==" }),
        ),
        (
            "PUT",
            "/v1/transit/decrypt/vault-prod",
            json!({ "ciphertext": ct }),
        ),
        (
            "PUT",
            "/v1/auth/token/renew-self",
            json!({ "increment": 0 }),
        ),
        ("GET", "/v1/auth/token/lookup-self", Value::Null),
        ("GET", "/v1/transit/keys/vault-prod", Value::Null),
    ] {
        let r = e.call(m, p, Some(&e.token), b);
        assert_eq!(r.status, 503, "{p}: {}", r.body);
    }
    e.d.operator_ok(&["unseal"]);
    assert_eq!(e.plaintext("vault-prod", &ct), b"a");
}

#[test]
fn batch_with_one_bad_item() {
    let e = env();
    let good = e.encrypt("vault-prod", b"one");
    let r = e.op(
        "decrypt",
        "vault-prod",
        json!({ "batch_input": [
            { "ciphertext": good, "reference": "a" },
            { "ciphertext": "vault:v1:%%%", "reference": "b" },
        ] }),
    );
    assert_eq!(
        r.status, 400,
        "Vault's default for a batch with a failed item"
    );
    let res = &r.json()["data"]["batch_results"];
    assert_eq!(res[0]["plaintext"], B64.encode(b"one"));
    assert_eq!(res[0]["reference"], "a");
    assert!(
        res[1]["error"]
            .as_str()
            .unwrap()
            .contains("not valid base64"),
        "{res}"
    );
    assert_eq!(res[1]["reference"], "b");

    let r = e.op(
        "encrypt",
        "vault-prod",
        json!({ "batch_input": [{ "plaintext": "YQ==" }, { "plaintext": "Yg==" }], "partial_failure_response_code": 207 }),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["data"]["batch_results"].as_array().unwrap().len(),
        2
    );
}

#[test]
fn datakeys() {
    let e = env();
    let r = e.op("datakey/plaintext", "vault-prod", json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    let d = &r.json()["data"];
    let pt = B64.decode(d["plaintext"].as_str().unwrap()).unwrap();
    assert_eq!(pt.len(), 32);
    assert_eq!(
        e.plaintext("vault-prod", d["ciphertext"].as_str().unwrap()),
        pt
    );
    let r = e.op("datakey/wrapped", "vault-prod", json!({ "bits": 512 }));
    assert!(r.json()["data"]["plaintext"].is_null());
    let ct = r.json()["data"]["ciphertext"].as_str().unwrap().to_string();
    assert_eq!(e.plaintext("vault-prod", &ct).len(), 64);
    assert_eq!(
        e.op("datakey/wrapped", "vault-prod", json!({ "bits": 100 }))
            .status,
        400
    );
}

#[test]
fn bad_input_gets_a_precise_400() {
    let e = env();
    let good = e.encrypt("vault-prod", b"x");
    let mut tampered = B64.decode(good.split(':').nth(2).unwrap()).unwrap();
    tampered[14] ^= 1;
    let tampered = format!("vault:v1:{}", B64.encode(tampered));
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "encrypt",
            json!({ "plaintext": "not base64!" }),
            "plaintext is not valid base64",
        ),
        ("encrypt", json!({}), "missing plaintext"),
        (
            "encrypt",
            json!({ "plaintext": "YQ==", "key_version": 9 }),
            "has no version 9",
        ),
        (
            "encrypt",
            json!({ "plaintext": "YQ==", "context": "Y3R4" }),
            "key derivation is not supported",
        ),
        (
            "encrypt",
            json!({ "plaintext": "YQ==", "bogus": 1 }),
            "unknown field `bogus`",
        ),
        (
            "decrypt",
            json!({ "ciphertext": "vault:v1" }),
            "expected vault:v<version>:<base64>",
        ),
        (
            "decrypt",
            json!({ "ciphertext": "vault:v7:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" }),
            "has no version 7",
        ),
        (
            "decrypt",
            json!({ "ciphertext": tampered }),
            "message authentication failed",
        ),
        (
            "decrypt",
            json!({ "ciphertext": "vault:v1:AAAA" }),
            "too short",
        ),
        (
            "decrypt",
            json!({ "ciphertext": good, "associated_data": "%" }),
            "associated_data is not valid base64",
        ),
    ];
    for (op, body, expect) in cases {
        let r = e.op(op, "vault-prod", body.clone());
        assert_eq!(r.status, 400, "{op} {body}: {}", r.body);
        assert!(
            error_of(&r).contains(expect),
            "{op} {body}: expected {expect:?}, got {}",
            r.body
        );
    }
    // Unknown key: the policy check comes first (403); a token allowed every key gets 400.
    let all = e.d.policy_and_token("all", "*", "encrypt");
    let r = e.call(
        "PUT",
        "/v1/transit/encrypt/nope",
        Some(&all),
        json!({ "plaintext": "YQ==" }),
    );
    assert_eq!(r.status, 400);
    assert!(
        error_of(&r).contains("encryption key \"nope\" not found"),
        "{}",
        r.body
    );

    // Malformed JSON and an oversize body.
    let r = http_with(
        e.d.port,
        "PUT",
        "/v1/transit/encrypt/vault-prod",
        Some(&e.token),
        b"{\"plaintext\":",
    )
    .unwrap();
    assert_eq!(r.status, 400);
    assert!(error_of(&r).contains("invalid JSON body"), "{}", r.body);
    let huge = format!("{{\"plaintext\":\"{}\"}}", "A".repeat(1024 * 1024 + 16));
    let r = http_with(
        e.d.port,
        "PUT",
        "/v1/transit/encrypt/vault-prod",
        Some(&e.token),
        huge.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 400);
    assert!(
        error_of(&r).contains("larger than the limit of 1048576 bytes"),
        "{}",
        r.body
    );
    // The daemon is still fine.
    assert_eq!(e.plaintext("vault-prod", &good), b"x");
}

#[test]
fn key_administration() {
    let e = env();
    let list = e.d.operator_ok(&["key", "list"]);
    assert_eq!(
        list.lines().collect::<Vec<_>>(),
        vec!["vault-prod", "vault-staging"]
    );
    let out = e.d.operator(&["key", "create", "vault-prod"]);
    assert!(!out.status.success() && stderr(&out).contains("already exists"));
    let out = e.d.operator(&["key", "create", "bad/name"]);
    assert!(!out.status.success());
    let show: Value =
        serde_json::from_str(&e.d.operator_ok(&["key", "show", "vault-prod", "--format", "json"]))
            .unwrap();
    assert_eq!(show["latest_version"], 1);

    // Deletion needs deletion_allowed first.
    let out = e.d.operator(&["key", "delete", "vault-staging"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("deletion is not allowed"),
        "{}",
        stderr(&out)
    );
    e.d.operator_ok(&[
        "key",
        "config",
        "vault-staging",
        "--deletion-allowed",
        "true",
    ]);
    e.d.operator_ok(&["key", "delete", "vault-staging"]);
    assert_eq!(e.d.operator_ok(&["key", "list"]).trim(), "vault-prod");

    // Policies from a TOML file.
    let file = e.f.path("policy.toml");
    std::fs::write(
        &file,
        "[[rules]]\nkey = \"vault-*\"\ncapabilities = [\"encrypt\", \"read\"]\n",
    )
    .unwrap();
    e.d.operator_ok(&["policy", "write", "fleet", "--file", file.to_str().unwrap()]);
    let show = e.d.operator_ok(&["policy", "show", "fleet"]);
    assert!(show.contains("vault-*"), "{show}");
    assert!(e.d.operator_ok(&["policy", "list"]).contains("fleet"));
    e.d.operator_ok(&["policy", "delete", "fleet"]);
    assert!(!e.d.operator_ok(&["policy", "list"]).contains("fleet"));
    let out = e.d.operator(&[
        "policy",
        "write",
        "x",
        "--key",
        "k",
        "--capabilities",
        "sign",
    ]);
    assert!(!out.status.success() && stderr(&out).contains("unknown capability"));

    // A mistake in a policy file is reported at its line and column, TOML or JSON.
    let p = file.to_str().unwrap();
    for (text, want) in [
        (
            "[[rules]]\nkey = \"vault-*\"\ncapabilites = [\"encrypt\"]\n",
            ":3:1: unknown field `capabilites`",
        ),
        (
            "[[rules]]\nkey = \"vault-*\"\ncapabilities = [\"encrpyt\"]\n",
            ":3:17: unknown variant `encrpyt`",
        ),
        (
            "{\"rules\": [\n  {\"key\": \"k\", \"capabilites\": []}\n]}",
            ":2:28: unknown field `capabilites`",
        ),
        (
            "[[rules]]\nkey = \"k\"\ncapabilities = [\"metrics\"]\n",
            "not per key",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let out = e.d.operator(&["policy", "write", "x", "--file", p]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{text}");
        assert!(
            err.contains(&format!("{p}{want}")) || (want == "not per key" && err.contains(want)),
            "{want}: {err}"
        );
    }
}

#[test]
fn a_tampered_transit_record_keeps_the_node_sealed_with_its_name() {
    let mut e = env();
    e.d.stop();
    let rec = e.f.read_record("transit/keys/vault-prod").unwrap();
    let mut value = rec.value;
    let n = value.len();
    value[n - 3] ^= 1;
    e.f.write_record("transit/keys/vault-prod", &value, rec.revision);
    e.d = e.f.start();
    e.d.wait_unseal_attempts(1);
    assert_eq!(e.d.health("").status, 503);
    let err = e.d.last_unseal_error();
    assert!(
        err.contains("transit/keys/vault-prod") && err.contains("authentication failed"),
        "{err}"
    );
}

#[test]
fn mount_path_is_configurable() {
    let f = Fixture::new();
    f.edit_config(|c| {
        format!("{c}\n[transit]\nmount = \"seal/transit\"\nmax_request_bytes = 4096\n")
    });
    let d = f.start();
    d.init();
    d.operator_ok(&["key", "create", "--mount", "seal/transit", "k"]);
    let token = d.policy_and_token("p", "k", "encrypt");
    let r = http_with(
        d.port,
        "PUT",
        "/v1/seal/transit/encrypt/k",
        Some(&token),
        br#"{"plaintext":"YQ=="}"#,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let r = http_with(
        d.port,
        "PUT",
        "/v1/transit/encrypt/k",
        Some(&token),
        br#"{"plaintext":"YQ=="}"#,
    )
    .unwrap();
    assert_eq!(r.status, 404);
    let big = format!("{{\"plaintext\":\"{}\"}}", "A".repeat(5000));
    let r = http_with(
        d.port,
        "PUT",
        "/v1/seal/transit/encrypt/k",
        Some(&token),
        big.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 400);
    assert!(error_of(&r).contains("limit of 4096 bytes"), "{}", r.body);
}
