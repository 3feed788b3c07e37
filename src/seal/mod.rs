//! Seals: what wraps the root key. A [`Seal`] is small on purpose: wrap, unwrap, random bytes and
//! health. Its calls block (PKCS#11 does), so async callers run them on a blocking thread.
//!
//! A [`WrappedBlob`] is self-describing and versioned: format version, purpose, installation, seal
//! name and type, HSM key identity (label and id), mechanism, IV, ciphertext and the associated data
//! it is bound to. A blob from another installation, seal or purpose is refused before the HSM is
//! asked, and the key identity lets a later rotation find the key that wrapped it.

pub mod pkcs11;
pub mod registry;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub const BLOB_FORMAT: u32 = 1;

/// Who is asking: the automatic retry loop honours the bad-PIN latch; an operator's explicit
/// `operator unseal` may try a rejected PIN once more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Automatic,
    Operator,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WrappedBlob {
    pub format: u32,
    pub purpose: String,
    pub installation_id: String,
    pub seal_name: String,
    pub seal_type: String,
    pub key_label: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    pub mechanism: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oaep_hash: Option<String>,
    /// base64: the GCM IV the HSM used (AES-GCM), or the software nonce (RSA-OAEP envelope).
    pub iv: String,
    /// base64: ciphertext with its 128-bit tag.
    pub ciphertext: String,
    /// base64: the RSA-OAEP-wrapped envelope key (RSA-OAEP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapped_key: Option<String>,
    /// The associated data the ciphertext is bound to.
    pub aad: String,
    pub wrapped_by: String,
    pub created_unix: u64,
}

/// What a blob must belong to.
#[derive(Debug, Clone)]
pub struct BlobContext {
    pub installation_id: String,
    pub purpose: String,
}

/// The associated data binding a blob to its installation, purpose and seal.
pub fn associated_data(ctx: &BlobContext, seal_type: &str, seal_name: &str) -> String {
    format!(
        "sealkeeper/v{BLOB_FORMAT}/{}/installation={}/seal={}:{}",
        ctx.purpose, ctx.installation_id, seal_type, seal_name
    )
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    #[error("stored blob is not valid: {0}")]
    Malformed(String),
    #[error("stored blob has format version {0}; this sealkeeper reads version {BLOB_FORMAT}")]
    Format(u32),
    #[error(
        "stored blob belongs to installation {found}, but this storage is installation {expected}: \
         it was copied from another installation"
    )]
    ForeignInstallation { found: String, expected: String },
    #[error("stored blob is for {found:?}, expected {expected:?}")]
    Purpose { found: String, expected: String },
    #[error(
        "stored blob was wrapped by seal {found_type}:{found:?}, but the configured seal is {expected_type}:{expected:?}"
    )]
    ForeignSeal {
        found: String,
        found_type: String,
        expected: String,
        expected_type: String,
    },
    #[error("stored blob's associated data does not match its header: the blob was modified")]
    AssociatedData,
}

impl WrappedBlob {
    pub fn from_json(bytes: &[u8]) -> Result<WrappedBlob, BlobError> {
        serde_json::from_slice(bytes).map_err(|e| BlobError::Malformed(e.to_string()))
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serialising a struct of strings and integers cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Checks that the blob belongs to `ctx` and to the seal `seal_type:seal_name`, before any HSM
    /// is asked to decrypt it.
    pub fn check(
        &self,
        ctx: &BlobContext,
        seal_type: &str,
        seal_name: &str,
    ) -> Result<(), BlobError> {
        if self.format != BLOB_FORMAT {
            return Err(BlobError::Format(self.format));
        }
        if self.installation_id != ctx.installation_id {
            return Err(BlobError::ForeignInstallation {
                found: self.installation_id.clone(),
                expected: ctx.installation_id.clone(),
            });
        }
        if self.purpose != ctx.purpose {
            return Err(BlobError::Purpose {
                found: self.purpose.clone(),
                expected: ctx.purpose.clone(),
            });
        }
        if self.seal_name != seal_name || self.seal_type != seal_type {
            return Err(BlobError::ForeignSeal {
                found: self.seal_name.clone(),
                found_type: self.seal_type.clone(),
                expected: seal_name.to_string(),
                expected_type: seal_type.to_string(),
            });
        }
        if self.aad != associated_data(ctx, seal_type, seal_name) {
            return Err(BlobError::AssociatedData);
        }
        Ok(())
    }
}

/// One HSM member's health, as shown by `operator status` and `/v1/sys/hsm-status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberStatus {
    pub name: String,
    /// "unknown" (not yet contacted), "healthy", "down", "pin_rejected" or "hung".
    pub state: String,
    pub healthy: bool,
    pub token: String,
    pub lib: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checked_unix: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_since_unix: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SealStatus {
    pub name: String,
    #[serde(rename = "type")]
    pub seal_type: String,
    pub key_label: String,
    pub mechanism: String,
    pub healthy: bool,
    pub members: Vec<MemberStatus>,
}

/// One member's pairwise round trip.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberSelfTest {
    pub member: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Result of a successful unwrap: the plaintext (zeroized on drop) and who produced it.
pub struct Unwrapped {
    pub plaintext: Zeroizing<Vec<u8>>,
    pub member: String,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("seal {seal:?}: {summary}: {}", join_errors(.errors))]
    Members {
        seal: String,
        summary: &'static str,
        errors: Vec<pkcs11::MemberError>,
    },
    #[error("seal {seal:?}: {message}")]
    Invalid { seal: String, message: String },
    #[error(transparent)]
    Crypto(#[from] crate::crypto::CryptoError),
}

fn join_errors(errors: &[pkcs11::MemberError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

impl SealError {
    /// True when every member refused the ciphertext itself (tampered data or another key), as
    /// opposed to being unreachable.
    pub fn is_authentication_failure(&self) -> bool {
        match self {
            SealError::Members { errors, .. } => {
                !errors.is_empty()
                    && errors
                        .iter()
                        .all(|e| e.error.kind == pkcs11::ErrorKind::Authentication)
            }
            SealError::Crypto(crate::crypto::CryptoError::Authentication) => true,
            _ => false,
        }
    }

    /// True when retrying cannot help until someone changes stored state or configuration.
    pub fn is_permanent(&self) -> bool {
        matches!(self, SealError::Blob(_) | SealError::Invalid { .. })
    }
}

pub trait Seal: Send + Sync {
    fn seal_type(&self) -> &'static str;
    fn name(&self) -> &str;
    /// Wraps `plaintext` for `ctx` with the first member that answers.
    fn wrap(&self, ctx: &BlobContext, plaintext: &[u8]) -> Result<WrappedBlob, SealError>;
    /// Unwraps with the first member that answers, in configuration order.
    fn unwrap(
        &self,
        ctx: &BlobContext,
        blob: &WrappedBlob,
        attempt: Attempt,
    ) -> Result<Unwrapped, SealError>;
    /// Random bytes from the HSM's generator.
    fn random(&self, len: usize) -> Result<Vec<u8>, SealError>;
    /// Current health of the seal and its members (no I/O).
    fn status(&self) -> SealStatus;
    /// Checks each member (a cheap call) and updates [`Seal::status`].
    fn probe(&self);
    /// Checks that every other reachable member unwraps `blob` to `expected`; returns the names of
    /// members that could not be reached. A member holding a different key is an error.
    fn verify_members(
        &self,
        ctx: &BlobContext,
        blob: &WrappedBlob,
        expected: &[u8],
    ) -> Result<Vec<String>, SealError>;
    /// A pairwise round trip (wrap, then unwrap, of random bytes) on each member.
    fn self_test(&self) -> Vec<MemberSelfTest>;
    /// Closes sessions and finalizes modules.
    fn shutdown(&self);
    /// Whether `blob` was wrapped by the key the configuration names (false after a key change,
    /// until a rewrap).
    fn key_matches(&self, blob: &WrappedBlob) -> bool {
        let _ = blob;
        true
    }
}
