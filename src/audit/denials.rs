//! Denials without a flood: a client that fails to authenticate thousands of times a second (or
//! fails mutual TLS, or is throttled) must not be able to fill the audit disk, which would make the
//! trail fail closed for everyone.
//!
//! The first denial of each kind from each client address in an interval is recorded in full, at
//! once; the rest are counted, and at the end of the interval one summary record per address and
//! kind gives the count (`"operation": "denied-summary"`, `"suppressed": N`). Denials that reach a
//! real key (a valid token without the capability) are not summarized: the request path records
//! each of them individually. Denial records are written without waiting for the sync, since the
//! answer released nothing.
//!
//! The table is bounded ([`MAX_ADDRESSES`] per interval); beyond that, addresses share one entry
//! (`client_address: "other"`).

use crate::locks::MutexExt;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Audit, Event, Peer};

pub const MAX_ADDRESSES: usize = 10_000;

/// Why a client was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenialKind {
    /// A missing, unknown, expired or revoked token.
    Authentication,
    /// Answered 429: too many failed authentications from this address.
    Throttled,
    /// The TLS client certificate was missing or refused.
    TlsClientCertificate,
}

impl DenialKind {
    fn name(self) -> &'static str {
        match self {
            DenialKind::Authentication => "authentication",
            DenialKind::Throttled => "throttled",
            DenialKind::TlsClientCertificate => "tls_client_certificate",
        }
    }
}

pub struct Denials {
    audit: Audit,
    interval: Duration,
    /// (kind, address or None for "other") -> denials this interval, including the first.
    table: Mutex<HashMap<(DenialKind, Option<IpAddr>), u64>>,
}

impl Denials {
    pub fn new(audit: Audit, interval: Duration) -> Arc<Denials> {
        Arc::new(Denials {
            audit,
            interval,
            table: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a denial; true when it is the first of its kind from `ip` this interval, and so is
    /// to be recorded in full by the caller.
    pub fn note(&self, kind: DenialKind, ip: IpAddr) -> bool {
        let mut t = self.table.lock_recover();
        let mut key = (kind, Some(ip));
        if !t.contains_key(&key) && t.len() >= MAX_ADDRESSES {
            key = (kind, None);
        }
        let n = t.entry(key).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// A refused TLS client certificate: recorded (the first per address per interval) and
    /// counted.
    pub fn note_tls_refused(&self, ip: IpAddr, peer: Peer, error: &str) {
        if self.note(DenialKind::TlsClientCertificate, ip) {
            self.audit.record_detached(
                Event::new("request", "tls-handshake", "denied")
                    .peer(peer)
                    .field("reason", DenialKind::TlsClientCertificate.name())
                    .error(error.to_string()),
            );
        }
    }

    /// Writes one summary per (kind, address) that had more than its first denial, and starts a
    /// new interval.
    pub fn flush(&self) {
        let drained: Vec<_> = {
            let mut t = self.table.lock_recover();
            t.drain().collect()
        };
        for ((kind, ip), n) in drained {
            if n <= 1 {
                continue;
            }
            self.audit.record_detached(
                Event::new("request", "denied-summary", "denied")
                    .field("reason", kind.name())
                    .field(
                        "client_address",
                        ip.map(|i| i.to_string()).unwrap_or_else(|| "other".into()),
                    )
                    .field("suppressed", n - 1)
                    .field("interval_seconds", self.interval.as_secs_f64()),
            );
        }
    }

    /// Flushes at every interval, until aborted (and once more is not needed: at shutdown the
    /// summaries of the last partial interval are written by [`Denials::flush`]).
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_per_address_and_kind_then_counted_and_bounded() {
        let d = Denials::new(Audit::disabled(), Duration::from_secs(10));
        let a: IpAddr = [192, 0, 2, 1].into();
        assert!(d.note(DenialKind::Authentication, a));
        assert!(!d.note(DenialKind::Authentication, a));
        assert!(d.note(DenialKind::Throttled, a));
        for i in 0..(MAX_ADDRESSES as u32 * 2) {
            d.note(DenialKind::Authentication, IpAddr::V4(i.into()));
        }
        let len = d.table.lock().map(|t| t.len()).unwrap_or(usize::MAX);
        assert!(len <= MAX_ADDRESSES + 2, "{len}");
        d.flush();
        assert!(d.table.lock().map(|t| t.is_empty()).unwrap_or(false));
        assert!(d.note(DenialKind::Authentication, a));
    }
}
