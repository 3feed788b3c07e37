//! A rejected PIN is never retried in a loop: real HSMs lock the token after a few failures.
//! SoftHSM has no lockout, so C_Login calls are counted with OpenSC's pkcs11-spy in front of it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::*;

fn spy() -> String {
    std::env::var("TEST_PKCS11_SPY").unwrap_or_else(|_| {
        format!(
            "/usr/lib/{}-linux-gnu/pkcs11-spy.so",
            std::env::consts::ARCH
        )
    })
}

fn logins(f: &Fixture) -> usize {
    std::fs::read_to_string(f.path("spy.log"))
        .unwrap_or_default()
        .matches("C_Login")
        .count()
}

#[test]
fn wrong_pin_stays_sealed_with_one_login_per_operator_attempt() {
    let f = Fixture::new();
    let mut d = f.start();
    d.init();
    d.stop();

    // Single member, behind the spy, with a wrong PIN.
    f.edit_config(|c| {
        let cut = c.find("  [[seal.hsm]]\n  name = \"hsm-b\"").unwrap();
        c[..cut].replace(&module(), &spy())
    });
    std::fs::write(f.path("hsm-a.pin"), "000000\n").unwrap();
    let spy_env = |c: &mut std::process::Command| {
        c.env("PKCS11SPY", module())
            .env("PKCS11SPY_OUTPUT", f.path("spy.log"));
    };
    let d = f.start_with(spy_env);
    // Several automatic attempts pass (with backoff); the rejected PIN is not tried again.
    d.wait_unseal_attempts(4);
    assert_eq!(d.health("").status, 503);
    let st = d.status_json();
    let a = member(&st, "hsm-a");
    assert_eq!(a["state"], "pin_rejected", "{a}");
    let err = st["last_unseal_error"].as_str().unwrap();
    assert!(
        err.contains("hsm-a")
            && (err.contains("C_Login failed: CKR_PIN_INCORRECT")
                || err.contains("rejected before")),
        "{err}"
    );
    // Several automatic retries happened, but only one login.
    assert!(
        d.log().matches("still sealed; retrying").count() >= 2,
        "{}",
        d.log()
    );
    assert_eq!(logins(&f), 1, "automatic retries must not log in again");

    // Each operator attempt logs in exactly once more.
    let out = d.operator(&["unseal"]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("CKR_PIN_INCORRECT"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert_eq!(logins(&f), 2);
    let n = d.status_json()["unseal_attempts"].as_u64().unwrap();
    d.wait_unseal_attempts(n + 2);
    assert_eq!(
        logins(&f),
        2,
        "still no automatic login after the operator's attempt"
    );

    // Fixing the PIN source lets the automatic loop try again, and it unseals.
    let real = real_pin(&f, "a");
    std::fs::write(f.path("hsm-a.pin"), format!("{real}\n")).unwrap();
    d.wait_health(200, Duration::from_secs(10));
    assert_eq!(logins(&f), 3);
}

/// The PIN setup-softhsm.sh generated (the fixture keeps a copy before a test changes it).
fn real_pin(f: &Fixture, m: &str) -> String {
    std::fs::read_to_string(f.path(&format!("orig-hsm-{m}.pin")))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn pin_file_readable_by_others_is_refused() {
    let f = Fixture::new();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(f.path("hsm-a.pin"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let d = f.start();
    d.init();
    let st = d.status_json();
    assert_eq!(st["unsealed_by"], "hsm-b");
    let a = member(&st, "hsm-a");
    assert!(
        a["last_error"]
            .as_str()
            .unwrap()
            .contains("accessible by group or others"),
        "{a}"
    );
}
