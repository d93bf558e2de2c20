//! A query parameter a route does not read is refused before the handler runs, 400
//! `unknown_field` naming it. `GET /v1/jobs` and `GET /v1/events` check their own parameters
//! (and refuse the ones they do not list); `GET /v1/notifications` reads `since` and `token`,
//! `DELETE /v1/users/{user}/push-subscriptions` reads `endpoint`; every other route reads
//! none (a token goes in the `Authorization` header there). `POST /v1/jobs?queue=mail` put
//! the job in `default` without a word, `POST /v1/queues/q/pause?for=10s` paused the queue
//! for good, and `GET /v1/notifications?sinse=5` replayed everything.

use axum::extract::{MatchedPath, Query, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// The parameters the route of `method` and `path` (its template) reads; `None` for the
/// routes that check theirs themselves.
fn reads(method: &Method, path: &str) -> Option<&'static [&'static str]> {
    match (method.as_str(), path) {
        ("GET" | "HEAD", "/v1/jobs" | "/v1/events") => None,
        ("GET" | "HEAD", "/v1/notifications") => Some(&["since", "token"]),
        ("DELETE", "/v1/users/{user}/push-subscriptions") => Some(&["endpoint"]),
        _ => Some(&[]),
    }
}

/// The middleware: passes a request on, or answers the 400.
pub async fn refuse_unread(req: Request, next: Next) -> Response {
    let given = req.uri().query().is_some_and(|q| !q.is_empty());
    // A path no route matched is left to the router's 404.
    let known = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|p| reads(req.method(), p.as_str()));
    if given && let Some(known) = known {
        match Query::<Vec<(String, String)>>::try_from_uri(req.uri()) {
            Err(e) => {
                return ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text())
                    .into_response();
            }
            Ok(Query(pairs)) => {
                if let Some((name, _)) = pairs.iter().find(|(k, _)| !known.contains(&k.as_str())) {
                    let takes = if known.is_empty() {
                        "no query parameter (a token goes in the Authorization header)".to_owned()
                    } else {
                        format!("only {}", known.join(", "))
                    };
                    return ApiError::field(
                        "unknown_field",
                        name.clone(),
                        format!("{} {} takes {takes}", req.method(), req.uri().path()),
                    )
                    .into_response();
                }
            }
        }
    }
    next.run(req).await
}
