//! Secret hygiene: after a full scenario no PIN, plaintext, token, share or key appears in the
//! logs, the audit file, the stored files or the process environment; key memory is locked and the
//! process is not dumpable. Files that others could change are refused.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use serde_json::json;

#[test]
fn no_secret_leaves_the_process() {
    let f = Fixture::new();
    let mut d = f.start();
    let init = d.init();
    d.operator_ok(&["key", "create", "vault-prod"]);
    let token = d.policy_and_token("prod", "vault-prod", "encrypt,decrypt,datakey");

    let plaintext = b"plaintext-canary-4711 do not leak";
    let r = d.put(
        "/v1/transit/encrypt/vault-prod",
        &token,
        &json!({ "plaintext": B64.encode(plaintext) }),
    );
    assert_eq!(r.status, 200);
    let ct = r.json()["data"]["ciphertext"].as_str().unwrap().to_string();
    let r = d.put(
        "/v1/transit/decrypt/vault-prod",
        &token,
        &json!({ "ciphertext": ct }),
    );
    assert_eq!(r.status, 200);
    let r = d.put(
        "/v1/transit/datakey/plaintext/vault-prod",
        &token,
        &json!({}),
    );
    let datakey = r.json()["data"]["plaintext"].as_str().unwrap().to_string();

    // While it runs: locked memory, not dumpable, nothing secret in its environment.
    let pid = d.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let vmlck: u64 = status
        .lines()
        .find(|l| l.starts_with("VmLck:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(vmlck > 0, "{status}");
    let st = d.status_json();
    assert_eq!(st["dumpable"], false);
    assert_eq!(st["memory_locked"], true);
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();

    d.operator_ok(&["seal"]);
    d.stop();

    let mut secrets: Vec<(String, Vec<u8>)> = vec![
        ("PIN a".into(), f.pin("a").into_bytes()),
        ("PIN b".into(), f.pin("b").into_bytes()),
        ("plaintext".into(), plaintext.to_vec()),
        (
            "plaintext (base64)".into(),
            B64.encode(plaintext).into_bytes(),
        ),
        ("token".into(), token.clone().into_bytes()),
        ("ciphertext".into(), ct.clone().into_bytes()),
        ("data key".into(), datakey.into_bytes()),
    ];
    for k in init["recovery_keys"]
        .as_array()
        .unwrap()
        .iter()
        .chain(init["recovery_keys_base64"].as_array().unwrap())
    {
        secrets.push((
            "recovery share".into(),
            k.as_str().unwrap().as_bytes().to_vec(),
        ));
    }
    let mut places: Vec<(String, Vec<u8>)> = vec![
        ("environ".into(), environ),
        ("daemon log".into(), d.log().into_bytes()),
    ];
    for p in walk(&f.path("data")) {
        places.push((p.display().to_string(), std::fs::read(&p).unwrap()));
    }
    places.push((
        "audit log".into(),
        std::fs::read(f.path("audit.log")).unwrap(),
    ));
    for (place, bytes) in &places {
        for (what, secret) in &secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_slice()),
                "{what} found in {place}"
            );
        }
    }
}

#[test]
fn files_that_others_can_change_are_refused() {
    let f = Fixture::new();
    std::fs::set_permissions(f.config_path(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let e = f.start_fails();
    assert!(e.contains("writable by anyone"), "{e}");

    std::fs::set_permissions(f.config_path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(f.path("data"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = f.start_fails();
    assert!(e.contains("is world-writable"), "{e}");

    std::fs::set_permissions(f.path("data"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let d = f.start();
    d.wait_health(501, Duration::from_secs(5));
}

/// Counts `needle` in a core dump of the running daemon (gcore, as root: the process is
/// non-dumpable to its own user, not to root).
fn copies_in_core(d: &Daemon, dir: &std::path::Path, needles: &[&[u8]]) -> Vec<usize> {
    let prefix = dir.join("core");
    let out = std::process::Command::new("gcore")
        .arg("-o")
        .arg(&prefix)
        .arg(d.pid().to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "gcore: {}", stderr(&out));
    let path = std::path::PathBuf::from(format!("{}.{}", prefix.display(), d.pid()));
    let data = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    needles
        .iter()
        .map(|n| data.windows(n.len()).filter(|w| w == n).count())
        .collect()
}

#[test]
fn transit_plaintexts_do_not_outlive_their_requests_in_memory() {
    let f = Fixture::new();
    let d = f.start();
    d.init();
    // Key k, policy p (encrypt, decrypt) and a token for it.
    let token = TransitProbe::new(&d).token;
    let canary = b"CANARY-in-core-3f9e1c77d2";
    let b64 = B64.encode(canary);
    for _ in 0..20 {
        let r = d.put(
            "/v1/transit/encrypt/k",
            &token,
            &json!({ "plaintext": b64 }),
        );
        assert_eq!(r.status, 200);
        let ct = r.json()["data"]["ciphertext"].as_str().unwrap().to_string();
        let r = d.put(
            "/v1/transit/decrypt/k",
            &token,
            &json!({ "ciphertext": ct }),
        );
        assert_eq!(r.json()["data"]["plaintext"], b64.as_str());
    }
    // Every connection was closed (Connection: close). Wait until the daemon has dropped its side
    // of each (no socket of its port left established or half-closed): its buffers are then
    // freed, and freed memory is wiped, as are the handlers' own copies.
    let port = format!(":{:04X}", d.port);
    wait_for(
        Duration::from_secs(10),
        || {
            let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
            let open = tcp.lines().skip(1).any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[1].ends_with(&port) && (f[3] == "01" || f[3] == "08")
            });
            (!open).then_some(())
        },
        || "connections stayed open".into(),
    );
    let work = tempfile::tempdir().unwrap();
    let counts = copies_in_core(&d, work.path(), &[b64.as_bytes(), canary]);
    assert_eq!(counts, vec![0, 0], "copies of the plaintext (base64, raw)");
}
