//! The in-memory state's link to storage: every record under the cached prefixes is decoded into
//! the caches at load and from the store's change feed after, with per-path revisions so that a
//! late, older change never replaces a newer one; writes go out with the revision this node last
//! saw as their expectation.

use super::*;
use crate::locks::{MutexExt, RwLockExt};

/// The prefixes whose records are held in memory.
pub(super) const CACHED: [&str; 3] = [KEY_PREFIX, policy::PREFIX, tokens::PREFIX];

/// A record as the caches hold it.
pub(super) enum Cached {
    Key(Arc<TransitKey>),
    Policy(Policy),
    Token(TokenRecord),
    Removed,
}

/// Applies the store's change feed to `t` while it exists: changes written by another process that
/// shares the store reach this node's caches (this node's own writes are already there).
pub(super) async fn follow(t: Weak<Transit>, mut feed: Watch) {
    loop {
        let event = feed.next().await;
        let Some(t) = t.upgrade() else { return };
        match event {
            WatchEvent::Change(c) => {
                if let Err(e) = t.apply(&c.key, c.revision, c.value.as_deref()) {
                    tracing::error!(error = %e, "transit: a changed record could not be applied; the previous state is kept");
                }
            }
            WatchEvent::Resync => t.resync().await,
            WatchEvent::Closed => return,
        }
    }
}

impl Transit {
    /// Decodes a stored record (or a deletion) into what the caches hold.
    pub(super) fn decode(&self, path: &str, value: Option<&[u8]>) -> Result<Cached> {
        let Some(sealed) = value else {
            return Ok(Cached::Removed);
        };
        if path.starts_with(KEY_PREFIX) {
            let stored: StoredKey = self.cipher.open_json(path, sealed)?;
            Ok(Cached::Key(Arc::new(self.key_from_stored(stored, path)?)))
        } else if path.starts_with(policy::PREFIX) {
            Ok(Cached::Policy(self.cipher.open_json(path, sealed)?))
        } else {
            Ok(Cached::Token(self.cipher.open_json(path, sealed)?))
        }
    }

    /// Applies the change of `path` to revision `rev` (`None`: deleted) unless a newer one was
    /// applied already.
    pub(super) fn apply(&self, path: &str, rev: Revision, value: Option<&[u8]>) -> Result<()> {
        if !CACHED.iter().any(|p| path.starts_with(p)) || !self.is_newer(path, rev) {
            return Ok(());
        }
        let item = self.decode(path, value)?;
        self.install(path, rev, item);
        Ok(())
    }

    pub(super) fn is_newer(&self, path: &str, rev: Revision) -> bool {
        self.revisions
            .lock_recover()
            .get(path)
            .is_none_or(|(seen, _)| *seen < rev)
    }

    /// Puts `item` in the caches as the state of `path` at `rev`, unless a newer change was
    /// applied meanwhile.
    pub(super) fn install(&self, path: &str, rev: Revision, item: Cached) {
        let mut seen = self.revisions.lock_recover();
        if seen.get(path).is_some_and(|(r, _)| *r >= rev) {
            return;
        }
        seen.insert(path.to_string(), (rev, !matches!(item, Cached::Removed)));
        self.put_cached(path, item);
    }

    pub(super) fn put_cached(&self, path: &str, item: Cached) {
        let name = CACHED
            .iter()
            .find_map(|p| path.strip_prefix(p))
            .unwrap_or(path)
            .to_string();
        match item {
            Cached::Key(k) => {
                self.keys.write_recover().insert(name, k);
            }
            Cached::Policy(p) => {
                self.policies.write_recover().insert(name, p);
            }
            Cached::Token(t) => self.tokens.insert(t),
            Cached::Removed if path.starts_with(KEY_PREFIX) => {
                self.keys.write_recover().remove(&name);
            }
            Cached::Removed if path.starts_with(policy::PREFIX) => {
                self.policies.write_recover().remove(&name);
            }
            Cached::Removed => self.tokens.remove_accessor(&name),
        }
    }

    /// What a write of `path` expects to find: the revision this node last saw, or nothing.
    pub(super) fn expected(&self, path: &str) -> Expect {
        match self.revisions.lock_recover().get(path) {
            Some((rev, true)) => Expect::Revision(*rev),
            _ => Expect::Absent,
        }
    }

    /// Reads every cached prefix again (after the change feed lost changes): records that changed
    /// are applied, records that are gone are removed.
    pub async fn resync(&self) {
        let _w = self.write.lock().await;
        for prefix in CACHED {
            let entries = match self.storage.range(prefix).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(error = %e, prefix, "transit: could not re-read the store after missed changes");
                    continue;
                }
            };
            let present: std::collections::HashSet<&str> =
                entries.iter().map(|e| e.key.as_str()).collect();
            for e in &entries {
                if let Err(err) = self.apply(&e.key, e.revision, Some(&e.value)) {
                    tracing::error!(error = %err, "transit: a changed record could not be applied");
                }
            }
            let gone: Vec<String> = self
                .revisions
                .lock_recover()
                .iter()
                .filter(|(p, (_, exists))| {
                    *exists && p.starts_with(prefix) && !present.contains(p.as_str())
                })
                .map(|(p, _)| p.clone())
                .collect();
            for p in gone {
                let mut seen = self.revisions.lock_recover();
                if let Some(entry) = seen.get_mut(&p) {
                    entry.1 = false;
                }
                self.put_cached(&p, Cached::Removed);
            }
        }
    }

    /// Encrypts and stores `value` at `path` if the record is still as this node last saw it;
    /// returns the new revision.
    pub(super) async fn write_json<T: Serialize>(&self, path: &str, value: &T) -> Result<Revision> {
        let sealed = self.cipher.seal_json(path, value)?;
        Ok(self.storage.put(path, &sealed, self.expected(path)).await?)
    }

    /// Deletes `path` if it is still as this node last saw it, and forgets it.
    pub(super) async fn delete_record(&self, path: &str) -> Result<()> {
        self.storage.delete(path, self.expected(path)).await?;
        // A deletion's own revision is not reported: the path keeps the revision it was seen at,
        // now as a tombstone; the feed's echo of the deletion is higher and removes it again.
        if let Some(seen) = self.revisions.lock_recover().get_mut(path) {
            seen.1 = false;
        }
        self.put_cached(path, Cached::Removed);
        Ok(())
    }
}
