//! The admin API: HTTP/1.1 + JSON on a local Unix socket. Each connection's peer credentials
//! (SO_PEERCRED) are checked against `admin.allowed_uids` / `admin.allowed_gids`; a refused peer gets
//! one 403 answer and the refusal is logged. `curl --unix-socket` works as well as the CLI.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use tokio::net::UnixListener;

mod transit;

use crate::config::AdminConfig;
use crate::core::{Core, CoreError};
use crate::http::Routes;
use crate::http::transit::parse_json;
use crate::http::{error_response, hsm_status_handler, seal_status_body, seal_status_handler};
use crate::seal::Attempt;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminSocketError {
    #[error(
        "admin socket {path}: a file that is not a socket is in the way; refusing to replace it"
    )]
    NotASocket { path: PathBuf },
    #[error("admin socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Binds the admin socket: creates its directory (0755) if needed, replaces a stale socket (and
/// nothing else), and sets mode 0600, or 0660 when groups are allowed.
pub fn bind(cfg: &AdminConfig) -> Result<UnixListener, AdminSocketError> {
    let path = &cfg.socket;
    let io_err = |source| AdminSocketError::Io {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        fs::create_dir_all(dir).map_err(io_err)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(io_err)?;
    }
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => fs::remove_file(path).map_err(io_err)?,
        Ok(_) => return Err(AdminSocketError::NotASocket { path: path.clone() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    let listener = UnixListener::bind(path).map_err(io_err)?;
    let mode = if cfg.allowed_gids.is_empty() {
        0o600
    } else {
        0o660
    };
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err)?;
    Ok(listener)
}

/// Removes the socket file at shutdown, if it is still ours.
pub fn unlink(path: &Path) {
    if fs::symlink_metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false)
    {
        let _ = fs::remove_file(path);
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

pub fn allowed(cfg: &AdminConfig, peer: &Peer) -> bool {
    cfg.allowed_uids.contains(&peer.uid) || cfg.allowed_gids.contains(&peer.gid)
}

/// The router answering a refused peer.
pub fn refusal_router(peer: Peer) -> Router {
    Router::new().fallback(move || async move {
        error_response(
            StatusCode::FORBIDDEN,
            format!(
                "permission denied: uid {} (gid {}) may not administer this sealkeeper (admin.allowed_uids / admin.allowed_gids)",
                peer.uid, peer.gid
            ),
        )
    })
}

fn core_error(e: CoreError) -> Response {
    let status = match &e {
        CoreError::AlreadyInitialized
        | CoreError::NotInitialized
        | CoreError::BadRequest(_)
        | CoreError::NeedsShares(_) => StatusCode::BAD_REQUEST,
        CoreError::Seal(_) | CoreError::Seals { .. } | CoreError::Memory(_) | CoreError::Sealed => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        CoreError::StoredState(_)
        | CoreError::Storage(_)
        | CoreError::Internal(_)
        | CoreError::Transit(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error_response(status, e.to_string())
}

/// The operation's answer as JSON, or its error with the matching status.
fn json_or_error<T: serde::Serialize>(result: Result<T, CoreError>) -> Response {
    match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => core_error(e),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct InitRequest {
    recovery_shares: Option<u32>,
    recovery_threshold: Option<u32>,
    recovery_pgp_keys: Option<Vec<String>>,
    secret_shares: Option<u32>,
    secret_threshold: Option<u32>,
    pgp_keys: Option<Vec<String>>,
    stored_shares: Option<u32>,
    root_token_pgp_key: Option<String>,
}

async fn init(State(core): State<Arc<Core>>, body: Bytes) -> Response {
    let req: InitRequest = match parse_json(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    if req.recovery_pgp_keys.is_some() || req.pgp_keys.is_some() || req.root_token_pgp_key.is_some()
    {
        return error_response(
            StatusCode::BAD_REQUEST,
            "PGP-encrypted shares are not supported by this version",
        );
    }
    if req.stored_shares.is_some() {
        return error_response(
            StatusCode::BAD_REQUEST,
            "stored_shares is not supported: no share is ever stored",
        );
    }
    let shamir = core.seal_type() == "shamir";
    let (n, t) = if shamir {
        if req.recovery_shares.is_some() || req.recovery_threshold.is_some() {
            return error_response(
                StatusCode::BAD_REQUEST,
                "recovery_shares / recovery_threshold apply to an auto seal; this node has a shamir seal: use \
                 secret_shares and secret_threshold",
            );
        }
        match (req.secret_shares, req.secret_threshold) {
            (Some(n), Some(t)) => (n, t),
            _ => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "secret_shares and secret_threshold are required",
                );
            }
        }
    } else {
        if req.secret_shares.unwrap_or(0) > 1 || req.secret_threshold.unwrap_or(0) > 1 {
            return error_response(
                StatusCode::BAD_REQUEST,
                "secret_shares / secret_threshold apply to a shamir seal; this node has an auto seal: use recovery_shares and recovery_threshold",
            );
        }
        match (req.recovery_shares, req.recovery_threshold) {
            (Some(n), Some(t)) => (n, t),
            _ => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "recovery_shares and recovery_threshold are required",
                );
            }
        }
    };
    json_or_error(core.init(n, t).await)
}

async fn seal(State(core): State<Arc<Core>>) -> Response {
    match core.seal().await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => core_error(e),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct UnsealRequest {
    key: Option<String>,
    #[serde(default)]
    reset: bool,
    #[serde(default)]
    migrate: bool,
}

async fn unseal(State(core): State<Arc<Core>>, body: Bytes) -> Response {
    let req: UnsealRequest = match parse_json(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let result = if req.key.is_some() || req.migrate || req.reset {
        core.submit_unseal_key(req.key.as_deref(), req.reset, req.migrate)
            .await
    } else {
        core.unseal(Attempt::Operator).await
    };
    core.wake();
    match result {
        Ok(()) => axum::Json(seal_status_body(&core)).into_response(),
        Err(e) => core_error(e),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditHashRequest {
    input: String,
}

/// Where the audit trail is and who writes it (for `sys/audit/verify`).
#[derive(Clone)]
pub struct AuditTrail {
    pub audit: crate::audit::Audit,
    pub path: Option<std::path::PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct AuditVerifyRequest {
    #[serde(default)]
    files: Vec<std::path::PathBuf>,
}

/// `PUT /v1/sys/audit/verify`: the unsealed daemon checks the trail's MACs (keyed chain) and its
/// anchor, which `sealkeeper audit verify` cannot do without the key.
async fn audit_verify(
    State(core): State<Arc<Core>>,
    axum::Extension(trail): axum::Extension<AuditTrail>,
    body: Bytes,
) -> Response {
    let req: AuditVerifyRequest = match parse_json(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let Some(log) = trail.path.clone() else {
        return error_response(StatusCode::BAD_REQUEST, "no [audit] trail is configured");
    };
    use crate::audit::anchor::CheckError;
    match crate::audit::anchor::check(core.audit_keys(), &trail.audit, &log, &req.files).await {
        Ok(report) => axum::Json(report).into_response(),
        Err(e @ CheckError::Sealed) => {
            error_response(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        Err(e @ CheckError::Refused(_)) => error_response(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error_response(StatusCode::CONFLICT, e.to_string()),
    }
}

/// `PUT /v1/sys/audit-hash`: the audit trail's HMAC of a value, to find it in the trail.
async fn audit_hash(State(core): State<Arc<Core>>, body: Bytes) -> Response {
    let req: AuditHashRequest = match parse_json(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match core.audit_keys() {
        Some(t) => {
            axum::Json(serde_json::json!({ "hash": t.hmac(req.input.as_bytes()) })).into_response()
        }
        None => error_response(StatusCode::SERVICE_UNAVAILABLE, "sealkeeper is sealed"),
    }
}

async fn rotate(State(core): State<Arc<Core>>) -> Response {
    match core.rotate().await {
        Ok(term) => axum::Json(serde_json::json!({ "term": term })).into_response(),
        Err(e) => core_error(e),
    }
}

async fn rotate_root(State(core): State<Arc<Core>>) -> Response {
    json_or_error(core.rotate_root().await)
}

/// The metrics, without a token: the admin socket's peers are already checked.
async fn admin_metrics(
    State(core): State<Arc<Core>>,
    axum::extract::Query(q): axum::extract::Query<crate::http::MetricsQuery>,
) -> Response {
    crate::http::metrics_answer(&core, &q)
}

/// Would a restart unseal? A trial unwrap; always 200 with the answer (`safe` says which).
async fn preflight(State(core): State<Arc<Core>>) -> Response {
    axum::Json(core.preflight().await).into_response()
}

async fn rewrap(State(core): State<Arc<Core>>) -> Response {
    json_or_error(core.rewrap().await)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RekeyInitRequest {
    secret_shares: u32,
    secret_threshold: u32,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    pgp_keys: Option<Vec<String>>,
    #[serde(default)]
    backup: Option<bool>,
    #[serde(default)]
    require_verification: Option<bool>,
}

async fn rekey_init(State(core): State<Arc<Core>>, body: Bytes) -> Response {
    let req: RekeyInitRequest = match parse_json(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    if req.pgp_keys.is_some() || req.backup == Some(true) || req.require_verification == Some(true)
    {
        return error_response(
            StatusCode::BAD_REQUEST,
            "pgp_keys, backup and require_verification are not supported by this version",
        );
    }
    let target = req.target.unwrap_or_else(|| "recovery".into());
    json_or_error(
        core.rekey_init(&target, req.secret_shares, req.secret_threshold)
            .await,
    )
}

async fn rekey_status(State(core): State<Arc<Core>>) -> Response {
    axum::Json(core.rekey_status()).into_response()
}

async fn rekey_cancel(State(core): State<Arc<Core>>) -> Response {
    match core.rekey_cancel().await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => core_error(e),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RekeyUpdateRequest {
    key: String,
    nonce: String,
}

async fn rekey_verify(State(core): State<Arc<Core>>, body: Bytes) -> Response {
    let req: RekeyUpdateRequest = match parse_json(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    json_or_error(core.rekey_verify(&req.key, &req.nonce).await)
}

async fn rekey_update(State(core): State<Arc<Core>>, body: Bytes) -> Response {
    let req: RekeyUpdateRequest = match parse_json(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    json_or_error(core.rekey_update(&req.key, &req.nonce).await)
}

/// The admin socket's core routes (init, seal, unseal, rotation, rekey, audit), before state.
fn core_routes() -> Routes<Arc<Core>> {
    Routes::new()
        .route(
            "/v1/sys/init",
            get(crate::http::init_status_handler).put(init).post(init),
        )
        .route("/v1/sys/seal", post(seal).put(seal))
        .route("/v1/sys/unseal", post(unseal).put(unseal))
        .route("/v1/sys/seal-status", get(seal_status_handler))
        .route("/v1/sys/hsm-status", get(hsm_status_handler))
        .route("/v1/sys/audit-hash", post(audit_hash).put(audit_hash))
        .route("/v1/sys/audit/verify", post(audit_verify).put(audit_verify))
        .route(
            "/v1/sys/seal-backend-status",
            get(crate::http::seal_backend_status_handler),
        )
        .route(
            "/v1/sys/sealwrap/rewrap",
            get(crate::http::sealwrap_rewrap_handler)
                .post(rewrap)
                .put(rewrap),
        )
        .route("/v1/sys/rotate", post(rotate).put(rotate))
        .route("/v1/sys/rotate-root", post(rotate_root).put(rotate_root))
        .route("/v1/sys/preflight", post(preflight).put(preflight))
        .route("/v1/sys/metrics", get(admin_metrics))
        .route(
            "/v1/sys/rekey-recovery-key/init",
            get(rekey_status)
                .put(rekey_init)
                .post(rekey_init)
                .delete(rekey_cancel),
        )
        .route(
            "/v1/sys/rekey-recovery-key/update",
            put(rekey_update).post(rekey_update),
        )
        .route(
            "/v1/sys/rekey-recovery-key/verify",
            get(rekey_status)
                .put(rekey_verify)
                .post(rekey_verify)
                .delete(rekey_cancel),
        )
        .route(
            "/v1/sys/rekey/verify",
            get(rekey_status)
                .put(rekey_verify)
                .post(rekey_verify)
                .delete(rekey_cancel),
        )
        .route(
            "/v1/sys/rekey/init",
            get(rekey_status)
                .put(rekey_init)
                .post(rekey_init)
                .delete(rekey_cancel),
        )
        .route("/v1/sys/rekey/update", put(rekey_update).post(rekey_update))
}

/// Every path the admin socket serves, with the transit mount at `mount`.
pub fn paths(mount: &str) -> Vec<String> {
    let mut p = core_routes().paths;
    p.extend(transit::routes(mount).paths);
    p
}

pub fn router(
    core: Arc<Core>,
    transit: &crate::config::TransitConfig,
    audit: crate::http::audit_layer::AuditCtx,
    trail: AuditTrail,
) -> Router {
    let mount = transit.mount.trim_matches('/');
    let state = crate::http::transit::TransitState {
        max_batch_items: transit.max_batch_items,
        core: core.clone(),
        max_body: transit.max_request_bytes,
    };
    let router = core_routes()
        .router
        .with_state(core)
        .merge(transit::routes(mount).router.with_state(state));
    crate::http::with_json_errors(router)
        .layer(axum::Extension(trail))
        .layer(axum::middleware::from_fn_with_state(
            audit,
            crate::http::audit_layer::audit_requests,
        ))
}

/// For fuzzing and property tests: the admin socket's body parsers on arbitrary bytes.
pub fn parse_bodies(body: &[u8]) -> Vec<Result<(), String>> {
    vec![
        parse_json::<InitRequest>(body).map(|_| ()).map_err(|e| e.1),
        parse_json::<UnsealRequest>(body)
            .map(|_| ())
            .map_err(|e| e.1),
        parse_json::<AuditHashRequest>(body)
            .map(|_| ())
            .map_err(|e| e.1),
        parse_json::<RekeyInitRequest>(body)
            .map(|_| ())
            .map_err(|e| e.1),
        parse_json::<RekeyUpdateRequest>(body)
            .map(|_| ())
            .map_err(|e| e.1),
    ]
    .into_iter()
    .chain(transit::parse_bodies(body))
    .collect()
}
