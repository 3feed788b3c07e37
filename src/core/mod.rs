//! The state machine every front end calls into: Uninitialized -> Unsealed <-> Sealed, and the seal
//! lifecycle (several seals, Shamir unseal keys, rotation, rewrap, migration, recovery rekey).
//!
//! `Core` alone touches keys and storage. The HTTPS listener, the admin socket, signals and the
//! background tasks (auto-unseal retry, HSM health probe) only call its methods. The seal state is
//! one stored record (see [`state`]); every operation that changes it commits one new version with a
//! compare-and-swap write.

pub mod state;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use crate::api::{
    InitResponse, RekeyStatus, RewrapEntry, RewrapReport, SealInfo, ShareProgress, Status,
};
use crate::audit::{Audit, Event};
use crate::crypto::{self, KEY_LEN};
use crate::fault;
pub use crate::keyring::UnsealedKeys;
use crate::recovery::{self, Share};
use crate::seal::{Attempt, BlobContext, Seal, SealError, SealHealth, WrappedBlob};
use crate::secret::{LockedBytes, MemoryError, MemoryPolicy};
use crate::storage::{Expect, Op, Revision, Storage, StorageError};
use crate::transit::{Transit, TransitError};
use state::{
    KeyringFile, KeyringTerm, ROOT_STATE_FORMAT, ROOT_STATE_KEY, RootState, SealWrapping,
    ShareRole, SharesState,
};

pub const INIT_KEY: &str = "core/init";
const ROOT_PURPOSE: &str = "root-key";
const INIT_FORMAT: u32 = 2;

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The record whose presence means "initialized". Written last at init, never changed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitRecord {
    pub format: u32,
    pub installation_id: String,
    pub created_unix: u64,
}

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

    fn auto(&self) -> Option<&Arc<dyn Seal>> {
        match &self.kind {
            SealKind::Auto(s) => Some(s),
            SealKind::Shamir => None,
        }
    }
}

/// Stands in for the primary seal of a core built without seals (the server never does that).
static NO_SEAL: SealEntry = SealEntry {
    name: String::new(),
    priority: 0,
    disabled: false,
    fallback: false,
    kind: SealKind::Shamir,
};

enum State {
    Uninitialized,
    Sealed {
        init: Option<InitRecord>,
        manual: bool,
    },
    Unsealed {
        init: InitRecord,
        keys: Arc<UnsealedKeys>,
        transit: Arc<Transit>,
        by: String,
        since_unix: u64,
    },
}

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
    /// Results of the known-answer tests, once they ran (None before).
    pub self_tests: tokio::sync::watch::Receiver<Option<Vec<crate::crypto::SelfTest>>>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Purpose {
    Unseal,
    Fallback,
    Migrate,
}

/// Shares submitted one at a time towards an unseal, a migration or a rekey.
struct Progress<P> {
    purpose: P,
    nonce: String,
    shares: Vec<Share>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct RekeyTarget {
    shares: u32,
    threshold: u32,
}

pub struct Core {
    opts: CoreOptions,
    storage: Arc<dyn Storage>,
    seals: Vec<SealEntry>,
    state: RwLock<State>,
    ops: tokio::sync::Mutex<()>,
    wake: tokio::sync::Notify,
    last_error: RwLock<Option<(String, u64)>>,
    hsm_self_tests: RwLock<Vec<crate::seal::MemberSelfTest>>,
    memory_locked: RwLock<bool>,
    unseal_progress: Mutex<Option<Progress<Purpose>>>,
    rekey_progress: Mutex<Option<Progress<RekeyTarget>>>,
    verify_progress: Mutex<Vec<Share>>,
    rewrap: RwLock<Option<RewrapReport>>,
    /// The seal state as last read or written ([`Core::stored_state`]).
    stored: RwLock<Option<RootState>>,
    audit: Audit,
    /// Unseal attempts made (automatic and operator), and completed probe rounds: what tests and
    /// operators watch to know that the background tasks ran.
    unseal_attempts: std::sync::atomic::AtomicU64,
    probe_rounds: std::sync::atomic::AtomicU64,
}

/// Adds one to a counter when dropped.
struct CountOnDrop<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for CountOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Core {
    /// Reads the stored state. A corrupt init record leaves the node sealed with the error shown in
    /// its status; it never stops the daemon. `seals` need not be sorted.
    pub async fn new(
        opts: CoreOptions,
        storage: Arc<dyn Storage>,
        mut seals: Vec<SealEntry>,
        audit: Audit,
    ) -> Arc<Core> {
        seals.sort_by_key(|s| s.priority);
        let mut last_error = None;
        let state = match storage.get(INIT_KEY).await {
            Ok(None) => State::Uninitialized,
            Ok(Some(rec)) => match serde_json::from_slice::<InitRecord>(&rec.value) {
                Ok(init) if init.format == INIT_FORMAT => State::Sealed {
                    init: Some(init),
                    manual: false,
                },
                Ok(init) => {
                    last_error = Some((
                        format!(
                            "stored state is invalid: {INIT_KEY}: format version {}; this sealkeeper reads version {INIT_FORMAT}",
                            init.format
                        ),
                        now_unix(),
                    ));
                    State::Sealed {
                        init: None,
                        manual: false,
                    }
                }
                Err(e) => {
                    last_error = Some((
                        format!("stored state is invalid: {INIT_KEY}: {e}"),
                        now_unix(),
                    ));
                    State::Sealed {
                        init: None,
                        manual: false,
                    }
                }
            },
            Err(e) => {
                last_error = Some((e.to_string(), now_unix()));
                State::Sealed {
                    init: None,
                    manual: false,
                }
            }
        };
        let core = Arc::new(Core {
            opts,
            storage,
            seals,
            state: RwLock::new(state),
            ops: tokio::sync::Mutex::new(()),
            wake: tokio::sync::Notify::new(),
            last_error: RwLock::new(last_error),
            hsm_self_tests: RwLock::new(Vec::new()),
            memory_locked: RwLock::new(false),
            unseal_progress: Mutex::new(None),
            rekey_progress: Mutex::new(None),
            verify_progress: Mutex::new(Vec::new()),
            rewrap: RwLock::new(None),
            stored: RwLock::new(None),
            audit,
            unseal_attempts: 0.into(),
            probe_rounds: 0.into(),
        });
        if core.is_initialized() {
            // Errors are reported by the first unseal attempt, with the node sealed.
            let _ = core.root_state().await;
        }
        core
    }

    pub fn seals(&self) -> &[SealEntry] {
        &self.seals
    }

    /// The key that wrapped `blob`, as the seal `seal` names it.
    fn key_name(&self, seal: &str, blob: &WrappedBlob) -> String {
        self.seals
            .iter()
            .find(|s| s.name == seal)
            .and_then(|s| s.auto())
            .map(|a| a.key_name(blob))
            .unwrap_or_else(|| blob.seal_type.clone())
    }

    /// The first enabled seal by priority (configuration validation guarantees one).
    fn primary(&self) -> &SealEntry {
        self.seals
            .iter()
            .find(|s| !s.disabled)
            .or_else(|| self.seals.first())
            .unwrap_or(&NO_SEAL)
    }

    fn enabled_autos(&self) -> impl Iterator<Item = (&SealEntry, &Arc<dyn Seal>)> {
        self.seals
            .iter()
            .filter(|s| !s.disabled)
            .filter_map(|s| s.auto().map(|a| (s, a)))
    }

    fn shamir_enabled(&self) -> Option<&SealEntry> {
        self.seals
            .iter()
            .find(|s| !s.disabled && matches!(s.kind, SealKind::Shamir))
    }

    pub fn seal_type(&self) -> &str {
        self.primary().seal_type()
    }

    pub fn storage_kind(&self) -> &'static str {
        self.storage.kind()
    }

    /// The installation id (reported as `cluster_id`), when initialized; no storage access.
    pub fn installation_id(&self) -> Option<String> {
        match &*self.state.read().unwrap_or_else(|p| p.into_inner()) {
            State::Unsealed { init, .. }
            | State::Sealed {
                init: Some(init), ..
            } => Some(init.installation_id.clone()),
            _ => None,
        }
    }

    pub fn cluster_name(&self) -> String {
        let id = self.installation_id().unwrap_or_default();
        self.opts
            .cluster_name
            .clone()
            .unwrap_or_else(|| format!("sealkeeper-{}", id.get(..8).unwrap_or("")))
    }

    pub fn is_initialized(&self) -> bool {
        !matches!(
            *self.state.read().unwrap_or_else(|p| p.into_inner()),
            State::Uninitialized
        )
    }

    pub fn is_sealed(&self) -> bool {
        !matches!(
            *self.state.read().unwrap_or_else(|p| p.into_inner()),
            State::Unsealed { .. }
        )
    }

    /// The stored seal state and its revision, read from storage (every transition reads it
    /// afresh, so that a compare-and-swap commit sees another writer). Refreshes the copy that
    /// status documents show ([`Core::stored_state`]).
    async fn root_state(&self) -> Result<(RootState, Revision), CoreError> {
        let read = async {
            let rec = self.storage.get(ROOT_STATE_KEY).await?.ok_or_else(|| {
                CoreError::StoredState(format!("the seal state {ROOT_STATE_KEY} is missing"))
            })?;
            let st = RootState::from_json(&rec.value)
                .map_err(|e| CoreError::StoredState(format!("{ROOT_STATE_KEY}: {e}")))?;
            Ok((st, rec.revision))
        };
        let r = read.await;
        *self.stored.write().unwrap_or_else(|p| p.into_inner()) =
            r.as_ref().ok().map(|(st, _)| st.clone());
        r
    }

    /// The seal state as last read or written by this node (`None` when it could not be read):
    /// what status documents show, without a storage round trip.
    fn stored_state(&self) -> Option<RootState> {
        self.stored
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn commit(&self, st: &RootState, rev: Revision) -> Result<(), CoreError> {
        self.storage
            .put(ROOT_STATE_KEY, &st.to_json(), Expect::Revision(rev))
            .await?;
        *self.stored.write().unwrap_or_else(|p| p.into_inner()) = Some(st.clone());
        Ok(())
    }

    /// The keys, when unsealed. Request handlers clone the Arc and never hold the state lock.
    pub fn keys(&self) -> Option<Arc<UnsealedKeys>> {
        match &*self.state.read().unwrap_or_else(|p| p.into_inner()) {
            State::Unsealed { keys, .. } => Some(keys.clone()),
            _ => None,
        }
    }

    /// The transit state, when unsealed.
    pub fn transit(&self) -> Option<Arc<Transit>> {
        match &*self.state.read().unwrap_or_else(|p| p.into_inner()) {
            State::Unsealed { transit, .. } => Some(transit.clone()),
            _ => None,
        }
    }

    fn unsealed(&self) -> Result<(InitRecord, Arc<UnsealedKeys>), CoreError> {
        match &*self.state.read().unwrap_or_else(|p| p.into_inner()) {
            State::Unsealed { init, keys, .. } => Ok((init.clone(), keys.clone())),
            State::Uninitialized => Err(CoreError::NotInitialized),
            State::Sealed { .. } => Err(CoreError::Sealed),
        }
    }

    /// The seal being migrated from and the seal being migrated to, when a migration is pending:
    /// a disabled seal holds the root key and an enabled one does not.
    fn migration<'a>(&'a self, st: &RootState) -> Option<(&'a SealEntry, &'a SealEntry)> {
        let holds = |s: &SealEntry| match s.kind {
            SealKind::Auto(_) => st.wrappings.contains_key(&s.name),
            SealKind::Shamir => {
                st.shares.role == ShareRole::Unseal
                    && st.shares.shamir_seal.as_deref() == Some(s.name.as_str())
                    && st.shares.wrapping.is_some()
            }
        };
        let old = self.seals.iter().find(|s| s.disabled && holds(s))?;
        let new = self.seals.iter().find(|s| !s.disabled && !holds(s))?;
        Some((old, new))
    }

    /// Checks the configured seals against the stored wrappings at start: at least one seal in
    /// common, and at most one seal added or removed.
    pub fn check_seal_config(&self) -> Result<(), String> {
        if !self.is_initialized() {
            return Ok(());
        }
        let Some(st) = self.stored_state() else {
            return Ok(()); // reported by the unseal attempt, with the node sealed
        };
        let mut stored: BTreeMap<String, String> = st
            .wrappings
            .iter()
            .map(|(n, w)| (n.clone(), w.blob.seal_type.clone()))
            .collect();
        if st.shares.role == ShareRole::Unseal
            && let Some(n) = &st.shares.shamir_seal
        {
            stored.insert(n.clone(), "shamir".into());
        }
        let fmt = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        let stored_names: Vec<String> = stored.keys().cloned().collect();
        for s in &self.seals {
            if let Some(t) = stored.get(&s.name)
                && t != s.seal_type()
            {
                return Err(format!(
                    "seal {:?} is configured as type {}, but the stored wrapping of that name is by a {t} seal",
                    s.name,
                    s.seal_type()
                ));
            }
        }
        let common: Vec<String> = self
            .seals
            .iter()
            .filter(|s| stored.contains_key(&s.name))
            .map(|s| s.name.clone())
            .collect();
        if common.is_empty() {
            let configured: Vec<String> = self.seals.iter().map(|s| s.name.clone()).collect();
            return Err(format!(
                "none of the configured seals ({}) holds a wrapping of the root key, which is wrapped by: {}. \
                 Keep at least one of those seals in the configuration (with disabled = true to migrate away from it)",
                fmt(&configured),
                fmt(&stored_names)
            ));
        }
        let added: Vec<String> = self
            .seals
            .iter()
            .filter(|s| !stored.contains_key(&s.name) && !s.disabled)
            .map(|s| s.name.clone())
            .collect();
        let removed: Vec<String> = stored_names
            .iter()
            .filter(|n| !self.seals.iter().any(|s| &s.name == *n))
            .cloned()
            .collect();
        if added.len() + removed.len() > 1 {
            return Err(format!(
                "only one seal may be added or removed at a time; this configuration adds {} and removes {} \
                 (the root key is wrapped by: {})",
                fmt(&added),
                fmt(&removed),
                fmt(&stored_names)
            ));
        }
        Ok(())
    }

    pub fn status(&self) -> Status {
        let primary = self.primary();
        let seal = match &primary.kind {
            SealKind::Auto(s) => s.status(),
            SealKind::Shamir => SealHealth {
                name: primary.name.clone(),
                seal_type: "shamir".into(),
                healthy: true,
                members: vec![],
                detail: Default::default(),
            },
        };
        let stored = if self.is_initialized() {
            self.stored_state()
        } else {
            None
        };
        let mut seals = Vec::new();
        let mut missing = Vec::new();
        for s in &self.seals {
            let (healthy, since) = seal_health(s);
            let mut info = SealInfo {
                name: s.name.clone(),
                seal_type: s.seal_type().to_string(),
                priority: s.priority,
                disabled: s.disabled,
                healthy,
                unhealthy_since_unix: since,
                recovery_keys_fallback: s.fallback,
                wrapping_current: false,
                wrapping_generation: None,
                wrapped_by_key: None,
                wrapped_by_configured_key: None,
                wrapped_by_member: None,
            };
            if let Some(st) = &stored {
                match &s.kind {
                    SealKind::Auto(a) => {
                        if let Some(w) = st.wrappings.get(&s.name) {
                            info.wrapping_current = w.generation == st.generation;
                            info.wrapping_generation = Some(w.generation);
                            info.wrapped_by_key = Some(a.key_name(&w.blob));
                            info.wrapped_by_configured_key = Some(a.key_matches(&w.blob));
                            info.wrapped_by_member = Some(w.blob.wrapped_by.clone());
                        }
                    }
                    SealKind::Shamir => {
                        if let Some(w) = &st.shares.wrapping
                            && st.shares.role == ShareRole::Unseal
                        {
                            info.wrapping_current = w.generation == st.generation;
                            info.wrapping_generation = Some(w.generation);
                        }
                    }
                }
                if !s.disabled && !info.wrapping_current {
                    missing.push(s.name.clone());
                }
            }
            seals.push(info);
        }
        let migration = stored
            .as_ref()
            .is_some_and(|st| self.migration(st).is_some());
        let last = self
            .last_error
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        let (state, initialized, sealed, by, since, manual, init, terms) = match &*st {
            State::Uninitialized => (
                "uninitialized",
                false,
                true,
                None,
                None,
                false,
                None,
                vec![],
            ),
            State::Sealed { init, manual } => (
                "sealed",
                true,
                true,
                None,
                None,
                *manual,
                init.as_ref(),
                vec![],
            ),
            State::Unsealed {
                init,
                by,
                since_unix,
                keys,
                ..
            } => (
                "unsealed",
                true,
                false,
                Some(by.clone()),
                Some(*since_unix),
                false,
                Some(init),
                keys.terms(),
            ),
        };
        Status {
            state: state.to_string(),
            initialized,
            sealed,
            seal_type: primary.seal_type().to_string(),
            seal,
            seals,
            seals_missing_wrapping: missing,
            root_generation: stored.as_ref().map(|s| s.generation),
            keyring_terms: terms,
            migration,
            unsealed_by: by.as_ref().map(|b| {
                b.split_once('/')
                    .map(|(_, m)| m.to_string())
                    .unwrap_or_else(|| b.clone())
            }),
            unsealed_by_seal: by
                .as_ref()
                .and_then(|b| b.split_once('/').map(|(s, _)| s.to_string())),
            unsealed_since_unix: since,
            manually_sealed: manual,
            last_unseal_error: last.as_ref().map(|l| l.0.clone()),
            last_unseal_attempt_unix: last.as_ref().map(|l| l.1),
            unseal_attempts: self
                .unseal_attempts
                .load(std::sync::atomic::Ordering::Relaxed),
            probe_rounds: self.probe_rounds.load(std::sync::atomic::Ordering::Relaxed),
            installation_id: init.map(|i| i.installation_id.clone()),
            recovery_shares: stored.as_ref().map(|s| s.shares.shares).unwrap_or(0),
            recovery_threshold: stored.as_ref().map(|s| s.shares.threshold).unwrap_or(0),
            memory_locked: *self.memory_locked.read().unwrap_or_else(|p| p.into_inner()),
            dumpable: crate::secret::is_dumpable(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            fips_mode: self.opts.fips_mode,
            fips_module: crate::crypto::fips_module_active(),
            self_tests: self.opts.self_tests.borrow().clone().unwrap_or_default(),
            hsm_self_tests: self
                .hsm_self_tests
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// Share submission progress, for `seal-status`.
    pub fn share_progress(&self) -> ShareProgress {
        let stored = if self.is_initialized() {
            self.stored_state()
        } else {
            None
        };
        let p = self
            .unseal_progress
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        ShareProgress {
            progress: p.as_ref().map(|p| p.shares.len()).unwrap_or(0),
            nonce: p.as_ref().map(|p| p.nonce.clone()).unwrap_or_default(),
            migration: stored
                .as_ref()
                .is_some_and(|st| self.migration(st).is_some()),
            shamir: self.shamir_enabled().is_some(),
            threshold: stored.as_ref().map(|s| s.shares.threshold).unwrap_or(0),
            shares: stored.as_ref().map(|s| s.shares.shares).unwrap_or(0),
        }
    }

    /// Health of every enabled seal, for `/v1/sys/seal-backend-status` (no storage access: load
    /// balancers may poll it).
    pub fn seal_backend_status(&self) -> Vec<(String, bool, Option<u64>)> {
        self.seals
            .iter()
            .filter(|s| !s.disabled)
            .map(|s| {
                let (healthy, since) = seal_health(s);
                (s.name.clone(), healthy, since)
            })
            .collect()
    }

    pub fn rewrap_report(&self) -> Option<RewrapReport> {
        self.rewrap
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn blocking<T: Send + 'static>(
        seal: &Arc<dyn Seal>,
        f: impl FnOnce(Arc<dyn Seal>) -> Result<T, SealError> + Send + 'static,
    ) -> Result<T, CoreError> {
        let seal = seal.clone();
        tokio::task::spawn_blocking(move || f(seal))
            .await
            .map_err(|e| CoreError::Internal(format!("HSM task failed: {e}")))?
            .map_err(CoreError::Seal)
    }

    fn locked(&self, bytes: &[u8]) -> Result<LockedBytes, CoreError> {
        let b = LockedBytes::from_slice(bytes, self.opts.memory)?;
        *self
            .memory_locked
            .write()
            .unwrap_or_else(|p| p.into_inner()) = b.is_locked();
        Ok(b)
    }

    /// A new root key: the OS CSPRNG mixed with an HSM's generator through HKDF, so that neither a
    /// weak host RNG nor a weak HSM RNG alone determines it. Without a reachable HSM (Shamir seal),
    /// the OS CSPRNG alone.
    async fn new_root_key(&self) -> Result<LockedBytes, CoreError> {
        let mut hsm_random = None;
        for (_, seal) in self.enabled_autos() {
            if let Ok(r) = Self::blocking(seal, |s| s.random(KEY_LEN)).await {
                hsm_random = Some(Zeroizing::new(r));
                break;
            }
        }
        let os_random = Zeroizing::new(crypto::random_vec(KEY_LEN)?);
        let salt = hsm_random.unwrap_or_else(|| Zeroizing::new(vec![0u8; KEY_LEN]));
        let mut root = self.locked(&[0u8; KEY_LEN])?;
        crypto::hkdf_sha256(
            &salt,
            &os_random,
            b"sealkeeper root key v1",
            root.as_mut_slice(),
        )?;
        Ok(root)
    }

    /// Wraps `root` with every enabled auto seal that answers. Returns the wrappings and, for each
    /// seal that failed, its error.
    async fn wrap_everywhere(
        &self,
        installation_id: &str,
        root: &LockedBytes,
        generation: u64,
        only: Option<&[String]>,
    ) -> (BTreeMap<String, SealWrapping>, Vec<(String, String)>) {
        let mut done = BTreeMap::new();
        let mut failed = Vec::new();
        let ctx = BlobContext {
            installation_id: installation_id.to_string(),
            purpose: ROOT_PURPOSE.into(),
        };
        for (entry, seal) in self.enabled_autos() {
            if only.is_some_and(|o| !o.contains(&entry.name)) {
                continue;
            }
            let plain = Zeroizing::new(root.as_slice().to_vec());
            let c = ctx.clone();
            let wrapped = Self::blocking(seal, move |s| {
                let blob = s.wrap(&c, &plain)?;
                let unreachable = s.verify_members(&c, &blob, &plain)?;
                Ok((blob, unreachable))
            })
            .await;
            match wrapped {
                Ok((blob, unreachable)) => {
                    for u in unreachable {
                        tracing::warn!(seal = %entry.name, "member could not check the new blob (it must hold the same key): {u}");
                    }
                    done.insert(entry.name.clone(), SealWrapping { generation, blob });
                }
                Err(e) => failed.push((entry.name.clone(), e.to_string())),
            }
        }
        (done, failed)
    }

    fn record_rewrap(
        &self,
        operation: &str,
        done: &BTreeMap<String, SealWrapping>,
        failed: &[(String, String)],
    ) {
        let mut seals: Vec<RewrapEntry> = done
            .iter()
            .map(|(n, w)| RewrapEntry {
                seal: n.clone(),
                ok: true,
                key: Some(self.key_name(n, &w.blob)),
                error: None,
            })
            .collect();
        seals.extend(failed.iter().map(|(n, e)| RewrapEntry {
            seal: n.clone(),
            ok: false,
            key: None,
            error: Some(e.clone()),
        }));
        *self.rewrap.write().unwrap_or_else(|p| p.into_inner()) = Some(RewrapReport {
            operation: operation.to_string(),
            is_running: false,
            processed: done.len() + failed.len(),
            succeeded: done.len(),
            failed: failed.len(),
            finished_unix: now_unix(),
            seals,
        });
    }

    /// Initializes: a new root key wrapped by every enabled seal, a keyring, and the shares
    /// (recovery keys for auto seals, unseal keys for a Shamir seal) returned once.
    pub async fn init(&self, shares: u32, threshold: u32) -> Result<InitResponse, CoreError> {
        let _op = self.ops.lock().await;
        if self.is_initialized() {
            return Err(CoreError::AlreadyInitialized);
        }
        recovery::check_parameters(shares, threshold)
            .map_err(|e| CoreError::BadRequest(e.to_string()))?;
        self.self_tests_passed().await?;
        let started = Instant::now();
        let installation_id = hex::encode(crypto::random_vec(16)?);
        let root = self.new_root_key().await?;

        let shamir = self.shamir_enabled().map(|s| s.name.clone());
        let (wrappings, failed) = self.wrap_everywhere(&installation_id, &root, 1, None).await;
        if shamir.is_none() && wrappings.is_empty() {
            return Err(nothing_wrapped("the root key", &failed));
        }
        let mut warnings: Vec<String> = failed
            .iter()
            .map(|(n, e)| {
                format!("seal {n} could not wrap the root key (it is wrapped as soon as it answers): {e}")
            })
            .collect();
        fault::point("init:after-wrap");

        let term_key = Zeroizing::new(crypto::random_vec(KEY_LEN)?);
        let keyring = KeyringFile {
            format: 1,
            terms: vec![KeyringTerm {
                term: 1,
                key: B64.encode(&*term_key),
                created_unix: now_unix(),
            }],
        };

        // The split key: the Shamir seal's key-encryption key, or the recovery key.
        let split_key = Zeroizing::new(crypto::random_vec(KEY_LEN)?);
        let split = recovery::split(&split_key, shares, threshold, &installation_id)
            .map_err(|e| CoreError::BadRequest(e.to_string()))?;
        let role = if shamir.is_some() {
            ShareRole::Unseal
        } else {
            ShareRole::Recovery
        };
        let fallback = self.enabled_autos().any(|(e, _)| e.fallback);
        let shares_wrapping = if shamir.is_some() || fallback {
            Some(state::wrap_with_shares_key(
                &split_key,
                root.as_slice(),
                &installation_id,
                1,
            )?)
        } else {
            None
        };
        if fallback {
            warnings.push(
                "recovery_keys_fallback is on: a quorum of these recovery keys can unseal this installation \
                 when every HSM is unreachable; guard them as you would the root key"
                    .into(),
            );
        }
        let st = RootState {
            format: ROOT_STATE_FORMAT,
            generation: 1,
            root_check: state::root_check(root.as_slice(), &installation_id),
            keyring: state::seal_keyring(root.as_slice(), &installation_id, &keyring)?,
            shares: SharesState {
                role,
                shares,
                threshold,
                verifier: recovery::verifier(&split_key, &installation_id),
                shamir_seal: shamir.clone(),
                wrapping: shares_wrapping,
                pending: None,
            },
            wrappings,
        };
        let init = InitRecord {
            format: INIT_FORMAT,
            installation_id: installation_id.clone(),
            created_unix: now_unix(),
        };

        // Persist the seal state and the init record in one transaction: a crash or a failed write
        // leaves the node uninitialized with nothing stored, and a new init can run.
        fault::point("init:before-root-state");
        let init_json =
            serde_json::to_vec_pretty(&init).map_err(|e| CoreError::Internal(e.to_string()))?;
        fault::point("init:before-init-record");
        self.storage
            .txn(vec![
                Op::put(ROOT_STATE_KEY, st.to_json(), Expect::Any),
                Op::put(INIT_KEY, init_json, Expect::Absent),
            ])
            .await?;
        *self.stored.write().unwrap_or_else(|p| p.into_inner()) = Some(st.clone());
        fault::point("init:after-init-record");

        let keys = Arc::new(UnsealedKeys::from_shared(
            root,
            vec![(1, Arc::new(self.locked(&term_key)?))],
        ));
        let transit = Transit::load(self.storage.clone(), keys.clone(), self.opts.memory).await?;
        let by = st
            .wrappings
            .iter()
            .next()
            .map(|(n, w)| format!("{n}/{}", w.blob.wrapped_by))
            .or_else(|| shamir.as_ref().map(|s| format!("{s}/unseal-keys")))
            .unwrap_or_default();
        self.audit.set_chain_key(Some(transit.audit_chain_key()));
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = State::Unsealed {
            init,
            keys,
            transit,
            by: by.clone(),
            since_unix: now_unix(),
        };
        *self.last_error.write().unwrap_or_else(|p| p.into_inner()) = None;
        let wrapped_by: Vec<String> = st.wrappings.keys().cloned().collect();
        tracing::info!(
            seal_type = self.seal_type(),
            seals = %wrapped_by.join(","),
            shares = shares,
            threshold = threshold,
            role = role.noun(),
            duration_ms = started.elapsed().as_millis() as u64,
            "initialized; root key wrapped, shares handed out"
        );
        let (_, member) = split_by(&by);
        self.audit.record_detached(
            Event::new("core", "init", "ok")
                .field("seals", wrapped_by.join(","))
                .field("member", member.to_string())
                .field("share_role", role.noun())
                .field("recovery_shares", shares)
                .field("recovery_threshold", threshold)
                .field("recovery_keys_fallback", fallback),
        );
        for w in &warnings {
            tracing::warn!("{w}");
        }
        let hex: Vec<String> = split.iter().map(|s| s.to_hex()).collect();
        let b64: Vec<String> = split.iter().map(|s| s.to_base64()).collect();
        Ok(match role {
            ShareRole::Unseal => InitResponse {
                keys: hex,
                keys_base64: b64,
                recovery_keys: vec![],
                recovery_keys_base64: vec![],
                recovery_shares: 0,
                recovery_threshold: 0,
                warnings,
            },
            ShareRole::Recovery => InitResponse {
                keys: vec![],
                keys_base64: vec![],
                recovery_keys: hex,
                recovery_keys_base64: b64,
                recovery_shares: shares,
                recovery_threshold: threshold,
                warnings,
            },
        })
    }

    fn sealed_init(&self, attempt: Attempt) -> Result<Option<InitRecord>, CoreError> {
        match &*self.state.read().unwrap_or_else(|p| p.into_inner()) {
            State::Uninitialized => Err(CoreError::NotInitialized),
            State::Unsealed { .. } => Ok(None),
            State::Sealed {
                init: Some(init),
                manual,
            } => {
                if *manual && attempt == Attempt::Automatic {
                    return Ok(None);
                }
                Ok(Some(init.clone()))
            }
            State::Sealed { init: None, .. } => {
                let e = self
                    .last_error
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                Err(CoreError::StoredState(
                    e.map(|e| e.0)
                        .unwrap_or_else(|| "init record unreadable".into()),
                ))
            }
        }
    }

    /// Unseals from the auto seals, highest priority first. Idempotent when already unsealed.
    pub async fn unseal(&self, attempt: Attempt) -> Result<(), CoreError> {
        let _op = self.ops.lock().await;
        // Counted when the attempt is over (its error, if any, is recorded by then).
        let _counted = CountOnDrop(&self.unseal_attempts);
        let Some(init) = self.sealed_init(attempt)? else {
            return Ok(());
        };
        let started = Instant::now();
        let result = self.unseal_auto(&init, attempt).await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(by) => {
                let (seal, member) = split_by(&by);
                tracing::info!(seal_type = self.seal_type(), seal = %seal, member = %member, duration_ms = elapsed_ms, "unsealed");
                self.audit.record_detached(
                    Event::new("core", "unseal", "ok")
                        .field("attempt", attempt_name(attempt))
                        .field("seal", seal.to_string())
                        .field("member", member.to_string())
                        .field("duration_ms", elapsed_ms),
                );
                Ok(())
            }
            Err(e) => {
                if attempt == Attempt::Operator {
                    // The operator wants the node unsealed: automatic retries resume.
                    if let State::Sealed { manual, .. } =
                        &mut *self.state.write().unwrap_or_else(|p| p.into_inner())
                    {
                        *manual = false;
                    }
                }
                *self.last_error.write().unwrap_or_else(|p| p.into_inner()) =
                    Some((e.to_string(), now_unix()));
                if matches!(e, CoreError::NeedsShares(_)) {
                    tracing::info!(reason = %e, "sealed; waiting for operators");
                } else {
                    tracing::error!(seal_type = self.seal_type(), error = %e, duration_ms = elapsed_ms, "unseal failed");
                    self.audit.record_detached(
                        Event::new("core", "unseal", "error")
                            .error(e.to_string())
                            .field("attempt", attempt_name(attempt))
                            .field("duration_ms", elapsed_ms),
                    );
                }
                Err(e)
            }
        }
    }

    async fn unseal_auto(&self, init: &InitRecord, attempt: Attempt) -> Result<String, CoreError> {
        let (st, _) = self.root_state().await?;
        if let Some((old, new)) = self.migration(&st) {
            return Err(CoreError::NeedsShares(format!(
                "seal migration from {} ({}) to {} ({}) is pending: submit a quorum of the {} with \
                 `sealkeeper operator unseal --migrate`",
                old.name,
                old.seal_type(),
                new.name,
                new.seal_type(),
                st.shares.role.noun()
            )));
        }
        let candidates: Vec<(&SealEntry, &Arc<dyn Seal>)> = self
            .enabled_autos()
            .filter(|(e, _)| st.is_current(&e.name))
            .collect();
        if candidates.is_empty() {
            if self.shamir_enabled().is_some() {
                return Err(CoreError::NeedsShares(format!(
                    "sealed: {} of {} unseal keys are needed (`sealkeeper operator unseal`)",
                    st.shares.threshold, st.shares.shares
                )));
            }
            let stored: Vec<String> = st.wrappings.keys().cloned().collect();
            return Err(CoreError::StoredState(format!(
                "no enabled seal holds a current wrapping of the root key (stored wrappings: {})",
                if stored.is_empty() {
                    "none".into()
                } else {
                    stored.join(", ")
                }
            )));
        }
        let ctx = BlobContext {
            installation_id: init.installation_id.clone(),
            purpose: ROOT_PURPOSE.into(),
        };
        let mut errors: Vec<(String, CoreError)> = Vec::new();
        for (entry, seal) in &candidates {
            let Some(w) = st.wrappings.get(&entry.name) else {
                continue;
            };
            let blob = w.blob.clone();
            let c = ctx.clone();
            let unwrapped = Self::blocking(seal, move |s| s.unwrap(&c, &blob, attempt)).await;
            let result = match unwrapped {
                Ok(u) if u.plaintext.len() != KEY_LEN => Err(CoreError::StoredState(format!(
                    "seal {}: the HSM returned a {}-byte root key, expected {KEY_LEN}",
                    entry.name,
                    u.plaintext.len()
                ))),
                Ok(u) => Ok(u),
                Err(e) => Err(e),
            };
            match result {
                Ok(u) => {
                    if !state::root_matches(&u.plaintext, &init.installation_id, &st.root_check) {
                        errors.push((
                            entry.name.clone(),
                            CoreError::StoredState(format!(
                                "seal {}: its wrapping does not hold the current root key",
                                entry.name
                            )),
                        ));
                        continue;
                    }
                    let root = self.locked(&u.plaintext)?;
                    if self.opts.fips_mode {
                        self.hsm_self_test(seal, &u.member).await?;
                    }
                    let by = format!("{}/{}", entry.name, u.member);
                    self.activate(init.clone(), &st, root, by.clone()).await?;
                    for (n, e) in &errors {
                        tracing::warn!(seal = %n, error = %e, "a higher-priority seal could not unseal; the next one did");
                    }
                    return Ok(by);
                }
                Err(e) => errors.push((entry.name.clone(), e)),
            }
        }
        if errors.len() == 1 {
            return Err(errors.remove(0).1);
        }
        let permanent = errors.iter().all(|(_, e)| e.is_permanent());
        Err(CoreError::Seals {
            message: format!(
                "no seal could unwrap the root key: {}",
                errors
                    .iter()
                    .map(|(n, e)| format!("[{n}] {e}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            permanent,
        })
    }

    async fn hsm_self_test(&self, seal: &Arc<dyn Seal>, member: &str) -> Result<(), CoreError> {
        let s = seal.clone();
        let results = tokio::task::spawn_blocking(move || s.self_test())
            .await
            .map_err(|e| CoreError::Internal(format!("self-test task failed: {e}")))?;
        *self
            .hsm_self_tests
            .write()
            .unwrap_or_else(|p| p.into_inner()) = results.clone();
        for r in &results {
            self.audit.record_detached(
                Event::new("core", "hsm-self-test", if r.ok { "ok" } else { "error" })
                    .field("member", r.member.clone())
                    .error(r.error.clone().unwrap_or_default()),
            );
        }
        match results.iter().find(|r| r.member == member) {
            Some(r) if !r.ok => Err(CoreError::StoredState(format!(
                "fips_mode: the pairwise self-test failed on {}, which unwrapped the root key: {}",
                r.member,
                r.error.clone().unwrap_or_default()
            ))),
            _ => Ok(()),
        }
    }

    /// Opens the keyring with `root` and switches to Unsealed.
    async fn activate(
        &self,
        init: InitRecord,
        st: &RootState,
        root: LockedBytes,
        by: String,
    ) -> Result<(), CoreError> {
        if !state::root_matches(root.as_slice(), &init.installation_id, &st.root_check) {
            return Err(CoreError::StoredState(
                "the unwrapped key is not this installation's current root key".into(),
            ));
        }
        let file = state::open_keyring(root.as_slice(), &init.installation_id, &st.keyring)
            .map_err(CoreError::StoredState)?;
        let mut keyring = Vec::new();
        for t in file.terms {
            let k =
                Zeroizing::new(B64.decode(&t.key).map_err(|e| {
                    CoreError::StoredState(format!("keyring term {}: {e}", t.term))
                })?);
            if k.len() != KEY_LEN {
                return Err(CoreError::StoredState(format!(
                    "keyring term {} has a {}-byte key",
                    t.term,
                    k.len()
                )));
            }
            keyring.push((t.term, Arc::new(self.locked(&k)?)));
        }
        let keys = Arc::new(UnsealedKeys::from_shared(root, keyring));
        let transit = Transit::load(self.storage.clone(), keys.clone(), self.opts.memory).await?;
        self.audit.set_chain_key(Some(transit.audit_chain_key()));
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = State::Unsealed {
            init,
            keys,
            transit,
            by,
            since_unix: now_unix(),
        };
        *self.last_error.write().unwrap_or_else(|p| p.into_inner()) = None;
        self.wake.notify_one();
        Ok(())
    }

    /// Takes one share towards a Shamir unseal, a break-glass recovery-key unseal or a seal
    /// migration. `reset` clears the progress.
    pub async fn submit_unseal_key(
        &self,
        key: Option<&str>,
        reset: bool,
        migrate: bool,
    ) -> Result<(), CoreError> {
        let _op = self.ops.lock().await;
        if reset {
            *self
                .unseal_progress
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = None;
            if key.is_none() {
                return Ok(());
            }
        }
        let Some(key) = key else {
            return Err(CoreError::BadRequest("no key given".into()));
        };
        if !self.is_initialized() {
            return Err(CoreError::NotInitialized);
        }
        let (st, rev) = self.root_state().await?;
        let purpose = if migrate {
            if self.migration(&st).is_none() {
                return Err(CoreError::BadRequest(
                    "no seal migration is pending: the configuration has no disabled seal holding the root key \
                     next to an enabled seal that does not"
                        .into(),
                ));
            }
            Purpose::Migrate
        } else if let Some((old, new)) = self.migration(&st) {
            return Err(CoreError::BadRequest(format!(
                "a seal migration from {} to {} is pending: submit the {} with --migrate",
                old.name,
                new.name,
                st.shares.role.noun()
            )));
        } else if self.shamir_enabled().is_some() {
            Purpose::Unseal
        } else if self.enabled_autos().any(|(e, _)| e.fallback) {
            if st.shares.wrapping.is_none() {
                return Err(CoreError::BadRequest(
                    "recovery_keys_fallback was not on when this installation was initialized: the recovery keys \
                     cannot unseal it"
                        .into(),
                ));
            }
            if let Some((e, _)) = self.enabled_autos().find(|(_, s)| s.status().healthy) {
                return Err(CoreError::BadRequest(format!(
                    "seal {} is reachable: recovery keys unseal only when every auto seal is unreachable \
                     (run `sealkeeper operator unseal` without a key)",
                    e.name
                )));
            }
            Purpose::Fallback
        } else {
            return Err(CoreError::BadRequest(
                "this node unseals itself from its HSM; unseal keys are not used and recovery keys never unseal. \
                 Send an empty body to run the auto-unseal now"
                    .into(),
            ));
        };
        let Some(init) = self.sealed_init(Attempt::Operator)? else {
            return Err(CoreError::BadRequest(
                "sealkeeper is already unsealed".into(),
            ));
        };
        let role = st.shares.role.noun();
        let share = parse_share(
            key,
            &init.installation_id,
            st.shares.threshold,
            &format!("this installation's {role}"),
        )?;
        let ready = {
            let mut p = self
                .unseal_progress
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if p.as_ref().is_some_and(|p| p.purpose != purpose) {
                *p = None;
            }
            let prog = p.get_or_insert_with(|| Progress {
                purpose,
                nonce: crypto::random_id(),
                shares: vec![],
            });
            let Some(ready) = collect_share(&mut prog.shares, share, st.shares.threshold)? else {
                return Ok(());
            };
            *p = None;
            ready
        };
        let split_key = recovery::combine(&ready)
            .map_err(|e| CoreError::BadRequest(format!("{e}; progress was reset")))?;
        if recovery::verify(&split_key, &init.installation_id, &st.shares.verifier).is_err() {
            self.audit
                .record_detached(Event::new("core", "unseal-key", "error").error(format!(
                    "the {role} do not reconstruct this installation's key"
                )));
            return Err(CoreError::BadRequest(format!(
                "the submitted {role} do not reconstruct this installation's key; progress was reset"
            )));
        }
        match purpose {
            Purpose::Unseal | Purpose::Fallback => {
                let w = st.shares.wrapping.as_ref().ok_or_else(|| {
                    CoreError::StoredState("the root key is not wrapped by the shares".into())
                })?;
                let root = w
                    .root_from_split_key(&split_key, &init.installation_id)
                    .map_err(CoreError::StoredState)?;
                let root = self.locked(&root)?;
                let by = if purpose == Purpose::Unseal {
                    self.shamir_enabled()
                        .map(|s| format!("{}/unseal-keys", s.name))
                        .unwrap_or_default()
                } else {
                    "recovery-keys/fallback".to_string()
                };
                self.activate(init, &st, root, by.clone()).await?;
                if purpose == Purpose::Fallback {
                    tracing::warn!(
                        "unsealed with recovery keys (recovery_keys_fallback): every auto seal was unreachable"
                    );
                }
                self.audit.record_detached(
                    Event::new("core", "unseal", "ok")
                        .field("attempt", "operator")
                        .field("member", by)
                        .field(
                            "method",
                            if purpose == Purpose::Unseal {
                                "unseal-keys"
                            } else {
                                "recovery-keys-fallback"
                            },
                        ),
                );
                Ok(())
            }
            Purpose::Migrate => self.migrate(init, st, rev, &split_key).await,
        }
    }

    async fn migrate(
        &self,
        init: InitRecord,
        st: RootState,
        rev: Revision,
        split_key: &[u8],
    ) -> Result<(), CoreError> {
        let Some((old, new)) = self.migration(&st) else {
            return Err(CoreError::BadRequest("no seal migration is pending".into()));
        };
        let id = init.installation_id.clone();
        let fail = |e: CoreError| {
            self.audit.record_detached(
                Event::new("core", "seal-migrate", "error")
                    .error(e.to_string())
                    .field("from", old.name.clone())
                    .field("to", new.name.clone()),
            );
            e
        };
        let root = match &old.kind {
            SealKind::Shamir => {
                let w = st.shares.wrapping.as_ref().ok_or_else(|| {
                    CoreError::StoredState("the root key is not wrapped by the unseal keys".into())
                })?;
                Zeroizing::new(
                    w.root_from_split_key(split_key, &id)
                        .map_err(CoreError::StoredState)?
                        .to_vec(),
                )
            }
            SealKind::Auto(seal) => {
                let w = st.wrappings.get(&old.name).ok_or_else(|| {
                    CoreError::StoredState(format!("seal {} holds no wrapping", old.name))
                })?;
                let blob = w.blob.clone();
                let ctx = BlobContext {
                    installation_id: id.clone(),
                    purpose: ROOT_PURPOSE.into(),
                };
                let u = Self::blocking(seal, move |s| s.unwrap(&ctx, &blob, Attempt::Operator))
                    .await
                    .map_err(|e| {
                        fail(CoreError::Seals {
                            message: format!(
                                "the old seal {} could not unwrap the root key, so the migration cannot run \
                                 (both seals must be reachable): {e}",
                                old.name
                            ),
                            permanent: false,
                        })
                    })?;
                u.plaintext
            }
        };
        if !state::root_matches(&root, &id, &st.root_check) {
            return Err(fail(CoreError::StoredState(format!(
                "the old seal {} does not hold the current root key",
                old.name
            ))));
        }
        let root = self.locked(&root)?;
        let mut next = st.clone();
        next.wrappings.remove(&old.name);
        match &new.kind {
            SealKind::Auto(_) => {
                let (mut done, failed) = self
                    .wrap_everywhere(
                        &id,
                        &root,
                        st.generation,
                        Some(std::slice::from_ref(&new.name)),
                    )
                    .await;
                let Some(w) = done.remove(&new.name) else {
                    let why = failed
                        .first()
                        .map(|(_, e)| e.clone())
                        .unwrap_or_else(|| "it did not answer".into());
                    return Err(fail(CoreError::Seals {
                        message: format!(
                            "the new seal {} could not wrap the root key, so the migration cannot run \
                             (both seals must be reachable): {why}",
                            new.name
                        ),
                        permanent: false,
                    }));
                };
                next.wrappings.insert(new.name.clone(), w);
                next.shares.role = ShareRole::Recovery;
                next.shares.shamir_seal = None;
                next.shares.wrapping = if new.fallback {
                    Some(state::wrap_with_shares_key(
                        split_key,
                        root.as_slice(),
                        &id,
                        st.generation,
                    )?)
                } else {
                    None
                };
            }
            SealKind::Shamir => {
                next.shares.role = ShareRole::Unseal;
                next.shares.shamir_seal = Some(new.name.clone());
                next.shares.wrapping = Some(state::wrap_with_shares_key(
                    split_key,
                    root.as_slice(),
                    &id,
                    st.generation,
                )?);
            }
        }
        fault::point("migrate:before-commit");
        self.commit(&next, rev).await.map_err(fail)?;
        fault::point("migrate:after-commit");
        let by = next
            .wrappings
            .get(&new.name)
            .map(|w| format!("{}/{}", new.name, w.blob.wrapped_by))
            .unwrap_or_else(|| format!("{}/unseal-keys", new.name));
        self.activate(init, &next, root, by).await?;
        tracing::info!(from = %old.name, to = %new.name, shares = next.shares.role.noun(), "seal migrated; the disabled seal can be removed from the configuration");
        self.audit.record_detached(
            Event::new("core", "seal-migrate", "ok")
                .field("from", old.name.clone())
                .field("from_type", old.seal_type().to_string())
                .field("to", new.name.clone())
                .field("to_type", new.seal_type().to_string())
                .field("share_role", next.shares.role.noun()),
        );
        Ok(())
    }

    /// Wraps the current root key with every enabled auto seal that lacks a current wrapping, and
    /// drops the wrappings of seals no longer configured. Runs after unseal and at each probe.
    pub async fn catch_up(&self) -> Result<Vec<String>, CoreError> {
        let _op = self.ops.lock().await;
        let Ok((init, keys)) = self.unsealed() else {
            return Ok(vec![]);
        };
        let (st, rev) = self.root_state().await?;
        if self.migration(&st).is_some() {
            return Ok(vec![]);
        }
        let missing: Vec<String> = self
            .enabled_autos()
            .filter(|(e, _)| !st.is_current(&e.name))
            .map(|(e, _)| e.name.clone())
            .collect();
        let gone: Vec<String> = st
            .wrappings
            .keys()
            .filter(|n| !self.seals.iter().any(|s| &s.name == *n))
            .cloned()
            .collect();
        if missing.is_empty() && gone.is_empty() {
            return Ok(vec![]);
        }
        let root = keys.root();
        let (done, failed) = if missing.is_empty() {
            (BTreeMap::new(), vec![])
        } else {
            self.wrap_everywhere(&init.installation_id, &root, st.generation, Some(&missing))
                .await
        };
        if done.is_empty() && gone.is_empty() {
            return Ok(vec![]);
        }
        let mut next = st.clone();
        for n in &gone {
            next.wrappings.remove(n);
        }
        let wrapped: Vec<String> = done.keys().cloned().collect();
        next.wrappings.extend(done.clone());
        self.commit(&next, rev).await?;
        self.record_rewrap("catch-up", &done, &failed);
        for n in &wrapped {
            tracing::info!(seal = %n, "seal now holds a wrapping of the current root key");
        }
        for n in &gone {
            tracing::info!(seal = %n, "dropped the wrapping of a seal that is no longer configured");
        }
        self.audit.record_detached(
            Event::new("core", "seal-catch-up", "ok")
                .field("wrapped", wrapped.join(","))
                .field("dropped", gone.join(",")),
        );
        Ok(wrapped)
    }

    /// A new keyring term: new records use it, earlier terms still decrypt.
    pub async fn rotate(&self) -> Result<u32, CoreError> {
        let _op = self.ops.lock().await;
        let (init, keys) = self.unsealed()?;
        let (st, rev) = self.root_state().await?;
        let root = keys.root();
        let mut file = state::open_keyring(root.as_slice(), &init.installation_id, &st.keyring)
            .map_err(CoreError::StoredState)?;
        let term = file.terms.iter().map(|t| t.term).max().unwrap_or(0) + 1;
        let term_key = Zeroizing::new(crypto::random_vec(KEY_LEN)?);
        file.terms.push(KeyringTerm {
            term,
            key: B64.encode(&*term_key),
            created_unix: now_unix(),
        });
        let mut next = st.clone();
        next.keyring = state::seal_keyring(root.as_slice(), &init.installation_id, &file)?;
        let locked = Arc::new(self.locked(&term_key)?);
        fault::point("rotate:before-commit");
        self.commit(&next, rev)
            .await
            .inspect_err(|e| self.audit_error("rotate", e))?;
        fault::point("rotate:after-commit");
        keys.add_term(term, locked);
        tracing::info!(term, "keyring rotated; new records use the new term");
        self.audit
            .record_detached(Event::new("core", "rotate", "ok").field("term", term));
        Ok(term)
    }

    fn audit_error(&self, op: &str, e: &CoreError) {
        self.audit
            .record_detached(Event::new("core", op, "error").error(e.to_string()));
    }

    /// A new root key, wrapped by every seal that answers, the keyring re-encrypted under it.
    pub async fn rotate_root(&self) -> Result<RewrapReport, CoreError> {
        let _op = self.ops.lock().await;
        let (init, keys) = self.unsealed()?;
        let (st, rev) = self.root_state().await?;
        let id = init.installation_id.clone();
        let old_root = keys.root();
        let file = state::open_keyring(old_root.as_slice(), &id, &st.keyring)
            .map_err(CoreError::StoredState)?;
        let new_root = self.new_root_key().await?;
        let generation = st.generation + 1;
        let (done, failed) = self.wrap_everywhere(&id, &new_root, generation, None).await;
        let has_autos = self.enabled_autos().next().is_some();
        if has_autos && done.is_empty() {
            let e = nothing_wrapped("the new root key, so nothing was changed", &failed);
            self.audit_error("rotate-root", &e);
            return Err(e);
        }
        fault::point("rotate-root:after-wrap");
        let mut next = st.clone();
        next.generation = generation;
        next.root_check = state::root_check(new_root.as_slice(), &id);
        next.keyring = state::seal_keyring(new_root.as_slice(), &id, &file)?;
        next.wrappings.extend(done.clone());
        if let Some(w) = &st.shares.wrapping {
            let split_key = w
                .split_key_from_root(old_root.as_slice(), &id)
                .map_err(CoreError::StoredState)?;
            next.shares.wrapping = Some(state::wrap_with_shares_key(
                &split_key,
                new_root.as_slice(),
                &id,
                generation,
            )?);
        }
        fault::point("rotate-root:before-commit");
        self.commit(&next, rev)
            .await
            .inspect_err(|e| self.audit_error("rotate-root", e))?;
        fault::point("rotate-root:after-commit");
        keys.replace_root(new_root);
        self.record_rewrap("rotate-root", &done, &failed);
        for (n, e) in &failed {
            tracing::warn!(seal = %n, error = %e, "seal could not wrap the new root key; it is wrapped as soon as it answers");
        }
        tracing::info!(generation, "root key rotated");
        self.audit.record_detached(
            Event::new("core", "rotate-root", "ok")
                .field("generation", generation)
                .field(
                    "wrapped",
                    done.keys().cloned().collect::<Vec<_>>().join(","),
                )
                .field(
                    "pending",
                    failed
                        .iter()
                        .map(|(n, _)| n.clone())
                        .collect::<Vec<_>>()
                        .join(","),
                ),
        );
        Ok(self.rewrap_report().unwrap_or_default())
    }

    /// Re-wraps the root key under each enabled auto seal's configured key (after a key_label
    /// change, with the old key still in the HSM).
    pub async fn rewrap(&self) -> Result<RewrapReport, CoreError> {
        let _op = self.ops.lock().await;
        let (init, keys) = self.unsealed()?;
        let (st, rev) = self.root_state().await?;
        let root = keys.root();
        let (done, failed) = self
            .wrap_everywhere(&init.installation_id, &root, st.generation, None)
            .await;
        self.record_rewrap("rewrap", &done, &failed);
        if done.is_empty() {
            let e = nothing_wrapped("the root key, so nothing was changed", &failed);
            self.audit_error("rewrap", &e);
            return Err(e);
        }
        let mut next = st.clone();
        next.wrappings.extend(done.clone());
        fault::point("rewrap:before-commit");
        self.commit(&next, rev)
            .await
            .inspect_err(|e| self.audit_error("rewrap", e))?;
        fault::point("rewrap:after-commit");
        let report = self.rewrap_report().unwrap_or_default();
        self.audit.record_detached(
            Event::new(
                "core",
                "rewrap",
                if failed.is_empty() { "ok" } else { "partial" },
            )
            .field(
                "wrapped",
                done.iter()
                    .map(|(n, w)| format!("{n}={}", self.key_name(n, &w.blob)))
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .field(
                "failed",
                failed
                    .iter()
                    .map(|(n, _)| n.clone())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        );
        Ok(report)
    }

    fn rekey_target_name(&self) -> &'static str {
        if self.shamir_enabled().is_some() {
            "unseal"
        } else {
            "recovery"
        }
    }

    pub fn rekey_status(&self) -> RekeyStatus {
        let stored = self.stored_state();
        let p = self
            .rekey_progress
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        RekeyStatus {
            started: p.is_some(),
            nonce: p.as_ref().map(|p| p.nonce.clone()).unwrap_or_default(),
            t: stored.as_ref().map(|s| s.shares.threshold).unwrap_or(0),
            n: stored.as_ref().map(|s| s.shares.shares).unwrap_or(0),
            progress: p.as_ref().map(|p| p.shares.len()).unwrap_or(0),
            required: stored.as_ref().map(|s| s.shares.threshold).unwrap_or(0),
            new_shares: p.as_ref().map(|p| p.purpose.shares).unwrap_or(0),
            new_threshold: p.as_ref().map(|p| p.purpose.threshold).unwrap_or(0),
            complete: false,
            keys: vec![],
            keys_base64: vec![],
            target: self.rekey_target_name().into(),
            verification_required: stored.as_ref().is_some_and(|s| s.shares.pending.is_some()),
            verification_nonce: stored
                .as_ref()
                .and_then(|s| s.shares.pending.as_ref().map(|p| p.nonce.clone()))
                .unwrap_or_default(),
            verification_progress: self
                .verify_progress
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .len(),
            verified: false,
        }
    }

    /// Starts a rekey of the shares (recovery keys, or a Shamir seal's unseal keys).
    pub async fn rekey_init(
        &self,
        target: &str,
        shares: u32,
        threshold: u32,
    ) -> Result<RekeyStatus, CoreError> {
        let _op = self.ops.lock().await;
        self.unsealed()?;
        if target != self.rekey_target_name() {
            return Err(CoreError::BadRequest(format!(
                "rekey target {target:?} does not apply: this installation's shares are {} (target {:?})",
                if self.shamir_enabled().is_some() {
                    "unseal keys"
                } else {
                    "recovery keys"
                },
                self.rekey_target_name()
            )));
        }
        recovery::check_parameters(shares, threshold)
            .map_err(|e| CoreError::BadRequest(e.to_string()))?;
        if self.root_state().await?.0.shares.pending.is_some() {
            return Err(CoreError::BadRequest(
                "new shares from an earlier rekey wait for verification (`operator rekey --verify`); \
                 verify them or cancel (`operator rekey --cancel`) first"
                    .into(),
            ));
        }
        {
            let mut p = self
                .rekey_progress
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if p.is_some() {
                return Err(CoreError::BadRequest(
                    "a rekey is already in progress; cancel it first (`operator rekey --cancel`)"
                        .into(),
                ));
            }
            *p = Some(Progress {
                purpose: RekeyTarget { shares, threshold },
                nonce: crypto::random_id(),
                shares: vec![],
            });
        }
        self.audit.record_detached(
            Event::new("core", "rekey-init", "ok")
                .field("target", target.to_string())
                .field("shares", shares)
                .field("threshold", threshold),
        );
        Ok(self.rekey_status())
    }

    /// Cancels the rekey in progress, and discards new shares that wait for verification (the
    /// current shares stand).
    pub async fn rekey_cancel(&self) -> Result<(), CoreError> {
        let _op = self.ops.lock().await;
        *self
            .rekey_progress
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        self.verify_progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        if self.is_initialized() {
            let (st, rev) = self.root_state().await?;
            if st.shares.pending.is_some() {
                let mut next = st.clone();
                next.shares.pending = None;
                self.commit(&next, rev).await?;
            }
        }
        self.audit
            .record_detached(Event::new("core", "rekey-cancel", "ok"));
        Ok(())
    }

    /// Takes one current share towards the rekey started with `nonce`; returns the new shares once
    /// the quorum is complete.
    pub async fn rekey_update(&self, key: &str, nonce: &str) -> Result<RekeyStatus, CoreError> {
        let _op = self.ops.lock().await;
        let (init, _) = self.unsealed()?;
        let (st, rev) = self.root_state().await?;
        let id = init.installation_id.clone();
        let share = parse_share(
            key,
            &id,
            st.shares.threshold,
            &format!("the current {}", st.shares.role.noun()),
        )?;
        let (target, ready) = {
            let mut p = self
                .rekey_progress
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let Some(prog) = p.as_mut() else {
                return Err(CoreError::BadRequest(
                    "no rekey is in progress; start one with `operator rekey --init`".into(),
                ));
            };
            if prog.nonce != nonce {
                return Err(CoreError::BadRequest(format!(
                    "nonce {nonce:?} does not match the rekey in progress"
                )));
            }
            let Some(ready) = collect_share(&mut prog.shares, share, st.shares.threshold)? else {
                drop(p);
                return Ok(self.rekey_status());
            };
            (prog.purpose, ready)
        };
        let old_key = recovery::combine(&ready).map_err(|e| {
            CoreError::BadRequest(format!("{e}; the submitted keys were discarded"))
        })?;
        if recovery::verify(&old_key, &id, &st.shares.verifier).is_err() {
            self.audit_error(
                "rekey",
                &CoreError::BadRequest(
                    "the submitted keys do not reconstruct the current key".into(),
                ),
            );
            return Err(CoreError::BadRequest(format!(
                "the submitted {} do not reconstruct this installation's key; the submitted keys were discarded",
                st.shares.role.noun()
            )));
        }
        let new_key = Zeroizing::new(crypto::random_vec(KEY_LEN)?);
        let split = recovery::split(&new_key, target.shares, target.threshold, &id)
            .map_err(|e| CoreError::BadRequest(e.to_string()))?;
        let mut next = st.clone();
        next.shares.pending = Some(state::PendingShares {
            nonce: nonce.to_string(),
            shares: target.shares,
            threshold: target.threshold,
            verifier: recovery::verifier(&new_key, &id),
        });
        fault::point("rekey:before-commit");
        self.commit(&next, rev)
            .await
            .inspect_err(|e| self.audit_error("rekey", e))?;
        fault::point("rekey:after-commit");
        *self
            .rekey_progress
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        self.verify_progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.audit.record_detached(
            Event::new("core", "rekey", "ok")
                .field("target", self.rekey_target_name())
                .field("shares", target.shares)
                .field("threshold", target.threshold)
                .field("verification", "required"),
        );
        tracing::info!(
            shares = target.shares,
            threshold = target.threshold,
            "rekey: new shares handed out; they take effect once a quorum of them is verified"
        );
        Ok(RekeyStatus {
            started: false,
            nonce: nonce.to_string(),
            t: st.shares.threshold,
            n: st.shares.shares,
            progress: 0,
            required: target.threshold,
            new_shares: target.shares,
            new_threshold: target.threshold,
            complete: true,
            keys: split.iter().map(|s| s.to_hex()).collect(),
            keys_base64: split.iter().map(|s| s.to_base64()).collect(),
            target: self.rekey_target_name().into(),
            verification_required: true,
            verification_nonce: nonce.to_string(),
            verification_progress: 0,
            verified: false,
        })
    }

    /// Takes one of the new shares of a rekey; once a quorum of them reconstructs the new key, the
    /// new shares replace the current ones.
    pub async fn rekey_verify(&self, key: &str, nonce: &str) -> Result<RekeyStatus, CoreError> {
        let _op = self.ops.lock().await;
        let (init, keys) = self.unsealed()?;
        let (st, rev) = self.root_state().await?;
        let id = init.installation_id.clone();
        let Some(pending) = st.shares.pending.clone() else {
            return Err(CoreError::BadRequest(
                "no new shares wait for verification".into(),
            ));
        };
        if pending.nonce != nonce {
            return Err(CoreError::BadRequest(format!(
                "nonce {nonce:?} does not match the rekey waiting for verification"
            )));
        }
        let share = parse_share(key, &id, pending.threshold, "the new shares")?;
        let ready = {
            let mut p = self
                .verify_progress
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let Some(ready) = collect_share(&mut p, share, pending.threshold)? else {
                drop(p);
                return Ok(self.rekey_status());
            };
            ready
        };
        let new_key = recovery::combine(&ready).map_err(|e| {
            CoreError::BadRequest(format!("{e}; the submitted keys were discarded"))
        })?;
        if recovery::verify(&new_key, &id, &pending.verifier).is_err() {
            return Err(CoreError::BadRequest(
                "the submitted keys are not the new shares of this rekey; they were discarded"
                    .into(),
            ));
        }
        let mut next = st.clone();
        next.shares.shares = pending.shares;
        next.shares.threshold = pending.threshold;
        next.shares.verifier = pending.verifier.clone();
        next.shares.pending = None;
        if st.shares.wrapping.is_some() {
            let root = keys.root();
            next.shares.wrapping = Some(state::wrap_with_shares_key(
                &new_key,
                root.as_slice(),
                &id,
                st.generation,
            )?);
        }
        fault::point("rekey-verify:before-commit");
        self.commit(&next, rev)
            .await
            .inspect_err(|e| self.audit_error("rekey-verify", e))?;
        fault::point("rekey-verify:after-commit");
        self.audit.record_detached(
            Event::new("core", "rekey-verify", "ok")
                .field("shares", pending.shares)
                .field("threshold", pending.threshold),
        );
        tracing::info!("rekey verified: the new shares replace the old ones");
        let mut status = self.rekey_status();
        status.verified = true;
        status.t = pending.threshold;
        status.n = pending.shares;
        Ok(status)
    }

    /// Waits for the start-up known-answer tests; nothing is unsealed or initialized before they
    /// passed.
    async fn self_tests_passed(&self) -> Result<(), CoreError> {
        let mut rx = self.opts.self_tests.clone();
        let results = rx
            .wait_for(|r| r.is_some())
            .await
            .map_err(|_| CoreError::Internal("the self-tests did not run".into()))?
            .clone()
            .unwrap_or_default();
        let failed: Vec<&str> = results
            .iter()
            .filter(|t| !t.ok)
            .map(|t| t.name.as_str())
            .collect();
        if results.is_empty() || !failed.is_empty() {
            return Err(CoreError::Internal(format!(
                "cryptographic self-test failed ({}): refusing to serve",
                failed.join(", ")
            )));
        }
        Ok(())
    }

    /// Zeroizes the keys; the node stays sealed until `unseal` by an operator or a restart.
    pub async fn seal(&self) -> Result<(), CoreError> {
        let _op = self.ops.lock().await;
        *self
            .unseal_progress
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        *self
            .rekey_progress
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        match &*st {
            State::Uninitialized => Err(CoreError::NotInitialized),
            State::Sealed { init, .. } => {
                let init = init.clone();
                *st = State::Sealed { init, manual: true };
                Ok(())
            }
            State::Unsealed { init, .. } => {
                // Dropping the last Arc<UnsealedKeys> zeroizes and unlocks the key pages.
                *st = State::Sealed {
                    init: Some(init.clone()),
                    manual: true,
                };
                tracing::info!("sealed by operator; keys zeroized");
                self.audit.record_detached(Event::new("core", "seal", "ok"));
                self.audit.set_chain_key(None);
                Ok(())
            }
        }
    }

    /// Drops the keys at shutdown.
    pub fn zeroize(&self) {
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        self.audit.set_chain_key(None);
        if let State::Unsealed { init, .. } = &*st {
            *st = State::Sealed {
                init: Some(init.clone()),
                manual: true,
            };
        }
    }

    /// Wakes the auto-unseal task early (after an operator action).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn wants_auto_unseal(&self) -> bool {
        matches!(
            *self.state.read().unwrap_or_else(|p| p.into_inner()),
            State::Sealed {
                init: Some(_),
                manual: false
            }
        )
    }

    /// The auto-unseal loop: while sealed (and not sealed by an operator), try to unseal with capped
    /// exponential backoff and jitter.
    pub async fn run_auto_unseal(self: Arc<Self>) {
        let mut delay = self.opts.retry_initial;
        loop {
            if !self.wants_auto_unseal() {
                delay = self.opts.retry_initial;
                self.wake.notified().await;
                continue;
            }
            match self.unseal(Attempt::Automatic).await {
                Ok(()) => delay = self.opts.retry_initial,
                Err(CoreError::NeedsShares(_)) => {
                    self.wake.notified().await;
                }
                Err(e) if e.is_permanent() => {
                    tracing::error!(error = %e, "auto-unseal stopped: this needs an operator (fix it, then run `sealkeeper operator unseal`)");
                    self.wake.notified().await;
                }
                Err(_) => {
                    let wait = jitter(delay);
                    tracing::info!(
                        retry_in_ms = wait.as_millis() as u64,
                        "still sealed; retrying"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.wake.notified() => {}
                    }
                    delay = (delay * 2).min(self.opts.retry_max);
                }
            }
        }
    }

    /// Probes each HSM member at the configured interval, so status stays current while unsealed.
    pub async fn run_probe(self: Arc<Self>) {
        // The first probe runs a moment after start, so that it does not compete with the unseal
        // for the members, and still shows every member's health soon after a restart.
        let first = self
            .opts
            .probe_interval
            .min(std::time::Duration::from_secs(1));
        let start = tokio::time::Instant::now() + first;
        let mut interval = tokio::time::interval_at(start, self.opts.probe_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if !self.is_initialized() {
                continue;
            }
            for (_, seal) in self.enabled_autos() {
                let seal = seal.clone();
                let _ = tokio::task::spawn_blocking(move || seal.probe()).await;
            }
            self.probe_rounds
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // A seal that was down when the root key was (re)wrapped is wrapped once it answers.
            if !self.is_sealed()
                && let Ok((st, _)) = self.root_state().await
                && self
                    .enabled_autos()
                    .any(|(e, s)| s.status().healthy && !st.is_current(&e.name))
                && let Err(e) = self.catch_up().await
            {
                tracing::warn!(error = %e, "could not wrap the root key with a returning seal");
            }
        }
    }
}

/// A seal's health, and since when it is unhealthy (the latest member to go down): a Shamir seal
/// is always available.
fn seal_health(s: &SealEntry) -> (bool, Option<u64>) {
    match &s.kind {
        SealKind::Auto(a) => {
            let st = a.status();
            let since = st
                .members
                .iter()
                .filter_map(|m| m.unhealthy_since_unix)
                .max();
            (st.healthy, if st.healthy { None } else { since })
        }
        SealKind::Shamir => (true, None),
    }
}

/// Parses a submitted share and checks that it belongs to a split with `threshold` (`what` names
/// those shares in the error).
fn parse_share(
    key: &str,
    installation_id: &str,
    threshold: u32,
    what: &str,
) -> Result<Share, CoreError> {
    let share = Share::parse(key, installation_id)
        .map_err(|e| CoreError::BadRequest(format!("key rejected (it does not count): {e}")))?;
    if u32::from(share.threshold()) != threshold {
        return Err(CoreError::BadRequest(format!(
            "key rejected (it does not count): it belongs to a split with threshold {}, but {what} \
             have threshold {threshold}",
            share.threshold()
        )));
    }
    Ok(share)
}

/// Adds `share` to `collected` (a share given twice does not count twice); returns the shares,
/// leaving `collected` empty, once `threshold` of them are in.
fn collect_share(
    collected: &mut Vec<Share>,
    share: Share,
    threshold: u32,
) -> Result<Option<Vec<Share>>, CoreError> {
    if collected.iter().any(|s| s.index() == share.index()) {
        return Err(CoreError::BadRequest(
            "this key was already submitted; it does not count twice".into(),
        ));
    }
    collected.push(share);
    if collected.len() < threshold as usize {
        return Ok(None);
    }
    Ok(Some(std::mem::take(collected)))
}

/// The error of an operation that no seal could wrap for.
fn nothing_wrapped(what: &str, failed: &[(String, String)]) -> CoreError {
    CoreError::Seals {
        message: format!(
            "no seal could wrap {what}: {}",
            failed
                .iter()
                .map(|(n, e)| format!("[{n}] {e}"))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        permanent: false,
    }
}

/// "seal/member" -> (seal, member).
fn split_by(by: &str) -> (&str, &str) {
    by.split_once('/').unwrap_or(("", by))
}

fn attempt_name(a: Attempt) -> &'static str {
    match a {
        Attempt::Automatic => "automatic",
        Attempt::Operator => "operator",
    }
}

/// A random wait between half and all of `d`.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = crypto::fill_random(&mut b);
    let frac = f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX);
    d.mul_f64(0.5 + 0.5 * frac)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_and_full() {
        for _ in 0..200 {
            let j = jitter(Duration::from_secs(10));
            assert!(
                j >= Duration::from_secs(5) && j <= Duration::from_secs(10),
                "{j:?}"
            );
        }
    }
}
