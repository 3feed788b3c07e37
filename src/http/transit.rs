//! The Transit API (public listener) and its administration (admin socket).
//!
//! Public: `<mount>/encrypt|decrypt|rewrap/<key>`, `<mount>/datakey/plaintext|wrapped/<key>`,
//! `GET <mount>/keys/<key>`, `auth/token/renew-self`, `auth/token/lookup-self`.
//! Admin socket: key create/rotate/config/delete/list, policies, token create/list/revoke.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::ApiError;
use super::Routes;
use super::audit_layer::{AuditFields, annotate};
use super::wiped::{Wipe, WipedString};
use crate::core::Core;
use crate::transit::{Capability, TokenRecord, Transit, TransitError, decode_b64};

/// Request limits and the mount, shared by the handlers.
#[derive(Clone)]
pub struct TransitState {
    pub core: Arc<Core>,
    pub max_body: usize,
    pub max_batch_items: usize,
}

impl From<TransitError> for ApiError {
    /// Client errors are answered as they are; an internal failure is answered by what failed,
    /// without local paths or record names, and logged in full.
    fn from(e: TransitError) -> ApiError {
        let (status, public) = match &e {
            TransitError::BadRequest(_) => (StatusCode::BAD_REQUEST, None),
            TransitError::Forbidden(_) | TransitError::PolicyDenied { .. } => {
                (StatusCode::FORBIDDEN, None)
            }
            TransitError::NotFound(_) => (StatusCode::NOT_FOUND, None),
            TransitError::Storage(crate::storage::StorageError::Conflict { .. }) => (
                StatusCode::CONFLICT,
                Some("conflict: the record was changed by another writer; retry the request"),
            ),
            TransitError::Storage(crate::storage::StorageError::Unavailable { .. }) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Some(
                    "storage unavailable: writes are refused until it answers again; encrypt and decrypt still work",
                ),
            ),
            TransitError::Storage(crate::storage::StorageError::OutcomeUnknown { .. }) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Some(
                    "storage: the answer to this write was lost and whether it was applied is unknown; read the key back before retrying",
                ),
            ),
            TransitError::Storage(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                Some("internal error: storage I/O failed (details in the server log)"),
            ),
            TransitError::Record { .. } => (
                StatusCode::INTERNAL_SERVER_ERROR,
                Some("internal error: a stored record is invalid (details in the server log)"),
            ),
            TransitError::Memory(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                Some(
                    "internal error: memory for key material could not be locked (details in the server log)",
                ),
            ),
            _ => (
                StatusCode::INTERNAL_SERVER_ERROR,
                Some("internal error (details in the server log)"),
            ),
        };
        match public {
            Some(m) => {
                tracing::error!(error = %e, "request failed");
                ApiError(status, m.into())
            }
            None => ApiError(status, e.to_string()),
        }
    }
}

pub(crate) type ApiResult = Result<Response, ApiError>;

pub(crate) fn transit(st: &TransitState) -> Result<Arc<Transit>, ApiError> {
    st.core.transit().ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "sealkeeper is sealed".into(),
        )
    })
}

/// Vault's response envelope.
pub(crate) fn envelope<D: Serialize + Wipe>(data: D, auth: Value) -> Response {
    envelope_with(data, auth, Value::Null)
}

pub(crate) fn envelope_with<D: Serialize + Wipe>(
    mut data: D,
    mut auth: Value,
    warnings: Value,
) -> Response {
    #[derive(Serialize)]
    struct Envelope<'a, D> {
        request_id: &'a str,
        lease_id: &'static str,
        renewable: bool,
        lease_duration: u64,
        data: &'a D,
        wrap_info: Option<()>,
        warnings: &'a Value,
        auth: &'a Value,
    }
    let id = crate::crypto::RandomId::new();
    // Plaintexts, data keys and tokens travel in these answers: wiped once serialized and once
    // sent.
    let resp = super::wiped::json_response(
        StatusCode::OK,
        &Envelope {
            request_id: id.as_str(),
            lease_id: "",
            renewable: false,
            lease_duration: 0,
            data: &data,
            wrap_info: None,
            warnings: &warnings,
            auth: &auth,
        },
    );
    data.wipe();
    auth.wipe();
    resp
}

/// The request's token record if it may do `cap` on `key`, else the answer to send: a failed
/// authentication is marked for the throttle and the denial summary; a policy denial names the
/// token's accessor and the key in the audit record and in an `info` log line.
fn authorized(
    t: &Transit,
    headers: &HeaderMap,
    key: &str,
    cap: Capability,
) -> Result<Arc<TokenRecord>, Box<Response>> {
    t.authorize(token_of(headers), key, cap)
        .map_err(|e| Box::new(denial(e, Some((key, cap)))))
}

pub(crate) fn denial(e: TransitError, target: Option<(&str, Capability)>) -> Response {
    match e {
        TransitError::PolicyDenied { accessor } => {
            let (key, cap) = target.unzip();
            tracing::info!(%accessor, key = key.unwrap_or(""), capability = ?cap, "request denied by policy");
            annotate(
                ApiError(StatusCode::FORBIDDEN, "permission denied".into()).into_response(),
                || AuditFields {
                    accessor: Some(accessor),
                    key: key.map(str::to_string),
                    ..Default::default()
                },
            )
        }
        TransitError::Forbidden(_) => {
            super::audit_layer::note_denied(crate::audit::denials::DenialKind::Authentication);
            ApiError::from(e).into_response()
        }
        other => ApiError::from(other).into_response(),
    }
}

/// The request's client token (`X-Vault-Token`, else `Authorization: Bearer`), borrowed from the
/// headers so that no further copy of it is made.
pub fn token_of(headers: &HeaderMap) -> Option<&str> {
    if let Some(t) = headers.get("x-vault-token").and_then(|v| v.to_str().ok()) {
        return Some(t.trim());
    }
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Reads a body of at most `max` bytes.
pub(crate) async fn read_body(body: Body, max: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, max).await.map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("request body is larger than the limit of {max} bytes"),
        )
    })
}

/// Parses a JSON body; an empty body is `{}`.
pub(crate) fn parse_json<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

/// Reads and parses a JSON body of at most `max` bytes.
pub(crate) async fn json_body<T: for<'de> Deserialize<'de>>(
    body: Body,
    max: usize,
) -> Result<T, ApiError> {
    parse_json(&read_body(body, max).await?)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Item {
    plaintext: Option<WipedString>,
    ciphertext: Option<String>,
    associated_data: Option<WipedString>,
    context: Option<String>,
    nonce: Option<String>,
    key_version: Option<u32>,
    reference: Option<String>,
}

/// A Transit operation's body. The single item's fields are spelled out rather than flattened, so
/// that serde parses straight into the struct (a flattened struct is first buffered whole).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpRequest {
    plaintext: Option<WipedString>,
    ciphertext: Option<String>,
    associated_data: Option<WipedString>,
    context: Option<String>,
    nonce: Option<String>,
    key_version: Option<u32>,
    reference: Option<String>,
    batch_input: Option<Vec<Item>>,
    partial_failure_response_code: Option<i64>,
    #[serde(rename = "type")]
    key_type: Option<String>,
    convergent_encryption: Option<bool>,
    bits: Option<u32>,
}

impl OpRequest {
    /// The request's own item (when it has no `batch_input`).
    fn item(&mut self) -> Item {
        Item {
            plaintext: self.plaintext.take(),
            ciphertext: self.ciphertext.take(),
            associated_data: self.associated_data.take(),
            context: self.context.take(),
            nonce: self.nonce.take(),
            key_version: self.key_version,
            reference: self.reference.take(),
        }
    }
}

/// Counts `batch_input`'s items without building them (`serde::de::IgnoredAny`), so that an
/// oversized batch is refused before it takes any memory.
fn batch_len(body: &[u8]) -> Result<usize, ApiError> {
    struct Count(usize);
    impl<'de> Deserialize<'de> for Count {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Count, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Count;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a list of batch items")
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut a: A,
                ) -> Result<Count, A::Error> {
                    let mut n = 0;
                    while a.next_element::<serde::de::IgnoredAny>()?.is_some() {
                        n += 1;
                    }
                    Ok(Count(n))
                }
                fn visit_unit<E>(self) -> Result<Count, E> {
                    Ok(Count(0))
                }
            }
            d.deserialize_any(V)
        }
    }
    #[derive(Deserialize)]
    struct Outer {
        batch_input: Option<Count>,
    }
    // Only a body that names the field is scanned; the real parse reports any other error.
    if !body.windows(11).any(|w| w == b"batch_input") {
        return Ok(0);
    }
    Ok(serde_json::from_slice::<Outer>(body)
        .ok()
        .and_then(|o| o.batch_input)
        .map_or(0, |c| c.0))
}

/// The status of a batch in which some items failed, as Vault decides it: 400 when every item
/// failed on its input (500 when one failed inside), else `partial_failure_response_code` when it
/// is a status that can carry the answer, else 400 with a warning.
fn batch_status(
    requested: Option<i64>,
    succeeded: usize,
    internal_error: bool,
) -> (StatusCode, Option<String>) {
    if succeeded == 0 {
        let code = if internal_error {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::BAD_REQUEST
        };
        return (code, None);
    }
    match requested {
        None => (StatusCode::BAD_REQUEST, None),
        Some(c) => match u16::try_from(c)
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(code)
                if (200..=599).contains(&code.as_u16())
                    && ![204, 205, 304].contains(&code.as_u16()) =>
            {
                (code, None)
            }
            _ => (
                StatusCode::BAD_REQUEST,
                Some(format!(
                    "partial_failure_response_code {c} is not a status that can carry the batch results \
                     (200-599 but 204, 205, 304); answered 400"
                )),
            ),
        },
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Encrypt,
    Decrypt,
    Rewrap,
}

impl Op {
    fn capability(self) -> Capability {
        match self {
            Op::Encrypt => Capability::Encrypt,
            Op::Decrypt => Capability::Decrypt,
            Op::Rewrap => Capability::Rewrap,
        }
    }
}

fn aad_of(item: &Item) -> Result<zeroize::Zeroizing<Vec<u8>>, TransitError> {
    if item.context.as_deref().is_some_and(|c| !c.is_empty()) {
        return Err(TransitError::BadRequest(
            "context was given, but key derivation is not supported: keys are not derived".into(),
        ));
    }
    if item.nonce.as_deref().is_some_and(|c| !c.is_empty()) {
        return Err(TransitError::BadRequest(
            "a caller-chosen nonce is not supported".into(),
        ));
    }
    match &item.associated_data {
        Some(a) => decode_b64("associated_data", a),
        None => Ok(zeroize::Zeroizing::new(Vec::new())),
    }
}

/// One item's answer, single or in a batch.
#[derive(Debug, Default, Serialize)]
struct ItemOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    ciphertext: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plaintext: Option<WipedString>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

// The plaintext wipes itself when dropped.
impl Wipe for ItemOut {}

#[derive(Serialize)]
struct BatchOut {
    batch_results: Vec<ItemOut>,
}

impl Wipe for BatchOut {}

/// One item's answer and the key version it used (for the audit record; a decrypt answer does
/// not carry it, as in Vault).
fn one(t: &Transit, op: Op, key: &str, item: &Item) -> Result<(ItemOut, u32), TransitError> {
    let aad = aad_of(item)?;
    let (mut out, version) = match op {
        Op::Encrypt => {
            let p = item
                .plaintext
                .as_deref()
                .ok_or_else(|| TransitError::BadRequest("missing plaintext".into()))?;
            let pt = decode_b64("plaintext", p)?;
            let (ct, v) = t.encrypt(key, &pt, &aad, item.key_version)?;
            let out = ItemOut {
                ciphertext: Some(ct),
                key_version: Some(v),
                ..ItemOut::default()
            };
            (out, v)
        }
        Op::Decrypt => {
            let c = item
                .ciphertext
                .as_deref()
                .ok_or_else(|| TransitError::BadRequest("missing ciphertext".into()))?;
            let (pt, v) = t.decrypt(key, c, &aad)?;
            let out = ItemOut {
                plaintext: Some(WipedString::from(B64.encode(&*pt))),
                ..ItemOut::default()
            };
            (out, v)
        }
        Op::Rewrap => {
            let c = item
                .ciphertext
                .as_deref()
                .ok_or_else(|| TransitError::BadRequest("missing ciphertext".into()))?;
            let (ct, v) = t.rewrap(key, c, &aad, item.key_version)?;
            let out = ItemOut {
                ciphertext: Some(ct),
                key_version: Some(v),
                ..ItemOut::default()
            };
            (out, v)
        }
    };
    out.reference.clone_from(&item.reference);
    Ok((out, version))
}

async fn operation(st: TransitState, op: Op, key: String, req: Request) -> ApiResult {
    let t = transit(&st)?;
    let rec = match authorized(&t, req.headers(), &key, op.capability()) {
        Ok(r) => r,
        Err(resp) => return Ok(*resp),
    };
    let result = operation_inner(&st, &t, op, &key, req.into_body()).await;
    Ok(annotate(
        result.unwrap_or_else(IntoResponse::into_response),
        || accessor_and_key(&rec, &key),
    ))
}

async fn operation_inner(
    st: &TransitState,
    t: &Transit,
    op: Op,
    key: &str,
    body: Body,
) -> ApiResult {
    let bytes = read_body(body, st.max_body).await?;
    operation_on(t, op, key, &bytes, st.max_batch_items)
}

/// An encrypt, decrypt or rewrap request's body, once read and authorized: what the route runs.
fn operation_on(t: &Transit, op: Op, key: &str, bytes: &[u8], max_batch_items: usize) -> ApiResult {
    let n = batch_len(bytes)?;
    if n > max_batch_items {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "batch_input has {n} items; the limit is {max_batch_items} (transit.max_batch_items)"
            ),
        ));
    }
    let mut req: OpRequest = parse_json(bytes)?;
    if req
        .key_type
        .as_deref()
        .is_some_and(|k| k != crate::transit::KEY_TYPE)
        || req.convergent_encryption == Some(true)
    {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "only aes256-gcm96 keys without convergent encryption exist here".into(),
        ));
    }
    let Some(batch) = req.batch_input.take() else {
        let (data, version) = one(t, op, key, &req.item())?;
        return Ok(annotate(envelope(data, Value::Null), || AuditFields {
            key_version: Some(version),
            ..Default::default()
        }));
    };
    if batch.is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "batch_input is empty".into(),
        ));
    }
    let mut failed = 0usize;
    let mut internal_error = false;
    let results: Vec<ItemOut> = batch
        .iter()
        .map(|item| match one(t, op, key, item) {
            Ok((v, _)) => v,
            Err(e) => {
                failed += 1;
                internal_error |=
                    !matches!(e, TransitError::BadRequest(_) | TransitError::NotFound(_));
                ItemOut {
                    error: Some(ApiError::from(e).1),
                    reference: item.reference.clone(),
                    ..ItemOut::default()
                }
            }
        })
        .collect();
    let total = batch.len();
    drop(batch);
    let mut fields = AuditFields {
        batch_items: Some(total),
        ..Default::default()
    };
    let mut warnings = Value::Null;
    let mut status = StatusCode::OK;
    if failed > 0 {
        // Each item's result stands on its own either way.
        let (code, warning) = batch_status(
            req.partial_failure_response_code,
            total - failed,
            internal_error,
        );
        status = code;
        if let Some(w) = warning {
            warnings = json!([w]);
        }
        fields.batch_failed = Some(failed);
    }
    let mut resp = envelope_with(
        BatchOut {
            batch_results: results,
        },
        Value::Null,
        warnings,
    );
    *resp.status_mut() = status;
    Ok(annotate(resp, || fields))
}

async fn encrypt(
    State(st): State<TransitState>,
    Path(key): Path<String>,
    req: Request,
) -> ApiResult {
    operation(st, Op::Encrypt, key, req).await
}

async fn decrypt(
    State(st): State<TransitState>,
    Path(key): Path<String>,
    req: Request,
) -> ApiResult {
    operation(st, Op::Decrypt, key, req).await
}

async fn rewrap(
    State(st): State<TransitState>,
    Path(key): Path<String>,
    req: Request,
) -> ApiResult {
    operation(st, Op::Rewrap, key, req).await
}

async fn datakey(
    State(st): State<TransitState>,
    Path((kind, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let t = transit(&st)?;
    let rec = match authorized(&t, &headers, &key, Capability::Datakey) {
        Ok(r) => r,
        Err(resp) => return Ok(*resp),
    };
    let mut req: OpRequest = json_body(body, st.max_body).await?;
    let with_plaintext = match kind.as_str() {
        "plaintext" => true,
        "wrapped" => false,
        other => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("datakey type must be \"plaintext\" or \"wrapped\", not {other:?}"),
            ));
        }
    };
    let aad = aad_of(&req.item())?;
    let (dk, ct, v) = t.datakey(&key, req.bits.unwrap_or(256), &aad)?;
    let data = ItemOut {
        ciphertext: Some(ct),
        key_version: Some(v),
        plaintext: with_plaintext.then(|| WipedString::from(B64.encode(&*dk))),
        ..ItemOut::default()
    };
    Ok(annotate(envelope(data, Value::Null), || {
        accessor_and_key(&rec, &key)
    }))
}

async fn read_key(
    State(st): State<TransitState>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let t = transit(&st)?;
    let rec = match authorized(&t, &headers, &key, Capability::Read) {
        Ok(r) => r,
        Err(resp) => return Ok(*resp),
    };
    Ok(annotate(
        envelope(t.key_metadata(&key)?, Value::Null),
        || accessor_and_key(&rec, &key),
    ))
}

fn accessor_and_key(rec: &TokenRecord, key: &str) -> AuditFields {
    AuditFields {
        accessor: Some(rec.accessor.clone()),
        key: Some(key.to_string()),
        ..Default::default()
    }
}

pub(crate) fn auth_block(rec: &TokenRecord, token: Option<&str>) -> Value {
    let now = crate::clock::now_unix();
    json!({
        "client_token": token.unwrap_or(""),
        "accessor": rec.accessor,
        "policies": rec.policies,
        "token_policies": rec.policies,
        "metadata": null,
        "lease_duration": rec.remaining_ttl(now),
        "renewable": rec.renewable,
        "entity_id": "",
        "token_type": "service",
        "orphan": true,
        "period": rec.period_secs.unwrap_or(0),
    })
}

fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
        .to_string()
}

pub(crate) fn lookup_data(rec: &TokenRecord, id: Option<&str>) -> Value {
    let now = crate::clock::now_unix();
    json!({
        "accessor": rec.accessor,
        "creation_time": rec.created_unix,
        "creation_ttl": rec.ttl_secs,
        "display_name": rec.display_name,
        "entity_id": "",
        "expire_time": rec.expire_unix.map(rfc3339),
        "explicit_max_ttl": 0,
        "id": id.unwrap_or(""),
        "issue_time": rfc3339(rec.created_unix),
        "last_renewal_time": rec.last_renewal_unix,
        "meta": null,
        "num_uses": 0,
        "orphan": true,
        "path": "auth/token/create",
        "period": rec.period_secs,
        "policies": rec.policies,
        "renewable": rec.renewable,
        "ttl": rec.remaining_ttl(now),
        "type": "service",
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewRequest {
    #[serde(default, deserialize_with = "crate::transit::tokens::duration_opt")]
    increment: Option<u64>,
}

async fn renew_self(State(st): State<TransitState>, headers: HeaderMap, body: Body) -> ApiResult {
    let t = transit(&st)?;
    let token = token_of(&headers);
    if let Err(e) = t.authenticate(token) {
        return Ok(denial(e, None));
    }
    let req: RenewRequest = json_body(body, st.max_body).await?;
    let rec = t.renew(token, req.increment).await?;
    Ok(annotate(
        envelope(Value::Null, auth_block(&rec, token)),
        || AuditFields {
            accessor: Some(rec.accessor.clone()),
            ..Default::default()
        },
    ))
}

async fn lookup_self(State(st): State<TransitState>, headers: HeaderMap) -> ApiResult {
    let t = transit(&st)?;
    let token = token_of(&headers);
    let rec = match t.authenticate(token) {
        Ok(r) => r,
        Err(e) => return Ok(denial(e, None)),
    };
    Ok(annotate(
        envelope(lookup_data(&rec, token), Value::Null),
        || AuditFields {
            accessor: Some(rec.accessor.clone()),
            ..Default::default()
        },
    ))
}

/// Routes of the public listener under `mount`.
pub fn public_routes(mount: &str) -> Routes<TransitState> {
    Routes::new()
        .route(
            &format!("/v1/{mount}/encrypt/{{key}}"),
            post(encrypt).put(encrypt),
        )
        .route(
            &format!("/v1/{mount}/decrypt/{{key}}"),
            post(decrypt).put(decrypt),
        )
        .route(
            &format!("/v1/{mount}/rewrap/{{key}}"),
            post(rewrap).put(rewrap),
        )
        .route(
            &format!("/v1/{mount}/datakey/{{kind}}/{{key}}"),
            post(datakey).put(datakey),
        )
        .route(&format!("/v1/{mount}/keys/{{key}}"), get(read_key))
        .route(
            "/v1/auth/token/renew-self",
            post(renew_self).put(renew_self),
        )
        .route(
            "/v1/auth/token/lookup-self",
            get(lookup_self).post(lookup_self),
        )
}

/// For fuzzing and property tests: runs `body` through the encrypt, decrypt or rewrap route's own
/// code after authorization (`op` is "encrypt", "decrypt" or "rewrap"), and the public routes'
/// other body types through the parser their handlers use (the admin routes' bodies:
/// `admin::parse_bodies`). Returns the status and body of the answer.
pub fn process_body(
    t: &Transit,
    op: &str,
    key: &str,
    body: &[u8],
    max_batch_items: usize,
) -> (StatusCode, Value) {
    let _ = parse_json::<RenewRequest>(body);
    let op = match op {
        "encrypt" => Op::Encrypt,
        "decrypt" => Op::Decrypt,
        _ => Op::Rewrap,
    };
    let resp =
        operation_on(t, op, key, body, max_batch_items).unwrap_or_else(IntoResponse::into_response);
    let status = resp.status();
    let body = response_json(resp);
    (status, body)
}

/// The JSON body of an in-memory response (answers here are always one buffered chunk).
fn response_json(resp: Response) -> Value {
    use http_body_util::BodyExt;
    let fut = resp.into_body().collect();
    let mut fut = std::pin::pin!(fut);
    let waker = std::task::Waker::noop();
    match fut
        .as_mut()
        .poll(&mut std::task::Context::from_waker(waker))
    {
        std::task::Poll::Ready(Ok(c)) => {
            serde_json::from_slice(&c.to_bytes()).unwrap_or(Value::Null)
        }
        _ => Value::Null,
    }
}
