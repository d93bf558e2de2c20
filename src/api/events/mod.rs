//! `GET /v1/events`: the live, resumable stream of job events, three ways.
//!
//! - a WebSocket (`ws`) when the request is an upgrade;
//! - Server-Sent Events (`sse`) when it accepts `text/event-stream`;
//! - otherwise one JSON page, `{"events": [...], "next": CURSOR}`, for scripts.
//!
//! All three take the same query (`filter`) and resume from `since` (or SSE's
//! `Last-Event-ID`). The streams read the process's one [`Hub`] and replay from the broker
//! through a `feed::Feed`. This module owns what comes before a stream starts: parsing (bad
//! parameters are a 400 naming them, before any upgrade), the `since` cursor check (a cursor
//! not of the broker's form is a 400; one older than retention or past the end of the log is
//! a gap, see `cursor`), the connection limit (`[server] max_connections`, 503 past it) and
//! auth.
//!
//! Auth here is the route's own, not the `/v1` middleware's: with `[auth] tokens` set, a
//! WebSocket without a valid token is *accepted and closed with code 4001*, which a browser
//! can read (a 401 on the upgrade is only an opaque failure to it); SSE and the JSON page
//! answer 401 like the rest of `/v1`. The token may come from `Authorization: Bearer`, a
//! `token` query parameter, or (WebSocket) a `Sec-WebSocket-Protocol` entry `token.TOKEN`
//! offered beside `hopper`, which the server echoes back.

pub(crate) mod cursor;
mod feed;
mod filter;
mod hub;
mod sse;
mod ws;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

pub use hub::Hub;

use self::cursor::Cursor;
use self::feed::Feed;
use self::filter::{DEFAULT_LIMIT, EventQuery};
use super::openapi::{ErrorBody, EventPageDoc, EventsQuery};
use super::{ApiError, AppState, constant_time_eq};

/// The WebSocket subprotocol the server speaks (and echoes back when offered).
pub const PROTOCOL: &str = "hopper";

/// `GET /v1/events`.
#[utoipa::path(get, path = "/events", tag = "events", params(EventsQuery),
    description = "Documented here in its JSON page form. The same route also streams: a \
        WebSocket when the request is an upgrade (subprotocol `hopper`; the token may also be \
        offered as a `token.TOKEN` subprotocol entry, and a WebSocket without a valid token is \
        accepted and closed with code 4001), and Server-Sent Events when it accepts \
        `text/event-stream` (resuming from `Last-Event-ID`). Streams send each event as a JSON \
        frame, a `{\"type\": \"gap\"}` frame when `since` is older than the log retains or \
        past its end (then the log from its oldest event follows), and a last \
        `{\"type\": \"lagged\", \"resume\"}` frame to a client that fell behind.",
    security(("bearer" = []), ("query_token" = [])),
    responses(
        (status = 101, description = "Switching to the WebSocket (an upgrade request)"),
        (status = 200, description = "One page of the event log", body = EventPageDoc),
        (status = 400, description = "`invalid_parameter`: `field` names the parameter; an \
            event id the broker never issued as `since`", body = ErrorBody),
        (status = 503, description = "`too_many_connections` (streams past `[server] \
            max_connections`), `stopping`, `broker_unavailable`, `timeout`", body = ErrorBody),
    ))]
pub async fn events(
    State(st): State<AppState>,
    Query(pairs): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let mut query = EventQuery::parse(&pairs)?;
    let sse = upgrade.is_err() && accepts_sse(&headers);
    // Where the cursor came from, to name it in a refusal. An SSE client's `Last-Event-ID`
    // wins over `since`: a reconnecting EventSource keeps the URL it was opened with, `since`
    // and all, and sends the last id it received in the header, which is the newer position
    // (taking `since` replayed everything it already had).
    let mut since_field = "since";
    // Sent twice, or not text, it cannot be a cursor this server issued: refused like a
    // foreign one, not ignored (which started the stream from now, losing what the client
    // missed).
    let mut ids = headers.get_all("last-event-id").iter();
    let last_event_id = match (sse, ids.next(), ids.next()) {
        (false, ..) | (true, None, _) => None,
        (true, Some(v), None) => match v.to_str() {
            Ok(v) => Some(v).filter(|v| !v.is_empty()),
            Err(_) => return Err(bad_last_event_id("is not text")),
        },
        (true, Some(_), Some(_)) => return Err(bad_last_event_id("is sent more than once")),
    };
    if let Some(id) = last_event_id {
        query.since = Some(id.to_owned());
        since_field = "Last-Event-ID";
    }
    let authorized = authorized(&st, &headers, &query);
    if !authorized && upgrade.is_err() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this server needs a token: an Authorization: Bearer TOKEN header or ?token=TOKEN",
        ));
    }
    if authorized && let Some(since) = &query.since {
        // A cursor the broker never issued is the client's mistake, refused before the stream.
        st.hub.broker().events(Some(since), 0).await.map_err(|e| {
            let mut e = ApiError::from(e);
            if e.field.as_deref() == Some("since") {
                // A parameter (or header), refused like every other one of this route.
                e.code = "invalid_parameter";
                e.field = Some(since_field.to_owned());
            }
            e
        })?;
    }
    match upgrade {
        Ok(upgrade) if !authorized => Ok(ws::refuse(upgrade, admit(&st)?)),
        Ok(upgrade) => {
            let admitted = admit(&st)?;
            let feed = open(&st, query).await?;
            let ping = st.config.server.ws_ping_interval;
            Ok(ws::upgrade(upgrade, st.hub.clone(), feed, admitted, ping))
        }
        Err(_) if sse => {
            let admitted = admit(&st)?;
            let feed = open(&st, query).await?;
            let ping = st.config.server.ws_ping_interval;
            Ok(sse::stream(st.hub.clone(), feed, admitted, ping))
        }
        Err(_) => page(&st, &query).await,
    }
}

/// Opens the feed before the stream's response, so that a stream without `since` holds every
/// event appended after the server answered: a client that connects, then enqueues, sees its
/// job's `job.enqueued`.
async fn open(st: &AppState, query: EventQuery) -> Result<Feed, ApiError> {
    Feed::open(&st.hub, query.filter, query.since)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "stopping",
                "the server is stopping",
            )
        })
}

/// One page of the log: `{"events": [...], "next": CURSOR, "gap": bool}`. After a gap, the
/// page is the oldest events the log holds (`cursor`).
async fn page(st: &AppState, query: &EventQuery) -> Result<Response, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    let located = match &query.since {
        Some(s) => {
            let hub_at = st.hub.position_id();
            Some(cursor::locate(st.broker.as_ref(), s, hub_at.as_deref()).await?)
        }
        None => None,
    };
    let gap = located.as_ref().is_some_and(Cursor::gap);
    let after = match located {
        Some(Cursor::PastEnd) => None,
        _ => query.since.as_deref(),
    };
    let page = st.broker.events(after, limit).await?;
    let next = page
        .last()
        .map(|e| e.id.clone())
        .or_else(|| query.since.clone());
    let events: Vec<_> = page
        .into_iter()
        .filter(|e| query.filter.matches(e))
        .collect();
    Ok(axum::Json(json!({ "events": events, "next": next, "gap": gap })).into_response())
}

fn admit(st: &AppState) -> Result<hub::Admitted, ApiError> {
    st.hub
        .admit(st.config.server.max_connections)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                format!(
                    "this server already streams to [server] max_connections = {} clients",
                    st.config.server.max_connections
                ),
            )
        })
}

/// A `Last-Event-ID` header that cannot be a cursor: 400 `invalid_parameter` naming it.
fn bad_last_event_id(why: &str) -> ApiError {
    ApiError::field(
        "invalid_parameter",
        "Last-Event-ID",
        format!("{why}; send the id of the last event received, once"),
    )
}

fn accepts_sse(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

/// Whether the request carries a valid token (or none is needed), from any of the three places.
fn authorized(st: &AppState, headers: &HeaderMap, query: &EventQuery) -> bool {
    let tokens = &st.config.auth.tokens;
    if tokens.is_empty() {
        return true;
    }
    let bearer = super::bearer_token(headers).map(str::to_owned);
    let protocols = super::protocol_tokens(headers).map(str::to_owned);
    let presented: Vec<String> = bearer
        .into_iter()
        .chain(query.token.clone())
        .chain(protocols)
        .collect();
    presented.iter().any(|t| {
        tokens
            .iter()
            .any(|k| constant_time_eq(k.as_bytes(), t.as_bytes()))
    })
}
