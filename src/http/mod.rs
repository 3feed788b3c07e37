//! The public API (served over TLS): Vault-compatible `sys/health` and `sys/seal-status`, plus
//! `sys/hsm-status`. Shared handlers and helpers for the admin socket live here too.

use crate::clock::now_unix;
use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::core::Core;

pub mod audit_layer;
pub mod client;
pub mod metrics;
pub mod public;
pub mod tls;
pub mod transit;
pub mod wiped;

/// `{"errors": [...]}` with a status, as Vault answers errors.
pub fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError(status, message.into()).into_response()
}

/// An error answer, small enough to return by value.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        audit_layer::note(|| audit_layer::AuditFields {
            error: Some(self.1.clone()),
            ..Default::default()
        });
        (self.0, axum::Json(json!({ "errors": [self.1] }))).into_response()
    }
}

fn bad_request(message: String) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message)
}

pub async fn not_found(uri: Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        format!("no handler for route {:?}", uri.path()),
    )
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed on {}", uri.path()),
    )
}

/// Go's strconv.ParseBool, which Vault uses; a bare parameter (`?standbyok`) counts as true.
fn parse_bool(name: &str, v: &str) -> Result<bool, ApiError> {
    match v {
        "" | "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(bad_request(format!(
            "bad value for {name} parameter: {v:?} is not a boolean"
        ))),
    }
}

fn parse_code(
    q: &HashMap<String, String>,
    name: &str,
    default: u16,
) -> Result<StatusCode, ApiError> {
    let Some(v) = q.get(name) else {
        return StatusCode::from_u16(default).map_err(|_| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "bad default status".into(),
            )
        });
    };
    let code: u16 = v.parse().map_err(|_| {
        bad_request(format!(
            "bad value for {name} parameter: {v:?} is not an integer"
        ))
    })?;
    StatusCode::from_u16(code)
        .ok()
        .filter(|c| (100..=599).contains(&c.as_u16()))
        .ok_or_else(|| {
            bad_request(format!(
                "bad value for {name} parameter: {code} is not an HTTP status code"
            ))
        })
}

/// The status code and body of `sys/health`, following Vault's evaluation order: not initialized,
/// sealed, (DR secondary, performance standby, standby: never true here), active.
pub fn health(core: &Core, q: &HashMap<String, String>) -> Result<(StatusCode, Value), ApiError> {
    // Every parameter is validated, even those that cannot apply to a single active node.
    for b in ["standbyok", "perfstandbyok"] {
        if let Some(v) = q.get(b) {
            parse_bool(b, v)?;
        }
    }
    let active = parse_code(q, "activecode", 200)?;
    let standby_code = parse_code(q, "standbycode", 429)?;
    let standby_ok = q
        .get("standbyok")
        .map(|v| parse_bool("standbyok", v))
        .transpose()?
        .unwrap_or(false);
    let _dr = parse_code(q, "drsecondarycode", 472)?;
    let _perf = parse_code(q, "performancestandbycode", 473)?;
    let sealed_code = parse_code(q, "sealedcode", 503)?;
    let uninit = parse_code(q, "uninitcode", 501)?;

    let initialized = core.is_initialized();
    let sealed = core.is_sealed();
    let standby = initialized && !sealed && core.is_standby();
    let code = if !initialized {
        uninit
    } else if sealed {
        sealed_code
    } else if standby && !standby_ok {
        standby_code
    } else {
        active
    };
    let mut body = json!({
        "initialized": initialized,
        "sealed": sealed,
        "standby": standby,
        "performance_standby": false,
        "replication_performance_mode": "disabled",
        "replication_dr_mode": "disabled",
        "server_time_utc": now_unix(),
        "version": env!("CARGO_PKG_VERSION"),
        "enterprise": false,
        "echo_duration_ms": 0,
        "clock_skew_ms": 0,
    });
    if initialized
        && !sealed
        && let Some(id) = core.installation_id()
    {
        body["cluster_name"] = json!(core.cluster_name());
        body["cluster_id"] = json!(id);
    }
    Ok((code, body))
}

/// Whether a response with this status may carry a body (RFC 9110: not 1xx, 204, 304).
pub fn status_has_body(code: StatusCode) -> bool {
    !(code.is_informational() || code == StatusCode::NO_CONTENT || code == StatusCode::NOT_MODIFIED)
}

/// Every error answer in Vault's `{"errors": [...]}` envelope: an extractor's rejection (a path
/// that is not UTF-8, a bad query string) is plain text otherwise.
pub async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    errors_as_json(next.run(req).await).await
}

/// `resp` as it is, unless it is an error answer whose body is not JSON: then the same status
/// with its text in the errors envelope.
pub async fn errors_as_json(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if status.as_u16() < 400 || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = match axum::body::to_bytes(body, 64 * 1024).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_string()
    } else {
        text
    };
    let mut fresh = error_response(status, message);
    // Keep what the handler or a layer attached (e.g. Retry-After, audit fields).
    for (k, v) in parts.headers.iter() {
        if k != axum::http::header::CONTENT_TYPE && k != axum::http::header::CONTENT_LENGTH {
            fresh.headers_mut().insert(k.clone(), v.clone());
        }
    }
    fresh.extensions_mut().extend(parts.extensions);
    fresh
}

pub async fn health_handler(
    State(core): State<Arc<Core>>,
    method: Method,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    match health(&core, &q) {
        // HEAD, and a status that cannot carry a body (1xx, 204, 304), are answered without one
        // (a body there is an HTTP/2 protocol error).
        Ok((code, _)) if method == Method::HEAD || !status_has_body(code) => code.into_response(),
        Ok((code, body)) => (code, axum::Json(body)).into_response(),
        Err(e) => e.into_response(),
    }
}

pub fn seal_status_body(core: &Core) -> Value {
    let initialized = core.is_initialized();
    let sealed = core.is_sealed();
    let p = core.share_progress();
    let mut body = json!({
        "type": core.seal_type(),
        "initialized": initialized,
        "sealed": sealed,
        "t": p.threshold,
        "n": p.shares,
        "progress": p.progress,
        "nonce": p.nonce,
        "version": env!("CARGO_PKG_VERSION"),
        "build_date": env!("SEALKEEPER_BUILD_DATE"),
        "migration": p.migration,
        "recovery_seal": !p.shamir,
        "storage_type": core.storage_kind(),
    });
    if !p.shamir {
        body["recovery_seal_type"] = json!("shamir");
    }
    if initialized
        && !sealed
        && let Some(id) = core.installation_id()
    {
        body["cluster_name"] = json!(core.cluster_name());
        body["cluster_id"] = json!(id);
    }
    body
}

pub async fn seal_status_handler(State(core): State<Arc<Core>>) -> Response {
    axum::Json(seal_status_body(&core)).into_response()
}

/// `GET /v1/sys/init`: whether the node is initialized (initializing is on the admin socket only).
pub async fn init_status_handler(State(core): State<Arc<Core>>) -> Response {
    axum::Json(json!({ "initialized": core.is_initialized() })).into_response()
}

/// `GET /v1/sys/seal-backend-status`: health of every enabled seal (Vault's multi-seal shape).
pub async fn seal_backend_status_handler(State(core): State<Arc<Core>>) -> Response {
    let rfc3339 = |t: u64| {
        Some(
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(t),
            )
            .to_string(),
        )
    };
    let backends = core.seal_backend_status();
    let healthy = backends.iter().all(|b| b.1);
    let since = backends.iter().filter_map(|b| b.2).min();
    let mut body = json!({
        "healthy": healthy,
        "backends": backends.iter().map(|(name, h, since)| {
            let mut b = json!({ "name": name, "healthy": h });
            if let Some(s) = since.and_then(rfc3339) {
                b["unhealthy_since"] = json!(s);
            }
            b
        }).collect::<Vec<_>>(),
    });
    if !healthy && let Some(s) = since.and_then(rfc3339) {
        body["unhealthy_since"] = json!(s);
    }
    axum::Json(body).into_response()
}

/// `GET /v1/sys/sealwrap/rewrap`: the last rewrap-style operation (rewrap, rotate-root, catch-up).
pub async fn sealwrap_rewrap_handler(State(core): State<Arc<Core>>) -> Response {
    let r = core.rewrap_report().unwrap_or_default();
    axum::Json(json!({
        "data": {
            "is_running": r.is_running,
            "entries": { "processed": r.processed, "succeeded": r.succeeded, "failed": r.failed },
            "last_operation": if r.operation.is_empty() { Value::Null } else { json!(r) },
        }
    }))
    .into_response()
}

pub async fn hsm_status_handler(State(core): State<Arc<Core>>) -> Response {
    axum::Json(core.status()).into_response()
}

/// Limits of request bodies on the public listener.
#[derive(Clone, Debug)]
pub struct BodyLimits {
    pub max_bytes: usize,
    pub read_timeout: std::time::Duration,
    /// Bytes of request bodies that may be held at once (`listener.max_inflight_request_bytes`).
    pub budget: Arc<tokio::sync::Semaphore>,
}

/// A router and the paths it was given, so that the route set can be checked (a test compares
/// the public listener's paths with an allow-list and probes every admin path on it). Built
/// without state; `with_state` comes last.
pub struct Routes<S> {
    pub router: Router<S>,
    pub paths: Vec<String>,
}

impl<S: Clone + Send + Sync + 'static> Default for Routes<S> {
    fn default() -> Self {
        Routes {
            router: Router::new(),
            paths: Vec::new(),
        }
    }
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn route(mut self, path: &str, handler: axum::routing::MethodRouter<S>) -> Self {
        self.paths.push(path.to_string());
        self.router = self.router.route(path, handler);
        self
    }
}

/// The public listener's own routes (sys), before state.
pub(crate) fn sys_routes() -> Routes<Arc<Core>> {
    Routes::new()
        .route("/v1/sys/health", get(health_handler).head(health_handler))
        .route("/v1/sys/seal-status", get(seal_status_handler))
        .route(
            "/v1/sys/seal-backend-status",
            get(seal_backend_status_handler),
        )
        .route("/v1/sys/init", get(init_status_handler))
        .route("/v1/sys/metrics", get(public_metrics_handler))
}

#[derive(Debug, serde::Deserialize)]
pub(crate) struct MetricsQuery {
    pub(crate) format: Option<String>,
}

/// The exposition, or the 400 for a format other than Vault's `format=prometheus`.
pub(crate) fn metrics_answer(core: &Core, q: &MetricsQuery) -> Response {
    match q.format.as_deref() {
        Some("prometheus") => (
            [(
                axum::http::header::CONTENT_TYPE,
                crate::metrics::CONTENT_TYPE,
            )],
            metrics::render(core),
        )
            .into_response(),
        _ => error_response(
            StatusCode::BAD_REQUEST,
            "only format=prometheus is supported: GET /v1/sys/metrics?format=prometheus",
        ),
    }
}

/// `GET /v1/sys/metrics?format=prometheus` on the public listener: a token whose policy has the
/// `metrics` capability (in a rule for key `*`), as Vault asks for a token with read on
/// `sys/metrics`. Sealed, there are no tokens to check: 503.
async fn public_metrics_handler(
    State(core): State<Arc<Core>>,
    axum::extract::Query(q): axum::extract::Query<MetricsQuery>,
    headers: axum::http::HeaderMap,
) -> Response {
    let Some(t) = core.transit() else {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "sealkeeper is sealed");
    };
    if let Err(e) = t.authorize(
        transit::token_of(&headers),
        "*",
        crate::transit::policy::Capability::Metrics,
    ) {
        return transit::denial(e, None);
    }
    metrics_answer(&core, &q)
}

/// Every path the public listener serves, with the transit mount at `mount`.
pub fn public_paths(mount: &str) -> Vec<String> {
    let mut p = sys_routes().paths;
    p.extend(transit::public_routes(mount).paths);
    p
}

/// What both listeners' routers end with: a JSON 404 and 405 for unknown paths and methods, and
/// extractor rejections in the errors envelope.
pub fn with_json_errors(router: Router) -> Router {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(json_errors))
}
