//! The provisioning script is idempotent: a second run keeps the tokens, the key, the PINs and the
//! certificate, so a provisioned pair is never replaced by accident.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::Command;

use common::*;

fn snapshot(f: &Fixture) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![];
    for rel in [
        "orig-hsm-a.pin",
        "hsm-b.pin",
        "so.pin",
        "tls/server.crt",
        "tls/server.key",
    ] {
        out.push((rel.to_string(), std::fs::read(f.path(rel)).unwrap()));
    }
    for label in ["sealkeeper-a", "sealkeeper-b"] {
        let dir = f.token_dir(label);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        out.push((dir.display().to_string(), names.join(",").into_bytes()));
    }
    out
}

#[test]
fn setup_softhsm_is_idempotent() {
    let f = Fixture::new();
    let d = f.start();
    d.init();
    drop(d);
    let before = snapshot(&f);
    let out = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/setup-softhsm.sh"
        ))
        .args([
            "--dir",
            f.dir.path().to_str().unwrap(),
            "--port",
            &f.port.to_string(),
            "--no-install",
        ])
        .env("SEALKEEPER_PKCS11_MODULE", module())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("provisioned"),
        "the second run must not provision again"
    );
    assert_eq!(snapshot(&f), before);
    // The same installation still auto-unseals from the kept tokens (the config was rewritten with
    // TLS on, the script's default).
    let d = f.start();
    d.wait_status("unsealed", std::time::Duration::from_secs(10), |s| {
        s["state"] == "unsealed"
    });
}

#[test]
fn every_script_help_is_its_header_and_nothing_else() {
    for script in [
        "scripts/demo.sh",
        "scripts/setup-softhsm.sh",
        "scripts/install.sh",
        "scripts/image-test.sh",
        "scripts/test.sh",
        "image/build.sh",
    ] {
        let out = Command::new("bash")
            .arg(format!("{}/{script}", env!("CARGO_MANIFEST_DIR")))
            .arg("--help")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{script} --help: {}", stderr(&out));
        assert!(text.lines().count() >= 2, "{script}: {text}");
        for leak in [
            "set -euo pipefail",
            "cd \"$(dirname",
            "cargo test --help",
            "\u{1b}[",
        ] {
            assert!(
                !text.contains(leak),
                "{script} --help prints {leak:?}:\n{text}"
            );
        }
        // The header's last sentence is complete.
        let last = text.trim_end().lines().last().unwrap_or("").trim_end();
        assert!(
            last.ends_with(['.', ')', ']']) || last.starts_with("  "),
            "{script} --help stops mid-sentence: {last:?}"
        );
    }
}
