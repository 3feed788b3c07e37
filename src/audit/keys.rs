//! The audit trail's own keys, derived from the keyring while unsealed, and its anchor record:
//! the HMAC key of the `hmac-sha256:` values in the trail, the chain key of each record's `mac`,
//! and `audit/anchor` (the newest keyed record, stored encrypted under the keyring like every
//! record). The audit module owns them; the core creates them at unseal and drops them at seal.

use std::sync::Arc;

use super::Anchor;
use crate::crypto;
use crate::keyring::{KeyringError, RecordCipher, UnsealedKeys};
use crate::secret::MemoryPolicy;
use crate::storage::{Expect, Storage, StorageError};

/// Where the audit trail's anchor is kept.
pub const ANCHOR_KEY: &str = "audit/anchor";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditKeyError {
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

pub struct AuditKeys {
    /// Both keys' precomputed HMAC states live in locked memory (no key setup per record).
    hmac_key: crypto::HmacKey,
    chain_mac: Arc<crypto::HmacKey>,
    cipher: RecordCipher,
    storage: Arc<dyn Storage>,
    /// Where the anchor is stored (`ANCHOR_KEY`, or one record per node on a shared store).
    anchor_key: String,
}

impl AuditKeys {
    /// The keys of this installation's trail (fixed derivations of the keyring's first term).
    pub fn derive(
        keys: Arc<UnsealedKeys>,
        storage: Arc<dyn Storage>,
        memory: MemoryPolicy,
        anchor_key: String,
    ) -> Result<AuditKeys, AuditKeyError> {
        let cipher = RecordCipher::new(keys);
        let hmac_key = cipher.derive_key(b"sealkeeper audit hmac v1", memory)?;
        let chain_key = cipher.derive_key(b"sealkeeper audit chain v1", memory)?;
        let memory_err = |e| AuditKeyError::Keyring(KeyringError::Memory(e));
        Ok(AuditKeys {
            hmac_key: crypto::HmacKey::new(hmac_key.as_slice(), memory).map_err(memory_err)?,
            chain_mac: Arc::new(
                crypto::HmacKey::new(chain_key.as_slice(), memory).map_err(memory_err)?,
            ),
            cipher,
            storage,
            anchor_key,
        })
    }

    /// `hmac-sha256:<hex>` of a value, as the audit trail writes values that must not appear in
    /// clear (Vault's convention); an operator holding a value checks it with `operator audit-hash`.
    pub fn hmac(&self, value: &[u8]) -> String {
        format!("hmac-sha256:{}", hex::encode(self.hmac_key.sign(value)))
    }

    /// The chain key (its HMAC state), for the audit writer (which keeps it until seal) and for
    /// verifying the trail against the anchor.
    pub fn chain_mac(&self) -> Arc<crypto::HmacKey> {
        self.chain_mac.clone()
    }

    /// The newest anchor (seq, hash and mac of a keyed record), if one was stored.
    pub async fn anchor(&self) -> Result<Option<Anchor>, AuditKeyError> {
        let Some(rec) = self.storage.get(&self.anchor_key).await? else {
            return Ok(None);
        };
        Ok(Some(self.cipher.open_json(&self.anchor_key, &rec.value)?))
    }

    /// Records `anchor` as the newest. Only this node's writer advances its anchor: no
    /// compare-and-swap needed.
    pub async fn store_anchor(&self, anchor: &Anchor) -> Result<(), AuditKeyError> {
        let sealed = self.cipher.seal_json(&self.anchor_key, anchor)?;
        self.storage
            .put(&self.anchor_key, &sealed, Expect::Any)
            .await?;
        Ok(())
    }
}
