//! A query parameter a route does not read is refused before the handler runs, 400
//! `unknown_field` naming it. `token` is read by the auth check of every `/v1` route; the
//! routes that take parameters of their own (`GET /v1/jobs`, `GET /v1/events`, `GET
//! /v1/notifications`, `DELETE /v1/users/{user}/push-subscriptions`) check them themselves and
//! are passed through. Every other route reads none: `POST /v1/jobs?queue=mail` put the job in
//! `default` without a word, and `POST /v1/queues/q/pause?for=10s` paused the queue for good.

use axum::extract::{MatchedPath, Query, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// Whether the route of `method` and `path` (its template) reads query parameters itself.
fn reads_its_own(method: &Method, path: &str) -> bool {
    matches!(
        (method.as_str(), path),
        (
            "GET" | "HEAD",
            "/v1/jobs" | "/v1/events" | "/v1/notifications"
        ) | ("DELETE", "/v1/users/{user}/push-subscriptions")
    )
}

/// The middleware: passes a request on, or answers the 400.
pub async fn refuse_unread(req: Request, next: Next) -> Response {
    let given = req.uri().query().is_some_and(|q| !q.is_empty());
    let own = req
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|p| reads_its_own(req.method(), p.as_str()));
    if given && !own {
        match Query::<Vec<(String, String)>>::try_from_uri(req.uri()) {
            Err(e) => {
                return ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text())
                    .into_response();
            }
            Ok(Query(pairs)) => {
                if let Some((name, _)) = pairs.iter().find(|(k, _)| k != "token") {
                    return ApiError::field(
                        "unknown_field",
                        name.clone(),
                        format!(
                            "{} {} takes no query parameter (but token)",
                            req.method(),
                            req.uri().path()
                        ),
                    )
                    .into_response();
                }
            }
        }
    }
    next.run(req).await
}
