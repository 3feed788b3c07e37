//! What the core tells the rest of the daemon: one typed [`CoreEvent`] per transition or
//! ceremony step, sent to every [`Subscriber`]. The audit trail is the first subscriber (each
//! event is one audit record, [`CoreEvent::to_audit`]); metrics subscribe the same way.

use crate::locks::RwLockExt;
use std::fmt;
use std::sync::Arc;

use crate::audit::{Audit, Event};

/// Who unsealed the node: the seal, and the member of it that answered ("unseal-keys" when
/// operators' shares did, "fallback" for the recovery keys' break-glass).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsealedBy {
    pub seal: String,
    pub member: String,
}

impl UnsealedBy {
    pub fn new(seal: &str, member: &str) -> UnsealedBy {
        UnsealedBy {
            seal: seal.to_string(),
            member: member.to_string(),
        }
    }
}

impl fmt::Display for UnsealedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.seal, self.member)
    }
}

/// One thing that happened in the core.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum CoreEvent {
    Initialized {
        seals: Vec<String>,
        member: String,
        share_role: &'static str,
        shares: u32,
        threshold: u32,
        fallback: bool,
    },
    /// Unsealed from an auto seal.
    Unsealed {
        attempt: &'static str,
        by: UnsealedBy,
        duration_ms: u64,
    },
    /// Unsealed from operators' shares (`method`: "unseal-keys" or "recovery-keys-fallback").
    UnsealedWithShares {
        member: String,
        method: &'static str,
    },
    UnsealFailed {
        attempt: &'static str,
        error: String,
        duration_ms: u64,
    },
    /// Submitted shares that do not reconstruct this installation's key.
    SharesRejected {
        error: String,
    },
    Sealed,
    Rotated {
        term: u32,
    },
    RootRotated {
        generation: u64,
        wrapped: Vec<String>,
        pending: Vec<String>,
    },
    /// `wrapped`: seal=key pairs; `failed`: seals that could not wrap.
    Rewrapped {
        wrapped: Vec<String>,
        failed: Vec<String>,
    },
    CaughtUp {
        wrapped: Vec<String>,
        dropped: Vec<String>,
    },
    Migrated {
        from: String,
        from_type: String,
        to: String,
        to_type: String,
        share_role: &'static str,
    },
    MigrationFailed {
        from: String,
        to: String,
        error: String,
    },
    RekeyStarted {
        target: String,
        shares: u32,
        threshold: u32,
    },
    RekeyCancelled,
    Rekeyed {
        target: &'static str,
        shares: u32,
        threshold: u32,
    },
    RekeyVerified {
        shares: u32,
        threshold: u32,
    },
    HsmSelfTest {
        member: String,
        ok: bool,
        error: Option<String>,
    },
    /// An operation (`rotate`, `rotate-root`, `rewrap`, ...) failed.
    OperationFailed {
        operation: &'static str,
        error: String,
    },
}

impl CoreEvent {
    /// The audit record of the event (kind `core`; the operation, the outcome and its fields).
    pub fn to_audit(&self) -> Event {
        use CoreEvent::*;
        let core = |op: &str, outcome: &'static str| Event::new("core", op, outcome);
        match self {
            Initialized {
                seals,
                member,
                share_role,
                shares,
                threshold,
                fallback,
            } => core("init", "ok")
                .field("seals", seals.join(","))
                .field("member", member.clone())
                .field("share_role", *share_role)
                .field("recovery_shares", *shares)
                .field("recovery_threshold", *threshold)
                .field("recovery_keys_fallback", *fallback),
            Unsealed {
                attempt,
                by,
                duration_ms,
            } => core("unseal", "ok")
                .field("attempt", *attempt)
                .field("seal", by.seal.clone())
                .field("member", by.member.clone())
                .field("duration_ms", *duration_ms),
            UnsealedWithShares { member, method } => core("unseal", "ok")
                .field("attempt", "operator")
                .field("member", member.clone())
                .field("method", *method),
            UnsealFailed {
                attempt,
                error,
                duration_ms,
            } => core("unseal", "error")
                .error(error.clone())
                .field("attempt", *attempt)
                .field("duration_ms", *duration_ms),
            SharesRejected { error } => core("unseal-key", "error").error(error.clone()),
            Sealed => core("seal", "ok"),
            Rotated { term } => core("rotate", "ok").field("term", *term),
            RootRotated {
                generation,
                wrapped,
                pending,
            } => core("rotate-root", "ok")
                .field("generation", *generation)
                .field("wrapped", wrapped.join(","))
                .field("pending", pending.join(",")),
            Rewrapped { wrapped, failed } => {
                core("rewrap", if failed.is_empty() { "ok" } else { "partial" })
                    .field("wrapped", wrapped.join(","))
                    .field("failed", failed.join(","))
            }
            CaughtUp { wrapped, dropped } => core("seal-catch-up", "ok")
                .field("wrapped", wrapped.join(","))
                .field("dropped", dropped.join(",")),
            Migrated {
                from,
                from_type,
                to,
                to_type,
                share_role,
            } => core("seal-migrate", "ok")
                .field("from", from.clone())
                .field("from_type", from_type.clone())
                .field("to", to.clone())
                .field("to_type", to_type.clone())
                .field("share_role", *share_role),
            MigrationFailed { from, to, error } => core("seal-migrate", "error")
                .error(error.clone())
                .field("from", from.clone())
                .field("to", to.clone()),
            RekeyStarted {
                target,
                shares,
                threshold,
            } => core("rekey-init", "ok")
                .field("target", target.clone())
                .field("shares", *shares)
                .field("threshold", *threshold),
            RekeyCancelled => core("rekey-cancel", "ok"),
            Rekeyed {
                target,
                shares,
                threshold,
            } => core("rekey", "ok")
                .field("target", *target)
                .field("shares", *shares)
                .field("threshold", *threshold)
                .field("verification", "required"),
            RekeyVerified { shares, threshold } => core("rekey-verify", "ok")
                .field("shares", *shares)
                .field("threshold", *threshold),
            HsmSelfTest { member, ok, error } => {
                core("hsm-self-test", if *ok { "ok" } else { "error" })
                    .field("member", member.clone())
                    .error(error.clone().unwrap_or_default())
            }
            OperationFailed { operation, error } => core(operation, "error").error(error.clone()),
        }
    }
}

/// Receives every core event, in order, on the task that caused it: keep `on_event` short and
/// non-blocking.
pub trait Subscriber: Send + Sync {
    fn on_event(&self, event: &CoreEvent);
}

/// The metrics as a subscriber: unseal attempts by outcome, seal and member.
pub struct MetricsSubscriber;

impl Subscriber for MetricsSubscriber {
    fn on_event(&self, event: &CoreEvent) {
        let m = crate::metrics::get();
        match event {
            CoreEvent::Unsealed { by, .. } => m.unseal_attempt(true, &by.seal, &by.member),
            CoreEvent::UnsealedWithShares { member, .. } => {
                m.unseal_attempt(true, "shares", member)
            }
            CoreEvent::UnsealFailed { .. } => m.unseal_attempt(false, "", ""),
            _ => {}
        }
    }
}

/// The audit trail as a subscriber: one record per event, written without blocking the core.
pub struct AuditSubscriber(pub Audit);

impl Subscriber for AuditSubscriber {
    fn on_event(&self, event: &CoreEvent) {
        self.0.record_detached(event.to_audit());
    }
}

/// The subscribers of one core.
#[derive(Default)]
pub(super) struct Subscribers(std::sync::RwLock<Vec<Arc<dyn Subscriber>>>);

impl Subscribers {
    pub(super) fn add(&self, s: Arc<dyn Subscriber>) {
        self.0.write_recover().push(s);
    }

    pub(super) fn emit(&self, event: CoreEvent) {
        for s in self.0.read_recover().iter() {
            s.on_event(&event);
        }
    }
}
