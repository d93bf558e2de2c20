//! The README's demo chain through the real daemon: `etl.sync` pulls a paginated JSON API
//! into SQLite, `pdf.report` renders the synced rows, `email.send` mails the PDF; a real SMTP
//! listener and a real HTTP API run inside the test on 127.0.0.1:0.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use mail_parser::{MessageParser, MimeHeaders};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::util::{Api, Scratch, step_ids};

const T: Duration = Duration::from_secs(60);
const PAGES: u32 = 3;
const PER_PAGE: u32 = 40;

/// `GET /orders?after=cN`: cursor pages of orders, behind a bearer token.
async fn orders(headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer t0ken") {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let page: u32 = q
        .get("after")
        .and_then(|c| c.strip_prefix('c')?.parse().ok())
        .unwrap_or(1);
    let items: Vec<Value> = (1..=PER_PAGE)
        .map(|i| {
            let id = (page - 1) * PER_PAGE + i;
            json!({"id": id, "customer": format!("Client {id} €"), "total": f64::from(id) * 2.5})
        })
        .collect();
    let next = (page < PAGES).then(|| format!("c{}", page + 1));
    Json(json!({"items": items, "next": next})).into_response()
}

/// A real SMTP listener, just enough of the protocol for lettre; each message's DATA is sent
/// on the channel.
async fn smtp_server() -> (u16, mpsc::UnboundedReceiver<Vec<u8>>) {
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
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let cmd = line.to_ascii_uppercase();
                    let reply: &[u8] = if cmd.starts_with("EHLO") {
                        b"250-test\r\n250 8BITMIME\r\n"
                    } else if cmd.starts_with("DATA") {
                        let _ = write.write_all(b"354 go ahead\r\n").await;
                        let mut data = Vec::new();
                        loop {
                            line.clear();
                            if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if line == ".\r\n" {
                                break;
                            }
                            data.extend_from_slice(
                                line.strip_prefix('.').unwrap_or(&line).as_bytes(),
                            );
                        }
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

/// etl.sync -> pdf.report (of the synced rows) -> email.send (the PDF attached): every step
/// succeeds and the SMTP server receives the PDF.
#[tokio::test]
async fn etl_to_pdf_to_email() {
    let app = Router::new().route("/orders", get(orders));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let source = format!("http://{}/orders", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (smtp_port, mut inbox) = smtp_server().await;

    let s = Scratch::new();
    s.write_config(&format!(
        "[files]\ndir = \"{files}\"\n\n[smtp]\nurl = \"smtp://127.0.0.1:{smtp_port}\"\n\
         from = \"Hopper <hopper@example.com>\"\n\n[etl]\ntokens = {{ orders = \"t0ken\" }}\n",
        files = s.path().join("files").display()
    ));
    let d = s.start(&["serve"]);
    let api = Api::new(d.wait_addr());
    let (status, first) = api
        .enqueue(json!({
            "kind": "etl.sync",
            "payload": {
                "source": {
                    "url": source,
                    "pagination": {"cursor": {"param": "after", "next": "next"}},
                    "items": "items",
                    "token": "orders",
                },
                "target": {
                    "database": "sqlite:etl/orders.db",
                    "table": "orders",
                    "key": "id",
                    "columns": {"id": "id", "customer": "customer", "total": "total"},
                },
            },
            "then": [
                {"kind": "pdf.report", "payload": {"title": "Orders report €"}},
                {"kind": "email.send", "payload": {
                    "to": "boss@example.com", "subject": "Orders", "text": "Attached."}},
            ],
        }))
        .await;
    assert_eq!(status, 201, "{first}");
    let ids = step_ids(&first);
    let mail = api.wait_state(&ids[2], "succeeded", T).await;
    let etl = api.job(&ids[0]).await;
    assert_eq!(etl["result"]["rows_new"], PAGES * PER_PAGE, "{etl:#}");
    let pdf = api.job(&ids[1]).await;
    let pages = pdf["result"]["pages"].as_u64().unwrap();
    assert!(pages >= 3, "{pdf:#}");

    let data = tokio::time::timeout(T, inbox.recv())
        .await
        .unwrap()
        .unwrap();
    let msg = MessageParser::default().parse(&data).unwrap();
    assert_eq!(msg.subject(), Some("Orders"));
    let pdf_part = msg
        .attachments()
        .find(|a| a.content_type().is_some_and(|c| c.subtype() == Some("pdf")))
        .unwrap_or_else(|| panic!("no PDF attached: {mail:#}"));
    let bytes = pdf_part.contents();
    assert!(bytes.starts_with(b"%PDF"), "the attachment is a PDF");
    let on_disk = std::fs::read(
        s.path()
            .join("files")
            .join(pdf["result"]["path"].as_str().unwrap()),
    )
    .unwrap();
    assert_eq!(bytes, &on_disk[..], "the mailed PDF is the report");
}
