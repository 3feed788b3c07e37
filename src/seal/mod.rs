//! Seals: what wraps the root key. A [`Seal`] is small on purpose: wrap, unwrap, random bytes and
//! health. Its calls block (PKCS#11 does, cloud SDK calls are made blocking), so async callers run
//! them on a blocking thread. Nothing here knows a backend: errors ([`SealError`], [`Failure`]),
//! health ([`SealHealth`], [`MemberHealth`]) and the blob header are neutral, and each backend adds
//! its own detail.
//!
//! A [`WrappedBlob`] is self-describing and versioned: a common header (format version, purpose,
//! installation, seal name and type, the associated data it is bound to, who wrapped it and when)
//! and the seal type's own parameters (PKCS#11: key label and id, mechanism, IV, ciphertext), which
//! only that seal reads. A blob from another installation, seal or purpose is refused before any
//! HSM or KMS is asked, and the key identity lets a later rotation find the key that wrapped it.

#[cfg(feature = "awskms")]
pub mod awskms;
#[cfg(feature = "azurekeyvault")]
pub mod azurekeyvault;
#[cfg(any(feature = "awskms", feature = "azurekeyvault", feature = "gcpckms"))]
pub mod cloud;
#[cfg(feature = "gcpckms")]
pub mod gcpckms;
pub mod pkcs11;
pub mod registry;
#[cfg(test)]
pub mod test;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

pub const BLOB_FORMAT: u32 = 1;
/// The version of the associated-data scheme (`sealkeeper/v1/...`).
const AAD_VERSION: u32 = 1;

/// Who is asking: the automatic retry loop honours the bad-PIN latch; an operator's explicit
/// `operator unseal` may try a rejected PIN once more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Automatic,
    Operator,
}

/// A wrapped root key. The header is common to every seal type; `params` are the seal type's own
/// fields, stored next to the header's in one JSON object (so a format-1 blob, written before the
/// split, reads unchanged). Only the seal of `seal_type` reads `params`, with its own struct that
/// refuses unknown fields ([`WrappedBlob::params_as`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WrappedBlob {
    pub format: u32,
    pub purpose: String,
    pub installation_id: String,
    pub seal_name: String,
    pub seal_type: String,
    /// The associated data the ciphertext is bound to.
    pub aad: String,
    /// The member (HSM, region, vault) that wrapped it.
    pub wrapped_by: String,
    pub created_unix: u64,
    #[serde(flatten)]
    pub params: Map<String, Value>,
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
        "sealkeeper/v{AAD_VERSION}/{}/installation={}/seal={}:{}",
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

    /// A blob of `seal_type` with its parameters (any struct that serializes to an object).
    pub fn new(
        ctx: &BlobContext,
        seal_type: &str,
        seal_name: &str,
        wrapped_by: &str,
        params: impl Serialize,
    ) -> Result<WrappedBlob, BlobError> {
        let params = match serde_json::to_value(params) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(BlobError::Malformed("parameters are not an object".into())),
            Err(e) => return Err(BlobError::Malformed(e.to_string())),
        };
        Ok(WrappedBlob {
            format: BLOB_FORMAT,
            purpose: ctx.purpose.clone(),
            installation_id: ctx.installation_id.clone(),
            seal_name: seal_name.to_string(),
            seal_type: seal_type.to_string(),
            aad: associated_data(ctx, seal_type, seal_name),
            wrapped_by: wrapped_by.to_string(),
            created_unix: crate::clock::now_unix(),
            params,
        })
    }

    /// The seal type's parameters as its own struct (which should refuse unknown fields: a
    /// modified or foreign blob is then refused by name).
    pub fn params_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, BlobError> {
        serde_json::from_value(Value::Object(self.params.clone()))
            .map_err(|e| BlobError::Malformed(e.to_string()))
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

/// A member's state, as `operator status` and `/v1/sys/hsm-status` show it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// Not contacted yet.
    Unknown,
    Healthy,
    /// Unreachable or failing.
    Down,
    /// Its credentials (a PIN) were rejected: not tried again until they change.
    PinRejected,
    /// A call did not return within the member's timeout.
    Hung,
    /// A KMS refused the credentials or their permissions: needs an operator.
    Denied,
    /// The key is disabled, pending deletion, missing or unavailable: needs an operator.
    KeyUnavailable,
    /// A KMS answered with a rate limit (retried with backoff).
    Throttled,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Unknown => "unknown",
            MemberState::Healthy => "healthy",
            MemberState::Down => "down",
            MemberState::PinRejected => "pin_rejected",
            MemberState::Hung => "hung",
            MemberState::Denied => "denied",
            MemberState::KeyUnavailable => "key_unavailable",
            MemberState::Throttled => "throttled",
        }
    }
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One member's health (an HSM of a pair; a KMS region or endpoint).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberHealth {
    pub name: String,
    pub state: MemberState,
    pub healthy: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checked_unix: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_since_unix: Option<u64>,
    /// What the backend adds (PKCS#11: `token`, `lib`), as fields of the same document.
    #[serde(flatten)]
    pub detail: BTreeMap<String, Value>,
}

/// A seal's health: healthy when any member is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SealHealth {
    pub name: String,
    #[serde(rename = "type")]
    pub seal_type: String,
    pub healthy: bool,
    pub members: Vec<MemberHealth>,
    /// What the backend adds (PKCS#11: `key_label`, `mechanism`), as fields of the same document.
    #[serde(flatten)]
    pub detail: BTreeMap<String, Value>,
}

impl MemberHealth {
    /// A detail field as text ("" when absent).
    pub fn detail_str(&self, key: &str) -> &str {
        self.detail.get(key).and_then(Value::as_str).unwrap_or("")
    }
}

/// One member's pairwise round trip.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberSelfTest {
    pub member: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long the round trip took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed_ms: Option<u64>,
}

/// Result of a successful unwrap: the plaintext (zeroized on drop) and who produced it.
pub struct Unwrapped {
    pub plaintext: Zeroizing<Vec<u8>>,
    pub member: String,
}

/// How a member failed, in words every backend shares: what decides whether a retry can help and
/// how the failure is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Not reachable, not answering, or failing (a down HSM, a KMS 5xx, a lost session).
    Unreachable,
    /// The call did not return in time (the member is marked hung or down).
    Timeout,
    /// Credentials refused or lacking permission (a PIN, an IAM policy): needs an operator.
    Denied,
    /// The key is missing, disabled or pending deletion: needs an operator.
    KeyUnavailable,
    /// The member answered and refused the ciphertext: modified data, or another key.
    Authentication,
    /// The seal's configuration cannot work (a mechanism the token lacks, a malformed key id).
    InvalidConfig,
    /// This host ran out of something (descriptors, memory): says nothing about the member.
    LocalResource,
    Other,
}

/// One member's failure: who, how, and the backend's own error (a CKR code and the function that
/// returned it, a cloud error code) as the typed source.
#[derive(Debug, Clone)]
pub struct Failure {
    pub member: String,
    pub kind: FailureKind,
    pub source: Arc<dyn std::error::Error + Send + Sync>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.member, self.source)
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// Every member was tried and failed.
    #[error("seal {seal:?}: {summary}: {}", join_errors(.errors))]
    Members {
        seal: String,
        summary: &'static str,
        errors: Vec<Failure>,
    },
    #[error("seal {seal:?}: {message}")]
    Invalid { seal: String, message: String },
    #[error(transparent)]
    Crypto(#[from] crate::crypto::CryptoError),
}

fn join_errors(errors: &[Failure]) -> String {
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
                !errors.is_empty() && errors.iter().all(|e| e.kind == FailureKind::Authentication)
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
    fn status(&self) -> SealHealth;
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
    fn key_matches(&self, blob: &WrappedBlob) -> bool;
    /// The key that wrapped `blob`, as operators name it (a label and id, an ARN).
    fn key_name(&self, blob: &WrappedBlob) -> String;
}
