//! Clusters of appliances on etcd (feature `etcd`): the storage conformance suite against a real
//! etcd cluster, the client skipping dead members, and several real `sealkeeper` nodes, each with
//! its own SoftHSM token pair holding the same key, sharing one etcd cluster on loopback.
#![cfg(feature = "etcd")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/bao.rs"]
mod bao;
mod common;
#[path = "common/etcd.rs"]
mod etcd_cluster;
#[path = "common/haproxy.rs"]
mod haproxy;

use std::time::{Duration, Instant};

use common::*;
use etcd_cluster::EtcdCluster;
use sealkeeper::storage::etcd::{EtcdOptions, EtcdStorage};
use sealkeeper::storage::{Change, Expect, Storage, StorageError, Watch, WatchEvent};
use serde_json::{Value, json};

fn options(c: &EtcdCluster, prefix: &str) -> EtcdOptions {
    EtcdOptions {
        endpoints: c.endpoints(),
        prefix: prefix.into(),
        tls_ca_file: None,
        tls_cert_file: None,
        tls_key_file: None,
        attempt_timeout: Duration::from_millis(700),
        request_timeout: Duration::from_secs(8),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_conformance_suite_passes_on_a_real_etcd_cluster() {
    let c = EtcdCluster::start(3);
    let rt = runtime();
    rt.block_on(async {
        let s = EtcdStorage::open(&options(&c, "conformance/"))
            .await
            .unwrap();
        sealkeeper::storage::conformance::run(&s).await;
        // Another prefix on the same cluster is another, empty store.
        let other = EtcdStorage::open(&options(&c, "other/")).await.unwrap();
        assert!(other.range("").await.unwrap().is_empty());
    });
}

/// A compare-and-swap whose answer is lost (a relay in front of the member drops what etcd
/// sends) is sent again on the next endpoint; by then another writer has built on it (the
/// record's history shows this write's value, then the other's): it is applied, not a conflict.
/// When the other writer deleted it instead, the history cannot tell: the outcome is unknown,
/// never a conflict; so too for a delete whose record was created again before its retry. A write
/// that lost its race and was answered is still a conflict.
#[test]
fn a_write_whose_answer_was_lost_is_applied_when_built_on_and_unknown_when_it_cannot_be_told() {
    let c = EtcdCluster::start(1);
    let relay = Relay::start(c.members[0].client_port);
    let rt = runtime();
    rt.block_on(async {
        let mut o = options(&c, "lost/");
        // The relay first, the member itself second: the retry goes straight to it.
        o.endpoints = vec![
            format!("http://127.0.0.1:{}", relay.port),
            c.endpoints()[0].clone(),
        ];
        let b = EtcdStorage::open(&options(&c, "lost/")).await.unwrap();
        // a's write commits, its answer is lost, b writes over it (or deletes it), a's retry
        // finds b's. A new client each time: a client keeps to the endpoint that answered last.
        for (key, other_deletes) in [("built-on", false), ("deleted", true)] {
            let a = EtcdStorage::open(&o).await.unwrap();
            let r1 = a.put(key, b"one", Expect::Absent).await.unwrap();
            let mut feed = b.watch(key);
            relay.mute_answers(true);
            let write = a.put(key, b"two from a", Expect::Revision(r1));
            let other = async {
                let r2 = change_on(&mut feed, "a's write to commit", |c| {
                    c.key == key && c.value.as_deref() == Some(b"two from a")
                })
                .await
                .revision;
                if other_deletes {
                    assert!(b.delete(key, Expect::Revision(r2)).await.unwrap());
                } else {
                    b.put(key, b"three from b", Expect::Revision(r2))
                        .await
                        .unwrap();
                }
                r2
            };
            let (written, r2) = tokio::join!(write, other);
            relay.mute_answers(false);
            if other_deletes {
                assert!(
                    matches!(written, Err(StorageError::OutcomeUnknown { .. })),
                    "{written:?}"
                );
            } else {
                assert_eq!(written.unwrap(), r2);
            }
        }
        // A delete whose answer is lost, and the record created again before its retry: whose
        // delete came between cannot be told, so not a conflict either.
        let a = EtcdStorage::open(&o).await.unwrap();
        let r1 = a.put("recreated", b"one", Expect::Absent).await.unwrap();
        let mut feed = b.watch("recreated");
        relay.mute_answers(true);
        let delete = a.delete("recreated", Expect::Revision(r1));
        let other = async {
            change_on(&mut feed, "a's delete to commit", |c| {
                c.key == "recreated" && c.value.is_none()
            })
            .await;
            b.put("recreated", b"again from b", Expect::Absent)
                .await
                .unwrap();
        };
        let (deleted, ()) = tokio::join!(delete, other);
        relay.mute_answers(false);
        assert!(
            matches!(deleted, Err(StorageError::OutcomeUnknown { .. })),
            "{deleted:?}"
        );

        // A write that lost its race, answered at once: a conflict.
        let a = EtcdStorage::open(&o).await.unwrap();
        let r = b.put("race", b"b", Expect::Absent).await.unwrap();
        assert!(
            matches!(
                a.put("race", b"a", Expect::Absent).await,
                Err(StorageError::Conflict { .. })
            ),
            "revision {r}"
        );
    });
}

/// The first change on `feed` that `pick` accepts, within 5 s: the store's own change feed, so
/// nothing is polled.
async fn change_on(feed: &mut Watch, what: &str, pick: impl Fn(&Change) -> bool) -> Change {
    let next = async {
        loop {
            match feed.next().await {
                WatchEvent::Change(c) if pick(&c) => return c,
                WatchEvent::Change(_) => {}
                other => panic!("the change feed gave {other:?} while waiting for {what}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), next)
        .await
        .unwrap_or_else(|_| panic!("waited 5 s for {what}"))
}

#[test]
fn etcd_over_tls_with_client_certificates_works_and_a_wrong_ca_or_missing_certificate_is_refused() {
    let c = EtcdCluster::start_tls();
    let rt = runtime();
    rt.block_on(async {
        let mut o = options(&c, "tls/");
        o.tls_ca_file = Some(c.tls_file("ca.crt"));
        o.tls_cert_file = Some(c.tls_file("client.crt"));
        o.tls_key_file = Some(c.tls_file("client.key"));
        let s = EtcdStorage::open(&o).await.unwrap();
        sealkeeper::storage::conformance::run(&s).await;

        // Without the client certificate: refused by etcd, a clear error, no hang.
        let mut no_cert = o.clone();
        no_cert.tls_cert_file = None;
        no_cert.tls_key_file = None;
        no_cert.request_timeout = Duration::from_secs(3);
        let s = EtcdStorage::open(&no_cert).await.unwrap();
        let e = s.get("a").await.unwrap_err();
        assert!(matches!(e, StorageError::Unavailable { .. }), "{e}");

        // A CA that did not sign the server's certificate: the server is not trusted.
        let mut wrong_ca = o.clone();
        wrong_ca.tls_ca_file = Some(c.tls_file("client.crt"));
        wrong_ca.request_timeout = Duration::from_secs(3);
        let s = EtcdStorage::open(&wrong_ca).await.unwrap();
        let e = s.get("a").await.unwrap_err();
        assert!(matches!(e, StorageError::Unavailable { .. }), "{e}");

        // A CA file that cannot be read fails at open, naming the setting.
        let mut missing = o.clone();
        missing.tls_ca_file = Some(c.tls_file("nonexistent.crt"));
        let e = EtcdStorage::open(&missing).await.err().expect("open fails");
        assert!(e.to_string().contains("tls_ca_file"), "{e}");
    });
}

#[test]
fn a_killed_leader_costs_no_failed_reads_or_writes_and_nothing_acknowledged_is_lost() {
    let mut c = EtcdCluster::start(3);
    let rt = runtime();
    rt.block_on(async {
        let s = EtcdStorage::open(&options(&c, "failover/")).await.unwrap();
        let mut acknowledged = Vec::new();
        for i in 0..10 {
            let k = format!("k/{i}");
            s.put(&k, format!("v{i}").as_bytes(), Expect::Absent)
                .await
                .unwrap();
            acknowledged.push(k);
        }
        let leader = c.leader();
        c.kill(leader);
        // With the leader gone, the first member in the list may be the dead one: every call
        // must still succeed, by moving to a live member.
        let mut failed = 0;
        for i in 10..30 {
            let k = format!("k/{i}");
            match s.put(&k, format!("v{i}").as_bytes(), Expect::Absent).await {
                Ok(_) => acknowledged.push(k),
                Err(e) => {
                    failed += 1;
                    eprintln!("write {k}: {e}");
                }
            }
            if s.get("k/0").await.is_err() {
                failed += 1;
            }
        }
        assert_eq!(failed, 0, "calls failed with one member of three down");
        c.restart(leader);
        c.wait_healthy();
        let stored: Vec<String> = s
            .range("k/")
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        for k in &acknowledged {
            assert!(stored.contains(k), "{k} was acknowledged and is gone");
        }
    });
}

#[test]
fn without_quorum_calls_fail_with_a_clear_error_within_the_request_timeout_and_recover() {
    let mut c = EtcdCluster::start(3);
    let rt = runtime();
    rt.block_on(async {
        let mut o = options(&c, "quorum/");
        o.request_timeout = Duration::from_secs(3);
        let s = EtcdStorage::open(&o).await.unwrap();
        s.put("a", b"1", Expect::Absent).await.unwrap();
        let mut watch = s.watch("");
        c.kill(0);
        c.kill(1);
        let started = Instant::now();
        let e = s.put("b", b"2", Expect::Absent).await.unwrap_err();
        let took = started.elapsed();
        assert!(matches!(e, StorageError::Unavailable { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("etcd") && msg.contains("txn"), "{msg}");
        assert!(took < Duration::from_secs(10), "gave up after {took:?}");
        c.restart(0);
        c.restart(1);
        c.wait_healthy();
        // Writes work again, and the change feed (which lost its member) still delivers.
        let r = s.put("c", b"3", Expect::Absent).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let sealkeeper::storage::WatchEvent::Change(ch) = watch.next().await
                    && ch.key == "c"
                {
                    return ch.revision;
                }
            }
        })
        .await
        .expect("the change feed delivers after etcd recovered");
        assert_eq!(got, r);
    });
}

// ---------------------------------------------------------------------------------------------
// Sealkeeper nodes sharing one etcd cluster.

/// A node: its own fixture (token pair, config, sockets), storage in `cluster` under `prefix`.
/// With `hsms_of`, its tokens are copies of that node's (the same key, as cloned HSMs hold it).
fn node(cluster: &EtcdCluster, prefix: &str, name: &str, hsms_of: Option<&Fixture>) -> Fixture {
    let f = Fixture::new();
    if let Some(first) = hsms_of {
        let tokens = f.path("tokens");
        std::fs::remove_dir_all(&tokens).unwrap();
        copy_dir(&first.path("tokens"), &tokens);
        for pin in ["hsm-a.pin", "hsm-b.pin", "orig-hsm-a.pin", "orig-hsm-b.pin"] {
            std::fs::copy(first.path(pin), f.path(pin)).unwrap();
        }
    }
    let data = f.path("data");
    f.edit_config(|c| {
        c.replace(
            &format!("[storage]\npath = \"{}\"\n", data.display()),
            &format!(
                "[storage]\ntype = \"etcd\"\nendpoints = {}\nprefix = \"{prefix}\"\nattempt_timeout = \"700ms\"\nrequest_timeout = \"5s\"\n\n[cluster]\nnode_name = \"{name}\"\n",
                cluster.endpoints_toml()
            ),
        )
    });
    assert!(f.config().contains("type = \"etcd\""), "{}", f.config());
    f
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

fn encrypt(d: &Daemon, token: &str, key: &str, plaintext: &[u8]) -> HttpResponse {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(plaintext);
    d.put(
        &format!("/v1/transit/encrypt/{key}"),
        token,
        &json!({ "plaintext": b64 }),
    )
}

fn decrypt(d: &Daemon, token: &str, key: &str, ciphertext: &str) -> HttpResponse {
    d.put(
        &format!("/v1/transit/decrypt/{key}"),
        token,
        &json!({ "ciphertext": ciphertext }),
    )
}

fn ciphertext(r: &HttpResponse) -> String {
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["data"]["ciphertext"].as_str().unwrap().to_string()
}

/// Three nodes on one etcd cluster: node 1 initialized, all three unsealed.
struct Trio {
    etcd: EtcdCluster,
    fixtures: Vec<Fixture>,
    nodes: Vec<Daemon>,
    token: String,
}

fn trio() -> Trio {
    let etcd = EtcdCluster::start(3);
    let f1 = node(&etcd, "trio/", "node1", None);
    let f2 = node(&etcd, "trio/", "node2", Some(&f1));
    let f3 = node(&etcd, "trio/", "node3", Some(&f1));
    let n1 = f1.start();
    let n2 = f2.start();
    n1.init();
    let n3 = f3.start();
    for n in [&n1, &n2, &n3] {
        n.wait_health(200, Duration::from_secs(20));
    }
    n1.operator_ok(&["key", "create", "vault-prod"]);
    let token = n1.policy_and_token("unseal", "vault-prod", "encrypt,decrypt");
    Trio {
        etcd,
        fixtures: vec![f1, f2, f3],
        nodes: vec![n1, n2, n3],
        token,
    }
}

/// Waits for `check` to hold and returns how long it took. The bound is generous (the tests
/// assert that the change arrives, not how fast: `scripts/bench.sh` measures that).
fn within(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    wait_for(
        limit,
        || check().then_some(()),
        || format!("{what} within {limit:?}"),
    );
    started.elapsed()
}

#[test]
fn init_on_one_node_unseals_the_others_and_they_serve_the_same_keys() {
    let t = trio();
    let [n1, n2, n3] = [&t.nodes[0], &t.nodes[1], &t.nodes[2]];
    // n2 was running, uninitialized, when n1 initialized; n3 started after.
    for n in [n2, n3] {
        let st = n.status_json();
        assert_eq!(st["initialized"], true, "{st}");
        assert_eq!(st["sealed"], false, "{st}");
        let ss = n.get("/v1/sys/seal-status").json();
        assert_eq!(ss["storage_type"], "etcd", "{ss}");
    }
    let ct = ciphertext(&encrypt(n1, &t.token, "vault-prod", b"the root of vault"));
    let r = decrypt(n3, &t.token, "vault-prod", &ct);
    assert_eq!(r.status, 200, "{}", r.body);
    use base64::Engine;
    let pt = base64::engine::general_purpose::STANDARD
        .decode(r.json()["data"]["plaintext"].as_str().unwrap())
        .unwrap();
    assert_eq!(pt, b"the root of vault");
    // The registry: every node lists the three, unsealed, with their addresses.
    for n in [n1, n2, n3] {
        let st = n.wait_status("three nodes listed", Duration::from_secs(10), |s| {
            s["cluster"]["nodes"]
                .as_array()
                .is_some_and(|a| a.len() == 3 && a.iter().all(|n| n["state"] == "unsealed"))
        });
        let names: Vec<&str> = st["cluster"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["node1", "node2", "node3"], "{st}");
        assert_eq!(
            st["cluster"]["nodes"][0]["address"],
            format!("127.0.0.1:{}", n1.port)
        );
    }
    let text = n2.operator_ok(&["status"]);
    assert!(text.contains("Cluster nodes (this node: node2)"), "{text}");
    // init again, on any node: refused, the cluster is initialized.
    let e = n2.init_fails();
    assert!(e.contains("already initialized"), "{e}");
    // Each node's audit anchor is its own record.
    let dump = wait_for(
        Duration::from_secs(30),
        || {
            let d = t.etcd.dump("trio/audit/");
            (d.contains("node1") && d.contains("node2") && d.contains("node3")).then_some(d)
        },
        || format!("per-node anchors: {}", t.etcd.dump("trio/audit/")),
    );
    assert!(dump.contains("trio/audit/anchors/node1"), "{dump}");
    // Each node's own trail names it in the first record of its run.
    for (f, name) in t.fixtures.iter().zip(["node1", "node2", "node3"]) {
        let trail = std::fs::read_to_string(f.path("audit.log")).unwrap();
        let first: Value = serde_json::from_str(trail.lines().next().unwrap()).unwrap();
        assert_eq!(first["operation"], "self-test", "{first}");
        assert_eq!(first["node"], name, "{first}");
    }
}

#[test]
fn a_revoked_token_and_a_rotated_key_reach_every_node_through_the_change_feed() {
    let t = trio();
    let [n1, n2, n3] = [&t.nodes[0], &t.nodes[1], &t.nodes[2]];
    // A token created on node 1 is known everywhere; revoke it on node 2.
    let created = n1.operator_json(&["token", "create", "--policy", "unseal"]);
    let tok = created["client_token"].as_str().unwrap().to_string();
    let accessor = created["accessor"].as_str().unwrap().to_string();
    let ct = wait_for(
        Duration::from_secs(10),
        || {
            let r = encrypt(n3, &tok, "vault-prod", b"x");
            (r.status == 200).then(|| ciphertext(&r))
        },
        || "a token created on node 1 never worked on node 3".into(),
    );
    n2.operator_ok(&["token", "revoke", &accessor]);
    let took = within(
        "the revoked token refused on node 3",
        Duration::from_secs(1),
        || decrypt(n3, &tok, "vault-prod", &ct).status == 403,
    );
    assert_eq!(
        decrypt(n3, &t.token, "vault-prod", &ct).status,
        200,
        "other tokens still work"
    );
    eprintln!("revoke reached node 3 in {took:?}");

    let token = n1.policy_and_token("unseal2", "vault-prod", "encrypt,decrypt");
    n3.operator_ok(&["key", "rotate", "vault-prod"]);
    let took = within(
        "node 1 encrypting with version 2",
        Duration::from_secs(1),
        || ciphertext(&encrypt(n1, &token, "vault-prod", b"y")).starts_with("vault:v2:"),
    );
    eprintln!("rotation reached node 1 in {took:?}");
    // The old version still decrypts on every node.
    for n in [n1, n2, n3] {
        assert_eq!(decrypt(n, &token, "vault-prod", &ct).status, 200);
    }
}

#[test]
fn a_keyring_rotation_and_a_root_key_rotation_on_one_node_reach_the_others() {
    let t = trio();
    let [n1, n2, n3] = [&t.nodes[0], &t.nodes[1], &t.nodes[2]];
    n1.operator_ok(&["rotate"]);
    // Records written after the rotation use the new term; node 2 reads them.
    n1.operator_ok(&["key", "create", "after-rotate"]);
    let token = n1.policy_and_token("after", "after-rotate", "encrypt,decrypt");
    let ct = wait_for(
        Duration::from_secs(20),
        || {
            let r = encrypt(n2, &token, "after-rotate", b"z");
            (r.status == 200).then(|| ciphertext(&r))
        },
        || {
            format!(
                "node 2 never served a key stored under the new term; log:\n{}",
                n2.log()
            )
        },
    );
    // A new root key (unwrapped by each node through its own HSM pair), then another term.
    n3.operator_ok(&["rotate-root"]);
    n3.operator_ok(&["rotate"]);
    n3.operator_ok(&["key", "create", "after-root"]);
    let token2 = n3.policy_and_token("after-root", "after-root", "encrypt,decrypt");
    for n in [n1, n2] {
        wait_for(
            Duration::from_secs(10),
            || (encrypt(n, &token2, "after-root", b"w").status == 200).then_some(()),
            || {
                format!(
                    "the new root's term never reached a node; log:\n{}",
                    n.log()
                )
            },
        );
        assert_eq!(decrypt(n, &token, "after-rotate", &ct).status, 200);
    }
    assert!(
        n1.log()
            .contains("the root key was rotated by another node"),
        "{}",
        n1.log()
    );
}

#[test]
fn concurrent_writes_of_the_same_key_from_two_nodes_are_never_lost() {
    let t = trio();
    let [n1, n2] = [&t.nodes[0], &t.nodes[1]];
    // Both nodes rotate the same key at once, many times: each acknowledged rotation is a
    // version; a conflict is refused with 409, never silently dropped.
    let (a, b) = std::thread::scope(|s| {
        let h1 = s.spawn(|| rotations(n1, 10));
        let h2 = s.spawn(|| rotations(n2, 10));
        (h1.join().unwrap(), h2.join().unwrap())
    });
    let acknowledged = a + b;
    assert!(
        acknowledged >= 10,
        "only {acknowledged} of 20 rotations succeeded"
    );
    let want = 1 + acknowledged as u64;
    for n in &t.nodes {
        let latest = || {
            serde_json::from_str::<Value>(&n.operator_ok(&[
                "key",
                "show",
                "vault-prod",
                "--format",
                "json",
            ]))
            .ok()
            .and_then(|v| v["latest_version"].as_u64())
        };
        wait_for(
            Duration::from_secs(20),
            || (latest() == Some(want)).then_some(()),
            || {
                format!(
                    "latest version on every node should be {want} ({a} + {b} rotations \
                     acknowledged), this node has {:?}; log:\n{}",
                    latest(),
                    n.log()
                )
            },
        );
    }
}

/// Rotates `vault-prod` `n` times; returns how many were acknowledged. Every other answer must
/// be the documented conflict.
fn rotations(d: &Daemon, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        let out = d.operator(&["key", "rotate", "vault-prod"]);
        if out.status.success() {
            ok += 1;
        } else {
            let e = stderr(&out);
            assert!(
                e.contains("conflict"),
                "a failed rotation is a conflict: {e}"
            );
        }
    }
    ok
}

fn init_args() -> [&'static str; 7] {
    [
        "init",
        "--recovery-shares",
        "1",
        "--recovery-threshold",
        "1",
        "--format",
        "json",
    ]
}

#[test]
fn two_nodes_initializing_at_once_exactly_one_wins() {
    let etcd = EtcdCluster::start(1);
    let f1 = node(&etcd, "race/", "node1", None);
    let f2 = node(&etcd, "race/", "node2", Some(&f1));
    let n1 = f1.start();
    // Node 2 has checked that the store is uninitialized and wrapped its own root key; it is held
    // just before its transaction while node 1 initializes.
    let hold = f2.path("hold");
    let reached = f2.path("reached");
    std::fs::write(&hold, "").unwrap();
    let n2 = f2.start_with(|c| {
        c.env("SEALKEEPER_FAULT_HOLD", "init:before-init-record")
            .env("SEALKEEPER_FAULT_HOLD_WHILE", &hold)
            .env("SEALKEEPER_FAULT_FILE", &reached);
    });
    std::thread::scope(|s| {
        let late = s.spawn(|| n2.operator(&init_args()));
        wait_for(
            Duration::from_secs(20),
            || reached.exists().then_some(()),
            || {
                format!(
                    "node 2 never reached its init transaction; log:\n{}",
                    n2.log()
                )
            },
        );
        let first = n1.operator(&init_args());
        assert!(first.status.success(), "{}", stderr(&first));
        std::fs::remove_file(&hold).unwrap();
        let late = late.join().unwrap();
        assert!(!late.status.success(), "both inits succeeded");
        assert!(
            stderr(&late).contains("already initialized"),
            "{}",
            stderr(&late)
        );
    });
    assert!(
        n2.log()
            .contains("another node initialized the shared store first"),
        "the transaction, not the check before it, refused node 2: {}",
        n2.log()
    );
    // Node 2 did not keep its own root key: it unseals with node 1's.
    n2.wait_health(200, Duration::from_secs(20));

    // And two inits sent at the same moment: one wins.
    let etcd2 = EtcdCluster::start(1);
    let g1 = node(&etcd2, "race2/", "node1", Some(&f1));
    let g2 = node(&etcd2, "race2/", "node2", Some(&f1));
    let (m1, m2) = (g1.start(), g2.start());
    let (a, b) = std::thread::scope(|s| {
        let h1 = s.spawn(|| m1.operator(&init_args()));
        let h2 = s.spawn(|| m2.operator(&init_args()));
        (h1.join().unwrap(), h2.join().unwrap())
    });
    let winners = [&a, &b].iter().filter(|o| o.status.success()).count();
    assert_eq!(winners, 1, "{}\n{}", stderr(&a), stderr(&b));
    for m in [&m1, &m2] {
        m.wait_health(200, Duration::from_secs(20));
    }
}

#[test]
fn etcd_down_nodes_keep_serving_transit_refuse_writes_with_503_and_a_restart_stays_sealed() {
    let mut t = trio();
    let ct = ciphertext(&encrypt(
        &t.nodes[0],
        &t.token,
        "vault-prod",
        b"keep serving",
    ));
    t.etcd.kill_all();
    for n in &t.nodes {
        assert_eq!(decrypt(n, &t.token, "vault-prod", &ct).status, 200);
        assert_eq!(encrypt(n, &t.token, "vault-prod", b"more").status, 200);
        assert_eq!(n.health("").status, 200);
    }
    // A write is refused with the reason.
    let out = t.nodes[1].operator(&["key", "create", "while-down"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("storage"), "{}", stderr(&out));

    // A node restarted while etcd is down: sealed (503), retrying, not crashed.
    drop(t.nodes.remove(2));
    let started = Instant::now();
    let n3 = t.fixtures[2].start();
    assert_eq!(n3.health("").status, 503);
    eprintln!(
        "a node started with etcd down answered 503 after {:?}",
        started.elapsed()
    );
    n3.wait_unseal_attempts(0);
    wait_for(
        Duration::from_secs(15),
        || n3.log().contains("the store is unreachable").then_some(()),
        || format!("no retry logged:\n{}", n3.log()),
    );
    assert_eq!(n3.health("").status, 503);
    // etcd returns: the node unseals by itself, and writes work again everywhere.
    t.etcd.restart_all();
    n3.wait_health(200, Duration::from_secs(30));
    assert_eq!(decrypt(&n3, &t.token, "vault-prod", &ct).status, 200);
    t.nodes[0].operator_ok(&["key", "create", "after-outage"]);
    let token = t.nodes[0].policy_and_token("after", "after-outage", "encrypt");
    wait_for(
        Duration::from_secs(20),
        || (encrypt(&n3, &token, "after-outage", b"x").status == 200).then_some(()),
        || "the change feed resumed after the outage".into(),
    );
}

#[test]
fn etcd_holds_no_plaintext_token_or_pin() {
    let t = trio();
    let canary = b"canary-plaintext-7f3a9c";
    let ct = ciphertext(&encrypt(&t.nodes[0], &t.token, "vault-prod", canary));
    assert!(!ct.is_empty());
    let snapshot = t.etcd.snapshot();
    assert!(snapshot.len() > 1000, "a real snapshot");
    let contains = |needle: &[u8]| snapshot.windows(needle.len()).any(|w| w == needle);
    // The snapshot does hold Sealkeeper's records (it is the right store) ...
    assert!(contains(b"trio/core/seal/state"));
    // ... but no plaintext, token or PIN, in clear or base64.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(canary);
    for (what, needle) in [
        ("plaintext", canary.to_vec()),
        ("plaintext (base64)", b64.into_bytes()),
        ("token", t.token.clone().into_bytes()),
        ("PIN", t.fixtures[0].pin("a").into_bytes()),
    ] {
        assert!(!contains(&needle), "the etcd snapshot holds the {what}");
    }
}

#[test]
fn a_node_killed_under_load_behind_haproxy_fails_no_request_and_openbao_still_unseals() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let mut t = trio();
    let ports: Vec<u16> = t.nodes.iter().map(|n| n.port).collect();
    let lb = haproxy::Haproxy::start(&ports);
    // A real OpenBao node whose transit seal points at the load balancer.
    n_policy_for_bao(&t.nodes[0]);
    let bao_token = t.nodes[0].token("bao", &["--period", "768h"]);
    let bao_dir = t.fixtures[0].path("bao");
    let mut bao = bao::Bao::with_seal(
        &bao_dir,
        "bao1",
        &bao_token,
        "bao-unseal",
        &format!("  address     = \"http://127.0.0.1:{}\"", lb.port),
    );
    bao.start();
    bao.wait_health(501, Duration::from_secs(60));
    let out = bao.cli(&["operator", "init", "-format=json"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), bao.log());
    bao.wait_health(200, Duration::from_secs(60));

    // Transit load through the load balancer from two clients while node 2 is killed.
    let stop = AtomicBool::new(false);
    let (done, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let ct = ciphertext(&encrypt(&t.nodes[0], &t.token, "vault-prod", b"load"));
    // Stops the load when the test fails half-way too (the scope waits for the clients).
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let r = http_with(
                        lb.port,
                        "PUT",
                        "/v1/transit/decrypt/vault-prod",
                        Some(&t.token),
                        json!({ "ciphertext": ct }).to_string().as_bytes(),
                    );
                    match r {
                        Ok(r) if r.status == 200 => done.fetch_add(1, Ordering::Relaxed),
                        other => {
                            eprintln!("failed request: {:?}", other.map(|r| (r.status, r.body)));
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            });
        }
        wait_for(
            Duration::from_secs(60),
            || (done.load(Ordering::Relaxed) >= 200).then_some(()),
            || "the load runs".into(),
        );
        let before = done.load(Ordering::Relaxed);
        unsafe_free_kill(t.nodes[1].pid(), "KILL");
        // OpenBao restarts while node 2 is dead: it unseals through the other two.
        bao.stop();
        bao.start();
        bao.wait_health(200, Duration::from_secs(60));
        wait_for(
            Duration::from_secs(60),
            || (done.load(Ordering::Relaxed) >= before + 500).then_some(()),
            || "the load goes on after the kill".into(),
        );
        stop.store(true, Ordering::Relaxed);
    });
    let (done, failed) = (done.into_inner(), failed.into_inner());
    eprintln!("through haproxy: {done} requests, {failed} failed, node 2 killed -9 during them");
    assert_eq!(
        failed,
        0,
        "requests failed behind the load balancer; haproxy log:\n{}",
        lb.log()
    );
    assert!(
        t.nodes[1]
            .child
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_some(),
        "node 2 is dead"
    );
    // The dead node's registry record expires with its lease.
    let st = t.nodes[0].wait_status(
        "node 2 gone from the registry",
        Duration::from_secs(20),
        |s| {
            s["cluster"]["nodes"]
                .as_array()
                .is_some_and(|a| a.len() == 2 && a.iter().all(|n| n["name"] != "node2"))
        },
    );
    assert!(st["cluster"]["error"].is_null(), "{st}");
}

fn n_policy_for_bao(d: &Daemon) {
    d.operator_ok(&["key", "create", "bao-unseal"]);
    d.operator_ok(&[
        "policy",
        "write",
        "bao",
        "--key",
        "bao-unseal",
        "--capabilities",
        "encrypt,decrypt",
    ]);
}

#[test]
fn active_standby_elects_one_leader_and_a_standby_takes_over_when_it_dies() {
    let etcd = EtcdCluster::start(3);
    let mut fixtures = vec![node(&etcd, "as/", "node1", None)];
    for name in ["node2", "node3"] {
        let f = node(&etcd, "as/", name, Some(&fixtures[0]));
        fixtures.push(f);
    }
    for f in &fixtures {
        f.edit_config(|c| {
            c.replace(
                "[cluster]\n",
                "[cluster]\nmode = \"active-standby\"\nlease_ttl = \"2s\"\n",
            )
        });
    }
    let mut nodes: Vec<Daemon> = fixtures.iter().map(|f| f.start()).collect();
    nodes[0].init();
    // Exactly one node is active (200); the others answer as standbys (429), and 200 with
    // standbyok, as Vault's health check does.
    let codes =
        |nodes: &[Daemon]| -> Vec<u16> { nodes.iter().map(|n| n.health("").status).collect() };
    let leader = wait_for(
        Duration::from_secs(30),
        || {
            let c = codes(&nodes);
            (c.iter().filter(|&&c| c == 200).count() == 1
                && c.iter().filter(|&&c| c == 429).count() == 2)
                .then(|| c.iter().position(|&c| c == 200).unwrap())
        },
        || format!("one active and two standbys: {:?}", codes(&nodes)),
    );
    for (i, n) in nodes.iter().enumerate() {
        let h = n.health("");
        assert_eq!(h.json()["standby"], i != leader, "{}", h.body);
        assert_eq!(n.health("?standbyok=true").status, 200);
        assert_eq!(
            n.health("?standbycode=299").status,
            if i == leader { 200 } else { 299 }
        );
    }
    let name = format!("node{}", leader + 1);
    let st =
        nodes[(leader + 1) % 3].wait_status("the leader in status", Duration::from_secs(10), |s| {
            s["cluster"]["leader"] == name.as_str()
        });
    assert_eq!(st["cluster"]["mode"], "active-standby", "{st}");
    // Standbys hold the same state: a standby decrypts what the leader encrypted.
    nodes[leader].operator_ok(&["key", "create", "vault-prod"]);
    let token = nodes[leader].policy_and_token("p", "vault-prod", "encrypt,decrypt");
    let ct = ciphertext(&encrypt(&nodes[leader], &token, "vault-prod", b"standby"));
    let standby = (leader + 1) % 3;
    wait_for(
        Duration::from_secs(10),
        || (decrypt(&nodes[standby], &token, "vault-prod", &ct).status == 200).then_some(()),
        || "a standby decrypts".into(),
    );

    // The leader dies: another node takes over once its lease expired.
    unsafe_free_kill(nodes[leader].pid(), "KILL");
    let killed = Instant::now();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new_leader = wait_for(
        Duration::from_secs(30),
        || {
            survivors
                .iter()
                .copied()
                .find(|&i| nodes[i].health("").status == 200)
        },
        || "a standby took over".into(),
    );
    eprintln!(
        "active-standby takeover after kill -9 of the leader: {:?}",
        killed.elapsed()
    );
    let other = survivors.into_iter().find(|&i| i != new_leader).unwrap();
    assert_eq!(
        nodes[other].health("").status,
        429,
        "still exactly one active node"
    );
    assert_eq!(
        decrypt(&nodes[new_leader], &token, "vault-prod", &ct).status,
        200
    );
    // A sealed leader steps down too.
    nodes[new_leader].operator_ok(&["seal"]);
    wait_for(
        Duration::from_secs(30),
        || (nodes[other].health("").status == 200).then_some(()),
        || "the last standby took over from a sealed leader".into(),
    );
    assert_eq!(nodes[new_leader].health("").status, 503);
    // etcd goes away: the leader cannot renew its record, and keeps serving transit (nobody can
    // write without quorum, so nothing can diverge from it).
    let mut etcd = etcd;
    etcd.kill_all();
    wait_for(
        Duration::from_secs(30),
        || {
            nodes[other]
                .log()
                .contains("cannot renew the leader record; still serving as leader")
                .then_some(())
        },
        || {
            format!(
                "the leader never noticed etcd was gone:\n{}",
                nodes[other].log()
            )
        },
    );
    assert_eq!(nodes[other].health("").status, 200);
    assert_eq!(
        decrypt(&nodes[other], &token, "vault-prod", &ct).status,
        200
    );
    let _ = nodes[leader].stop();
}

#[test]
fn a_partitioned_member_and_a_killed_leader_stop_writes_not_transit_and_nothing_acknowledged_is_lost()
 {
    let mut etcd = EtcdCluster::start_partitionable();
    // The nodes reach the member in the namespace through a loopback relay, and list it first:
    // every call must move past it once it is cut off.
    let m2 = &etcd.members[2];
    let relay = Relay::start_to(
        format!("{}:{}", m2.client_host, m2.client_port)
            .parse()
            .unwrap(),
    );
    let mut eps = etcd.endpoints();
    eps[2] = format!("http://127.0.0.1:{}", relay.port);
    eps.rotate_right(1);
    let quoted: Vec<String> = eps.iter().map(|e| format!("{e:?}")).collect();
    let list = format!("[{}]", quoted.join(", "));
    let f1 = node(&etcd, "part/", "node1", None);
    let f2 = node(&etcd, "part/", "node2", Some(&f1));
    for f in [&f1, &f2] {
        f.edit_config(|c| c.replace(&etcd.endpoints_toml(), &list));
        assert!(f.config().contains(&list));
    }
    let (n1, n2) = (f1.start(), f2.start());
    n1.init();
    n2.wait_health(200, Duration::from_secs(20));
    let token = n1.policy_and_token("p", "*", "encrypt,decrypt");
    let mut acknowledged = Vec::new();
    for i in 0..3 {
        let k = format!("before-{i}");
        n1.operator_ok(&["key", "create", &k]);
        acknowledged.push(k);
    }
    let ct = ciphertext(&encrypt(&n2, &token, "before-0", b"through the partition"));

    // One member cut off by the network: writes still go through the other two.
    etcd.partition.as_ref().unwrap().cut();
    n2.operator_ok(&["key", "create", "during-partition"]);
    acknowledged.push("during-partition".into());
    // Both nodes see it: a change feed that was on the cut-off member moved to another.
    for n in [&n1, &n2] {
        wait_for(
            Duration::from_secs(10),
            || (encrypt(n, &token, "during-partition", b"x").status == 200).then_some(()),
            || {
                format!(
                    "a key created during the partition never reached a node; log:\n{}",
                    n.log()
                )
            },
        );
    }
    // Then the leader of the two that are left is killed: no quorum.
    let leader = etcd.leader();
    assert_ne!(leader, 2, "the cut-off member cannot lead");
    etcd.kill(leader);
    for n in [&n1, &n2] {
        assert_eq!(decrypt(n, &token, "before-0", &ct).status, 200);
        assert_eq!(encrypt(n, &token, "during-partition", b"x").status, 200);
        assert_eq!(n.health("").status, 200);
    }
    let out = n1.operator(&["key", "create", "no-quorum"]);
    assert!(
        !out.status.success(),
        "a write without quorum was acknowledged"
    );

    // Recovery: the link comes back and the killed member restarts; writes resume.
    etcd.partition.as_ref().unwrap().heal();
    etcd.restart(leader);
    etcd.wait_healthy();
    wait_for_every(
        Duration::from_millis(200),
        Duration::from_secs(30),
        || {
            n1.operator(&["key", "create", "after"])
                .status
                .success()
                .then_some(())
        },
        || format!("writes never resumed; log:\n{}", n1.log()),
    );
    acknowledged.push("after".into());
    for n in [&n1, &n2] {
        wait_for(
            Duration::from_secs(10),
            || {
                let list = n.operator_ok(&["key", "list"]);
                acknowledged
                    .iter()
                    .all(|k| list.lines().any(|l| l == k))
                    .then_some(())
            },
            || {
                format!(
                    "acknowledged keys missing: {}",
                    n.operator_ok(&["key", "list"])
                )
            },
        );
    }
}
