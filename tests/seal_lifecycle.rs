//! The seal lifecycle against the real daemon and SoftHSM (two token pairs for two seals): the
//! Shamir seal, several seals with priorities, rotate and rotate-root, rewrap after a key label
//! change, seal migration in each direction, recovery-key rekey, the recovery-key fallback, and
//! refused configuration changes. Transit ciphertexts made before each operation must decrypt
//! after it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use serde_json::{Value, json};

const SHAMIR: &str = "[[seal]]\ntype = \"shamir\"\nname = \"keys\"\n";

fn seal_info<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["seals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no seal {name} in {status:#}"))
}

fn unseal_key(d: &Daemon, key: &str, migrate: bool) -> Value {
    let mut args = vec!["unseal", "--key", key, "--format", "json"];
    if migrate {
        args.push("--migrate");
    }
    serde_json::from_str(&d.operator_ok(&args)).unwrap()
}

#[test]
fn shamir_seal_needs_a_quorum_of_unseal_keys_at_every_start() {
    let f = Fixture::new();
    f.set_seals(SHAMIR);
    let mut d = f.start();
    let keys = d.init_shamir();
    assert_eq!(keys.len(), 3);
    assert_eq!(d.health("").status, 200, "init leaves the node unsealed");
    let mut tp = TransitProbe::new(&d);
    let ct = tp.encrypt(&d, "before restart");
    d.stop();

    let d = f.start();
    d.wait_unseal_attempts(1);
    assert_eq!(
        d.health("").status,
        503,
        "a shamir seal never unseals by itself"
    );
    let st = d.get("/v1/sys/seal-status").json();
    assert_eq!(st["type"], "shamir");
    assert_eq!((st["t"].as_u64(), st["n"].as_u64()), (Some(2), Some(3)));
    assert_eq!(st["progress"], 0);
    assert_eq!(st["recovery_seal"], false);

    // A corrupted share is rejected and does not count.
    let mut bad = B64.decode(&keys[0]).unwrap();
    bad[10] ^= 1;
    let out = d.operator(&["unseal", "--key", &B64.encode(bad)]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("checksum mismatch"),
        "{}",
        stderr(&out)
    );
    assert_eq!(d.get("/v1/sys/seal-status").json()["progress"], 0);

    let v = unseal_key(&d, &keys[0], false);
    assert_eq!(v["progress"], 1);
    assert_eq!(v["sealed"], true);
    let nonce = v["nonce"].as_str().unwrap().to_string();
    assert!(!nonce.is_empty());
    // The same share twice does not count twice.
    let out = d.operator(&["unseal", "--key", &keys[0]]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already submitted"),
        "{}",
        stderr(&out)
    );
    // --reset clears the progress.
    d.operator_ok(&["unseal", "--reset"]);
    assert_eq!(d.get("/v1/sys/seal-status").json()["progress"], 0);

    // The share from a prompt-less standard input works as well as --key.
    let out = f
        .command()
        .args(["operator", "--socket"])
        .arg(f.socket())
        .args(["unseal", "--key"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(format!("{}\n", keys[2]).as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v = unseal_key(&d, &keys[1], false);
    assert_eq!(v["sealed"], false, "{v}");
    assert_eq!(d.health("").status, 200);
    tp.assert_decrypts(&d, &ct, "before restart");
    let st = d.status_json();
    assert_eq!(st["unsealed_by_seal"], "keys");
    d.operator_ok(&["seal"]);
    assert_eq!(d.health("").status, 503);
    // No unseal key reaches a log, the audit trail or the stored state, in any encoding.
    let audit = std::fs::read_to_string(f.path("audit.log")).unwrap();
    let state = String::from_utf8_lossy(&std::fs::read(f.state_path()).unwrap()).into_owned();
    for k in &keys {
        let hex = hex_of(&B64.decode(k).unwrap());
        for text in [&audit, &state, &d.log()] {
            assert!(
                !text.contains(k.as_str()) && !text.contains(&hex),
                "an unseal key leaked"
            );
        }
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Two pkcs11 seals: `primary` on tokens a/b (priority 1), `secondary` on tokens c/d (priority 2).

#[test]
fn several_seals_fall_through_by_priority_and_a_returning_seal_is_wrapped() {
    let f = Fixture::two_seals();
    let mut d = f.start();
    d.init();
    let st = d.status_json();
    for s in ["primary", "secondary"] {
        assert_eq!(seal_info(&st, s)["wrapping_current"], true, "{st:#}");
    }
    assert_eq!(st["unsealed_by_seal"], "primary");
    let mut tp = TransitProbe::new(&d);
    let ct1 = tp.encrypt(&d, "one");
    d.stop();

    // The first seal is down at unseal: the second one unseals.
    let a = f.remove_token("sealkeeper-a");
    let b = f.remove_token("sealkeeper-b");
    let mut d = f.start();
    d.wait_health(200, Duration::from_secs(20));
    let st = d.status_json();
    assert_eq!(st["unsealed_by_seal"], "secondary", "{st:#}");
    let backends = d.get("/v1/sys/seal-backend-status").json();
    assert_eq!(backends["healthy"], false, "{backends}");
    let primary = backends["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "primary")
        .unwrap()
        .clone();
    assert_eq!(primary["healthy"], false, "{backends}");
    assert!(primary["unhealthy_since"].is_string(), "{backends}");

    // ... and at rotate-root: the new root key is wrapped by the second seal only.
    let out = d.operator(&["rotate-root", "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (report["succeeded"].as_u64(), report["failed"].as_u64()),
        (Some(1), Some(1))
    );
    let st = d.status_json();
    assert_eq!(st["root_generation"], 2);
    assert_eq!(strings(&st["seals_missing_wrapping"]), vec!["primary"]);
    assert_eq!(seal_info(&st, "primary")["wrapping_current"], false);
    let ct2 = tp.encrypt(&d, "two");

    // The first seal comes back: it is wrapped without an operator.
    f.restore_token(&a);
    f.restore_token(&b);
    d.wait_status(
        "the primary seal wrapped again",
        Duration::from_secs(30),
        |s| {
            s["seals_missing_wrapping"]
                .as_array()
                .is_some_and(|m| m.is_empty())
        },
    );
    let rewrap = d.admin_curl("GET", "/v1/sys/sealwrap/rewrap", None).json();
    assert_eq!(rewrap["data"]["is_running"], false);
    assert_eq!(
        rewrap["data"]["last_operation"]["operation"], "catch-up",
        "{rewrap}"
    );
    d.stop();

    // Now the second seal is down: the first unseals with the new root key.
    let _c = f.remove_token("sealkeeper-c");
    let _d = f.remove_token("sealkeeper-d");
    let d = f.start();
    d.wait_health(200, Duration::from_secs(20));
    assert_eq!(d.status_json()["unsealed_by_seal"], "primary");
    tp.assert_decrypts(&d, &ct1, "one");
    tp.assert_decrypts(&d, &ct2, "two");
}

#[test]
fn rotate_and_rotate_root_keep_every_ciphertext() {
    let f = Fixture::new();
    let mut d = f.start();
    d.init();
    let mut tp = TransitProbe::new(&d);
    let ct1 = tp.encrypt(&d, "before rotate");
    let out = d.operator_ok(&["rotate"]);
    assert!(out.contains("term 2"), "{out}");
    assert_eq!(d.status_json()["keyring_terms"], json!([1, 2]));
    // A record written now uses term 2 (a new transit key), and a record of term 1 still opens.
    d.operator_ok(&["key", "create", "k2"]);
    let ct2 = tp.encrypt(&d, "after rotate");
    let before = f.read_state().1;
    d.operator_ok(&["rotate-root"]);
    let after = f.read_state().1;
    assert_eq!(after["generation"], 2);
    assert_ne!(before["root_check"], after["root_check"], "a new root key");
    assert_ne!(
        before["keyring"], after["keyring"],
        "the keyring re-encrypted"
    );
    let ct3 = tp.encrypt(&d, "after rotate-root");
    d.stop();
    let audit = std::fs::read_to_string(f.path("audit.log")).unwrap();
    for op in ["\"rotate\"", "\"rotate-root\""] {
        assert!(audit.contains(op), "{op} is audited");
    }

    let d = f.start();
    d.wait_health(200, Duration::from_secs(10));
    let st = d.status_json();
    assert_eq!(st["keyring_terms"], json!([1, 2]));
    assert_eq!(st["root_generation"], 2);
    tp.assert_decrypts(&d, &ct1, "before rotate");
    tp.assert_decrypts(&d, &ct2, "after rotate");
    tp.assert_decrypts(&d, &ct3, "after rotate-root");
    let keys = d.operator_ok(&["key", "list", "--format", "json"]);
    assert!(keys.contains("k2"), "{keys}");
}

#[test]
fn rewrap_moves_the_root_key_to_a_new_hsm_key() {
    let f = Fixture::new();
    let mut d = f.start();
    d.init();
    let mut tp = TransitProbe::new(&d);
    let ct = tp.encrypt(&d, "secret");
    d.stop();

    f.add_key(
        &["sealkeeper-a", "sealkeeper-b"],
        "sealkeeper-root-2026",
        "02",
    );
    f.edit_config(|c| {
        c.replace(
            "key_label = \"sealkeeper-root\"",
            "key_label = \"sealkeeper-root-2026\"",
        )
        .replace("key_id = \"01\"", "key_id = \"02\"")
    });
    // The blob records the old key: the node still unseals with it, and says it needs a rewrap.
    let d = f.start();
    d.wait_health(200, Duration::from_secs(10));
    let st = d.status_json();
    let s = seal_info(&st, "hsm-pair");
    assert_eq!(s["wrapped_by_key"], "sealkeeper-root:01", "{st:#}");
    assert_eq!(s["wrapped_by_configured_key"], false);
    let table = d.operator_ok(&["status"]);
    assert!(table.contains("operator rewrap"), "{table}");

    let out = d.operator_ok(&["rewrap"]);
    assert!(out.contains("sealkeeper-root-2026:02"), "{out}");
    let st = d.status_json();
    let s = seal_info(&st, "hsm-pair");
    assert_eq!(s["wrapped_by_key"], "sealkeeper-root-2026:02");
    assert_eq!(s["wrapped_by_configured_key"], true);
    let progress = d.admin_curl("GET", "/v1/sys/sealwrap/rewrap", None).json();
    assert_eq!(progress["data"]["entries"]["succeeded"], 1, "{progress}");
    drop(d);

    // The old key can go: the node unseals with the new one.
    f.delete_key(&["sealkeeper-a", "sealkeeper-b"], "sealkeeper-root");
    let d = f.start();
    d.wait_health(200, Duration::from_secs(10));
    tp.assert_decrypts(&d, &ct, "secret");
}

#[test]
fn migration_from_shamir_to_pkcs11_and_back() {
    let f = Fixture::new();
    let hsm = f.pkcs11_seal(
        "hsm-pair",
        &["sealkeeper-a", "sealkeeper-b"],
        "sealkeeper-root",
        "",
    );
    f.set_seals(SHAMIR);
    let mut d = f.start();
    let keys = d.init_shamir();
    let mut tp = TransitProbe::new(&d);
    let ct = tp.encrypt(&d, "migrated");
    d.stop();

    // Shamir -> pkcs11: the old seal stays, disabled.
    f.set_seals(&format!("{SHAMIR}disabled = true\n\n{hsm}"));
    let mut d = f.start();
    d.wait_unseal_attempts(1);
    assert_eq!(d.health("").status, 503);
    let ss = d.get("/v1/sys/seal-status").json();
    assert_eq!(ss["migration"], true, "{ss}");
    let out = d.operator(&["unseal", "--key", &keys[0]]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--migrate"), "{}", stderr(&out));
    assert_eq!(unseal_key(&d, &keys[0], true)["progress"], 1);
    let v = unseal_key(&d, &keys[1], true);
    assert_eq!(v["sealed"], false, "{v}");
    assert_eq!(d.status_json()["recovery_threshold"], 2);
    tp.assert_decrypts(&d, &ct, "migrated");
    d.stop();

    // A restart needs only the HSM; the unseal keys are recovery keys now and never unseal.
    let mut d = f.start();
    d.wait_health(200, Duration::from_secs(10));
    let out = d.operator(&["unseal", "--key", &keys[0]]);
    assert!(
        stderr(&out).contains("recovery keys never unseal"),
        "{}",
        stderr(&out)
    );
    // The way out, in the CLI's own words.
    assert!(
        stderr(&out).contains("`sealkeeper operator unseal` without --key"),
        "{}",
        stderr(&out)
    );
    d.stop();
    f.set_seals(&hsm);
    let mut d = f.start();
    d.wait_health(200, Duration::from_secs(10));
    tp.assert_decrypts(&d, &ct, "migrated");
    d.stop();

    // pkcs11 -> Shamir: the recovery keys become unseal keys again.
    f.set_seals(&format!(
        "{}{SHAMIR}",
        hsm.replacen("mechanism", "disabled = true\nmechanism", 1)
    ));
    let mut d = f.start();
    d.wait_unseal_attempts(1);
    assert_eq!(d.health("").status, 503);
    unseal_key(&d, &keys[2], true);
    assert_eq!(unseal_key(&d, &keys[0], true)["sealed"], false);
    d.stop();
    f.set_seals(SHAMIR);
    let d = f.start();
    d.wait_unseal_attempts(1);
    assert_eq!(d.health("").status, 503);
    unseal_key(&d, &keys[1], false);
    unseal_key(&d, &keys[2], false);
    assert_eq!(d.health("").status, 200);
    tp.assert_decrypts(&d, &ct, "migrated");
}

#[test]
fn migration_to_a_new_hsm_pair_needs_both_seals() {
    let f = Fixture::new();
    f.add_second_pair("new-root");
    let old = f.pkcs11_seal(
        "old",
        &["sealkeeper-a", "sealkeeper-b"],
        "sealkeeper-root",
        "",
    );
    let new = f.pkcs11_seal("new", &["sealkeeper-c", "sealkeeper-d"], "new-root", "");
    f.set_seals(&old);
    let mut d = f.start();
    let recovery = strings(&d.init()["recovery_keys_base64"]);
    let mut tp = TransitProbe::new(&d);
    let ct = tp.encrypt(&d, "hsm swap");
    d.stop();

    f.set_seals(&format!(
        "{}{new}",
        old.replacen("mechanism", "disabled = true\nmechanism", 1)
    ));
    let c = f.remove_token("sealkeeper-c");
    let dd = f.remove_token("sealkeeper-d");
    let d = f.start();
    d.wait_unseal_attempts(1);
    assert_eq!(d.health("").status, 503);
    assert_eq!(d.get("/v1/sys/seal-status").json()["migration"], true);
    unseal_key(&d, &recovery[0], true);
    let out = d.operator(&["unseal", "--migrate", "--key", &recovery[1]]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("the new seal new could not wrap the root key")
            && e.contains("both seals must be reachable"),
        "{e}"
    );
    assert_eq!(d.health("").status, 503, "nothing changed");
    f.restore_token(&c);
    f.restore_token(&dd);
    drop(d);

    // The old seal away: the error names it.
    let a = f.remove_token("sealkeeper-a");
    let b = f.remove_token("sealkeeper-b");
    let d = f.start();
    d.wait_unseal_attempts(1);
    unseal_key(&d, &recovery[1], true);
    let out = d.operator(&["unseal", "--migrate", "--key", &recovery[2]]);
    let e = stderr(&out);
    assert!(
        !out.status.success() && e.contains("the old seal old could not unwrap the root key"),
        "{e}"
    );
    drop(d);
    f.restore_token(&a);
    f.restore_token(&b);

    let d = f.start();
    d.wait_unseal_attempts(1);
    unseal_key(&d, &recovery[1], true);
    assert_eq!(unseal_key(&d, &recovery[2], true)["sealed"], false);
    let audit = std::fs::read_to_string(f.path("audit.log")).unwrap();
    assert!(
        audit.contains("\"seal-migrate\"") && audit.contains("\"to\":\"new\""),
        "the migration and its failures are audited"
    );
    drop(d);

    // After migration only the new pair is needed, and the old entry can go.
    let _a = f.remove_token("sealkeeper-a");
    let _b = f.remove_token("sealkeeper-b");
    f.set_seals(&new);
    let d = f.start();
    d.wait_health(200, Duration::from_secs(10));
    assert_eq!(d.status_json()["unsealed_by_seal"], "new");
    tp.assert_decrypts(&d, &ct, "hsm swap");
}

#[test]
fn rekey_of_recovery_keys_needs_a_quorum_of_the_current_ones() {
    let f = Fixture::new();
    let d = f.start();
    let old = strings(&d.init()["recovery_keys_base64"]);
    let started: Value = d.operator_json(&[
        "rekey",
        "--target",
        "recovery",
        "--key-shares",
        "5",
        "--key-threshold",
        "3",
    ]);
    let nonce = started["nonce"].as_str().unwrap().to_string();
    assert_eq!(started["required"], 2);
    let out = d.operator(&["rekey", "--nonce", "wrong", "--key", &old[0]]);
    assert!(stderr(&out).contains("does not match"), "{}", stderr(&out));
    let v: Value = d.operator_json(&["rekey", "--nonce", &nonce, "--key", &old[0]]);
    assert_eq!(
        (v["progress"].as_u64(), v["complete"].as_bool()),
        (Some(1), Some(false))
    );
    let v: Value = d.operator_json(&["rekey", "--nonce", &nonce, "--key", &old[2]]);
    assert_eq!(v["complete"], true, "{v}");
    assert_eq!(v["verification_required"], true, "{v}");
    let new = strings(&v["keys_base64"]);
    assert_eq!(new.len(), 5);
    // Until a quorum of the new shares comes back, the old ones stand.
    assert_eq!(d.status_json()["recovery_threshold"], 2);
    let out = d.operator(&["rekey", "--key-shares", "2", "--key-threshold", "2"]);
    assert!(
        stderr(&out).contains("wait for verification"),
        "{}",
        stderr(&out)
    );
    let vnonce = v["verification_nonce"].as_str().unwrap().to_string();
    let out = d.operator(&["rekey", "--verify", "--nonce", &vnonce, "--key", &old[0]]);
    assert!(
        stderr(&out).contains("threshold"),
        "an old share is not a new one: {}",
        stderr(&out)
    );
    for k in &new[..2] {
        let v: Value = d.operator_json(&["rekey", "--verify", "--nonce", &vnonce, "--key", k]);
        assert_eq!(v["verified"], false);
    }
    let out = d.operator_ok(&["rekey", "--verify", "--nonce", &vnonce, "--key", &new[3]]);
    assert!(out.contains("Rekey verified"), "{out}");
    assert_eq!(d.status_json()["recovery_threshold"], 3);

    // The old keys no longer authorize anything; three new ones do.
    let v: Value = d.operator_json(&["rekey", "--key-shares", "3", "--key-threshold", "2"]);
    let nonce = v["nonce"].as_str().unwrap().to_string();
    let out = d.operator(&["rekey", "--nonce", &nonce, "--key", &old[0]]);
    assert!(stderr(&out).contains("threshold"), "{}", stderr(&out));
    d.operator_ok(&["rekey", "--cancel"]);
    let out = d.operator(&["rekey", "--nonce", &nonce, "--key", &new[0]]);
    assert!(
        stderr(&out).contains("no rekey is in progress"),
        "{}",
        stderr(&out)
    );
    let v: Value = d.operator_json(&["rekey", "--key-shares", "3", "--key-threshold", "2"]);
    let nonce = v["nonce"].as_str().unwrap().to_string();
    for k in &new[1..3] {
        d.operator_ok(&["rekey", "--nonce", &nonce, "--key", k]);
    }
    let v: Value = d.operator_json(&["rekey", "--nonce", &nonce, "--key", &new[4]]);
    assert_eq!(v["complete"], true, "{v}");
    // Cancelling discards the unverified shares; the current ones stand.
    d.operator_ok(&["rekey", "--cancel"]);
    assert_eq!(d.operator_ok(&["rekey"]).trim(), "No rekey in progress.");
    assert_eq!(d.status_json()["recovery_threshold"], 3);
    let audit = std::fs::read_to_string(f.path("audit.log")).unwrap();
    assert!(audit.contains("\"rekey\""), "rekeys are audited");
}

#[test]
fn recovery_keys_fallback_unseals_only_when_every_hsm_is_away() {
    let f = Fixture::new();
    f.edit_config(|c| {
        c.replace(
            "mechanism = \"CKM_AES_GCM\"",
            "mechanism = \"CKM_AES_GCM\"\nrecovery_keys_fallback = true",
        )
    });
    let mut d = f.start();
    let v = d.init();
    assert!(
        v["warnings"].to_string().contains("recovery_keys_fallback"),
        "{v}"
    );
    let recovery = strings(&v["recovery_keys_base64"]);
    let mut tp = TransitProbe::new(&d);
    let ct = tp.encrypt(&d, "break glass");
    d.stop();

    let _a = f.remove_token("sealkeeper-a");
    let _b = f.remove_token("sealkeeper-b");
    let d = f.start();
    // Every HSM away: retried (three attempts), still sealed, until a quorum of recovery keys.
    d.wait_unseal_attempts(3);
    assert_eq!(d.health("").status, 503);
    unseal_key(&d, &recovery[1], false);
    assert_eq!(unseal_key(&d, &recovery[0], false)["sealed"], false);
    tp.assert_decrypts(&d, &ct, "break glass");
    assert_eq!(d.status_json()["unsealed_by"], "fallback");
    let audit = std::fs::read_to_string(f.path("audit.log")).unwrap();
    assert!(audit.contains("recovery-keys-fallback"), "audited");

    // Turned on after init, it cannot work: the recovery key never wrapped the root key.
    let g = Fixture::new();
    let mut d = g.start();
    let recovery = strings(&d.init()["recovery_keys_base64"]);
    d.stop();
    g.edit_config(|c| {
        c.replace(
            "mechanism = \"CKM_AES_GCM\"",
            "mechanism = \"CKM_AES_GCM\"\nrecovery_keys_fallback = true",
        )
    });
    let _a = g.remove_token("sealkeeper-a");
    let _b = g.remove_token("sealkeeper-b");
    let d = g.start();
    let out = d.operator(&["unseal", "--key", &recovery[0]]);
    assert!(
        stderr(&out)
            .contains("recovery_keys_fallback was not on when this installation was initialized"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn seal_configuration_changes_are_checked_at_start() {
    let f = Fixture::new();
    f.add_second_pair("second-root");
    let mut d = f.start();
    d.init();
    d.stop();
    let original = f.config();

    // No configured seal holds a wrapping.
    f.edit_config(|c| c.replace("name = \"hsm-pair\"", "name = \"renamed\""));
    let e = f.start_fails();
    assert!(
        e.contains("none of the configured seals (renamed) holds a wrapping")
            && e.contains("hsm-pair"),
        "{e}"
    );

    // Two seals added at once.
    std::fs::write(f.config_path(), &original).unwrap();
    let extra = format!(
        "{}{}",
        f.pkcs11_seal("two", &["sealkeeper-c"], "second-root", ""),
        f.pkcs11_seal("three", &["sealkeeper-d"], "second-root", "")
    );
    f.edit_config(|c| format!("{c}\n{extra}"));
    let e = f.start_fails();
    assert!(
        e.contains("only one seal may be added or removed at a time") && e.contains("two, three"),
        "{e}"
    );

    // One seal added is fine: it is wrapped after the unseal.
    std::fs::write(f.config_path(), &original).unwrap();
    let one = f.pkcs11_seal("two", &["sealkeeper-c", "sealkeeper-d"], "second-root", "");
    f.edit_config(|c| format!("{c}\n{one}"));
    let d = f.start();
    d.wait_health(200, Duration::from_secs(10));
    d.wait_status("the added seal wrapped", Duration::from_secs(20), |s| {
        s["seals_missing_wrapping"]
            .as_array()
            .is_some_and(|m| m.is_empty())
    });
}
