//! `GET /v1/notifications`: a user's notifications over a WebSocket, kept ones replayed first.
//!
//! The user is the `sub` of a JWT (`crate::notify::jwt`), given as the `token` query
//! parameter, a `Sec-WebSocket-Protocol` entry `token.JWT` (offered beside `hopper`, which
//! the server echoes back) or `Authorization: Bearer JWT`. A missing, invalid or expired JWT
//! is *accepted and closed with code 4001* and a reason, which a browser can read. A user only
//! ever receives their own notifications. `[auth] tokens` are not accepted here: they name no
//! user.
//!
//! Before the upgrade, in order: a server with neither `[auth] jwt_secret` nor
//! `jwt_public_key` answers 404 `not_configured`; a `since` the broker never issued is a 400
//! naming it; a request that is not a WebSocket upgrade is a 426 `upgrade_required`; past
//! `[server] max_connections` notification connections, a 503.
//!
//! `since` is the `cursor` of the last notification the client saw: the replay starts after
//! it. Without it the replay is every notification kept for the user (`[notify] keep`, 24 h
//! by default); past the log's end, a `gap` frame and all of them. The streaming itself is `stream`'s; the one reader of the inbox per process
//! is `hub`'s.

mod hub;
mod stream;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use utoipa::IntoParams;

pub use hub::InboxHub;

use super::openapi::ErrorBody;
use super::{ApiError, AppState};

/// The WebSocket subprotocol the server speaks (and echoes back when offered).
const PROTOCOL: &str = "hopper";

/// The query of `GET /v1/notifications`.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NotificationsQuery {
    /// The user's JWT (or send it as `Authorization: Bearer` or a `token.JWT` subprotocol).
    #[param(nullable = false)]
    pub token: Option<String>,
    /// The `cursor` of the last notification seen: replay only what came after it. Default:
    /// every notification kept for the user.
    #[param(nullable = false)]
    pub since: Option<String>,
}

impl NotificationsQuery {
    /// The query's two parameters, each given at most once: a repeated `since` or `token`
    /// would be a guess at which counts, refused naming it as `GET /v1/jobs` refuses one (the
    /// layer `unread_query` refuses the parameters this route does not read).
    fn read(query: Result<Query<Vec<(String, String)>>, QueryRejection>) -> Result<Self, ApiError> {
        let Query(params) = query
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
        let mut out = Self::default();
        for (key, value) in params {
            let slot = match key.as_str() {
                "token" => &mut out.token,
                "since" => &mut out.since,
                _ => continue,
            };
            if slot.is_some() {
                return Err(ApiError::field(
                    "invalid_field",
                    key,
                    "given more than once; it takes one value",
                ));
            }
            *slot = Some(value);
        }
        Ok(out)
    }
}

/// `GET /v1/notifications`.
#[utoipa::path(get, path = "/notifications", tag = "notifications", params(NotificationsQuery),
    description = "A WebSocket (subprotocol `hopper`) streaming the notifications of the user \
        a JWT names (`sub`): first those kept for them after `since` (all kept, without it), \
        then each new one, as `{\"type\": \"notification\", \"id\", \"cursor\", \"user\", \
        \"kind\", \"title\", \"body\", \"data\", \"at\"}` frames; a `since` past the end \
        of the inbox log (from before the broker's data was replaced) gets one \
        `{\"type\": \"gap\"}` frame and the replay of all kept. A missing, invalid or expired \
        JWT is accepted and closed with code 4001 and a reason, and so is a connection when \
        its JWT's `exp` passes. Past `[notify] \
        max_messages_per_minute`, live notifications are dropped from the connection and told \
        in a `{\"type\": \"rate_limited\", \"dropped\", \"since\", \"limit_per_minute\"}` frame; \
        reconnecting with `since` replays them.",
    security(("bearer" = []), ("query_token" = [])),
    responses(
        (status = 101, description = "Switching to the WebSocket"),
        (status = 400, description = "`invalid_field`: `since` is not a cursor this server issued", body = ErrorBody),
        (status = 404, description = "`not_configured`: the server has no `[auth] jwt_secret` nor `jwt_public_key`", body = ErrorBody),
        (status = 426, description = "`upgrade_required`: this route is a WebSocket only", body = ErrorBody),
        (status = 429, description = "`too_many_connections`: the JWT's user already holds `[notify] max_connections_per_user` streams on this server", body = ErrorBody),
        (status = 503, description = "`too_many_connections` (past `[server] max_connections`), `broker_unavailable`", body = ErrorBody),
    ))]
pub async fn notifications(
    State(st): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let query = NotificationsQuery::read(query)?;
    let Some(verifier) = st.jwt.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_configured",
            "user notifications need [auth] jwt_secret or jwt_public_key on this server",
        ));
    };
    let keep = st.config.notify.keep;
    if let Some(since) = &query.since {
        // A cursor the broker never issued is the client's mistake, refused before the stream.
        st.inbox
            .broker()
            .inbox_read(None, Some(since), 0, keep)
            .await?;
    }
    let Ok(upgrade) = upgrade else {
        return Err(ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "GET /v1/notifications is a WebSocket: send an upgrade request",
        ));
    };
    let admitted = st
        .inbox
        .admit(st.config.server.max_connections)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                format!(
                    "this server already streams notifications to [server] max_connections = {} \
                     clients",
                    st.config.server.max_connections
                ),
            )
        })?;
    let presented = super::bearer_token(&headers)
        .map(str::to_owned)
        .or(query.token)
        .or_else(|| super::protocol_tokens(&headers).next().map(str::to_owned));
    let user = match presented.as_deref() {
        None => Err(
            "missing token: pass a JWT as ?token=, Authorization: Bearer or the \
                     protocol token.JWT",
        ),
        Some(token) => verifier.verify(token),
    };
    // Small buffers, as the event stream's (see `events::ws`): a client only sends pongs.
    let upgrade = upgrade
        .protocols([PROTOCOL])
        .read_buffer_size(4 * 1024)
        .write_buffer_size(32 * 1024)
        .max_write_buffer_size(1024 * 1024);
    Ok(match user {
        Err(reason) => upgrade.on_upgrade(move |socket| async move {
            let _admitted = admitted;
            stream::close(
                socket,
                stream::UNAUTHORIZED,
                &format!("unauthorized: {reason}"),
            )
            .await;
        }),
        Ok(verified) => {
            let per_user = st.config.notify.max_connections_per_user;
            let Some(user_admitted) = st.inbox.admit_user(
                &verified.sub,
                usize::try_from(per_user).unwrap_or(usize::MAX),
            ) else {
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_connections",
                    format!(
                        "this user already holds [notify] max_connections_per_user = \
                         {per_user} notification streams on this server: close one first"
                    ),
                ));
            };
            let session = stream::Session {
                hub: st.inbox.clone(),
                expires: tokio::time::Instant::now() + verified.remaining(),
                user: verified.sub,
                since: query.since,
                keep,
                per_minute: st.config.notify.max_messages_per_minute,
                ping: st.config.server.ws_ping_interval,
            };
            upgrade.on_upgrade(move |socket| async move {
                let _admitted = (admitted, user_admitted);
                stream::run(socket, session).await;
            })
        }
    })
}
