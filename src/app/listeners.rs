//! The listeners: the public one (connection cap within the descriptor limit, a watchdog per
//! connection for the TLS handshake, header, body and idle timeouts, TCP_NODELAY) and the admin
//! socket (peer credentials checked per connection).

use super::*;
use crate::locks::MutexExt;

/// Limits of the public listener (`[listener]`).
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    pub tls_handshake: Duration,
    pub read_header: Duration,
    pub idle: Duration,
    pub max_connections: usize,
}

impl ConnLimits {
    pub(super) fn from_config(
        l: &crate::config::ListenerConfig,
        nofile: Option<u64>,
    ) -> ConnLimits {
        let mut max = l.max_connections;
        if let Some(limit) = nofile {
            // Descriptors for everything but connections: storage, audit, HSM clients, the admin
            // socket and its connections.
            let room = usize::try_from(limit.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
            if room < max {
                tracing::warn!(
                    configured = max,
                    nofile = limit,
                    max_connections = room.max(MIN_CONNECTIONS),
                    "listener.max_connections lowered to fit the descriptor limit (raise LimitNOFILE=)"
                );
                max = room.max(MIN_CONNECTIONS);
            }
        }
        ConnLimits {
            tls_handshake: l.tls_handshake_timeout,
            read_header: l.http_read_header_timeout,
            idle: l.http_idle_timeout,
            max_connections: max,
        }
    }
}

/// Descriptors kept free for everything but public connections.
const FD_RESERVE: u64 = 256;
const MIN_CONNECTIONS: usize = 16;

/// A warning at most once per interval, with the count of the ones left out.
struct RateLimited {
    every: Duration,
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl RateLimited {
    fn new(every: Duration) -> RateLimited {
        RateLimited {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last one)` when a warning is due now.
    fn due(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < self.every)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Requests of one connection: how many are in flight, when the last one began or ended, and
/// whether bytes of a next request have arrived since.
struct Activity {
    start: std::time::Instant,
    inflight: std::sync::atomic::AtomicUsize,
    requests: std::sync::atomic::AtomicU64,
    /// Milliseconds after `start` of the last request start or end.
    last_ms: std::sync::atomic::AtomicU64,
    /// Milliseconds after `start` of the first byte read while no request was in flight (the
    /// start of the next request's headers), or u64::MAX.
    partial_ms: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: std::time::Instant::now(),
            inflight: 0.into(),
            requests: 0.into(),
            last_ms: 0.into(),
            partial_ms: u64::MAX.into(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Bytes arrived: while idle, that starts the header clock of the next request.
    fn read(&self) {
        if self.inflight.load(Ordering::Acquire) == 0
            && self.partial_ms.load(Ordering::Relaxed) == u64::MAX
        {
            self.partial_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    fn begin(&self) {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.partial_ms.store(u64::MAX, Ordering::Relaxed);
        self.touch();
    }

    /// When the connection is to be closed if nothing changes: never while a request is in flight;
    /// `http_read_header_timeout` after the first byte of headers that have not become a request
    /// (and after the start, before any request); else `http_idle_timeout` after the last request.
    fn deadline(&self, limits: &ConnLimits) -> Option<tokio::time::Instant> {
        if self.inflight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let partial = self.partial_ms.load(Ordering::Relaxed);
        let (from, limit) = if self.requests.load(Ordering::Relaxed) == 0 {
            (0, limits.read_header)
        } else if partial != u64::MAX {
            (partial, limits.read_header)
        } else {
            (self.last_ms.load(Ordering::Relaxed), limits.idle)
        };
        Some(tokio::time::Instant::from_std(
            self.start + Duration::from_millis(from) + limit,
        ))
    }
}

/// A connection's byte stream, telling its [`Activity`] when bytes arrive.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        r
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A hyper service that counts the connection's requests for the idle watchdog.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, R> hyper::service::Service<R> for Tracked<S>
where
    S: hyper::service::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, req: R) -> Self::Future {
        self.activity.begin();
        TrackedFuture {
            fut: self.inner.call(req),
            _guard: InFlight(self.activity.clone()),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's future, holding the connection's in-flight mark until it completes.
    pub(super) struct TrackedFuture<F> {
        #[pin]
        fut: F,
        _guard: InFlight,
    }
}

impl<F: Future> Future for TrackedFuture<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        self.project().fut.poll(cx)
    }
}

/// Serves one connection until it ends, or until it is idle past its limit ([`Activity::deadline`]):
/// then it is shut down gracefully, and dropped if it does not finish within a second. (hyper's
/// own HTTP/1 header timeout is not used: it also runs while a keep-alive connection is idle.)
async fn serve_tracked<I, S>(io: I, service: S, limits: ConnLimits, activity: Arc<Activity>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<axum::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http2().timer(TokioTimer::new());
    let io = TokioIo::new(Watched {
        inner: io,
        activity: activity.clone(),
    });
    let conn = builder.serve_connection(
        io,
        Tracked {
            inner: service,
            activity: activity.clone(),
        },
    );
    tokio::pin!(conn);
    let result = loop {
        // While a request is in flight, look again after the shorter limit.
        let deadline = activity
            .deadline(&limits)
            .unwrap_or_else(|| tokio::time::Instant::now() + limits.read_header.min(limits.idle));
        tokio::select! {
            r = conn.as_mut() => break r,
            _ = tokio::time::sleep_until(deadline) => {
                if activity.deadline(&limits).is_some_and(|d| d <= tokio::time::Instant::now()) {
                    conn.as_mut().graceful_shutdown();
                    break tokio::time::timeout(Duration::from_secs(1), conn.as_mut())
                        .await
                        .unwrap_or(Ok(()));
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

pub(super) async fn serve_public(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: crate::http::public::PublicApp,
    limits: ConnLimits,
    audit_denials: Arc<crate::audit::denials::Denials>,
) {
    let mut conns = JoinSet::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut cap_warning = RateLimited::new(Duration::from_secs(10));
    let mut accept_warning = RateLimited::new(Duration::from_secs(10));
    let tls_warning = Arc::new(std::sync::Mutex::new(RateLimited::new(
        Duration::from_secs(10),
    )));
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if let Some(n) = cap_warning.due() {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        suppressed = n,
                        "connection cap reached: new connections wait until one closes"
                    );
                }
                match permits.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return,
                }
            }
        };
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors or memory: a local condition. Wait a little rather than spin.
                if let Some(n) = accept_warning.due() {
                    tracing::warn!(error = %e, suppressed = n, "accept failed on the public listener");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Small answers go out at once (no Nagle delay against the client's delayed ACK).
        let _ = stream.set_nodelay(true);
        while conns.try_join_next().is_some() {}
        let app = app.clone();
        let tls = tls.clone();
        let tls_warning = tls_warning.clone();
        let denials = audit_denials.clone();
        conns.spawn(async move {
            let _permit = permit;
            let _open = crate::metrics::get().connection("public");
            let activity = Arc::new(Activity::new());
            let mut who = AuditPeer {
                address: Some(peer.to_string()),
                ..AuditPeer::default()
            };
            match tls {
                Some(acceptor) => {
                    let s = match tokio::time::timeout(limits.tls_handshake, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            if tls::is_client_certificate_error(&e) {
                                let due = tls_warning.lock_recover().due();
                                if let Some(n) = due {
                                    tracing::warn!(%peer, error = %e, suppressed = n, "TLS client certificate refused");
                                }
                                denials.note_tls_refused(peer.ip(), who, &e.to_string());
                                crate::metrics::get().auth_failure("public", "tls_client_certificate");
                            } else {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            }
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    who.tls_client = s
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| format!("sha256:{}", hex::encode(crate::crypto::sha256(c.as_ref()))));
                    serve_tracked(s, app.connection(who, peer.ip()), limits, activity).await;
                }
                None => {
                    serve_tracked(stream, app.connection(who, peer.ip()), limits, activity).await;
                }
            }
        });
    }
}

pub(super) async fn serve_admin(
    listener: UnixListener,
    cfg: AdminConfig,
    router: Router,
    audit: Audit,
    read_header: Duration,
) {
    let mut conns = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed on the admin socket");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        while conns.try_join_next().is_some() {}
        let peer = match stream.peer_cred() {
            Ok(c) => Peer {
                uid: c.uid(),
                gid: c.gid(),
                pid: c.pid(),
            },
            Err(e) => {
                tracing::warn!(error = %e, "admin connection refused: peer credentials unavailable");
                continue;
            }
        };
        let who = AuditPeer {
            uid: Some(peer.uid),
            gid: Some(peer.gid),
            pid: peer.pid,
            ..AuditPeer::default()
        };
        let router = if admin::allowed(&cfg, &peer) {
            router
                .clone()
                .layer(axum::Extension(peer))
                .layer(axum::Extension(ConnPeer(who)))
        } else {
            audit.record_detached(
                Event::new("admin", "connect", "denied")
                    .peer(who)
                    .error("peer not in admin.allowed_uids / admin.allowed_gids"),
            );
            tracing::warn!(
                uid = peer.uid,
                gid = peer.gid,
                pid = peer.pid,
                "admin connection refused: peer not in allowed_uids/allowed_gids"
            );
            crate::metrics::get().auth_failure("admin", "peer_refused");
            admin::refusal_router(peer)
        };
        conns.spawn(async move {
            let _open = crate::metrics::get().connection("admin");
            let service = TowerToHyperService::new(router);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(read_header)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

/// The `[telemetry]` listener: the metrics only, plain HTTP/1.1, no token.
pub(super) async fn serve_telemetry(listener: TcpListener, core: Arc<crate::core::Core>) {
    use axum::routing::get;
    let metrics = |core: Arc<crate::core::Core>| async move {
        crate::http::metrics_answer(
            &core,
            &crate::http::MetricsQuery {
                format: Some("prometheus".into()),
            },
        )
    };
    let router = Router::new()
        .route("/metrics", get(move |axum::extract::State(c)| metrics(c)))
        .route(
            "/v1/sys/metrics",
            get(move |axum::extract::State(c)| metrics(c)),
        )
        .with_state(core);
    let router = crate::http::with_json_errors(router);
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!(error = %e, "the telemetry listener stopped");
    }
}
