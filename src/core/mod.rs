//! The state machine every front end calls into: Uninitialized -> Unsealed <-> Sealed, and the seal
//! lifecycle (several seals, Shamir unseal keys, rotation, rewrap, migration, recovery rekey).
//!
//! `Core` alone touches keys and storage. The HTTPS listener, the admin socket, signals and the
//! background tasks (auto-unseal retry, HSM health probe) only call its methods. The seal state is
//! one stored record (see [`state`]); every operation that changes it commits one new version with a
//! compare-and-swap write.

pub mod events;
mod init;
mod lifecycle;
mod migrate;
mod shared;
mod shares;
pub mod state;
mod status;
mod tasks;
mod types;

pub use types::{CoreError, CoreOptions, SealEntry, SealKind};

use crate::clock::now_unix;
use crate::locks::RwLockExt;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use crate::api::{
    InitResponse, RekeyStatus, RestartSafety, RewrapEntry, RewrapReport, SealInfo, ShareProgress,
    Status,
};
use crate::audit::Audit;
use crate::audit::keys::AuditKeys;
use crate::crypto::{self, KEY_LEN};
use crate::fault;
pub use crate::keyring::UnsealedKeys;
use crate::recovery::{self, Share};
use crate::seal::{Attempt, BlobContext, Seal, SealError, SealHealth, WrappedBlob};
use crate::secret::{LockedBytes, MemoryError, MemoryPolicy};
use crate::storage::{Expect, Op, Revision, Storage, StorageError};
use crate::transit::{Transit, TransitError};
pub use events::{CoreEvent, Subscriber, UnsealedBy};
use lifecycle::nothing_wrapped;
use state::{
    KeyringFile, KeyringTerm, ROOT_STATE_FORMAT, ROOT_STATE_KEY, RootState, SealWrapping,
    ShareRole, SharesState,
};

pub const INIT_KEY: &str = "core/init";
/// How long start-up waits for the init record before serving sealed and reading it again later.
const INIT_READ_AT_START: Duration = Duration::from_secs(2);
const ROOT_PURPOSE: &str = "root-key";
const INIT_FORMAT: u32 = 2;

/// The record whose presence means "initialized". Written last at init, never changed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitRecord {
    pub format: u32,
    pub installation_id: String,
    pub created_unix: u64,
}

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
        audit_keys: Arc<AuditKeys>,
        by: UnsealedBy,
        since_unix: u64,
    },
}

impl State {
    /// `uninitialized`, `sealed` or `unsealed`, as status documents and the node registry say it.
    fn name(&self) -> &'static str {
        match self {
            State::Uninitialized => "uninitialized",
            State::Sealed { .. } => "sealed",
            State::Unsealed { .. } => "unsealed",
        }
    }
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
    /// Every share ceremony in progress, behind one lock and cleared in one place.
    ceremonies: Mutex<shares::Ceremonies>,
    rewrap: RwLock<Option<RewrapReport>>,
    /// The seal state as last read or written ([`Core::stored_state`]).
    stored: RwLock<Option<RootState>>,
    audit: Audit,
    /// Who hears about every transition (the audit trail first; metrics later).
    subscribers: events::Subscribers,
    /// Unseal attempts made (automatic and operator), and completed probe rounds: what tests and
    /// operators watch to know that the background tasks ran.
    unseal_attempts: std::sync::atomic::AtomicU64,
    probe_rounds: std::sync::atomic::AtomicU64,
    /// The init record could not be read at start (the store was unreachable): the auto-unseal
    /// loop reads it again.
    init_unread: std::sync::atomic::AtomicBool,
    /// A seal state changed by another node could not be applied yet (see `follow_root_state`).
    root_behind: std::sync::atomic::AtomicBool,
    /// The nodes sharing the store, as the registry task last read them.
    cluster: RwLock<Option<crate::api::ClusterView>>,
    /// active-standby: the leader as this node last saw it, and whether it is this node.
    leader: RwLock<Option<String>>,
    is_leader: std::sync::atomic::AtomicBool,
}

/// The state that an init record read (or its failure) means, and the error to show.
fn state_from_init(
    read: Result<Option<crate::storage::Record>, StorageError>,
) -> (State, Option<(String, u64)>) {
    let broken = |e: String| {
        (
            State::Sealed {
                init: None,
                manual: false,
            },
            Some((e, now_unix())),
        )
    };
    match read {
        Ok(None) => (State::Uninitialized, None),
        Ok(Some(rec)) => match serde_json::from_slice::<InitRecord>(&rec.value) {
            Ok(init) if init.format == INIT_FORMAT => (
                State::Sealed {
                    init: Some(init),
                    manual: false,
                },
                None,
            ),
            Ok(init) => broken(format!(
                "stored state is invalid: {INIT_KEY}: format version {}; this sealkeeper reads version {INIT_FORMAT}",
                init.format
            )),
            Err(e) => broken(format!("stored state is invalid: {INIT_KEY}: {e}")),
        },
        Err(e) => broken(e.to_string()),
    }
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
        // Bounded, so that a store that does not answer (etcd away) leaves the node serving its
        // sealed status at once; the auto-unseal loop reads the record again with its backoff.
        let read = match tokio::time::timeout(INIT_READ_AT_START, storage.get(INIT_KEY)).await {
            Ok(r) => r,
            Err(_) => Err(StorageError::Unavailable {
                backend: storage.kind().to_string(),
                op: format!("read {INIT_KEY}"),
                source: format!(
                    "no answer within {}",
                    humantime::format_duration(INIT_READ_AT_START)
                )
                .into(),
            }),
        };
        // A store that could not be read is read again by the auto-unseal loop, with its backoff.
        let init_unread = matches!(read, Err(StorageError::Unavailable { .. }));
        let (state, last_error) = state_from_init(read);
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
            ceremonies: Mutex::new(shares::Ceremonies::default()),
            rewrap: RwLock::new(None),
            stored: RwLock::new(None),
            audit: audit.clone(),
            subscribers: events::Subscribers::default(),
            unseal_attempts: 0.into(),
            probe_rounds: 0.into(),
            init_unread: init_unread.into(),
            root_behind: false.into(),
            cluster: RwLock::new(None),
            leader: RwLock::new(None),
            is_leader: false.into(),
        });
        core.subscribe(Arc::new(events::AuditSubscriber(audit)));
        core.subscribe(Arc::new(events::MetricsSubscriber));
        if core.is_initialized() {
            // Errors are reported by the first unseal attempt, with the node sealed.
            let _ = core.root_state().await;
        }
        core
    }

    /// Adds a subscriber to the core's events.
    pub fn subscribe(&self, s: Arc<dyn Subscriber>) {
        self.subscribers.add(s);
    }

    fn emit(&self, event: CoreEvent) {
        self.subscribers.emit(event);
    }

    pub fn seals(&self) -> &[SealEntry] {
        &self.seals
    }

    pub fn seal_type(&self) -> &str {
        self.primary().seal_type()
    }

    pub fn storage_kind(&self) -> &'static str {
        self.storage.kind()
    }

    /// The installation id (reported as `cluster_id`), when initialized; no storage access.
    pub fn installation_id(&self) -> Option<String> {
        match &*self.state.read_recover() {
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
        !matches!(*self.state.read_recover(), State::Uninitialized)
    }

    pub fn is_sealed(&self) -> bool {
        !matches!(*self.state.read_recover(), State::Unsealed { .. })
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
        *self.stored.write_recover() = r.as_ref().ok().map(|(st, _)| st.clone());
        r
    }

    /// The seal state as last read or written by this node (`None` when it could not be read):
    /// what status documents show, without a storage round trip.
    fn stored_state(&self) -> Option<RootState> {
        self.stored.read_recover().clone()
    }

    async fn commit(&self, st: &RootState, rev: Revision) -> Result<(), CoreError> {
        self.storage
            .put(ROOT_STATE_KEY, &st.to_json(), Expect::Revision(rev))
            .await?;
        *self.stored.write_recover() = Some(st.clone());
        Ok(())
    }

    /// The keys, when unsealed. Request handlers clone the Arc and never hold the state lock.
    pub fn keys(&self) -> Option<Arc<UnsealedKeys>> {
        match &*self.state.read_recover() {
            State::Unsealed { keys, .. } => Some(keys.clone()),
            _ => None,
        }
    }

    /// What is opened with the keyring at unseal: the transit state and the audit trail's keys
    /// (handed to the audit writer here).
    async fn open_keyed_state(
        &self,
        keys: &Arc<UnsealedKeys>,
    ) -> Result<(Arc<Transit>, Arc<AuditKeys>), CoreError> {
        let transit = Transit::load(self.storage.clone(), keys.clone(), self.opts.memory).await?;
        let audit_keys = Arc::new(
            AuditKeys::derive(
                keys.clone(),
                self.storage.clone(),
                self.opts.memory,
                self.anchor_key(),
            )
            .map_err(|e| CoreError::StoredState(e.to_string()))?,
        );
        self.audit.set_chain_key(Some(audit_keys.chain_mac()));
        Ok((transit, audit_keys))
    }

    /// Where this node's audit anchor is stored: one record per node on a store that several
    /// nodes share (each node keeps its own trail), `audit/anchor` on a store of its own.
    fn anchor_key(&self) -> String {
        if self.storage.kind() == "etcd" {
            format!("audit/anchors/{}", self.opts.node_name)
        } else {
            crate::audit::keys::ANCHOR_KEY.to_string()
        }
    }

    /// The audit trail's keys, when unsealed.
    pub fn audit_keys(&self) -> Option<Arc<AuditKeys>> {
        match &*self.state.read_recover() {
            State::Unsealed { audit_keys, .. } => Some(audit_keys.clone()),
            _ => None,
        }
    }

    /// The transit state, when unsealed.
    pub fn transit(&self) -> Option<Arc<Transit>> {
        match &*self.state.read_recover() {
            State::Unsealed { transit, .. } => Some(transit.clone()),
            _ => None,
        }
    }

    fn unsealed(&self) -> Result<(InitRecord, Arc<UnsealedKeys>), CoreError> {
        match &*self.state.read_recover() {
            State::Unsealed { init, keys, .. } => Ok((init.clone(), keys.clone())),
            State::Uninitialized => Err(CoreError::NotInitialized),
            State::Sealed { .. } => Err(CoreError::Sealed),
        }
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
        *self.memory_locked.write_recover() = b.is_locked();
        Ok(b)
    }

    fn sealed_init(&self, attempt: Attempt) -> Result<Option<InitRecord>, CoreError> {
        match &*self.state.read_recover() {
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
                let e = self.last_error.read_recover().clone();
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
                tracing::info!(seal_type = self.seal_type(), seal = %by.seal, member = %by.member, duration_ms = elapsed_ms, "unsealed");
                self.emit(CoreEvent::Unsealed {
                    attempt: attempt_name(attempt),
                    by,
                    duration_ms: elapsed_ms,
                });
                Ok(())
            }
            Err(e) => {
                if attempt == Attempt::Operator {
                    // The operator wants the node unsealed: automatic retries resume.
                    if let State::Sealed { manual, .. } = &mut *self.state.write_recover() {
                        *manual = false;
                    }
                }
                *self.last_error.write_recover() = Some((e.to_string(), now_unix()));
                if matches!(e, CoreError::NeedsShares(_)) {
                    tracing::info!(reason = %e, "sealed; waiting for operators");
                } else {
                    tracing::error!(seal_type = self.seal_type(), error = %e, duration_ms = elapsed_ms, "unseal failed");
                    self.emit(CoreEvent::UnsealFailed {
                        attempt: attempt_name(attempt),
                        error: e.to_string(),
                        duration_ms: elapsed_ms,
                    });
                }
                Err(e)
            }
        }
    }

    async fn unseal_auto(
        &self,
        init: &InitRecord,
        attempt: Attempt,
    ) -> Result<UnsealedBy, CoreError> {
        let (st, _) = self.root_state().await?;
        let (root, by) = self.unwrap_root(init, &st, attempt).await?;
        self.activate(init.clone(), &st, root, by.clone()).await?;
        Ok(by)
    }

    /// The current root key of `st`, unwrapped by the first enabled auto seal (by priority) that
    /// holds a current wrapping of it and answers.
    async fn unwrap_root(
        &self,
        init: &InitRecord,
        st: &RootState,
        attempt: Attempt,
    ) -> Result<(LockedBytes, UnsealedBy), CoreError> {
        if let Some((old, new)) = self.migration(st) {
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
                    let by = UnsealedBy::new(&entry.name, &u.member);
                    for (n, e) in &errors {
                        tracing::warn!(seal = %n, error = %e, "a higher-priority seal could not unseal; the next one did");
                    }
                    return Ok((root, by));
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
                    .map(|(n, e)| lifecycle::named(n, e))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            permanent,
        })
    }

    /// Opens the keyring with `root` and switches to Unsealed.
    async fn activate(
        &self,
        init: InitRecord,
        st: &RootState,
        root: LockedBytes,
        by: UnsealedBy,
    ) -> Result<(), CoreError> {
        if !state::root_matches(root.as_slice(), &init.installation_id, &st.root_check) {
            return Err(CoreError::StoredState(
                "the unwrapped key is not this installation's current root key".into(),
            ));
        }
        let keyring = self.keyring_terms(root.as_slice(), &init, st)?;
        let keys = Arc::new(UnsealedKeys::from_shared(root, keyring));
        let (transit, audit_keys) = self.open_keyed_state(&keys).await?;
        *self.state.write_recover() = State::Unsealed {
            init,
            keys,
            transit,
            audit_keys,
            by,
            since_unix: now_unix(),
        };
        *self.last_error.write_recover() = None;
        self.wake.notify_one();
        Ok(())
    }

    /// Every term of the keyring stored in `st`, opened with `root`, in locked memory.
    fn keyring_terms(
        &self,
        root: &[u8],
        init: &InitRecord,
        st: &RootState,
    ) -> Result<Vec<(u32, Arc<LockedBytes>)>, CoreError> {
        let file = state::open_keyring(root, &init.installation_id, &st.keyring)
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
        Ok(keyring)
    }

    /// Zeroizes the keys; the node stays sealed until `unseal` by an operator or a restart.
    pub async fn seal(&self) -> Result<(), CoreError> {
        let _op = self.ops.lock().await;
        // Shares given before the seal do not count after it (the verification of a rekey's new
        // shares included).
        self.ceremonies().clear();
        let mut st = self.state.write_recover();
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
                self.emit(CoreEvent::Sealed);
                self.audit.set_chain_key(None);
                Ok(())
            }
        }
    }

    /// Drops the keys at shutdown.
    pub fn zeroize(&self) {
        let mut st = self.state.write_recover();
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
}

fn attempt_name(a: Attempt) -> &'static str {
    match a {
        Attempt::Automatic => "automatic",
        Attempt::Operator => "operator",
    }
}

#[cfg(test)]
mod tests;
