//! The README's demo chain through the real daemon: `etl.sync` pulls a paginated JSON API
//! into SQLite, `pdf.report` renders the synced rows, `email.send` mails the PDF; a real SMTP
//! listener and a real HTTP API run inside the test on 127.0.0.1:0 (`util::peers`); the orders
//! that API serves are this file's.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use mail_parser::{MessageParser, MimeHeaders};
use serde_json::{Value, json};

use crate::util::peers::{serve_http, smtp_server};
use crate::util::{Scratch, step_ids, wait};

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

/// etl.sync -> pdf.report (of the synced rows) -> email.send (the PDF attached): every step
/// succeeds and the SMTP server receives the PDF.
#[tokio::test]
async fn etl_to_pdf_to_email() {
    let api_addr = serve_http(Router::new().route("/orders", get(orders))).await;
    let source = format!("http://{api_addr}/orders");
    let (smtp_port, mut inbox) = smtp_server().await;

    let s = Scratch::new();
    // The API is on loopback, which outgoing requests reach only when allowed; the token is
    // bound to it (plain http: the explicit opt-in of an http:// url_prefix).
    s.write_config(&format!(
        "[files]\ndir = \"{files}\"\n\n[smtp]\nurl = \"smtp://127.0.0.1:{smtp_port}\"\n\
         from = \"Hopper <hopper@example.com>\"\n\n[etl]\n\
         tokens = {{ orders = {{ token = \"t0ken\", url_prefix = \"http://{api_addr}/\" }} }}\n\n\
         [http]\nallow_hosts = [\"127.0.0.1\"]\n",
        files = s.path().join("files").display()
    ));
    let (_d, api) = s.serve(&[]);
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
    let mail = api.wait_state(&ids[2], "succeeded").await;
    let etl = api.job(&ids[0]).await;
    assert_eq!(etl["result"]["rows_new"], PAGES * PER_PAGE, "{etl:#}");
    let pdf = api.job(&ids[1]).await;
    let pages = pdf["result"]["pages"].as_u64().unwrap();
    assert!(pages >= 3, "{pdf:#}");

    let data = wait::within("the mail", inbox.recv()).await.unwrap();
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
