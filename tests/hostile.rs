//! Hostile and broken clients: connections that never finish (handshake, headers, idle keep-alive),
//! more connections than the cap or the descriptor limit, amplifying batches, floods of bad
//! tokens, and HTTP details that strict clients trip over. Health and the admin socket keep
//! answering, and nothing local is blamed on the HSM.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use serde_json::{Value, json};

/// Sets `[listener]` keys (appended to the table).
fn listener(f: &Fixture, keys: &str) {
    f.edit_config(|c| c.replacen("[listener]\n", &format!("[listener]\n{keys}\n"), 1));
}

/// Waits until the server closes `s` (read returns 0 or an error), failing after `within`.
fn wait_closed(s: &mut TcpStream, within: Duration) {
    s.set_read_timeout(Some(within)).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!(
                    "the server kept the connection open for {:?}",
                    start.elapsed()
                )
            }
            Err(_) => return, // reset
        }
    }
}

/// One request on an open keep-alive connection; returns (status, headers, body).
fn request(s: &mut TcpStream, raw: &str) -> (u16, String, String) {
    s.write_all(raw.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed before the answer");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                return (status, head.to_string(), body[..len].to_string());
            }
        }
    }
}

fn get_keepalive(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")
}

#[test]
fn connections_that_never_finish_are_closed() {
    let f = Fixture::with_tls();
    listener(
        &f,
        "tls_handshake_timeout = \"1s\"\nhttp_read_header_timeout = \"1s\"\nhttp_idle_timeout = \"2s\"",
    );
    let d = f.start();
    // No ClientHello at all.
    let mut silent = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    wait_closed(&mut silent, Duration::from_secs(8));

    let f = Fixture::new();
    listener(
        &f,
        "http_read_header_timeout = \"1s\"\nhttp_idle_timeout = \"2s\"",
    );
    let d = f.start();
    // A partial header.
    let mut partial = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    partial
        .write_all(b"GET /v1/sys/health HTTP/1.1\r\nHost: loc")
        .unwrap();
    wait_closed(&mut partial, Duration::from_secs(8));
    // An idle keep-alive connection after one answer.
    let mut idle = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    let (status, _, _) = request(&mut idle, &get_keepalive("/v1/sys/health"));
    assert_eq!(status, 501);
    wait_closed(&mut idle, Duration::from_secs(10));
    // A connection that keeps asking stays open past the idle timeout.
    let mut busy = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        assert_eq!(request(&mut busy, &get_keepalive("/v1/sys/health")).0, 501);
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn the_connection_cap_keeps_open_probes_and_the_admin_socket_answering() {
    let f = Fixture::new();
    listener(
        &f,
        "max_connections = 20\nhttp_read_header_timeout = \"2s\"\nhttp_idle_timeout = \"60s\"",
    );
    let d = f.start();
    d.init();
    // A load balancer's probe connection, open before the flood.
    let mut probe = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    assert_eq!(request(&mut probe, &get_keepalive("/v1/sys/health")).0, 200);
    let flood: Vec<TcpStream> = (0..60)
        .map(|_| TcpStream::connect(("127.0.0.1", d.port)).unwrap())
        .collect();
    // The cap is reached (the log says so) ...
    let start = Instant::now();
    while !d.log().contains("connection cap reached") {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", d.log());
        assert_eq!(request(&mut probe, &get_keepalive("/v1/sys/health")).0, 200);
    }
    // ... and the open probe and the admin socket still answer, and no member is blamed.
    for _ in 0..5 {
        assert_eq!(request(&mut probe, &get_keepalive("/v1/sys/health")).0, 200);
    }
    let st = d.status_json();
    assert_eq!(member(&st, "hsm-a")["state"], "healthy", "{st:#}");
    // A new connection is served once the silent ones have been closed by the header timeout.
    let r = http(d.port, "GET", "/v1/sys/health").unwrap();
    assert_eq!(r.status, 200);
    drop(flood);
}

#[test]
fn the_descriptor_limit_lowers_the_cap_and_never_marks_an_hsm_down() {
    let f = Fixture::new();
    listener(
        &f,
        "max_connections = 5000\nhttp_read_header_timeout = \"3s\"",
    );
    let log = std::fs::File::create(f.path("prlimit.log")).unwrap();
    let mut child = Command::new("prlimit")
        .args(["--nofile=300:300", "--"])
        .arg(BIN)
        .arg("server")
        .arg("--config")
        .arg(f.config_path())
        .env("SOFTHSM2_CONF", f.softhsm_conf())
        .env("SEALKEEPER_LOG", "info,sealkeeper=debug")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let d = Daemon {
        child: None,
        port: f.port,
        socket: f.socket(),
        log_path: f.path("prlimit.log"),
        softhsm_conf: f.softhsm_conf(),
    };
    wait_for(
        Duration::from_secs(20),
        || std::os::unix::net::UnixStream::connect(f.socket()).ok(),
        || d.log(),
    );
    d.init();
    assert!(d.log().contains("max_connections lowered"), "{}", d.log());
    let mut probe = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    assert_eq!(request(&mut probe, &get_keepalive("/v1/sys/health")).0, 200);
    // More connections than the process has descriptors.
    let flood: Vec<TcpStream> = (0..400)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", d.port)).ok())
        .collect();
    assert!(flood.len() > 300);
    // Several probe rounds (200ms) pass: the members stay healthy, health and admin answer.
    let checked = d.status_json();
    let before = member(&checked, "hsm-a")["last_checked_unix"]
        .as_u64()
        .unwrap();
    d.wait_status("a later probe", Duration::from_secs(10), |s| {
        member(s, "hsm-a")["last_checked_unix"].as_u64().unwrap() > before
    });
    let st = d.status_json();
    for m in ["hsm-a", "hsm-b"] {
        assert_eq!(member(&st, m)["state"], "healthy", "{st:#}");
    }
    assert_eq!(request(&mut probe, &get_keepalive("/v1/sys/health")).0, 200);
    assert!(!d.log().contains("Too many open files"), "{}", d.log());
    drop(flood);
    unsafe_free_kill(child.id(), "TERM");
    assert!(child.wait().unwrap().success());
}

fn transit_daemon(f: &Fixture) -> (Daemon, String) {
    let d = f.start();
    d.init();
    // Key k, policy p (encrypt, decrypt) and a token for it.
    let token = TransitProbe::new(&d).token;
    (d, token)
}

#[test]
fn oversized_batches_are_refused_before_they_take_memory() {
    let f = Fixture::new();
    f.edit_config(|c| c.replace("[admin]", "[transit]\nmax_batch_items = 100\n\n[admin]"));
    let (d, token) = transit_daemon(&f);
    // About 349,000 empty items in 1 MiB: refused with the limit named.
    let mut body = String::from("{\"batch_input\":[");
    while body.len() < 1024 * 1024 - 16 {
        body.push_str("{},");
    }
    body.pop();
    body.push_str("]}");
    let r = http_with(
        d.port,
        "PUT",
        "/v1/transit/encrypt/k",
        Some(&token),
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    let err = r.json()["errors"][0].as_str().unwrap().to_string();
    assert!(
        err.contains("the limit is 100 (transit.max_batch_items)"),
        "{err}"
    );
    let items = |n: usize| {
        let one = json!({ "plaintext": B64.encode("x") });
        json!({ "batch_input": vec![one; n] })
    };
    let r = d.put("/v1/transit/encrypt/k", &token, &items(101));
    assert_eq!(r.status, 400, "{}", r.body);
    let r = d.put("/v1/transit/encrypt/k", &token, &items(100));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["data"]["batch_results"].as_array().unwrap().len(),
        100
    );
}

#[test]
fn partial_failure_codes_follow_vault_and_a_fully_failed_batch_keeps_its_error() {
    let f = Fixture::new();
    let (d, token) = transit_daemon(&f);
    let good = json!({ "plaintext": B64.encode("x") });
    let bad = json!({ "plaintext": "not base64!" });
    let call = |items: Vec<Value>, code: Value| {
        let mut body = json!({ "batch_input": items });
        if !code.is_null() {
            body["partial_failure_response_code"] = code;
        }
        d.put("/v1/transit/encrypt/k", &token, &body)
    };
    let r = call(vec![good.clone(), bad.clone()], Value::Null);
    assert_eq!(r.status, 400);
    let r = call(vec![good.clone(), bad.clone()], json!(207));
    assert_eq!(r.status, 207, "{}", r.body);
    assert!(r.json()["data"]["batch_results"][0]["ciphertext"].is_string());
    for c in [101, 204, 304, 999, -1] {
        let r = call(vec![good.clone(), bad.clone()], json!(c));
        assert_eq!(r.status, 400, "code {c}: {}", r.body);
        assert!(
            r.json()["warnings"][0]
                .as_str()
                .unwrap()
                .contains("partial_failure_response_code"),
            "{}",
            r.body
        );
    }
    // Every item failed: the error status stands whatever was asked.
    let r = call(vec![bad.clone(), bad.clone()], json!(200));
    assert_eq!(r.status, 400, "{}", r.body);
}

/// curl over HTTP/2 (TLS), as operators test: (exit code, HTTP status, body).
fn curl_h2(f: &Fixture, args: &[&str], url_path: &str) -> (i32, String, String) {
    let out = Command::new("curl")
        .args(["--http2", "-s", "--cacert"])
        .arg(f.path("tls/server.crt"))
        .args(["-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .arg(format!("https://localhost:{}{url_path}", f.port))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        out.status.code().unwrap_or(-1),
        code.to_string(),
        body.to_string(),
    )
}

#[test]
fn http_details_strict_clients_depend_on() {
    let f = Fixture::with_tls();
    let d = f.start();
    // An answer before the body is read (sealed: uninitialized, here 503 from transit) must not
    // reset the HTTP/2 stream.
    for _ in 0..5 {
        let (rc, code, body) = curl_h2(
            &f,
            &[
                "-X",
                "PUT",
                "-d",
                "{\"plaintext\":\"YQ==\"}",
                "-H",
                "X-Vault-Token: nope",
            ],
            "/v1/transit/encrypt/k",
        );
        assert_eq!((rc, code.as_str()), (0, "503"), "{body}");
    }
    d.init();
    // 204 carries no body, over HTTP/2 and HTTP/1.1.
    let (rc, code, body) = curl_h2(&f, &[], "/v1/sys/health?activecode=204");
    assert_eq!((rc, code.as_str(), body.as_str()), (0, "204", ""));
    let (rc, code, body) = curl_h2(&f, &["--http1.1"], "/v1/sys/health?activecode=204");
    assert_eq!((rc, code.as_str(), body.as_str()), (0, "204", ""));
    // Early 403 and 404 with a body, over HTTP/2.
    for path in ["/v1/transit/encrypt/k", "/v1/nothing/here"] {
        let (rc, code, body) = curl_h2(
            &f,
            &[
                "-X",
                "PUT",
                "-d",
                "{\"plaintext\":\"YQ==\"}",
                "-H",
                "X-Vault-Token: nope",
            ],
            path,
        );
        assert_eq!(rc, 0, "{path}: {code} {body}");
        assert!(code == "403" || code == "404", "{path}: {code}");
        assert!(
            serde_json::from_str::<Value>(&body).unwrap()["errors"].is_array(),
            "{body}"
        );
    }
    // A path that is not UTF-8 gets the JSON error envelope.
    let (rc, code, body) = curl_h2(&f, &[], "/v1/transit/keys/%ff");
    assert_eq!(rc, 0);
    assert!(code.starts_with('4'), "{code}");
    assert!(
        serde_json::from_str::<Value>(&body).unwrap()["errors"].is_array(),
        "{body}"
    );
    // The detailed HSM document is not on the public port.
    let (_, code, _) = curl_h2(&f, &[], "/v1/sys/hsm-status");
    assert_eq!(code, "404");
    let (_, code, _) = curl_h2(&f, &[], "/v1/sys/sealwrap/rewrap");
    assert_eq!(code, "404");
}

/// A raw HTTP/1.1 request with extra headers; (status, headers, body).
fn raw(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    request(&mut s, &req)
}

#[test]
fn failed_tokens_are_throttled_per_client_and_summarized_in_the_audit_trail() {
    let f = Fixture::new();
    listener(
        &f,
        "auth_failure_limit = 5\nauth_failure_window = \"60s\"\nx_forwarded_for_authorized_addrs = [\"127.0.0.1\"]",
    );
    let audit_path = f.path("audit.log");
    let line = format!("path = \"{}\"", audit_path.display());
    f.edit_config(|c| c.replace(&line, &format!("{line}\ndenial_summary_interval = \"1s\"")));
    let (d, token) = transit_daemon(&f);
    let pt = json!({ "plaintext": B64.encode("a") }).to_string();
    let enc = "/v1/transit/encrypt/k";
    let attacker = [
        ("X-Forwarded-For", "192.0.2.66"),
        ("X-Vault-Token", "wrong"),
    ];
    let mut throttled = None;
    let flood_start = Instant::now();
    for i in 0..200 {
        let (status, head, body) = raw(d.port, "PUT", enc, &attacker, &pt);
        if status == 429 {
            assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
            assert!(body.contains("too many failed authentications"), "{body}");
            throttled = Some(i);
        } else {
            assert_eq!(status, 403, "{body}");
        }
    }
    assert_eq!(throttled.map(|_| ()), Some(()));
    let (last, _, _) = raw(d.port, "PUT", enc, &attacker, &pt);
    assert_eq!(last, 429);
    // Summary intervals (1s) the flood spanned: each can hold a first record and a summary per kind.
    let intervals = flood_start.elapsed().as_secs() as usize + 2;
    // Another client behind the same balancer is not slowed, with either header.
    let good = [
        ("X-Forwarded-For", "192.0.2.7"),
        ("X-Vault-Token", token.as_str()),
    ];
    assert_eq!(raw(d.port, "PUT", enc, &good, &pt).0, 200);
    let bearer = format!("Bearer {token}");
    let good = [
        ("X-Forwarded-For", "192.0.2.7"),
        ("Authorization", bearer.as_str()),
    ];
    assert_eq!(raw(d.port, "PUT", enc, &good, &pt).0, 200);
    // A valid token without the capability: denied, and recorded individually with its accessor.
    d.operator_ok(&["key", "create", "other"]);
    let (status, _, _) = raw(
        d.port,
        "PUT",
        "/v1/transit/encrypt/other",
        &[("X-Vault-Token", token.as_str())],
        &pt,
    );
    assert_eq!(status, 403);
    let accounted = |recs: &[Value]| {
        let summarized: u64 = recs
            .iter()
            .filter(|r| r["client_address"] == "192.0.2.66")
            .filter_map(|r| r["suppressed"].as_u64())
            .sum();
        let individual = recs
            .iter()
            .filter(|r| r["peer"]["forwarded_for"] == "192.0.2.66")
            .count() as u64;
        summarized + individual
    };
    let read = || -> Vec<Value> {
        std::fs::read_to_string(&audit_path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let recs = wait_for(
        Duration::from_secs(10),
        || Some(read()).filter(|r| accounted(r) == 201),
        || {
            format!(
                "201 denials not accounted for: {} found",
                accounted(&read())
            )
        },
    );
    let flood: Vec<&Value> = recs
        .iter()
        .filter(|r| {
            r["peer"]["forwarded_for"] == "192.0.2.66" || r["client_address"] == "192.0.2.66"
        })
        .collect();
    // 201 denials became a handful of records: per interval, the first failure, the first 429,
    // and one summary of each.
    assert!(
        flood.len() <= 4 * intervals,
        "{} records: {flood:#?}",
        flood.len()
    );
    let denied = recs
        .iter()
        .find(|r| r["operation"] == "PUT /v1/transit/encrypt/other")
        .unwrap();
    assert_eq!(denied["outcome"], "denied");
    assert!(denied["accessor"].is_string(), "{denied}");
    assert_eq!(denied["key"], "other");
    assert!(d.log().contains("request denied by policy"), "{}", d.log());
    // The Bearer request carries the HMAC of its token like an X-Vault-Token one.
    let hmacs: Vec<&Value> = recs
        .iter()
        .filter(|r| r["operation"] == "PUT /v1/transit/encrypt/k" && r["outcome"] == "ok")
        .map(|r| &r["client_token_hmac"])
        .collect();
    assert_eq!(hmacs.len(), 2);
    assert!(hmacs[0].is_string() && hmacs[0] == hmacs[1], "{hmacs:?}");
}

#[test]
fn without_a_trusted_proxy_forwarded_for_is_ignored() {
    let f = Fixture::new();
    listener(&f, "auth_failure_limit = 3");
    let (d, _token) = transit_daemon(&f);
    let pt = json!({ "plaintext": B64.encode("a") }).to_string();
    for i in 0..4 {
        // A new "address" every time: it must not reset the count.
        let xff = format!("198.51.100.{i}");
        let (status, _, _) = raw(
            d.port,
            "PUT",
            "/v1/transit/encrypt/k",
            &[("X-Forwarded-For", &xff), ("X-Vault-Token", "x")],
            &pt,
        );
        assert_eq!(status, if i < 3 { 403 } else { 429 });
    }
    // Health is never throttled.
    assert_eq!(d.health("").status, 200);
}

#[test]
fn accepted_connections_have_nagle_off() {
    let f = Fixture::new();
    let d = f.start();
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/compat/nodelay.py"
        ))
        .arg(d.pid().to_string())
        .arg(d.port.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // The client's own side shows the default (Nagle on): the method reads the real option.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "server=1 client=0"
    );
}
