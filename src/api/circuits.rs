//! `GET /v1/circuits`: the endpoints of `notify.send` (webhook URLs, push service origins)
//! whose circuit breaker is open or half-open, as every node shares them through the broker
//! (`crate::notify::circuits`). `hopper queues` and the dashboard show the same list.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::openapi::CircuitList;
use super::{ApiError, AppState};
use crate::notify::circuits::open_circuits;

/// `GET /v1/circuits`: `{"circuits": [circuit, ...]}`, by endpoint.
#[utoipa::path(get, path = "/circuits", tag = "notifications", operation_id = "list_circuits",
    responses((status = 200, description = "The open and half-open circuits of notification endpoints", body = CircuitList)))]
pub async fn list(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    let circuits = open_circuits(&*st.broker).await?;
    Ok(Json(json!({ "circuits": circuits })))
}
