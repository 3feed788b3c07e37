//! The Transit API (public listener) and its administration (admin socket).
//!
//! Public: `<mount>/encrypt|decrypt|rewrap/<key>`, `<mount>/datakey/plaintext|wrapped/<key>`,
//! `GET <mount>/keys/<key>`, `auth/token/renew-self`, `auth/token/lookup-self`.
//! Admin socket: key create/rotate/config/delete/list, policies, token create/list/revoke.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiError;
use super::audit_layer::{AuditFields, annotate};
use crate::core::Core;
use crate::transit::{
    Capability, KeyConfig, Policy, TokenRecord, TokenRequest, Transit, TransitError, decode_b64,
};

/// Request limits and the mount, shared by the handlers.
#[derive(Clone)]
pub struct TransitState {
    pub core: Arc<Core>,
    pub max_body: usize,
}

impl From<TransitError> for ApiError {
    fn from(e: TransitError) -> ApiError {
        let status = match &e {
            TransitError::BadRequest(_) => StatusCode::BAD_REQUEST,
            TransitError::Forbidden(_) => StatusCode::FORBIDDEN,
            TransitError::NotFound(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

type ApiResult = Result<Response, ApiError>;

fn transit(st: &TransitState) -> Result<Arc<Transit>, ApiError> {
    st.core.transit().ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "sealkeeper is sealed".into(),
        )
    })
}

/// Vault's response envelope.
fn envelope(data: Value, auth: Value) -> Response {
    axum::Json(json!({
        "request_id": crate::crypto::random_id(),
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": data,
        "wrap_info": null,
        "warnings": null,
        "auth": auth,
    }))
    .into_response()
}

fn token_of(headers: &HeaderMap) -> Option<String> {
    if let Some(t) = headers.get("x-vault-token").and_then(|v| v.to_str().ok()) {
        return Some(t.trim().to_string());
    }
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
}

/// Reads a JSON body of at most `max` bytes; an empty body is `{}`.
async fn json_body<T: for<'de> Deserialize<'de>>(body: Body, max: usize) -> Result<T, ApiError> {
    let bytes: Bytes = axum::body::to_bytes(body, max).await.map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("request body is larger than the limit of {max} bytes"),
        )
    })?;
    let bytes: &[u8] = if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        b"{}"
    } else {
        &bytes
    };
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Item {
    plaintext: Option<String>,
    ciphertext: Option<String>,
    associated_data: Option<String>,
    context: Option<String>,
    nonce: Option<String>,
    key_version: Option<u32>,
    reference: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpRequest {
    #[serde(flatten)]
    item: Item,
    batch_input: Option<Vec<Item>>,
    partial_failure_response_code: Option<u16>,
    #[serde(rename = "type")]
    key_type: Option<String>,
    convergent_encryption: Option<bool>,
    bits: Option<u32>,
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

fn one(t: &Transit, op: Op, key: &str, item: &Item) -> Result<Value, TransitError> {
    let aad = aad_of(item)?;
    let mut out = match op {
        Op::Encrypt => {
            let p = item
                .plaintext
                .as_deref()
                .ok_or_else(|| TransitError::BadRequest("missing plaintext".into()))?;
            let pt = decode_b64("plaintext", p)?;
            let (ct, v) = t.encrypt(key, &pt, &aad, item.key_version)?;
            json!({ "ciphertext": ct, "key_version": v })
        }
        Op::Decrypt => {
            let c = item
                .ciphertext
                .as_deref()
                .ok_or_else(|| TransitError::BadRequest("missing ciphertext".into()))?;
            let (pt, _) = t.decrypt(key, c, &aad)?;
            json!({ "plaintext": B64.encode(&*pt) })
        }
        Op::Rewrap => {
            let c = item
                .ciphertext
                .as_deref()
                .ok_or_else(|| TransitError::BadRequest("missing ciphertext".into()))?;
            let (ct, v) = t.rewrap(key, c, &aad, item.key_version)?;
            json!({ "ciphertext": ct, "key_version": v })
        }
    };
    if let Some(r) = &item.reference {
        out["reference"] = json!(r);
    }
    Ok(out)
}

async fn operation(
    st: TransitState,
    op: Op,
    key: String,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let t = transit(&st)?;
    let rec = t.authorize(token_of(&headers).as_deref(), &key, op.capability())?;
    let fields = accessor_and_key(&rec, &key);
    let result = operation_inner(&st, &t, op, &key, body).await;
    Ok(annotate(
        result.unwrap_or_else(IntoResponse::into_response),
        fields,
    ))
}

async fn operation_inner(
    st: &TransitState,
    t: &Transit,
    op: Op,
    key: &str,
    body: Body,
) -> ApiResult {
    let req: OpRequest = json_body(body, st.max_body).await?;
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
    let Some(batch) = req.batch_input else {
        let data = one(t, op, key, &req.item)?;
        let version = data.get("key_version").cloned();
        let resp = envelope(data, Value::Null);
        return Ok(match version {
            Some(v) => annotate(resp, AuditFields::with("key_version", v)),
            None => resp,
        });
    };
    if batch.is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "batch_input is empty".into(),
        ));
    }
    let mut any_error = false;
    let results: Vec<Value> = batch
        .iter()
        .map(|item| match one(t, op, key, item) {
            Ok(v) => v,
            Err(e) => {
                any_error = true;
                let mut v = json!({ "error": e.to_string() });
                if let Some(r) = &item.reference {
                    v["reference"] = json!(r);
                }
                v
            }
        })
        .collect();
    let mut resp = envelope(json!({ "batch_results": results }), Value::Null);
    if any_error {
        // As Vault: 400 when an item failed, unless the caller asked for another code. Each item's
        // result stands on its own either way.
        let code = req
            .partial_failure_response_code
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        *resp.status_mut() = code;
    }
    Ok(resp)
}

async fn encrypt(
    State(st): State<TransitState>,
    Path(key): Path<String>,
    h: HeaderMap,
    body: Body,
) -> ApiResult {
    operation(st, Op::Encrypt, key, h, body).await
}

async fn decrypt(
    State(st): State<TransitState>,
    Path(key): Path<String>,
    h: HeaderMap,
    body: Body,
) -> ApiResult {
    operation(st, Op::Decrypt, key, h, body).await
}

async fn rewrap(
    State(st): State<TransitState>,
    Path(key): Path<String>,
    h: HeaderMap,
    body: Body,
) -> ApiResult {
    operation(st, Op::Rewrap, key, h, body).await
}

async fn datakey(
    State(st): State<TransitState>,
    Path((kind, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let t = transit(&st)?;
    let rec = t.authorize(token_of(&headers).as_deref(), &key, Capability::Datakey)?;
    let req: OpRequest = json_body(body, st.max_body).await?;
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
    let aad = aad_of(&req.item)?;
    let (dk, ct, v) = t.datakey(&key, req.bits.unwrap_or(256), &aad)?;
    let mut data = json!({ "ciphertext": ct, "key_version": v });
    if with_plaintext {
        data["plaintext"] = json!(B64.encode(&*dk));
    }
    Ok(annotate(
        envelope(data, Value::Null),
        accessor_and_key(&rec, &key),
    ))
}

async fn read_key(
    State(st): State<TransitState>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let t = transit(&st)?;
    let rec = t.authorize(token_of(&headers).as_deref(), &key, Capability::Read)?;
    Ok(annotate(
        envelope(t.key_metadata(&key)?, Value::Null),
        accessor_and_key(&rec, &key),
    ))
}

fn accessor_and_key(rec: &TokenRecord, key: &str) -> AuditFields {
    AuditFields(
        [
            ("accessor".to_string(), json!(rec.accessor)),
            ("key".to_string(), json!(key)),
        ]
        .into_iter()
        .collect(),
    )
}

fn auth_block(rec: &TokenRecord, token: Option<&str>) -> Value {
    let now = crate::transit::now_unix();
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

fn lookup_data(rec: &TokenRecord, id: Option<&str>) -> Value {
    let now = crate::transit::now_unix();
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
    t.authenticate(token.as_deref())?;
    let req: RenewRequest = json_body(body, st.max_body).await?;
    let rec = t.renew(token.as_deref(), req.increment)?;
    Ok(annotate(
        envelope(Value::Null, auth_block(&rec, token.as_deref())),
        AuditFields::with("accessor", rec.accessor.clone()),
    ))
}

async fn lookup_self(State(st): State<TransitState>, headers: HeaderMap) -> ApiResult {
    let t = transit(&st)?;
    let token = token_of(&headers);
    let rec = t.authenticate(token.as_deref())?;
    Ok(annotate(
        envelope(lookup_data(&rec, token.as_deref()), Value::Null),
        AuditFields::with("accessor", rec.accessor.clone()),
    ))
}

/// Routes of the public listener under `mount`.
pub fn public_routes(state: TransitState, mount: &str) -> Router {
    Router::new()
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
        .with_state(state)
}

// ---- admin socket ----

async fn admin_list_keys(State(st): State<TransitState>) -> ApiResult {
    Ok(envelope(
        json!({ "keys": transit(&st)?.list_keys() }),
        Value::Null,
    ))
}

async fn admin_read_key(State(st): State<TransitState>, Path(key): Path<String>) -> ApiResult {
    Ok(envelope(transit(&st)?.key_metadata(&key)?, Value::Null))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    #[serde(rename = "type")]
    key_type: Option<String>,
    exportable: Option<bool>,
    derived: Option<bool>,
}

async fn admin_create_key(
    State(st): State<TransitState>,
    Path(key): Path<String>,
    body: Body,
) -> ApiResult {
    let t = transit(&st)?;
    let req: CreateKey = json_body(body, st.max_body).await?;
    if req
        .key_type
        .as_deref()
        .is_some_and(|k| k != crate::transit::KEY_TYPE)
    {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "only type aes256-gcm96 is supported".into(),
        ));
    }
    if req.exportable == Some(true) || req.derived == Some(true) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "keys are never exportable or derived here".into(),
        ));
    }
    Ok(envelope(t.create_key(&key)?, Value::Null))
}

async fn admin_rotate_key(State(st): State<TransitState>, Path(key): Path<String>) -> ApiResult {
    Ok(envelope(transit(&st)?.rotate_key(&key)?, Value::Null))
}

async fn admin_config_key(
    State(st): State<TransitState>,
    Path(key): Path<String>,
    body: Body,
) -> ApiResult {
    let t = transit(&st)?;
    let cfg: KeyConfig = json_body(body, st.max_body).await?;
    Ok(envelope(t.configure_key(&key, &cfg)?, Value::Null))
}

async fn admin_delete_key(State(st): State<TransitState>, Path(key): Path<String>) -> ApiResult {
    transit(&st)?.delete_key(&key)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn admin_list_policies(State(st): State<TransitState>) -> ApiResult {
    Ok(envelope(
        json!({ "policies": transit(&st)?.list_policies() }),
        Value::Null,
    ))
}

async fn admin_read_policy(State(st): State<TransitState>, Path(name): Path<String>) -> ApiResult {
    let p = transit(&st)?.policy(&name)?;
    Ok(envelope(
        serde_json::to_value(p).unwrap_or(Value::Null),
        Value::Null,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    #[serde(alias = "rule")]
    rules: Vec<crate::transit::Rule>,
}

async fn admin_write_policy(
    State(st): State<TransitState>,
    Path(name): Path<String>,
    body: Body,
) -> ApiResult {
    let t = transit(&st)?;
    let b: PolicyBody = json_body(body, st.max_body).await?;
    t.write_policy(Policy {
        name,
        rules: b.rules,
    })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn admin_delete_policy(
    State(st): State<TransitState>,
    Path(name): Path<String>,
) -> ApiResult {
    transit(&st)?.delete_policy(&name)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn admin_create_token(State(st): State<TransitState>, body: Body) -> ApiResult {
    let t = transit(&st)?;
    let req: TokenRequest = json_body(body, st.max_body).await?;
    let (rec, token) = t.create_token(&req)?;
    Ok(envelope(Value::Null, auth_block(&rec, Some(&token))))
}

async fn admin_list_tokens(State(st): State<TransitState>) -> ApiResult {
    let t = transit(&st)?;
    let list: Vec<Value> = t
        .list_tokens()
        .iter()
        .map(|r| lookup_data(r, None))
        .collect();
    let keys: Vec<&str> = list.iter().filter_map(|v| v["accessor"].as_str()).collect();
    Ok(envelope(
        json!({ "keys": keys, "tokens": list }),
        Value::Null,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeAccessor {
    accessor: String,
}

async fn admin_revoke_accessor(State(st): State<TransitState>, body: Body) -> ApiResult {
    let t = transit(&st)?;
    let req: RevokeAccessor = json_body(body, st.max_body).await?;
    t.revoke_accessor(&req.accessor)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Routes of the admin socket under `mount`.
pub fn admin_routes(state: TransitState, mount: &str) -> Router {
    Router::new()
        .route(&format!("/v1/{mount}/keys"), get(admin_list_keys))
        .route(
            &format!("/v1/{mount}/keys/{{key}}"),
            get(admin_read_key)
                .post(admin_create_key)
                .put(admin_create_key)
                .delete(admin_delete_key),
        )
        .route(
            &format!("/v1/{mount}/keys/{{key}}/rotate"),
            post(admin_rotate_key).put(admin_rotate_key),
        )
        .route(
            &format!("/v1/{mount}/keys/{{key}}/config"),
            post(admin_config_key).put(admin_config_key),
        )
        .route("/v1/sys/policies/transit", get(admin_list_policies))
        .route(
            "/v1/sys/policies/transit/{name}",
            get(admin_read_policy)
                .put(admin_write_policy)
                .post(admin_write_policy)
                .delete(admin_delete_policy),
        )
        .route(
            "/v1/auth/token/create",
            post(admin_create_token).put(admin_create_token),
        )
        .route("/v1/auth/token/accessors", get(admin_list_tokens))
        .route(
            "/v1/auth/token/revoke-accessor",
            post(admin_revoke_accessor).put(admin_revoke_accessor),
        )
        .with_state(state)
}

/// For fuzzing and property tests: runs a request body through the Transit handlers' own parsing
/// and per-item processing (`op` is "encrypt", "decrypt" or "rewrap"), and every administration body
/// type through its parser. Returns the answer's `data`, or the error a client would get.
pub fn process_body(t: &Transit, op: &str, key: &str, body: &[u8]) -> Result<Value, String> {
    let _ = serde_json::from_slice::<CreateKey>(body);
    let _ = serde_json::from_slice::<KeyConfig>(body);
    let _ = serde_json::from_slice::<RenewRequest>(body);
    let _ = serde_json::from_slice::<RevokeAccessor>(body);
    let _ = serde_json::from_slice::<TokenRequest>(body);
    if let Ok(p) = serde_json::from_slice::<PolicyBody>(body) {
        let _ = Policy {
            name: "fuzz".into(),
            rules: p.rules,
        }
        .validate();
    }
    let op = match op {
        "encrypt" => Op::Encrypt,
        "decrypt" => Op::Decrypt,
        _ => Op::Rewrap,
    };
    let req: OpRequest =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    match req.batch_input {
        None => one(t, op, key, &req.item).map_err(|e| e.to_string()),
        Some(items) => Ok(Value::Array(
            items
                .iter()
                .map(|i| one(t, op, key, i).unwrap_or_else(|e| json!({ "error": e.to_string() })))
                .collect(),
        )),
    }
}
