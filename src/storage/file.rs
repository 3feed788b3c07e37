//! The embedded default store: one file per record under `<path>/data/`, each
//! `SKR1 || revision (8 bytes, big endian) || value`.
//!
//! A write goes to a temporary file, is fsynced, renamed over the old record, and the directory is
//! fsynced: after a crash a record is either the old or the new version, never a mix. A transaction
//! of several records first writes an undo journal (`<path>/TXN`, the old version of every record it
//! touches, checksummed, itself written by rename), applies the records, and removes the journal:
//! the removal is the commit. A journal found at open (a crash mid-transaction) is undone, so a
//! transaction that did not report success has no effect. One process at a time: an exclusive lock
//! on `<path>/LOCK`. File I/O runs on tokio's blocking threads.

use crate::locks::MutexExt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{
    Change, Entry, Expect, Feed, Op, Record, Revision, Storage, StorageError, Watch, validate_key,
    validate_ops,
};

const MAGIC: &[u8; 4] = b"SKR1";
const JOURNAL_MAGIC: &[u8; 4] = b"SKJ1";
const JOURNAL: &str = "TXN";

pub struct FileStorage {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    data: PathBuf,
    /// "file storage <root>", for errors.
    backend: String,
    writer: Mutex<Writer>,
    feed: Feed,
    _lock_file: File,
}

struct Writer {
    /// The highest revision handed out (at open: the highest stored).
    revision: Revision,
    /// Set when a failed transaction could not be undone: every later operation fails until the
    /// store is opened again (which undoes it from the journal).
    broken: Option<String>,
}

/// The old version of one record, as the undo journal keeps it.
struct Undo {
    key: String,
    old: Option<Record>,
}

impl FileStorage {
    /// Opens (creating with mode 0700 if needed) the storage directory and takes an exclusive lock
    /// on it, so that two daemons can never write the same state. Undoes a transaction that a crash
    /// interrupted.
    pub fn open(root: &Path) -> Result<FileStorage, StorageError> {
        let backend = format!("file storage {}", root.display());
        let io = |op: String| {
            let backend = backend.clone();
            move |e: io::Error| StorageError::Unavailable {
                backend,
                op,
                source: Box::new(e),
            }
        };
        let data = root.join("data");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&data)
            .map_err(io(format!("creating {}", data.display())))?;
        let lock_path = root.join("LOCK");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io(format!("opening {}", lock_path.display())))?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StorageError::Locked(format!(
                    "storage directory {} (lock held on its LOCK file)",
                    root.display()
                )));
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(io(format!("locking {}", lock_path.display()))(e));
            }
        }
        let inner = Inner {
            root: root.to_path_buf(),
            data,
            backend,
            writer: Mutex::new(Writer {
                revision: 0,
                broken: None,
            }),
            feed: Feed::new(),
            _lock_file: lock_file,
        };
        inner.recover()?;
        let highest = inner.highest_revision()?;
        inner.writer().revision = highest;
        Ok(FileStorage {
            inner: Arc::new(inner),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StorageError::Unavailable {
                backend: self.inner.backend.clone(),
                op: "a blocking task".into(),
                source: Box::new(e),
            })?
    }
}

impl Inner {
    fn writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock_recover()
    }

    fn io_err(&self, op: impl Into<String>) -> impl FnOnce(io::Error) -> StorageError + '_ {
        let op = op.into();
        move |e| StorageError::Unavailable {
            backend: self.backend.clone(),
            op,
            source: Box::new(e),
        }
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StorageError> {
        validate_key(key)?;
        Ok(self.data.join(key))
    }

    fn read(&self, key: &str) -> Result<Option<Record>, StorageError> {
        read_record(&self.data, &self.backend, key)
    }

    fn sync_dir(&self, dir: &Path) -> Result<(), StorageError> {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(self.io_err(format!("syncing {}", dir.display())))
    }

    /// Writes `bytes` to `path` by a synced temporary file renamed over it, then syncs the directory.
    fn replace_file(&self, path: &Path, bytes: &[&[u8]], what: &str) -> Result<(), StorageError> {
        let dir = path.parent().unwrap_or(&self.data).to_path_buf();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(self.io_err(format!("writing {what}")))?;
        let mut suffix = [0u8; 8];
        crate::crypto::fill_random(&mut suffix).map_err(|e| StorageError::Unavailable {
            backend: self.backend.clone(),
            op: format!("writing {what}"),
            source: Box::new(e),
        })?;
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            hex::encode(suffix)
        ));
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)?;
            for b in bytes {
                f.write_all(b)?;
            }
            f.sync_all()?;
            fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(self.io_err(format!("writing {what}"))(e));
        }
        self.sync_dir(&dir)
    }

    fn write_record(
        &self,
        key: &str,
        value: &[u8],
        revision: Revision,
    ) -> Result<(), StorageError> {
        let path = self.path_of(key)?;
        self.replace_file(&path, &[MAGIC, &revision.to_be_bytes(), value], key)
    }

    fn remove_record(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path_of(key)?;
        match fs::remove_file(&path) {
            Ok(()) => self.sync_dir(path.parent().unwrap_or(&self.data)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io_err(format!("deleting {key}"))(e)),
        }
    }

    fn set(&self, key: &str, rec: Option<&Record>) -> Result<(), StorageError> {
        match rec {
            Some(r) => self.write_record(key, &r.value, r.revision),
            None => self.remove_record(key),
        }
    }

    /// Every stored key, sorted.
    fn keys(&self) -> Result<Vec<String>, StorageError> {
        let mut out = Vec::new();
        let mut stack = vec![(self.data.clone(), String::new())];
        while let Some((dir, rel)) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io_err(format!("listing {}", dir.display()))(e)),
            };
            for entry in entries {
                let entry = entry.map_err(self.io_err(format!("listing {}", dir.display())))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let key = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                let ft = entry
                    .file_type()
                    .map_err(self.io_err(format!("listing {}", dir.display())))?;
                if ft.is_dir() {
                    stack.push((entry.path(), key));
                } else {
                    out.push(key);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The highest revision stored, from the records' headers only (a damaged record counts as
    /// none: reading it reports the damage).
    fn highest_revision(&self) -> Result<Revision, StorageError> {
        use std::io::Read;
        let mut highest = 0;
        for key in self.keys()? {
            let mut head = [0u8; 12];
            let read = File::open(self.data.join(&key)).and_then(|mut f| f.read_exact(&mut head));
            if read.is_ok() && &head[..4] == MAGIC {
                let mut rev = [0u8; 8];
                rev.copy_from_slice(&head[4..]);
                highest = highest.max(u64::from_be_bytes(rev));
            }
        }
        Ok(highest)
    }

    fn journal_path(&self) -> PathBuf {
        self.root.join(JOURNAL)
    }

    /// Removes the transaction journal durably: the commit (or the end of an undo).
    fn remove_journal(&self) -> Result<(), StorageError> {
        fs::remove_file(self.journal_path())
            .map_err(self.io_err("removing the transaction journal"))?;
        self.sync_dir(&self.root)
    }

    /// Undoes the transaction whose journal a crash left behind.
    fn recover(&self) -> Result<(), StorageError> {
        let path = self.journal_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io_err("reading the transaction journal")(e)),
        };
        let undo = decode_journal(&bytes).map_err(|reason| StorageError::Corrupt {
            key: JOURNAL.into(),
            reason: format!(
                "the transaction journal {} is damaged ({reason}); the transaction it records was not completed, restore the storage directory from a backup",
                path.display()
            ),
        })?;
        for u in &undo {
            self.set(&u.key, u.old.as_ref())?;
        }
        self.remove_journal()?;
        tracing::warn!(
            records = undo.len(),
            "storage: undid a transaction that a crash interrupted"
        );
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<Record>, StorageError> {
        if let Some(b) = &self.writer().broken {
            return Err(self.broken(b));
        }
        self.read(key)
    }

    fn broken(&self, why: &str) -> StorageError {
        StorageError::Unavailable {
            backend: self.backend.clone(),
            op: "any operation".into(),
            source: format!("a failed transaction could not be undone ({why}); restart the daemon to undo it from the journal").into(),
        }
    }

    fn range(&self, prefix: &str) -> Result<Vec<Entry>, StorageError> {
        // Holding the writer lock makes the read one point in time.
        let w = self.writer();
        if let Some(b) = &w.broken {
            return Err(self.broken(b));
        }
        let mut out = Vec::new();
        for key in self.keys()?.into_iter().filter(|k| k.starts_with(prefix)) {
            // A key listed a moment ago cannot vanish: writes wait for this lock.
            if let Some(r) = self.read(&key)? {
                out.push(Entry {
                    key,
                    value: r.value,
                    revision: r.revision,
                });
            }
        }
        Ok(out)
    }

    /// Checks and applies `ops` as one transaction; returns its revision and whether each key
    /// existed before.
    fn commit(&self, ops: Vec<Op>) -> Result<(Revision, Vec<bool>), StorageError> {
        validate_ops(&ops)?;
        let mut w = self.writer();
        if let Some(b) = &w.broken {
            return Err(self.broken(b));
        }
        let mut undo = Vec::with_capacity(ops.len());
        for op in &ops {
            let old = self.read(op.key())?;
            let current = old.as_ref().map_or(0, |r| r.revision);
            if !op.expect().met_by(current) {
                return Err(op.expect().conflict(op.key(), current));
            }
            undo.push(Undo {
                key: op.key().to_string(),
                old,
            });
        }
        let revision = w.revision + 1;
        let journaled = ops.len() > 1;
        if journaled {
            self.replace_file(
                &self.journal_path(),
                &[&encode_journal(&undo)],
                "the transaction journal",
            )?;
        }
        let mut applied = 0;
        let mut result = Ok(());
        for op in &ops {
            let r = match op {
                Op::Put { key, value, .. } => self.write_record(key, value, revision),
                Op::Delete { key, .. } => self.remove_record(key),
            };
            if let Err(e) = r {
                result = Err(e);
                break;
            }
            applied += 1;
            if journaled {
                crate::fault::point("storage:txn-applied-one");
            }
        }
        if let Err(e) = result {
            // Put back what was applied; the journal is removed only when that worked.
            let undone = undo[..applied]
                .iter()
                .try_for_each(|u| self.set(&u.key, u.old.as_ref()));
            let cleared = undone.and_then(|()| {
                if journaled {
                    self.remove_journal()?;
                }
                Ok(())
            });
            if let Err(u) = cleared {
                tracing::error!(error = %u, "storage: a failed transaction could not be undone");
                w.broken = Some(u.to_string());
            }
            return Err(e);
        }
        if journaled {
            self.remove_journal()
                .inspect_err(|e| w.broken = Some(e.to_string()))?;
        }
        w.revision = revision;
        let existed = undo.iter().map(|u| u.old.is_some()).collect();
        for op in ops {
            self.feed.send(match op {
                Op::Put { key, value, .. } => Change {
                    key,
                    revision,
                    value: Some(value),
                },
                Op::Delete { key, .. } => Change {
                    key,
                    revision,
                    value: None,
                },
            });
        }
        Ok((revision, existed))
    }
}

/// Reads one record of the storage directory `root` without taking its lock: for inspection tools
/// and tests. Safe while a daemon writes (records are replaced by rename); never writes.
pub fn inspect(root: &Path, key: &str) -> Result<Option<Record>, StorageError> {
    read_record(
        &root.join("data"),
        &format!("file storage {}", root.display()),
        key,
    )
}

/// The record `key` under the data directory `data` (`backend` names the store in errors).
fn read_record(data: &Path, backend: &str, key: &str) -> Result<Option<Record>, StorageError> {
    validate_key(key)?;
    let path = data.join(key);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StorageError::Unavailable {
                backend: backend.to_string(),
                op: format!("reading {key}"),
                source: Box::new(e),
            });
        }
    };
    decode_record(&bytes)
        .map(Some)
        .map_err(|reason| StorageError::Corrupt {
            key: key.to_string(),
            reason: format!("{reason} ({})", path.display()),
        })
}

fn decode_record(bytes: &[u8]) -> Result<Record, &'static str> {
    if bytes.len() < 12 {
        return Err("shorter than its header");
    }
    let (head, value) = bytes.split_at(12);
    if &head[..4] != MAGIC {
        return Err("bad magic");
    }
    let mut rev = [0u8; 8];
    rev.copy_from_slice(&head[4..12]);
    Ok(Record {
        value: value.to_vec(),
        revision: u64::from_be_bytes(rev),
    })
}

/// `SKJ1`, then per record: key length (u16 BE), key, 0 (absent) or 1 + revision (u64 BE) + value
/// length (u32 BE) + value; then the SHA-256 of everything before it.
fn encode_journal(undo: &[Undo]) -> Vec<u8> {
    let mut out = JOURNAL_MAGIC.to_vec();
    for u in undo {
        out.extend_from_slice(&(u.key.len() as u16).to_be_bytes());
        out.extend_from_slice(u.key.as_bytes());
        match &u.old {
            None => out.push(0),
            Some(r) => {
                out.push(1);
                out.extend_from_slice(&r.revision.to_be_bytes());
                out.extend_from_slice(&(r.value.len() as u32).to_be_bytes());
                out.extend_from_slice(&r.value);
            }
        }
    }
    let sum = crate::crypto::sha256(&out);
    out.extend_from_slice(&sum);
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("truncated");
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
}

fn decode_journal(bytes: &[u8]) -> Result<Vec<Undo>, &'static str> {
    if bytes.len() < 4 + 32 || &bytes[..4] != JOURNAL_MAGIC {
        return Err("bad header");
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if crate::crypto::sha256(body).as_slice() != sum {
        return Err("checksum mismatch");
    }
    let mut r = Reader(&body[4..]);
    let mut out = Vec::new();
    while !r.0.is_empty() {
        let len = r.take(2)?;
        let len = u16::from_be_bytes([len[0], len[1]]) as usize;
        let key = String::from_utf8(r.take(len)?.to_vec()).map_err(|_| "key not UTF-8")?;
        validate_key(&key).map_err(|_| "invalid key")?;
        let old = match r.take(1)?[0] {
            0 => None,
            1 => {
                let mut rev = [0u8; 8];
                rev.copy_from_slice(r.take(8)?);
                let mut n = [0u8; 4];
                n.copy_from_slice(r.take(4)?);
                let value = r.take(u32::from_be_bytes(n) as usize)?.to_vec();
                Some(Record {
                    value,
                    revision: u64::from_be_bytes(rev),
                })
            }
            _ => return Err("bad record marker"),
        };
        out.push(Undo { key, old });
    }
    Ok(out)
}

#[async_trait::async_trait]
impl Storage for FileStorage {
    async fn get(&self, key: &str) -> Result<Option<Record>, StorageError> {
        let key = key.to_string();
        self.blocking(move |s| s.get(&key)).await
    }

    async fn put(&self, key: &str, value: &[u8], expect: Expect) -> Result<Revision, StorageError> {
        let op = Op::put(key, value.to_vec(), expect);
        self.blocking(move |s| s.commit(vec![op]))
            .await
            .map(|r| r.0)
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<bool, StorageError> {
        let op = Op::delete(key, expect);
        self.blocking(move |s| s.commit(vec![op]))
            .await
            .map(|(_, existed)| existed.first().copied().unwrap_or(false))
    }

    async fn range(&self, prefix: &str) -> Result<Vec<Entry>, StorageError> {
        let prefix = prefix.to_string();
        self.blocking(move |s| s.range(&prefix)).await
    }

    async fn txn(&self, ops: Vec<Op>) -> Result<Revision, StorageError> {
        self.blocking(move |s| s.commit(ops)).await.map(|r| r.0)
    }

    fn watch(&self, prefix: &str) -> Watch {
        self.inner.feed.watch(prefix)
    }

    fn kind(&self) -> &'static str {
        "file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::open(dir.path()).unwrap();
        super::super::conformance::run(&s).await;
    }

    #[tokio::test]
    async fn bad_keys_and_corrupt_records_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::open(dir.path()).unwrap();
        fs::write(dir.path().join("data/bad"), b"junk").unwrap();
        assert!(matches!(
            s.get("bad").await,
            Err(StorageError::Corrupt { .. })
        ));
    }

    #[test]
    fn second_open_is_refused_while_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _a = FileStorage::open(dir.path()).unwrap();
        assert!(matches!(
            FileStorage::open(dir.path()),
            Err(StorageError::Locked(_))
        ));
    }

    #[tokio::test]
    async fn revisions_continue_above_the_stored_ones_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::open(dir.path()).unwrap();
        s.put("a", b"1", Expect::Any).await.unwrap();
        let r = s.put("b", b"1", Expect::Any).await.unwrap();
        drop(s);
        let s = FileStorage::open(dir.path()).unwrap();
        assert!(s.put("a", b"2", Expect::Any).await.unwrap() > r);
    }

    /// A crash between a transaction's records (simulated: the journal and one applied record are
    /// left behind) is undone at the next open.
    #[tokio::test]
    async fn an_interrupted_transaction_is_undone_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::open(dir.path()).unwrap();
        let r1 = s.put("core/a", b"old-a", Expect::Absent).await.unwrap();
        // What commit() writes for a txn putting core/a and core/b, stopped after core/a.
        let undo = vec![
            Undo {
                key: "core/a".into(),
                old: Some(Record {
                    value: b"old-a".to_vec(),
                    revision: r1,
                }),
            },
            Undo {
                key: "core/b".into(),
                old: None,
            },
        ];
        fs::write(dir.path().join(JOURNAL), encode_journal(&undo)).unwrap();
        s.inner.write_record("core/a", b"new-a", r1 + 1).unwrap();
        drop(s);

        let s = FileStorage::open(dir.path()).unwrap();
        assert_eq!(
            s.get("core/a").await.unwrap(),
            Some(Record {
                value: b"old-a".to_vec(),
                revision: r1
            })
        );
        assert_eq!(s.get("core/b").await.unwrap(), None);
        assert!(!dir.path().join(JOURNAL).exists());

        // A damaged journal is refused by name rather than half-applied.
        drop(s);
        let mut j = encode_journal(&undo);
        j[6] ^= 1;
        fs::write(dir.path().join(JOURNAL), j).unwrap();
        let e = FileStorage::open(dir.path()).err().unwrap().to_string();
        assert!(
            e.contains("transaction journal") && e.contains("damaged"),
            "{e}"
        );
    }

    /// A transaction whose second record cannot be written leaves the first as it was, and the
    /// store keeps working.
    #[tokio::test]
    async fn a_failed_transaction_is_rolled_back_in_process() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::open(dir.path()).unwrap();
        s.put("x/a", b"old", Expect::Absent).await.unwrap();
        // "y" is a regular file, so "y/b" cannot be created under it.
        fs::write(dir.path().join("data/y"), b"SKR1\0\0\0\0\0\0\0\x01").unwrap();
        let e = s
            .txn(vec![
                Op::put("x/a", b"new".to_vec(), Expect::Any),
                Op::put("y/b", b"new".to_vec(), Expect::Any),
            ])
            .await
            .unwrap_err();
        assert!(matches!(e, StorageError::Unavailable { .. }), "{e}");
        assert_eq!(s.get("x/a").await.unwrap().unwrap().value, b"old");
        assert!(!dir.path().join(JOURNAL).exists());
        s.put("x/c", b"fine", Expect::Absent).await.unwrap();
    }
}
