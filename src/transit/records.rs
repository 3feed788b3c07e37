//! Records encrypted under the keyring: `term (4 bytes, big endian) || nonce || ciphertext || tag`,
//! AES-256-GCM with the record's storage path and the term bound as associated data, so that a
//! record copied to another path, or to another installation, does not decrypt.

use std::sync::Arc;

use crate::core::UnsealedKeys;
use crate::crypto::{self, KEY_LEN};
use crate::secret::{LockedBytes, MemoryPolicy};

use super::{Result, TransitError};

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
        self.keys.latest_term().ok_or_else(|| TransitError::Record {
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

    pub fn open(&self, path: &str, data: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>> {
        let invalid = |reason: String| TransitError::Record {
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
        let first = self.keys.first_term().ok_or_else(|| TransitError::Record {
            path: "core/keyring".into(),
            reason: "the keyring is empty".into(),
        })?;
        let mut out = LockedBytes::zeroed(KEY_LEN, memory)?;
        crypto::hkdf_sha256(b"sealkeeper", first.as_slice(), info, out.as_mut_slice())?;
        Ok(out)
    }
}
