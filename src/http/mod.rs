//! The public API (served over TLS): Vault-compatible `sys/health` and `sys/seal-status`, plus
//! `sys/hsm-status`. Shared handlers and helpers for the admin socket live here too.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::core::Core;

pub mod audit_layer;
pub mod tls;
pub mod transit;

/// `{"errors": [...]}` with a status, as Vault answers errors.
pub fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError(status, message.into()).into_response()
}

/// An error answer, small enough to return by value.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let fields = audit_layer::AuditFields::with("error", self.1.clone());
        let resp = (self.0, axum::Json(json!({ "errors": [self.1] }))).into_response();
        audit_layer::annotate(resp, fields)
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

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
    let _standby = parse_code(q, "standbycode", 429)?;
    let _dr = parse_code(q, "drsecondarycode", 472)?;
    let _perf = parse_code(q, "performancestandbycode", 473)?;
    let sealed_code = parse_code(q, "sealedcode", 503)?;
    let uninit = parse_code(q, "uninitcode", 501)?;

    let initialized = core.is_initialized();
    let sealed = core.is_sealed();
    let code = if !initialized {
        uninit
    } else if sealed {
        sealed_code
    } else {
        active
    };
    let mut body = json!({
        "initialized": initialized,
        "sealed": sealed,
        "standby": false,
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

pub async fn health_handler(
    State(core): State<Arc<Core>>,
    method: Method,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    match health(&core, &q) {
        Ok((code, _)) if method == Method::HEAD => code.into_response(),
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
        "build_date": option_env!("SEALKEEPER_BUILD_DATE").unwrap_or(""),
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

/// The router of the public listener.
pub fn public_router(
    core: Arc<Core>,
    transit: &crate::config::TransitConfig,
    audit: audit_layer::AuditCtx,
) -> Router {
    let state = transit::TransitState {
        core: core.clone(),
        max_body: transit.max_request_bytes,
    };
    Router::new()
        .route("/v1/sys/health", get(health_handler).head(health_handler))
        .route("/v1/sys/seal-status", get(seal_status_handler))
        .route("/v1/sys/hsm-status", get(hsm_status_handler))
        .route(
            "/v1/sys/seal-backend-status",
            get(seal_backend_status_handler),
        )
        .route("/v1/sys/sealwrap/rewrap", get(sealwrap_rewrap_handler))
        .route("/v1/sys/init", get(init_status_handler))
        .with_state(core)
        .merge(transit::public_routes(
            state,
            transit.mount.trim_matches('/'),
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            audit,
            audit_layer::audit_requests,
        ))
}
