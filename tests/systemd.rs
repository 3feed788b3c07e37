//! systemd integration: sd_notify READY/STATUS/WATCHDOG/STOPPING over a real notify socket, and
//! the unit's exposure as systemd-analyze rates it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::*;

/// Reads notify messages until `done` holds for everything received, or `within` passes.
fn collect(
    sock: &UnixDatagram,
    got: &mut Vec<String>,
    within: Duration,
    done: impl Fn(&[String]) -> bool,
) {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !done(got) {
        if let Ok(n) = sock.recv(&mut buf) {
            got.extend(String::from_utf8_lossy(&buf[..n]).lines().map(String::from));
        }
    }
}

#[test]
fn ready_status_watchdog_and_stopping_are_notified() {
    let f = Fixture::new();
    let path = f.path("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut d = f.start_with(|c| {
        c.env("NOTIFY_SOCKET", &path).env("WATCHDOG_USEC", "200000");
    });
    let mut got = Vec::new();
    collect(&sock, &mut got, Duration::from_secs(5), |g| {
        g.iter().any(|m| m == "READY=1") && g.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3
    });
    assert!(got.iter().any(|m| m == "READY=1"), "{got:?}");
    assert!(
        got.iter().any(|m| m.starts_with("STATUS=uninitialized")),
        "{got:?}"
    );
    assert!(
        got.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3,
        "watchdog pings at half of WATCHDOG_USEC: {got:?}"
    );

    d.init();
    collect(&sock, &mut got, Duration::from_secs(5), |g| {
        g.iter().any(|m| m.starts_with("STATUS=unsealed by hsm-a"))
    });
    assert!(
        got.iter()
            .any(|m| m.starts_with("STATUS=unsealed by hsm-a")),
        "{got:?}"
    );

    d.stop();
    collect(&sock, &mut got, Duration::from_secs(2), |g| {
        g.iter().any(|m| m == "STOPPING=1")
    });
    assert!(got.iter().any(|m| m == "STOPPING=1"), "{got:?}");
}

#[test]
fn sealed_status_names_the_reason() {
    let f = Fixture::new();
    let mut d = f.start();
    d.init();
    d.stop();
    let _a = f.remove_token("sealkeeper-a");
    let _b = f.remove_token("sealkeeper-b");
    let path = f.path("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let _d = f.start_with(|c| {
        c.env("NOTIFY_SOCKET", &path).env("WATCHDOG_USEC", "200000");
    });
    let mut got = Vec::new();
    collect(&sock, &mut got, Duration::from_secs(5), |g| {
        g.iter().any(|m| m.starts_with("STATUS=sealed, retrying:"))
    });
    let status = got
        .iter()
        .find(|m| m.starts_with("STATUS=sealed, retrying:"))
        .expect("a sealed status");
    assert!(status.contains("no member could unwrap"), "{status}");
}

#[test]
fn unit_exposure_is_at_most_2_0() {
    let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/sealkeeper.service");
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=20", unit])
        .output()
        .expect("systemd-analyze (package systemd)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exposure above 2.0:\n{text}");
    let level: f64 = text
        .lines()
        .find_map(|l| l.split("exposure level for sealkeeper.service: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("an exposure level");
    assert!(level <= 2.0, "{level}");
}
