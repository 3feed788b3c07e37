//! scripts/install.sh into a staging root: idempotent, and --uninstall removes what it installed,
//! keeps a changed config and never touches the state directory.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::Command;

use common::*;

fn install(root: &std::path::Path, extra: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install.sh"))
        .arg("--root")
        .arg(root)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn install_is_idempotent_and_uninstall_keeps_state_and_changed_config() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let out = install(root, &["--binary", BIN]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bin = root.join("usr/local/bin/sealkeeper");
    let v = Command::new(&bin).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("sealkeeper "));
    for f in [
        "etc/systemd/system/sealkeeper.service",
        "usr/lib/sysusers.d/sealkeeper.conf",
        "usr/lib/tmpfiles.d/sealkeeper.conf",
        "usr/share/doc/sealkeeper/hsm-profiles/luna7.toml",
        "usr/share/man/man1/sealkeeper.1.gz",
        "usr/share/man/man1/sealkeeper-operator-preflight.1.gz",
        "usr/share/man/man1/sealkeeper-hsm-probe.1.gz",
        "usr/share/bash-completion/completions/sealkeeper",
        "usr/share/zsh/vendor-completions/_sealkeeper",
        "usr/share/fish/vendor_completions.d/sealkeeper.fish",
    ] {
        assert!(root.join(f).is_file(), "{f}");
    }
    // The bash completion is valid bash.
    let check = Command::new("bash")
        .arg("-n")
        .arg(root.join("usr/share/bash-completion/completions/sealkeeper"))
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", stderr(&check));
    // The skeleton is a valid config.
    let cfg = root.join("etc/sealkeeper/sealkeeper.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    sealkeeper::config::Config::parse(&text, &cfg).unwrap();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&cfg).unwrap().permissions())
            & 0o777;
    assert_eq!(mode, 0o640);

    // Again: the same files, and an existing config is kept.
    std::fs::write(&cfg, format!("{text}\n# changed by the operator\n")).unwrap();
    let out = install(root, &["--binary", BIN]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("kept /etc/sealkeeper/sealkeeper.toml"));
    assert!(
        std::fs::read_to_string(&cfg)
            .unwrap()
            .contains("changed by the operator")
    );

    // State written by the daemon.
    let state = root.join("var/lib/sealkeeper/data/core");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("init"), b"state").unwrap();

    let out = install(root, &["--uninstall"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!bin.exists() && !root.join("etc/systemd/system/sealkeeper.service").exists());
    assert!(
        !root.join("usr/share/man").exists(),
        "the man pages are removed"
    );
    assert!(!root.join("usr/share/bash-completion").exists());
    assert!(cfg.exists(), "a changed config is kept");
    assert_eq!(
        std::fs::read(state.join("init")).unwrap(),
        b"state",
        "the state directory is never removed"
    );
    // Uninstalling twice is harmless.
    assert!(install(root, &["--uninstall"]).status.success());
}
