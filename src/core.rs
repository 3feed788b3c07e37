//! The state machine every front end calls into: Uninitialized -> Unsealed <-> Sealed.
//!
//! `Core` alone touches keys and storage. The HTTPS listener, the admin socket, signals and the
//! background tasks (auto-unseal retry, HSM health probe) only call its methods.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex as AsyncMutex, Notify};
use zeroize::Zeroizing;

use crate::audit::{Audit, Event};
use crate::crypto::{self, KEY_LEN};
use crate::recovery;
use crate::seal::{Attempt, BlobContext, Seal, SealError, SealStatus, WrappedBlob};
use crate::secret::{LockedBytes, MemoryError, MemoryPolicy};
use crate::storage::{Expect, Storage, StorageError};
use crate::transit::{Transit, TransitError};

pub const INIT_KEY: &str = "core/init";
pub const KEYRING_KEY: &str = "core/keyring";
const ROOT_PURPOSE: &str = "root-key";

pub fn root_blob_key(seal_name: &str) -> String {
    format!("core/seal/{seal_name}/root")
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The record whose presence means "initialized". Written last at init.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitRecord {
    pub format: u32,
    pub installation_id: String,
    pub created_unix: u64,
    pub seal_type: String,
    pub seal_name: String,
    pub recovery_shares: u32,
    pub recovery_threshold: u32,
    pub recovery_verifier: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    format: u32,
    terms: Vec<KeyringTerm>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringTerm {
    term: u32,
    key: String,
    created_unix: u64,
}

/// Key material held while unsealed. Every buffer is locked and zeroized on drop.
pub struct UnsealedKeys {
    pub root: LockedBytes,
    pub keyring: Vec<(u32, LockedBytes)>,
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
        member: String,
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
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Seal(#[from] SealError),
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

impl CoreError {
    /// Retrying cannot help until an operator changes stored state, config or the host.
    pub fn is_permanent(&self) -> bool {
        match self {
            CoreError::Seal(e) => e.is_permanent(),
            CoreError::StoredState(_) | CoreError::Memory(_) | CoreError::NotInitialized => true,
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

/// Everything `operator status` and `/v1/sys/hsm-status` report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub state: String,
    pub initialized: bool,
    pub sealed: bool,
    pub seal_type: String,
    pub seal: SealStatus,
    #[serde(default)]
    pub unsealed_by: Option<String>,
    #[serde(default)]
    pub unsealed_since_unix: Option<u64>,
    pub manually_sealed: bool,
    #[serde(default)]
    pub last_unseal_error: Option<String>,
    #[serde(default)]
    pub last_unseal_attempt_unix: Option<u64>,
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
    pub hsm_self_tests: Vec<crate::seal::MemberSelfTest>,
}

pub struct Core {
    opts: CoreOptions,
    storage: Arc<dyn Storage>,
    seal: Arc<dyn Seal>,
    state: RwLock<State>,
    ops: AsyncMutex<()>,
    wake: Notify,
    last_error: RwLock<Option<(String, u64)>>,
    hsm_self_tests: RwLock<Vec<crate::seal::MemberSelfTest>>,
    memory_locked: RwLock<bool>,
    audit: Audit,
}

impl Core {
    /// Reads the stored state. A corrupt init record leaves the node sealed with the error shown in
    /// its status; it never stops the daemon.
    pub fn new(
        opts: CoreOptions,
        storage: Arc<dyn Storage>,
        seal: Arc<dyn Seal>,
        audit: Audit,
    ) -> Arc<Core> {
        let mut last_error = None;
        let state = match storage.get(INIT_KEY) {
            Ok(None) => State::Uninitialized,
            Ok(Some(rec)) => match serde_json::from_slice::<InitRecord>(&rec.value) {
                Ok(init) => State::Sealed {
                    init: Some(init),
                    manual: false,
                },
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
        Arc::new(Core {
            opts,
            storage,
            seal,
            state: RwLock::new(state),
            ops: AsyncMutex::new(()),
            wake: Notify::new(),
            last_error: RwLock::new(last_error),
            hsm_self_tests: RwLock::new(Vec::new()),
            memory_locked: RwLock::new(false),
            audit,
        })
    }

    pub fn seal_backend(&self) -> &Arc<dyn Seal> {
        &self.seal
    }

    pub fn storage_kind(&self) -> &'static str {
        self.storage.kind()
    }

    pub fn cluster_name(&self) -> String {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        let id = match &*st {
            State::Unsealed { init, .. }
            | State::Sealed {
                init: Some(init), ..
            } => init.installation_id.clone(),
            _ => String::new(),
        };
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

    /// (shares, threshold, installation id) when initialized.
    pub fn recovery_config(&self) -> Option<(u32, u32, String)> {
        match &*self.state.read().unwrap_or_else(|p| p.into_inner()) {
            State::Unsealed { init, .. }
            | State::Sealed {
                init: Some(init), ..
            } => Some((
                init.recovery_shares,
                init.recovery_threshold,
                init.installation_id.clone(),
            )),
            _ => None,
        }
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

    pub fn status(&self) -> Status {
        let seal = self.seal.status();
        let last = self
            .last_error
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        let (state, initialized, sealed, by, since, manual, init) = match &*st {
            State::Uninitialized => ("uninitialized", false, true, None, None, false, None),
            State::Sealed { init, manual } => {
                ("sealed", true, true, None, None, *manual, init.as_ref())
            }
            State::Unsealed {
                init,
                member,
                since_unix,
                ..
            } => (
                "unsealed",
                true,
                false,
                Some(member.clone()),
                Some(*since_unix),
                false,
                Some(init),
            ),
        };
        Status {
            state: state.to_string(),
            initialized,
            sealed,
            seal_type: self.seal.seal_type().to_string(),
            seal,
            unsealed_by: by,
            unsealed_since_unix: since,
            manually_sealed: manual,
            last_unseal_error: last.as_ref().map(|l| l.0.clone()),
            last_unseal_attempt_unix: last.as_ref().map(|l| l.1),
            installation_id: init.map(|i| i.installation_id.clone()),
            recovery_shares: init.map(|i| i.recovery_shares).unwrap_or(0),
            recovery_threshold: init.map(|i| i.recovery_threshold).unwrap_or(0),
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

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Arc<dyn Seal>) -> Result<T, SealError> + Send + 'static,
    ) -> Result<T, CoreError> {
        let seal = self.seal.clone();
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

    /// Initializes: a new root key wrapped by the seal, a keyring, and recovery shares returned once.
    pub async fn init(&self, shares: u32, threshold: u32) -> Result<InitResponse, CoreError> {
        let _op = self.ops.lock().await;
        if self.is_initialized() {
            return Err(CoreError::AlreadyInitialized);
        }
        recovery::check_parameters(shares, threshold)
            .map_err(|e| CoreError::BadRequest(e.to_string()))?;
        self.self_tests_passed().await?;
        let started = Instant::now();

        let installation_id = hex::encode(crypto::random_vec(16).map_err(SealError::from)?);
        let ctx = BlobContext {
            installation_id: installation_id.clone(),
            purpose: ROOT_PURPOSE.into(),
        };

        // Root key: the OS CSPRNG mixed with the HSM's generator through HKDF, so that neither a weak
        // host RNG nor a weak HSM RNG alone determines it.
        let hsm_random = Zeroizing::new(self.blocking(|s| s.random(KEY_LEN)).await?);
        let os_random = Zeroizing::new(crypto::random_vec(KEY_LEN).map_err(SealError::from)?);
        let mut root = self.locked(&[0u8; KEY_LEN])?;
        crypto::hkdf_sha256(
            &hsm_random,
            &os_random,
            b"sealkeeper root key v1",
            root.as_mut_slice(),
        )
        .map_err(SealError::from)?;

        let root_copy = Zeroizing::new(root.as_slice().to_vec());
        let wrap_ctx = ctx.clone();
        let blob = self
            .blocking(move |s| s.wrap(&wrap_ctx, &root_copy))
            .await?;
        let root_copy = Zeroizing::new(root.as_slice().to_vec());
        let verify_ctx = ctx.clone();
        let verify_blob = blob.clone();
        let unreachable = self
            .blocking(move |s| s.verify_members(&verify_ctx, &verify_blob, &root_copy))
            .await?;
        let mut warnings = Vec::new();
        for u in unreachable {
            warnings.push(format!(
                "member could not check the new blob (it must hold the same key): {u}"
            ));
        }

        // Keyring, term 1.
        let term_key = Zeroizing::new(crypto::random_vec(KEY_LEN).map_err(SealError::from)?);
        let keyring = KeyringFile {
            format: 1,
            terms: vec![KeyringTerm {
                term: 1,
                key: B64.encode(&*term_key),
                created_unix: now_unix(),
            }],
        };
        let keyring_plain = Zeroizing::new(
            serde_json::to_vec(&keyring).map_err(|e| CoreError::Internal(e.to_string()))?,
        );
        let keyring_ct = crypto::seal(
            root.as_slice(),
            keyring_aad(&installation_id).as_bytes(),
            &keyring_plain,
        )
        .map_err(SealError::from)?;

        // Recovery key: random, split, only its verifier kept.
        let recovery_key = Zeroizing::new(crypto::random_vec(KEY_LEN).map_err(SealError::from)?);
        let split = recovery::split(&recovery_key, shares, threshold)
            .map_err(|e| CoreError::BadRequest(e.to_string()))?;
        let init = InitRecord {
            format: 1,
            installation_id: installation_id.clone(),
            created_unix: now_unix(),
            seal_type: self.seal.seal_type().to_string(),
            seal_name: self.seal.name().to_string(),
            recovery_shares: shares,
            recovery_threshold: threshold,
            recovery_verifier: recovery::verifier(&recovery_key, &installation_id),
        };

        // Persist: the blob and keyring first, the init record last. A crash before the last write
        // leaves the node uninitialized, and a new init overwrites the leftovers.
        self.storage.put(
            &root_blob_key(self.seal.name()),
            &blob.to_json(),
            Expect::Any,
        )?;
        self.storage.put(KEYRING_KEY, &keyring_ct, Expect::Any)?;
        let init_json =
            serde_json::to_vec_pretty(&init).map_err(|e| CoreError::Internal(e.to_string()))?;
        self.storage.put(INIT_KEY, &init_json, Expect::Absent)?;

        let keys = Arc::new(UnsealedKeys {
            keyring: vec![(1, self.locked(&term_key)?)],
            root,
        });
        let transit = Arc::new(Transit::load(
            self.storage.clone(),
            keys.clone(),
            self.opts.memory,
        )?);
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = State::Unsealed {
            init,
            keys,
            transit,
            member: blob.wrapped_by.clone(),
            since_unix: now_unix(),
        };
        *self.last_error.write().unwrap_or_else(|p| p.into_inner()) = None;
        tracing::info!(
            seal_type = self.seal.seal_type(),
            seal = self.seal.name(),
            member = %blob.wrapped_by,
            recovery_shares = shares,
            recovery_threshold = threshold,
            duration_ms = started.elapsed().as_millis() as u64,
            "initialized; root key wrapped by the HSM, recovery shares handed out"
        );
        self.audit.record_detached(
            Event::new("core", "init", "ok")
                .field("seal", self.seal.name())
                .field("member", blob.wrapped_by.clone())
                .field("recovery_shares", shares)
                .field("recovery_threshold", threshold),
        );
        for w in &warnings {
            tracing::warn!("{w}");
        }
        Ok(InitResponse {
            keys: vec![],
            keys_base64: vec![],
            recovery_keys: split.iter().map(|s| s.to_hex()).collect(),
            recovery_keys_base64: split.iter().map(|s| s.to_base64()).collect(),
            recovery_shares: shares,
            recovery_threshold: threshold,
            warnings,
        })
    }

    /// Unseals from the HSM. Idempotent when already unsealed.
    pub async fn unseal(&self, attempt: Attempt) -> Result<(), CoreError> {
        let _op = self.ops.lock().await;
        let init = match &*self.state.read().unwrap_or_else(|p| p.into_inner()) {
            State::Uninitialized => return Err(CoreError::NotInitialized),
            State::Unsealed { .. } => return Ok(()),
            State::Sealed {
                init: Some(init),
                manual,
            } => {
                if *manual && attempt == Attempt::Automatic {
                    return Ok(());
                }
                init.clone()
            }
            State::Sealed { init: None, .. } => {
                let e = self
                    .last_error
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                return Err(CoreError::StoredState(
                    e.map(|e| e.0)
                        .unwrap_or_else(|| "init record unreadable".into()),
                ));
            }
        };
        let started = Instant::now();
        let result = match self.unseal_inner(&init, attempt).await {
            Ok(v) => self.self_tests_passed().await.map(|()| v),
            Err(e) => Err(e),
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok((keys, transit, member)) => {
                *self.state.write().unwrap_or_else(|p| p.into_inner()) = State::Unsealed {
                    init,
                    keys,
                    transit,
                    member: member.clone(),
                    since_unix: now_unix(),
                };
                *self.last_error.write().unwrap_or_else(|p| p.into_inner()) = None;
                tracing::info!(seal_type = self.seal.seal_type(), seal = self.seal.name(), member = %member, duration_ms = elapsed_ms, "unsealed");
                self.audit.record_detached(
                    Event::new("core", "unseal", "ok")
                        .field("attempt", attempt_name(attempt))
                        .field("seal", self.seal.name())
                        .field("member", member.clone())
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
                tracing::error!(seal_type = self.seal.seal_type(), seal = self.seal.name(), error = %e, duration_ms = elapsed_ms, "unseal failed");
                self.audit.record_detached(
                    Event::new("core", "unseal", "error")
                        .error(e.to_string())
                        .field("attempt", attempt_name(attempt))
                        .field("seal", self.seal.name())
                        .field("duration_ms", elapsed_ms),
                );
                Err(e)
            }
        }
    }

    async fn unseal_inner(
        &self,
        init: &InitRecord,
        attempt: Attempt,
    ) -> Result<(Arc<UnsealedKeys>, Arc<Transit>, String), CoreError> {
        if init.seal_name != self.seal.name() || init.seal_type != self.seal.seal_type() {
            return Err(CoreError::StoredState(format!(
                "this installation was initialized with seal {}:{:?}, but the configured seal is {}:{:?}",
                init.seal_type,
                init.seal_name,
                self.seal.seal_type(),
                self.seal.name()
            )));
        }
        let key = root_blob_key(self.seal.name());
        let rec = self
            .storage
            .get(&key)?
            .ok_or_else(|| CoreError::StoredState(format!("the root key blob {key} is missing")))?;
        let blob = WrappedBlob::from_json(&rec.value)
            .map_err(|e| CoreError::StoredState(format!("{key}: {e}")))?;
        let ctx = BlobContext {
            installation_id: init.installation_id.clone(),
            purpose: ROOT_PURPOSE.into(),
        };
        let unwrapped = self
            .blocking(move |s| s.unwrap(&ctx, &blob, attempt))
            .await?;
        if unwrapped.plaintext.len() != KEY_LEN {
            return Err(CoreError::StoredState(format!(
                "the HSM returned a {}-byte root key, expected {KEY_LEN}",
                unwrapped.plaintext.len()
            )));
        }
        let root = self.locked(&unwrapped.plaintext)?;
        if self.opts.fips_mode {
            let seal = self.seal.clone();
            let results = tokio::task::spawn_blocking(move || seal.self_test())
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
            match results.iter().find(|r| r.member == unwrapped.member) {
                Some(r) if r.ok => {}
                Some(r) => {
                    return Err(CoreError::StoredState(format!(
                        "fips_mode: the pairwise self-test failed on {}, which unwrapped the root key: {}",
                        r.member,
                        r.error.clone().unwrap_or_default()
                    )));
                }
                None => {}
            }
        }
        let keyring = self.open_keyring(&root, &init.installation_id)?;
        let keys = Arc::new(UnsealedKeys { root, keyring });
        let transit = Arc::new(Transit::load(
            self.storage.clone(),
            keys.clone(),
            self.opts.memory,
        )?);
        Ok((keys, transit, unwrapped.member))
    }

    fn open_keyring(
        &self,
        root: &LockedBytes,
        installation_id: &str,
    ) -> Result<Vec<(u32, LockedBytes)>, CoreError> {
        let rec = self.storage.get(KEYRING_KEY)?.ok_or_else(|| {
            CoreError::StoredState(format!("the keyring {KEYRING_KEY} is missing"))
        })?;
        let plain = Zeroizing::new(
            crypto::open(
                root.as_slice(),
                keyring_aad(installation_id).as_bytes(),
                &rec.value,
            )
            .map_err(|e| {
                CoreError::StoredState(format!("the root key does not open the keyring: {e}"))
            })?,
        );
        let file: KeyringFile = serde_json::from_slice(&plain)
            .map_err(|e| CoreError::StoredState(format!("keyring: {e}")))?;
        let mut out = Vec::new();
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
            out.push((t.term, self.locked(&k)?));
        }
        Ok(out)
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
                Ok(())
            }
        }
    }

    /// Drops the keys at shutdown.
    pub fn zeroize(&self) {
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
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
            let seal = self.seal.clone();
            let _ = tokio::task::spawn_blocking(move || seal.probe()).await;
        }
    }
}

fn attempt_name(a: Attempt) -> &'static str {
    match a {
        Attempt::Automatic => "automatic",
        Attempt::Operator => "operator",
    }
}

fn keyring_aad(installation_id: &str) -> String {
    format!("sealkeeper/v1/keyring/installation={installation_id}")
}

/// A random wait between half and all of `d`.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = crypto::fill_random(&mut b);
    let frac = f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX);
    d.mul_f64(0.5 + 0.5 * frac)
}

#[cfg(test)]
mod tests {
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
