//! The HTTP API (DESIGN §6): routes, auth, and the layers around them.
//!
//! [`router`] builds the whole API from an [`AppState`] and binds nothing, so tests drive it
//! with `tower::ServiceExt::oneshot` and `crate::app` serves it on a listener. Handlers are
//! thin: they parse the request, call the [`Service`] (submit, lookup) or the broker through
//! the `Broker` trait, and render views
//! (`crate::view`). Every error, including axum's own rejections, an unknown route and a
//! timeout, is JSON `{"error": {"code", "message", "field"?}}` (see [`error`]).
//!
//! `POST /v1/jobs` reads its body with `job_body`, which `POST /v1/jobs/batch` ([`batch`])
//! and `hopper enqueue --file` share.
//!
//! `GET /v1/events` (WebSocket, SSE, JSON page) is [`events`]'s, with its own auth (a
//! WebSocket is closed with 4001 rather than refused with 401).
//!
//! [`routes`] is the one list of the API's routes: each is registered with its OpenAPI
//! annotation (`utoipa_axum::routes!`), so `GET /openapi.json` ([`openapi`]) documents exactly
//! what the router serves. Only the dashboard, `/openapi.json`, `/docs` and `/metrics` (not
//! JSON) are outside it.
//!
//! `POST /v1/publish` is `publish`'s: an event fanned out to `[[subscription]]` jobs by
//! `crate::bus`.
//! `GET /v1/workers` (`workers`) lists the worker nodes registered in the broker;
//! `GET /v1/circuits` (`circuits`) the notification endpoints whose circuit is open.
//! `GET /v1/notifications` ([`notifications`]) streams a user's notifications to the user a
//! JWT names; `/v1/users/{id}/push-subscriptions` (`push`) stores their Web Push
//! subscriptions. Both check auth themselves (see each module).
//!
//! A query parameter a route does not read is refused (`unread_query`).
//!
//! `[server] rate_limit` is [`rate_limit`]'s: one layer around `/v1`, per token or address.
//! [`stall`] closes a connection whose peer stops reading (a write blocked too long), or
//! leaves a request unfinished (its bytes unanswered too long).
//! [`starting`] answers on the port while the node waits for its broker at start.
//!
//! `GET /metrics` (Prometheus text, `crate::metrics`) asks for the same bearer token as
//! `/v1` when `[auth] tokens` is set: unlike `/healthz` it names queues and kinds and shows
//! the traffic, and Prometheus sends a token (`authorization` in a scrape config). Every
//! request is counted under its route template by `crate::metrics::track_http`.

mod batch;
mod circuits;
mod dashboard;
pub mod error;
pub mod events;
pub(crate) mod job_body;
mod jobs;
pub mod notifications;
pub mod openapi;
mod publish;
mod push;
mod queues;
pub mod rate_limit;
pub mod stall;
pub mod starting;
#[cfg(test)]
mod tests;
mod unread_query;
mod workers;

use std::sync::Arc;
use std::time::Duration;

/// The most jobs a page of `GET /v1/jobs` holds (the CLI's `--limit` takes the same range).
pub(crate) use jobs::MAX_LIMIT;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hopper_workers::clock::Clock;
use hopper_workers::pool::PoolHandle;
use hopper_workers::{Broker, Registry};
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Config;
use crate::service::Service;
pub use error::{ApiError, JsonBody};

/// How long one request may take before it is answered 503 `timeout`. Every route is a few
/// broker round-trips; anything slower is a broker in trouble.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What the handlers share: one pointer to [`Shared`], so that a clone is one reference count.
///
/// axum clones a router's state for every request, once per layer that takes it and once for
/// the handler; with the parts held by value (a dozen `Arc`s, cancellation tokens, the hubs'
/// handles), cloning and dropping them was 12% of the process's CPU samples under `wrk`
/// POSTing single jobs (`perf record`, `serve --no-workers` on Redis).
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
#[derive(Clone, Debug)]
pub struct Shared {
    /// For the operations that need no checking: list, cancel, retry, queues, ping.
    pub broker: Arc<dyn Broker>,
    /// Submit and lookup, shared with the CLI. Its registry holds the kinds this process
    /// accepts: enqueueing an unknown kind is a 422.
    pub service: Service,
    /// The pool of this process, if it runs one, so a cancel stops a local handler at once
    /// (remote handlers learn it on their next heartbeat).
    pub pool: Option<PoolHandle>,
    /// Defaults (`[retry] max_retries`), auth tokens, body limit, configured queues.
    pub config: Arc<Config>,
    /// The process's one reader of the event log, feeding every `/v1/events` stream. It reads
    /// once `crate::app` runs it ([`events::Hub::run`]).
    pub hub: events::Hub,
    /// What `GET /metrics` reads: the cached queue counts, this process's pool slots.
    pub scrape: crate::metrics::Scrape,
    /// The `[[subscription]]`s `POST /v1/publish` fans out to (none by default).
    pub bus: crate::bus::Bus,
    /// The process's one reader of the users' inboxes, feeding every `/v1/notifications`
    /// connection. It reads once `crate::app` runs it ([`notifications::InboxHub::run`]).
    pub inbox: notifications::InboxHub,
    /// Users' JWTs, when `[auth] jwt_secret` or `jwt_public_key` is set.
    pub jwt: Option<Arc<crate::notify::jwt::Verifier>>,
}

impl AppState {
    /// State without a local pool (`serve --no-workers`, tests).
    pub fn new(
        broker: Arc<dyn Broker>,
        registry: Arc<Registry>,
        clock: Arc<dyn Clock>,
        config: Arc<Config>,
    ) -> Self {
        Self(Arc::new(Shared {
            service: Service::new(broker.clone(), registry, clock, config.retry.max_retries)
                .with_paused_queues(config.paused_queues())
                .with_queue_rates(config.queue_rates()),
            hub: events::Hub::new(broker.clone()),
            inbox: notifications::InboxHub::new(broker.clone()),
            // `Config::check` refused a key that does not load; a config that skipped it
            // (tests) gets no JWT auth rather than a panic.
            jwt: crate::notify::jwt::Verifier::from_config(&config.auth)
                .unwrap_or_else(|e| {
                    tracing::error!(error = %e, "user JWTs are off");
                    None
                })
                .map(Arc::new),
            scrape: crate::metrics::Scrape::new(broker.clone()),
            broker,
            pool: None,
            config,
            bus: crate::bus::Bus::default(),
        }))
    }

    /// The same state, publishing to `bus`'s subscriptions.
    #[must_use]
    pub fn with_bus(mut self, bus: crate::bus::Bus) -> Self {
        Arc::make_mut(&mut self.0).bus = bus;
        self
    }

    /// The same state, cancelling local handlers through `pool`.
    #[must_use]
    pub fn with_pool(mut self, pool: PoolHandle) -> Self {
        let shared = Arc::make_mut(&mut self.0);
        shared.scrape = shared
            .scrape
            .clone()
            .with_pool(pool.clone(), shared.config.worker.concurrency);
        shared.pool = Some(pool);
        self
    }
}

/// Turns off Nagle's algorithm on an accepted connection; for `ListenerExt::tap_io`.
///
/// The API streams small frames (`GET /v1/events`, `GET /v1/notifications`): with Nagle on, a
/// frame written while an earlier one is not yet acknowledged waits for that ACK, which the
/// peer delays by up to 40 ms. At a few thousand events a second that was most of an event's
/// delivery time (p99 ~38 ms on SQLite, one client, against ~1 ms for the rest of the path).
///
/// ```no_run
/// # async fn demo(state: hopper::api::AppState) -> std::io::Result<()> {
/// use axum::serve::ListenerExt;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?.tap_io(hopper::api::no_delay);
/// axum::serve(listener, hopper::api::router(state)).await
/// # }
/// ```
pub fn no_delay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY on a connection");
    }
}

/// The whole HTTP API.
///
/// ```no_run
/// # async fn demo(state: hopper::api::AppState) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// axum::serve(listener, hopper::api::router(state)).await
/// # }
/// ```
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.server.body_limit;
    let (api, doc) = routes(state.config.clone()).split_for_parts();
    Router::new()
        .merge(api)
        .merge(dashboard::router())
        .merge(openapi::router(openapi::finish(doc)))
        .merge(metrics_routes(&state))
        .with_state(state)
        .layer(DefaultBodyLimit::max(body_limit))
        // A body declared (`Content-Length`) larger than the limit is refused on its headers:
        // the extractors' limit alone waited for the body, and a client that sent the headers
        // and stalled was answered 503 `timeout` after 30 s instead of 413.
        .layer(RequestBodyLimitLayer::new(body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            REQUEST_TIMEOUT,
        ))
        .layer(middleware::map_response(error::json_errors))
        .layer(CatchPanicLayer::custom(error::panicked))
        // Outside the others, so that it counts the status the client gets.
        .layer(middleware::from_fn(crate::metrics::track_http))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_failure(request_failed),
        )
}

/// Logs a request that failed: a 503 (streams past `[server] max_connections`, the broker
/// down, a request timed out, stopping) at WARN, as the server answered it on purpose and
/// said why; any other 5xx, or an I/O failure, at ERROR. tower-http's default logged every
/// 503 at ERROR, the only ERROR lines of a healthy server at its connection limit.
fn request_failed(
    class: tower_http::classify::ServerErrorsFailureClass,
    latency: std::time::Duration,
    _span: &tracing::Span,
) {
    use tower_http::classify::ServerErrorsFailureClass as Class;
    let ms = latency.as_millis();
    match class {
        Class::StatusCode(StatusCode::SERVICE_UNAVAILABLE) => {
            tracing::warn!(
                status = 503,
                latency_ms = ms,
                "request refused: unavailable"
            );
        }
        Class::StatusCode(status) => {
            tracing::error!(status = status.as_u16(), latency_ms = ms, "request failed");
        }
        Class::Error(error) => tracing::error!(%error, latency_ms = ms, "request failed"),
    }
}

/// The span of one request: its method and path, never its query string, which may carry a
/// token (`GET /v1/notifications?token=JWT`, `GET /v1/events?token=…`).
fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    tracing::debug_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        version = ?request.version(),
    )
}

/// Every API route, with its OpenAPI operation. `config` is only read by the auth layer.
fn routes(config: Arc<Config>) -> OpenApiRouter<AppState> {
    let v1 = OpenApiRouter::new()
        .routes(routes!(jobs::enqueue, jobs::list))
        .routes(routes!(batch::enqueue_batch))
        .routes(routes!(jobs::get_one))
        .routes(routes!(jobs::retry))
        .routes(routes!(jobs::cancel))
        .routes(routes!(jobs::queues))
        .routes(routes!(queues::pause))
        .routes(routes!(queues::resume))
        .routes(routes!(queues::retry_dead))
        .routes(routes!(publish::publish))
        .routes(routes!(workers::list))
        .routes(routes!(circuits::list))
        .route_layer(middleware::from_fn_with_state(
            config.clone(),
            require_token,
        ))
        // After the layer: these routes check tokens themselves (the notifications stream
        // takes users' JWTs, push subscriptions either).
        .routes(routes!(events::events))
        .routes(routes!(notifications::notifications))
        .routes(routes!(push::subscribe, push::list, push::unsubscribe))
        .layer(middleware::from_fn(unread_query::refuse_unread));
    // Around every /v1 route, the events stream included; outside the auth check, so a
    // client flooding with wrong tokens is limited by its address.
    let v1 = rate_limit::wrap(v1, &config);
    OpenApiRouter::with_openapi(<openapi::ApiDoc as utoipa::OpenApi>::openapi())
        .nest("/v1", v1)
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

/// The OpenAPI document of [`router`], as `GET /openapi.json` serves it.
pub fn document() -> utoipa::openapi::OpenApi {
    // Tokens change what a request gets, never the document.
    openapi::finish(routes(Arc::default()).split_for_parts().1)
}

/// `GET /metrics` alone, as `hopper worker` serves it on `[worker] metrics_listen`: the same
/// handler and auth as in [`router`].
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .merge(metrics_routes(&state))
        .with_state(state)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            REQUEST_TIMEOUT,
        ))
        .layer(middleware::map_response(error::json_errors))
        .layer(CatchPanicLayer::custom(error::panicked))
}

fn metrics_routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/metrics", axum::routing::get(metrics_text))
        .route_layer(middleware::from_fn_with_state(
            state.config.clone(),
            require_token,
        ))
}

/// `GET /metrics`: every `hopper_*` family in the Prometheus text format.
async fn metrics_text(State(st): State<AppState>) -> Result<Response, ApiError> {
    let text = st.scrape.render().await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// The token of an `Authorization: Bearer TOKEN` header, if the request has one.
pub(crate) fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

/// The WebSocket subprotocol that carries a token (`token.TOKEN`): browsers cannot set headers
/// on a WebSocket.
const TOKEN_PROTOCOL: &str = "token.";

/// The tokens offered as `Sec-WebSocket-Protocol` entries `token.TOKEN`.
pub(crate) fn protocol_tokens(headers: &axum::http::HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|p| p.trim().strip_prefix(TOKEN_PROTOCOL))
}

/// With `[auth] tokens` set, lets a request through only with `Authorization: Bearer TOKEN`.
async fn require_token(State(config): State<Arc<Config>>, req: Request, next: Next) -> Response {
    let tokens = &config.auth.tokens;
    if tokens.is_empty() {
        return next.run(req).await;
    }
    match bearer_token(req.headers()) {
        Some(t)
            if tokens
                .iter()
                .any(|k| constant_time_eq(k.as_bytes(), t.as_bytes())) =>
        {
            next.run(req).await
        }
        Some(_) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "invalid token").into_response()
        }
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this server needs an Authorization: Bearer TOKEN header",
        )
        .into_response(),
    }
}

/// Compares without an early exit, so response timing does not reveal how much of a token
/// matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process answers", body = openapi::Health)))]
async fn healthz() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

/// Readiness: the broker answers.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "The broker answers", body = openapi::Ready)))]
async fn readyz(State(st): State<AppState>) -> Response {
    match st.broker.ready().await {
        Ok(()) => {
            axum::Json(json!({ "status": "ready", "broker": st.broker.name() })).into_response()
        }
        Err(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker_unavailable",
            e.to_string(),
        )
        .into_response(),
    }
}
