//! The audit record of each request on both listeners: one record per request, made durable before
//! the answer leaves; when it cannot be, the answer is replaced by a 503 (fail closed).
//!
//! Handlers add what they know (the token's accessor, the key, its version, batch counts, the
//! error) through [`note`], into a note scoped to the request's task ([`with_note`]): nothing is
//! attached to the response and nothing is built when the request is not audited.

use std::cell::RefCell;
use std::future::Future;
use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::audit::denials::{DenialKind, Denials};
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

/// Who is on the other end of the connection (set per connection on the admin socket).
#[derive(Clone, Debug)]
pub struct ConnPeer(pub Peer);

/// What a handler adds to its request's audit record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFields {
    pub accessor: Option<String>,
    pub key: Option<String>,
    pub key_version: Option<u32>,
    pub batch_items: Option<usize>,
    pub batch_failed: Option<usize>,
    pub error: Option<String>,
}

impl AuditFields {
    fn merge(&mut self, o: AuditFields) {
        macro_rules! take {
            ($($f:ident),*) => { $( if o.$f.is_some() { self.$f = o.$f; } )* };
        }
        take!(accessor, key, key_version, batch_items, batch_failed, error);
    }
}

/// The request's note: whether it is audited, what handlers added, and whether it was a denial
/// that never reached a key (counted by the throttle and summarized in the trail).
#[derive(Debug, Default)]
pub struct Note {
    pub audited: bool,
    pub fields: AuditFields,
    pub denied: Option<DenialKind>,
}

tokio::task_local! {
    static NOTE: RefCell<Note>;
}

/// Runs `fut` (a request's handling) with a fresh note, and returns the note with its output.
pub async fn with_note<F: Future>(audited: bool, fut: F) -> (F::Output, Note) {
    let note = RefCell::new(Note {
        audited,
        ..Note::default()
    });
    NOTE.scope(note, async {
        let out = fut.await;
        (out, NOTE.with(|n| n.take()))
    })
    .await
}

/// Adds fields to the current request's audit record; `fields` is only called when the request
/// is audited (outside a request, nothing happens).
pub fn note(fields: impl FnOnce() -> AuditFields) {
    let _ = NOTE.try_with(|n| {
        let mut n = n.borrow_mut();
        if n.audited {
            let f = fields();
            n.fields.merge(f);
        }
    });
}

/// Marks the current request as a denial that never reached a key.
pub fn note_denied(kind: DenialKind) {
    let _ = NOTE.try_with(|n| n.borrow_mut().denied = Some(kind));
}

/// Adds `fields` to a response's audit record (kept for the handlers' `annotate(resp, ...)` shape).
pub fn annotate(resp: Response, fields: impl FnOnce() -> AuditFields) -> Response {
    note(fields);
    resp
}

/// What a request's record needs from before the handler ran.
pub struct RequestAudit {
    operation: String,
    peer: Option<Peer>,
    token_hmac: Option<String>,
}

impl RequestAudit {
    /// The start of `req`'s record, or None when it is not recorded (no audit trail, or a health
    /// probe while `log_health` is off). `forwarded_for` is the client address a trusted proxy
    /// named.
    pub fn start<B>(
        ctx: &AuditCtx,
        req: &axum::http::Request<B>,
        peer: Option<&Peer>,
        forwarded_for: Option<IpAddr>,
    ) -> Option<RequestAudit> {
        if !ctx.audit.enabled() {
            return None;
        }
        let path = req.uri().path();
        if path == "/v1/sys/health" && !ctx.log_health {
            return None;
        }
        let method = req.method().as_str();
        let mut operation = String::with_capacity(method.len() + 1 + path.len());
        operation.push_str(method);
        operation.push(' ');
        operation.push_str(path);
        let peer = peer.map(|p| Peer {
            forwarded_for: forwarded_for.map(|ip| ip.to_string()),
            ..p.clone()
        });
        // The client token itself is never written; its HMAC lets an operator correlate it.
        let token_hmac = super::transit::token_of(req.headers())
            .and_then(|t| ctx.core.audit_keys().map(|k| k.hmac(t.as_bytes())));
        Some(RequestAudit {
            operation,
            peer,
            token_hmac,
        })
    }

    fn event(self, kind: &'static str, status: StatusCode, f: AuditFields) -> Event {
        // A batch answered 2xx (partial_failure_response_code) in which items failed is "partial".
        let outcome = if status.is_success() && f.batch_failed.is_some() {
            "partial"
        } else if status.is_success() {
            "ok"
        } else if status == StatusCode::FORBIDDEN || status == StatusCode::TOO_MANY_REQUESTS {
            "denied"
        } else {
            "error"
        };
        let mut ev = Event::new(kind, self.operation, outcome).field("status", status.as_u16());
        if let Some(p) = self.peer {
            ev = ev.peer(p);
        }
        if let Some(h) = self.token_hmac {
            ev = ev.field("client_token_hmac", h);
        }
        if let Some(e) = f.error {
            ev = ev.error(e);
        }
        if let Some(a) = f.accessor {
            ev = ev.field("accessor", a);
        }
        if let Some(k) = f.key {
            ev = ev.field("key", k);
        }
        if let Some(v) = f.key_version {
            ev = ev.field("key_version", v);
        }
        if let Some(n) = f.batch_items {
            ev = ev.field("batch_items", n);
        }
        if let Some(n) = f.batch_failed {
            ev = ev.field("batch_failed", n);
        }
        ev
    }

    /// Records the request and returns the answer to send: `resp`, or a 503 when the record could
    /// not be made durable. A denial that never reached a key is recorded for the first time per
    /// client address and interval, counted into a summary otherwise, and never waits for the
    /// sync (nothing was released).
    pub async fn finish(
        self,
        ctx: &AuditCtx,
        note: Note,
        client: Option<IpAddr>,
        resp: Response,
    ) -> Response {
        let ev = self.event(ctx.kind, resp.status(), note.fields);
        if let (Some(kind), Some(denials), Some(ip)) = (note.denied, &ctx.denials, client) {
            if denials.note(kind, ip) {
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
}

/// The admin socket's audit middleware (the public listener does the same in its service).
pub async fn audit_requests(State(ctx): State<AuditCtx>, req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<ConnPeer>().map(|p| p.0.clone());
    let start = RequestAudit::start(&ctx, &req, peer.as_ref(), None);
    let (resp, note) = with_note(start.is_some(), next.run(req)).await;
    match start {
        Some(s) => s.finish(&ctx, note, None, resp).await,
        None => resp,
    }
}
