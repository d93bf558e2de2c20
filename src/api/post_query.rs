//! `POST` routes read no query parameter but `token` (which the auth check reads on every
//! `/v1` route): any other is refused before the handler runs, 400 `unknown_field` naming it,
//! as `GET` routes refuse theirs. `POST /v1/jobs?queue=mail` put the job in `default` without
//! a word, and `POST /v1/queues/q/pause?for=10s` paused the queue for good.

use axum::extract::{Query, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// The middleware: passes a request on, or answers the 400.
pub async fn refuse_unread(req: Request, next: Next) -> Response {
    if req.method() == Method::POST && req.uri().query().is_some_and(|q| !q.is_empty()) {
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
                            "{} {} takes no query parameter (but token); send {name} in the \
                             body if the route has such a field",
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
