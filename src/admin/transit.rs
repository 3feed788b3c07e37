//! The Transit administration routes of the admin socket (keys, policies, tokens): the same
//! transit state as the public listener's routes, answered with the same envelopes and errors.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::transit::{
    ApiResult, TransitState, auth_block, envelope, json_body, lookup_data, parse_json, transit,
};
use crate::http::{ApiError, Routes};
use crate::transit::{KeyConfig, Policy, TokenRequest};

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
pub(super) struct CreateKey {
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
    Ok(envelope(t.create_key(&key).await?, Value::Null))
}

async fn admin_rotate_key(State(st): State<TransitState>, Path(key): Path<String>) -> ApiResult {
    Ok(envelope(transit(&st)?.rotate_key(&key).await?, Value::Null))
}

async fn admin_config_key(
    State(st): State<TransitState>,
    Path(key): Path<String>,
    body: Body,
) -> ApiResult {
    let t = transit(&st)?;
    let cfg: KeyConfig = json_body(body, st.max_body).await?;
    Ok(envelope(t.configure_key(&key, &cfg).await?, Value::Null))
}

async fn admin_delete_key(State(st): State<TransitState>, Path(key): Path<String>) -> ApiResult {
    transit(&st)?.delete_key(&key).await?;
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
pub(super) struct PolicyBody {
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
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn admin_delete_policy(
    State(st): State<TransitState>,
    Path(name): Path<String>,
) -> ApiResult {
    transit(&st)?.delete_policy(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn admin_create_token(State(st): State<TransitState>, body: Body) -> ApiResult {
    let t = transit(&st)?;
    let req: TokenRequest = json_body(body, st.max_body).await?;
    let (rec, token) = t.create_token(&req).await?;
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
pub(super) struct RevokeAccessor {
    accessor: String,
}

async fn admin_revoke_accessor(State(st): State<TransitState>, body: Body) -> ApiResult {
    let t = transit(&st)?;
    let req: RevokeAccessor = json_body(body, st.max_body).await?;
    t.revoke_accessor(&req.accessor).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Routes of the admin socket under `mount`.
pub fn routes(mount: &str) -> Routes<TransitState> {
    Routes::new()
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
}

/// For fuzzing: the transit administration bodies through the parsers their handlers use.
pub(super) fn parse_bodies(body: &[u8]) -> Vec<Result<(), String>> {
    let policy = parse_json::<PolicyBody>(body).map(|p| {
        let _ = Policy {
            name: "fuzz".into(),
            rules: p.rules,
        }
        .validate();
    });
    vec![
        parse_json::<CreateKey>(body).map(|_| ()),
        parse_json::<KeyConfig>(body).map(|_| ()),
        parse_json::<RevokeAccessor>(body).map(|_| ()),
        parse_json::<TokenRequest>(body).map(|_| ()),
        policy,
    ]
    .into_iter()
    .map(|r| r.map_err(|e| e.1))
    .collect()
}
