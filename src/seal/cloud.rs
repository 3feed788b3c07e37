//! What every cloud KMS seal shares: a small runtime of its own on which the provider's async SDK
//! runs (the [`Seal`](super::Seal) trait blocks), each call under the seal's timeout; a member's
//! health and the hold put on it after an answer that needs an operator; and the error type with
//! the provider's code and what to check.

use std::fmt;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Attempt, FailureKind, MemberHealth, MemberState};
use crate::clock::now_unix;
use crate::locks::MutexExt;

#[derive(Debug, Clone)]
pub struct KmsError {
    pub kind: FailureKind,
    /// The KMS operation (`Decrypt`, `DescribeKey`, ...).
    pub op: &'static str,
    /// The provider's error code (`AccessDeniedException`), when it answered with one.
    pub code: Option<String>,
    pub message: String,
    /// What an operator should check.
    pub hint: Option<String>,
    /// A rate limit answer (ThrottlingException, 429): retried like an unreachable region.
    pub throttled: bool,
    /// Not asked again: the answer is the one the region gave before (see `denied_retry`).
    pub held: bool,
}

impl KmsError {
    pub fn new(
        kind: FailureKind,
        op: &'static str,
        code: Option<String>,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> KmsError {
        KmsError {
            kind,
            op,
            code,
            message: message.into(),
            hint,
            throttled: false,
            held: false,
        }
    }

    pub fn other(op: &'static str, message: impl Into<String>) -> KmsError {
        KmsError::new(FailureKind::Other, op, None, message, None)
    }

    pub fn local(op: &'static str, message: impl Into<String>) -> KmsError {
        KmsError::new(FailureKind::LocalResource, op, None, message, None)
    }

    pub fn timeout(op: &'static str, after: Duration) -> KmsError {
        KmsError::new(
            FailureKind::Timeout,
            op,
            None,
            format!("no answer within {after:?}"),
            Some("check the network path to the KMS endpoint".into()),
        )
    }

    pub fn held(mut self) -> KmsError {
        self.held = true;
        self
    }
}

impl fmt::Display for KmsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.op)?;
        if let Some(c) = &self.code {
            write!(f, ": {c}")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (check: {h})")?;
        }
        if self.held {
            f.write_str(" [not asked again until denied_retry has passed, or `operator unseal`]")?;
        }
        Ok(())
    }
}

impl std::error::Error for KmsError {}

/// A runtime with one worker thread, owned by one seal.
pub struct Runner {
    rt: Option<tokio::runtime::Runtime>,
    timeout: Duration,
}

impl Runner {
    pub fn new(thread_name: String, timeout: Duration) -> Runner {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(thread_name.clone())
            .enable_all()
            .build()
            .map_err(|e| tracing::error!(thread = %thread_name, error = %e, "cannot start a cloud seal's runtime"))
            .ok();
        Runner { rt, timeout }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `f` on the runtime within the timeout and waits for it, from any thread (not from an
    /// async task: callers are on blocking threads, as for every seal call).
    pub fn run<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl Future<Output = Result<T, KmsError>> + Send + 'static,
    ) -> Result<T, KmsError> {
        let timeout = self.timeout;
        let Some(rt) = &self.rt else {
            return Err(KmsError::local(
                op,
                "the seal's runtime could not be started",
            ));
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let r = match tokio::time::timeout(timeout, f).await {
                Ok(r) => r,
                Err(_) => Err(KmsError::timeout(op, timeout)),
            };
            let _ = tx.send(r);
        });
        rx.recv_timeout(timeout + Duration::from_secs(1))
            .unwrap_or_else(|_| Err(KmsError::timeout(op, timeout)))
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        // Dropping a runtime blocks on its tasks, which an async caller's thread must not do.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// One member's health, and the hold after a denied or key-unavailable answer.
pub struct Tracker {
    seal: String,
    /// How the log names the member's kind ("AWS KMS region", "Azure Key Vault").
    what: &'static str,
    health: Mutex<MemberHealth>,
    held: Mutex<Option<(Instant, KmsError)>>,
    hold_for: Duration,
}

impl Tracker {
    pub fn new(
        seal: &str,
        what: &'static str,
        member: &str,
        detail: std::collections::BTreeMap<String, serde_json::Value>,
        hold_for: Duration,
    ) -> Tracker {
        Tracker {
            seal: seal.to_string(),
            what,
            health: Mutex::new(MemberHealth {
                name: member.to_string(),
                state: MemberState::Unknown,
                healthy: false,
                last_error: None,
                last_checked_unix: None,
                unhealthy_since_unix: None,
                detail,
            }),
            held: Mutex::new(None),
            hold_for,
        }
    }

    pub fn snapshot(&self) -> MemberHealth {
        self.health.lock_recover().clone()
    }

    pub fn set_detail(&self, key: &str, value: serde_json::Value) {
        self.health
            .lock_recover()
            .detail
            .insert(key.to_string(), value);
    }

    /// Runs one KMS call as `operation` (wrap, unwrap, probe): its latency and outcome go to the
    /// metrics and the outcome to the member's health.
    pub fn timed<T>(
        &self,
        operation: &'static str,
        call: impl FnOnce() -> Result<T, KmsError>,
    ) -> Result<T, KmsError> {
        let started = Instant::now();
        let r = call();
        // Counted as the member's health counts it: a call this host could not make is not one.
        if let Some(ok) = self.record(&r) {
            let member = self.health.lock_recover().name.clone();
            crate::metrics::get().seal_call(&self.seal, &member, operation, started.elapsed(), ok);
        }
        r
    }

    /// Records an outcome; holds the member after an answer that needs an operator. Returns
    /// whether the member answered healthily, or None when it was not asked at all.
    pub fn record<T>(&self, r: &Result<T, KmsError>) -> Option<bool> {
        let mut h = self.health.lock_recover();
        if let Err(e) = r
            && e.kind == FailureKind::LocalResource
        {
            // This host ran out of something: the member was not asked, its health stands.
            return None;
        }
        h.last_checked_unix = Some(now_unix());
        let (state, healthy) = match r {
            Ok(_) => (MemberState::Healthy, true),
            Err(e) => match e.kind {
                // The KMS answered and refused the ciphertext: the member itself is fine.
                FailureKind::Authentication => (MemberState::Healthy, true),
                FailureKind::Denied => (MemberState::Denied, false),
                FailureKind::KeyUnavailable => (MemberState::KeyUnavailable, false),
                FailureKind::Timeout => (MemberState::Hung, false),
                _ if e.throttled => (MemberState::Throttled, false),
                _ => (MemberState::Down, false),
            },
        };
        if healthy {
            h.unhealthy_since_unix = None;
        } else if h.healthy || h.unhealthy_since_unix.is_none() {
            h.unhealthy_since_unix = Some(now_unix());
        }
        if h.state != state {
            match r {
                Ok(_) => {
                    tracing::info!(seal = %self.seal, member = %h.name, "{} is healthy", self.what)
                }
                Err(e) => {
                    tracing::warn!(seal = %self.seal, member = %h.name, state = state.as_str(), error = %e, "{} is unhealthy", self.what)
                }
            }
        }
        h.state = state;
        h.healthy = healthy;
        h.last_error = r.as_ref().err().map(|e| e.to_string());
        let mut held = self.held.lock_recover();
        match r {
            Err(e) if matches!(e.kind, FailureKind::Denied | FailureKind::KeyUnavailable) => {
                *held = Some((Instant::now() + self.hold_for, e.clone()));
                h.detail.insert(
                    "retry_after_unix".into(),
                    (now_unix() + self.hold_for.as_secs()).into(),
                );
            }
            Err(_) => {}
            Ok(_) => {
                *held = None;
                h.detail.remove("retry_after_unix");
            }
        }
        Some(healthy)
    }

    /// The answer a held member gave, while automatic attempts must leave it alone; `None` when
    /// it may be asked (always for an operator's attempt).
    pub fn held(&self, attempt: Attempt) -> Option<KmsError> {
        if attempt == Attempt::Operator {
            return None;
        }
        match &*self.held.lock_recover() {
            Some((until, e)) if Instant::now() < *until => Some(e.clone().held()),
            _ => None,
        }
    }
}

/// A member's pairwise self-test: `round_trip` wraps and unwraps 32 fixed bytes and must give
/// them back; timed.
pub fn self_test(
    member: &str,
    round_trip: impl FnOnce(&[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, KmsError>,
) -> super::MemberSelfTest {
    const PROBE: [u8; 32] = [0x5a; 32];
    let started = Instant::now();
    let r = round_trip(&PROBE).and_then(|back| {
        if back.as_slice() == PROBE {
            Ok(())
        } else {
            Err(KmsError::other(
                "unwrap",
                "the round trip returned other bytes",
            ))
        }
    });
    super::MemberSelfTest {
        member: member.to_string(),
        ok: r.is_ok(),
        error: r.err().map(|e| e.to_string()),
        elapsed_ms: Some(started.elapsed().as_millis() as u64),
    }
}

/// A one-member seal's failure as a [`super::SealError`].
pub fn failed(seal: &str, member: &str, summary: &'static str, e: KmsError) -> super::SealError {
    super::SealError::Members {
        seal: seal.to_string(),
        summary,
        errors: vec![super::Failure {
            member: member.to_string(),
            kind: e.kind,
            source: std::sync::Arc::new(e),
        }],
    }
}

impl Tracker {
    /// A one-member seal's health.
    pub fn seal_health(
        &self,
        seal_type: &str,
        detail: std::collections::BTreeMap<String, serde_json::Value>,
    ) -> super::SealHealth {
        let member = self.snapshot();
        super::SealHealth {
            name: self.seal.clone(),
            seal_type: seal_type.to_string(),
            healthy: member.healthy,
            members: vec![member],
            detail,
        }
    }

    /// The probe of a one-member seal: `check` unless the member is held.
    pub fn probe<T>(&self, check: impl FnOnce() -> Result<T, KmsError>) {
        if self.held(Attempt::Automatic).is_some() {
            return;
        }
        let _ = self.timed("probe", check);
    }
}

/// An error and its sources, on one line.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
    }
    out
}

/// Where a value came from, as `operator status` and `seal probe` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Config(&'static str),
    Env(&'static str),
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Config(k) => write!(f, "config {k}"),
            Source::Env(v) => write!(f, "env {v}"),
            Source::Default => f.write_str("default"),
        }
    }
}

/// The environment, as a function (tests pass their own).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// An endpoint is `https://`; plain `http://` only to a loopback address (a local emulator).
pub fn check_endpoint(e: &str) -> Result<(), String> {
    let (scheme, rest) = e
        .split_once("://")
        .ok_or_else(|| format!("{e:?} is not a URL (https://host[:port])"))?;
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host,
    };
    if host.is_empty() || host.contains('@') {
        return Err(format!("{e:?} has no host (or has user information)"));
    }
    match scheme {
        "https" => Ok(()),
        "http" if is_loopback(host) => Ok(()),
        "http" => Err(format!(
            "{e:?} is plain http to a host that is not loopback: use https"
        )),
        _ => Err(format!("{e:?} must be an https:// URL")),
    }
}

pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h == "localhost"
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A fixed environment, for tests of the precedence rules.
#[cfg(test)]
pub fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |n| {
        vars.iter()
            .find(|(k, _)| *k == n)
            .map(|(_, v)| v.to_string())
    }
}
