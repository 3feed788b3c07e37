//! The JSON documents that the servers answer with and the CLI reads: one definition for both
//! sides. Nothing here has behaviour.

use serde::{Deserialize, Serialize};

use crate::seal::{MemberSelfTest, SealHealth};

#[derive(Debug, Clone, Serialize)]
pub struct InitResponse {
    pub keys: Vec<String>,
    pub keys_base64: Vec<String>,
    pub recovery_keys: Vec<String>,
    pub recovery_keys_base64: Vec<String>,
    pub recovery_shares: u32,
    pub recovery_threshold: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// One configured seal in `operator status`: health and which key wraps the root key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SealInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub seal_type: String,
    pub priority: u32,
    pub disabled: bool,
    pub healthy: bool,
    #[serde(default)]
    pub unhealthy_since_unix: Option<u64>,
    pub recovery_keys_fallback: bool,
    /// Whether this seal holds a wrapping of the current root key.
    pub wrapping_current: bool,
    #[serde(default)]
    pub wrapping_generation: Option<u64>,
    /// The HSM key that wraps the root key for this seal (label and id), and whether it is the key
    /// the configuration names (false until `operator rewrap` after a key_label change).
    #[serde(default)]
    pub wrapped_by_key: Option<String>,
    #[serde(default)]
    pub wrapped_by_configured_key: Option<bool>,
    #[serde(default)]
    pub wrapped_by_member: Option<String>,
    /// Each member's health (HSMs of a pair, KMS regions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<crate::seal::MemberHealth>,
    /// What the seal type adds (PKCS#11: `key_label`; awskms: `kms_key_id` and where each value
    /// came from: `kms_key_id_from`, `region_from`, `credentials_from`).
    #[serde(flatten)]
    pub detail: std::collections::BTreeMap<String, serde_json::Value>,
}

/// Everything `operator status` and `/v1/sys/hsm-status` report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub state: String,
    pub initialized: bool,
    pub sealed: bool,
    pub seal_type: String,
    /// The first enabled seal (by priority).
    pub seal: SealHealth,
    /// Every configured seal.
    #[serde(default)]
    pub seals: Vec<SealInfo>,
    /// Seals that do not hold a wrapping of the current root key yet.
    #[serde(default)]
    pub seals_missing_wrapping: Vec<String>,
    #[serde(default)]
    pub root_generation: Option<u64>,
    #[serde(default)]
    pub keyring_terms: Vec<u32>,
    #[serde(default)]
    pub migration: bool,
    /// The HSM member (or "unseal-keys", "fallback") that unsealed.
    #[serde(default)]
    pub unsealed_by: Option<String>,
    /// The seal that unsealed.
    #[serde(default)]
    pub unsealed_by_seal: Option<String>,
    #[serde(default)]
    pub unsealed_since_unix: Option<u64>,
    pub manually_sealed: bool,
    #[serde(default)]
    pub last_unseal_error: Option<String>,
    #[serde(default)]
    pub last_unseal_attempt_unix: Option<u64>,
    /// Unseal attempts completed since start (automatic and operator).
    #[serde(default)]
    pub unseal_attempts: u64,
    /// Health probe rounds completed since start.
    #[serde(default)]
    pub probe_rounds: u64,
    #[serde(default)]
    pub installation_id: Option<String>,
    pub recovery_shares: u32,
    pub recovery_threshold: u32,
    pub memory_locked: bool,
    /// Whether the process can dump core or be ptraced by its user (false once hardened).
    pub dumpable: bool,
    pub version: String,
    /// fips_mode from the config.
    #[serde(default)]
    pub fips_mode: bool,
    /// Whether AWS-LC's validated module is in use (built with the `fips` feature).
    #[serde(default)]
    pub fips_module: bool,
    /// Known-answer tests of the software algorithms, run at start.
    #[serde(default)]
    pub self_tests: Vec<crate::crypto::SelfTest>,
    /// Pairwise round trips with each HSM member at the last unseal (fips_mode).
    #[serde(default)]
    pub hsm_self_tests: Vec<MemberSelfTest>,
    /// The nodes sharing this node's store (etcd storage only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterView>,
    /// Whether a restart now would unseal, from the members' last probes (`restart.safe`).
    #[serde(default)]
    pub restart_safe: bool,
    /// Why, and which seal members a restart would rely on.
    #[serde(default)]
    pub restart: RestartSafety,
}

/// Would this node unseal if it restarted now? In `operator status` (from the last probes, no HSM
/// call) and from `operator preflight` (a trial unwrap of the stored root key, as a restart does).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RestartSafety {
    pub safe: bool,
    /// Why (or why not), in one sentence.
    pub reason: String,
    /// The seal members a restart would unseal with, as `seal/member`.
    #[serde(default)]
    pub relies_on: Vec<String>,
    /// `last-probe`: members of a seal that wraps the current root key answered within
    /// `within_seconds`; `trial-unwrap`: a seal unwrapped the stored root key just now.
    pub checked_by: String,
    /// How recent a probe counts (`last-probe`).
    #[serde(default)]
    pub within_seconds: u64,
}

/// The nodes that share a store, from the lease-backed registry (`nodes/<name>`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ClusterView {
    /// This node's name.
    pub node: String,
    pub nodes: Vec<NodeInfo>,
    /// When this node last read the registry.
    pub read_unix: u64,
    /// Why the last registry round failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `active-active` or `active-standby`.
    #[serde(default)]
    pub mode: String,
    /// active-standby: the leader as this node last saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

/// One node as it registered itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeInfo {
    pub name: String,
    /// Its public listener's address, as configured.
    pub address: String,
    /// `unsealed`, `sealed` or `uninitialized`.
    pub state: String,
    pub version: String,
    pub last_seen_unix: u64,
}

/// What `seal-status` shows of share submission.
#[derive(Debug, Clone, Default)]
pub struct ShareProgress {
    pub progress: usize,
    pub nonce: String,
    pub migration: bool,
    pub shamir: bool,
    pub threshold: u32,
    pub shares: u32,
}

/// `operator rekey` status and result.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RekeyStatus {
    pub started: bool,
    pub nonce: String,
    pub t: u32,
    pub n: u32,
    pub progress: usize,
    pub required: u32,
    pub new_shares: u32,
    pub new_threshold: u32,
    pub complete: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys_base64: Vec<String>,
    pub target: String,
    /// New shares were handed out and take effect once a quorum of them is submitted back.
    pub verification_required: bool,
    pub verification_nonce: String,
    pub verification_progress: usize,
    /// The new shares were verified and are now the installation's shares.
    pub verified: bool,
}

/// The last rewrap-style operation (rewrap, rotate-root, catch-up), for `sys/sealwrap/rewrap`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RewrapReport {
    pub operation: String,
    pub is_running: bool,
    pub processed: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub finished_unix: u64,
    pub seals: Vec<RewrapEntry>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RewrapEntry {
    pub seal: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
