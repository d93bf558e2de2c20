//! The `/v1/jobs` and `/v1/queues` handlers.
//!
//! The enqueue body's fields are read by `super::job_body`, shared with the batch route and
//! `hopper enqueue --file`.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use hopper_workers::broker::JobFilter;
use hopper_workers::job::{Job, JobId, JobState};
use serde_json::{Value, json};

use super::openapi::{
    EnqueueDoc, ErrorBody, JobDoc, JobPageDoc, JobWithHistoryDoc, JobWithStepsDoc, ListQuery,
    QueueList,
};
use super::{ApiError, AppState, JsonBody, job_body};
use crate::service::Submission;
use crate::view::{self, JobWithHistory, JobWithSteps};

/// Jobs per page when `limit` is not given, and the most a page may hold.
const DEFAULT_LIMIT: usize = 50;
pub(crate) const MAX_LIMIT: usize = 1000;

/// `POST /v1/jobs`: 201 with the new job; 200 with the existing one when its `unique_key`
/// (or `Idempotency-Key`) was already taken.
#[utoipa::path(post, path = "/jobs", tag = "jobs",
    params(("Idempotency-Key" = Option<String>, Header, max_length = 200,
        description = "Used as the `unique_key` (prefixed `idem:`) when the body gives none; \
            repeated, every copy must be the same key")),
    request_body(content = EnqueueDoc, content_type = "application/json",
        description = "Read as JSON whatever the `Content-Type` says"),
    responses(
        (status = 201, description = "Enqueued", body = JobWithStepsDoc),
        (status = 200, description = "The `unique_key` (or `Idempotency-Key`) was taken: the \
            existing job", body = JobWithStepsDoc),
        (status = 400, description = "`invalid_json`, `invalid_field`, `missing_field`, \
            `unknown_field`: `field` names the field (`then[0].kind` in a step), or \
            `Idempotency-Key` (not printable, or repeated with different keys)", body = ErrorBody),
        (status = 409, description = "`conflict`: the broker refused the write", body = ErrorBody),
        (status = 422, description = "`unknown_kind`: no handler registers that kind", body = ErrorBody),
    ))]
pub async fn enqueue(
    State(st): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<JobWithSteps>), ApiError> {
    let Value::Object(m) = body else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the request body must be a JSON object",
        ));
    };
    let Submission {
        first: mut req,
        then,
    } = job_body::read(m)?;
    // Checked whatever the body says; used when it gives no unique_key (the body's wins, as
    // documented: a client that sends both on every request keeps its replays).
    let header_key = idempotency_key(&headers)?;
    if req.unique_key.is_none()
        && let Some(key) = header_key
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

/// `GET /v1/jobs?queue=&state=&kind=&limit=&cursor=&brief=`: a page, newest first; `brief=true`
/// leaves the jobs' payloads and results out.
#[utoipa::path(get, path = "/jobs", tag = "jobs", operation_id = "list_jobs", params(ListQuery),
    responses(
        (status = 200, description = "A page of jobs, newest first", body = JobPageDoc),
        (status = 400, description = "`invalid_field`, `unknown_field`, `invalid_query`: \
            `field` names the parameter", body = ErrorBody),
    ))]
pub async fn list(
    State(st): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let mut filter = JobFilter {
        limit: DEFAULT_LIMIT,
        ..JobFilter::default()
    };
    let mut brief = false;
    let mut seen: Vec<String> = Vec::new();
    for (key, value) in params {
        // Each parameter holds one value: a repeated one would otherwise be read as its last,
        // and `state=queued&state=dead` answer only the dead jobs without saying so.
        if seen.contains(&key) {
            return Err(ApiError::field(
                "invalid_field",
                key,
                "given more than once; each parameter takes one value",
            ));
        }
        seen.push(key.clone());
        match key.as_str() {
            "queue" => filter.queue = Some(value),
            "kind" => filter.kind = Some(value),
            "cursor" => filter.cursor = Some(value),
            "brief" => {
                brief = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(ApiError::field(
                            "invalid_field",
                            "brief",
                            format!("{value:?} is not a boolean; true or false"),
                        ));
                    }
                };
            }
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
                    "unknown query parameter; known: queue, state, kind, limit, cursor, brief",
                ));
            }
        }
    }
    let page = st.broker.list(&filter).await?;
    let body = if brief {
        view::brief(&page)
    } else {
        serde_json::to_value(&page)
    };
    body.map(Json)
        .map_err(|e| ApiError::internal(format!("a page of jobs did not serialize: {e}")))
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
    // Counted in `hopper_jobs_finished_total` by the event hub, which reads the cancel from
    // the log like any other process's (`super::events::hub`).
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

/// The `Idempotency-Key` header, if present and printable; sent more than once, every copy
/// must be the same key (a proxy may repeat it), or which one counts would be a guess.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut all = headers.get_all("idempotency-key").iter();
    let Some(v) = all.next() else {
        return Ok(None);
    };
    if all.any(|other| other != v) {
        return Err(ApiError::field(
            "invalid_field",
            "Idempotency-Key",
            "sent more than once with different keys: send one",
        ));
    }
    let key = v
        .to_str()
        .ok()
        .map(str::trim)
        // `to_str` passes a tab (HTTP allows it in a value): refused as the rule says.
        .filter(|k| {
            !k.is_empty() && k.len() <= 200 && k.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        })
        .ok_or_else(|| {
            ApiError::field(
                "invalid_field",
                "Idempotency-Key",
                "must be 1 to 200 printable ASCII characters",
            )
        })?;
    Ok(Some(key.to_owned()))
}
