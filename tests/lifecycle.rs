//! Init once, auto-unseal at every start, operator seal/unseal, clean shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::*;

#[test]
fn init_then_restart_auto_unseals() {
    let f = Fixture::new();
    let mut d = f.start();
    assert_eq!(d.health("").status, 501);

    let init = d.init();
    let keys = init["recovery_keys"].as_array().unwrap();
    let keys_b64 = init["recovery_keys_base64"].as_array().unwrap();
    assert_eq!(keys.len(), 3);
    assert_eq!(keys_b64.len(), 3);
    assert_eq!(init["recovery_threshold"], 2);
    assert!(
        keys.iter().all(|k| k.as_str().unwrap().len() == 78),
        "hex shares: {init}"
    );
    assert_eq!(d.health("").status, 200, "init leaves the node unsealed");

    // Shares are never stored: no stored file contains one.
    for entry in walk(&f.path("data")) {
        let bytes = std::fs::read(&entry).unwrap();
        for k in keys.iter().chain(keys_b64.iter()) {
            let k = k.as_str().unwrap().as_bytes();
            assert!(
                !bytes.windows(k.len()).any(|w| w == k),
                "share found in {}",
                entry.display()
            );
        }
    }
    assert_eq!(d.stop().code(), Some(0));

    let d = f.start();
    d.wait_health(200, Duration::from_secs(10));
    let st = d.status_json();
    assert_eq!(st["state"], "unsealed");
    assert_eq!(st["seal_type"], "pkcs11");
    assert_eq!(st["unsealed_by"], "hsm-a");
    assert_eq!(st["recovery_shares"], 3);
    assert_eq!(st["recovery_threshold"], 2);
    assert_eq!(member(&st, "hsm-a")["healthy"], true);
    assert!(
        d.log().contains("unsealed"),
        "the log names the unseal: {}",
        d.log()
    );
}

#[test]
fn second_init_is_refused_and_changes_nothing() {
    let f = Fixture::new();
    let d = f.start();
    d.init();
    let before: Vec<_> = walk(&f.path("data"))
        .iter()
        .map(|p| (p.clone(), std::fs::read(p).unwrap()))
        .collect();
    let err = d.init_fails();
    assert!(err.contains("already initialized"), "{err}");
    assert_eq!(err.lines().count(), 1, "one-line error: {err}");
    let after: Vec<_> = walk(&f.path("data"))
        .iter()
        .map(|p| (p.clone(), std::fs::read(p).unwrap()))
        .collect();
    assert_eq!(before, after);

    // The raw API answers 400 with a Vault-style body.
    let r = d.admin_curl(
        "PUT",
        "/v1/sys/init",
        Some(r#"{"recovery_shares":1,"recovery_threshold":1}"#),
    );
    assert_eq!(r.status, 400);
    let text = r.body;
    assert!(
        text.contains(r#"{"errors":["sealkeeper is already initialized"]}"#),
        "{text}"
    );
}

#[test]
fn bad_init_parameters_are_refused() {
    let f = Fixture::new();
    let d = f.start();
    let out = d.operator(&[
        "init",
        "--recovery-shares",
        "3",
        "--recovery-threshold",
        "5",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("threshold 5 with 3 shares"),
        "{}",
        stderr(&out)
    );
    assert_eq!(d.health("").status, 501, "still uninitialized");
}

#[test]
fn operator_seal_gives_503_and_unseal_gives_200() {
    let f = Fixture::new();
    let d = f.start();
    d.init();
    d.operator_ok(&["seal"]);
    assert_eq!(d.health("").status, 503);
    // An operator seal is not undone by the automatic retry loop: while the background tasks run
    // (two probe rounds), no unseal is attempted.
    let before = d.status_json()["unseal_attempts"].as_u64().unwrap();
    let after = d.wait_probe_rounds(2);
    assert_eq!(after["unseal_attempts"].as_u64().unwrap(), before);
    assert_eq!(d.health("").status, 503);
    let st = d.status_json();
    assert_eq!(st["state"], "sealed");
    assert_eq!(st["manually_sealed"], true);

    let out = d.operator_ok(&["unseal"]);
    assert!(out.contains("hsm-a"), "{out}");
    assert_eq!(d.health("").status, 200);
}

/// The sizes (KiB) of every "released the resident pages" line in the daemon's log.
fn released_kib(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("released the resident pages"))
        .filter_map(|l| l.split("released_kib=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn start_ups_pages_are_released_when_quiet_after_each_unseal_and_what_serving_needs_comes_back() {
    let f = Fixture::new();
    let mut d = f.start();
    d.init();
    d.operator_ok(&["key", "create", "k"]);
    let token = d.policy_and_token("p", "k", "encrypt,decrypt");
    let r = d.put(
        "/v1/transit/encrypt/k",
        &token,
        &serde_json::json!({ "plaintext": "YQ==" }),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let ct = r.json()["data"]["ciphertext"].as_str().unwrap().to_string();
    d.stop();

    // Restarted: once it has unsealed and has been quiet for a while (5-10 s without a transit
    // request, an init or an unseal), the pages of the code start-up ran are dropped (the binary's
    // and the PKCS#11 module's text is resident then: some must be released).
    let d = f.start();
    d.wait_health(200, Duration::from_secs(10));
    let first = wait_for(
        Duration::from_secs(30),
        || released_kib(&d.log()).first().copied(),
        || format!("no release after the unseal: {}", d.log()),
    );
    assert!(first > 0, "nothing was resident to release: {}", d.log());

    // Everything serving, rotation and the HSM need still runs from the pages that fault back.
    let r = d.put(
        "/v1/transit/decrypt/k",
        &token,
        &serde_json::json!({ "ciphertext": ct }),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["data"]["plaintext"], "YQ==");
    d.operator_ok(&["key", "rotate", "k"]);
    let r = d.put(
        "/v1/transit/encrypt/k",
        &token,
        &serde_json::json!({ "plaintext": "Yg==" }),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["data"]["key_version"], 2);

    // An operator seal and unseal (the HSM's unwrap again) is activity: quiet after it, a release
    // once more.
    d.operator_ok(&["seal"]);
    assert_eq!(d.health("").status, 503);
    d.operator_ok(&["unseal"]);
    assert_eq!(d.health("").status, 200);
    wait_for(
        Duration::from_secs(30),
        || (released_kib(&d.log()).len() >= 2).then_some(()),
        || format!("no release after the second unseal: {}", d.log()),
    );
    let r = d.put(
        "/v1/transit/decrypt/k",
        &token,
        &serde_json::json!({ "ciphertext": ct }),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(d.status_json()["state"], "unsealed");

    // That request was transit traffic after the release: quiet after it, one more.
    wait_for(
        Duration::from_secs(30),
        || (released_kib(&d.log()).len() >= 3).then_some(()),
        || format!("no release after transit traffic: {}", d.log()),
    );
    // And none without activity: health checks and probes are not traffic. 60 probe rounds at
    // this fixture's 200 ms span more than two of the daemon's 5 s looks for quiet.
    for _ in 0..3 {
        assert_eq!(d.health("").status, 200);
    }
    d.wait_probe_rounds(60);
    assert_eq!(released_kib(&d.log()).len(), 3, "{}", d.log());
}

#[test]
fn sigterm_exits_zero_and_removes_the_socket() {
    let f = Fixture::new();
    let mut d = f.start();
    d.init();
    assert!(f.socket().exists());
    assert_eq!(d.stop().code(), Some(0));
    assert!(!f.socket().exists(), "socket file left behind");
    assert!(d.log().contains("stopped"), "{}", d.log());
}

#[test]
fn sigint_exits_zero_too() {
    let f = Fixture::new();
    let mut d = f.start();
    let mut child = d.child.take().unwrap();
    unsafe_free_kill(child.id(), "INT");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(!f.socket().exists());
}

#[test]
fn process_is_not_dumpable_and_key_memory_is_locked() {
    let f = Fixture::new();
    let d = f.start();
    d.init();
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let vmlck: u64 = status
        .lines()
        .find(|l| l.starts_with("VmLck:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(vmlck > 0, "VmLck is 0: {status}");
    // PR_SET_DUMPABLE 0 hands /proc/PID files to root; the limits show RLIMIT_CORE 0.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert!(core.split_whitespace().nth(4) == Some("0"), "{core}");
    assert_eq!(d.status_json()["memory_locked"], true);
}

#[test]
fn memory_that_cannot_be_locked_refuses_to_unseal_with_the_fix() {
    let f = Fixture::new();
    let d = f.start_with(|c| {
        // A memlock limit of 0 for the daemon only, set by prlimit(1) around the exec; root also
        // loses CAP_IPC_LOCK (setpriv), which would let it lock memory regardless of the limit.
        let program = c.get_program().to_owned();
        let args: Vec<_> = c.get_args().map(|a| a.to_owned()).collect();
        let root = String::from_utf8(
            std::process::Command::new("id")
                .arg("-u")
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
        .trim()
            == "0";
        *c = {
            let mut n = if root {
                let mut n = std::process::Command::new("setpriv");
                n.args(["--bounding-set", "-ipc_lock", "prlimit"]);
                n
            } else {
                std::process::Command::new("prlimit")
            };
            n.arg("--memlock=0:0").arg(program).args(args);
            n.env("SOFTHSM2_CONF", f.softhsm_conf());
            n.stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(f.path("memlock.log")).unwrap());
            n
        };
    });
    let err = d.init_fails();
    assert!(
        err.contains("cannot lock") && err.contains("LimitMEMLOCK"),
        "{err}"
    );
    assert_eq!(d.health("").status, 501);
}

#[test]
fn json_logs_name_the_seal_member_and_duration_and_no_secret() {
    let f = Fixture::new();
    let mut d = f.start_with(|c| {
        c.arg("--log-format").arg("json");
    });
    let init = d.init();
    d.stop();
    let mut d = f.start_with(|c| {
        c.arg("--log-format").arg("json");
    });
    d.wait_health(200, Duration::from_secs(10));
    d.stop();
    let log = d.log();
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let unsealed = events
        .iter()
        .find(|e| e["message"] == "unsealed")
        .expect("an unsealed event");
    assert_eq!(unsealed["seal_type"], "pkcs11");
    assert_eq!(unsealed["member"], "hsm-a");
    assert!(unsealed["duration_ms"].is_u64());
    for secret in [
        f.pin("a"),
        f.pin("b"),
        init["recovery_keys"][0].as_str().unwrap().to_string(),
        init["recovery_keys_base64"][0]
            .as_str()
            .unwrap()
            .to_string(),
    ] {
        assert!(!log.contains(&secret), "a secret appears in the log");
    }
}

#[test]
fn pin_from_a_systemd_credential() {
    let f = Fixture::new();
    let creds = f.path("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::copy(f.path("hsm-a.pin"), creds.join("hsm-a-pin")).unwrap();
    let pin_path = f.path("hsm-a.pin");
    f.edit_config(|c| {
        c.replace(
            &format!("pin_file = \"{}\"", pin_path.display()),
            "pin_credential = \"hsm-a-pin\"",
        )
    });
    std::fs::remove_file(&pin_path).unwrap();
    let d = f.start_with(|c| {
        c.env("CREDENTIALS_DIRECTORY", &creds);
    });
    d.init();
    let st = d.status_json();
    assert_eq!(st["unsealed_by"], "hsm-a");
    assert_eq!(member(&st, "hsm-a")["healthy"], true);
}
