//! Prometheus metrics (OpenMetrics text, with the `prometheus-client` crate).
//!
//! Two kinds of series:
//! - **events**, counted where they happen: unseal attempts (a core-event subscriber), HSM and KMS
//!   calls (each seal member's call path), transit requests and failed authentications (the public
//!   listener), audit syncs (the audit writer), connections (the listeners). These live in one
//!   process-wide [`Metrics`] ([`get`]); recording is a few atomic operations, and a label set is
//!   allocated only the first time it is seen.
//! - **state**, read from the core's status at each scrape (`http::metrics`): seal state, restart
//!   safety, each seal's and member's health and since when it is down, and the process's memory
//!   and descriptors.
//!
//! Every label has bounded cardinality: seal and member names come from the configuration,
//! operations and outcomes from fixed lists, and a transit key is named only when it exists
//! (requests for any other name count under `key=""`).

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::locks::RwLockExt;

/// The content type of [`render`]'s answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UnsealLabels {
    seal: String,
    member: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    seal: String,
    member: String,
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitLabels {
    key: String,
    operation: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    listener: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 µs to about 26 s: an in-memory transit request to a hung HSM's timeout.
    Histogram::new(exponential_buckets(0.00005, 2.0, 20))
}

fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 12))
}

/// The transit operations counted (the path's first segment after the mount).
const TRANSIT_OPERATIONS: [&str; 7] = [
    "encrypt", "decrypt", "rewrap", "datakey", "keys", "token", "other",
];
/// How a request ended, from its status code.
const OUTCOMES: [&str; 7] = [
    "ok",
    "bad_request",
    "denied",
    "not_found",
    "throttled",
    "sealed",
    "error",
];

/// The process-wide event series.
pub struct Metrics {
    registry: Registry,
    unseal_attempts: Family<UnsealLabels, Counter>,
    seal_calls: HistogramFamily<CallLabels>,
    seal_call_failures: Family<CallLabels, Counter>,
    transit_requests: Family<TransitLabels, Counter>,
    transit_duration: HistogramFamily<OperationLabels>,
    /// Counters already made, by key: no label set is built per request.
    transit_cache: RwLock<HashMap<String, Box<[OnceLock<Counter>]>>>,
    transit_duration_cache: [OnceLock<Histogram>; 7],
    auth_failures: Family<ReasonLabels, Counter>,
    connections_open: Family<ListenerLabels, Gauge>,
    connections_total: Family<ListenerLabels, Counter>,
    audit_sync: Histogram,
    audit_records_per_sync: Histogram,
    audit_bytes: Counter,
    audit_failures: Counter,
}

static GLOBAL: OnceLock<Metrics> = OnceLock::new();

/// The process's metrics (created on first use).
pub fn get() -> &'static Metrics {
    GLOBAL.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sealkeeper");
        let unseal_attempts = Family::<UnsealLabels, Counter>::default();
        registry.register(
            "unseal_attempts",
            "Unseal attempts by outcome (success, failure) and, on success, the seal and member that unwrapped the root key",
            unseal_attempts.clone(),
        );
        let seal_calls: HistogramFamily<CallLabels> =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "seal_call_duration",
            "HSM and KMS call latency by seal, member and operation (wrap, unwrap, probe, random, self_test)",
            Unit::Seconds,
            seal_calls.clone(),
        );
        let seal_call_failures = Family::<CallLabels, Counter>::default();
        registry.register(
            "seal_call_failures",
            "HSM and KMS calls that failed, by seal, member and operation",
            seal_call_failures.clone(),
        );
        let transit_requests = Family::<TransitLabels, Counter>::default();
        registry.register(
            "transit_requests",
            "Transit requests by key (\"\" for a key that does not exist), operation and outcome",
            transit_requests.clone(),
        );
        let transit_duration: HistogramFamily<OperationLabels> =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "transit_request_duration",
            "Transit request latency, from the request's arrival to its answer (the audit record's sync included)",
            Unit::Seconds,
            transit_duration.clone(),
        );
        let auth_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "auth_failures",
            "Failed authentications: missing, unknown, expired or revoked tokens, throttled addresses, refused TLS client certificates, refused admin socket peers",
            auth_failures.clone(),
        );
        let connections_open = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "connections_open",
            "Connections open now, by listener (public, admin)",
            connections_open.clone(),
        );
        let connections_total = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "connections",
            "Connections accepted, by listener",
            connections_total.clone(),
        );
        let audit_sync = latency_histogram();
        registry.register_with_unit(
            "audit_sync_duration",
            "Time to make one batch of audit records durable (write and fdatasync)",
            Unit::Seconds,
            audit_sync.clone(),
        );
        let audit_records_per_sync = batch_histogram();
        registry.register(
            "audit_records_per_sync",
            "Audit records made durable by one sync",
            audit_records_per_sync.clone(),
        );
        let audit_bytes = Counter::default();
        registry.register_with_unit(
            "audit_written",
            "Bytes written to the audit trail",
            Unit::Bytes,
            audit_bytes.clone(),
        );
        let audit_failures = Counter::default();
        registry.register(
            "audit_failures",
            "Audit batches that could not be made durable (their requests were answered 503)",
            audit_failures.clone(),
        );
        Metrics {
            registry,
            unseal_attempts,
            seal_calls,
            seal_call_failures,
            transit_requests,
            transit_duration,
            transit_cache: RwLock::new(HashMap::new()),
            transit_duration_cache: Default::default(),
            auth_failures,
            connections_open,
            connections_total,
            audit_sync,
            audit_records_per_sync,
            audit_bytes,
            audit_failures,
        }
    }

    pub fn unseal_attempt(&self, ok: bool, seal: &str, member: &str) {
        self.unseal_attempts
            .get_or_create(&UnsealLabels {
                seal: seal.to_string(),
                member: member.to_string(),
                outcome: if ok { "success" } else { "failure" }.to_string(),
            })
            .inc();
    }

    /// One HSM or KMS call: its latency, and whether it failed.
    pub fn seal_call(&self, seal: &str, member: &str, operation: &str, took: Duration, ok: bool) {
        let labels = CallLabels {
            seal: seal.to_string(),
            member: member.to_string(),
            operation: operation.to_string(),
        };
        self.seal_calls
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if !ok {
            self.seal_call_failures.get_or_create(&labels).inc();
        }
    }

    /// One transit request: `path` after `/v1/<mount>/`, its status and its latency. `exists`
    /// says whether a key of that name exists (only then is it a label value).
    pub fn transit_request(
        &self,
        rest: &str,
        status: u16,
        took: Duration,
        exists: impl FnOnce(&str) -> bool,
    ) {
        let mut parts = rest.trim_matches('/').split('/');
        let first = parts.next().unwrap_or("");
        let op = TRANSIT_OPERATIONS
            .iter()
            .position(|o| *o == first)
            .unwrap_or(TRANSIT_OPERATIONS.len() - 1);
        let key = match op {
            // encrypt/<key>, decrypt/<key>, rewrap/<key>, datakey/<type>/<key>, keys/<key>
            0..=2 | 4 => parts.next().unwrap_or(""),
            3 => parts.nth(1).unwrap_or(""),
            _ => "",
        };
        let key = if !key.is_empty() && exists(key) {
            key
        } else {
            ""
        };
        let outcome = outcome_index(status);
        let idx = op * OUTCOMES.len() + outcome;
        let count = |slots: &[OnceLock<Counter>]| {
            slots[idx]
                .get_or_init(|| {
                    self.transit_requests.get_or_create_owned(&TransitLabels {
                        key: key.to_string(),
                        operation: TRANSIT_OPERATIONS[op].to_string(),
                        outcome: OUTCOMES[outcome].to_string(),
                    })
                })
                .inc();
        };
        // Counted under the read guard: the slots are not shared out of the map. (The guard is
        // dropped before `else`, edition 2024, so the write lock below cannot deadlock on it.)
        if let Some(slots) = self.transit_cache.read_recover().get(key) {
            count(slots);
        } else {
            count(
                self.transit_cache
                    .write_recover()
                    .entry(key.to_string())
                    .or_insert_with(|| {
                        (0..TRANSIT_OPERATIONS.len() * OUTCOMES.len())
                            .map(|_| OnceLock::new())
                            .collect()
                    }),
            );
        }
        self.transit_duration_cache[op]
            .get_or_init(|| {
                self.transit_duration.get_or_create_owned(&OperationLabels {
                    operation: TRANSIT_OPERATIONS[op].to_string(),
                })
            })
            .observe(took.as_secs_f64());
    }

    /// A failed authentication on `listener` ("public", "admin"), for `reason`.
    pub fn auth_failure(&self, listener: &str, reason: &str) {
        self.auth_failures
            .get_or_create(&ReasonLabels {
                listener: listener.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// A connection accepted on `listener`; the guard counts it open until dropped.
    pub fn connection(&self, listener: &'static str) -> ConnectionGuard {
        let labels = ListenerLabels {
            listener: listener.to_string(),
        };
        self.connections_total.get_or_create(&labels).inc();
        let open = self.connections_open.get_or_create_owned(&labels);
        open.inc();
        ConnectionGuard(open)
    }

    /// One audit sync: how long, how many records, how many bytes, and whether it failed.
    pub fn audit_sync(&self, took: Duration, records: usize, bytes: usize, ok: bool) {
        self.audit_sync.observe(took.as_secs_f64());
        self.audit_records_per_sync.observe(records as f64);
        self.audit_bytes.inc_by(bytes as u64);
        if !ok {
            self.audit_failures.inc();
        }
    }
}

/// Counts a connection open while it lives.
pub struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn outcome_index(status: u16) -> usize {
    match status {
        200..=299 => 0,
        400 | 405 | 413 | 415 => 1,
        401 | 403 => 2,
        404 => 3,
        429 => 4,
        503 => 5,
        _ => 6,
    }
}

impl Metrics {
    /// Transit requests counted so far, over every key, operation and outcome. It walks the
    /// counters, so it is for rare readers (the daemon's quiet-time memory release), not requests.
    pub fn transit_requests_total(&self) -> u64 {
        self.transit_cache
            .read_recover()
            .values()
            .flat_map(|slots| slots.iter())
            .filter_map(|c| c.get())
            .map(|c| c.get())
            .sum()
    }

    /// The event series in OpenMetrics text, without the final `# EOF` (the state series follow).
    pub fn encode_events(&self, out: &mut String) -> std::fmt::Result {
        prometheus_client::encoding::text::encode_registry(out, &self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transit_paths_name_the_operation_and_only_existing_keys() {
        let m = Metrics::new();
        m.transit_request("encrypt/vault", 200, Duration::from_millis(1), |k| {
            k == "vault"
        });
        m.transit_request("encrypt/nope", 400, Duration::from_millis(1), |k| {
            k == "vault"
        });
        m.transit_request("datakey/plaintext/vault", 403, Duration::ZERO, |k| {
            k == "vault"
        });
        m.transit_request("x/y", 503, Duration::ZERO, |_| true);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).unwrap();
        for line in [
            r#"sealkeeper_transit_requests_total{key="vault",operation="encrypt",outcome="ok"} 1"#,
            r#"sealkeeper_transit_requests_total{key="",operation="encrypt",outcome="bad_request"} 1"#,
            r#"sealkeeper_transit_requests_total{key="vault",operation="datakey",outcome="denied"} 1"#,
            r#"sealkeeper_transit_requests_total{key="",operation="other",outcome="sealed"} 1"#,
        ] {
            assert!(out.contains(line), "{line} not in:\n{out}");
        }
    }
}
