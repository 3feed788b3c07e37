//! The admin socket: peer credentials, file mode, stale sockets, socket resolution, --help.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::Command;

use common::*;

#[test]
fn peer_not_in_allowlist_is_refused_and_logged() {
    let f = Fixture::new();
    f.edit_config(|c| {
        c.replace(
            &format!("allowed_uids = [{}]", current_uid()),
            "allowed_uids = [4242]",
        )
    });
    let d = f.start();
    let out = d.operator(&["status"]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains(&format!("permission denied: uid {}", current_uid())),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1);
    d.init_fails();
    assert_eq!(d.health("").status, 501, "a refused peer changed nothing");
    assert!(d.log().contains("admin connection refused"), "{}", d.log());
    let mode = std::fs::metadata(f.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn allowed_group_gets_a_0660_socket_and_access() {
    let f = Fixture::new();
    let gid = String::from_utf8(Command::new("id").arg("-g").output().unwrap().stdout).unwrap();
    f.edit_config(|c| {
        c.replace(
            &format!("allowed_uids = [{}]", current_uid()),
            &format!("allowed_uids = []\nallowed_gids = [{}]", gid.trim()),
        )
    });
    let d = f.start();
    let mode = std::fs::metadata(f.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    d.operator_ok(&["status"]);
}

#[test]
fn stale_socket_is_replaced_but_a_regular_file_is_not() {
    let f = Fixture::new();
    // A stale socket left by a killed daemon.
    let stale = std::os::unix::net::UnixListener::bind(f.socket()).unwrap();
    drop(stale);
    assert!(
        std::fs::symlink_metadata(f.socket())
            .unwrap()
            .file_type()
            .is_socket()
    );
    let mut d = f.start();
    d.operator_ok(&["status"]);
    d.stop();

    std::fs::write(f.socket(), b"precious").unwrap();
    let e = f.start_fails();
    assert!(e.contains("is not a socket is in the way"), "{e}");
    assert_eq!(std::fs::read(f.socket()).unwrap(), b"precious");
}

#[test]
fn socket_is_found_from_env_and_from_config() {
    let f = Fixture::new();
    let _d = f.start();
    let run = |args: &[&str], env: Option<&std::path::Path>| {
        let mut c = Command::new(BIN);
        c.arg("operator").args(args).env_remove("SEALKEEPER_SOCKET");
        if let Some(p) = env {
            c.env("SEALKEEPER_SOCKET", p);
        }
        c.output().unwrap()
    };
    assert!(run(&["status"], Some(&f.socket())).status.success());
    let cfg = f.config_path();
    assert!(
        run(&["--config", cfg.to_str().unwrap(), "status"], None)
            .status
            .success()
    );
    // --socket wins over the environment.
    let out = run(
        &["--socket", "/nonexistent/admin.sock", "status"],
        Some(&f.socket()),
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent/admin.sock"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unseal_keys_are_refused_on_an_auto_seal() {
    let f = Fixture::new();
    let d = f.start();
    d.init();
    let r = d.admin_curl("PUT", "/v1/sys/unseal", Some(r#"{"key":"AQIB"}"#));
    assert_eq!(r.status, 400);
    let body = r.body;
    assert!(body.contains("recovery keys never unseal"), "{body}");
    let r = d.admin_curl("PUT", "/v1/sys/init", Some("{not json"));
    assert_eq!(r.status, 400);
    assert!(r.body.contains("invalid JSON body"), "{}", r.body);
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["server", "--help"],
        vec!["operator", "--help"],
        vec!["operator", "init", "--help"],
        vec!["operator", "status", "--help"],
        vec!["operator", "seal", "--help"],
        vec!["operator", "unseal", "--help"],
        vec!["operator", "rotate", "--help"],
        vec!["operator", "rotate-root", "--help"],
        vec!["operator", "rewrap", "--help"],
        vec!["operator", "rekey", "--help"],
        vec!["operator", "preflight", "--help"],
        vec!["completions", "--help"],
        vec!["man", "--help"],
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage:"), "{args:?}: {text}");
    }
    let out = Command::new(BIN)
        .args(["operator", "init"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn completions_and_man_pages_cover_every_command() {
    // Each shell's completion names the subcommands and their options.
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        for word in ["operator", "preflight", "recovery-shares", "token-label"] {
            assert!(text.contains(word), "{shell} completion lacks {word}");
        }
    }
    let out = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is an argument error"
    );

    // One page per command, each a roff page with the command's own options.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("man")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let page = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    assert!(page("sealkeeper.1").starts_with(".ie"), "roff");
    assert!(page("sealkeeper.1").contains(".TH sealkeeper 1"));
    assert!(page("sealkeeper-operator-init.1").contains("recovery\\-shares"));
    assert!(page("sealkeeper-hsm-probe.1").contains("token\\-label"));
    assert!(
        !dir.path().join("sealkeeper-help.1").exists(),
        "no page for the help pseudo-command"
    );
    let pages = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(pages > 30, "{pages} pages");
    // A directory that cannot be created is a clear error.
    let out = Command::new(BIN)
        .args(["man", "/proc/sealkeeper-man"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot create /proc/sealkeeper-man"),
        "{}",
        stderr(&out)
    );
}
