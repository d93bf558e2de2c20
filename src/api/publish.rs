//! `POST /v1/publish`: an event on a topic, turned by the bus (`crate::bus`) into one job per
//! matching `[[subscription]]`, stored in one broker batch, all or none.
//!
//! The body is `{"topic", "data"?, "key"?}`, read field by field so that every refusal names
//! its field. 201 when jobs were created; 200 when none were: no subscription matched the
//! topic (`matched: 0`, counted in `hopper_publish_total`), or the `key` was used before
//! (`duplicate: true`, and `jobs` are the jobs that first publish created). Not here: auth,
//! body limits (`super`'s layers), templates and keys (`crate::bus`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::Value;

use super::openapi::{ErrorBody, PublishDoc, PublishedDoc};
use super::{ApiError, AppState, JsonBody};
use crate::bus::{Publish, PublishError, Published};
use crate::service::FieldError;

/// `POST /v1/publish`.
#[utoipa::path(post, path = "/publish", tag = "bus",
    request_body(content = PublishDoc, content_type = "application/json",
        description = "Read as JSON whatever the `Content-Type` says"),
    responses(
        (status = 201, description = "One job per matching subscription, created together", body = PublishedDoc),
        (status = 200, description = "Nothing created: no subscription matched (`matched` 0), \
            or the `key` was published before (`duplicate`; `jobs` are that publish's jobs)", body = PublishedDoc),
        (status = 400, description = "`invalid_json`, `invalid_field`, `missing_field`, \
            `unknown_field`: `field` names `topic`, `data` (a subscription's template or job \
            refused it) or `key`; nothing was stored", body = ErrorBody),
        (status = 409, description = "`conflict`: the broker refused the write", body = ErrorBody),
    ))]
pub async fn publish(
    State(st): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Published>), ApiError> {
    let req = read(body)?;
    let done = st
        .bus
        .publish(&st.service, req)
        .await
        .map_err(|e| match e {
            PublishError::Field(f) => ApiError::from(f),
            PublishError::Broker(b) => ApiError::from(b),
        })?;
    let status = if done.jobs.iter().any(|j| j.created) {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(done)))
}

/// The body's fields, typed; `null` counts as absent.
fn read(body: Value) -> Result<Publish, ApiError> {
    let Value::Object(mut m) = body else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the request body must be a JSON object: {\"topic\", \"data\", \"key\"}",
        ));
    };
    let topic = m.remove("topic").filter(|v| !v.is_null());
    let data = m.remove("data").filter(|v| !v.is_null());
    let key = m.remove("key").filter(|v| !v.is_null());
    if let Some(field) = m.keys().next() {
        return Err(ApiError::field(
            "unknown_field",
            field.clone(),
            "unknown field; known: topic, data, key",
        ));
    }
    let topic = match topic {
        None => return Err(FieldError::with_code("missing_field", "topic", "is required").into()),
        Some(Value::String(t)) => t,
        Some(_) => return Err(FieldError::invalid("topic", "must be a string").into()),
    };
    let data = match data {
        None => Value::Object(Default::default()),
        Some(d @ Value::Object(_)) => d,
        Some(_) => return Err(FieldError::invalid("data", "must be a JSON object").into()),
    };
    let key = match key {
        None => None,
        Some(Value::String(k)) => Some(k),
        Some(_) => return Err(FieldError::invalid("key", "must be a string").into()),
    };
    Ok(Publish { topic, data, key })
}
