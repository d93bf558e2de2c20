//! `POST /v1/jobs/batch`: many jobs in one request and one broker call, all or none.
//!
//! Each element of `{"jobs": [...]}` is read by `super::job_body` exactly as `POST /v1/jobs`
//! reads its body, and the whole batch is checked before anything is stored
//! (`Service::submit_batch`); a refusal names the element, `jobs[3].queue`. The answer lists
//! each job in order as `POST /v1/jobs` would answer it: `{"status": 201|200, "job": …}`,
//! 200 being a taken `unique_key` answered with the existing job. Not here: the single-job
//! route, auth and body limits (`super`'s layers, the same as every route's).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;
use serde_json::Value;

use super::openapi::{BatchAnswerDoc, BatchDoc, ErrorBody};
use super::{ApiError, AppState, JsonBody, job_body};
use crate::service::{BatchError, FieldError};
use crate::view::JobWithSteps;

/// The answer: each job as `POST /v1/jobs` answers it, in the order sent.
#[derive(Debug, Serialize)]
pub struct BatchAnswer {
    pub jobs: Vec<JobAnswer>,
}

/// One job of the answer: the status `POST /v1/jobs` would have answered it with (201
/// created; 200 its `unique_key` was taken, `job` is the existing job) and its body.
#[derive(Debug, Serialize)]
pub struct JobAnswer {
    pub status: u16,
    pub job: JobWithSteps,
}

/// `POST /v1/jobs/batch`: 201 when any job was created, 200 when every one already existed
/// (each job's own status is in the answer); 400 naming `jobs[i].field` with nothing stored.
#[utoipa::path(post, path = "/jobs/batch", tag = "jobs",
    request_body(content = BatchDoc, content_type = "application/json",
        description = "Read as JSON whatever the `Content-Type` says"),
    responses(
        (status = 201, description = "Stored, all of it; at least one job was created", body = BatchAnswerDoc),
        (status = 200, description = "Every job's `unique_key` was taken: nothing was created", body = BatchAnswerDoc),
        (status = 400, description = "`invalid_json`, `invalid_field`, `missing_field`, \
            `unknown_field`: `field` names the job and its field (`jobs[2].priority`, \
            `jobs[0].then[1].kind`), or `Idempotency-Key` (a batch takes none); nothing was stored", body = ErrorBody),
        (status = 409, description = "`conflict`: the broker refused the write", body = ErrorBody),
        (status = 422, description = "`unknown_kind`: no handler registers a job's kind", body = ErrorBody),
    ))]
pub async fn enqueue_batch(
    State(st): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<BatchAnswer>), ApiError> {
    if headers.contains_key("idempotency-key") {
        return Err(ApiError::field(
            "invalid_field",
            "Idempotency-Key",
            "a batch takes no Idempotency-Key; give each job its own unique_key",
        ));
    }
    let elements = elements(body, st.config.server.max_batch)?;
    let mut batch = Vec::with_capacity(elements.len());
    for (i, element) in elements.into_iter().enumerate() {
        let Value::Object(m) = element else {
            return Err(FieldError::invalid(format!("jobs[{i}]"), "must be a JSON object").into());
        };
        batch.push(job_body::read(m).map_err(|e| e.under(&format!("jobs[{i}]")))?);
    }
    let done = st.service.submit_batch(batch).await.map_err(|e| match e {
        BatchError::Job { index, error } => ApiError::from(error.under(&format!("jobs[{index}]"))),
        BatchError::Broker(e) => e.into(),
    })?;
    let status = if done.iter().any(|d| d.created) {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let jobs = done
        .into_iter()
        .map(|d| JobAnswer {
            status: if d.created { 201 } else { 200 },
            job: JobWithSteps::new(d.job, &d.steps),
        })
        .collect();
    Ok((status, Json(BatchAnswer { jobs })))
}

/// The `jobs` array of the body: present, not empty, at most `max` long, and the only key.
fn elements(body: Value, max: usize) -> Result<Vec<Value>, ApiError> {
    let Value::Object(mut m) = body else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the request body must be a JSON object: {\"jobs\": [JOB, ...]}",
        ));
    };
    let jobs = m.remove("jobs");
    if let Some(key) = m.keys().next() {
        return Err(ApiError::field(
            "unknown_field",
            key.clone(),
            "unknown field; known: jobs",
        ));
    }
    let jobs = match jobs {
        None | Some(Value::Null) => {
            return Err(ApiError::field("missing_field", "jobs", "is required"));
        }
        Some(Value::Array(jobs)) => jobs,
        Some(_) => {
            return Err(ApiError::field(
                "invalid_field",
                "jobs",
                "must be an array of jobs",
            ));
        }
    };
    if jobs.is_empty() {
        return Err(ApiError::field(
            "invalid_field",
            "jobs",
            "must hold at least one job",
        ));
    }
    if jobs.len() > max {
        return Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            ..ApiError::field(
                "too_many_jobs",
                "jobs",
                format!(
                    "{} jobs; a batch holds at most [server] max_batch = {max}",
                    jobs.len()
                ),
            )
        });
    }
    Ok(jobs)
}
