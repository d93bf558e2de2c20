//! One user's connection: the replay of their kept notifications after `since`, then the live
//! ones, with no gap and no duplicate at the seam, each a text frame; a per-connection rate
//! limit on the live ones; pings; and the close.
//!
//! The seam: the connection subscribes to the hub (which has caught up with the log) before
//! it reads its replay from the broker, so every entry appended after that read arrives live.
//! A live entry whose cursor is not after the last one sent (or `since`) is skipped
//! ([`compare_cursors`]): it was replayed already, or came before `since` from a hub that is
//! behind the client (which saw it on another node, or in an earlier connection's replay).
//!
//! A `since` past the log's end (`Broker::inbox_end`; from before the broker's data was
//! replaced, or from another broker) gets one `{"type": "gap"}` frame, then the replay of
//! everything kept for the user, as a connection without `since`.
//!
//! The rate limit (`[notify] max_messages_per_minute`, a GCRA with a minute's worth of
//! burst) applies to live notifications only: a replay is what the client asked for. A live
//! notification past the limit is dropped from this connection, never from the inbox. A run
//! of drops is told in one frame, `{"type": "rate_limited", "dropped": N, "since": CURSOR,
//! "limit_per_minute": L}`, sent when the limit lets a notification through again or one
//! second after the run's first drop, whichever is first; reconnecting with `since=CURSOR`
//! replays what was dropped.

use std::num::NonZeroU32;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use hopper_workers::broker::inbox::{MAX_INBOX_PAGE, compare_cursors};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use super::hub::{CATCH_UP_WAIT, InboxHub, Live, Subscription};

/// Close code of a refused JWT (4000-4999 are the application's).
pub const UNAUTHORIZED: u16 = 4001;
/// Close code when the server fails to read the inbox (RFC 6455 "internal error").
const INTERNAL: u16 = 1011;
/// Close code when the server stops ("going away").
const GOING_AWAY: u16 = 1001;
/// Close code after a `lagged` frame ("policy violation": the client did not keep up).
const LAGGED: u16 = 1008;
/// How long a run of rate-limited drops is collected before it is told.
const DROP_REPORT: Duration = Duration::from_secs(1);

/// What one connection streams.
pub struct Session {
    pub hub: InboxHub,
    pub user: String,
    pub since: Option<String>,
    /// `[notify] keep`: how far back the replay reaches.
    pub keep: Duration,
    pub per_minute: u32,
    /// `[server] ws_ping_interval`.
    pub ping: Duration,
    /// When the user's JWT expires (its `exp`): the stream is closed with 4001 then, so a
    /// short-lived token is how access ends.
    pub expires: Instant,
}

/// Closes with `code` and `reason`, giving the peer a few seconds to take it.
pub async fn close(mut socket: WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        socket.send(Message::Close(Some(frame))),
    )
    .await;
}

type Tx = SplitSink<WebSocket, Message>;

/// Counts one open notifications connection in
/// [`crate::metrics::NOTIFICATION_CONNECTIONS`] while it lives.
struct Counted;

impl Counted {
    fn open() -> Self {
        metrics::gauge!(crate::metrics::NOTIFICATION_CONNECTIONS).increment(1.0);
        Self
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        metrics::gauge!(crate::metrics::NOTIFICATION_CONNECTIONS).decrement(1.0);
    }
}

/// Drops past the rate limit not yet told to the client.
struct Drops {
    count: u64,
    /// The cursor of the last notification sent before the run's first drop.
    since: Option<String>,
    report_at: Instant,
}

/// Streams `session` on `socket` until either side ends it.
pub async fn run(socket: WebSocket, s: Session) {
    let _open = Counted::open();
    let stopping = s.hub.stopping();
    let (mut tx, mut rx_peer) = socket.split();
    let patience = 2 * s.ping;
    let mut live = match s.hub.subscribe(CATCH_UP_WAIT).await {
        Subscription::Live(rx) => rx,
        Subscription::Stopped => {
            let _ = send_close(&mut tx, GOING_AWAY, "the server is stopping", patience).await;
            return;
        }
        Subscription::NotReady => {
            tracing::warn!(
                "notifications: the inbox hub has not caught up with the inbox; closing"
            );
            let _ = send_close(
                &mut tx,
                INTERNAL,
                "the inbox is not available yet",
                patience,
            )
            .await;
            return;
        }
    };
    // A `since` past the log's end (kept from before the broker's data was replaced, or from
    // another broker) is told with a `gap` frame and replaced by the log's start: taken as
    // "seen up to there", it would hide every entry the log hands out below it.
    let since = match &s.since {
        Some(since) => match s.hub.broker().inbox_end().await {
            Ok(end) => {
                // `0` (`0-0` on Redis) is before every entry, even of an empty log.
                let origin = since.split('-').all(|part| part == "0");
                let past_end = !origin
                    && end.as_deref().is_none_or(|end| {
                        compare_cursors(since, end) == Some(std::cmp::Ordering::Greater)
                    });
                if past_end {
                    let frame = json!({ "type": "gap" }).to_string();
                    if !send(&mut tx, Message::Text(frame.into()), patience).await {
                        return;
                    }
                    None
                } else {
                    Some(since.clone())
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "notifications: reading the inbox's end failed");
                let _ = send_close(&mut tx, INTERNAL, "reading the inbox failed", patience).await;
                return;
            }
        },
        None => None,
    };
    // The replay: everything kept after `since`, page by page, not rate-limited.
    let mut last = since.clone();
    // The newest cursor sent or dropped: live entries up to it are not sent again.
    let mut seen = since;
    loop {
        let page = match s
            .hub
            .broker()
            .inbox_read(Some(&s.user), last.as_deref(), MAX_INBOX_PAGE, s.keep)
            .await
        {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, "notifications: reading the inbox failed");
                let _ = send_close(&mut tx, INTERNAL, "reading the inbox failed", patience).await;
                return;
            }
        };
        let full = page.len() == MAX_INBOX_PAGE;
        for entry in page {
            let entry = Live::new(entry);
            if !feed(&mut tx, &entry, patience).await {
                return;
            }
            last = Some(entry.cursor.clone());
            seen = Some(entry.cursor);
        }
        if !full {
            break;
        }
    }
    if !flush(&mut tx, patience).await {
        return;
    }

    let quota = Quota::per_minute(NonZeroU32::new(s.per_minute).unwrap_or(NonZeroU32::MIN));
    let limiter: DefaultDirectRateLimiter = RateLimiter::direct(quota);
    let mut drops: Option<Drops> = None;
    let mut ping = tokio::time::interval(s.ping);
    ping.tick().await;
    let mut unanswered = 0u32;
    let (code, reason) = loop {
        let report_at = drops.as_ref().map(|d| d.report_at);
        tokio::select! {
            () = stopping.cancelled() => break (GOING_AWAY, "the server is stopping".to_owned()),
            () = tokio::time::sleep_until(s.expires) => {
                break (UNAUTHORIZED, "unauthorized: the token expired (exp)".to_owned());
            }
            incoming = rx_peer.next() => match incoming {
                Some(Ok(Message::Pong(_))) => unanswered = 0,
                // The peer closes: tungstenite has queued the answering Close frame, which
                // goes out with a flush (returning at once dropped it, and a browser reported
                // 1006, an abnormal closure, for the close it asked for).
                Some(Ok(Message::Close(_))) => {
                    let _ = tokio::time::timeout(patience, tx.flush()).await;
                    return;
                }
                Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if unanswered >= 2 {
                    tracing::debug!("notifications: peer missed two pongs; dropping it");
                    return;
                }
                unanswered += 1;
                if !send(&mut tx, Message::Ping(Vec::new().into()), patience).await {
                    return;
                }
            }
            () = sleep_until(report_at) => {
                if let Some(d) = drops.take()
                    && !report(&mut tx, d, s.per_minute, patience).await
                {
                    return;
                }
            }
            received = live.recv() => match received {
                Ok(entry) => {
                    if entry.user != s.user {
                        continue;
                    }
                    let newer = seen.as_deref().is_none_or(|seen| {
                        compare_cursors(&entry.cursor, seen) == Some(std::cmp::Ordering::Greater)
                    });
                    if !newer {
                        continue;
                    }
                    seen = Some(entry.cursor.clone());
                    if limiter.check().is_err() {
                        let d = drops.get_or_insert_with(|| Drops {
                            count: 0,
                            since: last.clone(),
                            report_at: Instant::now() + DROP_REPORT,
                        });
                        d.count += 1;
                        continue;
                    }
                    if let Some(d) = drops.take()
                        && !report(&mut tx, d, s.per_minute, patience).await
                    {
                        return;
                    }
                    if !feed(&mut tx, &entry, patience).await || !flush(&mut tx, patience).await {
                        return;
                    }
                    last = Some(entry.cursor.clone());
                }
                Err(RecvError::Lagged(_)) => {
                    let frame = json!({ "type": "lagged", "resume": last });
                    if !send(&mut tx, Message::Text(frame.to_string().into()), patience).await {
                        return;
                    }
                    break (LAGGED, "lagged: reconnect with since=resume".to_owned());
                }
                Err(RecvError::Closed) => break (GOING_AWAY, "the server is stopping".to_owned()),
            },
        }
    };
    let _ = send_close(&mut tx, code, &reason, patience).await;
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Tells a run of drops in one frame.
async fn report(tx: &mut Tx, d: Drops, per_minute: u32, patience: Duration) -> bool {
    let frame = json!({
        "type": "rate_limited",
        "dropped": d.count,
        "since": d.since,
        "limit_per_minute": per_minute,
    });
    send(tx, Message::Text(frame.to_string().into()), patience).await
}

/// Queues one notification's frame (flushed by the caller).
async fn feed(tx: &mut Tx, entry: &Live, patience: Duration) -> bool {
    matches!(
        tokio::time::timeout(patience, tx.feed(Message::Text(entry.text.clone()))).await,
        Ok(Ok(()))
    )
}

async fn flush(tx: &mut Tx, patience: Duration) -> bool {
    matches!(tokio::time::timeout(patience, tx.flush()).await, Ok(Ok(())))
}

/// Sends one message; false when the peer is gone or has not read within `patience`.
async fn send(tx: &mut Tx, msg: Message, patience: Duration) -> bool {
    matches!(
        tokio::time::timeout(patience, tx.send(msg)).await,
        Ok(Ok(()))
    )
}

async fn send_close(tx: &mut Tx, code: u16, reason: &str, patience: Duration) -> bool {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    send(tx, Message::Close(Some(frame)), patience).await
}
