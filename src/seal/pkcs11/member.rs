//! One HSM member: a dedicated thread that owns the member's PKCS#11 session (sessions are `Send`
//! but not `Sync`), and a handle that sends it work and waits at most the member's timeout. A member
//! whose call does not come back is marked down ("hung") and given no more work until that call
//! returns, so a hanging network HSM never blocks the daemon.

use crate::clock::now_unix;
use crate::locks::MutexExt;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism as CkMechanism;
use cryptoki::mechanism::MechanismType;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use secrecy::{ExposeSecret, SecretString};
use zeroize::{Zeroize, Zeroizing};

use super::config::{Mechanism, OaepHash, PinSource, TokenSelector};
use super::error::{ErrorKind, HsmError, MemberError};
use super::module::{CallGuard, Module, ModuleRegistry};
use crate::seal::{MemberHealth, MemberState};

/// Everything a member needs to know, fixed at start.
#[derive(Debug, Clone)]
pub struct MemberSpec {
    /// The seal this member belongs to (metrics name it).
    pub seal: String,
    pub name: String,
    pub lib: PathBuf,
    pub selector: TokenSelector,
    pub pin: PinSource,
    pub rw_session: bool,
    pub timeout: Duration,
    pub key_label: String,
    pub key_id: Option<Vec<u8>>,
    pub mechanism: Mechanism,
    /// fips_mode: RSA keys below 2048 bits are refused.
    pub fips_mode: bool,
}

type Job = Box<dyn FnOnce(&mut Worker) + Send>;

/// The handle the seal uses.
pub struct Member {
    pub spec: Arc<MemberSpec>,
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    /// Set by a caller that timed out while a call was running; cleared when that call returns.
    stuck: Arc<AtomicBool>,
    /// When the call now running on the worker started.
    running_since: Arc<Mutex<Option<Instant>>>,
    status: Mutex<MemberHealth>,
}

impl Member {
    pub fn start(spec: MemberSpec, registry: Arc<ModuleRegistry>) -> Member {
        let spec = Arc::new(spec);
        let (tx, rx) = mpsc::channel::<Job>();
        let worker_spec = spec.clone();
        let stuck = Arc::new(AtomicBool::new(false));
        let running_since = Arc::new(Mutex::new(None));
        let (preload_stuck, preload_since) = (stuck.clone(), running_since.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("hsm-{}", spec.name))
            .spawn(move || {
                let module = registry.get(&worker_spec.lib);
                // Loading the module (dlopen, C_Initialize) is the longest step of a start, and
                // needs no PIN: it is done now, while the daemon opens its storage, TLS and audit
                // trail, rather than inside the first unwrap. A failure here is left for that
                // first call to meet and report (the context is retried while it is absent). It
                // counts as a running call, so that a module stuck in C_Initialize gets the
                // member marked hung by the first caller that times out, as a stuck call would.
                running(&preload_since, &preload_stuck, || {
                    let guard = module.enter();
                    let _ = module.context(&guard);
                });
                let mut w = Worker::new(worker_spec, module);
                while let Ok(job) = rx.recv() {
                    job(&mut w);
                }
                w.close();
            });
        let tx = match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::error!(member = %spec.name, error = %e, "cannot start HSM worker thread");
                None
            }
        };
        let status = MemberHealth {
            name: spec.name.clone(),
            state: MemberState::Unknown,
            healthy: false,
            last_error: None,
            last_checked_unix: None,
            unhealthy_since_unix: None,
            detail: [
                ("token".to_string(), spec.selector.to_string().into()),
                ("lib".to_string(), spec.lib.display().to_string().into()),
            ]
            .into(),
        };
        Member {
            spec,
            tx: Mutex::new(tx),
            stuck,
            running_since,
            status: Mutex::new(status),
        }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn status(&self) -> MemberHealth {
        self.status.lock_recover().clone()
    }

    /// Runs `f` on the member's thread, waiting at most the member's timeout, and records the
    /// outcome in the member's status.
    pub fn call<R: Send + 'static>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&mut Worker) -> Result<R, HsmError> + Send + 'static,
    ) -> Result<R, MemberError> {
        let started = Instant::now();
        let result = self.call_inner(f);
        // Counted as the member's health counts it: a call this host could not make is not one.
        if let Some(ok) = self.record(&result) {
            crate::metrics::get().seal_call(
                &self.spec.seal,
                &self.spec.name,
                operation,
                started.elapsed(),
                ok,
            );
        }
        result.map_err(|error| MemberError {
            member: self.spec.name.clone(),
            error,
        })
    }

    fn call_inner<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Worker) -> Result<R, HsmError> + Send + 'static,
    ) -> Result<R, HsmError> {
        if self.stuck.load(Ordering::SeqCst) {
            let since = self.running_since.lock_recover().map(|t| t.elapsed());
            return Err(HsmError::new(
                ErrorKind::Hung,
                format!(
                    "an earlier call has been stuck in the PKCS#11 module for {}s; member abandoned until it returns",
                    since.map(|d| d.as_secs()).unwrap_or(0)
                ),
            ));
        }
        let (rtx, rrx) = mpsc::sync_channel::<Result<R, HsmError>>(1);
        let abandoned = Arc::new(AtomicBool::new(false));
        let job: Job = {
            let abandoned = abandoned.clone();
            let stuck = self.stuck.clone();
            let running_since = self.running_since.clone();
            Box::new(move |w: &mut Worker| {
                // A caller that gave up (its timeout passed while this job was queued) gets no
                // HSM work done on its behalf later.
                if abandoned.load(Ordering::SeqCst) {
                    return;
                }
                let r = running(&running_since, &stuck, || f(w));
                let _ = rtx.send(r);
            })
        };
        let sent = {
            let tx = self.tx.lock_recover();
            tx.as_ref().map(|t| t.send(job).is_ok()).unwrap_or(false)
        };
        if !sent {
            return Err(HsmError::new(
                ErrorKind::Other,
                "HSM worker thread is not running",
            ));
        }
        // The wait includes time queued behind another caller's call to the same member.
        match rrx.recv_timeout(self.spec.timeout) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                abandoned.store(true, Ordering::SeqCst);
                if self.running_since.lock_recover().is_some() {
                    self.stuck.store(true, Ordering::SeqCst);
                }
                Err(HsmError::new(
                    ErrorKind::Timeout,
                    format!(
                        "no answer within {:?}; member marked down",
                        self.spec.timeout
                    ),
                ))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(HsmError::new(ErrorKind::Other, "HSM worker thread stopped"))
            }
        }
    }

    /// Records a call's outcome in the member's status; returns whether the member answered
    /// healthily, or None when the HSM was not asked at all.
    fn record<R>(&self, result: &Result<R, HsmError>) -> Option<bool> {
        let mut st = self.status.lock_recover();
        if let Err(e) = result
            && e.kind == ErrorKind::LocalResource
        {
            // Out of descriptors or memory here: the HSM was not asked, so its health stands.
            tracing::warn!(member = %st.name, error = %e, "HSM member not checked: this host is out of resources");
            return None;
        }
        st.last_checked_unix = Some(now_unix());
        let (state, healthy, err) = match result {
            Ok(_) => (MemberState::Healthy, true, None),
            // The HSM answered; the data was bad. The member itself is fine.
            Err(e) if e.kind == ErrorKind::Authentication => (MemberState::Healthy, true, None),
            Err(e) if matches!(e.kind, ErrorKind::Pin | ErrorKind::PinBlocked) => {
                (MemberState::PinRejected, false, Some(e.to_string()))
            }
            Err(e) if matches!(e.kind, ErrorKind::Timeout | ErrorKind::Hung) => {
                (MemberState::Hung, false, Some(e.to_string()))
            }
            Err(e) => (MemberState::Down, false, Some(e.to_string())),
        };
        if healthy {
            st.unhealthy_since_unix = None;
        } else if st.healthy || st.unhealthy_since_unix.is_none() {
            st.unhealthy_since_unix = Some(now_unix());
        }
        if st.state != state {
            if healthy {
                tracing::info!(member = %st.name, "HSM member is healthy");
            } else {
                tracing::warn!(member = %st.name, state = state.as_str(), error = err.as_deref().unwrap_or(""), "HSM member is unhealthy");
            }
        }
        st.state = state;
        st.healthy = healthy;
        st.last_error = err;
        Some(healthy)
    }

    /// Asks the worker to close its session and stop, waiting at most the timeout.
    pub fn shutdown(&self) {
        if !self.stuck.load(Ordering::SeqCst) {
            let _ = self.call_inner(|w| {
                w.close();
                Ok(())
            });
        }
        // Dropping the sender ends the worker loop.
        self.tx.lock_recover().take();
    }
}

struct Open {
    session: Session,
    generation: u64,
}

/// A rejected PIN, remembered only as an HMAC under a random key made when it was rejected: no
/// random generator is needed on the unseal path until a PIN fails.
struct PinLatch {
    key: [u8; 32],
    fingerprint: [u8; 32],
}

impl PinLatch {
    fn new(pin: &SecretString) -> PinLatch {
        let mut key = [0u8; 32];
        let _ = crate::crypto::fill_random(&mut key);
        PinLatch {
            key,
            fingerprint: crate::crypto::hmac_sha256(&key, pin.expose_secret().as_bytes()),
        }
    }

    fn matches(&self, pin: &SecretString) -> bool {
        crate::crypto::hmac_sha256_verify(
            &self.key,
            pin.expose_secret().as_bytes(),
            &self.fingerprint,
        )
    }
}

/// The state living on a member's thread.
pub struct Worker {
    spec: Arc<MemberSpec>,
    module: Arc<Module>,
    open: Option<Open>,
    latch: Option<PinLatch>,
    /// Whether the current call may try a PIN that was rejected before (an operator's request).
    pub override_latch: bool,
    /// The key (label, id) of the current call when it is not the configured one: a blob wrapped
    /// by a key the configuration no longer names is unwrapped with the key it records.
    pub key_override: Option<(String, Option<Vec<u8>>)>,
}

/// Runs `f` on the worker thread as a call in progress: `since` says when it started (a caller
/// that times out meanwhile marks the member stuck), and its return clears `stuck`.
fn running<T>(since: &Mutex<Option<Instant>>, stuck: &AtomicBool, f: impl FnOnce() -> T) -> T {
    *since.lock_recover() = Some(Instant::now());
    let r = f();
    *since.lock_recover() = None;
    stuck.store(false, Ordering::SeqCst);
    r
}

impl Worker {
    fn new(spec: Arc<MemberSpec>, module: Arc<Module>) -> Worker {
        Worker {
            spec,
            module,
            open: None,
            latch: None,
            override_latch: false,
            key_override: None,
        }
    }

    fn read_pin(&self) -> Result<SecretString, HsmError> {
        let bad = |m: String| HsmError::new(ErrorKind::PinSource, m);
        let mut raw = match &self.spec.pin {
            PinSource::Inline(p) => p.expose_secret().to_string(),
            PinSource::Env(var) => std::env::var(var).map_err(|_| {
                bad(format!(
                    "PIN environment variable {var} is not set or not UTF-8"
                ))
            })?,
            PinSource::File(path) => read_secret_file(path)?,
            PinSource::Credential(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                    bad(format!(
                        "pin_credential {name:?} needs $CREDENTIALS_DIRECTORY (systemd LoadCredential=)"
                    ))
                })?;
                read_secret_file(&PathBuf::from(dir).join(name))?
            }
        };
        let trimmed = raw.trim_end_matches(['\r', '\n']).to_string();
        raw.zeroize();
        if trimmed.is_empty() {
            return Err(bad("the PIN source is empty".into()));
        }
        Ok(SecretString::from(trimmed))
    }

    fn find_slot(&self, ctx: &cryptoki::context::Pkcs11) -> Result<Slot, HsmError> {
        let slots = ctx
            .get_slots_with_token()
            .map_err(HsmError::from_cryptoki)?;
        for slot in slots {
            let hit = match &self.spec.selector {
                TokenSelector::Slot(id) => slot.id() == *id,
                TokenSelector::Label(label) => ctx
                    .get_token_info(slot)
                    .map(|t| t.label().trim_end() == label)
                    .unwrap_or(false),
                TokenSelector::Serial(serial) => ctx
                    .get_token_info(slot)
                    .map(|t| t.serial_number().trim_end() == serial)
                    .unwrap_or(false),
            };
            if hit {
                return Ok(slot);
            }
        }
        Err(HsmError::new(
            ErrorKind::TokenNotFound,
            format!(
                "no token with {} is present; {}",
                self.spec.selector,
                shown_tokens(ctx, &self.spec.lib)
            ),
        ))
    }

    /// An open, logged-in session of the current module generation. The caller holds the
    /// module's call gate.
    fn ensure(&mut self, guard: &CallGuard<'_>) -> Result<(), HsmError> {
        let (ctx, generation) = self.module.context(guard)?;
        if self
            .open
            .as_ref()
            .is_some_and(|o| o.generation != generation)
        {
            // Belongs to a finalized module: its handle may now name someone else's session, so it
            // is forgotten, never closed.
            self.open = None;
        }
        if self.open.is_none() {
            let pin = self.read_pin()?;
            if let Some(latch) = &self.latch
                && latch.matches(&pin)
                && !self.override_latch
            {
                return Err(HsmError::new(
                    ErrorKind::PinBlocked,
                    "the configured PIN was rejected before and has not changed; not logging in again \
                         (fix the PIN source, or run `sealkeeper operator unseal` to try it once more)",
                ));
            }
            let slot = self.find_slot(&ctx)?;
            let session = if self.spec.rw_session {
                ctx.open_rw_session_no_drop(slot)
            } else {
                ctx.open_ro_session_no_drop(slot)
            }
            .map_err(HsmError::from_cryptoki)?;
            match session.login(UserType::User, Some(&pin)) {
                Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                    self.latch = None;
                }
                Err(e) => {
                    let err = HsmError::from_cryptoki(e);
                    if err.kind == ErrorKind::Pin {
                        self.latch = Some(PinLatch::new(&pin));
                    }
                    let _ = session.close();
                    return Err(err);
                }
            }
            self.open = Some(Open {
                session,
                generation,
            });
        }
        Ok(())
    }

    fn drop_session(&mut self, close: bool) {
        if let Some(o) = self.open.take()
            && close
        {
            let module = self.module.clone();
            let _guard = module.enter();
            if o.generation == module.generation() {
                let _ = o.session.logout();
                let _ = o.session.close();
            }
        }
    }

    /// Runs `op` with a session, recovering once from a lost session and once more by
    /// re-initializing the module, before giving up.
    fn with_session<R>(
        &mut self,
        mut op: impl FnMut(&Session, &MemberSpec) -> Result<R, HsmError>,
    ) -> Result<R, HsmError> {
        let mut recoveries = 0;
        let spec: Arc<MemberSpec> = match &self.key_override {
            Some((label, id)) => Arc::new(MemberSpec {
                key_label: label.clone(),
                key_id: id.clone(),
                ..(*self.spec).clone()
            }),
            None => self.spec.clone(),
        };
        loop {
            // Every call into the module holds its call gate, so no other member can finalize it
            // meanwhile; the guard is released before a re-initialisation below.
            let module = self.module.clone();
            let guard = module.enter();
            let generation = module.generation();
            let result = match (self.ensure(&guard), &self.open) {
                (Ok(()), Some(o)) => op(&o.session, &spec),
                (Ok(()), None) => Err(HsmError::new(ErrorKind::Other, "session unavailable")),
                (Err(e), _) => Err(e),
            };
            drop(guard);
            match result {
                Ok(r) => return Ok(r),
                Err(e) if e.recoverable() && recoveries < 2 => {
                    recoveries += 1;
                    tracing::info!(member = %self.spec.name, error = %e, attempt = recoveries, "recovering PKCS#11 session");
                    self.drop_session(!e.needs_reinit());
                    if e.needs_reinit() || recoveries == 2 {
                        self.module.reinit(generation, self.spec.timeout / 2);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn find_key(
    spec: &MemberSpec,
    session: &Session,
    class: ObjectClass,
) -> Result<ObjectHandle, HsmError> {
    let mut template = vec![
        Attribute::Class(class),
        Attribute::Label(spec.key_label.as_bytes().to_vec()),
    ];
    if let Some(id) = &spec.key_id {
        template.push(Attribute::Id(id.clone()));
    }
    let found = session
        .find_objects(&template)
        .map_err(HsmError::from_cryptoki)?;
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(HsmError::new(
            ErrorKind::Key,
            format!(
                "no {} with label {:?}{} on the token",
                class_name(class),
                spec.key_label,
                id_note(&spec.key_id)
            ),
        )),
        many => Err(HsmError::new(
            ErrorKind::Key,
            format!(
                "{} objects of class {} have label {:?}; set key_id to choose one",
                many.len(),
                class_name(class),
                spec.key_label
            ),
        )),
    }
}

/// Logs a warning when the seal key could leave the HSM.
fn check_key_attributes(spec: &MemberSpec, session: &Session, key: ObjectHandle) {
    if let Ok(attrs) =
        session.get_attributes(key, &[AttributeType::Sensitive, AttributeType::Extractable])
    {
        for a in attrs {
            match a {
                Attribute::Sensitive(false) => {
                    tracing::warn!(member = %spec.name, key = %spec.key_label, "seal key is not CKA_SENSITIVE")
                }
                Attribute::Extractable(true) => {
                    tracing::warn!(member = %spec.name, key = %spec.key_label, "seal key is CKA_EXTRACTABLE")
                }
                _ => {}
            }
        }
    }
}

impl Worker {
    pub fn random(&mut self, len: usize) -> Result<Vec<u8>, HsmError> {
        self.with_session(|s, _spec| {
            let mut buf = vec![0u8; len];
            s.generate_random_slice(&mut buf)
                .map_err(HsmError::from_cryptoki)?;
            Ok(buf)
        })
    }

    /// AES-GCM encryption on the HSM. Returns (IV actually used, ciphertext || tag). The IV buffer
    /// is read back after C_Encrypt: HSMs that choose their own IV write it there.
    pub fn gcm_encrypt(
        &mut self,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), HsmError> {
        self.with_session(|s, spec| {
            let key = find_key(spec, s, ObjectClass::SECRET_KEY)?;
            check_key_attributes(spec, s, key);
            let mut iv = vec![0u8; 12];
            s.generate_random_slice(&mut iv)
                .map_err(HsmError::from_cryptoki)?;
            let params = GcmParams::new(&mut iv, aad, 128.into())
                .map_err(|e| HsmError::new(ErrorKind::Other, e.to_string()))?;
            let ct = s
                .encrypt(&CkMechanism::AesGcm(params), key, plaintext)
                .map_err(HsmError::from_cryptoki)?;
            Ok((iv, ct))
        })
    }

    pub fn gcm_decrypt(
        &mut self,
        iv: &[u8],
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        self.with_session(|s, spec| {
            let key = find_key(spec, s, ObjectClass::SECRET_KEY)?;
            let mut iv = iv.to_vec();
            let params = GcmParams::new(&mut iv, aad, 128.into())
                .map_err(|e| HsmError::new(ErrorKind::Other, e.to_string()))?;
            let pt = s
                .decrypt(&CkMechanism::AesGcm(params), key, ciphertext)
                .map_err(HsmError::from_decrypt)?;
            Ok(Zeroizing::new(pt))
        })
    }

    fn oaep(hash: OaepHash) -> PkcsOaepParams<'static> {
        let (h, mgf) = match hash {
            OaepHash::Sha1 => (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
            OaepHash::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
            OaepHash::Sha384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384),
            OaepHash::Sha512 => (MechanismType::SHA512, PkcsMgfType::MGF1_SHA512),
        };
        PkcsOaepParams::new(h, mgf, PkcsOaepSource::empty())
    }

    pub fn rsa_encrypt(&mut self, plaintext: &[u8], hash: OaepHash) -> Result<Vec<u8>, HsmError> {
        self.with_session(|s, spec| {
            let key = find_key(spec, s, ObjectClass::PUBLIC_KEY)?;
            check_rsa_size(spec, s, key)?;
            s.encrypt(&CkMechanism::RsaPkcsOaep(Self::oaep(hash)), key, plaintext)
                .map_err(HsmError::from_cryptoki)
        })
    }

    pub fn rsa_decrypt(
        &mut self,
        ciphertext: &[u8],
        hash: OaepHash,
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        self.with_session(|s, spec| {
            let key = find_key(spec, s, ObjectClass::PRIVATE_KEY)?;
            s.decrypt(&CkMechanism::RsaPkcsOaep(Self::oaep(hash)), key, ciphertext)
                .map(Zeroizing::new)
                .map_err(HsmError::from_decrypt)
        })
    }

    /// Wraps random bytes with the seal mechanism, unwraps them and compares: the pairwise
    /// round trip of the self-tests and of `hsm probe`.
    pub fn round_trip(&mut self, mechanism: Mechanism, aad: &[u8]) -> Result<(), HsmError> {
        let input = Zeroizing::new(
            crate::crypto::random_vec(crate::crypto::KEY_LEN)
                .map_err(|e| HsmError::new(ErrorKind::Other, e.to_string()))?,
        );
        let back = match mechanism {
            Mechanism::AesGcm => {
                let (iv, ct) = self.gcm_encrypt(&input, aad)?;
                self.gcm_decrypt(&iv, &ct, aad)?
            }
            Mechanism::RsaOaep(h) => {
                let ct = self.rsa_encrypt(&input, h)?;
                self.rsa_decrypt(&ct, h)?
            }
        };
        if back.as_slice() == input.as_slice() {
            Ok(())
        } else {
            Err(HsmError::new(
                ErrorKind::Other,
                "the round trip returned different bytes",
            ))
        }
    }

    /// A cheap liveness check: the session answers, the token is present, the key is there.
    pub fn probe(&mut self) -> Result<(), HsmError> {
        let class = match self.spec.mechanism {
            Mechanism::AesGcm => ObjectClass::SECRET_KEY,
            Mechanism::RsaOaep(_) => ObjectClass::PRIVATE_KEY,
        };
        self.with_session(|s, spec| {
            s.get_session_info().map_err(HsmError::from_cryptoki)?;
            find_key(spec, s, class).map(|_| ())
        })
    }

    fn close(&mut self) {
        self.drop_session(true);
    }
}

/// What the module does show, for an error that says a token is missing: its slots with tokens, by
/// number, label and serial, and for SoftHSM the setting that picks its token directory.
fn shown_tokens(ctx: &cryptoki::context::Pkcs11, lib: &std::path::Path) -> String {
    let mut seen = Vec::new();
    if let Ok(slots) = ctx.get_slots_with_token() {
        for slot in slots {
            match ctx.get_token_info(slot) {
                // SoftHSM always offers one empty slot for the next token.
                Ok(t) if !t.token_initialized() => {}
                Ok(t) => seen.push(format!(
                    "slot {} token label {:?} serial {:?}",
                    slot.id(),
                    t.label().trim_end(),
                    t.serial_number().trim_end()
                )),
                Err(_) => seen.push(format!("slot {} (token unreadable)", slot.id())),
            }
        }
    }
    let mut text = if seen.is_empty() {
        format!("the module {} shows no initialized token", lib.display())
    } else {
        format!("the module {} shows: {}", lib.display(), seen.join(", "))
    };
    let softhsm = lib
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.contains("softhsm"));
    if softhsm {
        text.push_str(
            " (SoftHSM reads its token directory from the file named by SOFTHSM2_CONF, set in the \
             daemon's environment)",
        );
    }
    text
}

/// In fips_mode, RSA keys must have at least 2048 bits.
fn check_rsa_size(spec: &MemberSpec, session: &Session, key: ObjectHandle) -> Result<(), HsmError> {
    if !spec.fips_mode {
        return Ok(());
    }
    let attrs = session
        .get_attributes(key, &[AttributeType::ModulusBits])
        .map_err(HsmError::from_cryptoki)?;
    let bits = attrs.iter().find_map(|a| match a {
        Attribute::ModulusBits(b) => Some(u64::from(*b)),
        _ => None,
    });
    match bits {
        Some(b) if b >= 2048 => Ok(()),
        Some(b) => Err(HsmError::new(
            ErrorKind::Mechanism,
            format!(
                "RSA key {:?} has {b} bits; fips_mode requires at least 2048",
                spec.key_label
            ),
        )),
        None => Err(HsmError::new(
            ErrorKind::Mechanism,
            "the RSA key's CKA_MODULUS_BITS cannot be read",
        )),
    }
}

fn class_name(c: ObjectClass) -> &'static str {
    if c == ObjectClass::SECRET_KEY {
        "secret key"
    } else if c == ObjectClass::PRIVATE_KEY {
        "private key"
    } else if c == ObjectClass::PUBLIC_KEY {
        "public key"
    } else {
        "object"
    }
}

fn id_note(id: &Option<Vec<u8>>) -> String {
    id.as_ref()
        .map(|i| format!(" and id {}", hex::encode(i)))
        .unwrap_or_default()
}

/// Reads a PIN file, refusing one that group or others can read. Running out of descriptors or
/// memory is a local condition ([`ErrorKind::LocalResource`]), not a bad PIN source.
fn read_secret_file(path: &std::path::Path) -> Result<String, HsmError> {
    let fail = |what: &str, e: std::io::Error| {
        HsmError::new(
            io_error_kind(&e),
            format!("cannot {what} PIN file {}: {e}", path.display()),
        )
    };
    let mut f = std::fs::File::open(path).map_err(|e| fail("open", e))?;
    let meta = f.metadata().map_err(|e| fail("stat", e))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(HsmError::new(
            ErrorKind::PinSource,
            format!(
                "PIN file {} is accessible by group or others (mode {:o}); chmod 0600 it",
                path.display(),
                mode & 0o777
            ),
        ));
    }
    let mut s = String::new();
    f.read_to_string(&mut s).map_err(|e| fail("read", e))?;
    Ok(s)
}

/// What an I/O failure reading a PIN source means for the member.
fn io_error_kind(e: &std::io::Error) -> ErrorKind {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM) => ErrorKind::LocalResource,
        _ => ErrorKind::PinSource,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_descriptors_is_not_an_hsm_failure() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOMEM] {
            assert_eq!(
                io_error_kind(&std::io::Error::from_raw_os_error(errno)),
                ErrorKind::LocalResource
            );
        }
        assert_eq!(
            io_error_kind(&std::io::Error::from_raw_os_error(libc::ENOENT)),
            ErrorKind::PinSource
        );
        let m = Member::start(
            MemberSpec {
                seal: "s".into(),
                name: "m".into(),
                lib: PathBuf::from("/nonexistent/libpkcs11.so"),
                selector: TokenSelector::Slot(0),
                pin: PinSource::Env("SK_TEST_UNSET_PIN".into()),
                rw_session: false,
                timeout: Duration::from_secs(5),
                key_label: "k".into(),
                key_id: None,
                mechanism: Mechanism::AesGcm,
                fips_mode: false,
            },
            ModuleRegistry::new(),
        );
        m.record(&Ok(()));
        assert_eq!(m.status().state, MemberState::Healthy);
        m.record::<()>(&Err(HsmError::new(ErrorKind::LocalResource, "os error 24")));
        let st = m.status();
        assert!(st.healthy && st.state == MemberState::Healthy && st.last_error.is_none());
        m.record::<()>(&Err(HsmError::new(ErrorKind::PinSource, "gone")));
        assert_eq!(m.status().state, MemberState::Down);
        // The HSM refused the data: the member answered and is healthy.
        use cryptoki::{context::Function, error::Error as CkError, error::RvError};
        let refused = |rv| HsmError::from_decrypt(CkError::Pkcs11(rv, Function::Decrypt));
        m.record::<()>(&Err(refused(RvError::EncryptedDataInvalid)));
        assert_eq!(m.status().state, MemberState::Healthy);
        // The HSM failed: the member is down, whatever it was decrypting.
        m.record::<()>(&Err(refused(RvError::FunctionFailed)));
        let st = m.status();
        assert!(
            !st.healthy && st.state == MemberState::Down,
            "{:?}",
            st.state
        );
        assert!(
            st.last_error
                .as_deref()
                .is_some_and(|e| e.contains("CKR_FUNCTION_FAILED"))
        );
        m.shutdown();
    }
}
