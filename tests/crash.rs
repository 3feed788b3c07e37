//! Crash safety: every multi-step seal operation (init, rotate, rotate-root, rewrap, migrate, rekey)
//! is killed with SIGKILL at each of its steps (the debug build's fault-injection points, named by
//! SEALKEEPER_FAULT), and after a restart the node unseals with either the old or the new state,
//! and every transit ciphertext made before still decrypts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// Starts the daemon stopped at `step`, runs `trigger` (which returns the operator command that
/// reaches the step), waits until the daemon is at the step, and kills it with SIGKILL.
fn kill_at(f: &Fixture, step: &str, unsealed: bool, trigger: impl FnOnce(&Daemon) -> Vec<String>) {
    let marker = f.path(&format!("fault-{}", step.replace(':', "-")));
    let d = f.start_with(|c| {
        c.env("SEALKEEPER_FAULT", step)
            .env("SEALKEEPER_FAULT_FILE", &marker);
    });
    if unsealed {
        d.wait_health(200, Duration::from_secs(10));
    }
    let args = trigger(&d);
    let mut op = f
        .command()
        .arg("operator")
        .arg("--socket")
        .arg(f.socket())
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "the daemon never reached {step}; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = d.pid();
    unsafe_free_kill(pid, "KILL");
    drop(d);
    let _ = op.wait();
    std::fs::remove_file(marker).unwrap();
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[test]
fn init_killed_at_each_step_leaves_old_or_new_state() {
    let f = Fixture::new();
    let init = args(&[
        "init",
        "--recovery-shares",
        "3",
        "--recovery-threshold",
        "2",
    ]);
    for step in [
        "init:after-wrap",
        "init:before-root-state",
        "init:before-init-record",
        // Inside the storage transaction: the seal state is written, the init record is not; the
        // undo journal takes the seal state back at the next start.
        "storage:txn-applied-one",
    ] {
        kill_at(&f, step, false, |_| init.clone());
        let mid_txn = step.starts_with("storage:");
        if mid_txn {
            assert!(
                f.state_path().exists() && f.path("data/TXN").exists(),
                "the kill left half a transaction and its journal"
            );
        }
        let d = f.start();
        // The listeners are bound before the store is opened; the first answer on the admin
        // socket comes after it (and after the journal was replayed).
        let st = d.status_json();
        if mid_txn {
            assert!(
                !f.state_path().exists() && !f.path("data/TXN").exists(),
                "the interrupted transaction was undone at start"
            );
        }
        // Uninitialized is decided from storage at start; no background task can change it.
        assert_eq!(st["state"], "uninitialized");
        assert_eq!(
            d.health("").status,
            501,
            "killed at {step}: still uninitialized (the old state)"
        );
    }
    kill_at(&f, "init:after-init-record", false, |_| init.clone());
    let d = f.start();
    d.wait_health(200, Duration::from_secs(10));
    let mut t = TransitProbe::new(&d);
    t.encrypt(&d, "initial");
    t.check(&d, "init");
    let e = d.init_fails();
    assert!(e.contains("already initialized"), "{e}");
}

#[test]
fn rotate_rotate_root_and_rewrap_killed_at_each_step_keep_every_ciphertext() {
    let f = Fixture::new();
    let d = f.start();
    d.init();
    let mut t = TransitProbe::new(&d);
    t.encrypt(&d, "initial");
    drop(d);
    let state = |f: &Fixture| {
        let s = f.read_state().1;
        (s["generation"].as_u64().unwrap(), s["keyring"].clone())
    };
    for (step, op, changes) in [
        ("rotate:before-commit", "rotate", false),
        ("rotate:after-commit", "rotate", true),
        ("rotate-root:after-wrap", "rotate-root", false),
        ("rotate-root:before-commit", "rotate-root", false),
        ("rotate-root:after-commit", "rotate-root", true),
        ("rewrap:before-commit", "rewrap", false),
        ("rewrap:after-commit", "rewrap", false),
    ] {
        let before = state(&f);
        let blob_before = f.read_state().1["wrappings"]["hsm-pair"]["blob"].clone();
        kill_at(&f, step, true, |_| args(&[op]));
        let after = state(&f);
        assert_eq!(
            after != before,
            changes,
            "killed at {step}: the stored state must be {}",
            if changes {
                "the new one"
            } else {
                "the old one"
            }
        );
        if step == "rewrap:after-commit" {
            assert_ne!(
                f.read_state().1["wrappings"]["hsm-pair"]["blob"],
                blob_before,
                "the rewrap was committed"
            );
        }
        let d = f.start();
        d.wait_health(200, Duration::from_secs(10));
        t.check(&d, step);
    }
    let d = f.start();
    d.wait_health(200, Duration::from_secs(10));
    let st = d.status_json();
    assert_eq!(st["keyring_terms"], json!([1, 2]));
    assert_eq!(st["root_generation"], 2);
}

#[test]
fn migration_killed_at_each_step_leaves_old_or_new_seal() {
    let f = Fixture::new();
    let hsm = f.pkcs11_seal(
        "hsm-pair",
        &["sealkeeper-a", "sealkeeper-b"],
        "sealkeeper-root",
        "",
    );
    let shamir = "[[seal]]\ntype = \"shamir\"\nname = \"keys\"\n";
    f.set_seals(shamir);
    let d = f.start();
    let keys = d.init_shamir();
    let mut t = TransitProbe::new(&d);
    t.encrypt(&d, "initial");
    drop(d);
    f.set_seals(&format!("{shamir}disabled = true\n\n{hsm}"));

    let migrate = |d: &Daemon| {
        d.operator_ok(&["unseal", "--migrate", "--key", &keys[0]]);
        args(&["unseal", "--migrate", "--key", &keys[1]])
    };
    kill_at(&f, "migrate:before-commit", false, migrate);
    // The old state: the migration is still pending and completes.
    let d = f.start();
    d.wait_unseal_attempts(1);
    assert_eq!(d.health("").status, 503);
    assert_eq!(d.get("/v1/sys/seal-status").json()["migration"], true);
    drop(d);

    kill_at(&f, "migrate:after-commit", false, migrate);
    // The new state: the HSM alone unseals.
    let d = f.start();
    d.wait_health(200, Duration::from_secs(10));
    assert_eq!(d.get("/v1/sys/seal-status").json()["migration"], false);
    t.check(&d, "migrate");
}

#[test]
fn rekey_killed_at_each_step_leaves_the_old_or_the_new_keys() {
    let f = Fixture::new();
    let d = f.start();
    let old: Vec<String> = strings(&d.init()["recovery_keys_base64"]);
    let mut t = TransitProbe::new(&d);
    t.encrypt(&d, "initial");
    drop(d);
    let rekey = |d: &Daemon| {
        let v: Value = d.operator_json(&["rekey", "--key-shares", "2", "--key-threshold", "2"]);
        let nonce = v["nonce"].as_str().unwrap().to_string();
        d.operator_ok(&["rekey", "--nonce", &nonce, "--key", &old[0]]);
        args(&["rekey", "--nonce", &nonce, "--key", &old[1]])
    };
    kill_at(&f, "rekey:before-commit", true, rekey);
    let verifier = f.read_state().1["shares"]["verifier"].clone();
    let d = f.start();
    d.wait_health(200, Duration::from_secs(10));
    t.check(&d, "rekey:before-commit");
    assert_eq!(d.status_json()["recovery_shares"], 3, "the old keys stand");
    drop(d);

    kill_at(&f, "rekey:after-commit", true, rekey);
    let stored = f.read_state().1;
    assert_eq!(
        stored["shares"]["verifier"], verifier,
        "the current keys stand until the new ones are verified"
    );
    assert!(stored["shares"]["pending"].is_object(), "the new keys wait");
    let d = f.start();
    d.wait_health(200, Duration::from_secs(10));
    t.check(&d, "rekey:after-commit");
    assert_eq!(d.status_json()["recovery_shares"], 3);
    // The new keys were never printed: discard them; the old ones still authorize a rekey.
    d.operator_ok(&["rekey", "--cancel"]);
    let v: Value = d.operator_json(&["rekey", "--key-shares", "2", "--key-threshold", "2"]);
    let nonce = v["nonce"].as_str().unwrap().to_string();
    d.operator_ok(&["rekey", "--nonce", &nonce, "--key", &old[1]]);
    let v: Value = d.operator_json(&["rekey", "--nonce", &nonce, "--key", &old[2]]);
    let new: Vec<String> = strings(&v["keys_base64"]);
    drop(d);

    // Verification killed before and after its commit: the old or the new keys, never neither.
    let verify = |d: &Daemon| {
        d.operator_ok(&["rekey", "--verify", "--nonce", &nonce, "--key", &new[0]]);
        args(&["rekey", "--verify", "--nonce", &nonce, "--key", &new[1]])
    };
    kill_at(&f, "rekey-verify:before-commit", true, verify);
    assert_eq!(f.read_state().1["shares"]["shares"], 3, "the old keys");
    kill_at(&f, "rekey-verify:after-commit", true, verify);
    let stored = f.read_state().1;
    assert_eq!(stored["shares"]["shares"], 2, "the new keys");
    assert!(stored["shares"]["pending"].is_null());
    let d = f.start();
    d.wait_health(200, Duration::from_secs(10));
    t.check(&d, "rekey-verify");
    assert_eq!(d.status_json()["recovery_shares"], 2);
}
