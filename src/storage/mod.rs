//! Storage: an async key/value trait with revisions, transactions and a change feed, and its
//! implementations.
//!
//! The trait is shaped like etcd's key space so that a clustered backend implements it directly:
//! - every change gets a revision that is higher than every revision handed out before it by the
//!   same store (for etcd, the cluster's revision); a record's revision is the revision of the change
//!   that wrote it;
//! - `put` and `delete` take an expectation (absent, or at a revision): compare-and-swap;
//! - `range` returns the values with their revisions in one read;
//! - `txn` checks every expectation first and then applies every operation, all or nothing;
//! - `watch` is a change feed of every change under a prefix made after it was opened.
//!
//! Implementations: [`file::FileStorage`] (the embedded default: one crash-safe file per record),
//! `etcd::EtcdStorage` (feature `etcd`: a cluster of appliances sharing one etcd cluster) and
//! [`memory::MemoryStorage`] (tests, and the in-process unit tests of the core).
//! [`conformance`] is one test suite that every implementation passes.

pub mod conformance;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod file;
pub mod memory;

use std::path::Path;

pub use file::FileStorage;
pub use memory::MemoryStorage;

/// A record's revision. 0 means "absent"; every change gets a higher one.
pub type Revision = u64;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The backend could not be read or written (a disk error, a lost connection). `backend` names
    /// the store ("file storage /var/lib/sealkeeper"), `op` what was being done.
    #[error("storage I/O error ({backend}): {op}: {source}")]
    Unavailable {
        backend: String,
        op: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("invalid storage key {0:?}")]
    InvalidKey(String),
    #[error("record {key} changed concurrently (expected revision {expected}, found {found})")]
    Conflict {
        key: String,
        expected: Revision,
        found: Revision,
    },
    /// A write's answer was lost, it was sent again, and the record had changed by then in a way
    /// that does not tell whether the first one was applied (its history was deleted or
    /// compacted).
    #[error(
        "storage ({backend}): the answer to a write of {key} was lost and the record has changed \
         since; whether the write was applied is unknown: read the record back before retrying"
    )]
    OutcomeUnknown { backend: String, key: String },
    #[error("record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("{0} is in use by another sealkeeper process")]
    Locked(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub value: Vec<u8>,
    pub revision: Revision,
}

/// A record and its key, as a range read returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    pub revision: Revision,
}

/// What a write expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Any,
    /// The record must not exist.
    Absent,
    /// The record must be at this revision.
    Revision(Revision),
}

impl Expect {
    /// Whether a record at `current` (0: absent) meets the expectation.
    pub fn met_by(self, current: Revision) -> bool {
        match self {
            Expect::Any => true,
            Expect::Absent => current == 0,
            Expect::Revision(r) => r == current,
        }
    }

    fn conflict(self, key: &str, found: Revision) -> StorageError {
        StorageError::Conflict {
            key: key.to_string(),
            expected: match self {
                Expect::Revision(r) => r,
                Expect::Any | Expect::Absent => 0,
            },
            found,
        }
    }
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        expect: Expect,
    },
    Delete {
        key: String,
        expect: Expect,
    },
}

impl Op {
    pub fn put(key: &str, value: Vec<u8>, expect: Expect) -> Op {
        Op::Put {
            key: key.to_string(),
            value,
            expect,
        }
    }

    pub fn delete(key: &str, expect: Expect) -> Op {
        Op::Delete {
            key: key.to_string(),
            expect,
        }
    }

    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key, .. } => key,
        }
    }

    fn expect(&self) -> Expect {
        match self {
            Op::Put { expect, .. } | Op::Delete { expect, .. } => *expect,
        }
    }
}

/// One change, as the change feed reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    /// The revision of the change (for a put, the record's new revision).
    pub revision: Revision,
    /// The new value; `None` for a delete.
    pub value: Option<Vec<u8>>,
}

/// What a change feed yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Change(Change),
    /// Changes were missed (the reader fell behind, or the backend lost and regained its feed):
    /// read everything under the prefix again.
    Resync,
    /// The store is gone; no more events.
    Closed,
}

/// What a store's feed carries: a change, or word that changes were missed.
#[derive(Debug, Clone)]
pub(crate) enum FeedItem {
    Change(Change),
    Resync,
}

/// A change feed under one prefix.
pub struct Watch {
    prefix: String,
    rx: tokio::sync::broadcast::Receiver<FeedItem>,
}

impl Watch {
    /// The next change under the prefix.
    pub async fn next(&mut self) -> WatchEvent {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match self.rx.recv().await {
                Ok(FeedItem::Change(c)) if c.key.starts_with(&self.prefix) => {
                    return WatchEvent::Change(c);
                }
                Ok(FeedItem::Change(_)) => {}
                Ok(FeedItem::Resync) => return WatchEvent::Resync,
                Err(RecvError::Lagged(_)) => return WatchEvent::Resync,
                Err(RecvError::Closed) => return WatchEvent::Closed,
            }
        }
    }
}

/// The change feed of a store: every committed change is sent once, in revision order (a store
/// whose feed can break sends `Resync` when it may have missed some).
pub(crate) struct Feed(tokio::sync::broadcast::Sender<FeedItem>);

impl Feed {
    pub(crate) fn new() -> Feed {
        Feed(tokio::sync::broadcast::channel(1024).0)
    }

    pub(crate) fn send(&self, c: Change) {
        // No receiver is not an error: nobody watches.
        let _ = self.0.send(FeedItem::Change(c));
    }

    /// Tells every watcher that changes may have been missed.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub(crate) fn resync(&self) {
        let _ = self.0.send(FeedItem::Resync);
    }

    pub(crate) fn watch(&self, prefix: &str) -> Watch {
        Watch {
            prefix: prefix.to_string(),
            rx: self.0.subscribe(),
        }
    }
}

#[async_trait::async_trait]
pub trait Storage: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<Record>, StorageError>;
    /// Writes `value`; returns the record's new revision.
    async fn put(&self, key: &str, value: &[u8], expect: Expect) -> Result<Revision, StorageError>;
    /// Deletes the record; `Ok(false)` when there was none (and `expect` allowed that).
    async fn delete(&self, key: &str, expect: Expect) -> Result<bool, StorageError>;
    /// Every record whose key starts with `prefix`, sorted by key, read at one point in time.
    async fn range(&self, prefix: &str) -> Result<Vec<Entry>, StorageError>;
    /// Checks every operation's expectation, then applies them all, or none. Returns the revision
    /// of the transaction (every put of it has this revision). At most one operation per key.
    async fn txn(&self, ops: Vec<Op>) -> Result<Revision, StorageError>;
    /// The change feed: every change under `prefix` committed after this call.
    fn watch(&self, prefix: &str) -> Watch;
    /// Writes a record (with an expectation, as `put`) that disappears `ttl` after this node's
    /// last leased write of that TTL: a lease, on stores that several nodes share (the node
    /// registry, the leader record). A store of one node keeps it like any record.
    async fn put_leased(
        &self,
        key: &str,
        value: &[u8],
        expect: Expect,
        ttl: std::time::Duration,
    ) -> Result<Revision, StorageError> {
        let _ = ttl;
        self.put(key, value, expect).await
    }
    /// A short name for status output ("file", "memory", "etcd").
    fn kind(&self) -> &'static str;
}

/// The key rules every backend enforces, so that a state moves between backends: 1-200 bytes,
/// `/`-separated segments of `A-Z a-z 0-9 - _ .`, no empty, `.` or `..` segment, none starting with
/// a dot.
pub fn validate_key(key: &str) -> Result<(), StorageError> {
    let ok = !key.is_empty()
        && key.len() <= 200
        && key.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && !seg.starts_with('.')
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(StorageError::InvalidKey(key.to_string()))
    }
}

/// A transaction's operations are valid: keys valid, at most one operation per key.
fn validate_ops(ops: &[Op]) -> Result<(), StorageError> {
    let mut seen = std::collections::BTreeSet::new();
    for op in ops {
        validate_key(op.key())?;
        if !seen.insert(op.key()) {
            return Err(StorageError::InvalidKey(format!(
                "{} (twice in one transaction)",
                op.key()
            )));
        }
    }
    Ok(())
}

/// Refuses a storage directory that others may write to.
pub fn check_directory_permissions(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o002 != 0 => Err(format!(
            "storage directory {} is world-writable (mode {:o}); chmod 0700 it",
            path.display(),
            m.permissions().mode() & 0o7777
        )),
        _ => Ok(()),
    }
}
