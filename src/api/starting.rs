//! What `serve`'s port answers while its node waits for the broker at start (`app::serve`):
//! the port is bound before the broker answers, and a bound port that answered nothing kept
//! clients and a load balancer's probes hanging for as long as the broker was down. Now the
//! liveness probe says the process is alive, and every other request is a 503 `starting`
//! with `Retry-After`, in the API's error shape.
//!
//! Not here: the API itself (`super::router`), which takes over once the broker answers.

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::error::ApiError;

/// The stand-in's routes: `/healthz` as the API answers it, a 503 for everything else; each
/// answer closes its connection, so that none outlives the stand-in.
pub fn router() -> Router {
    Router::new()
        .route("/healthz", get(super::healthz))
        .fallback(starting)
        .layer(axum::middleware::map_response(close))
}

async fn close(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

async fn starting() -> Response {
    let mut response = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "starting",
        "the server is waiting for its broker to answer; try again shortly",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}
