//! The core's public types: the configured seals as the core sees them, its options and its
//! errors.

use super::*;

/// What a configured seal is.
pub enum SealKind {
    /// An HSM (or KMS) seal: wraps the root key itself.
    Auto(Arc<dyn Seal>),
    /// Unseal keys typed by operators.
    Shamir,
}

/// One `[[seal]]` entry.
pub struct SealEntry {
    pub name: String,
    pub priority: u32,
    pub disabled: bool,
    pub fallback: bool,
    pub kind: SealKind,
}

impl SealEntry {
    pub fn seal_type(&self) -> &str {
        match &self.kind {
            SealKind::Auto(s) => s.seal_type(),
            SealKind::Shamir => "shamir",
        }
    }

    pub(super) fn auto(&self) -> Option<&Arc<dyn Seal>> {
        match &self.kind {
            SealKind::Auto(s) => Some(s),
            SealKind::Shamir => None,
        }
    }
}

/// Stands in for the primary seal of a core built without seals (the server never does that).
pub(super) static NO_SEAL: SealEntry = SealEntry {
    name: String::new(),
    priority: 0,
    disabled: false,
    fallback: false,
    kind: SealKind::Shamir,
};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    #[error("sealkeeper is already initialized")]
    AlreadyInitialized,
    #[error("sealkeeper is not initialized; run `sealkeeper operator init`")]
    NotInitialized,
    #[error("sealkeeper is sealed")]
    Sealed,
    #[error("{0}")]
    BadRequest(String),
    /// Waiting for operators: unseal keys (Shamir seal) or a migration quorum.
    #[error("{0}")]
    NeedsShares(String),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("{message}")]
    Seals { message: String, permanent: bool },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("stored state is invalid: {0}")]
    StoredState(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Transit(#[from] TransitError),
}

impl From<crypto::CryptoError> for CoreError {
    fn from(e: crypto::CryptoError) -> CoreError {
        CoreError::Seal(SealError::Crypto(e))
    }
}

impl CoreError {
    /// Retrying cannot help until an operator changes stored state, config or the host.
    pub fn is_permanent(&self) -> bool {
        match self {
            CoreError::Seal(e) => e.is_permanent(),
            CoreError::Seals { permanent, .. } => *permanent,
            CoreError::StoredState(_)
            | CoreError::Memory(_)
            | CoreError::NotInitialized
            | CoreError::NeedsShares(_) => true,
            CoreError::Transit(TransitError::Record { .. }) => true,
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CoreOptions {
    pub memory: MemoryPolicy,
    pub cluster_name: Option<String>,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub probe_interval: Duration,
    pub fips_mode: bool,
    /// This node's name among the nodes that share a store (`[cluster] node_name`).
    pub node_name: String,
    /// `[cluster] mode = "active-standby"`: the lease TTL of the leader record; `None` when
    /// every unsealed node is active.
    pub standby_lease: Option<Duration>,
    /// Results of the known-answer tests, once they ran (None before).
    pub self_tests: tokio::sync::watch::Receiver<Option<Vec<crate::crypto::SelfTest>>>,
}
