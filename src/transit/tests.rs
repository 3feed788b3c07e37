//! Transit unit tests: the ciphertext format, and two states on one store kept current by the
//! change feed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use super::*;

fn keys() -> Arc<UnsealedKeys> {
    let m = MemoryPolicy::AllowUnlocked;
    Arc::new(UnsealedKeys::new(
        LockedBytes::from_slice(&[1u8; 32], m).unwrap(),
        vec![(1, LockedBytes::from_slice(&[2u8; 32], m).unwrap())],
    ))
}

/// Polls `check` until it holds (10 s at most): the change feed is applied by another task.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Two transit states on one store, as two nodes sharing a clustered store: what one writes
/// reaches the other through the change feed, and a write from a stale view is refused.
#[tokio::test]
async fn another_writer_s_changes_reach_this_node_and_stale_writes_are_refused() {
    let store: Arc<dyn Storage> = Arc::new(crate::storage::MemoryStorage::new());
    let m = MemoryPolicy::AllowUnlocked;
    let a = Transit::load(store.clone(), keys(), m).await.unwrap();
    let b = Transit::load(store.clone(), keys(), m).await.unwrap();

    a.create_key("k").await.unwrap();
    eventually("b sees the key", || b.key("k").is_ok()).await;
    let (ct, _) = a.encrypt("k", b"secret", b"", None).unwrap();
    assert_eq!(&*b.decrypt("k", &ct, b"").unwrap().0, b"secret");

    a.rotate_key("k").await.unwrap();
    eventually("b sees version 2", || {
        b.key("k").is_ok_and(|k| k.latest == 2)
    })
    .await;
    let (ct2, v) = b.encrypt("k", b"two", b"", None).unwrap();
    assert_eq!(v, 2);
    assert_eq!(&*a.decrypt("k", &ct2, b"").unwrap().0, b"two");

    // B has not seen A's newest change when it writes: refused, nothing lost.
    a.configure_key(
        "k",
        &KeyConfig {
            deletion_allowed: Some(true),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // The test runs on one thread and has not yielded since A's write (the memory store
    // never waits), so B's feed task has not run: B's view is stale, and its write expects the
    // older revision.
    assert!(!b.key("k").unwrap().deletion_allowed);
    let r = b.rotate_key("k").await;
    assert!(
        matches!(r, Err(TransitError::Storage(StorageError::Conflict { .. }))),
        "{:?}",
        r.err()
    );
    eventually("b sees deletion_allowed", || {
        b.key("k").is_ok_and(|k| k.deletion_allowed)
    })
    .await;

    b.write_policy(Policy {
        name: "p".into(),
        rules: vec![Rule {
            key: "k".into(),
            capabilities: vec![Capability::Encrypt],
        }],
    })
    .await
    .unwrap();
    eventually("a sees the policy", || a.policy("p").is_ok()).await;
    let (rec, token) = a
        .create_token(&TokenRequest {
            policies: vec!["p".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    eventually("b knows the token", || {
        b.authorize(Some(&token), "k", Capability::Encrypt).is_ok()
    })
    .await;
    b.revoke_accessor(&rec.accessor).await.unwrap();
    eventually("a forgets the token", || {
        a.authenticate(Some(&token)).is_err()
    })
    .await;

    b.delete_key("k").await.unwrap();
    eventually("a forgets the key", || a.key("k").is_err()).await;
    b.delete_policy("p").await.unwrap();
    eventually("a forgets the policy", || a.policy("p").is_err()).await;
    // Created again after the deletion: the newer record wins over the tombstone.
    a.create_key("k").await.unwrap();
    eventually("b sees the new key", || b.key("k").is_ok()).await;
}

/// A record that arrives broken through the feed (here: not sealed under the keyring) is not
/// applied; the state it would replace is kept, and later changes still apply.
#[tokio::test]
async fn a_broken_record_from_the_feed_keeps_the_old_state() {
    let store: Arc<dyn Storage> = Arc::new(crate::storage::MemoryStorage::new());
    let m = MemoryPolicy::AllowUnlocked;
    let a = Transit::load(store.clone(), keys(), m).await.unwrap();
    let b = Transit::load(store.clone(), keys(), m).await.unwrap();
    a.create_key("k").await.unwrap();
    let (ct, _) = a.encrypt("k", b"still", b"", None).unwrap();
    let path = format!("{KEY_PREFIX}k");
    let rev = store.get(&path).await.unwrap().unwrap().revision;
    store
        .put(&path, b"not a sealed record", Expect::Revision(rev))
        .await
        .unwrap();
    b.write_policy(Policy {
        name: "after".into(),
        rules: vec![Rule {
            key: "*".into(),
            capabilities: vec![Capability::Decrypt],
        }],
    })
    .await
    .unwrap();
    // The feed is applied in order: once the later policy is there, the broken record was seen.
    eventually("a sees the later policy", || a.policy("after").is_ok()).await;
    assert_eq!(a.key("k").unwrap().latest, 1);
    assert_eq!(&*a.decrypt("k", &ct, b"").unwrap().0, b"still");
}

#[test]
fn ciphertext_format_is_checked() {
    assert!(parse_ciphertext("vault:v1:AAAA").is_ok());
    for bad in [
        "vault:v1",
        "vault:v1:AA:BB",
        "nope:v1:AAAA",
        "vault:1:AAAA",
        "vault:v0:AAAA",
        "vault:vx:AAAA",
        "vault:v01:AAAA",
        "vault:v+1:AAAA",
        "vault:v:AAAA",
        "vault:v4294967296:AAAA",
        "vault:v1:***",
    ] {
        assert!(parse_ciphertext(bad).is_err(), "{bad}");
    }
}

#[test]
fn version_is_bound_into_the_aad() {
    assert_ne!(bound_aad(1, b"x"), bound_aad(2, b"x"));
    assert_eq!(bound_aad(3, b"ctx"), b"vault:v3:ctx".to_vec());
}
