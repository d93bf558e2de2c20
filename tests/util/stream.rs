//! Clients of `GET /v1/events`: a real WebSocket client (tokio-tungstenite) and a minimal SSE
//! reader over reqwest, each reading frames as JSON under the tests' one deadline.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::wait::DEADLINE;

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The `ws://` URL of the events route of the API at `base` (`http://ADDR`), with `query`.
pub fn ws_url(base: &str, query: &str) -> String {
    let addr = base.trim_start_matches("http://");
    if query.is_empty() {
        format!("ws://{addr}/v1/events")
    } else {
        format!("ws://{addr}/v1/events?{query}")
    }
}

/// Connects, with `headers` added to the upgrade request.
pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Result<Socket, WsError> {
    let mut req = url.into_client_request()?;
    for (k, v) in headers {
        let name =
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        req.headers_mut()
            .insert(name, HeaderValue::from_str(v).unwrap());
    }
    let (socket, response) = tokio_tungstenite::connect_async(req).await?;
    if let Some(p) = response.headers().get("sec-websocket-protocol") {
        assert_eq!(p, "hopper", "the server echoes the hopper protocol");
    }
    Ok(socket)
}

/// Connects, failing the test when the upgrade is refused.
pub async fn connect(url: &str) -> Socket {
    connect_with(url, &[]).await.unwrap()
}

/// What the next frame was.
#[derive(Debug)]
pub enum Next {
    Json(Value),
    Closed(Option<CloseFrame>),
}

/// The next text frame as JSON, or the close; skips pings and pongs.
pub async fn next(ws: &mut Socket) -> Next {
    // One deadline for the frame, however many pings come first.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("no frame before the deadline");
        match msg {
            Some(Ok(Message::Text(t))) => return Next::Json(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(frame))) => return Next::Closed(frame),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Next::Closed(None),
        }
    }
}

/// The next frame, which must be JSON.
pub async fn next_json(ws: &mut Socket) -> Value {
    match next(ws).await {
        Next::Json(v) => v,
        Next::Closed(f) => panic!("the stream closed: {f:?}"),
    }
}

/// Frames until (and including) the first that `last` accepts.
pub async fn read_until(ws: &mut Socket, last: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut out = Vec::new();
    let read = async {
        loop {
            let v = next_json(ws).await;
            let done = last(&v);
            out.push(v);
            if done {
                return;
            }
        }
    };
    if tokio::time::timeout(DEADLINE, read).await.is_err() {
        panic!("the awaited frame never came; frames so far: {out:?}");
    }
    out
}

/// Closes politely.
pub async fn close(mut ws: Socket) {
    let _ = ws.close(None).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), ws.flush()).await;
}

/// An SSE response read frame by frame: `(id, event, data)`.
pub struct Sse {
    resp: reqwest::Response,
    buf: String,
}

/// One SSE frame.
#[derive(Debug, Default)]
pub struct SseFrame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Value,
}

impl Sse {
    /// `GET url` accepting `text/event-stream`, with `headers`; expects 200.
    pub async fn open(url: &str, headers: &[(&str, &str)]) -> Self {
        let mut req = reqwest::Client::new()
            .get(url)
            .header("accept", "text/event-stream");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        Self {
            resp,
            buf: String::new(),
        }
    }

    /// The next frame with data (keep-alive comments are skipped).
    pub async fn next(&mut self) -> SseFrame {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut f = SseFrame::default();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        f.id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        f.event = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if !data.is_empty() {
                    f.data = serde_json::from_str(&data).unwrap();
                    return f;
                }
                continue;
            }
            let chunk = tokio::time::timeout(DEADLINE, self.resp.chunk())
                .await
                .expect("no SSE data before the deadline")
                .unwrap()
                .expect("the SSE stream ended");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}
