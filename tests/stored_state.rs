//! Bad stored state: a tampered, truncated or foreign blob keeps the node sealed with a clear
//! error, and no failed operation rewrites or deletes it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use serde_json::Value;

fn initialized_fixture() -> Fixture {
    let f = Fixture::new();
    let mut d = f.start();
    d.init();
    assert_eq!(d.stop().code(), Some(0));
    f
}

/// The seal state's revision, the state, and the HSM pair's blob (wrappings.hsm-pair.blob).
fn read_blob(f: &Fixture) -> (u64, Value, Value) {
    let (h, state) = f.read_state();
    let blob = state["wrappings"]["hsm-pair"]["blob"].clone();
    (h, state, blob)
}

fn write_blob(f: &Fixture, revision: u64, state: &Value, blob: &Value) {
    let mut state = state.clone();
    state["wrappings"]["hsm-pair"]["blob"] = blob.clone();
    f.write_state(revision, &state);
}

/// Starts, checks it stays sealed with `expect` in the error, also after an operator attempt,
/// and that the blob bytes are unchanged.
fn assert_sealed_with(f: &Fixture, expect: &str) {
    let before = std::fs::read(f.state_path()).unwrap();
    let d = f.start();
    d.wait_unseal_attempts(1);
    assert_eq!(d.health("").status, 503);
    let st = d.status_json();
    let err = st["last_unseal_error"].as_str().unwrap_or("");
    assert!(err.contains(expect), "expected {expect:?} in {err:?}");
    let out = d.operator(&["unseal"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(expect), "{}", stderr(&out));
    assert_eq!(d.health("").status, 503);
    assert_eq!(
        std::fs::read(f.state_path()).unwrap(),
        before,
        "the stored blob was changed"
    );
}

#[test]
fn tampered_ciphertext_is_refused_and_kept() {
    let f = initialized_fixture();
    let (h, state, mut blob) = read_blob(&f);
    let mut ct = B64.decode(blob["ciphertext"].as_str().unwrap()).unwrap();
    ct[5] ^= 0x01;
    blob["ciphertext"] = B64.encode(ct).into();
    write_blob(&f, h, &state, &blob);
    assert_sealed_with(
        &f,
        "the stored blob was modified, or was wrapped by a different key",
    );
}

#[test]
fn tampered_header_is_refused() {
    let f = initialized_fixture();
    let (h, state, mut blob) = read_blob(&f);
    blob["purpose"] = "transit-key".into();
    write_blob(&f, h, &state, &blob);
    assert_sealed_with(
        &f,
        "stored blob is for \"transit-key\", expected \"root-key\"",
    );
}

#[test]
fn truncated_blob_is_refused() {
    let f = initialized_fixture();
    let raw = std::fs::read(f.state_path()).unwrap();
    std::fs::write(f.state_path(), &raw[..raw.len() / 2]).unwrap();
    assert_sealed_with(&f, "core/seal/state");
}

#[test]
fn foreign_installation_blob_is_refused() {
    let a = initialized_fixture();
    let b = initialized_fixture();
    std::fs::copy(b.state_path(), a.state_path()).unwrap();
    assert_sealed_with(&a, "it was copied from another installation");
}

#[test]
fn blob_wrapped_by_another_key_is_refused() {
    // B's blob, relabelled as A's (same installation id and associated data), was wrapped by B's
    // key, which A's HSMs do not hold.
    let a = initialized_fixture();
    let b = initialized_fixture();
    let (h, a_state, a_blob) = read_blob(&a);
    let (_, _, mut b_blob) = read_blob(&b);
    for k in ["installation_id", "aad"] {
        b_blob[k] = a_blob[k].clone();
    }
    write_blob(&a, h, &a_state, &b_blob);
    assert_sealed_with(&a, "C_Decrypt failed: CKR_");
    assert_sealed_with(&a, "or was wrapped by a different key");
}

#[test]
fn missing_blob_is_named() {
    let f = initialized_fixture();
    std::fs::remove_file(f.state_path()).unwrap();
    let d = f.start();
    d.wait_unseal_attempts(1);
    assert_eq!(d.health("").status, 503);
    let err = d.last_unseal_error();
    assert!(
        err.contains("the seal state core/seal/state is missing"),
        "{err}"
    );
}

#[test]
fn a_second_daemon_on_the_same_storage_is_refused() {
    let f = Fixture::new();
    let _d = f.start();
    // Another listener port and socket, same storage.
    let other = f.path("other.toml");
    let cfg = f
        .config()
        .replace(&format!(":{}", f.port), &format!(":{}", free_port()))
        .replace("admin.sock", "admin2.sock");
    std::fs::write(&other, cfg).unwrap();
    let out = f
        .command()
        .arg("server")
        .arg("--config")
        .arg(&other)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("in use by another sealkeeper process"),
        "{}",
        stderr(&out)
    );
}

/// Makes a directory immutable (even root cannot add entries) for the life of the guard.
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn new(dir: std::path::PathBuf) -> Immutable {
        std::fs::create_dir_all(&dir).unwrap();
        let st = std::process::Command::new("chattr")
            .arg("+i")
            .arg(&dir)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "chattr +i {} failed: the test needs ext4/xfs and root",
            dir.display()
        );
        Immutable(dir)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn disk_failure_during_init_leaves_the_node_uninitialized_and_init_can_be_retried() {
    let f = Fixture::new();
    let d = f.start();
    // The seal state lands in core/seal/, then the init record in core/: make the second write
    // fail after the first succeeded, as a disk that fills up half-way.
    std::fs::create_dir_all(f.path("data/data/core/seal")).unwrap();
    let guard = Immutable::new(f.path("data/data/core"));
    let out = d.operator(&[
        "init",
        "--recovery-shares",
        "3",
        "--recovery-threshold",
        "2",
    ]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("storage I/O error") && e.contains("core/init"),
        "{e}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("Recovery Key"),
        "no shares handed out"
    );
    assert_eq!(
        d.health("").status,
        501,
        "a failed init leaves the node uninitialized"
    );
    // The seal state and the init record are one transaction: the seal state, written first, was
    // taken back when the init record failed.
    assert!(
        !f.state_path().exists(),
        "the seal state of the failed init was left behind"
    );
    assert!(
        !f.path("data/TXN").exists(),
        "the transaction journal was left behind"
    );

    drop(guard);
    d.init();
    assert_eq!(d.health("").status, 200);
    drop(d);
    let d = f.start();
    d.wait_health(200, Duration::from_secs(10));
}

/// Copies `from` into `to` recursively (files and directories).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// Every stored record's bytes, by path under the storage directory.
fn records(f: &Fixture) -> std::collections::BTreeMap<String, Vec<u8>> {
    let root = f.path("data/data");
    walk(&root)
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (rel, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// A state directory and token pair made by the sealkeeper of commit 620463f (the last one before
/// storage and seals were reshaped; `tests/fixtures/make-state-format-1.sh`) unseals, serves its
/// transit key, policy and token, and nothing stored is rewritten until a new write.
#[test]
fn a_state_written_by_the_previous_format_unseals_and_is_not_rewritten() {
    let fixture = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/state-format-1"
    ));
    let expect: Value =
        serde_json::from_slice(&std::fs::read(fixture.join("expect.json")).unwrap()).unwrap();
    let f = Fixture::new();
    std::fs::remove_dir_all(f.path("tokens")).unwrap();
    copy_tree(&fixture.join("tokens"), &f.path("tokens"));
    copy_tree(&fixture.join("data"), &f.path("data"));
    for pin in ["hsm-a.pin", "hsm-b.pin"] {
        std::fs::copy(fixture.join(pin), f.path(pin)).unwrap();
        // A checkout keeps no file modes but the executable bit: the PIN file must be 0600.
        std::fs::set_permissions(
            f.path(pin),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
    }
    let before = records(&f);
    assert!(before.contains_key("core/seal/state") && before.contains_key("transit/keys/compat"));

    let d = f.start();
    d.wait_health(200, Duration::from_secs(10));
    let token = expect["token"].as_str().unwrap();
    let r = d.put(
        "/v1/transit/decrypt/compat",
        token,
        &serde_json::json!({ "ciphertext": expect["ciphertext"] }),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let body: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["data"]["plaintext"], expect["plaintext"]);

    // Unsealing and serving wrote nothing. (audit/anchor is this run's own new write: the anchor
    // task records the newest keyed audit record.)
    let unchanged = |now: &std::collections::BTreeMap<String, Vec<u8>>| {
        before
            .iter()
            .filter(|(k, _)| k.as_str() != "audit/anchor")
            .all(|(k, v)| now.get(k) == Some(v))
    };
    assert!(unchanged(&records(&f)), "a stored record was rewritten");

    // A new write changes its own record only.
    d.operator_ok(&["key", "rotate", "compat"]);
    let after = records(&f);
    assert_ne!(after["transit/keys/compat"], before["transit/keys/compat"]);
    for k in ["core/init", "core/seal/state", "auth/policies/compat"] {
        assert_eq!(after[k], before[k], "{k} was rewritten");
    }
    let r = d.put(
        "/v1/transit/decrypt/compat",
        token,
        &serde_json::json!({ "ciphertext": expect["ciphertext"] }),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}
