//! The admin/public boundary: the public listener serves exactly an allow-list of paths, and no
//! admin route (key creation and deletion, policies, tokens, seal, rekey, audit) answers on it,
//! whatever the method. A misplaced `.merge` of admin routes into the public router fails here.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;

/// Every path the public listener may serve (transit mounted at "transit").
const PUBLIC: &[&str] = &[
    "/v1/sys/health",
    "/v1/sys/seal-status",
    "/v1/sys/seal-backend-status",
    "/v1/sys/init",
    // A token with the metrics capability (in a rule for key "*") is needed; see tests/metrics.rs.
    "/v1/sys/metrics",
    "/v1/transit/encrypt/{key}",
    "/v1/transit/decrypt/{key}",
    "/v1/transit/rewrap/{key}",
    "/v1/transit/datakey/{kind}/{key}",
    "/v1/transit/keys/{key}",
    "/v1/auth/token/renew-self",
    "/v1/auth/token/lookup-self",
];

fn sorted(v: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = v.into_iter().collect();
    v.sort();
    v
}

#[test]
fn the_public_listener_serves_the_allow_list_only() {
    assert_eq!(
        sorted(sealkeeper::http::public_paths("transit")),
        sorted(PUBLIC.iter().map(|s| s.to_string())),
        "a public route was added or removed: update the allow-list only if it is meant to be public"
    );
}

#[test]
fn no_admin_route_answers_on_the_public_listener() {
    let f = Fixture::new();
    let d = f.start();
    d.init();
    d.operator_ok(&["key", "create", "k"]);
    let admin = sealkeeper::admin::paths("transit");
    assert!(admin.len() > 20, "{admin:?}");
    for path in &admin {
        let concrete = path
            .replace("{key}", "k")
            .replace("{name}", "p")
            .replace("{kind}", "plaintext");
        // On a path both listeners have, the public side serves reads only.
        let methods: &[&str] = if PUBLIC.contains(&path.as_str()) {
            &["PUT", "POST", "DELETE"]
        } else {
            &["GET", "PUT", "POST", "DELETE"]
        };
        for m in methods {
            let r = http(d.port, m, &concrete).unwrap();
            assert!(
                r.status == 404 || r.status == 405,
                "{m} {concrete} answered {} on the public listener: {}",
                r.status,
                r.body
            );
        }
    }
    // The admin socket does serve them (the list is the real route set).
    let out = d.admin_curl("GET", "/v1/transit/keys", None).json();
    assert_eq!(out["data"]["keys"][0], "k");
}
