//! The dashboard at `GET /`: one small vanilla-JS page, embedded in the binary.
//!
//! This module owns serving the page and its assets (`src/api/dashboard/`), nothing else: the
//! page is a client of the public API (`/v1/queues`, `/v1/jobs`, the queue routes) and of the
//! event stream `/v1/events`, with the token the user gives it, exactly like any other client.
//! So the page itself needs no token (it holds no data), and there is nothing to build or
//! download at install time. When the event stream is not there (an older server, a proxy
//! that drops WebSockets), the page falls back to polling.

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX: &str = include_str!("dashboard/index.html");

const JS: &str = "text/javascript; charset=utf-8";

/// The files under `/dashboard/`: name, content type, body.
const ASSETS: &[(&str, &str, &str)] = &[
    ("app.js", JS, include_str!("dashboard/app.js")),
    ("stream.js", JS, include_str!("dashboard/stream.js")),
    ("util.js", JS, include_str!("dashboard/util.js")),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("dashboard/app.css"),
    ),
    (
        "icon.svg",
        "image/svg+xml",
        include_str!("dashboard/icon.svg"),
    ),
];

/// The page talks to this origin only (REST and WebSocket), runs no inline script, and may not
/// be framed: a stolen click on Cancel is worth preventing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// The page and its assets. Mounted outside `/v1`, so outside the token check.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/dashboard/{file}", get(asset))
}

async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            // The assets change with the binary; revalidating is cheap on loopback and spares a
            // user a stale page after an upgrade.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX,
    )
}

/// One of [`ASSETS`]; anything else is the API's JSON 404.
async fn asset(Path(file): Path<String>) -> Response {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(name, _, _)| *name == file) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    (
        [
            (header::CONTENT_TYPE, *content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        *body,
    )
        .into_response()
}
