//! The stored seal state: one record, `core/seal/state`, holding every wrapping of the root key, the
//! keyring encrypted under it, and the split key's parameters. Every seal-lifecycle operation
//! (init, rotate, rotate-root, rewrap, migrate, rekey, catch-up) builds the next version in memory
//! and commits it with one compare-and-swap write, so that a crash at any step leaves either the
//! old or the new state, never a mix.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{self, CryptoError, KEY_LEN};
use crate::seal::WrappedBlob;

pub const ROOT_STATE_KEY: &str = "core/seal/state";
pub const ROOT_STATE_FORMAT: u32 = 1;

/// What the Shamir-split key is for: the unseal keys of a Shamir seal, or the recovery keys of an
/// auto seal. A migration changes the role; the shares stay the same (as in Vault).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShareRole {
    Recovery,
    Unseal,
}

impl ShareRole {
    pub fn noun(self) -> &'static str {
        match self {
            ShareRole::Recovery => "recovery keys",
            ShareRole::Unseal => "unseal keys",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootState {
    pub format: u32,
    /// Incremented by every new root key (rotate-root).
    pub generation: u64,
    /// HMAC-SHA-256 of a fixed label under the root key: tells the current root key from a stale one.
    pub root_check: String,
    /// base64: the keyring, AES-256-GCM under the root key.
    pub keyring: String,
    pub shares: SharesState,
    /// Auto seals' wrappings of the root key, by seal name.
    #[serde(default)]
    pub wrappings: BTreeMap<String, SealWrapping>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharesState {
    pub role: ShareRole,
    pub shares: u32,
    pub threshold: u32,
    /// HMAC verifier of the split key (see `recovery::verifier`).
    pub verifier: String,
    /// The Shamir seal's name, when the shares are its unseal keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shamir_seal: Option<String>,
    /// The root key wrapped by the split key: a Shamir seal's wrapping, or the break-glass
    /// `recovery_keys_fallback` wrapping. Absent for plain recovery keys, which never unseal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapping: Option<SharesWrapping>,
    /// New shares handed out by a rekey, that take effect once a quorum of them was submitted
    /// back (`operator rekey --verify`). Until then the current shares stand, so a crash or a lost
    /// printout between the two never leaves an installation without working shares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingShares>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingShares {
    pub nonce: String,
    pub shares: u32,
    pub threshold: u32,
    pub verifier: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharesWrapping {
    pub generation: u64,
    /// base64: the root key under the split key.
    pub root: String,
    /// base64: the split key under the root key, so that a new root key can be wrapped by it while
    /// unsealed (rotate-root) without asking for the shares.
    pub key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealWrapping {
    /// The root key generation this blob wraps; older than the state's generation means stale.
    pub generation: u64,
    pub blob: WrappedBlob,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyringFile {
    pub format: u32,
    pub terms: Vec<KeyringTerm>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyringTerm {
    pub term: u32,
    pub key: String,
    pub created_unix: u64,
}

fn keyring_aad(installation_id: &str) -> String {
    format!("sealkeeper/v1/keyring/installation={installation_id}")
}

fn shares_root_aad(installation_id: &str, generation: u64) -> String {
    format!(
        "sealkeeper/v1/root-key/installation={installation_id}/seal=shares/generation={generation}"
    )
}

fn shares_key_aad(installation_id: &str, generation: u64) -> String {
    format!("sealkeeper/v1/shares-key/installation={installation_id}/generation={generation}")
}

fn root_check_message(installation_id: &str) -> String {
    format!("sealkeeper/v1/root-check/installation={installation_id}")
}

pub fn root_check(root: &[u8], installation_id: &str) -> String {
    hex::encode(crypto::hmac_sha256(
        root,
        root_check_message(installation_id).as_bytes(),
    ))
}

/// Whether `root` is the key `stored` (a [`root_check`]) was made with (constant time).
pub fn root_matches(root: &[u8], installation_id: &str, stored: &str) -> bool {
    hex::decode(stored)
        .map(|tag| {
            crypto::hmac_sha256_verify(root, root_check_message(installation_id).as_bytes(), &tag)
        })
        .unwrap_or(false)
}

pub fn seal_keyring(
    root: &[u8],
    installation_id: &str,
    keyring: &KeyringFile,
) -> Result<String, CryptoError> {
    let plain = Zeroizing::new(serde_json::to_vec(keyring).unwrap_or_default());
    let ct = crypto::seal(root, keyring_aad(installation_id).as_bytes(), &plain)?;
    Ok(B64.encode(ct))
}

pub fn open_keyring(
    root: &[u8],
    installation_id: &str,
    stored: &str,
) -> Result<KeyringFile, String> {
    let ct = B64
        .decode(stored)
        .map_err(|e| format!("the keyring is not valid base64: {e}"))?;
    let plain = Zeroizing::new(
        crypto::open(root, keyring_aad(installation_id).as_bytes(), &ct)
            .map_err(|e| format!("the root key does not open the keyring: {e}"))?,
    );
    serde_json::from_slice(&plain).map_err(|e| format!("keyring: {e}"))
}

/// Wraps `root` with the split key for `generation`.
pub fn wrap_with_shares_key(
    split_key: &[u8],
    root: &[u8],
    installation_id: &str,
    generation: u64,
) -> Result<SharesWrapping, CryptoError> {
    Ok(SharesWrapping {
        generation,
        root: B64.encode(crypto::seal(
            split_key,
            shares_root_aad(installation_id, generation).as_bytes(),
            root,
        )?),
        key: B64.encode(crypto::seal(
            root,
            shares_key_aad(installation_id, generation).as_bytes(),
            split_key,
        )?),
    })
}

fn decode_open(key: &[u8], aad: &str, b64: &str, what: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    let ct = B64
        .decode(b64)
        .map_err(|e| format!("{what} is not valid base64: {e}"))?;
    let pt =
        Zeroizing::new(crypto::open(key, aad.as_bytes(), &ct).map_err(|e| format!("{what}: {e}"))?);
    if pt.len() != KEY_LEN {
        return Err(format!(
            "{what} holds {} bytes, expected {KEY_LEN}",
            pt.len()
        ));
    }
    Ok(pt)
}

impl SharesWrapping {
    /// The root key, from the reconstructed split key.
    pub fn root_from_split_key(
        &self,
        split_key: &[u8],
        installation_id: &str,
    ) -> Result<Zeroizing<Vec<u8>>, String> {
        decode_open(
            split_key,
            &shares_root_aad(installation_id, self.generation),
            &self.root,
            "the root key wrapped by the split key",
        )
    }

    /// The split key, from the root key (while unsealed).
    pub fn split_key_from_root(
        &self,
        root: &[u8],
        installation_id: &str,
    ) -> Result<Zeroizing<Vec<u8>>, String> {
        decode_open(
            root,
            &shares_key_aad(installation_id, self.generation),
            &self.key,
            "the split key wrapped by the root key",
        )
    }
}

impl RootState {
    pub fn from_json(bytes: &[u8]) -> Result<RootState, String> {
        let s: RootState = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if s.format != ROOT_STATE_FORMAT {
            return Err(format!(
                "format version {}; this sealkeeper reads version {ROOT_STATE_FORMAT}",
                s.format
            ));
        }
        Ok(s)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Whether `seal` holds a wrapping of the current root key.
    pub fn is_current(&self, seal: &str) -> bool {
        self.wrappings
            .get(seal)
            .is_some_and(|w| w.generation == self.generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_wrapping_round_trips_and_binds_generation() {
        let root = [1u8; 32];
        let k = [2u8; 32];
        let w = wrap_with_shares_key(&k, &root, "inst", 3).unwrap();
        assert_eq!(&w.root_from_split_key(&k, "inst").unwrap()[..], &root);
        assert_eq!(&w.split_key_from_root(&root, "inst").unwrap()[..], &k);
        assert!(w.root_from_split_key(&[3u8; 32], "inst").is_err());
        assert!(w.root_from_split_key(&k, "other").is_err());
        let mut stale = w.clone();
        stale.generation = 4;
        assert!(stale.root_from_split_key(&k, "inst").is_err());
    }

    #[test]
    fn root_check_tells_keys_apart() {
        let c = root_check(&[5u8; 32], "inst");
        assert!(root_matches(&[5u8; 32], "inst", &c));
        assert!(!root_matches(&[6u8; 32], "inst", &c));
        assert!(!root_matches(&[5u8; 32], "inst2", &c));
        assert!(!root_matches(&[5u8; 32], "inst", "zz"));
    }
}
