//! The WebSocket transport: one text frame per event (the event's JSON), a `gap` frame first
//! when the cursor is older than retention, and a `lagged` frame then a close when the client
//! fell behind.
//!
//! Liveness: the server pings every `[server] ws_ping_interval` (20 s by default); a peer that
//! misses two pongs in a row is dropped, and so is one whose send stays blocked for two
//! intervals (it stopped reading). Neither
//! costs memory meanwhile: the feed's buffer is the hub's bounded ring (see `hub`).
//!
//! Auth failures arrive here already upgraded and leave with close code 4001 and a reason.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use hopper_workers::BrokerError;

use super::PROTOCOL;
use super::feed::{Feed, Frame};
use super::hub::{Admitted, Hub};

/// Close code of a refused token (4000-4999 are the application's).
pub const UNAUTHORIZED: u16 = 4001;
/// A stream's socket buffers. The library's defaults (128 KiB each way) would make a thousand
/// streams cost a quarter of a gigabyte; a client sends only pongs and a close, and the
/// writer flushes every burst, so a few KiB in and a burst's worth out are enough. Past
/// `MAX_WRITE_BUFFER` unflushed (a peer that stopped reading), the stream fails rather than
/// grows.
const READ_BUFFER: usize = 4 * 1024;
const WRITE_BUFFER: usize = 32 * 1024;
const MAX_WRITE_BUFFER: usize = 1024 * 1024;
/// Close code when the server fails to read the log (RFC 6455 "internal error").
const INTERNAL: u16 = 1011;
/// Close code when the server stops ("going away").
const GOING_AWAY: u16 = 1001;

/// Answers the upgrade and runs `feed` on the upgraded connection, dropping a silent peer
/// and pinging every `ping`.
pub fn upgrade(
    upgrade: WebSocketUpgrade,
    hub: Hub,
    feed: Feed,
    admitted: Admitted,
    ping: Duration,
) -> Response {
    upgrade
        .protocols([PROTOCOL])
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .on_upgrade(move |socket| async move {
            let _admitted = admitted;
            run(socket, hub, feed, ping).await;
        })
}

/// Answers the upgrade, then closes with 4001: a browser can read a close code, not a 401.
pub fn refuse(upgrade: WebSocketUpgrade, admitted: Admitted) -> Response {
    upgrade
        .protocols([PROTOCOL])
        .on_upgrade(move |socket| async move {
            let _admitted = admitted;
            close(
                socket,
                UNAUTHORIZED,
                "unauthorized: no valid token (missing or wrong); pass one as \
                 Authorization: Bearer, ?token= or the protocol token.TOKEN",
            )
            .await;
        })
}

async fn close(mut socket: WebSocket, code: u16, reason: &str) {
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

async fn run(socket: WebSocket, hub: Hub, mut feed: Feed, every: Duration) {
    // Counted open until this returns, however it returns.
    let _open = crate::metrics::WsConnection::open();
    let stopping = hub.stopping();
    // Made and registered once, not once per wakeup: every stream waits on the same token, so
    // a fresh wait per event would register with (and contend on) its one list of waiters
    // a thousand times per event.
    let stopped = stopping.cancelled();
    tokio::pin!(stopped);
    let (mut tx, mut rx) = socket.split();
    // A stuck send is given two intervals, like a missing pong.
    let patience = 2 * every;
    let mut ping = tokio::time::interval(every);
    ping.tick().await;
    let mut unanswered = 0u32;
    let (code, reason) = loop {
        tokio::select! {
            () = &mut stopped => break (GOING_AWAY, "the server is stopping"),
            incoming = rx.next() => match incoming {
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
                    tracing::debug!("event stream: peer missed two pongs; dropping it");
                    return;
                }
                unanswered += 1;
                if !send(&mut tx, Message::Ping(Vec::new().into()), patience).await {
                    return;
                }
            }
            frame = feed.next() => match frame {
                Ok(Some(frame)) => match write(&mut tx, &mut feed, frame, patience).await {
                    Written::All => {}
                    Written::Lagged => break (1008, "lagged: reconnect with since=resume"),
                    Written::Failed => return,
                    Written::FeedFailed(e) => {
                        tracing::warn!(error = %e, "event stream: reading the event log failed");
                        break (INTERNAL, "reading the event log failed");
                    }
                },
                Ok(None) => break (GOING_AWAY, "the server is stopping"),
                Err(e) => {
                    tracing::warn!(error = %e, "event stream: reading the event log failed");
                    break (INTERNAL, "reading the event log failed");
                }
            },
        }
    };
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(every, tx.send(Message::Close(Some(frame)))).await;
}

/// Sends one message; false when the peer is gone or has not read within `patience`.
/// Most frames written before one flush.
const WRITE_BATCH: usize = 256;

/// How [`write`] ended.
enum Written {
    All,
    /// The last frame written was `lagged`: the stream is over.
    Lagged,
    /// The peer is gone or too slow.
    Failed,
    FeedFailed(BrokerError),
}

/// Writes `first` and every frame ready behind it (up to [`WRITE_BATCH`]), then flushes once:
/// a busy stream costs one write to the socket per burst of events, not one per event.
async fn write(
    tx: &mut SplitSink<WebSocket, Message>,
    feed: &mut Feed,
    first: Frame,
    patience: Duration,
) -> Written {
    let burst = async {
        let mut frame = first;
        let mut written = 0;
        loop {
            let lagged = matches!(frame, Frame::Lagged { .. });
            if tx.feed(Message::Text(frame.text())).await.is_err() {
                return Written::Failed;
            }
            if lagged {
                return Written::Lagged;
            }
            written += 1;
            // Checked before taking the next frame: one taken and not written would be lost.
            if written == WRITE_BATCH {
                return Written::All;
            }
            frame = match feed.ready() {
                Ok(Some(next)) => next,
                Ok(None) => return Written::All,
                Err(e) => return Written::FeedFailed(e),
            };
        }
    };
    let written = match tokio::time::timeout(patience, burst).await {
        Ok(w) => w,
        Err(_) => return Written::Failed,
    };
    let flushed = matches!(tokio::time::timeout(patience, tx.flush()).await, Ok(Ok(())));
    if flushed { written } else { Written::Failed }
}

async fn send(tx: &mut SplitSink<WebSocket, Message>, msg: Message, patience: Duration) -> bool {
    matches!(
        tokio::time::timeout(patience, tx.send(msg)).await,
        Ok(Ok(()))
    )
}
