//! A user's Web Push subscriptions: `POST /v1/users/{id}/push-subscriptions` (the body a
//! browser's `PushSubscription.toJSON()` gives), `GET` (list) and `DELETE ...?endpoint=`.
//! `notify.send`'s `push` channel reads them through `crate::notify::BrokerPushSubscriptions`.
//!
//! Auth is these routes' own: with `[auth] tokens` set, a request needs one of them (an
//! application acting for its users) or a user's JWT whose `sub` is `{id}` (a browser
//! registering itself; another user's id is a 403). Without tokens, like the rest of `/v1`,
//! anyone may call them.
//!
//! A subscription is checked before it is stored: `endpoint` an `https` URL, or an `http`
//! one on a loopback host (`localhost`, `127.0.0.1`, `[::1]`: the exception browsers make for
//! secure contexts, for a push service on the same machine; delivering to it still needs
//! `[http] allow_hosts`), at most 2,048 bytes, `keys.p256dh` the base64url of an uncompressed P-256 point (65 bytes, `0x04`
//! first), `keys.auth` the base64url of 16 bytes; each refusal a 400 naming the field. A user
//! has at most `MAX_PUSH_SUBSCRIPTIONS` (20): the broker refuses a new endpoint past it, a 400
//! naming `endpoint`; re-registering one the user has is still a replacement.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use hopper_workers::broker::WebPush;
use hopper_workers::broker::inbox::check_name;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::openapi::ErrorBody;
use super::{ApiError, AppState, JsonBody, constant_time_eq};
use crate::notify::push_store::to_port;

/// The longest endpoint accepted.
const MAX_ENDPOINT: usize = 2048;

/// A Web Push subscription, as `PushSubscription.toJSON()` gives it.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct PushSubscriptionDoc {
    /// The push service's URL for this browser (https; http only on a loopback host).
    pub endpoint: String,
    pub keys: PushKeysDoc,
}

/// The browser's keys, base64url.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct PushKeysDoc {
    /// The browser's P-256 public key (65 bytes, uncompressed).
    pub p256dh: String,
    /// The authentication secret (16 bytes).
    pub auth: String,
}

/// `{"subscription": {...}}`.
#[derive(Serialize, ToSchema)]
pub struct PushSubscriptionAnswer {
    pub subscription: PushSubscriptionDoc,
}

/// `{"subscriptions": [...]}`.
#[derive(Serialize, ToSchema)]
pub struct PushSubscriptionList {
    pub subscriptions: Vec<PushSubscriptionDoc>,
}

/// The query of `DELETE /v1/users/{id}/push-subscriptions`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EndpointQuery {
    /// The endpoint of the subscription to forget.
    pub endpoint: Option<String>,
}

/// `POST /v1/users/{id}/push-subscriptions`.
#[utoipa::path(post, path = "/users/{user}/push-subscriptions", tag = "notifications",
    params(("user" = String, Path, description = "The user's id (a JWT's `sub`)")),
    request_body(content = PushSubscriptionDoc, description = "`PushSubscription.toJSON()`; other fields (`expirationTime`) are ignored"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Stored", body = PushSubscriptionAnswer),
        (status = 200, description = "The user had this endpoint already: its keys replaced", body = PushSubscriptionAnswer),
        (status = 400, description = "`invalid_json`, `invalid_field`, `missing_field`: `field` names it (`endpoint` also when the user has 20 subscriptions already)", body = ErrorBody),
        (status = 403, description = "`forbidden`: a JWT of another user", body = ErrorBody),
    ))]
pub async fn subscribe(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let user = authorize(&st, &headers, &id)?;
    let sub = parse(&body)?;
    let created = st.broker.push_subscribe(&user, &sub).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({ "subscription": to_port(sub) }))).into_response())
}

/// `GET /v1/users/{id}/push-subscriptions`.
#[utoipa::path(get, path = "/users/{user}/push-subscriptions", tag = "notifications", operation_id = "list_push_subscriptions",
    params(("user" = String, Path, description = "The user's id (a JWT's `sub`)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The user's subscriptions, by endpoint", body = PushSubscriptionList),
        (status = 400, description = "`invalid_field`: `user` is not a user id", body = ErrorBody),
        (status = 403, description = "`forbidden`: a JWT of another user", body = ErrorBody),
    ))]
pub async fn list(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let user = authorize(&st, &headers, &id)?;
    let subs: Vec<_> = st
        .broker
        .push_subscriptions(&user)
        .await?
        .into_iter()
        .map(to_port)
        .collect();
    Ok(Json(json!({ "subscriptions": subs })))
}

/// `DELETE /v1/users/{id}/push-subscriptions?endpoint=URL`.
#[utoipa::path(delete, path = "/users/{user}/push-subscriptions", tag = "notifications",
    params(("user" = String, Path, description = "The user's id (a JWT's `sub`)"), EndpointQuery),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Forgotten"),
        (status = 400, description = "`missing_field` / `invalid_field`: `endpoint` or `user`", body = ErrorBody),
        (status = 403, description = "`forbidden`: a JWT of another user", body = ErrorBody),
        (status = 404, description = "`not_found`: the user has no subscription at that endpoint", body = ErrorBody),
    ))]
pub async fn unsubscribe(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<EndpointQuery>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let user = authorize(&st, &headers, &id)?;
    let Some(endpoint) = query.endpoint.filter(|e| !e.is_empty()) else {
        return Err(ApiError::field(
            "missing_field",
            "endpoint",
            "the endpoint of the subscription to forget, as ?endpoint=URL",
        ));
    };
    if st.broker.push_unsubscribe(&user, &endpoint).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "user {user} has no push subscription at that endpoint"
        )))
    }
}

/// The user id, once the request may act for it (see the module docs).
fn authorize(st: &AppState, headers: &HeaderMap, id: &str) -> Result<String, ApiError> {
    check_name("user", id).map_err(|e| ApiError::field("invalid_field", "user", e.message))?;
    let tokens = &st.config.auth.tokens;
    if tokens.is_empty() {
        return Ok(id.to_owned());
    }
    let unauthorized = |why: &str| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!("{why}: an Authorization: Bearer header with a token or the user's JWT"),
        )
    };
    let Some(presented) = super::bearer_token(headers) else {
        return Err(unauthorized("missing token"));
    };
    if tokens
        .iter()
        .any(|k| constant_time_eq(k.as_bytes(), presented.as_bytes()))
    {
        return Ok(id.to_owned());
    }
    let Some(verifier) = &st.jwt else {
        return Err(unauthorized("invalid token"));
    };
    match verifier.verify(presented) {
        Ok(v) if v.sub == id => Ok(id.to_owned()),
        Ok(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this JWT is another user's",
        )),
        Err(why) => Err(unauthorized(why)),
    }
}

/// A browser's subscription, checked (see the module docs).
fn parse(body: &Value) -> Result<WebPush, ApiError> {
    let Some(obj) = body.as_object() else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "expected a JSON object: PushSubscription.toJSON()",
        ));
    };
    let text = |v: Option<&Value>, field: &str| -> Result<String, ApiError> {
        match v {
            None | Some(Value::Null) => Err(ApiError::field("missing_field", field, "is required")),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(ApiError::field("invalid_field", field, "must be a string")),
        }
    };
    let endpoint = text(obj.get("endpoint"), "endpoint")?;
    if endpoint.len() > MAX_ENDPOINT || !secure_endpoint(&endpoint) {
        return Err(ApiError::field(
            "invalid_field",
            "endpoint",
            format!(
                "must be an https URL (http only on localhost) of at most {MAX_ENDPOINT} bytes"
            ),
        ));
    }
    let keys = match obj.get("keys") {
        None | Some(Value::Null) => {
            return Err(ApiError::field("missing_field", "keys", "is required"));
        }
        Some(Value::Object(k)) => k,
        Some(_) => {
            return Err(ApiError::field(
                "invalid_field",
                "keys",
                "must be an object {p256dh, auth}",
            ));
        }
    };
    let p256dh = text(keys.get("p256dh"), "keys.p256dh")?;
    if decodes_to(&p256dh, 65).is_none_or(|b| b.first() != Some(&4)) {
        return Err(ApiError::field(
            "invalid_field",
            "keys.p256dh",
            "must be the base64url of an uncompressed P-256 public key (65 bytes)",
        ));
    }
    let auth = text(keys.get("auth"), "keys.auth")?;
    if decodes_to(&auth, 16).is_none() {
        return Err(ApiError::field(
            "invalid_field",
            "keys.auth",
            "must be the base64url of 16 bytes",
        ));
    }
    Ok(WebPush {
        endpoint,
        p256dh,
        auth,
    })
}

/// The bytes of base64url text (padded or not) when there are exactly `len` of them.
fn decodes_to(text: &str, len: usize) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(text)
        .or_else(|_| URL_SAFE.decode(text))
        .ok()
        .filter(|b| b.len() == len)
}

/// An `https` URL with a host, or an `http` one on a loopback host.
fn secure_endpoint(endpoint: &str) -> bool {
    let Ok(u) = url::Url::parse(endpoint) else {
        return false;
    };
    let loopback = match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match u.scheme() {
        "https" => u.host_str().is_some_and(|h| !h.is_empty()),
        "http" => loopback,
        _ => false,
    }
}
