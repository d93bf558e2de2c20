//! `GET /v1/workers`: the worker nodes registered in the broker (`hopper_workers::nodes`),
//! heard from within the last minute, as `hopper workers` lists them.
//!
//! The registry is each pool's business; this handler only reads it.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::openapi::WorkerList;
use super::{ApiError, AppState};

/// `GET /v1/workers`: `{"workers": [node, ...]}`, sorted by host and pid.
#[utoipa::path(get, path = "/workers", tag = "workers", operation_id = "list_workers",
    responses((status = 200, description = "Every worker node heard from in the last minute", body = WorkerList)))]
pub async fn list(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    let nodes = st.broker.nodes().await?;
    Ok(Json(json!({ "workers": nodes })))
}
