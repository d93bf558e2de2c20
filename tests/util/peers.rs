//! The peers a job talks to, run inside the test on 127.0.0.1:0: an HTTP API served from an
//! axum router, and an SMTP listener that hands over each message it receives.
//!
//! They speak just enough of their protocol for Hopper's clients; what they serve is the
//! test's business.

use std::net::SocketAddr;

use axum::Router;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Serves `app` on a free loopback port until the test ends; returns its address.
pub async fn serve_http(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A real SMTP listener, just enough of the protocol for lettre; each message's DATA is sent
/// on the channel. Returns its port.
pub async fn smtp_server() -> (u16, mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read);
                let _ = write.write_all(b"220 test ESMTP\r\n").await;
                let mut line = String::new();
                while next_line(&mut lines, &mut line).await {
                    let cmd = line.to_ascii_uppercase();
                    let reply: &[u8] = if cmd.starts_with("EHLO") {
                        b"250-test\r\n250 8BITMIME\r\n"
                    } else if cmd.starts_with("DATA") {
                        let _ = write.write_all(b"354 go ahead\r\n").await;
                        let Some(data) = read_data(&mut lines).await else {
                            return;
                        };
                        let _ = tx.send(data);
                        b"250 queued\r\n"
                    } else if cmd.starts_with("QUIT") {
                        let _ = write.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 OK\r\n"
                    };
                    if write.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, rx)
}

/// Reads the next line into `line`; false at the end of the stream.
async fn next_line(lines: &mut (impl AsyncBufRead + Unpin), line: &mut String) -> bool {
    line.clear();
    lines.read_line(line).await.unwrap_or(0) > 0
}

/// The message after DATA, up to the lone `.`, dot-unstuffed; `None` if the stream ends first.
async fn read_data(lines: &mut (impl AsyncBufRead + Unpin)) -> Option<Vec<u8>> {
    let mut data = Vec::new();
    let mut line = String::new();
    loop {
        if !next_line(lines, &mut line).await {
            return None;
        }
        if line == ".\r\n" {
            return Some(data);
        }
        data.extend_from_slice(line.strip_prefix('.').unwrap_or(&line).as_bytes());
    }
}
