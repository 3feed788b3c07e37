//! Transit: named AES-256-GCM keys with versions, the `vault:v<N>:` ciphertext format, tokens and
//! policies. Everything is stored only encrypted under the keyring ([`records`]), and held in
//! memory while unsealed; the request path never waits on the HSM or on a lock held across I/O.

mod cache;

use crate::clock::now_unix;
use crate::locks::{MutexExt, RwLockExt};
use cache::{CACHED, Cached, follow};
pub mod policy;
pub mod tokens;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock, Weak};

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
            tokens: tokens::TokenStore::new(token_key, memory)?,
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
        *t.watcher.lock_recover() = Some(task.abort_handle());
        Ok(t)
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
            .read_recover()
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
        if self.keys.read_recover().contains_key(name) {
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

    pub fn has_key(&self, name: &str) -> bool {
        self.keys.read_recover().contains_key(name)
    }

    pub fn list_keys(&self) -> Vec<String> {
        self.keys.read_recover().keys().cloned().collect()
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
            .read_recover()
            .get(name)
            .cloned()
            .ok_or_else(|| TransitError::NotFound(format!("policy {name:?} not found")))
    }

    pub fn list_policies(&self) -> Vec<String> {
        self.policies.read_recover().keys().cloned().collect()
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
    pub fn authenticate(&self, token: Option<&str>) -> Result<Arc<TokenRecord>> {
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
    ) -> Result<Arc<TokenRecord>> {
        let rec = self.authenticate(token)?;
        let policies = self.policies.read_recover();
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
mod tests;
