//! An in-test WebSocket server speaking the `GET /v1/events` contract, for `hopper tail
//! --server`: a real peer on 127.0.0.1 (tokio-tungstenite's server side) that hands each
//! accepted connection to the test, which sends real frames and closes or drops it. Stopping
//! it and starting it again on the same address is a server restart. A plain HTTP request
//! (`tail --job` first asks `GET /v1/jobs/{id}`) is answered with that job, running, with no
//! history yet, unless the test scripted the next answers ([`WsPeer::script`]: a job that
//! ended meanwhile, a 429), which any request, an upgrade too, takes first.
//!
//! It does not build Hopper's own stream server (that is `src/api/events/`); it only speaks
//! the wire contract the client is written against.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures::SinkExt;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::wait;

/// A listening WebSocket peer.
pub struct WsPeer {
    pub addr: SocketAddr,
    accepted: mpsc::UnboundedReceiver<Conn>,
    task: JoinHandle<()>,
    scripted: Scripted,
}

/// Whole HTTP answers (status line, headers, body) the next requests get, in order.
type Scripted = Arc<Mutex<std::collections::VecDeque<String>>>;

/// One accepted WebSocket connection, with what its upgrade request said.
pub struct Conn {
    /// The request target, e.g. `/v1/events?job=…&since=…`.
    pub uri: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    ws: WebSocketStream<TcpStream>,
}

impl WsPeer {
    /// Listens on a free loopback port.
    pub async fn start() -> Self {
        Self::listen(TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    /// Listens again on `addr` (a restart), retrying while the old socket lets go of it.
    pub async fn restart(addr: SocketAddr) -> Self {
        let listener = wait::until(&format!("binding {addr} again"), async || {
            TcpListener::bind(addr).await.map_err(|e| e.to_string())
        })
        .await;
        Self::listen(listener)
    }

    fn listen(listener: TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let (tx, accepted) = mpsc::unbounded_channel();
        let scripted = Scripted::default();
        let script = scripted.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                if answer_plain_http(&mut stream, &script).await {
                    continue;
                }
                let seen = Arc::new(Mutex::new((String::new(), None)));
                let keep = seen.clone();
                // The handshake callback's error type is tungstenite's, large by design.
                #[allow(clippy::result_large_err)]
                let callback = move |req: &Request, resp: Response| {
                    let auth = req
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    *keep.lock().unwrap() = (req.uri().to_string(), auth);
                    Ok(resp)
                };
                let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                    continue;
                };
                let (uri, authorization) = seen.lock().unwrap().clone();
                if tx
                    .send(Conn {
                        uri,
                        authorization,
                        ws,
                    })
                    .is_err()
                {
                    break;
                }
            }
        });
        Self {
            addr,
            accepted,
            task,
            scripted,
        }
    }

    /// The next request, whatever it is, gets `status` with `headers` and the JSON `body`.
    pub fn script(&self, status: &str, headers: &[(&str, &str)], body: &Value) {
        let body = body.to_string();
        let mut resp = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n",
            body.len()
        );
        for (k, v) in headers {
            resp.push_str(&format!("{k}: {v}\r\n"));
        }
        resp.push_str("\r\n");
        resp.push_str(&body);
        self.scripted.lock().unwrap().push_back(resp);
    }

    /// The base URL to give `hopper tail --server`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next accepted connection.
    pub async fn accept(&mut self) -> Conn {
        wait::within("a WebSocket client connecting", self.accepted.recv())
            .await
            .unwrap()
    }

    /// Stops listening; connections already handed out stay open until dropped.
    pub fn stop(self) -> SocketAddr {
        self.task.abort();
        self.addr
    }
}

/// Answers a request that is not a WebSocket upgrade (the job lookup), or any request while
/// answers are scripted, and says so; leaves an upgrade unread for the handshake.
async fn answer_plain_http(stream: &mut TcpStream, scripted: &Scripted) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 8192];
    let head = loop {
        let n = stream.peek(&mut buf).await.unwrap_or(0);
        let seen = String::from_utf8_lossy(&buf[..n]).into_owned();
        if let Some(end) = seen.find("\r\n\r\n") {
            break seen[..end + 4].to_owned();
        }
        if n == 0 || n == buf.len() {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    let next = scripted.lock().unwrap().pop_front();
    if next.is_none() && head.to_ascii_lowercase().contains("upgrade: websocket") {
        return false;
    }
    let mut consumed = vec![0u8; head.len()];
    let _ = stream.read_exact(&mut consumed).await;
    let resp = next.unwrap_or_else(|| {
        let path = head.split_whitespace().nth(1).unwrap_or_default();
        let id = path.rsplit('/').next().unwrap_or_default();
        let body = serde_json::json!({"id": id, "state": "running", "history": []}).to_string();
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
    });
    let _ = stream.write_all(resp.as_bytes()).await;
    let _ = stream.shutdown().await;
    true
}

impl Conn {
    /// The value of query parameter `name` in the upgrade request, if present.
    pub fn query(&self, name: &str) -> Option<String> {
        let (_, q) = self.uri.split_once('?')?;
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then(|| v.to_owned())
        })
    }

    /// Sends one JSON text frame.
    pub async fn send(&mut self, frame: &Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .unwrap();
    }

    /// Closes with `code` and `reason`.
    pub async fn close(mut self, code: u16, reason: &str) {
        let _ = self
            .ws
            .close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            }))
            .await;
        // Let the client read the close frame before the socket goes.
        use futures::StreamExt;
        while let Ok(Some(Ok(_))) =
            tokio::time::timeout(std::time::Duration::from_secs(5), self.ws.next()).await
        {}
    }
}

/// An event frame of the contract: the `Event` serialization with `id` as its cursor.
pub fn event(id: &str, ty: &str, job: &str, progress: Option<u8>) -> Value {
    let mut v = serde_json::json!({
        "id": id,
        "type": ty,
        "job_id": job,
        "queue": "default",
        "kind": "sys.sleep",
        "at": "2025-01-01T00:00:00Z",
        "attempt": 1,
    });
    if let Some(p) = progress {
        v["progress"] = p.into();
    }
    v
}
