//! Transit: named AES-256-GCM keys with versions, the `vault:v<N>:` ciphertext format, tokens and
//! policies. Everything is stored only encrypted under the keyring ([`records`]), and held in
//! memory while unsealed; the request path never waits on the HSM or on a lock held across I/O.

pub mod policy;
pub mod tokens;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::crypto::{self, KEY_LEN};
use crate::keyring::{KeyringError, RecordCipher, UnsealedKeys};
use crate::secret::{LockedBytes, MemoryPolicy};
use crate::storage::{Expect, Revision, Storage, StorageError, Watch, WatchEvent};
pub use policy::{Capability, Policy, Rule};
pub use tokens::{TokenRecord, TokenRequest};

pub const KEY_TYPE: &str = "aes256-gcm96";
const KEY_PREFIX: &str = "transit/keys/";

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransitError {
    /// Bad input: answered 400.
    #[error("{0}")]
    BadRequest(String),
    /// Missing, invalid, expired or revoked token: 403 (and counted by the throttle).
    #[error("permission denied{}", if .0.is_empty() { String::new() } else { format!(": {}", .0) })]
    Forbidden(String),
    /// A valid token whose policies do not allow the operation on the key: 403.
    #[error("permission denied")]
    PolicyDenied { accessor: String },
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("stored record {path} is invalid: {reason}")]
    Record { path: String, reason: String },
    #[error("cannot lock memory for key material: {0}")]
    Memory(#[from] crate::secret::MemoryError),
    #[error(transparent)]
    Crypto(#[from] crypto::CryptoError),
}

pub type Result<T> = std::result::Result<T, TransitError>;

impl From<KeyringError> for TransitError {
    fn from(e: KeyringError) -> TransitError {
        match e {
            KeyringError::Record { path, reason } => TransitError::Record { path, reason },
            KeyringError::Memory(m) => TransitError::Memory(m),
            KeyringError::Crypto(c) => TransitError::Crypto(c),
        }
    }
}

fn bad(m: impl Into<String>) -> TransitError {
    TransitError::BadRequest(m.into())
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !name.starts_with('.')
}

/// One version of a key: its material in locked memory.
struct KeyVersion {
    key: LockedBytes,
    created_unix: u64,
}

/// A transit key as held in memory.
struct TransitKey {
    name: String,
    versions: BTreeMap<u32, KeyVersion>,
    latest: u32,
    min_decryption_version: u32,
    min_encryption_version: u32,
    deletion_allowed: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredVersion {
    key: String,
    created_unix: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredKey {
    name: String,
    #[serde(rename = "type")]
    key_type: String,
    versions: BTreeMap<u32, StoredVersion>,
    latest_version: u32,
    min_decryption_version: u32,
    min_encryption_version: u32,
    deletion_allowed: bool,
}

/// Optional settings of `keys/<name>/config`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub min_decryption_version: Option<u32>,
    pub min_encryption_version: Option<u32>,
    pub deletion_allowed: Option<bool>,
}

/// The parts of a `vault:v<N>:<base64>` ciphertext.
pub fn parse_ciphertext(ct: &str) -> Result<(u32, Vec<u8>)> {
    let parts: Vec<&str> = ct.split(':').collect();
    let [prefix, version, body] = parts.as_slice() else {
        return Err(bad(
            "invalid ciphertext: expected vault:v<version>:<base64>",
        ));
    };
    if *prefix != "vault" {
        return Err(bad("invalid ciphertext: it does not start with \"vault:\""));
    }
    // Canonical decimal only: no sign, no leading zero (what this server writes, and nothing else).
    let v: u32 = version
        .strip_prefix('v')
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !n.starts_with('0'))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| bad(format!("invalid ciphertext: bad version {version:?}")))?;
    let bytes = B64
        .decode(body)
        .map_err(|_| bad("invalid ciphertext: the body is not valid base64"))?;
    Ok((v, bytes))
}

/// The key version is bound into the authenticated data, so a version prefix cannot be swapped.
fn bound_aad(version: u32, associated_data: &[u8]) -> Vec<u8> {
    let mut aad = format!("vault:v{version}:").into_bytes();
    aad.extend_from_slice(associated_data);
    aad
}

pub fn decode_b64(field: &str, value: &str) -> Result<Zeroizing<Vec<u8>>> {
    B64.decode(value)
        .map(Zeroizing::new)
        .map_err(|_| bad(format!("{field} is not valid base64")))
}

/// All transit state of an unsealed node.
pub struct Transit {
    storage: Arc<dyn Storage>,
    cipher: RecordCipher,
    memory: MemoryPolicy,
    keys: RwLock<BTreeMap<String, Arc<TransitKey>>>,
    pub(crate) tokens: tokens::TokenStore,
    policies: RwLock<BTreeMap<String, Policy>>,
    /// Serializes this node's writes (create, rotate, config, tokens, policies). Writes by another
    /// process sharing the store are caught by compare-and-swap on the revisions below.
    write: tokio::sync::Mutex<()>,
    /// Per stored path: the revision of the newest change applied to the caches above, and whether
    /// the record exists after it (deletions are kept, so a late, older change is not re-applied).
    /// Changes are applied under this lock, so a check and its cache update are one step.
    revisions: Mutex<HashMap<String, (Revision, bool)>>,
    /// The task that applies the store's change feed; aborted when this state is dropped (sealed).
    watcher: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Transit {
    /// Loads every transit record, decrypting with the keyring, and keeps the in-memory state
    /// current from the store's change feed (opened before the first read, so nothing written in
    /// between is missed). A record that cannot be read at load is an error; one that arrives
    /// broken through the feed is logged and the state it would replace is kept.
    pub async fn load(
        storage: Arc<dyn Storage>,
        keys: Arc<UnsealedKeys>,
        memory: MemoryPolicy,
    ) -> Result<Arc<Transit>> {
        let cipher = RecordCipher::new(keys);
        let token_key = cipher.derive_key(b"sealkeeper token hash v1", memory)?;
        let feed = storage.watch("");
        let t = Transit {
            storage,
            cipher,
            memory,
            keys: RwLock::new(BTreeMap::new()),
            tokens: tokens::TokenStore::new(token_key),
            policies: RwLock::new(BTreeMap::new()),
            write: tokio::sync::Mutex::new(()),
            revisions: Mutex::new(HashMap::new()),
            watcher: Mutex::new(None),
        };
        for prefix in CACHED {
            for e in t.storage.range(prefix).await? {
                t.apply(&e.key, e.revision, Some(&e.value))?;
            }
        }
        let t = Arc::new(t);
        let task = tokio::spawn(follow(Arc::downgrade(&t), feed));
        *t.watcher.lock().unwrap_or_else(|p| p.into_inner()) = Some(task.abort_handle());
        Ok(t)
    }

    /// Decodes a stored record (or a deletion) into what the caches hold.
    fn decode(&self, path: &str, value: Option<&[u8]>) -> Result<Cached> {
        let Some(sealed) = value else {
            return Ok(Cached::Removed);
        };
        let plain = self.cipher.open(path, sealed)?;
        let invalid = |e: serde_json::Error| TransitError::Record {
            path: path.into(),
            reason: e.to_string(),
        };
        if path.starts_with(KEY_PREFIX) {
            let stored: StoredKey = serde_json::from_slice(&plain).map_err(invalid)?;
            Ok(Cached::Key(Arc::new(self.key_from_stored(stored, path)?)))
        } else if path.starts_with(policy::PREFIX) {
            Ok(Cached::Policy(
                serde_json::from_slice(&plain).map_err(invalid)?,
            ))
        } else {
            Ok(Cached::Token(
                serde_json::from_slice(&plain).map_err(invalid)?,
            ))
        }
    }

    /// Applies the change of `path` to revision `rev` (`None`: deleted) unless a newer one was
    /// applied already.
    fn apply(&self, path: &str, rev: Revision, value: Option<&[u8]>) -> Result<()> {
        if !CACHED.iter().any(|p| path.starts_with(p)) || !self.is_newer(path, rev) {
            return Ok(());
        }
        let item = self.decode(path, value)?;
        self.install(path, rev, item);
        Ok(())
    }

    fn is_newer(&self, path: &str, rev: Revision) -> bool {
        self.revisions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .is_none_or(|(seen, _)| *seen < rev)
    }

    /// Puts `item` in the caches as the state of `path` at `rev`, unless a newer change was
    /// applied meanwhile.
    fn install(&self, path: &str, rev: Revision, item: Cached) {
        let mut seen = self.revisions.lock().unwrap_or_else(|p| p.into_inner());
        if seen.get(path).is_some_and(|(r, _)| *r >= rev) {
            return;
        }
        seen.insert(path.to_string(), (rev, !matches!(item, Cached::Removed)));
        self.put_cached(path, item);
    }

    fn put_cached(&self, path: &str, item: Cached) {
        let name = CACHED
            .iter()
            .find_map(|p| path.strip_prefix(p))
            .unwrap_or(path)
            .to_string();
        match item {
            Cached::Key(k) => {
                self.keys
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name, k);
            }
            Cached::Policy(p) => {
                self.policies
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name, p);
            }
            Cached::Token(t) => self.tokens.insert(t),
            Cached::Removed if path.starts_with(KEY_PREFIX) => {
                self.keys
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&name);
            }
            Cached::Removed if path.starts_with(policy::PREFIX) => {
                self.policies
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&name);
            }
            Cached::Removed => self.tokens.remove_accessor(&name),
        }
    }

    /// What a write of `path` expects to find: the revision this node last saw, or nothing.
    fn expected(&self, path: &str) -> Expect {
        match self
            .revisions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
        {
            Some((rev, true)) => Expect::Revision(*rev),
            _ => Expect::Absent,
        }
    }

    /// Reads every cached prefix again (after the change feed lost changes): records that changed
    /// are applied, records that are gone are removed.
    async fn resync(&self) {
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
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|(p, (_, exists))| {
                    *exists && p.starts_with(prefix) && !present.contains(p.as_str())
                })
                .map(|(p, _)| p.clone())
                .collect();
            for p in gone {
                let mut seen = self.revisions.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(entry) = seen.get_mut(&p) {
                    entry.1 = false;
                }
                self.put_cached(&p, Cached::Removed);
            }
        }
    }

    /// Encrypts and stores `value` at `path` if the record is still as this node last saw it;
    /// returns the new revision.
    async fn write_json<T: Serialize>(&self, path: &str, value: &T) -> Result<Revision> {
        let plain =
            Zeroizing::new(serde_json::to_vec(value).map_err(|e| TransitError::Record {
                path: path.into(),
                reason: e.to_string(),
            })?);
        let sealed = self.cipher.seal(path, &plain)?;
        Ok(self.storage.put(path, &sealed, self.expected(path)).await?)
    }

    /// Deletes `path` if it is still as this node last saw it, and forgets it.
    async fn delete_record(&self, path: &str) -> Result<()> {
        self.storage.delete(path, self.expected(path)).await?;
        // A deletion's own revision is not reported; the feed's is higher than anything before.
        let rev = self
            .revisions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .map_or(0, |(r, _)| *r);
        self.revisions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_string(), (rev, false));
        self.put_cached(path, Cached::Removed);
        Ok(())
    }

    fn key_from_stored(&self, s: StoredKey, path: &str) -> Result<TransitKey> {
        let mut versions = BTreeMap::new();
        for (v, sv) in s.versions {
            let raw = decode_b64("key", &sv.key).map_err(|_| TransitError::Record {
                path: path.into(),
                reason: format!("version {v}: bad key"),
            })?;
            if raw.len() != KEY_LEN {
                return Err(TransitError::Record {
                    path: path.into(),
                    reason: format!("version {v}: wrong key length"),
                });
            }
            versions.insert(
                v,
                KeyVersion {
                    key: LockedBytes::from_slice(&raw, self.memory)?,
                    created_unix: sv.created_unix,
                },
            );
        }
        Ok(TransitKey {
            name: s.name,
            versions,
            latest: s.latest_version,
            min_decryption_version: s.min_decryption_version,
            min_encryption_version: s.min_encryption_version,
            deletion_allowed: s.deletion_allowed,
        })
    }

    async fn store_key(&self, k: &TransitKey) -> Result<Revision> {
        let stored = StoredKey {
            name: k.name.clone(),
            key_type: KEY_TYPE.into(),
            versions: k
                .versions
                .iter()
                .map(|(v, kv)| {
                    (
                        *v,
                        StoredVersion {
                            key: B64.encode(kv.key.as_slice()),
                            created_unix: kv.created_unix,
                        },
                    )
                })
                .collect(),
            latest_version: k.latest,
            min_decryption_version: k.min_decryption_version,
            min_encryption_version: k.min_encryption_version,
            deletion_allowed: k.deletion_allowed,
        };
        let result = self
            .write_json(&format!("{KEY_PREFIX}{}", k.name), &stored)
            .await;
        // The stored form held base64 key material in ordinary memory: wipe it.
        for (_, mut sv) in stored.versions {
            zeroize::Zeroize::zeroize(&mut sv.key);
        }
        result
    }

    fn key(&self, name: &str) -> Result<Arc<TransitKey>> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| bad(format!("encryption key {name:?} not found")))
    }

    fn new_version(&self) -> Result<KeyVersion> {
        let mut key = LockedBytes::zeroed(KEY_LEN, self.memory)?;
        crypto::fill_random(key.as_mut_slice())?;
        Ok(KeyVersion {
            key,
            created_unix: now_unix(),
        })
    }

    /// Clones a key's versions (material stays locked) so that a changed copy can be stored first
    /// and swapped in only once it is durable.
    fn copy_key(&self, k: &TransitKey) -> Result<TransitKey> {
        let mut versions = BTreeMap::new();
        for (v, kv) in &k.versions {
            versions.insert(
                *v,
                KeyVersion {
                    key: LockedBytes::from_slice(kv.key.as_slice(), self.memory)?,
                    created_unix: kv.created_unix,
                },
            );
        }
        Ok(TransitKey {
            name: k.name.clone(),
            versions,
            ..*k
        })
    }

    pub async fn create_key(&self, name: &str) -> Result<Value> {
        if !valid_name(name) {
            return Err(bad(format!(
                "invalid key name {name:?}: use 1-128 characters of a-z, A-Z, 0-9, '-', '_', '.'"
            )));
        }
        let _w = self.write.lock().await;
        if self
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(name)
        {
            return Err(bad(format!("key {name:?} already exists")));
        }
        let mut versions = BTreeMap::new();
        versions.insert(1, self.new_version()?);
        let key = TransitKey {
            name: name.into(),
            versions,
            latest: 1,
            min_decryption_version: 1,
            min_encryption_version: 0,
            deletion_allowed: false,
        };
        let rev = self.store_key(&key).await?;
        let meta = metadata(&key);
        self.install(
            &format!("{KEY_PREFIX}{name}"),
            rev,
            Cached::Key(Arc::new(key)),
        );
        tracing::info!(key = name, "transit key created");
        Ok(meta)
    }

    pub async fn rotate_key(&self, name: &str) -> Result<Value> {
        let _w = self.write.lock().await;
        let old = self.key(name)?;
        let mut k = self.copy_key(&old)?;
        k.latest += 1;
        k.versions.insert(k.latest, self.new_version()?);
        let rev = self.store_key(&k).await?;
        let meta = metadata(&k);
        tracing::info!(key = name, version = k.latest, "transit key rotated");
        self.install(
            &format!("{KEY_PREFIX}{name}"),
            rev,
            Cached::Key(Arc::new(k)),
        );
        Ok(meta)
    }

    pub async fn configure_key(&self, name: &str, cfg: &KeyConfig) -> Result<Value> {
        let _w = self.write.lock().await;
        let old = self.key(name)?;
        let mut k = self.copy_key(&old)?;
        if let Some(v) = cfg.min_decryption_version {
            if v == 0 || v > k.latest {
                return Err(bad(format!(
                    "min_decryption_version must be between 1 and the latest version {}",
                    k.latest
                )));
            }
            k.min_decryption_version = v;
        }
        if let Some(v) = cfg.min_encryption_version {
            if v > k.latest {
                return Err(bad(format!(
                    "min_encryption_version must be at most the latest version {}",
                    k.latest
                )));
            }
            k.min_encryption_version = v;
        }
        if k.min_encryption_version != 0 && k.min_encryption_version < k.min_decryption_version {
            return Err(bad(
                "min_encryption_version must not be below min_decryption_version",
            ));
        }
        if let Some(d) = cfg.deletion_allowed {
            k.deletion_allowed = d;
        }
        let rev = self.store_key(&k).await?;
        let meta = metadata(&k);
        tracing::info!(
            key = name,
            min_decryption_version = k.min_decryption_version,
            min_encryption_version = k.min_encryption_version,
            deletion_allowed = k.deletion_allowed,
            "transit key configured"
        );
        self.install(
            &format!("{KEY_PREFIX}{name}"),
            rev,
            Cached::Key(Arc::new(k)),
        );
        Ok(meta)
    }

    pub async fn delete_key(&self, name: &str) -> Result<()> {
        let _w = self.write.lock().await;
        let k = self.key(name)?;
        if !k.deletion_allowed {
            return Err(bad(format!(
                "deletion is not allowed for key {name:?}: set deletion_allowed first (`sealkeeper operator key config {name} --deletion-allowed true`)"
            )));
        }
        self.delete_record(&format!("{KEY_PREFIX}{name}")).await?;
        tracing::warn!(
            key = name,
            "transit key deleted: ciphertexts under it can no longer be decrypted"
        );
        Ok(())
    }

    pub fn list_keys(&self) -> Vec<String> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    pub fn key_metadata(&self, name: &str) -> Result<Value> {
        let k = self
            .key(name)
            .map_err(|_| TransitError::NotFound(format!("key {name:?} not found")))?;
        Ok(metadata(&k))
    }

    /// Encrypts with the given or latest version; returns (ciphertext, version).
    pub fn encrypt(
        &self,
        name: &str,
        plaintext: &[u8],
        associated_data: &[u8],
        version: Option<u32>,
    ) -> Result<(String, u32)> {
        let k = self.key(name)?;
        let v = match version {
            None | Some(0) => k.latest,
            Some(v) => v,
        };
        if k.min_encryption_version != 0 && v < k.min_encryption_version {
            return Err(bad(format!(
                "key version {v} is below the key's min_encryption_version {}",
                k.min_encryption_version
            )));
        }
        let kv = k
            .versions
            .get(&v)
            .ok_or_else(|| bad(format!("key {name:?} has no version {v}")))?;
        let ct = crypto::seal(kv.key.as_slice(), &bound_aad(v, associated_data), plaintext)?;
        Ok((format!("vault:v{v}:{}", B64.encode(ct)), v))
    }

    pub fn decrypt(
        &self,
        name: &str,
        ciphertext: &str,
        associated_data: &[u8],
    ) -> Result<(Zeroizing<Vec<u8>>, u32)> {
        let k = self.key(name)?;
        let (v, body) = parse_ciphertext(ciphertext)?;
        if v < k.min_decryption_version {
            return Err(bad(format!(
                "ciphertext version {v} is disallowed by policy: below the key's min_decryption_version {}",
                k.min_decryption_version
            )));
        }
        let kv = k
            .versions
            .get(&v)
            .ok_or_else(|| bad(format!("key {name:?} has no version {v}")))?;
        let pt = crypto::open(kv.key.as_slice(), &bound_aad(v, associated_data), &body).map_err(|e| match e {
            crypto::CryptoError::Authentication => {
                bad("cipher: message authentication failed (the ciphertext was modified, or the associated_data does not match)")
            }
            crypto::CryptoError::Truncated(_) => bad("invalid ciphertext: too short"),
            other => TransitError::Crypto(other),
        })?;
        Ok((Zeroizing::new(pt), v))
    }

    /// Decrypts and encrypts again under the given or latest version.
    pub fn rewrap(
        &self,
        name: &str,
        ciphertext: &str,
        associated_data: &[u8],
        version: Option<u32>,
    ) -> Result<(String, u32)> {
        let (pt, _) = self.decrypt(name, ciphertext, associated_data)?;
        self.encrypt(name, &pt, associated_data, version)
    }

    /// A new random data key, returned encrypted (and in plaintext when asked).
    pub fn datakey(
        &self,
        name: &str,
        bits: u32,
        associated_data: &[u8],
    ) -> Result<(Zeroizing<Vec<u8>>, String, u32)> {
        if ![128, 256, 512].contains(&bits) {
            return Err(bad(format!("bits must be 128, 256 or 512, not {bits}")));
        }
        let dk = Zeroizing::new(crypto::random_vec(bits as usize / 8)?);
        let (ct, v) = self.encrypt(name, &dk, associated_data, None)?;
        Ok((dk, ct, v))
    }

    // --- policies ---

    pub async fn write_policy(&self, p: Policy) -> Result<()> {
        p.validate().map_err(bad)?;
        let _w = self.write.lock().await;
        let path = format!("{}{}", policy::PREFIX, p.name);
        let rev = self.write_json(&path, &p).await?;
        tracing::info!(policy = %p.name, "policy written");
        self.install(&path, rev, Cached::Policy(p));
        Ok(())
    }

    pub fn policy(&self, name: &str) -> Result<Policy> {
        self.policies
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| TransitError::NotFound(format!("policy {name:?} not found")))
    }

    pub fn list_policies(&self) -> Vec<String> {
        self.policies
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    pub async fn delete_policy(&self, name: &str) -> Result<()> {
        let _w = self.write.lock().await;
        self.policy(name)?;
        self.delete_record(&format!("{}{name}", policy::PREFIX))
            .await?;
        tracing::info!(policy = name, "policy deleted");
        Ok(())
    }

    // --- tokens ---

    /// Creates a token; returns the record and the token itself, which is shown only now.
    pub async fn create_token(&self, req: &TokenRequest) -> Result<(TokenRecord, String)> {
        if req.policies.is_empty() {
            return Err(bad("a token needs at least one policy"));
        }
        for p in &req.policies {
            self.policy(p)
                .map_err(|_| bad(format!("policy {p:?} does not exist")))?;
        }
        let _w = self.write.lock().await;
        let (rec, token) = self.tokens.mint(req)?;
        let path = format!("{}{}", tokens::PREFIX, rec.accessor);
        let rev = self.write_json(&path, &rec).await?;
        self.install(&path, rev, Cached::Token(rec.clone()));
        tracing::info!(accessor = %rec.accessor, policies = ?rec.policies, period_secs = rec.period_secs, "token created");
        Ok((rec, token))
    }

    pub async fn revoke_accessor(&self, accessor: &str) -> Result<()> {
        let _w = self.write.lock().await;
        if !self.tokens.contains_accessor(accessor) {
            return Err(TransitError::NotFound(format!(
                "no token with accessor {accessor:?}"
            )));
        }
        self.delete_record(&format!("{}{accessor}", tokens::PREFIX))
            .await?;
        tracing::info!(accessor, "token revoked");
        Ok(())
    }

    pub fn list_tokens(&self) -> Vec<TokenRecord> {
        self.tokens.all()
    }

    /// The token's record, if it is valid now.
    pub fn authenticate(&self, token: Option<&str>) -> Result<TokenRecord> {
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| TransitError::Forbidden("missing client token".into()))?;
        let rec = self
            .tokens
            .lookup(token)
            .ok_or_else(|| TransitError::Forbidden("invalid token".into()))?;
        if rec.expire_unix.is_some_and(|e| e <= now_unix()) {
            return Err(TransitError::Forbidden("token expired".into()));
        }
        Ok(rec)
    }

    /// Checks, in one place, that the token may do `cap` on key `name`.
    pub fn authorize(
        &self,
        token: Option<&str>,
        name: &str,
        cap: Capability,
    ) -> Result<TokenRecord> {
        let rec = self.authenticate(token)?;
        let policies = self.policies.read().unwrap_or_else(|p| p.into_inner());
        let allowed = rec
            .policies
            .iter()
            .filter_map(|p| policies.get(p))
            .any(|p| p.allows(name, cap));
        if allowed {
            Ok(rec)
        } else {
            Err(TransitError::PolicyDenied {
                accessor: rec.accessor.clone(),
            })
        }
    }

    /// Renews the token: a periodic token's TTL is reset to its period.
    pub async fn renew(&self, token: Option<&str>, increment: Option<u64>) -> Result<TokenRecord> {
        let rec = self.authenticate(token)?;
        if !rec.renewable {
            return Err(bad("token is not renewable"));
        }
        let _w = self.write.lock().await;
        let renewed = tokens::renewed(&rec, increment, now_unix());
        let path = format!("{}{}", tokens::PREFIX, renewed.accessor);
        let rev = self.write_json(&path, &renewed).await?;
        self.install(&path, rev, Cached::Token(renewed.clone()));
        Ok(renewed)
    }
}

/// The prefixes whose records are held in memory.
const CACHED: [&str; 3] = [KEY_PREFIX, policy::PREFIX, tokens::PREFIX];

/// A record as the caches hold it.
enum Cached {
    Key(Arc<TransitKey>),
    Policy(Policy),
    Token(TokenRecord),
    Removed,
}

impl Drop for Transit {
    fn drop(&mut self) {
        if let Some(task) = self
            .watcher
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

/// Applies the store's change feed to `t` while it exists: changes written by another process that
/// shares the store reach this node's caches (this node's own writes are already there).
async fn follow(t: Weak<Transit>, mut feed: Watch) {
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

fn metadata(k: &TransitKey) -> Value {
    let keys: serde_json::Map<String, Value> = k
        .versions
        .iter()
        .map(|(v, kv)| (v.to_string(), json!(kv.created_unix)))
        .collect();
    json!({
        "name": k.name,
        "type": KEY_TYPE,
        "latest_version": k.latest,
        "min_decryption_version": k.min_decryption_version,
        "min_encryption_version": k.min_encryption_version,
        "min_available_version": 0,
        "keys": keys,
        "deletion_allowed": k.deletion_allowed,
        "exportable": false,
        "allow_plaintext_backup": false,
        "derived": false,
        "convergent_encryption": false,
        "supports_encryption": true,
        "supports_decryption": true,
        "supports_derivation": false,
        "supports_signing": false,
        "imported_key": false,
        "auto_rotate_period": 0,
    })
}

#[cfg(test)]
mod tests {
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
}
