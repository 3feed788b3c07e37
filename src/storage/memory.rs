//! An in-memory store: the same semantics as every other store, nothing persisted. Used by the
//! core's in-process unit tests, and by any test that needs a store whose writes can be made to
//! fail on demand ([`MemoryStorage::fail_writes`]).

use crate::locks::MutexExt;
use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{
    Change, Entry, Expect, Feed, Op, Record, Revision, Storage, StorageError, Watch, validate_key,
    validate_ops,
};

#[derive(Default)]
struct Inner {
    records: BTreeMap<String, Record>,
    revision: Revision,
    /// When set, every write fails with this reason (a disk that is full, a cluster without quorum).
    failing: Option<String>,
}

pub struct MemoryStorage {
    inner: Mutex<Inner>,
    feed: Feed,
}

impl Default for MemoryStorage {
    fn default() -> Self {
        MemoryStorage::new()
    }
}

impl MemoryStorage {
    pub fn new() -> MemoryStorage {
        MemoryStorage {
            inner: Mutex::new(Inner::default()),
            feed: Feed::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock_recover()
    }

    /// Makes every later write fail with `reason` (`None`: writes work again). Reads keep working.
    pub fn fail_writes(&self, reason: Option<&str>) {
        self.lock().failing = reason.map(str::to_string);
    }

    fn commit(&self, ops: Vec<Op>) -> Result<(Revision, Vec<bool>), StorageError> {
        validate_ops(&ops)?;
        let mut inner = self.lock();
        if let Some(reason) = &inner.failing {
            return Err(StorageError::Unavailable {
                backend: "memory storage".into(),
                op: format!("writing {}", ops.first().map_or("", |o| o.key())),
                source: reason.clone().into(),
            });
        }
        let mut existed = Vec::with_capacity(ops.len());
        for op in &ops {
            let current = inner.records.get(op.key()).map_or(0, |r| r.revision);
            if !op.expect().met_by(current) {
                return Err(op.expect().conflict(op.key(), current));
            }
            existed.push(current != 0);
        }
        inner.revision += 1;
        let revision = inner.revision;
        for op in ops {
            let change = match op {
                Op::Put { key, value, .. } => {
                    inner.records.insert(
                        key.clone(),
                        Record {
                            value: value.clone(),
                            revision,
                        },
                    );
                    Change {
                        key,
                        revision,
                        value: Some(value),
                    }
                }
                Op::Delete { key, .. } => {
                    inner.records.remove(&key);
                    Change {
                        key,
                        revision,
                        value: None,
                    }
                }
            };
            self.feed.send(change);
        }
        Ok((revision, existed))
    }
}

#[async_trait::async_trait]
impl Storage for MemoryStorage {
    async fn get(&self, key: &str) -> Result<Option<Record>, StorageError> {
        validate_key(key)?;
        Ok(self.lock().records.get(key).cloned())
    }

    async fn put(&self, key: &str, value: &[u8], expect: Expect) -> Result<Revision, StorageError> {
        self.commit(vec![Op::put(key, value.to_vec(), expect)])
            .map(|r| r.0)
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<bool, StorageError> {
        self.commit(vec![Op::delete(key, expect)])
            .map(|(_, e)| e.first().copied().unwrap_or(false))
    }

    async fn range(&self, prefix: &str) -> Result<Vec<Entry>, StorageError> {
        Ok(self
            .lock()
            .records
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, r)| Entry {
                key: k.clone(),
                value: r.value.clone(),
                revision: r.revision,
            })
            .collect())
    }

    async fn txn(&self, ops: Vec<Op>) -> Result<Revision, StorageError> {
        self.commit(ops).map(|r| r.0)
    }

    fn watch(&self, prefix: &str) -> Watch {
        self.feed.watch(prefix)
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        super::super::conformance::run(&MemoryStorage::new()).await;
    }

    #[tokio::test]
    async fn failing_writes_change_nothing_and_recover() {
        let s = MemoryStorage::new();
        s.put("a", b"1", Expect::Absent).await.unwrap();
        s.fail_writes(Some("disk full"));
        let e = s.put("a", b"2", Expect::Any).await.unwrap_err();
        assert!(e.to_string().contains("disk full"), "{e}");
        assert_eq!(s.get("a").await.unwrap().unwrap().value, b"1");
        s.fail_writes(None);
        s.put("a", b"2", Expect::Any).await.unwrap();
    }
}
