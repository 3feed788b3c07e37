//! The storage conformance suite: what every [`Storage`] implementation must do. Each store's tests
//! call [`run`] on a fresh, empty store (the file and memory stores in their unit tests; a clustered
//! store against a real server).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check is a failed test

use std::time::Duration;

use super::{Change, Entry, Expect, Op, Record, Storage, StorageError, WatchEvent};

/// Runs every check against `s`, which must be empty.
pub async fn run(s: &dyn Storage) {
    get_put_and_compare_and_swap(s).await;
    delete_with_expectations(s).await;
    range_returns_values_and_revisions(s).await;
    transactions_are_all_or_nothing(s).await;
    revisions_only_grow(s).await;
    watch_reports_changes_in_order(s).await;
    keys_are_checked(s).await;
}

fn conflict<T: std::fmt::Debug>(r: Result<T, StorageError>) -> bool {
    matches!(r, Err(StorageError::Conflict { .. }))
}

async fn get_put_and_compare_and_swap(s: &dyn Storage) {
    assert_eq!(s.get("cas/a").await.unwrap(), None);
    let r1 = s.put("cas/a", b"one", Expect::Absent).await.unwrap();
    assert!(r1 > 0);
    assert!(conflict(s.put("cas/a", b"x", Expect::Absent).await));
    assert!(conflict(
        s.put("cas/a", b"x", Expect::Revision(r1 + 100)).await
    ));
    assert!(conflict(
        s.put("cas/missing", b"x", Expect::Revision(r1)).await
    ));
    let r2 = s.put("cas/a", b"two", Expect::Revision(r1)).await.unwrap();
    assert!(r2 > r1);
    assert_eq!(
        s.get("cas/a").await.unwrap(),
        Some(Record {
            value: b"two".to_vec(),
            revision: r2
        })
    );
    let r3 = s.put("cas/a", b"", Expect::Any).await.unwrap();
    assert_eq!(s.get("cas/a").await.unwrap().unwrap().revision, r3);
    assert_eq!(s.get("cas/a").await.unwrap().unwrap().value, b"");
}

async fn delete_with_expectations(s: &dyn Storage) {
    let r = s.put("del/a", b"v", Expect::Absent).await.unwrap();
    assert!(conflict(s.delete("del/a", Expect::Revision(r + 1)).await));
    assert!(conflict(s.delete("del/a", Expect::Absent).await));
    assert!(s.delete("del/a", Expect::Revision(r)).await.unwrap());
    assert_eq!(s.get("del/a").await.unwrap(), None);
    assert!(!s.delete("del/a", Expect::Any).await.unwrap());
    assert!(conflict(s.delete("del/a", Expect::Revision(r)).await));
}

async fn range_returns_values_and_revisions(s: &dyn Storage) {
    let rb = s.put("rng/b", b"B", Expect::Any).await.unwrap();
    let ra = s.put("rng/a", b"A", Expect::Any).await.unwrap();
    let rc = s.put("rng/sub/c", b"C", Expect::Any).await.unwrap();
    s.put("rngx", b"not under rng/", Expect::Any).await.unwrap();
    let got = s.range("rng/").await.unwrap();
    let want = vec![
        Entry {
            key: "rng/a".into(),
            value: b"A".to_vec(),
            revision: ra,
        },
        Entry {
            key: "rng/b".into(),
            value: b"B".to_vec(),
            revision: rb,
        },
        Entry {
            key: "rng/sub/c".into(),
            value: b"C".to_vec(),
            revision: rc,
        },
    ];
    assert_eq!(got, want);
    assert!(s.range("nothing-here/").await.unwrap().is_empty());
}

async fn transactions_are_all_or_nothing(s: &dyn Storage) {
    let r = s.put("txn/a", b"a1", Expect::Absent).await.unwrap();
    // One expectation fails: nothing is written.
    assert!(conflict(
        s.txn(vec![
            Op::put("txn/a", b"a2".to_vec(), Expect::Revision(r)),
            Op::put("txn/b", b"b1".to_vec(), Expect::Revision(5)),
        ])
        .await
    ));
    assert_eq!(s.get("txn/a").await.unwrap().unwrap().value, b"a1");
    assert_eq!(s.get("txn/b").await.unwrap(), None);
    // All expectations hold: everything is written, at one revision.
    let t = s
        .txn(vec![
            Op::put("txn/a", b"a2".to_vec(), Expect::Revision(r)),
            Op::put("txn/b", b"b1".to_vec(), Expect::Absent),
            Op::delete("txn/c", Expect::Absent),
        ])
        .await
        .unwrap();
    assert!(t > r);
    assert_eq!(s.get("txn/a").await.unwrap().unwrap().revision, t);
    assert_eq!(s.get("txn/b").await.unwrap().unwrap().revision, t);
    let t2 = s
        .txn(vec![
            Op::delete("txn/a", Expect::Revision(t)),
            Op::put("txn/b", b"b2".to_vec(), Expect::Revision(t)),
        ])
        .await
        .unwrap();
    assert_eq!(s.get("txn/a").await.unwrap(), None);
    assert_eq!(s.get("txn/b").await.unwrap().unwrap().revision, t2);
    // The same key twice is refused.
    assert!(matches!(
        s.txn(vec![
            Op::put("txn/d", b"1".to_vec(), Expect::Any),
            Op::delete("txn/d", Expect::Any),
        ])
        .await,
        Err(StorageError::InvalidKey(_))
    ));
}

async fn revisions_only_grow(s: &dyn Storage) {
    let a = s.put("rev/a", b"", Expect::Any).await.unwrap();
    let b = s.put("rev/b", b"", Expect::Any).await.unwrap();
    s.delete("rev/a", Expect::Any).await.unwrap();
    let c = s.put("rev/a", b"", Expect::Absent).await.unwrap();
    assert!(a < b && b < c, "{a} {b} {c}");
}

async fn watch_reports_changes_in_order(s: &dyn Storage) {
    let mut w = s.watch("watch/");
    let r1 = s.put("watch/a", b"1", Expect::Any).await.unwrap();
    s.put("unwatched", b"x", Expect::Any).await.unwrap();
    let r2 = s
        .txn(vec![
            Op::put("watch/b", b"2".to_vec(), Expect::Any),
            Op::delete("watch/a", Expect::Any),
        ])
        .await
        .unwrap();
    async fn next(w: &mut super::Watch) -> WatchEvent {
        tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("a change within 10 s")
    }
    assert_eq!(
        next(&mut w).await,
        WatchEvent::Change(Change {
            key: "watch/a".into(),
            revision: r1,
            value: Some(b"1".to_vec())
        })
    );
    let mut txn_changes = vec![next(&mut w).await, next(&mut w).await];
    txn_changes.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(
        txn_changes,
        vec![
            WatchEvent::Change(Change {
                key: "watch/a".into(),
                revision: r2,
                value: None
            }),
            WatchEvent::Change(Change {
                key: "watch/b".into(),
                revision: r2,
                value: Some(b"2".to_vec())
            }),
        ]
    );
    // A failed write is not a change.
    assert!(conflict(s.put("watch/b", b"3", Expect::Absent).await));
    let r3 = s.put("watch/c", b"3", Expect::Absent).await.unwrap();
    assert_eq!(
        next(&mut w).await,
        WatchEvent::Change(Change {
            key: "watch/c".into(),
            revision: r3,
            value: Some(b"3".to_vec())
        })
    );
}

async fn keys_are_checked(s: &dyn Storage) {
    for k in ["", "../x", "a//b", ".hidden", "a/../b", "sp ace", "a/"] {
        assert!(
            matches!(s.get(k).await, Err(StorageError::InvalidKey(_))),
            "{k:?}"
        );
        assert!(
            matches!(
                s.put(k, b"", Expect::Any).await,
                Err(StorageError::InvalidKey(_))
            ),
            "{k:?}"
        );
    }
    assert!(s.get(&"k".repeat(201)).await.is_err());
}
