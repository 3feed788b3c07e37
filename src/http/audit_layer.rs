//! The audit middleware of both listeners: one record per request, made durable before the answer
//! leaves; when it cannot be, the answer is replaced by a 503 (fail closed).

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::ApiError;
use super::client::{ClientAddr, Denied};
use crate::audit::denials::Denials;
use crate::audit::{Audit, Event, Peer};

#[derive(Clone)]
pub struct AuditCtx {
    pub audit: Audit,
    pub core: std::sync::Arc<crate::core::Core>,
    pub kind: &'static str,
    pub log_health: bool,
    /// Summarizes denials that never reached a key (public listener only).
    pub denials: Option<std::sync::Arc<Denials>>,
}

/// Who is on the other end of the connection (set per connection).
#[derive(Clone, Debug)]
pub struct ConnPeer(pub Peer);

/// The TCP peer's address (set per connection on the public listener).
#[derive(Clone, Copy, Debug)]
pub struct PeerIp(pub std::net::IpAddr);

/// Fields a handler adds to its request's audit record (accessor, key, key version, error).
#[derive(Clone, Debug, Default)]
pub struct AuditFields(pub Map<String, Value>);

impl AuditFields {
    pub fn with(key: &str, value: impl Into<Value>) -> AuditFields {
        let mut m = Map::new();
        m.insert(key.into(), value.into());
        AuditFields(m)
    }
}

/// Adds `fields` to a response's audit record.
pub fn annotate(mut resp: Response, fields: AuditFields) -> Response {
    match resp.extensions_mut().get_mut::<AuditFields>() {
        Some(existing) => existing.0.extend(fields.0),
        None => {
            resp.extensions_mut().insert(fields);
        }
    }
    resp
}

pub async fn audit_requests(State(ctx): State<AuditCtx>, req: Request, next: Next) -> Response {
    if !ctx.audit.enabled() {
        return next.run(req).await;
    }
    let path = req.uri().path().to_string();
    if path == "/v1/sys/health" && !ctx.log_health {
        return next.run(req).await;
    }
    let operation = format!("{} {path}", req.method());
    let mut peer = req.extensions().get::<ConnPeer>().map(|p| p.0.clone());
    let client = req.extensions().get::<ClientAddr>().copied();
    if let (Some(p), Some(c)) = (&mut peer, client)
        && c.forwarded
    {
        p.forwarded_for = Some(c.ip.to_string());
    }
    // The client token itself is never written; its HMAC lets an operator correlate it.
    let token_hmac = super::transit::token_of(req.headers())
        .and_then(|t| ctx.core.audit_keys().map(|k| k.hmac(t.as_bytes())));
    let mut resp = next.run(req).await;
    let status = resp.status();
    let fields = resp
        .extensions_mut()
        .remove::<AuditFields>()
        .unwrap_or_default();
    // A batch answered 2xx (partial_failure_response_code) in which items failed is "partial".
    let outcome = if status.is_success() && fields.0.contains_key("batch_failed") {
        "partial"
    } else if status.is_success() {
        "ok"
    } else if status == StatusCode::FORBIDDEN || status == StatusCode::TOO_MANY_REQUESTS {
        "denied"
    } else {
        "error"
    };
    let mut ev = Event::new(ctx.kind, operation, outcome).field("status", status.as_u16());
    if let Some(p) = peer {
        ev = ev.peer(p);
    }
    if let Some(h) = token_hmac {
        ev = ev.field("client_token_hmac", h);
    }
    for (k, v) in fields.0 {
        if k == "error" {
            ev = ev.error(v.as_str().unwrap_or_default());
        } else {
            ev = ev.field(&k, v);
        }
    }
    // A denial that never reached a key: the first per client address and interval is recorded,
    // the rest are counted into a summary, and none waits for the sync (nothing was released).
    if let (Some(kind), Some(denials), Some(client)) = (
        resp.extensions().get::<Denied>().map(|d| d.0),
        &ctx.denials,
        client,
    ) {
        if denials.note(kind, client.ip) {
            ctx.audit.record_detached(ev);
        }
        return resp;
    }
    match ctx.audit.record(ev).await {
        Ok(()) => resp,
        Err(e) => {
            // The answer says what failed; the log says where.
            tracing::error!(error = %e, "request refused: its audit record could not be written");
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "request refused: the audit log is unavailable ({})",
                    e.reason()
                ),
            )
            .into_response()
        }
    }
}
