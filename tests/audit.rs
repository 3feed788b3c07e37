//! The audit trail: every request and operation recorded, hash-chained, verifiable, fail-closed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use serde_json::{Value, json};

fn audited(extra: &str) -> Fixture {
    let f = Fixture::new();
    let log = f.path("audit/audit.log");
    let default = format!("path = \"{}\"", f.path("audit.log").display());
    f.edit_config(|c| c.replace(&default, &format!("path = \"{}\"\n{extra}", log.display())));
    f
}

fn records(f: &Fixture, file: &str) -> Vec<Value> {
    std::fs::read_to_string(f.path(file))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn verify(files: &[std::path::PathBuf]) -> std::process::Output {
    Command::new(BIN)
        .arg("audit")
        .arg("verify")
        .args(files)
        .output()
        .unwrap()
}

/// A daemon with a key, a policy and a token.
fn with_transit(f: &Fixture) -> (Daemon, String) {
    let d = f.start();
    d.init();
    d.operator_ok(&["key", "create", "vault-prod"]);
    let token = d.policy_and_token("prod", "vault-prod", "encrypt,decrypt");
    (d, token)
}

fn encrypt(d: &Daemon, token: &str, plaintext: &[u8]) -> HttpResponse {
    let body = json!({ "plaintext": B64.encode(plaintext) }).to_string();
    http_with(
        d.port,
        "PUT",
        "/v1/transit/encrypt/vault-prod",
        Some(token),
        body.as_bytes(),
    )
    .unwrap()
}

#[test]
fn every_operation_is_recorded_without_secrets_and_the_chain_verifies() {
    let f = audited("");
    let (mut d, token) = with_transit(&f);
    let r = encrypt(&d, &token, b"known plaintext 123");
    assert_eq!(r.status, 200);
    let ct = r.json()["data"]["ciphertext"].as_str().unwrap().to_string();
    let r = encrypt(&d, "sks.wrong", b"x");
    assert_eq!(r.status, 403);
    d.operator_ok(&["seal"]);
    d.operator_ok(&["unseal"]);
    let dec = http_with(
        d.port,
        "PUT",
        "/v1/transit/decrypt/vault-prod",
        Some(&token),
        json!({ "ciphertext": ct }).to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(dec.status, 200, "{}", dec.body);
    let token_hmac = d.operator_ok(&["audit-hash", &token]).trim().to_string();
    let wrong_hmac = d
        .operator_ok(&["audit-hash", "sks.wrong"])
        .trim()
        .to_string();
    assert!(token_hmac.starts_with("hmac-sha256:") && token_hmac != wrong_hmac);
    d.stop();

    let recs = records(&f, "audit/audit.log");
    let ops: Vec<String> = recs
        .iter()
        .map(|r| r["operation"].as_str().unwrap().to_string())
        .collect();
    for expect in [
        "PUT /v1/sys/init",
        "init",
        "POST /v1/transit/keys/vault-prod",
        "POST /v1/auth/token/create",
        "PUT /v1/sys/seal",
        "seal",
        "unseal",
        "PUT /v1/sys/unseal",
    ] {
        assert!(ops.iter().any(|o| o == expect), "no {expect:?} in {ops:?}");
    }
    let enc: Vec<&Value> = recs
        .iter()
        .filter(|r| r["operation"] == "PUT /v1/transit/encrypt/vault-prod")
        .collect();
    assert_eq!(enc.len(), 2);
    let dec_rec = recs
        .iter()
        .find(|r| r["operation"] == "PUT /v1/transit/decrypt/vault-prod")
        .unwrap();
    assert_eq!(
        dec_rec["key_version"], 1,
        "decrypt records carry the version: {dec_rec}"
    );
    assert_eq!(enc[0]["outcome"], "ok");
    assert_eq!(enc[0]["key"], "vault-prod");
    assert_eq!(enc[0]["key_version"], 1);
    assert!(enc[0]["accessor"].as_str().unwrap().len() >= 16);
    assert!(
        enc[0]["peer"]["address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(enc[0]["client_token_hmac"], token_hmac.as_str());
    assert_eq!(
        enc[1]["client_token_hmac"],
        wrong_hmac.as_str(),
        "a refused token can be correlated"
    );
    assert_eq!(enc[1]["outcome"], "denied");
    assert_eq!(enc[1]["status"], 403);
    let admin = recs
        .iter()
        .find(|r| r["operation"] == "PUT /v1/sys/init")
        .unwrap();
    assert_eq!(admin["type"], "admin");
    assert!(admin["peer"]["uid"].is_u64() && admin["peer"]["pid"].is_i64());
    let unseal = recs.iter().find(|r| r["operation"] == "unseal").unwrap();
    assert_eq!(unseal["member"], "hsm-a");
    assert!(unseal["duration_ms"].is_u64());
    let seqs: Vec<u64> = recs.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=recs.len() as u64).collect::<Vec<_>>());

    let text = std::fs::read_to_string(f.path("audit/audit.log")).unwrap();
    for secret in [
        token.as_str(),
        &B64.encode(b"known plaintext 123"),
        &ct,
        &f.pin("a"),
        &f.pin("b"),
    ] {
        assert!(!text.contains(secret), "a secret is in the audit log");
    }
    let out = verify(&[f.path("audit/audit.log")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{} records", recs.len())));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(f.path("audit/audit.log"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_modified_record_is_reported_with_its_line() {
    let f = audited("");
    let (mut d, token) = with_transit(&f);
    encrypt(&d, &token, b"a");
    d.stop();
    let path = f.path("audit/audit.log");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[2] = lines[2].replace("\"ok\"", "\"error\"");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let out = verify(&[path]);
    assert!(!out.status.success());
    let e = stderr(&out);
    // The changed record's own line (line 3), not the next one's.
    assert!(e.contains("audit.log:3: record seq 3 was modified"), "{e}");
}

/// Makes a file immutable (even root cannot write it) for the life of the guard.
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn new(p: std::path::PathBuf) -> Immutable {
        assert!(
            Command::new("chattr")
                .arg("+i")
                .arg(&p)
                .status()
                .unwrap()
                .success(),
            "chattr +i failed"
        );
        Immutable(p)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn an_unwritable_audit_log_refuses_requests_and_recovers() {
    let f = audited("");
    let (d, token) = with_transit(&f);
    let guard = Immutable::new(f.path("audit/audit.log"));
    let r = encrypt(&d, &token, b"secret");
    assert_eq!(r.status, 503, "{}", r.body);
    let err = r.json()["errors"][0].as_str().unwrap().to_string();
    assert!(err.contains("the audit log is unavailable"), "{err}");
    // The answer says what failed, not where: the local path is in the log only.
    let dir = f.path("audit").display().to_string();
    assert!(!r.body.contains(&dir), "{}", r.body);
    assert!(d.log().contains(&dir), "the log names the audit path");
    assert!(
        !r.body.contains("vault:v1:"),
        "no result leaves without its audit record"
    );
    let out = d.operator(&["key", "rotate", "vault-prod"]);
    assert!(!out.status.success(), "admin operations fail closed too");
    assert_eq!(d.health("").status, 200, "the daemon keeps running");

    drop(guard);
    let r = encrypt(&d, &token, b"secret");
    assert_eq!(r.status, 200, "recovers when the disk does: {}", r.body);
    let out = verify(&[f.path("audit/audit.log")]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn rotation_by_sighup_and_by_size_continues_the_chain() {
    let f = audited("max_file_bytes = 4000\n");
    let (d, token) = with_transit(&f);
    for _ in 0..10 {
        assert_eq!(encrypt(&d, &token, b"x").status, 200);
    }
    // External rotation: rename, then SIGHUP.
    let moved = f.path("audit/audit.log.0-external");
    std::fs::rename(f.path("audit/audit.log"), &moved).unwrap();
    unsafe_free_kill(d.pid(), "HUP");
    // The writer is told to reopen before the next records are queued.
    wait_for(
        Duration::from_secs(10),
        || {
            d.log()
                .contains("SIGHUP: reopening the audit log")
                .then_some(())
        },
        || d.log(),
    );
    for _ in 0..3 {
        assert_eq!(encrypt(&d, &token, b"x").status, 200);
    }
    drop(d);
    let mut files: Vec<_> = std::fs::read_dir(f.path("audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.retain(|p| p != &f.path("audit/audit.log"));
    files.sort();
    assert!(
        files.len() >= 2,
        "size rotation produced no file: {files:?}"
    );
    // Oldest first: the size-rotated files, the externally rotated one, then the current file.
    let mut ordered: Vec<_> = files.iter().filter(|p| **p != moved).cloned().collect();
    ordered.push(moved.clone());
    ordered.push(f.path("audit/audit.log"));
    let out = verify(&ordered);
    assert!(out.status.success(), "{:?}: {}", ordered, stderr(&out));
    // Leaving out a file in the middle breaks the chain, and is named.
    let mut gap = ordered.clone();
    gap.remove(1);
    let out = verify(&gap);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("missing records"), "{}", stderr(&out));
}

#[test]
fn refused_admin_connections_are_recorded_and_no_audit_table_is_warned_about() {
    let f = audited("");
    let uid = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout).unwrap();
    f.edit_config(|c| {
        c.replace(
            &format!("allowed_uids = [{}]", uid.trim()),
            "allowed_uids = [4242]",
        )
    });
    let d = f.start();
    assert!(!d.operator(&["status"]).status.success());
    // The refusal is recorded without holding up the connection: wait for the record.
    let recs = wait_for(
        Duration::from_secs(10),
        || {
            let recs = records(&f, "audit/audit.log");
            recs.iter()
                .any(|r| r["operation"] == "connect")
                .then_some(recs)
        },
        || "no connect record".into(),
    );
    let refused = recs
        .iter()
        .find(|r| r["operation"] == "connect")
        .expect("a connect record");
    assert_eq!(refused["outcome"], "denied");
    assert_eq!(
        refused["peer"]["uid"].as_u64().unwrap().to_string(),
        uid.trim()
    );
    drop(d);

    let plain = Fixture::new();
    let default = format!("[audit]\npath = \"{}\"", plain.path("audit.log").display());
    plain.edit_config(|c| c.replace(&default, ""));
    let d = plain.start();
    assert!(d.log().contains("no [audit] table"), "{}", d.log());
}

/// A small tmpfs mounted for the life of the guard (the tests run as root, as CI does).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn new(dir: std::path::PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&dir).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs failed: the test needs root");
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_filesystem_refuses_requests_and_recovers_when_space_returns() {
    let f = Fixture::new();
    let dir = f.path("audit-fs");
    let _mnt = Tmpfs::new(dir.clone(), "256k");
    let default = format!("path = \"{}\"", f.path("audit.log").display());
    f.edit_config(|c| {
        c.replace(
            &default,
            &format!("path = \"{}\"", dir.join("audit.log").display()),
        )
    });
    let (d, token) = with_transit(&f);
    assert_eq!(encrypt(&d, &token, b"x").status, 200);
    // Fill the file system to the last byte.
    let filler = dir.join("filler");
    {
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while std::io::Write::write_all(&mut file, &block).is_ok() {}
        let _ = std::io::Write::write_all(&mut file, &[0u8; 1]);
        while std::io::Write::write_all(&mut file, &[0u8; 1]).is_ok() {}
    }
    // The audit file's last page may still hold a few records; the first one that does not fit
    // must be refused.
    let mut refused = None;
    for _ in 0..50 {
        let r = encrypt(&d, &token, b"x");
        if r.status != 200 {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("no request was refused on a full file system");
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        r.body.contains("No space left on device") && !r.body.contains("vault:v1:"),
        "{}",
        r.body
    );
    assert!(!r.body.contains(&dir.display().to_string()), "{}", r.body);
    assert_eq!(d.health("").status, 200);
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(encrypt(&d, &token, b"x").status, 200);
    drop(d);
    let out = verify(&[dir.join("audit.log")]);
    assert!(
        out.status.success(),
        "no half record was left behind: {}",
        stderr(&out)
    );
}

/// Lines of the trail with record `i` rewritten and every later `prev` recomputed: what someone
/// with write access but without the chain key can do.
fn rewrite_from(lines: &[String], i: usize, edit: impl Fn(&str) -> String) -> Vec<String> {
    let mut out = lines.to_vec();
    out[i] = edit(&out[i]);
    for j in i + 1..out.len() {
        let h = hex::encode(sealkeeper::crypto::sha256(out[j - 1].as_bytes()));
        let v: Value = serde_json::from_str(&out[j]).unwrap();
        out[j] = out[j].replace(v["prev"].as_str().unwrap(), &h);
    }
    out
}

fn read_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn write_lines(path: &std::path::Path, lines: &[String]) {
    // In place (same inode): the daemon keeps appending to the file it has open.
    std::fs::write(
        path,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
}

/// A trail with keyed records, tampered by `tamper`; returns the daemon's verdict.
fn keyed_trail_tampered(
    tamper: impl FnOnce(&Fixture, Vec<String>) -> Vec<String>,
) -> std::process::Output {
    let f = audited("anchor_interval = \"1s\"");
    let (d, token) = with_transit(&f);
    for i in 0..5 {
        assert_eq!(encrypt(&d, &token, format!("p{i}").as_bytes()).status, 200);
    }
    let log = f.path("audit/audit.log");
    let lines = read_lines(&log);
    let tampered = tamper(&f, lines);
    write_lines(&log, &tampered);
    d.operator(&["audit-verify"])
}

#[test]
fn the_keyed_chain_and_its_anchor_catch_rewrites_truncation_and_an_edited_last_record() {
    // Untampered: every MAC verifies and the anchor is found.
    let f = audited("anchor_interval = \"1s\"");
    let (mut d, token) = with_transit(&f);
    assert_eq!(encrypt(&d, &token, b"x").status, 200);
    let v = d.operator_json(&["audit-verify"]);
    assert!(v["keyed"].as_u64().unwrap() >= 3, "{v}");
    assert!(v["anchor_seq"].as_u64().is_some(), "{v}");
    assert_eq!(v["macs_checked"], true);

    // A middle record rewritten, later prevs recomputed: the plain hash chain cannot tell; the
    // daemon names the changed record's line.
    let mut changed_line = 0;
    let out = keyed_trail_tampered(|_, lines| {
        let i = lines
            .iter()
            .position(|l| l.contains("/v1/transit/encrypt/vault-prod") && l.contains("\"mac\""))
            .unwrap();
        changed_line = i + 1;
        rewrite_from(&lines, i, |l| l.replace("\"status\":200", "\"status\":403"))
    });
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(":{changed_line}: record seq"))
            && err.contains("MAC does not verify"),
        "{err}"
    );

    // The last records cut off.
    let out = keyed_trail_tampered(|_, lines| lines[..lines.len() - 3].to_vec());
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is not in these files"),
        "{}",
        stderr(&out)
    );

    // The last record edited (its MAC stripped, so that it passes as unkeyed).
    let out = keyed_trail_tampered(|_, mut lines| {
        let last = lines.pop().unwrap();
        let cut = last.rfind(",\"mac\":").unwrap();
        lines.push(format!("{}}}", &last[..cut]).replace("\"ok\"", "\"denied\""));
        lines
    });
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("does not match the daemon's anchor"),
        "{}",
        stderr(&out)
    );

    // Truncated while the daemon was down: the anchor stored at shutdown still sees it.
    d.stop();
    let log = f.path("audit/audit.log");
    let lines = read_lines(&log);
    write_lines(&log, &lines[..lines.len() - 2]);
    let d = f.start();
    d.wait_health(200, Duration::from_secs(20));
    let out = d.operator(&["audit-verify"]);
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = stderr(&out);
    assert!(
        err.contains("does not match the daemon's anchor") || err.contains("is not in these files"),
        "{err}"
    );
}

#[test]
fn a_failed_sync_refuses_what_it_held_takes_it_back_and_the_chain_continues() {
    let f = audited("");
    let flag = f.path("fail-audit-sync");
    let d = f.start_with(|c| {
        c.env("SEALKEEPER_FAULT_FAIL", "audit:sync")
            .env("SEALKEEPER_FAULT_FAIL_WHILE", &flag);
    });
    d.init();
    d.operator_ok(&["key", "create", "vault-prod"]);
    let token = d.policy_and_token("prod", "vault-prod", "encrypt,decrypt");
    assert_eq!(encrypt(&d, &token, b"before").status, 200);
    let durable = records(&f, "audit/audit.log");

    // While fdatasync fails, every request is refused (its record was written, then taken back),
    // concurrent ones too, and the daemon stays up.
    std::fs::write(&flag, b"").unwrap();
    let refused: Vec<HttpResponse> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| encrypt(&d, &token, b"during")))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &refused {
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(r.body.contains("injected sync failure"), "{}", r.body);
        assert!(!r.body.contains("vault:v1:"), "{}", r.body);
    }
    assert_eq!(d.health("").status, 200);
    assert_eq!(
        records(&f, "audit/audit.log").len(),
        durable.len(),
        "the records of the refused requests were taken back"
    );

    // Syncs work again: requests succeed, and the chain continues from the last durable record.
    std::fs::remove_file(&flag).unwrap();
    assert_eq!(encrypt(&d, &token, b"after").status, 200);
    drop(d);
    let after = records(&f, "audit/audit.log");
    let last = &durable[durable.len() - 1];
    let next = &after[durable.len()];
    assert_eq!(
        next["seq"].as_u64(),
        last["seq"].as_u64().map(|s| s + 1),
        "{next}"
    );
    let out = verify(&[f.path("audit/audit.log")]);
    assert!(out.status.success(), "{}", stderr(&out));
}
