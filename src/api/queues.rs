//! The queue controls of the HTTP API: pause, resume and retry every dead job of one queue
//! (`POST /v1/queues/{name}/pause`, `/resume`, `/retry-dead`).
//!
//! A pause is stored in the broker (`Broker::pause`), so every node sharing it stops leasing
//! the queue's jobs from its next fetch on, and it outlives every process; a paused queue
//! still accepts jobs. `[[queue]] paused = true` in a node's config stays a pause of its own:
//! a queue is paused when either says so, and these routes answer what the two add up to.
//! A pause or resume also answers how many jobs the broker holds for the queue and how many
//! workers serve it, with a `warning` when neither does (`crate::service::queues`): beyond
//! DESIGN's `{"queue", "paused"}`, so that a typo of a queue name does not pass for a pause or
//! a resume.
//! The listing (`GET /v1/queues`) is `super::jobs`'.

use axum::Json;
use axum::extract::{Path, State};
use hopper_workers::job::valid_name;
use serde_json::{Value, json};

use super::openapi::{ErrorBody, QueuePaused, QueueRetried};
use super::{ApiError, AppState};
use crate::service::queues::QueueReach;

/// `POST /v1/queues/{name}/pause`: `{"queue", "paused": true, "jobs", "workers", "warning"?}`.
#[utoipa::path(post, path = "/queues/{name}/pause", tag = "queues",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The queue's name")),
    responses(
        (status = 200, description = "Paused for every node sharing the broker; `warning` when no job and no worker knows the queue", body = QueuePaused),
        (status = 400, description = "`invalid_field`: `name` is not a queue name", body = ErrorBody),
    ))]
pub async fn pause(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_paused(&st, name, true).await
}

/// `POST /v1/queues/{name}/resume`: `{"queue", "paused", "jobs", "workers", "warning"?}`,
/// `paused` still `true` when this node's config pauses the queue.
#[utoipa::path(post, path = "/queues/{name}/resume", tag = "queues",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The queue's name")),
    responses(
        (status = 200, description = "Resumed; `paused` stays true when this node's config pauses it; `warning` when no job and no worker knows the queue", body = QueuePaused),
        (status = 400, description = "`invalid_field`: `name` is not a queue name", body = ErrorBody),
    ))]
pub async fn resume(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_paused(&st, name, false).await
}

/// Stores the pause (or its end) of queue `name` in the broker and answers whether the queue
/// is now paused: by the broker, or by this node's config; and who knows the queue (see the
/// module docs).
async fn set_paused(st: &AppState, name: String, paused: bool) -> Result<Json<Value>, ApiError> {
    check(&name)?;
    // A pause names a queue anew, as a job does: not one of dots only (a resume may, to undo
    // such a pause stored before this rule).
    if paused && let Err(e) = hopper_workers::job::check_new_queue(&name) {
        return Err(ApiError::field("invalid_field", "name", e.message));
    }
    let by_config = st.config.queues.iter().any(|q| q.name == name && q.paused);
    if paused {
        st.broker.pause(&name).await?;
    } else {
        st.broker.resume(&name).await?;
    }
    // The change is stored: a count that fails now leaves the answer without it (and says
    // so) rather than failing a request whose effect happened.
    let done = if paused { "paused" } else { "resumed" };
    let (reach, warning) = match QueueReach::of(st.broker.as_ref(), &name).await {
        Ok(reach) if paused => (Some(reach), reach.pause_warning(&name)),
        Ok(reach) => (Some(reach), reach.resume_warning(&name)),
        Err(e) => {
            tracing::warn!(queue = %name, error = %e, "queue {done}; counting who knows it failed");
            (None, Some(QueueReach::uncounted_warning(&name, done)))
        }
    };
    match &warning {
        Some(w) => tracing::warn!(queue = %name, "queue {done}: {w}"),
        None => tracing::info!(queue = %name, "queue {done}"),
    }
    let mut answer = json!({
        "queue": name,
        "paused": paused || by_config,
        "jobs": reach.map(|r| r.jobs),
        "workers": reach.map(|r| r.workers),
    });
    if let Some(w) = warning {
        answer["warning"] = json!(w);
    }
    Ok(Json(answer))
}

/// `POST /v1/queues/{name}/retry-dead`: `{"queue", "retried": N}`.
#[utoipa::path(post, path = "/queues/{name}/retry-dead", tag = "queues",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The queue's name")),
    responses(
        (status = 200, description = "Every dead job of the queue queued again", body = QueueRetried),
        (status = 400, description = "`invalid_field`: `name` is not a queue name", body = ErrorBody),
    ))]
pub async fn retry_dead(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check(&name)?;
    let retried = st.broker.retry_all_dead(Some(&name)).await?;
    Ok(Json(json!({ "queue": name, "retried": retried })))
}

/// A queue name no job can have is the client's mistake, named after the path segment.
fn check(name: &str) -> Result<(), ApiError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::field(
            "invalid_field",
            "name",
            "a queue name is 1 to 64 characters of letters, digits, '-', '_' or '.'",
        ))
    }
}
