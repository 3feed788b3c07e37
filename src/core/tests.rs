//! The core's transitions, in-process: test seals (`seal::test`) and the memory store, no HSM and
//! no subprocess. The integration tests run the same transitions through the real binary with
//! SoftHSM; these pin down the state machine's own rules.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::seal::FailureKind;
use crate::seal::test::TestSeal;
use crate::storage::MemoryStorage;

struct Node {
    core: Arc<Core>,
    storage: Arc<MemoryStorage>,
}

/// A core on `storage` with `seals` (name, seal) by priority, self-tests passed.
async fn node(storage: Arc<MemoryStorage>, seals: &[(&str, Arc<TestSeal>)]) -> Node {
    let (_tx, rx) = tokio::sync::watch::channel(Some(crate::crypto::self_tests()));
    let entries = seals
        .iter()
        .enumerate()
        .map(|(i, (name, seal))| SealEntry {
            name: name.to_string(),
            priority: i as u32,
            disabled: false,
            fallback: false,
            kind: SealKind::Auto(seal.clone()),
        })
        .collect();
    let core = Core::new(
        CoreOptions {
            memory: MemoryPolicy::AllowUnlocked,
            cluster_name: None,
            retry_initial: Duration::from_millis(10),
            retry_max: Duration::from_millis(50),
            probe_interval: Duration::from_millis(100),
            fips_mode: false,
            node_name: "test-node".into(),
            standby_lease: None,
            self_tests: rx,
        },
        storage.clone(),
        entries,
        Audit::disabled(),
    )
    .await;
    Node { core, storage }
}

/// The ciphertext of `transit_round_trip` decrypts on `core` (its keyring is the one it was made
/// under).
fn assert_decrypts(core: &Core, ct: &str) {
    let t = core.transit().expect("unsealed");
    assert_eq!(&*t.decrypt("k", ct, b"").unwrap().0, b"payload");
}

/// Submits `keys` to the rekey started with `nonce`; returns the status after the last one.
async fn rekey_with(core: &Core, keys: &[String], nonce: &str) -> RekeyStatus {
    let mut last = None;
    for k in keys {
        last = Some(core.rekey_update(k, nonce).await.unwrap());
    }
    last.expect("at least one key")
}

/// Encrypts and decrypts with a transit key: the keyring the node unsealed with works.
async fn transit_round_trip(core: &Core, key: &str) -> String {
    let t = core.transit().expect("unsealed");
    if t.key_metadata(key).is_err() {
        t.create_key(key).await.unwrap();
    }
    let (ct, _) = t.encrypt(key, b"payload", b"", None).unwrap();
    assert_eq!(&*t.decrypt(key, &ct, b"").unwrap().0, b"payload");
    ct
}

#[tokio::test]
async fn init_seal_unseal_and_restart() {
    let store = Arc::new(MemoryStorage::new());
    let hsm = TestSeal::new("hsm");
    let n = node(store.clone(), &[("hsm", hsm.clone())]).await;
    assert!(!n.core.is_initialized());
    let init = n.core.init(3, 2).await.unwrap();
    assert_eq!(init.recovery_keys.len(), 3);
    assert!(!n.core.is_sealed());
    assert_eq!(n.core.status().unsealed_by_seal.as_deref(), Some("hsm"));
    let ct = transit_round_trip(&n.core, "k").await;

    n.core.seal().await.unwrap();
    assert!(n.core.is_sealed() && n.core.transit().is_none());
    n.core.unseal(Attempt::Operator).await.unwrap();
    assert!(!n.core.is_sealed());

    // A restart: a new core on the same store unseals by itself and decrypts what was written.
    let again = node(n.storage.clone(), &[("hsm", hsm)]).await;
    assert!(again.core.is_initialized() && again.core.is_sealed());
    again.core.unseal(Attempt::Automatic).await.unwrap();
    assert_decrypts(&again.core, &ct);
    assert!(
        again.core.init(3, 2).await.is_err(),
        "a second init is refused"
    );
}

#[tokio::test]
async fn the_first_reachable_seal_unseals_and_an_unreachable_one_is_not_fatal() {
    let store = Arc::new(MemoryStorage::new());
    let (a, b) = (TestSeal::new("a"), TestSeal::new("b"));
    let n = node(store.clone(), &[("a", a.clone()), ("b", b.clone())]).await;
    n.core.init(3, 2).await.unwrap();
    let ct = transit_round_trip(&n.core, "k").await;

    a.fail_with(Some(FailureKind::Unreachable));
    let again = node(store.clone(), &[("a", a.clone()), ("b", b.clone())]).await;
    again.core.unseal(Attempt::Automatic).await.unwrap();
    assert_eq!(again.core.status().unsealed_by_seal.as_deref(), Some("b"));
    assert_decrypts(&again.core, &ct);

    // Both unreachable: sealed with the error kept, and a later attempt succeeds.
    b.fail_with(Some(FailureKind::Unreachable));
    let third = node(store, &[("a", a.clone()), ("b", b.clone())]).await;
    let e = third.core.unseal(Attempt::Automatic).await.unwrap_err();
    assert!(!e.is_permanent(), "{e}");
    assert!(third.core.is_sealed());
    assert!(third.core.status().last_unseal_error.is_some());
    b.fail_with(None);
    third.core.unseal(Attempt::Automatic).await.unwrap();
    assert!(!third.core.is_sealed());
}

#[tokio::test]
async fn a_seal_that_was_down_at_init_is_caught_up_when_it_answers() {
    let store = Arc::new(MemoryStorage::new());
    let (a, b) = (TestSeal::new("a"), TestSeal::new("b"));
    b.fail_with(Some(FailureKind::Unreachable));
    let n = node(store.clone(), &[("a", a.clone()), ("b", b.clone())]).await;
    n.core.init(3, 2).await.unwrap();
    assert_eq!(
        n.core.status().seals_missing_wrapping,
        vec!["b".to_string()]
    );

    b.fail_with(None);
    let wrapped = n.core.catch_up().await.unwrap();
    assert_eq!(wrapped, vec!["b".to_string()]);
    assert!(n.core.status().seals_missing_wrapping.is_empty());

    // Now b alone unseals.
    a.fail_with(Some(FailureKind::Unreachable));
    let again = node(store, &[("a", a), ("b", b)]).await;
    again.core.unseal(Attempt::Automatic).await.unwrap();
    assert_eq!(again.core.status().unsealed_by_seal.as_deref(), Some("b"));
}

#[tokio::test]
async fn a_changed_key_still_unseals_until_rewrap_moves_the_root_key_to_it() {
    let store = Arc::new(MemoryStorage::new());
    let hsm = TestSeal::new("hsm");
    let n = node(store.clone(), &[("hsm", hsm.clone())]).await;
    n.core.init(3, 2).await.unwrap();
    let ct = transit_round_trip(&n.core, "k").await;

    hsm.configure_key("hsm-key-2");
    let st = n.core.status();
    assert_eq!(st.seals[0].wrapped_by_key.as_deref(), Some("hsm-key"));
    assert_eq!(st.seals[0].wrapped_by_configured_key, Some(false));
    // The blob names its key: a restart still unseals with the old key.
    let again = node(store.clone(), &[("hsm", hsm.clone())]).await;
    again.core.unseal(Attempt::Automatic).await.unwrap();

    let report = again.core.rewrap().await.unwrap();
    assert!(report.seals.iter().all(|s| s.ok), "{report:?}");
    assert_eq!(
        again.core.status().seals[0].wrapped_by_key.as_deref(),
        Some("hsm-key-2")
    );
    // The old key can go: the next start uses the new one.
    hsm.destroy_key("hsm-key");
    let third = node(store, &[("hsm", hsm)]).await;
    third.core.unseal(Attempt::Automatic).await.unwrap();
    assert_decrypts(&third.core, &ct);
}

#[tokio::test]
async fn rotate_root_rewraps_everywhere_and_keeps_every_record_readable() {
    let store = Arc::new(MemoryStorage::new());
    let (a, b) = (TestSeal::new("a"), TestSeal::new("b"));
    let n = node(store.clone(), &[("a", a.clone()), ("b", b.clone())]).await;
    n.core.init(3, 2).await.unwrap();
    let ct = transit_round_trip(&n.core, "k").await;
    let generation = n.core.status().root_generation.unwrap();

    n.core.rotate().await.unwrap();
    let report = n.core.rotate_root().await.unwrap();
    assert!(report.seals.iter().all(|s| s.ok), "{report:?}");
    let st = n.core.status();
    assert_eq!(st.root_generation, Some(generation + 1));
    assert_eq!(st.keyring_terms.len(), 2);

    for (down, up) in [(&a, &b), (&b, &a)] {
        down.fail_with(Some(FailureKind::Unreachable));
        up.fail_with(None);
        let again = node(store.clone(), &[("a", a.clone()), ("b", b.clone())]).await;
        again.core.unseal(Attempt::Automatic).await.unwrap();
        assert_decrypts(&again.core, &ct);
    }
}

#[tokio::test]
async fn a_modified_blob_is_refused_the_node_stays_sealed_and_nothing_is_rewritten() {
    let store = Arc::new(MemoryStorage::new());
    let hsm = TestSeal::new("hsm");
    let n = node(store.clone(), &[("hsm", hsm.clone())]).await;
    n.core.init(3, 2).await.unwrap();
    let rec = store.get(ROOT_STATE_KEY).await.unwrap().unwrap();
    let mut st: serde_json::Value = serde_json::from_slice(&rec.value).unwrap();
    st["wrappings"]["hsm"]["blob"]["sealed"] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into();
    let tampered = serde_json::to_vec(&st).unwrap();
    store
        .put(ROOT_STATE_KEY, &tampered, Expect::Revision(rec.revision))
        .await
        .unwrap();

    let again = node(store.clone(), &[("hsm", hsm)]).await;
    let e = again.core.unseal(Attempt::Automatic).await.unwrap_err();
    assert!(e.to_string().contains("tag mismatch"), "{e}");
    assert!(again.core.is_sealed());
    assert_eq!(
        store.get(ROOT_STATE_KEY).await.unwrap().unwrap().value,
        tampered,
        "the stored state was changed"
    );
}

#[tokio::test]
async fn a_failed_write_at_init_leaves_nothing_and_init_can_run_again() {
    let store = Arc::new(MemoryStorage::new());
    let hsm = TestSeal::new("hsm");
    let n = node(store.clone(), &[("hsm", hsm)]).await;
    store.fail_writes(Some("disk full"));
    let e = n.core.init(3, 2).await.unwrap_err();
    assert!(e.to_string().contains("disk full"), "{e}");
    assert!(!n.core.is_initialized());
    assert!(store.range("").await.unwrap().is_empty(), "nothing stored");
    store.fail_writes(None);
    n.core.init(3, 2).await.unwrap();
    assert!(!n.core.is_sealed());
}

#[tokio::test]
async fn recovery_keys_rekey_replaces_the_shares() {
    let store = Arc::new(MemoryStorage::new());
    let hsm = TestSeal::new("hsm");
    let n = node(store.clone(), &[("hsm", hsm)]).await;
    let init = n.core.init(3, 2).await.unwrap();
    let st = n.core.rekey_init("recovery", 5, 3).await.unwrap();
    let done = rekey_with(&n.core, &init.recovery_keys[..2], &st.nonce).await;
    assert_eq!(done.keys.len(), 5, "{done:?}");
    // The new shares take effect once a quorum of them comes back.
    if done.verification_required {
        assert_eq!(
            n.core.status().recovery_shares,
            3,
            "not before verification"
        );
        let mut v = None;
        for k in &done.keys[..3] {
            v = Some(
                n.core
                    .rekey_verify(k, &done.verification_nonce)
                    .await
                    .unwrap(),
            );
        }
        assert!(v.unwrap().verified);
    }
    let status = n.core.status();
    assert_eq!((status.recovery_shares, status.recovery_threshold), (5, 3));
    // An old share no longer authorizes a rekey.
    let st = n.core.rekey_init("recovery", 3, 2).await.unwrap();
    let e = n
        .core
        .rekey_update(&init.recovery_keys[0], &st.nonce)
        .await
        .unwrap_err();
    assert!(!e.to_string().is_empty());
}

/// A subscriber that keeps every event it hears.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<CoreEvent>>);

impl Subscriber for Recorder {
    fn on_event(&self, e: &CoreEvent) {
        self.0.lock().unwrap().push(e.clone());
    }
}

#[tokio::test]
async fn subscribers_hear_every_transition_in_order() {
    let store = Arc::new(MemoryStorage::new());
    let hsm = TestSeal::new("hsm");
    let n = node(store, &[("hsm", hsm.clone())]).await;
    let rec = Arc::new(Recorder::default());
    n.core.subscribe(rec.clone());
    n.core.init(3, 2).await.unwrap();
    n.core.seal().await.unwrap();
    hsm.fail_with(Some(FailureKind::Unreachable));
    assert!(n.core.unseal(Attempt::Operator).await.is_err());
    hsm.fail_with(None);
    n.core.unseal(Attempt::Operator).await.unwrap();
    n.core.rotate().await.unwrap();
    let events = rec.0.lock().unwrap().clone();
    let names: Vec<String> = events
        .iter()
        .map(|e| {
            let a = e.to_audit();
            format!("{}:{}", a.operation, a.outcome)
        })
        .collect();
    assert_eq!(
        names,
        [
            "init:ok",
            "seal:ok",
            "unseal:error",
            "unseal:ok",
            "rotate:ok"
        ],
        "{events:?}"
    );
    match &events[3] {
        CoreEvent::Unsealed { attempt, by, .. } => {
            assert_eq!(*attempt, "operator");
            assert_eq!(by, &UnsealedBy::new("hsm", "hsm-member"));
        }
        other => panic!("{other:?}"),
    }
}

/// Sealing forgets every share ceremony in progress, the verification of a rekey's new shares
/// included.
#[tokio::test]
async fn sealing_clears_every_share_ceremony() {
    let store = Arc::new(MemoryStorage::new());
    let hsm = TestSeal::new("hsm");
    let n = node(store, &[("hsm", hsm)]).await;
    let init = n.core.init(3, 2).await.unwrap();
    let st = n.core.rekey_init("recovery", 3, 2).await.unwrap();
    let done = rekey_with(&n.core, &init.recovery_keys[..2], &st.nonce).await;
    assert!(done.verification_required);
    let v = n
        .core
        .rekey_verify(&done.keys[0], &done.verification_nonce)
        .await
        .unwrap();
    assert_eq!(v.verification_progress, 1);
    n.core.seal().await.unwrap();
    n.core.unseal(Attempt::Operator).await.unwrap();
    assert_eq!(n.core.rekey_status().verification_progress, 0);
}
