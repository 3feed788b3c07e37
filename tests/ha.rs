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
    let mut holder = lock_token_files(&f.token_dir("sealkeeper-a"));

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

/// Holds exclusive POSIX locks on every file of `token_dir` from another process, so that SoftHSM
/// blocks inside the next call that reads them (as a network HSM that stops answering), until the
/// returned child is killed or dropped (its standard input closes).
fn lock_token_files(token_dir: &std::path::Path) -> std::process::Child {
    let mut holder = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import fcntl,glob,sys\nfs=[]\nfor p in glob.glob(sys.argv[1]+'/*'):\n    f=open(p,'r+'); fcntl.lockf(f, fcntl.LOCK_EX); fs.append(f)\nprint('locked', flush=True)\nsys.stdin.read()",
        )
        .arg(token_dir)
        .stdin(std::process::Stdio::piped())
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
    holder
}

#[test]
fn a_module_stuck_while_loading_at_start_leaves_the_node_sealed_until_it_answers() {
    // The members load their module as soon as they exist, before the first unwrap asks. A module
    // whose C_Initialize does not return must still get the members marked hung by the unwrap
    // that times out, and the node unseals once the module answers. SoftHSM reads its
    // configuration in C_Initialize: made a FIFO with no writer, that read blocks until one comes.
    let f = Fixture::new();
    f.edit_config(|c| c.replace("pin_file", "timeout = \"500ms\"\n  pin_file"));
    let mut d = f.start();
    d.init();
    d.stop();
    let conf = f.softhsm_conf();
    let text = std::fs::read(&conf).unwrap();
    let fifo = f.path("softhsm2.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let plain = f.path("softhsm2.conf.plain");
    std::fs::write(&plain, &text).unwrap();
    std::fs::remove_file(&conf).unwrap();
    std::fs::hard_link(&fifo, &conf).unwrap();

    let d = f.start();
    // Hung, and abandoned: after the first timeout, later unwraps are refused at once rather than
    // each waiting out its own timeout behind the stuck load.
    let abandoned = |s: &serde_json::Value, m: &str| {
        member(s, m)["state"] == "hung"
            && member(s, m)["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("stuck in the PKCS#11 module"))
    };
    let st = d.wait_status("both members hung", Duration::from_secs(20), |s| {
        abandoned(s, "hsm-a") && abandoned(s, "hsm-b")
    });
    assert_eq!(st["sealed"], true, "{st}");
    assert_eq!(d.health("").status, 503, "sealed, and answering");

    // The module answers: the configuration path is a plain file again (for any later
    // C_Initialize), and the blocked read gets the text through the FIFO.
    std::fs::rename(&plain, &conf).unwrap();
    std::fs::write(&fifo, &text).unwrap();
    d.wait_health(200, Duration::from_secs(20));
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

#[test]
fn an_uninitialized_node_probes_its_members_and_names_the_tokens_it_can_see() {
    // The README's steps done by hand without `export SOFTHSM2_CONF`: SoftHSM falls back to a
    // token directory that holds none of the configured tokens.
    let f = Fixture::new();
    let empty = f.path("empty-tokens");
    std::fs::create_dir_all(&empty).unwrap();
    let conf = f.path("empty-softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\n",
            empty.display()
        ),
    )
    .unwrap();
    let d = f.start_with(|c| {
        c.env("SOFTHSM2_CONF", &conf);
    });
    // Status shows each member's failure before anyone runs `operator init`.
    let st = d.wait_status(
        "both members probed and down",
        Duration::from_secs(30),
        |s| {
            ["hsm-a", "hsm-b"].iter().all(|m| {
                let m = member(s, m);
                m["healthy"] == false && m["last_error"].as_str().is_some_and(|e| !e.is_empty())
            })
        },
    );
    assert_eq!(st["initialized"], false, "{st}");
    for m in ["hsm-a", "hsm-b"] {
        let e = member(&st, m)["last_error"].as_str().unwrap().to_string();
        assert!(e.contains("no token with token label \"sealkeeper-"), "{e}");
        assert!(e.contains("shows no initialized token"), "{e}");
        assert!(e.contains("SOFTHSM2_CONF"), "{e}");
    }
    // init fails with the same advice, and the seal's name appears once.
    let err = d.init_fails();
    assert!(err.contains("SOFTHSM2_CONF"), "{err}");
    assert_eq!(err.matches("hsm-pair").count(), 1, "{err}");
    drop(d);

    // With the real token directory, a missing label lists the tokens the module does show.
    f.edit_config(|c| {
        c.replacen(
            "token_label = \"sealkeeper-a\"",
            "token_label = \"sealkeeper-x\"",
            1,
        )
    });
    let d = f.start();
    let st = d.wait_status("member A down and B up", Duration::from_secs(30), |s| {
        member(s, "hsm-a")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("sealkeeper-x"))
            && member(s, "hsm-b")["healthy"] == true
    });
    let e = member(&st, "hsm-a")["last_error"].as_str().unwrap();
    assert!(
        e.contains("token label \"sealkeeper-a\"") && e.contains("token label \"sealkeeper-b\""),
        "{e}"
    );
    assert_eq!(member(&st, "hsm-b")["healthy"], true, "{st}");
}

/// `operator preflight` (exit code and JSON) on a running daemon.
fn preflight(d: &Daemon) -> (i32, serde_json::Value) {
    let out = d.operator(&["preflight", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stderr(&out)));
    (out.status.code().unwrap(), v)
}

#[test]
fn preflight_says_whether_a_restart_would_unseal() {
    let f = Fixture::new();
    let d = f.start();
    // Not initialized: a restart would not unseal anything.
    let (code, v) = preflight(&d);
    assert_eq!(code, 1, "{v}");
    assert!(
        v["reason"].as_str().unwrap().contains("not initialized"),
        "{v}"
    );
    d.init();

    // The pair answers: safe, by a trial unwrap and in status from the last probes.
    let (code, v) = preflight(&d);
    assert_eq!((code, &v["safe"]), (0, &serde_json::json!(true)), "{v}");
    assert_eq!(v["checked_by"], "trial-unwrap");
    assert!(
        strings(&v["relies_on"])[0].starts_with("hsm-pair/hsm-"),
        "{v}"
    );
    let st = d.wait_status(
        "restart_safe from both members",
        Duration::from_secs(30),
        |s| {
            s["restart_safe"] == true
                && s["restart"]["relies_on"]
                    .as_array()
                    .is_some_and(|r| r.len() == 2)
        },
    );
    assert_eq!(st["restart"]["checked_by"], "last-probe");
    let text = d.operator_ok(&["preflight"]);
    assert!(text.starts_with("Restart safe: "), "{text}");
    assert!(d.operator_ok(&["status"]).contains("Restart safe     yes"));

    // One member away: still safe, relying on the other.
    let a = f.remove_token("sealkeeper-a");
    let (code, v) = preflight(&d);
    assert_eq!(code, 0, "{v}");
    assert_eq!(strings(&v["relies_on"]), ["hsm-pair/hsm-b"]);
    let st = d.wait_status("only hsm-b relied on", Duration::from_secs(30), |s| {
        s["restart"]["relies_on"] == serde_json::json!(["hsm-pair/hsm-b"])
    });
    assert_eq!(st["restart_safe"], true);

    // Both away: the node keeps serving, but a restart would stay sealed.
    let b = f.remove_token("sealkeeper-b");
    let out = d.operator(&["preflight"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("Restart NOT safe: a restart now would stay sealed"),
        "{text}"
    );
    assert!(
        text.contains("no token with token label \"sealkeeper-b\""),
        "{text}"
    );
    let st = d.wait_status("restart not safe", Duration::from_secs(30), |s| {
        s["restart_safe"] == false
    });
    let reason = st["restart"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("hsm-pair/hsm-a is down") && reason.contains("hsm-pair/hsm-b is down"),
        "{reason}"
    );
    assert_eq!(d.health("").status, 200, "still serving");
    assert!(d.operator_ok(&["status"]).contains("Restart safe     NO"));

    // Back: safe again, without a restart.
    f.restore_token(&a);
    f.restore_token(&b);
    let (code, v) = preflight(&d);
    assert_eq!(code, 0, "{v}");
    d.wait_status("restart safe again", Duration::from_secs(30), |s| {
        s["restart_safe"] == true
    });
}

#[test]
fn preflight_does_not_count_a_seal_that_answers_but_does_not_wrap_the_root_key() {
    let f = Fixture::two_seals();
    // The second pair is configured but disabled, so it holds no wrapping of the root key.
    let primary = f.pkcs11_seal(
        "primary",
        &["sealkeeper-a", "sealkeeper-b"],
        "sealkeeper-root",
        "priority = 1",
    );
    let secondary = f.pkcs11_seal(
        "secondary",
        &["sealkeeper-c", "sealkeeper-d"],
        "second-root",
        "priority = 2",
    );
    f.set_seals(&format!("{primary}{}", disabled(&secondary)));
    let d = f.start();
    d.init();
    let (code, v) = preflight(&d);
    assert_eq!(code, 0, "{v}");
    assert!(strings(&v["relies_on"])[0].starts_with("primary/"), "{v}");

    // The seal that wraps the root key goes away; the other is up, and does not count.
    let _a = f.remove_token("sealkeeper-a");
    let _b = f.remove_token("sealkeeper-b");
    let (code, v) = preflight(&d);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["safe"], false);
    let st = d.wait_status("restart not safe", Duration::from_secs(30), |s| {
        s["restart_safe"] == false
    });
    let reason = st["restart"]["reason"].as_str().unwrap();
    assert!(reason.contains("primary/hsm-a is down"), "{reason}");
    assert!(
        !reason.contains("secondary/"),
        "the disabled seal is not relied on: {reason}"
    );
    drop(d);

    // With both seals enabled (both wrap the root key), the same outage is safe: the second
    // pair unwraps.
    f.set_seals(&format!("{primary}{secondary}"));
    f.restore_token(&_a);
    f.restore_token(&_b);
    let d = f.start();
    d.wait_health(200, Duration::from_secs(20));
    d.wait_status(
        "the second pair wraps the root key too",
        Duration::from_secs(30),
        |s| {
            s["seals_missing_wrapping"]
                .as_array()
                .is_some_and(|m| m.is_empty())
        },
    );
    let _a = f.remove_token("sealkeeper-a");
    let _b = f.remove_token("sealkeeper-b");
    let (code, v) = preflight(&d);
    assert_eq!(code, 0, "{v}");
    assert!(strings(&v["relies_on"])[0].starts_with("secondary/"), "{v}");
}
