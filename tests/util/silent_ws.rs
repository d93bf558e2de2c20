//! A WebSocket client that never answers: it sends the upgrade request by hand on a raw TCP
//! socket, reads the `101` answer, then only counts the bytes the server sends (its pings)
//! until the server closes the socket. No WebSocket library runs on it, so no pong is ever
//! sent: it is the peer whose network vanished without a FIN.
//!
//! It does not speak the stream's frames (that is `super::stream`).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An upgraded connection nobody reads on the client's side.
pub struct SilentWs {
    stream: TcpStream,
}

impl SilentWs {
    /// Upgrades `GET /v1/events` on the API at `base` (`http://ADDR`).
    pub async fn connect(base: &str) -> Self {
        let addr = base.trim_start_matches("http://");
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /v1/events HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        // Read the answer's head byte by byte, so no frame after it is taken too.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            let n = stream.read(&mut byte).await.unwrap();
            assert!(n == 1, "closed during the upgrade: {head:?}");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        Self { stream }
    }

    /// Reads (without answering) until the server closes the socket or `limit` passes;
    /// answers how long that took, or `None` when it was still open, and the bytes read.
    pub async fn wait_closed(&mut self, limit: Duration) -> (Option<Duration>, usize) {
        let start = tokio::time::Instant::now();
        let mut read = 0;
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout_at(start + limit, self.stream.read(&mut buf)).await {
                Err(_) => return (None, read),
                Ok(Ok(0) | Err(_)) => return (Some(start.elapsed()), read),
                Ok(Ok(n)) => read += n,
            }
        }
    }
}
