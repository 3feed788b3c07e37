//! `EtcdStorage`: the state in an etcd cluster shared by several Sealkeeper nodes (feature `etcd`).
//!
//! The trait maps onto etcd directly: a record's revision is its `mod_revision`, an expectation is
//! a compare on `version` (absent) or `mod_revision`, `txn` is one etcd transaction, and the change
//! feed is one etcd watch on the prefix, resumed at the next revision after a broken stream.
//!
//! **Members.** The client keeps one connection per endpoint and sends each call to the member that
//! answered last; a member that fails to answer within `attempt_timeout` (or answers "no leader",
//! or refuses the connection) is skipped for the next one, until `request_timeout` is spent. etcd's
//! own client balancer does not skip a dead member by itself. Every call requires the member to
//! have a leader, so a member cut off from its quorum answers at once and is skipped.
//!
//! **Ambiguous writes.** A write whose answer was lost may have committed. When a retried
//! compare-and-swap then finds the record changed, and changed to exactly what this write stored
//! (records are encrypted with random nonces, so another writer's bytes never match), the write
//! is taken as committed at the revision found. When it finds the record changed to something
//! else, the record's history is read back to the revision the write expected: the write
//! committed if one of the values in between is its own (another writer then built on it), and
//! did not if none is; a history that cannot tell (a delete in between, or compacted) is
//! `OutcomeUnknown`, never a conflict that would claim the write was not applied.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};

use super::{
    Change, Entry, Expect, Feed, Op, Record, Revision, Storage, StorageError, Watch, validate_key,
    validate_ops,
};

/// What `[storage] type = "etcd"` configures.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub tls_ca_file: Option<std::path::PathBuf>,
    pub tls_cert_file: Option<std::path::PathBuf>,
    pub tls_key_file: Option<std::path::PathBuf>,
    pub attempt_timeout: Duration,
    pub request_timeout: Duration,
}

struct Member {
    endpoint: String,
    client: Client,
}

struct Inner {
    members: Vec<Member>,
    /// The member that answered last; calls start there.
    current: AtomicUsize,
    prefix: String,
    attempt_timeout: Duration,
    request_timeout: Duration,
    name: String,
}

pub struct EtcdStorage {
    inner: Arc<Inner>,
    feed: Arc<Feed>,
    watcher: tokio::task::AbortHandle,
    /// The leases of this node's leased records (`put_leased`), by TTL in seconds, each renewed
    /// by every write under it.
    leases: tokio::sync::Mutex<std::collections::HashMap<i64, i64>>,
}

impl Drop for EtcdStorage {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// Why one attempt on one member failed.
enum Failure {
    /// The member did not answer, has no leader, or the connection failed: try the next one.
    /// The call may have committed.
    Member(String),
    /// The cluster answered, and another member would answer the same.
    Final(StorageError),
}

fn read_pem(what: &str, path: &Path) -> Result<Vec<u8>, StorageError> {
    std::fs::read(path).map_err(|e| StorageError::Unavailable {
        backend: "etcd".into(),
        op: format!("read {what} {}", path.display()),
        source: Box::new(e),
    })
}

impl EtcdStorage {
    /// Connects (lazily: no member needs to be up) and starts the change feed, which keeps
    /// reconnecting in the background. Fails only on settings that cannot work (a TLS file that
    /// cannot be read, an endpoint URL the client refuses).
    pub async fn open(o: &EtcdOptions) -> Result<EtcdStorage, StorageError> {
        let base = || {
            ConnectOptions::new()
                .with_require_leader(true)
                .with_connect_timeout(o.attempt_timeout)
                .with_timeout(o.attempt_timeout)
                // A member that stops answering (cut off by the network) is noticed within about
                // a second and the change feed moves to another one.
                .with_keep_alive(Duration::from_secs(1), o.attempt_timeout)
                .with_keep_alive_while_idle(true)
        };
        let mut connect = base();
        if o.endpoints.iter().any(|e| e.starts_with("https://")) {
            let mut tls = TlsOptions::new();
            let ca = o
                .tls_ca_file
                .as_ref()
                .ok_or_else(|| StorageError::Unavailable {
                    backend: "etcd".into(),
                    op: "set up TLS".into(),
                    source: "an https:// endpoint needs tls_ca_file".into(),
                })?;
            tls = tls.ca_certificate(Certificate::from_pem(read_pem("tls_ca_file", ca)?));
            if let (Some(c), Some(k)) = (&o.tls_cert_file, &o.tls_key_file) {
                tls = tls.identity(Identity::from_pem(
                    read_pem("tls_cert_file", c)?,
                    read_pem("tls_key_file", k)?,
                ));
            }
            connect = connect.with_tls(tls);
        }
        let mut members = Vec::new();
        for e in &o.endpoints {
            let opts = if e.starts_with("https://") {
                connect.clone()
            } else {
                // The client refuses TLS options on an http:// endpoint.
                base()
            };
            let client = Client::connect([e.as_str()], Some(opts))
                .await
                .map_err(|err| StorageError::Unavailable {
                    backend: "etcd".into(),
                    op: format!("set up the client for {e}"),
                    source: Box::new(err),
                })?;
            members.push(Member {
                endpoint: e.clone(),
                client,
            });
        }
        if members.is_empty() {
            return Err(StorageError::Unavailable {
                backend: "etcd".into(),
                op: "connect".into(),
                source: "no endpoints".into(),
            });
        }
        let inner = Arc::new(Inner {
            name: format!("etcd {} prefix {}", o.endpoints.join(","), o.prefix),
            members,
            current: AtomicUsize::new(0),
            prefix: o.prefix.clone(),
            attempt_timeout: o.attempt_timeout,
            request_timeout: o.request_timeout,
        });
        let feed = Arc::new(Feed::new());
        // The feed starts before `open` returns, so that a watch taken now misses nothing that a
        // member had already applied; until the first member answers, watchers get a resync.
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(follow(inner.clone(), feed.clone(), ready_tx));
        // One attempt's time at most: with etcd away the daemon starts (sealed) without waiting.
        let _ = tokio::time::timeout(o.attempt_timeout, ready_rx).await;
        Ok(EtcdStorage {
            inner,
            feed,
            watcher: task.abort_handle(),
            leases: tokio::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// The members' endpoints, in configured order.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner
            .members
            .iter()
            .map(|m| m.endpoint.clone())
            .collect()
    }

    fn full(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.inner.prefix).into_bytes()
    }

    fn strip(&self, full: &[u8]) -> Result<String, StorageError> {
        let s = std::str::from_utf8(full).map_err(|_| StorageError::Corrupt {
            key: String::from_utf8_lossy(full).into_owned(),
            reason: "the key is not UTF-8".into(),
        })?;
        s.strip_prefix(&self.inner.prefix)
            .map(str::to_string)
            .ok_or_else(|| StorageError::Corrupt {
                key: s.to_string(),
                reason: "outside the configured prefix".into(),
            })
    }

    /// One etcd transaction of `ops`; their puts under `lease` when given (`put_leased`).
    async fn txn_leased(&self, ops: Vec<Op>, lease: Option<i64>) -> Result<Revision, StorageError> {
        validate_ops(&ops)?;
        let prepared: Arc<Vec<Prepared>> = Arc::new(
            ops.into_iter()
                .map(|op| {
                    let full = self.full(op.key());
                    let expect = op.expect();
                    match op {
                        Op::Put { key, value, .. } => Prepared {
                            key,
                            full,
                            value: Some(value),
                            expect,
                        },
                        Op::Delete { key, .. } => Prepared {
                            key,
                            full,
                            value: None,
                            expect,
                        },
                    }
                })
                .collect(),
        );
        let name = self.inner.name.clone();
        self.inner
            .call("txn", |mut c, attempt| {
                let p = prepared.clone();
                let name = name.clone();
                async move {
                    let compares: Vec<Compare> = p
                        .iter()
                        .filter_map(|o| compare(&o.full, o.expect))
                        .collect();
                    let then: Vec<TxnOp> = p
                        .iter()
                        .map(|o| match &o.value {
                            Some(v) => TxnOp::put(
                                o.full.clone(),
                                v.clone(),
                                lease.map(|id| etcd_client::PutOptions::new().with_lease(id)),
                            ),
                            None => TxnOp::delete(o.full.clone(), None),
                        })
                        .collect();
                    let checks: Vec<TxnOp> =
                        p.iter().map(|o| TxnOp::get(o.full.clone(), None)).collect();
                    let txn = Txn::new().when(compares).and_then(then).or_else(checks);
                    let r = c.txn(txn).await.map_err(|e| classify(e, &name, "txn"))?;
                    if r.succeeded() {
                        return Ok(header_revision(r.header()));
                    }
                    let found = found(&r);
                    // After a lost answer: the state found is exactly what this transaction
                    // wrote, so it committed.
                    if attempt > 0 {
                        let mut committed_at = 0;
                        let all_ours = p.iter().zip(&found).all(|(o, f)| match (&o.value, f) {
                            (Some(v), Some((stored, rev))) if stored == v => {
                                committed_at = committed_at.max(*rev);
                                true
                            }
                            (None, None) => true,
                            _ => false,
                        });
                        if all_ours && committed_at > 0 {
                            return Ok(committed_at);
                        }
                    }
                    for (o, f) in p.iter().zip(&found) {
                        let rev = f.as_ref().map(|(_, r)| *r).unwrap_or(0);
                        if !o.expect.met_by(rev) {
                            if attempt > 0 {
                                // An earlier attempt may have committed and been built on since.
                                let now = header_revision(r.header());
                                match earlier_commit(&mut c, &p, now).await {
                                    History::Committed(at) => return Ok(at),
                                    History::NotCommitted => {}
                                    History::Unknown => {
                                        return Err(Failure::Final(StorageError::OutcomeUnknown {
                                            backend: name.clone(),
                                            key: o.key.clone(),
                                        }));
                                    }
                                }
                            }
                            return Err(Failure::Final(o.expect.conflict(&o.key, rev)));
                        }
                    }
                    // Every expectation holds now: the state changed between the transaction and
                    // its check. The caller retries as on any conflict.
                    Err(Failure::Final(StorageError::Conflict {
                        key: p.first().map(|o| o.key.clone()).unwrap_or_default(),
                        expected: 0,
                        found: 0,
                    }))
                }
            })
            .await
    }
}

/// What a key's history says about an earlier attempt of a transaction.
#[derive(Debug, PartialEq)]
enum History {
    Committed(Revision),
    NotCommitted,
    Unknown,
}

/// One operation of a transaction: its key (without and with the prefix), the value of a put.
struct Prepared {
    key: String,
    full: Vec<u8>,
    value: Option<Vec<u8>>,
    expect: Expect,
}

/// Whether an earlier attempt of the transaction `ops` committed, read from the history of one of
/// its puts (a transaction commits whole, so one key tells), from the store's revision `now` back
/// through each earlier value of the key: one that is this put's own value committed it (records
/// are encrypted with random nonces, so another writer's bytes never match); reaching the revision
/// the put expected (or the key's absence, for a put that expected none, at the start of its
/// history) without it means it did not. A delete in between, a compacted revision or a failed
/// read cannot tell.
async fn earlier_commit(c: &mut Client, ops: &[Prepared], now: Revision) -> History {
    // A put with an expectation: its key's history has a floor.
    let Some((op, value)) = ops
        .iter()
        .filter(|o| o.expect != Expect::Any)
        .find_map(|o| o.value.as_deref().map(|v| (o, v)))
    else {
        return History::Unknown;
    };
    let floor = match op.expect {
        Expect::Revision(r) => r,
        _ => 0,
    };
    let mut at = now;
    // Each step goes back at least one revision; a long chain of other writers is cut short.
    for _ in 0..64 {
        if at <= floor {
            return History::NotCommitted;
        }
        let opts = GetOptions::new().with_revision(i64::try_from(at).unwrap_or(i64::MAX));
        let Ok(r) = c.get(op.full.clone(), Some(opts)).await else {
            return History::Unknown;
        };
        let Some(kv) = r.kvs().first() else {
            return History::Unknown;
        };
        let mod_rev = kv.mod_revision().max(0) as u64;
        if kv.value() == value {
            return History::Committed(mod_rev);
        }
        if mod_rev <= floor {
            return History::NotCommitted;
        }
        if op.expect == Expect::Absent && kv.version() == 1 {
            // The first value since the key was last absent, not this put's: before it the key
            // was absent, and what came before that absence is not visible from here.
            return History::Unknown;
        }
        at = mod_rev - 1;
    }
    History::Unknown
}

/// A gRPC answer that another member might answer differently.
fn member_failure(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Unknown
                | Code::Aborted
                | Code::Internal
        ),
        _ => false,
    }
}

/// The revision etcd reports for a call.
fn header_revision(h: Option<&etcd_client::ResponseHeader>) -> Revision {
    h.map(|h| h.revision().max(0) as u64).unwrap_or(0)
}

impl Inner {
    /// Runs `call` on the current member, then on each other member in turn, until one answers or
    /// `request_timeout` is spent. `call` gets the attempt number (0 first) so that a retried write
    /// knows it may have committed already.
    async fn call<T, F, Fut>(&self, op: &str, call: F) -> Result<T, StorageError>
    where
        F: Fn(Client, u32) -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let n = self.members.len();
        let mut errors: Vec<String> = Vec::new();
        let mut attempt: u32 = 0;
        let mut pause = Duration::from_millis(100);
        loop {
            let i = (self.current.load(Ordering::Relaxed) + attempt as usize) % n;
            let member = &self.members[i];
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let budget = self.attempt_timeout.min(left);
            let outcome = tokio::time::timeout(budget, call(member.client.clone(), attempt)).await;
            match outcome {
                Ok(Ok(v)) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Ok(Err(Failure::Final(e))) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Err(e);
                }
                Ok(Err(Failure::Member(why))) => errors.push(format!("{}: {why}", member.endpoint)),
                Err(_) => errors.push(format!(
                    "{}: no answer within {}",
                    member.endpoint,
                    humantime::format_duration(budget)
                )),
            }
            attempt += 1;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                // The newest answer of each member says why (an election in progress answers
                // "no leader" from every member until it is over).
                let shown: Vec<String> = errors.iter().rev().take(n).rev().cloned().collect();
                return Err(StorageError::Unavailable {
                    backend: self.name.clone(),
                    op: format!(
                        "{op} (for {})",
                        humantime::format_duration(self.request_timeout)
                    ),
                    source: shown.join("; ").into(),
                });
            }
            if (attempt as usize).is_multiple_of(n) {
                // Every member failed once: pause before the next round, longer each time, so
                // that an election (which takes at least etcd's election timeout) is waited out
                // within request_timeout instead of failing the call.
                tokio::time::sleep(pause.min(left)).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

fn classify(e: etcd_client::Error, backend: &str, op: &str) -> Failure {
    if member_failure(&e) {
        Failure::Member(e.to_string())
    } else {
        Failure::Final(StorageError::Unavailable {
            backend: backend.to_string(),
            op: op.to_string(),
            source: Box::new(e),
        })
    }
}

fn compare(key: &[u8], expect: Expect) -> Option<Compare> {
    match expect {
        Expect::Any => None,
        Expect::Absent => Some(Compare::version(key.to_vec(), CompareOp::Equal, 0)),
        Expect::Revision(r) => Some(Compare::mod_revision(
            key.to_vec(),
            CompareOp::Equal,
            i64::try_from(r).unwrap_or(i64::MAX),
        )),
    }
}

/// What the `or_else` branch read: each checked key's value and revision (0: absent).
fn found(resp: &etcd_client::TxnResponse) -> Vec<Option<(Vec<u8>, Revision)>> {
    resp.op_responses()
        .into_iter()
        .map(|r| match r {
            TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .map(|kv| (kv.value().to_vec(), kv.mod_revision().max(0) as u64)),
            _ => None,
        })
        .collect()
}

#[async_trait::async_trait]
impl Storage for EtcdStorage {
    async fn get(&self, key: &str) -> Result<Option<Record>, StorageError> {
        validate_key(key)?;
        let full = self.full(key);
        let name = self.inner.name.clone();
        self.inner
            .call("get", |mut c, _| {
                let full = full.clone();
                let name = name.clone();
                async move {
                    let r = c
                        .get(full, None)
                        .await
                        .map_err(|e| classify(e, &name, "get"))?;
                    Ok(r.kvs().first().map(|kv| Record {
                        value: kv.value().to_vec(),
                        revision: kv.mod_revision().max(0) as u64,
                    }))
                }
            })
            .await
    }

    async fn put(&self, key: &str, value: &[u8], expect: Expect) -> Result<Revision, StorageError> {
        self.txn(vec![Op::put(key, value.to_vec(), expect)]).await
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<bool, StorageError> {
        validate_key(key)?;
        let full = self.full(key);
        let name = self.inner.name.clone();
        let key_s = key.to_string();
        self.inner
            .call("delete", |mut c, attempt| {
                let full = full.clone();
                let name = name.clone();
                let key_s = key_s.clone();
                async move {
                    let mut txn = Txn::new();
                    if let Some(cmp) = compare(&full, expect) {
                        txn = txn.when([cmp]);
                    }
                    let txn = txn
                        .and_then([TxnOp::delete(full.clone(), None)])
                        .or_else([TxnOp::get(full.clone(), None)]);
                    let r = c.txn(txn).await.map_err(|e| classify(e, &name, "delete"))?;
                    if r.succeeded() {
                        let deleted = r.op_responses().into_iter().any(|o| match o {
                            TxnOpResponse::Delete(d) => d.deleted() > 0,
                            _ => false,
                        });
                        return Ok(deleted);
                    }
                    let current = found(&r).first().cloned().flatten();
                    // The record found was created after the revision this delete expected: the
                    // one it expected was deleted in between, by this delete's first attempt or
                    // by another writer's.
                    let recreated = match expect {
                        Expect::Revision(at) if attempt > 0 => r
                            .op_responses()
                            .into_iter()
                            .filter_map(|o| match o {
                                TxnOpResponse::Get(g) => {
                                    g.kvs().first().map(|kv| kv.create_revision())
                                }
                                _ => None,
                            })
                            .any(|created| created.max(0) as u64 > at),
                        _ => false,
                    };
                    match current {
                        // A retried delete whose first attempt committed finds the record gone.
                        None if attempt > 0 && matches!(expect, Expect::Revision(_)) => Ok(true),
                        Some(_) if recreated => Err(Failure::Final(StorageError::OutcomeUnknown {
                            backend: name.clone(),
                            key: key_s.clone(),
                        })),
                        other => Err(Failure::Final(
                            expect.conflict(&key_s, other.map(|(_, r)| r).unwrap_or(0)),
                        )),
                    }
                }
            })
            .await
    }

    async fn range(&self, prefix: &str) -> Result<Vec<Entry>, StorageError> {
        if !prefix.is_empty() {
            // A prefix is a key, or a key and a trailing slash.
            validate_key(prefix.strip_suffix('/').unwrap_or(prefix))?;
        }
        let full = self.full(prefix);
        let name = self.inner.name.clone();
        let kvs = self
            .inner
            .call("range", |mut c, _| {
                let full = full.clone();
                let name = name.clone();
                async move {
                    let mut r = c
                        .get(full, Some(GetOptions::new().with_prefix()))
                        .await
                        .map_err(|e| classify(e, &name, "range"))?;
                    Ok(r.take_kvs())
                }
            })
            .await?;
        let mut out = Vec::with_capacity(kvs.len());
        for kv in kvs {
            out.push(Entry {
                key: self.strip(kv.key())?,
                value: kv.value().to_vec(),
                revision: kv.mod_revision().max(0) as u64,
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn txn(&self, ops: Vec<Op>) -> Result<Revision, StorageError> {
        self.txn_leased(ops, None).await
    }

    fn watch(&self, prefix: &str) -> Watch {
        self.feed.watch(prefix)
    }

    async fn put_leased(
        &self,
        key: &str,
        value: &[u8],
        expect: Expect,
        ttl: Duration,
    ) -> Result<Revision, StorageError> {
        validate_key(key)?;
        let ttl_s = i64::try_from(ttl.as_secs().max(2)).unwrap_or(60);
        let mut leases = self.leases.lock().await;
        let name = self.inner.name.clone();
        // Renew the lease of this TTL; one that expired (the node was cut off for longer than
        // the TTL) is replaced by a new one.
        let current = leases.get(&ttl_s).copied();
        let id = self
            .inner
            .call("lease", |c, _| {
                let name = name.clone();
                async move {
                    let mut client = c.lease_client();
                    if let Some(id) = current {
                        let (mut keeper, mut stream) = client
                            .keep_alive(id)
                            .await
                            .map_err(|e| classify(e, &name, "lease keep-alive"))?;
                        keeper
                            .keep_alive()
                            .await
                            .map_err(|e| classify(e, &name, "lease keep-alive"))?;
                        if let Some(r) = stream
                            .message()
                            .await
                            .map_err(|e| classify(e, &name, "lease keep-alive"))?
                            && r.ttl() > 0
                        {
                            return Ok(id);
                        }
                    }
                    let granted = client
                        .grant(ttl_s, None)
                        .await
                        .map_err(|e| classify(e, &name, "lease grant"))?;
                    Ok(granted.id())
                }
            })
            .await?;
        leases.insert(ttl_s, id);
        drop(leases);
        self.txn_leased(vec![Op::put(key, value.to_vec(), expect)], Some(id))
            .await
    }

    fn kind(&self) -> &'static str {
        "etcd"
    }
}

/// The change feed: one etcd watch on the prefix, moved to the next member when its stream breaks
/// and resumed at the revision after the last change it delivered. A resume that etcd can no
/// longer serve (compacted), or a start with no revision to resume from, tells watchers to read
/// again (`Resync`).
async fn follow(inner: Arc<Inner>, feed: Arc<Feed>, ready: tokio::sync::oneshot::Sender<()>) {
    let mut ready = Some(ready);
    let mut next: Option<i64> = None;
    let mut member = 0usize;
    let mut delay = Duration::from_millis(100);
    loop {
        let m = &inner.members[member % inner.members.len()];
        let mut opts = WatchOptions::new().with_prefix().with_progress_notify();
        if let Some(r) = next {
            opts = opts.with_start_revision(r);
        }
        let mut client = m.client.clone();
        let started = tokio::time::timeout(
            inner.attempt_timeout,
            client.watch(inner.prefix.clone().into_bytes(), Some(opts)),
        )
        .await;
        let mut stream = match started {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(endpoint = %m.endpoint, error = %e, "etcd watch: member did not answer");
                member += 1;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
                continue;
            }
            Err(_) => {
                member += 1;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        loop {
            let msg = stream.message().await;
            let resp = match msg {
                Ok(Some(r)) => r,
                Ok(None) | Err(_) => {
                    tracing::info!(endpoint = %m.endpoint, "etcd watch stream ended; moving to the next member");
                    break;
                }
            };
            if resp.compact_revision() > 0 {
                tracing::warn!(
                    compacted = resp.compact_revision(),
                    "etcd watch: changes were compacted away; re-reading the state"
                );
                next = None;
                break;
            }
            if resp.canceled() {
                tracing::info!(endpoint = %m.endpoint, reason = resp.cancel_reason(), "etcd watch canceled; moving to the next member");
                break;
            }
            if resp.created() {
                delay = Duration::from_millis(100);
                if next.is_none() {
                    // Nothing to resume from: what happened before is read again.
                    next = Some(header_revision(resp.header()) as i64 + 1);
                    feed.resync();
                }
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let Ok(key) = std::str::from_utf8(kv.key()) else {
                    continue;
                };
                let Some(key) = key.strip_prefix(&inner.prefix) else {
                    continue;
                };
                let revision = kv.mod_revision().max(0) as u64;
                let value = match ev.event_type() {
                    EventType::Put => Some(kv.value().to_vec()),
                    EventType::Delete => None,
                };
                feed.send(Change {
                    key: key.to_string(),
                    revision,
                    value,
                });
                next = Some(revision as i64 + 1);
            }
            if let Some(h) = resp.header() {
                // A progress notice: nothing under the prefix changed up to this revision.
                if resp.events().is_empty() && !resp.created() {
                    let r = h.revision() + 1;
                    if next.is_some_and(|n| r > n) {
                        next = Some(r);
                    }
                }
            }
        }
        member += 1;
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}
