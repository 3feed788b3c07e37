//! Vault-compatible sys/health and sys/seal-status in every state, and the TLS listener.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;

/// (query, expected status) in a given state, per Vault's rules.
fn check_codes(d: &Daemon, default: u16, sealed: bool, initialized: bool) {
    let h = d.health("");
    assert_eq!(h.status, default, "{}", h.body);
    let b = h.json();
    assert_eq!(b["initialized"], initialized);
    assert_eq!(b["sealed"], sealed);
    for field in ["standby", "performance_standby", "enterprise"] {
        assert_eq!(b[field], false, "{field}");
    }
    assert_eq!(b["replication_performance_mode"], "disabled");
    assert_eq!(b["replication_dr_mode"], "disabled");
    assert!(b["server_time_utc"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(b["version"], env!("CARGO_PKG_VERSION"));
    assert!(b["echo_duration_ms"].is_number() && b["clock_skew_ms"].is_number());
    assert_eq!(
        b["cluster_id"].is_string(),
        initialized && !sealed,
        "cluster_id only when unsealed: {b}"
    );
    assert_eq!(b["cluster_name"].is_string(), initialized && !sealed);

    // The code parameter for the current state replaces the default; the others do not apply.
    let own = if !initialized {
        "uninitcode"
    } else if sealed {
        "sealedcode"
    } else {
        "activecode"
    };
    for p in [
        "activecode",
        "sealedcode",
        "uninitcode",
        "standbycode",
        "drsecondarycode",
        "performancestandbycode",
    ] {
        let got = d.health(&format!("?{p}=299")).status;
        let want = if p == own { 299 } else { default };
        assert_eq!(got, want, "{p}=299 in state default {default}");
    }
    // What the Vault Go client sends.
    let all = d.health("?activecode=299&standbycode=299&drsecondarycode=299&performancestandbycode=299&sealedcode=299&uninitcode=299");
    assert_eq!(all.status, 299);
    // standbyok / perfstandbyok do not change an active, sealed or uninitialized answer.
    for q in [
        "?standbyok=true",
        "?perfstandbyok=true",
        "?standbyok",
        "?standbyok=false&perfstandbyok=0",
    ] {
        assert_eq!(d.health(q).status, default, "{q}");
    }
    // Bad values: 400 with a Vault-style error body.
    for q in [
        "?activecode=abc",
        "?sealedcode=2.5",
        "?uninitcode=",
        "?standbycode=99",
        "?standbyok=maybe",
    ] {
        let r = d.health(q);
        assert_eq!(r.status, 400, "{q}");
        assert!(
            r.json()["errors"][0]
                .as_str()
                .unwrap()
                .contains("bad value for"),
            "{q}: {}",
            r.body
        );
    }
    // HEAD: same status, no body.
    let head = http(d.port, "HEAD", "/v1/sys/health").unwrap();
    assert_eq!(head.status, default);
    assert!(head.body.is_empty(), "HEAD body: {:?}", head.body);
    assert_eq!(
        http(
            d.port,
            "HEAD",
            "/v1/sys/health?sealedcode=204&uninitcode=204&activecode=204"
        )
        .unwrap()
        .status,
        204
    );
}

fn check_seal_status(d: &Daemon, sealed: bool, initialized: bool) {
    let r = d.get("/v1/sys/seal-status");
    assert_eq!(r.status, 200);
    let s = r.json();
    assert_eq!(s["type"], "pkcs11");
    assert_eq!(s["initialized"], initialized);
    assert_eq!(s["sealed"], sealed);
    assert_eq!(s["recovery_seal"], true);
    assert_eq!(s["recovery_seal_type"], "shamir");
    assert_eq!(s["migration"], false);
    assert_eq!(s["progress"], 0);
    assert_eq!(s["nonce"], "");
    assert_eq!(s["storage_type"], "file");
    assert!(s["version"].is_string());
    // An RFC 3339 time, as Vault reports it (the commit's time, or SOURCE_DATE_EPOCH).
    let date = s["build_date"].as_str().unwrap();
    assert!(
        date.len() == 20 && date.ends_with('Z') && date.starts_with("20") && &date[10..11] == "T",
        "{date}"
    );
    let (t, n) = if initialized { (2, 3) } else { (0, 0) };
    assert_eq!(s["t"], t);
    assert_eq!(s["n"], n);
    assert_eq!(s["cluster_id"].is_string(), initialized && !sealed);
}

#[test]
fn health_and_seal_status_in_every_state() {
    let f = Fixture::new();
    let d = f.start();
    check_codes(&d, 501, true, false);
    check_seal_status(&d, true, false);

    d.init();
    check_codes(&d, 200, false, true);
    check_seal_status(&d, false, true);

    d.operator_ok(&["seal"]);
    check_codes(&d, 503, true, true);
    check_seal_status(&d, true, true);

    // The admin socket answers seal-status too.
    let r = d.admin_curl("GET", "/v1/sys/seal-status", None);
    assert_eq!(r.status, 200);
    let s = r.json();
    assert_eq!(s["sealed"], true);
    assert_eq!(s["n"], 3);
}

#[test]
fn unknown_paths_and_methods_get_vault_style_errors() {
    let f = Fixture::new();
    let d = f.start();
    let r = d.get("/v1/sys/nope");
    assert_eq!(r.status, 404);
    assert!(
        r.json()["errors"][0]
            .as_str()
            .unwrap()
            .contains("/v1/sys/nope"),
        "{}",
        r.body
    );
    let r = http(d.port, "DELETE", "/v1/sys/health").unwrap();
    assert_eq!(r.status, 405);
    assert!(r.json()["errors"].is_array());
    // Admin operations are not on the public listener.
    let r = http(d.port, "PUT", "/v1/sys/init").unwrap();
    assert_eq!(r.status, 405, "GET sys/init is public, initializing is not");
    assert_eq!(
        http(d.port, "GET", "/v1/sys/init").unwrap().json()["initialized"],
        false
    );
    let r = http(d.port, "PUT", "/v1/sys/seal").unwrap();
    assert_eq!(r.status, 404);
}

#[test]
fn tls_listener_serves_health_over_tls_1_2_and_1_3_only() {
    let f = Fixture::with_tls();
    let d = f.start();
    let cacert = f.path("tls/server.crt");
    let url = format!("https://localhost:{}/v1/sys/health", f.port);
    let curl = |extra: &[&str]| {
        std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{ssl_verify_result}",
                "--cacert",
            ])
            .arg(&cacert)
            .args(extra)
            .arg(&url)
            .output()
            .unwrap()
    };
    let out = curl(&["--tlsv1.3"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "501 0");
    let out = curl(&["--tlsv1.2", "--tls-max", "1.2"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "501 0");
    // TLS 1.1 refused, tested with a client that really speaks it: gnutls-cli completes a TLS
    // 1.1 handshake with gnutls-serv (the control), and fails against the listener, which the same
    // client reaches with TLS 1.2.
    let tls11 = "NORMAL:-VERS-ALL:+VERS-TLS1.1";
    let control_port = free_port();
    let mut control = std::process::Command::new("gnutls-serv")
        .args(["--x509certfile"])
        .arg(&cacert)
        .arg("--x509keyfile")
        .arg(f.path("tls/server.key"))
        .args(["-p", &control_port.to_string(), "--priority", tls11])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        std::time::Duration::from_secs(10),
        || listening(control_port).then_some(()),
        || "gnutls-serv did not start".into(),
    );
    let gnutls = |port: u16, priority: &str| {
        std::process::Command::new("gnutls-cli")
            .args([
                "--insecure",
                "--priority",
                priority,
                "-p",
                &port.to_string(),
                "127.0.0.1",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let ctl = gnutls(control_port, tls11);
    let _ = control.kill();
    let _ = control.wait();
    assert!(
        String::from_utf8_lossy(&ctl.stdout).contains("Handshake was completed"),
        "the client cannot speak TLS 1.1, so it cannot test the refusal: {}",
        String::from_utf8_lossy(&ctl.stderr)
    );
    let out = gnutls(d.port, tls11);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("Handshake was completed"),
        "TLS 1.1 must be refused"
    );
    let out = gnutls(d.port, "NORMAL:-VERS-ALL:+VERS-TLS1.2");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Handshake was completed"));
    // Plain HTTP on the TLS port gets no HTTP answer at all (the node is uninitialized: any answer
    // would be a 501).
    let plain = http(d.port, "GET", "/v1/sys/health");
    assert!(
        plain.as_ref().map(|r| r.status == 0).unwrap_or(true),
        "{:?}",
        plain.map(|r| r.status)
    );
    d.init();
    let out = curl(&[]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 0");
}
