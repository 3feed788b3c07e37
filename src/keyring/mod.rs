//! The keys of an unsealed node and the record cipher built on them: a leaf that the core, transit
//! and auth use, and that uses nothing of theirs.
//!
//! Records encrypted under the keyring are `term (4 bytes, big endian) || nonce || ciphertext ||
//! tag`, AES-256-GCM with the record's storage path and the term bound as associated data, so that
//! a record copied to another path, or to another installation, does not decrypt.

use crate::locks::RwLockExt;
use std::sync::{Arc, RwLock};

use crate::crypto::{self, KEY_LEN};
use crate::secret::{LockedBytes, MemoryError, MemoryPolicy};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringError {
    #[error("stored record {path} is invalid: {reason}")]
    Record { path: String, reason: String },
    #[error("cannot lock memory for key material: {0}")]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Crypto(#[from] crypto::CryptoError),
}

type Result<T> = std::result::Result<T, KeyringError>;

/// Key material held while unsealed. Every buffer is locked and zeroized when its last reference
/// goes. Rotation replaces the root key and adds keyring terms in place.
pub struct UnsealedKeys {
    root: RwLock<Arc<LockedBytes>>,
    keyring: RwLock<Vec<(u32, Arc<LockedBytes>)>>,
}

impl UnsealedKeys {
    pub fn new(root: LockedBytes, keyring: Vec<(u32, LockedBytes)>) -> UnsealedKeys {
        Self::from_shared(
            root,
            keyring.into_iter().map(|(t, k)| (t, Arc::new(k))).collect(),
        )
    }

    pub fn from_shared(root: LockedBytes, keyring: Vec<(u32, Arc<LockedBytes>)>) -> UnsealedKeys {
        UnsealedKeys {
            root: RwLock::new(Arc::new(root)),
            keyring: RwLock::new(keyring),
        }
    }

    /// A new keyring term (after a rotation was stored).
    pub fn add_term(&self, term: u32, key: Arc<LockedBytes>) {
        self.keyring.write_recover().push((term, key));
    }

    /// The new root key (after a rotate-root was stored); the old one is zeroized when its last
    /// reference goes.
    pub fn replace_root(&self, root: LockedBytes) {
        *self.root.write_recover() = Arc::new(root);
    }

    pub fn root(&self) -> Arc<LockedBytes> {
        self.root.read_recover().clone()
    }

    pub fn latest_term(&self) -> Option<(u32, Arc<LockedBytes>)> {
        self.keyring
            .read_recover()
            .iter()
            .max_by_key(|(t, _)| *t)
            .cloned()
    }

    pub fn term(&self, term: u32) -> Option<Arc<LockedBytes>> {
        self.keyring
            .read_recover()
            .iter()
            .find(|(t, _)| *t == term)
            .map(|(_, k)| k.clone())
    }

    pub fn first_term(&self) -> Option<Arc<LockedBytes>> {
        self.keyring
            .read_recover()
            .iter()
            .min_by_key(|(t, _)| *t)
            .map(|(_, k)| k.clone())
    }

    pub fn terms(&self) -> Vec<u32> {
        let mut t: Vec<u32> = self
            .keyring
            .read_recover()
            .iter()
            .map(|(t, _)| *t)
            .collect();
        t.sort_unstable();
        t
    }
}

pub struct RecordCipher {
    keys: Arc<UnsealedKeys>,
}

fn aad(path: &str, term: u32) -> Vec<u8> {
    format!("sealkeeper/v1/record/{path}/term={term}").into_bytes()
}

impl RecordCipher {
    pub fn new(keys: Arc<UnsealedKeys>) -> RecordCipher {
        RecordCipher { keys }
    }

    fn latest(&self) -> Result<(u32, Arc<LockedBytes>)> {
        self.keys.latest_term().ok_or_else(|| KeyringError::Record {
            path: "core/keyring".into(),
            reason: "the keyring is empty".into(),
        })
    }

    pub fn seal(&self, path: &str, plaintext: &[u8]) -> Result<Vec<u8>> {
        let (term, key) = self.latest()?;
        let mut out = term.to_be_bytes().to_vec();
        out.extend_from_slice(&crypto::seal(key.as_slice(), &aad(path, term), plaintext)?);
        Ok(out)
    }

    /// `value` as JSON, sealed for `path` (the JSON is wiped once sealed).
    pub fn seal_json<T: serde::Serialize>(&self, path: &str, value: &T) -> Result<Vec<u8>> {
        let plain = zeroize::Zeroizing::new(serde_json::to_vec(value).map_err(|e| {
            KeyringError::Record {
                path: path.into(),
                reason: e.to_string(),
            }
        })?);
        self.seal(path, &plain)
    }

    /// The JSON record sealed for `path`, opened and parsed.
    pub fn open_json<T: serde::de::DeserializeOwned>(&self, path: &str, data: &[u8]) -> Result<T> {
        let plain = self.open(path, data)?;
        serde_json::from_slice(&plain).map_err(|e| KeyringError::Record {
            path: path.into(),
            reason: e.to_string(),
        })
    }

    pub fn open(&self, path: &str, data: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>> {
        let invalid = |reason: String| KeyringError::Record {
            path: path.into(),
            reason,
        };
        let (head, body) = data
            .split_at_checked(4)
            .ok_or_else(|| invalid("shorter than its header".into()))?;
        let mut t = [0u8; 4];
        t.copy_from_slice(head);
        let term = u32::from_be_bytes(t);
        let key = self
            .keys
            .term(term)
            .ok_or_else(|| invalid(format!("keyring term {term} is unknown")))?;
        crypto::open(key.as_slice(), &aad(path, term), body)
            .map(zeroize::Zeroizing::new)
            .map_err(|e| invalid(format!("{e}")))
    }

    /// A key derived from the first keyring term (HKDF-SHA-256), for a fixed purpose.
    pub fn derive_key(&self, info: &[u8], memory: MemoryPolicy) -> Result<LockedBytes> {
        let first = self.keys.first_term().ok_or_else(|| KeyringError::Record {
            path: "core/keyring".into(),
            reason: "the keyring is empty".into(),
        })?;
        let mut out = LockedBytes::zeroed(KEY_LEN, memory)?;
        crypto::hkdf_sha256(b"sealkeeper", first.as_slice(), info, out.as_mut_slice())?;
        Ok(out)
    }
}
