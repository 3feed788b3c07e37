//! The public listener's service: every request goes through the same steps, in one future, before
//! and after the router (sys and transit routes):
//!
//! 1. the client address (the TCP peer's, or the last hop a trusted proxy named);
//! 2. the start of its audit record (the operation, the peer, the token's HMAC);
//! 3. its body, read whole within the size limit, the read timeout and the memory budget;
//! 4. the throttle: an address with too many failed authentications is answered 429;
//! 5. the route; an error answer that is not JSON is put in Vault's errors envelope;
//! 6. a failed authentication is counted against the address;
//! 7. the audit record, durable before the answer leaves (or a 503).
//!
//! One service per connection, cloned per request (two reference counts): no middleware layers,
//! so no per-request boxing of nested services.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use tower_service::Service;

use super::audit_layer::{AuditCtx, RequestAudit, with_note};
use super::client::{AuthThrottle, Cidr, client_address};
use super::{BodyLimits, error_response};
use crate::audit::Peer;
use crate::audit::denials::DenialKind;

/// What the public listener needs besides the core: client addresses, throttling and body limits.
pub struct PublicOptions {
    /// `/v1/<transit mount>/`: requests below it are counted as transit requests.
    pub transit_prefix: String,
    pub trusted_proxies: Vec<Cidr>,
    pub throttle: Arc<AuthThrottle>,
    pub body: BodyLimits,
}

struct Shared {
    router: Router,
    audit: AuditCtx,
    opts: PublicOptions,
}

/// The public listener's application: routes, audit, limits. [`PublicApp::connection`] gives the
/// service of one connection.
#[derive(Clone)]
pub struct PublicApp(Arc<Shared>);

struct Conn {
    peer: Peer,
    ip: IpAddr,
}

/// The service of one connection.
#[derive(Clone)]
pub struct PublicService {
    app: PublicApp,
    conn: Arc<Conn>,
}

impl PublicApp {
    pub fn new(router: Router, audit: AuditCtx, opts: PublicOptions) -> PublicApp {
        PublicApp(Arc::new(Shared {
            router,
            audit,
            opts,
        }))
    }

    /// The service of a connection from `ip`; `peer` names it in audit records.
    pub fn connection(&self, peer: Peer, ip: IpAddr) -> PublicService {
        PublicService {
            app: self.clone(),
            conn: Arc::new(Conn { peer, ip }),
        }
    }
}

impl<B> hyper::service::Service<axum::http::Request<B>> for PublicService
where
    B: hyper::body::Body<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response, Infallible>> + Send + 'static>,
    >;

    fn call(&self, req: axum::http::Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req.map(Body::new)).await) })
    }
}

impl PublicService {
    async fn handle(self, req: axum::http::Request<Body>) -> Response {
        let shared = &self.app.0;
        let (client, forwarded) =
            client_address(self.conn.ip, req.headers(), &shared.opts.trusted_proxies);
        let start = RequestAudit::start(
            &shared.audit,
            &req,
            Some(&self.conn.peer),
            forwarded.then_some(client),
        );
        let started = std::time::Instant::now();
        // A Uri clone shares its bytes: no copy of the path per request.
        let uri = req.uri().clone();
        let (resp, note) = with_note(start.is_some(), self.route(req, client)).await;
        let metrics = crate::metrics::get();
        match note.denied {
            Some(DenialKind::Authentication) => {
                shared.opts.throttle.failed(client);
                metrics.auth_failure("public", "token");
            }
            Some(DenialKind::Throttled) => metrics.auth_failure("public", "throttled"),
            // Counted at the handshake, where it is refused.
            Some(DenialKind::TlsClientCertificate) | None => {}
        }
        let resp = match start {
            Some(s) => s.finish(&shared.audit, note, Some(client), resp).await,
            None => resp,
        };
        if let Some(rest) = uri.path().strip_prefix(shared.opts.transit_prefix.as_str()) {
            let core = &shared.audit.core;
            metrics.transit_request(rest, resp.status().as_u16(), started.elapsed(), |k| {
                core.transit().is_some_and(|t| t.has_key(k))
            });
        }
        resp
    }

    async fn route(&self, req: axum::http::Request<Body>, client: IpAddr) -> Response {
        let shared = &self.app.0;
        let (parts, body) = req.into_parts();
        let body = match read_body(&parts, body, &shared.opts.body).await {
            Ok(b) => b,
            // Already in the errors envelope.
            Err(resp) => return resp,
        };
        if !parts.uri.path().starts_with("/v1/sys/")
            && let Err(wait) = shared.opts.throttle.check(client)
        {
            super::audit_layer::note_denied(DenialKind::Throttled);
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let mut resp = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many failed authentications from this address; retry in {secs}s"),
            );
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
            return resp;
        }
        let req = axum::http::Request::from_parts(parts, Body::from(body));
        let mut router = shared.router.clone();
        let resp = match router.call(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        super::errors_as_json(resp).await
    }
}

/// Reads the whole body within the limit and the read timeout, holding its share of the memory
/// budget meanwhile, so that an early answer (503 while sealed, 403, 404, 405, 429) never leaves a
/// client's body unread: over HTTP/2 an answer sent before the body reset the stream for some
/// clients (curl 7.88).
async fn read_body(
    parts: &axum::http::request::Parts,
    body: Body,
    limits: &BodyLimits,
) -> Result<axum::body::Bytes, Response> {
    use http_body_util::BodyExt;
    // The body's share of the memory budget: its declared length, or the limit when it has none.
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let share = u32::try_from(declared.unwrap_or(limits.max_bytes).min(limits.max_bytes))
        .unwrap_or(u32::MAX);
    let _held = match limits.budget.try_acquire_many(share) {
        Ok(p) => p,
        Err(_) => {
            match tokio::time::timeout(limits.read_timeout, limits.budget.acquire_many(share)).await
            {
                Ok(Ok(p)) => p,
                _ => {
                    return Err(error_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too many large requests at once; try again",
                    ));
                }
            }
        }
    };
    if declared == Some(0) {
        return Ok(axum::body::Bytes::new());
    }
    // The body is copied out of hyper's read buffer chunk by chunk and each chunk is dropped at
    // once: a chunk kept until the answer would keep the connection's whole read buffer shared, so
    // that hyper would allocate a new one for the next request and free (and wipe) the old one.
    let mut limited = http_body_util::Limited::new(body, limits.max_bytes);
    let mut copy = Vec::with_capacity(declared.unwrap_or(0).min(limits.max_bytes));
    let collect = async {
        while let Some(frame) = limited.frame().await {
            if let Ok(data) = frame?.into_data() {
                copy.extend_from_slice(&data);
            }
        }
        Ok::<(), axum::BoxError>(())
    };
    match tokio::time::timeout(limits.read_timeout, collect).await {
        Ok(Ok(())) => Ok(axum::body::Bytes::from(copy)),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(error_response(
                StatusCode::BAD_REQUEST,
                format!(
                    "request body is larger than the limit of {} bytes",
                    limits.max_bytes
                ),
            ))
        }
        Ok(Err(_)) => Err(error_response(
            StatusCode::BAD_REQUEST,
            "the request body could not be read",
        )),
        Err(_) => Err(error_response(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {}",
                humantime::format_duration(limits.read_timeout)
            ),
        )),
    }
}

/// The router of the public listener (sys and transit routes; JSON 404 and 405).
pub fn public_router(
    core: Arc<crate::core::Core>,
    transit: &crate::config::TransitConfig,
) -> Router {
    let state = super::transit::TransitState {
        core: core.clone(),
        max_body: transit.max_request_bytes,
        max_batch_items: transit.max_batch_items,
    };
    super::sys_routes()
        .router
        .with_state(core)
        .merge(
            super::transit::public_routes(transit.mount.trim_matches('/'))
                .router
                .with_state(state),
        )
        .fallback(super::not_found)
        .method_not_allowed_fallback(super::method_not_allowed)
}
