//! Prometheus metrics: every series driven at least once and read back with the Prometheus
//! project's own OpenMetrics parser (Python `prometheus_client`), on the public listener (token
//! with the metrics capability), the admin socket and the `[telemetry]` listener.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// GET with curl: (status, content type, body).
fn get(url: &str, token: Option<&str>) -> (u16, String, String) {
    let mut c = Command::new("curl");
    c.args(["-s", "-o", "-", "-w", "\n%{http_code} %{content_type}"]);
    if let Some(t) = token {
        c.args(["-H", &format!("X-Vault-Token: {t}")]);
    }
    let out = c.arg(url).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap();
    let (code, ctype) = tail.split_once(' ').unwrap_or((tail, ""));
    (
        code.parse().unwrap_or(0),
        ctype.to_string(),
        body.to_string(),
    )
}

/// The families the strict OpenMetrics parser read from `text`.
fn parse(text: &str) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compat/parse_metrics.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}\n{text}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

type Labels<'a> = &'a [(&'a str, &'a str)];

/// The family a sample belongs to: its name without the counter's or histogram's suffix.
fn family_of<'a>(families: &Value, sample: &'a str) -> &'a str {
    for suffix in ["_total", "_count", "_sum", "_bucket", "_created"] {
        if let Some(f) = sample.strip_suffix(suffix)
            && families.get(f).is_some()
        {
            return f;
        }
    }
    sample
}

/// The value of the sample `name` whose labels include every pair of `labels`.
fn need(families: &Value, name: &str, labels: Labels) -> f64 {
    let family = family_of(families, name);
    families[family]["samples"]
        .as_array()
        .and_then(|samples| {
            samples
                .iter()
                .find(|s| s[0] == name && labels.iter().all(|(k, v)| s[1][*k].as_str() == Some(*v)))
        })
        .and_then(|s| s[2].as_f64())
        .unwrap_or_else(|| panic!("no {name}{labels:?} in {}", families[family]))
}

#[test]
fn every_series_parses_and_counts_what_happened() {
    let f = Fixture::new();
    let telemetry = free_port();
    f.edit_config(|c| format!("{c}\n[telemetry]\naddress = \"127.0.0.1:{telemetry}\"\n"));
    let failing = f.path("audit-sync-fails");
    let d = f.start_with(|c| {
        c.env("SEALKEEPER_FAULT_FAIL", "audit:sync")
            .env("SEALKEEPER_FAULT_FAIL_WHILE", &failing);
    });
    let public = format!(
        "http://127.0.0.1:{}/v1/sys/metrics?format=prometheus",
        d.port
    );
    let scrape = format!("http://127.0.0.1:{telemetry}/metrics");

    // Sealed: no tokens to check yet, but the telemetry listener answers.
    assert_eq!(get(&public, Some("x")).0, 503);
    let (code, ctype, body) = get(&scrape, None);
    assert_eq!(code, 200, "{body}");
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    let m = parse(&body);
    assert_eq!(
        need(&m, "sealkeeper_state", &[("state", "uninitialized")]),
        1.0
    );
    assert_eq!(need(&m, "sealkeeper_restart_safe", &[]), 0.0);

    d.init();
    let mut tp = TransitProbe::new(&d);
    let ct = tp.encrypt(&d, "counted");
    tp.assert_decrypts(&d, &ct, "counted");
    // A key that does not exist, a bad token, and a denied request.
    let r = http_with(
        d.port,
        "PUT",
        "/v1/transit/encrypt/no-such-key",
        Some(&tp.token),
        b"{}",
    )
    .unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    let r = http_with(
        d.port,
        "PUT",
        "/v1/transit/encrypt/k",
        Some("s.bogus"),
        b"{}",
    )
    .unwrap();
    assert_eq!(r.status, 403);
    // An audit sync that fails: the request is refused (503) and counted.
    std::fs::write(&failing, b"").unwrap();
    let r = http_with(
        d.port,
        "PUT",
        "/v1/transit/encrypt/k",
        Some(&tp.token),
        br#"{"plaintext":"AAAA"}"#,
    )
    .unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    std::fs::remove_file(&failing).unwrap();
    // A member goes away: its probes fail and it is reported down.
    let parked = f.remove_token("sealkeeper-a");
    d.wait_status("hsm-a down", Duration::from_secs(30), |s| {
        member(s, "hsm-a")["healthy"] == false
    });
    // A failed unseal: both members away, sealed by the operator, then asked to unseal.
    let parked_b = f.remove_token("sealkeeper-b");
    d.operator_ok(&["seal"]);
    assert!(!d.operator(&["unseal"]).status.success());
    // Sealed with the whole seal down: the state and the seal's since-when gauge say so.
    let m = parse(&get(&scrape, None).2);
    assert_eq!(need(&m, "sealkeeper_state", &[("state", "sealed")]), 1.0);
    assert_eq!(
        need(&m, "sealkeeper_seal_healthy", &[("seal", "hsm-pair")]),
        0.0
    );
    let since = need(
        &m,
        "sealkeeper_seal_unhealthy_since_timestamp_seconds",
        &[("seal", "hsm-pair")],
    );
    assert!(since > 1.7e9, "{since}");
    assert_eq!(need(&m, "sealkeeper_restart_safe", &[]), 0.0);
    f.restore_token(&parked);
    f.restore_token(&parked_b);
    d.operator_ok(&["unseal"]);
    d.wait_health(200, Duration::from_secs(20));
    d.wait_status("both members back", Duration::from_secs(30), |s| {
        member(s, "hsm-a")["healthy"] == true && member(s, "hsm-b")["healthy"] == true
    });

    // The public listener: only a token whose policy grants `metrics`.
    assert_eq!(get(&public, None).0, 403);
    assert_eq!(
        get(&public, Some(&tp.token)).0,
        403,
        "a transit token may not read metrics"
    );
    d.operator_ok(&[
        "policy",
        "write",
        "scraper",
        "--key",
        "*",
        "--capabilities",
        "metrics",
    ]);
    let scraper = d.token("scraper", &[]);
    let (code, ctype, body) = get(&public, Some(&scraper));
    assert_eq!(code, 200, "{body}");
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert_eq!(
        get(
            &format!("http://127.0.0.1:{}/v1/sys/metrics", d.port),
            Some(&scraper)
        )
        .0,
        400
    );
    let m = parse(&body);
    // Nothing secret is in it.
    assert!(!body.contains(&tp.token) && !body.contains(&scraper) && !body.contains(&f.pin("a")));

    // State, then every event series with the least it must have counted by now.
    let exact: &[(&str, Labels, f64)] = &[
        ("sealkeeper_state", &[("state", "unsealed")], 1.0),
        ("sealkeeper_state", &[("state", "sealed")], 0.0),
        ("sealkeeper_seal_healthy", &[("seal", "hsm-pair")], 1.0),
        (
            "sealkeeper_seal_wraps_current_root",
            &[("seal", "hsm-pair")],
            1.0,
        ),
        (
            "sealkeeper_seal_member_healthy",
            &[("seal", "hsm-pair"), ("member", "hsm-b")],
            1.0,
        ),
    ];
    for (name, labels, want) in exact {
        assert_eq!(need(&m, name, labels), *want, "{name}{labels:?}");
    }
    let at_least: &[(&str, Labels, f64)] = &[
        // The operator's failed unseal, and the successful ones.
        (
            "sealkeeper_unseal_attempts_total",
            &[("outcome", "failure")],
            1.0,
        ),
        (
            "sealkeeper_unseal_attempts_total",
            &[("outcome", "success"), ("seal", "hsm-pair")],
            1.0,
        ),
        // HSM calls by seal, member and operation; hsm-a's failed probes.
        (
            "sealkeeper_seal_call_duration_seconds_count",
            &[("seal", "hsm-pair"), ("operation", "wrap")],
            1.0,
        ),
        (
            "sealkeeper_seal_call_duration_seconds_count",
            &[("operation", "unwrap")],
            1.0,
        ),
        (
            "sealkeeper_seal_call_failures_total",
            &[("member", "hsm-a"), ("operation", "probe")],
            1.0,
        ),
        // Transit by key, operation and outcome; an unknown key counts under key="".
        (
            "sealkeeper_transit_requests_total",
            &[("key", "k"), ("operation", "encrypt"), ("outcome", "ok")],
            1.0,
        ),
        (
            "sealkeeper_transit_requests_total",
            &[("key", "k"), ("operation", "decrypt"), ("outcome", "ok")],
            1.0,
        ),
        (
            "sealkeeper_transit_requests_total",
            &[("key", ""), ("operation", "encrypt"), ("outcome", "denied")],
            1.0,
        ),
        // The audit failure's 503.
        (
            "sealkeeper_transit_requests_total",
            &[
                ("key", "k"),
                ("operation", "encrypt"),
                ("outcome", "sealed"),
            ],
            1.0,
        ),
        (
            "sealkeeper_transit_request_duration_seconds_count",
            &[("operation", "encrypt")],
            3.0,
        ),
        (
            "sealkeeper_auth_failures_total",
            &[("listener", "public"), ("reason", "token")],
            1.0,
        ),
        (
            "sealkeeper_connections_total",
            &[("listener", "public")],
            5.0,
        ),
        (
            "sealkeeper_connections_total",
            &[("listener", "admin")],
            1.0,
        ),
        // This scrape's own connection.
        (
            "sealkeeper_connections_open",
            &[("listener", "public")],
            1.0,
        ),
        ("sealkeeper_audit_sync_duration_seconds_count", &[], 3.0),
        ("sealkeeper_audit_records_per_sync_sum", &[], 3.0),
        ("sealkeeper_audit_written_bytes_total", &[], 100.0),
        ("sealkeeper_audit_failures_total", &[], 1.0),
        ("process_resident_memory_bytes", &[], 1e6),
        ("process_open_fds", &[], 3.0),
        ("process_max_fds", &[], 3.0),
    ];
    for (name, labels, min) in at_least {
        let v = need(&m, name, labels);
        assert!(v >= *min, "{name}{labels:?} = {v}, expected at least {min}");
    }
    let types = [
        ("sealkeeper_state", "gauge", None),
        ("sealkeeper_unseal_attempts", "counter", None),
        (
            "sealkeeper_seal_call_duration_seconds",
            "histogram",
            Some("seconds"),
        ),
        ("sealkeeper_audit_written_bytes", "counter", Some("bytes")),
    ];
    for (family, kind, unit) in types {
        assert_eq!(m[family]["type"], kind, "{family}");
        if let Some(u) = unit {
            assert_eq!(m[family]["unit"], u, "{family}");
        }
    }
    assert!(
        !body.contains("no-such-key"),
        "an unknown key name is never a label value"
    );

    // hsm-a is down again: the member's since-when gauge appears, restart safety stays.
    let _parked = f.remove_token("sealkeeper-a");
    d.wait_status("hsm-a down", Duration::from_secs(30), |s| {
        member(s, "hsm-a")["healthy"] == false
    });
    let m = parse(&get(&scrape, None).2);
    let a = [("seal", "hsm-pair"), ("member", "hsm-a")];
    assert_eq!(need(&m, "sealkeeper_seal_member_healthy", &a), 0.0);
    let since = need(
        &m,
        "sealkeeper_seal_member_unhealthy_since_timestamp_seconds",
        &a,
    );
    assert!(since > 1.7e9, "{since}");
    assert_eq!(
        need(&m, "sealkeeper_restart_safe", &[]),
        1.0,
        "hsm-b answers"
    );

    // The admin socket serves them without a token.
    let r = d.admin_curl("GET", "/v1/sys/metrics?format=prometheus", None);
    assert_eq!(r.status, 200);
    parse(&r.body);
    assert_eq!(d.admin_curl("GET", "/v1/sys/metrics", None).status, 400);
    drop(d);

    // A refused admin peer is a failed authentication, seen on the telemetry listener.
    f.edit_config(|c| {
        c.replace(
            &format!("allowed_uids = [{}]", current_uid()),
            "allowed_uids = [4242]",
        )
    });
    let d = f.start();
    assert!(!d.operator(&["status"]).status.success());
    let m = parse(&get(&scrape, None).2);
    assert!(
        need(
            &m,
            "sealkeeper_auth_failures_total",
            &[("listener", "admin"), ("reason", "peer_refused")]
        ) >= 1.0
    );
}

#[test]
fn a_telemetry_address_in_use_is_a_clear_start_error() {
    let f = Fixture::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    f.edit_config(|c| format!("{c}\n[telemetry]\naddress = \"127.0.0.1:{port}\"\n"));
    let err = f.start_fails();
    assert!(
        err.contains(&format!("127.0.0.1:{port} ([telemetry] address)")),
        "{err}"
    );
}
