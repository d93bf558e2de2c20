//! The Server-Sent Events transport, for `curl -N` and the browser's `EventSource`: each event
//! as `id: CURSOR` and `data: JSON` (so `Last-Event-ID` resumes it), a `gap` or `lagged` frame
//! as `event: gap` / `event: lagged`, and a comment every `[server] ws_ping_interval` (20 s)
//! to keep proxies from closing an idle stream.
//!
//! A task reads the feed into a small channel the response body drains; when the client stops
//! reading, the channel fills and the task waits. A frame that waited two ping intervals to be
//! taken ends the stream, as a stuck send ends a WebSocket: its task, its place under
//! `max_connections` and its subscription to the hub are freed, and the body ends once what
//! was buffered is read; a client that reads, only slowly, meets the hub's bounded ring and is
//! told `lagged` instead. The task is the hub's (tracked, see `Hub::spawn`) and ends when the
//! hub stops, which ends the response body, so graceful shutdown is not held up.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

use super::feed::{Feed, Frame};
use super::hub::{Admitted, Hub};

/// Frames buffered between the feed and the response body.
const BUFFER: usize = 64;

/// The SSE response streaming `feed`, with a comment every `ping` and two of them as the
/// patience of a send.
pub fn stream(hub: Hub, mut feed: Feed, admitted: Admitted, ping: Duration) -> Response {
    let (tx, rx) = mpsc::channel::<SseEvent>(BUFFER);
    let stopping = hub.stopping();
    let patience = 2 * ping;
    hub.spawn(async move {
        let _admitted = admitted;
        loop {
            let frame = tokio::select! {
                () = stopping.cancelled() => return,
                () = tx.closed() => return,
                frame = feed.next() => frame,
            };
            let event = match frame {
                Ok(Some(Frame::Event(ev))) => SseEvent::default()
                    .id(ev.event.id.as_str())
                    .data(ev.text.as_str()),
                Ok(Some(frame @ Frame::Gap)) => {
                    SseEvent::default().event("gap").data(frame.text().as_str())
                }
                Ok(Some(frame @ Frame::Lagged { .. })) => {
                    let lagged = SseEvent::default()
                        .event("lagged")
                        .data(frame.text().as_str());
                    let _ = tx.send_timeout(lagged, patience).await;
                    return;
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "event stream: reading the event log failed");
                    return;
                }
            };
            tokio::select! {
                () = stopping.cancelled() => return,
                sent = tx.send_timeout(event, patience) => if sent.is_err() {
                    tracing::debug!("event stream: an SSE client read nothing for {patience:?}; dropping it");
                    return;
                },
            }
        }
    });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(body)
        .keep_alive(KeepAlive::new().interval(ping))
        .into_response()
}
