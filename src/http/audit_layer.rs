//! The audit middleware of both listeners: one record per request, made durable before the answer
//! leaves; when it cannot be, the answer is replaced by a 503 (fail closed).

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::ApiError;
use crate::audit::{Audit, Event, Peer};

#[derive(Clone)]
pub struct AuditCtx {
    pub audit: Audit,
    pub core: std::sync::Arc<crate::core::Core>,
    pub kind: &'static str,
    pub log_health: bool,
}

/// Who is on the other end of the connection (set per connection).
#[derive(Clone, Debug)]
pub struct ConnPeer(pub Peer);

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
    let peer = req.extensions().get::<ConnPeer>().map(|p| p.0.clone());
    // The client token itself is never written; its HMAC lets an operator correlate it.
    let token_hmac = req
        .headers()
        .get("x-vault-token")
        .and_then(|t| ctx.core.transit().map(|tr| tr.audit_hmac(t.as_bytes())));
    let mut resp = next.run(req).await;
    let status = resp.status();
    let outcome = if status.is_success() {
        "ok"
    } else if status == StatusCode::FORBIDDEN {
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
    if let Some(f) = resp.extensions_mut().remove::<AuditFields>() {
        for (k, v) in f.0 {
            if k == "error" {
                ev = ev.error(v.as_str().unwrap_or_default());
            } else {
                ev = ev.field(&k, v);
            }
        }
    }
    match ctx.audit.record(ev).await {
        Ok(()) => resp,
        Err(e) => ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("request refused: the audit log is unavailable ({e})"),
        )
        .into_response(),
    }
}
