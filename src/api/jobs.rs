//! The `/v1/jobs` and `/v1/queues` handlers.
//!
//! The enqueue body is read field by field from a JSON object rather than through one serde
//! struct, so that every refusal (wrong type, out of range, unknown key) names its field.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use hopper_workers::broker::{JobFilter, JobPage};
use hopper_workers::job::{Job, JobId, JobState, PRIORITY_RULE};
use hopper_workers::time::Timestamp;
use serde_json::{Map, Value, json};

use super::openapi::{
    EnqueueDoc, ErrorBody, JobDoc, JobPageDoc, JobWithHistoryDoc, JobWithStepsDoc, ListQuery,
    QueueList,
};
use super::{ApiError, AppState, JsonBody};
use crate::service::submit::Start;
use crate::service::{EnqueueRequest, FieldError};
use crate::view::{self, JobWithHistory, JobWithSteps};

/// Jobs per page when `limit` is not given, and the most a page may hold.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1000;

/// `POST /v1/jobs`: 201 with the new job; 200 with the existing one when its `unique_key`
/// (or `Idempotency-Key`) was already taken.
#[utoipa::path(post, path = "/jobs", tag = "jobs",
    params(("Idempotency-Key" = Option<String>, Header, max_length = 200,
        description = "Used as the `unique_key` (prefixed `idem:`) when the body gives none")),
    request_body(content = EnqueueDoc, content_type = "application/json",
        description = "Read as JSON whatever the `Content-Type` says"),
    responses(
        (status = 201, description = "Enqueued", body = JobWithStepsDoc),
        (status = 200, description = "The `unique_key` (or `Idempotency-Key`) was taken: the \
            existing job", body = JobWithStepsDoc),
        (status = 400, description = "`invalid_json`, `invalid_field`, `missing_field`, \
            `unknown_field`: `field` names the field (`then[0].kind` in a step)", body = ErrorBody),
        (status = 409, description = "`conflict`: the broker refused the write", body = ErrorBody),
        (status = 422, description = "`unknown_kind`: no handler registers that kind", body = ErrorBody),
    ))]
pub async fn enqueue(
    State(st): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<JobWithSteps>), ApiError> {
    let (mut req, then) = parse_enqueue(body)?;
    if req.unique_key.is_none()
        && let Some(key) = idempotency_key(&headers)?
    {
        req.unique_key = Some(format!("idem:{key}"));
    }
    let done = st.service.submit(req, then).await?;
    let status = if done.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(JobWithSteps::new(done.job, &done.steps))))
}

/// `GET /v1/jobs/{id}`: the job and its history.
#[utoipa::path(get, path = "/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job, its history and its chain's steps", body = JobWithHistoryDoc),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn get_one(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobWithHistory>, ApiError> {
    let id = JobId(id);
    let found = st
        .service
        .lookup(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job {id} not found")))?;
    Ok(Json(JobWithHistory::from(found)))
}

/// `GET /v1/jobs?queue=&state=&kind=&limit=&cursor=`: a page, newest first.
#[utoipa::path(get, path = "/jobs", tag = "jobs", params(ListQuery),
    responses(
        (status = 200, description = "A page of jobs, newest first", body = JobPageDoc),
        (status = 400, description = "`invalid_field`, `unknown_field`, `invalid_query`: \
            `field` names the parameter", body = ErrorBody),
    ))]
pub async fn list(
    State(st): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<JobPage>, ApiError> {
    let Query(params) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let mut filter = JobFilter {
        limit: DEFAULT_LIMIT,
        ..JobFilter::default()
    };
    for (key, value) in params {
        match key.as_str() {
            "queue" => filter.queue = Some(value),
            "kind" => filter.kind = Some(value),
            "cursor" => filter.cursor = Some(value),
            "state" => {
                filter.state = Some(JobState::parse(&value).ok_or_else(|| {
                    let names: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
                    ApiError::field(
                        "invalid_field",
                        "state",
                        format!("{value:?} is not a state; one of {}", names.join(", ")),
                    )
                })?);
            }
            "limit" => {
                filter.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::field(
                            "invalid_field",
                            "limit",
                            format!("must be an integer from 1 to {MAX_LIMIT}"),
                        )
                    })?;
            }
            _ => {
                return Err(ApiError::field(
                    "unknown_field",
                    key,
                    "unknown query parameter; known: queue, state, kind, limit, cursor",
                ));
            }
        }
    }
    Ok(Json(st.broker.list(&filter).await?))
}

/// `POST /v1/jobs/{id}/retry`: `dead` or `cancelled` -> `queued`; 409 otherwise.
#[utoipa::path(post, path = "/jobs/{id}/retry", tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "Queued again", body = JobDoc),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`conflict`: the job is neither `dead` nor `cancelled`", body = ErrorBody),
    ))]
pub async fn retry(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(st.broker.retry(&JobId(id)).await?))
}

/// `POST /v1/jobs/{id}/cancel`: any non-final state -> `cancelled`; 409 when final. A handler
/// running in this process is told to stop at once.
#[utoipa::path(post, path = "/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "Cancelled", body = JobDoc),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`conflict`: the job already finished", body = ErrorBody),
    ))]
pub async fn cancel(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    let id = JobId(id);
    let job = st.broker.cancel(&id).await?;
    // After the broker: the stopped handler's late writes then meet a cancelled job and are
    // refused, instead of racing the cancel.
    if let Some(pool) = &st.pool
        && pool.cancel_local(&id)
    {
        tracing::debug!(job = %id, "stopped the local handler of a cancelled job");
    }
    Ok(Json(job))
}

/// `GET /v1/queues`: per queue, counts by state, paused, processed and failed in the last
/// minute.
#[utoipa::path(get, path = "/queues", tag = "queues",
    responses((status = 200, description = "Every queue's numbers", body = QueueList)))]
pub async fn queues(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    let stats = view::merge_configured_queues(st.broker.queues().await?, &st.config);
    Ok(Json(json!({ "queues": stats })))
}

/// Reads the enqueue body's fields, and the steps of `then` (a chain); `prepare` then checks
/// them against the registry. A step's refusals name it: `then[0].kind`.
fn parse_enqueue(body: Value) -> Result<(EnqueueRequest, Vec<EnqueueRequest>), ApiError> {
    let Value::Object(mut m) = body else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the request body must be a JSON object",
        ));
    };
    let mut then = Vec::new();
    if let Some(steps) = take(&mut m, "then") {
        let Value::Array(steps) = steps else {
            return Err(FieldError::invalid("then", "must be an array of steps").into());
        };
        for (i, step) in steps.into_iter().enumerate() {
            let at = |e: FieldError| e.under(&format!("then[{i}]"));
            let Value::Object(mut sm) = step else {
                return Err(FieldError::invalid(format!("then[{i}]"), "must be an object").into());
            };
            if sm.contains_key("then") {
                return Err(at(FieldError::invalid(
                    "then",
                    "a step cannot have its own then",
                ))
                .into());
            }
            then.push(parse_fields(&mut sm).map_err(at)?);
        }
    }
    Ok((parse_fields(&mut m)?, then))
}

/// Reads one job's fields (the body, or a step of `then`) into their types; the rules they must
/// follow are checked once, by `crate::service::submit`.
fn parse_fields(m: &mut Map<String, Value>) -> Result<EnqueueRequest, FieldError> {
    let kind = match take(m, "kind") {
        None => {
            return Err(FieldError::with_code(
                "missing_field",
                "kind",
                "is required",
            ));
        }
        Some(v) => string(v, "kind")?,
    };
    let mut req = EnqueueRequest::new(kind, take(m, "payload").unwrap_or_else(|| json!({})));
    if let Some(v) = take(m, "queue") {
        req.queue = Some(string(v, "queue")?);
    }
    if let Some(v) = take(m, "priority") {
        // The range is the engine's rule (`NewJob::validate`); here only the type.
        req.priority = Some(int(v, "priority", PRIORITY_RULE)?);
    }
    match (take(m, "delay"), take(m, "run_at")) {
        (Some(_), Some(_)) => {
            return Err(FieldError::invalid(
                "delay",
                "give delay or run_at, not both",
            ));
        }
        (Some(v), None) => req.start = Some(Start::After(duration(v, "delay")?)),
        (None, Some(v)) => {
            let s = string(v, "run_at")?;
            let at =
                Timestamp::parse(&s).map_err(|e| FieldError::invalid("run_at", e.to_string()))?;
            req.start = Some(Start::At(at));
        }
        (None, None) => {}
    }
    if let Some(v) = take(m, "max_retries") {
        req.max_retries = Some(int(v, "max_retries", "must be a non-negative integer")?);
    }
    if let Some(v) = take(m, "timeout") {
        req.timeout = Some(duration(v, "timeout")?);
    }
    if let Some(v) = take(m, "unique_key") {
        req.unique_key = Some(string(v, "unique_key")?);
    }
    if let Some(key) = m.keys().next() {
        return Err(FieldError::with_code(
            "unknown_field",
            key.clone(),
            "unknown field; known: kind, payload, queue, priority, delay, run_at, max_retries, \
             timeout, unique_key, then",
        ));
    }
    Ok(req)
}

/// Removes `key`; `null` counts as absent.
fn take(m: &mut Map<String, Value>, key: &str) -> Option<Value> {
    m.remove(key).filter(|v| !v.is_null())
}

/// A non-negative integer that fits `T`.
fn int<T: TryFrom<u64>>(v: Value, field: &str, rule: &str) -> Result<T, FieldError> {
    v.as_u64()
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| FieldError::invalid(field, rule))
}

fn string(v: Value, field: &str) -> Result<String, FieldError> {
    match v {
        Value::String(s) => Ok(s),
        _ => Err(FieldError::invalid(field, "must be a string")),
    }
}

fn duration(v: Value, field: &str) -> Result<std::time::Duration, FieldError> {
    let s = string(v, field)
        .map_err(|_| FieldError::invalid(field, "must be a duration string such as \"30s\""))?;
    humantime::parse_duration(s.trim()).map_err(|e| {
        FieldError::invalid(
            field,
            format!("{s:?} is not a duration ({e}); write e.g. \"500ms\", \"30s\", \"5m\""),
        )
    })
}

/// The `Idempotency-Key` header, if present and printable.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 200)
        .ok_or_else(|| {
            ApiError::field(
                "invalid_field",
                "Idempotency-Key",
                "must be 1 to 200 printable ASCII characters",
            )
        })?;
    Ok(Some(key.to_owned()))
}
