//! Storage: a small key/value trait and its embedded, crash-safe file implementation.
//!
//! The trait is shaped so that a networked backend (etcd, for clusters of appliances) can implement
//! it later: get / put / delete / list under a prefix, and compare-and-swap on a revision. The file
//! backend writes each record to a temporary file, fsyncs it, renames it over the old one and fsyncs
//! the directory: after a crash a record is either the old or the new version, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A record's revision: 0 means "absent", every successful put increments it.
pub type Revision = u64;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("storage I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("invalid storage key {0:?}")]
    InvalidKey(String),
    #[error("record {key} changed concurrently (expected revision {expected}, found {found})")]
    Conflict {
        key: String,
        expected: Revision,
        found: Revision,
    },
    #[error("record {key} in {path} is corrupt: {reason}")]
    Corrupt {
        key: String,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "storage directory {0} is in use by another sealkeeper process (lock held on its LOCK file)"
    )]
    Locked(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub value: Vec<u8>,
    pub revision: Revision,
}

/// What a put expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Any,
    /// The record must not exist.
    Absent,
    /// The record must be at this revision.
    Revision(Revision),
}

pub trait Storage: Send + Sync {
    fn get(&self, key: &str) -> Result<Option<Record>, StorageError>;
    fn put(&self, key: &str, value: &[u8], expect: Expect) -> Result<Revision, StorageError>;
    fn delete(&self, key: &str) -> Result<(), StorageError>;
    /// Keys that start with `prefix`, sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError>;
    /// A short name for status output ("file", "etcd", ...).
    fn kind(&self) -> &'static str;
}

const MAGIC: &[u8; 4] = b"SKR1";

/// The embedded default: one file per record under `<path>/data/`, each `SKR1 || revision (8 bytes,
/// big endian) || value`.
pub struct FileStorage {
    root: PathBuf,
    data: PathBuf,
    write_lock: Mutex<()>,
    _lock_file: File,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn validate_key(key: &str) -> Result<(), StorageError> {
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

impl FileStorage {
    /// Opens (creating with mode 0700 if needed) the storage directory and takes an exclusive lock
    /// on it, so that two daemons can never write the same state.
    pub fn open(root: &Path) -> Result<FileStorage, StorageError> {
        let data = root.join("data");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&data)
            .map_err(io_err(&data))?;
        let lock_path = root.join("LOCK");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StorageError::Locked(root.to_path_buf()));
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }
        Ok(FileStorage {
            root: root.to_path_buf(),
            data,
            write_lock: Mutex::new(()),
            _lock_file: lock_file,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file that holds `key` (for operators and tests).
    pub fn path_of(&self, key: &str) -> Result<PathBuf, StorageError> {
        validate_key(key)?;
        Ok(self.data.join(key))
    }

    fn read(&self, key: &str) -> Result<Option<Record>, StorageError> {
        let path = self.path_of(key)?;
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let corrupt = |reason: &str| StorageError::Corrupt {
            key: key.to_string(),
            path: path.clone(),
            reason: reason.to_string(),
        };
        if bytes.len() < 12 {
            return Err(corrupt("shorter than its header"));
        }
        let (head, value) = bytes.split_at(12);
        if &head[..4] != MAGIC {
            return Err(corrupt("bad magic"));
        }
        let mut rev = [0u8; 8];
        rev.copy_from_slice(&head[4..12]);
        Ok(Some(Record {
            value: value.to_vec(),
            revision: u64::from_be_bytes(rev),
        }))
    }

    fn sync_dir(dir: &Path) -> Result<(), StorageError> {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))
    }
}

impl Storage for FileStorage {
    fn get(&self, key: &str) -> Result<Option<Record>, StorageError> {
        self.read(key)
    }

    fn put(&self, key: &str, value: &[u8], expect: Expect) -> Result<Revision, StorageError> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.path_of(key)?;
        let current = self.read(key)?.map(|r| r.revision).unwrap_or(0);
        match expect {
            Expect::Any => {}
            Expect::Absent if current == 0 => {}
            Expect::Revision(r) if r == current => {}
            Expect::Absent | Expect::Revision(_) => {
                let expected = if let Expect::Revision(r) = expect {
                    r
                } else {
                    0
                };
                return Err(StorageError::Conflict {
                    key: key.to_string(),
                    expected,
                    found: current,
                });
            }
        }
        let revision = current + 1;
        let dir = path.parent().unwrap_or(&self.data).to_path_buf();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(&dir))?;
        let mut suffix = [0u8; 8];
        crate::crypto::fill_random(&mut suffix).map_err(|e| StorageError::Io {
            path: dir.clone(),
            source: io::Error::other(e),
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
            f.write_all(MAGIC)?;
            f.write_all(&revision.to_be_bytes())?;
            f.write_all(value)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&path)(e));
        }
        Self::sync_dir(&dir)?;
        Ok(revision)
    }

    fn delete(&self, key: &str) -> Result<(), StorageError> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.path_of(key)?;
        match fs::remove_file(&path) {
            Ok(()) => Self::sync_dir(path.parent().unwrap_or(&self.data)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let mut out = Vec::new();
        let mut stack = vec![(self.data.clone(), String::new())];
        while let Some((dir, rel)) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&dir)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io_err(&dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let key = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                let ft = entry.file_type().map_err(io_err(&dir))?;
                if ft.is_dir() {
                    stack.push((entry.path(), key));
                } else if key.starts_with(prefix) {
                    out.push(key);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn kind(&self) -> &'static str {
        "file"
    }
}

/// Refuses a storage directory that others may write to.
pub fn check_directory_permissions(path: &Path) -> Result<(), String> {
    match fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o002 != 0 => Err(format!(
            "storage directory {} is world-writable (mode {:o}); chmod 0700 it",
            path.display(),
            m.permissions().mode() & 0o7777
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_cas_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::open(dir.path()).unwrap();
        assert_eq!(s.get("core/a").unwrap(), None);
        assert_eq!(s.put("core/a", b"one", Expect::Absent).unwrap(), 1);
        assert!(matches!(
            s.put("core/a", b"x", Expect::Absent),
            Err(StorageError::Conflict { .. })
        ));
        assert!(matches!(
            s.put("core/a", b"x", Expect::Revision(7)),
            Err(StorageError::Conflict { .. })
        ));
        assert_eq!(s.put("core/a", b"two", Expect::Revision(1)).unwrap(), 2);
        assert_eq!(
            s.get("core/a").unwrap(),
            Some(Record {
                value: b"two".to_vec(),
                revision: 2
            })
        );
        s.put("core/b", b"", Expect::Any).unwrap();
        s.put("other", b"", Expect::Any).unwrap();
        assert_eq!(s.list("core/").unwrap(), vec!["core/a", "core/b"]);
        s.delete("core/a").unwrap();
        s.delete("core/a").unwrap();
        assert_eq!(s.list("core/").unwrap(), vec!["core/b"]);
    }

    #[test]
    fn bad_keys_and_corrupt_records_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::open(dir.path()).unwrap();
        for k in ["", "../x", "a//b", ".hidden", "a/../b", "sp ace"] {
            assert!(matches!(s.get(k), Err(StorageError::InvalidKey(_))), "{k}");
        }
        fs::write(dir.path().join("data/bad"), b"junk").unwrap();
        assert!(matches!(s.get("bad"), Err(StorageError::Corrupt { .. })));
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
}
