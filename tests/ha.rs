//! The HA pair: one member down, both down then back, an HSM lost while unsealed, a hung member.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::*;

/// Initializes, stops, breaks member A with `break_a`, restarts, and checks that B unsealed while
/// A is reported down with `a_error` in its last error.
fn b_serves_when_a_is_broken(break_a: impl FnOnce(&Fixture), a_error: &str) {
    let f = Fixture::new();
    let mut d = f.start();
    d.init();
    d.stop();
    break_a(&f);
    let d = f.start();
    d.wait_health(200, Duration::from_secs(10));
    let st = d.status_json();
    assert_eq!(st["unsealed_by"], "hsm-b");
    let a = member(&st, "hsm-a");
    assert_eq!(a["healthy"], false);
    assert_eq!(a["state"], "down");
    assert!(a["last_error"].as_str().unwrap().contains(a_error), "{a}");
    assert_eq!(member(&st, "hsm-b")["healthy"], true);
}

#[test]
fn member_a_token_missing_b_unseals() {
    b_serves_when_a_is_broken(
        |f| {
            f.remove_token("sealkeeper-a");
        },
        "no token with token label \"sealkeeper-a\"",
    );
}

#[test]
fn member_a_library_missing_b_unseals() {
    b_serves_when_a_is_broken(
        |f| f.edit_config(|c| c.replacen(&module(), "/nonexistent/libvendor-pkcs11.so", 1)),
        "/nonexistent/libvendor-pkcs11.so does not exist",
    );
}

#[test]
fn member_a_key_missing_b_unseals() {
    b_serves_when_a_is_broken(
        |f| {
            // Delete the key from token A with the real tool.
            let pin = f.pin("a");
            let out = std::process::Command::new("pkcs11-tool")
                .args([
                    "--module",
                    &module(),
                    "--token-label",
                    "sealkeeper-a",
                    "--login",
                    "--pin",
                    &pin,
                ])
                .args([
                    "--delete-object",
                    "--type",
                    "secrkey",
                    "--label",
                    "sealkeeper-root",
                ])
                .env("SOFTHSM2_CONF", f.softhsm_conf())
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", stderr(&out));
        },
        "no secret key with label \"sealkeeper-root\"",
    );
}

#[test]
fn both_missing_stays_sealed_retries_and_unseals_when_a_token_appears() {
    let f = Fixture::new();
    let mut d = f.start();
    d.init();
    d.stop();
    let a = f.remove_token("sealkeeper-a");
    let _b = f.remove_token("sealkeeper-b");
    let d = f.start();
    // It keeps retrying (three attempts with backoff) and stays sealed.
    d.wait_unseal_attempts(3);
    let h = d.health("");
    assert_eq!(h.status, 503, "{}", h.body);
    assert_eq!(h.json()["sealed"], true);
    let st = d.status_json();
    assert_eq!(st["state"], "sealed");
    assert!(
        st["last_unseal_error"]
            .as_str()
            .unwrap()
            .contains("no member could unwrap"),
        "{st}"
    );
    let retries = d.log().matches("still sealed; retrying").count();
    assert!(retries >= 2, "expected several retries, log:\n{}", d.log());
    // Backoff: with retry_initial 100ms and retry_max 400ms, 1.5s allow at most ~15 attempts.
    assert!(retries <= 20, "retrying too fast ({retries}):\n{}", d.log());

    f.restore_token(&a);
    d.wait_health(200, Duration::from_secs(10));
    assert_eq!(d.status_json()["unsealed_by"], "hsm-a");
    assert!(
        d.log().contains("PKCS#11 module re-initialized"),
        "{}",
        d.log()
    );
}

#[test]
fn hsm_lost_while_unsealed_keeps_serving_and_status_shows_it() {
    let f = Fixture::new();
    let d = f.start();
    d.init();
    d.wait_status("both members healthy", Duration::from_secs(5), |s| {
        member(s, "hsm-a")["healthy"] == true && member(s, "hsm-b")["healthy"] == true
    });
    let parked = f.remove_token("sealkeeper-a");
    let st = d.wait_status("hsm-a down", Duration::from_secs(10), |s| {
        member(s, "hsm-a")["healthy"] == false
    });
    assert_eq!(st["state"], "unsealed");
    assert_eq!(member(&st, "hsm-b")["healthy"], true);
    assert_eq!(d.health("").status, 200);
    // The detailed document is on the admin socket only; the public port does not have it.
    let admin_st = d.admin_curl("GET", "/v1/sys/hsm-status", None).json();
    assert_eq!(member(&admin_st, "hsm-a")["state"], "down");
    assert_eq!(d.get("/v1/sys/hsm-status").status, 404);

    // Both gone: still serving.
    let parked_b = f.remove_token("sealkeeper-b");
    d.wait_status("hsm-b down", Duration::from_secs(10), |s| {
        member(s, "hsm-b")["healthy"] == false
    });
    assert_eq!(d.health("").status, 200);
    assert_eq!(d.get("/v1/sys/seal-status").json()["sealed"], false);

    // They come back and are found again without a restart.
    f.restore_token(&parked);
    f.restore_token(&parked_b);
    d.wait_status("both healthy again", Duration::from_secs(10), |s| {
        member(s, "hsm-a")["healthy"] == true && member(s, "hsm-b")["healthy"] == true
    });
}

#[test]
fn hung_member_is_abandoned_and_the_other_serves() {
    let f = Fixture::new();
    f.edit_config(|c| c.replacen("pin_file", "timeout = \"500ms\"\n  pin_file", 1));
    let d = f.start();
    d.init();
    d.wait_status("both healthy", Duration::from_secs(5), |s| {
        member(s, "hsm-a")["healthy"] == true && member(s, "hsm-b")["healthy"] == true
    });
    // Token A's storage stops answering: another process holds POSIX locks on its files, so
    // SoftHSM blocks inside the next call that reads them, as a network HSM that stops answering.
    let mut holder = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import fcntl,glob,sys,time\nfs=[]\nfor p in glob.glob(sys.argv[1]+'/*'):\n    f=open(p,'r+'); fcntl.lockf(f, fcntl.LOCK_EX); fs.append(f)\nprint('locked', flush=True)\ntime.sleep(60)",
        )
        .arg(f.token_dir("sealkeeper-a"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");

    let st = d.wait_status("hsm-a hung", Duration::from_secs(10), |s| {
        member(s, "hsm-a")["state"] == "hung"
    });
    assert_eq!(
        d.health("").status,
        200,
        "a hung HSM does not affect serving"
    );
    assert_eq!(member(&st, "hsm-b")["healthy"], true, "{st}");

    // A fresh unseal does not wait on the hung member: B serves.
    d.operator_ok(&["seal"]);
    d.operator_ok(&["unseal"]);
    assert_eq!(d.status_json()["unsealed_by"], "hsm-b");
    assert_eq!(d.health("").status, 200);

    // The HSM answers again: A is healthy again without a restart.
    holder.kill().unwrap();
    holder.wait().unwrap();
    d.wait_status("hsm-a healthy again", Duration::from_secs(10), |s| {
        member(s, "hsm-a")["healthy"] == true
    });
}

#[test]
fn init_refuses_a_pair_whose_members_hold_different_keys() {
    let f = Fixture::new();
    // Replace B's key with a different AES key under the same label and id.
    let pin = f.pin("b");
    let tool = |args: &[&str]| {
        let out = std::process::Command::new("pkcs11-tool")
            .args([
                "--module",
                &module(),
                "--token-label",
                "sealkeeper-b",
                "--login",
                "--pin",
                &pin,
            ])
            .args(args)
            .env("SOFTHSM2_CONF", f.softhsm_conf())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    };
    tool(&[
        "--delete-object",
        "--type",
        "secrkey",
        "--label",
        "sealkeeper-root",
    ]);
    tool(&[
        "--keygen",
        "--key-type",
        "AES:32",
        "--label",
        "sealkeeper-root",
        "--id",
        "01",
        "--sensitive",
    ]);
    let d = f.start();
    let e = d.init_fails();
    assert!(e.contains("member hsm-b holds a different key"), "{e}");
    assert_eq!(d.health("").status, 501);
    assert!(!f.state_path().exists(), "nothing was stored");
}
