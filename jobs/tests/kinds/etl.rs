//! `etl.sync` from an axum API on 127.0.0.1:0 (5 cursor pages, one 503, a bearer token) into
//! SQLite and into the local PostgreSQL; `json` columns; an endless page against the download
//! limit; table names the databases resolve elsewhere.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hopper_jobs::{EtlToken, JobsConfig};
use serde_json::{Value, json};

use crate::common::{self, is_permanent, ok, run};

const PAGES: u32 = 5;
const PER_PAGE: u32 = 10;
const TOKEN: &str = "s3cret-token";
const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

#[derive(Default)]
struct Api {
    requests: AtomicU32,
    /// Requests for page 3 so far; the first one gets a 503.
    page3: AtomicU32,
}

/// `GET /orders?after=cN`: page N of 5 (page 1 without `after`), `next` null on the last.
async fn orders(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    api.requests.fetch_add(1, Ordering::SeqCst);
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {TOKEN}"))
    {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let page: u32 = match q.get("after") {
        None => 1,
        Some(c) => match c.strip_prefix('c').and_then(|n| n.parse().ok()) {
            Some(n) if (1..=PAGES).contains(&n) => n,
            _ => return StatusCode::BAD_REQUEST.into_response(),
        },
    };
    if page == 3 && api.page3.fetch_add(1, Ordering::SeqCst) == 0 {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let items: Vec<Value> = (1..=PER_PAGE)
        .map(|i| {
            let id = (page - 1) * PER_PAGE + i;
            json!({"id": id, "customer": {"name": format!("Cliente {id} €")}, "amount": {"total": f64::from(id) * 1.5}, "paid": id.is_multiple_of(2)})
        })
        .collect();
    let next = if page < PAGES {
        json!(format!("c{}", page + 1))
    } else {
        Value::Null
    };
    Json(json!({"result": {"items": items}, "meta": {"next": next}})).into_response()
}

async fn api() -> (String, Arc<Api>) {
    let state = Arc::new(Api::default());
    let app = Router::new()
        .route("/orders", get(orders))
        .route("/gone", get(|| async { StatusCode::NOT_FOUND }))
        .with_state(Arc::clone(&state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, state)
}

/// A token bound to the URLs under `url_prefix`.
pub fn token(secret: &str, url_prefix: &str) -> EtlToken {
    EtlToken {
        token: secret.to_owned(),
        url_prefix: url_prefix.to_owned(),
    }
}

/// Files under `dir`; the token `orders_api` bound to the test API at `base` (plain http: an
/// explicit opt-in of its `url_prefix`); the PostgreSQL database `pg`.
fn etl_config(dir: &std::path::Path, base: &str) -> JobsConfig {
    let mut config = common::config(dir);
    config
        .etl
        .tokens
        .insert("orders_api".into(), token(TOKEN, &format!("{base}/")));
    config.etl.databases.insert("pg".into(), PG_URL.into());
    config
}

fn payload(base: &str, database: &str, table: &str) -> Value {
    json!({
        "source": {
            "url": format!("{base}/orders"),
            "pagination": {"cursor": {"param": "after", "next": "meta.next"}},
            "items": "result.items",
            "token": "orders_api",
        },
        "target": {
            "database": database,
            "table": table,
            "key": "id",
            "columns": {"id": "id", "customer": "customer.name", "total": "amount.total", "paid": "paid"},
            "types": {"id": "integer", "total": "real", "paid": "boolean"},
        },
    })
}

#[tokio::test]
async fn syncs_into_sqlite_and_resumes_from_the_cursor() {
    let (base, api) = api().await;
    let tmp = tempfile::tempdir().expect("tmp");
    let config = etl_config(tmp.path(), &base);
    let registry = common::registry(&config);
    let p = payload(&base, "sqlite:etl/orders.db", "orders");

    let first = ok(run(&registry, "etl.sync", p.clone()).await);
    assert_eq!(first["pages"], PAGES);
    assert_eq!(first["rows_upserted"], PAGES * PER_PAGE);
    assert_eq!(first["rows_new"], PAGES * PER_PAGE);
    assert_eq!(first["cursor"], "c5");
    assert_eq!(
        api.requests.load(Ordering::SeqCst),
        PAGES + 1,
        "one 503 retried once"
    );

    let conn = rusqlite::Connection::open(config.files.dir.join("etl/orders.db")).expect("open");
    let (n, total, customer): (i64, f64, String) = conn
        .query_row(
            "SELECT (SELECT COUNT(*) FROM orders), total, customer FROM orders WHERE id = 37",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("row 37");
    assert_eq!((n, total, customer.as_str()), (50, 55.5, "Cliente 37 €"));

    let second = ok(run(&registry, "etl.sync", p).await);
    assert_eq!(second["rows_new"], 0, "{second}");
    assert_eq!(
        second["pages"], 1,
        "resumed from the stored cursor: {second}"
    );
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM orders", [], |r| r.get(0))
        .expect("count");
    assert_eq!(n, 50);
}

/// A PostgreSQL table name no other run of these tests uses.
fn pg_table(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    )
}

/// Runs `select` (one row) on the local PostgreSQL, then drops `table` and its sync state,
/// whatever the query gave: the result is asserted on after the clean-up.
async fn pg_query_then_drop(
    table: &str,
    select: &str,
) -> Result<tokio_postgres::Row, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(PG_URL, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let row = client.query_one(select, &[]).await;
    client
        .batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\""))
        .await
        .expect("drop");
    client
        .execute("DELETE FROM hopper_etl_state WHERE target = $1", &[&table])
        .await
        .expect("clean state");
    row
}

#[tokio::test]
async fn syncs_into_postgres() {
    let (base, _api) = api().await;
    let tmp = tempfile::tempdir().expect("tmp");
    let registry = common::registry(&etl_config(tmp.path(), &base));
    let table = pg_table("etl_test");
    let p = payload(&base, "pg", &table);
    let first = run(&registry, "etl.sync", p.clone()).await;
    let second = run(&registry, "etl.sync", p).await;

    let check = pg_query_then_drop(
        &table,
        &format!(
            "SELECT COUNT(*), SUM(total), bool_and(paid) FILTER (WHERE id % 2 = 0) FROM \"{table}\""
        ),
    )
    .await;

    let first = ok(first);
    assert_eq!(first["rows_new"], PAGES * PER_PAGE);
    assert_eq!(first["cursor"], "c5");
    let second = ok(second);
    assert_eq!(second["rows_new"], 0);
    assert_eq!(second["rows_upserted"], PER_PAGE);
    let row = check.expect("query");
    assert_eq!(row.get::<_, i64>(0), 50);
    assert_eq!(
        row.get::<_, f64>(1),
        (1..=50).map(|i| f64::from(i) * 1.5).sum::<f64>()
    );
    assert!(row.get::<_, bool>(2));
}

/// Syncs started together into one new PostgreSQL table all succeed. Each creates the
/// table (and the state table) `IF NOT EXISTS`, which PostgreSQL does not make safe against a
/// concurrent creation: the loser got a unique violation on `pg_type` and died for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_syncs_into_a_new_postgres_table_all_succeed() {
    let (base, _api) = api().await;
    let tmp = tempfile::tempdir().expect("tmp");
    let registry = std::sync::Arc::new(common::registry(&etl_config(tmp.path(), &base)));
    let table = pg_table("etl_race");
    let mut runs = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let registry = std::sync::Arc::clone(&registry);
        let p = payload(&base, "pg", &table);
        runs.spawn(async move { run(&registry, "etl.sync", p).await });
    }
    let ran = runs.join_all().await;

    let rows = pg_query_then_drop(&table, &format!("SELECT COUNT(*) FROM \"{table}\"")).await;

    let mut new_rows = 0;
    for r in ran {
        new_rows += ok(r)["rows_new"].as_u64().expect("rows_new");
    }
    assert_eq!(new_rows, u64::from(PAGES * PER_PAGE), "each row new once");
    assert_eq!(rows.expect("count").get::<_, i64>(0), 50);
}

#[tokio::test]
async fn client_errors_are_permanent() {
    let (base, _api) = api().await;
    let tmp = tempfile::tempdir().expect("tmp");
    let mut config = etl_config(tmp.path(), &base);
    config
        .etl
        .tokens
        .insert("wrong".into(), token("nope", &format!("{base}/")));
    let registry = common::registry(&config);
    let mut p = payload(&base, "sqlite:etl/x.db", "x");
    p["source"]["url"] = json!(format!("{base}/gone"));
    let ran = run(&registry, "etl.sync", p.clone()).await;
    assert!(is_permanent(&ran.result), "404: {:?}", ran.result);
    p["source"]["url"] = json!(format!("{base}/orders"));
    p["source"]["token"] = json!("wrong");
    let ran = run(&registry, "etl.sync", p).await;
    assert!(is_permanent(&ran.result), "401: {:?}", ran.result);
}

#[tokio::test]
async fn validate_names_the_field() {
    let tmp = tempfile::tempdir().expect("tmp");
    let base = "http://127.0.0.1:1";
    let registry = common::registry(&etl_config(tmp.path(), base));
    let k = "etl.sync";
    let good = payload(base, "sqlite:etl/a.db", "orders");
    assert!(common::validate(&registry, k, &good).is_ok());
    // The good payload with the value at the dotted `path` replaced.
    let with = |path: &str, value: Value| {
        let mut p = good.clone();
        let mut at = &mut p;
        for key in path.split('.') {
            at = &mut at[key];
        }
        *at = value;
        p
    };
    // Each bad value, put in its place of the good payload: the field named is that place.
    let refused = [
        ("source.token", json!("unknown")),
        ("source.url", json!("ftp://x")),
        ("target.database", json!("nowhere")),
        ("target.database", json!("sqlite:../a.db")),
        ("target.table", json!("a; drop")),
        ("target.key", json!("nope")),
        ("target.types.id", json!("decimal")),
    ];
    let cases = refused
        .into_iter()
        .map(|(path, value)| (with(path, value), format!("payload.{path}")))
        .collect();
    common::assert_refused(&registry, k, cases);
}

/// A page over `[files] max_download_bytes` is refused as it streams in, like an
/// `image.resize` download: an API (or anything a payload's URL reaches) answering with an
/// endless body cannot make the worker hold it in memory until the timeout.
#[tokio::test]
async fn an_endless_page_is_refused_at_the_download_limit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A server that answers 200 with a JSON array that never ends (no Content-Length: the
    // body runs until the connection closes), writing until the client goes away.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n[";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk =
                    "{\"id\": 1, \"pad\": \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"},".repeat(100);
                while socket.write_all(chunk.as_bytes()).await.is_ok() {}
            });
        }
    });
    let tmp = tempfile::tempdir().expect("tmp");
    let mut config = common::config(tmp.path());
    config.files.max_download_bytes = 64 * 1024;
    config.http.timeout = std::time::Duration::from_secs(5);
    let registry = common::registry(&config);
    let p = json!({
        "source": {"url": format!("{base}/endless")},
        "target": {"database": "sqlite:etl/endless.db", "table": "endless", "key": "id",
                   "columns": {"id": "id", "pad": "pad"}},
    });
    let started = std::time::Instant::now();
    let ran = run(&registry, "etl.sync", p).await;
    let message = common::error_message(&ran.result);
    assert!(is_permanent(&ran.result), "{:?}", ran.result);
    assert!(message.contains("65536-byte download limit"), "{message}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "read until the timeout: {:?}",
        started.elapsed()
    );
}

/// A `json` column holds each item's value as JSON, whatever its JSON type: a string is
/// stored as the JSON string `"…"`, not as bare text (which PostgreSQL refused as invalid
/// JSON, failing the whole sync for good) nor as a number or text SQLite types by itself.
#[tokio::test]
async fn json_columns_hold_json_of_every_type() {
    let values = [
        json!("just a string"),
        json!({"a": [1, 2]}),
        json!([true, null]),
        json!(42),
        json!(1.5),
        json!(false),
    ];
    let items: Vec<Value> = values
        .iter()
        .enumerate()
        .map(|(i, v)| json!({"id": i, "v": v}))
        .collect();
    let body = json!({ "items": items });
    let app = Router::new().route("/j", get(move || async move { Json(body) }));
    let base = common::serve("127.0.0.1", app).await;
    let tmp = tempfile::tempdir().expect("tmp");
    let config = etl_config(tmp.path(), &base);
    let registry = common::registry(&config);
    let table = format!("etl_json_{}", std::process::id());
    let p = |database: &str| {
        json!({
            "source": {"url": format!("{base}/j"), "items": "items"},
            "target": {"database": database, "table": table, "key": "id",
                       "columns": {"id": "id", "v": "v"},
                       "types": {"id": "integer", "v": "json"}},
        })
    };

    let sqlite = run(&registry, "etl.sync", p("sqlite:etl/json.db")).await;
    let pg = run(&registry, "etl.sync", p("pg")).await;
    let (client, conn) = tokio_postgres::connect(PG_URL, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let stored = client
        .query(&format!("SELECT v::text FROM \"{table}\" ORDER BY id"), &[])
        .await;
    client
        .batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\""))
        .await
        .expect("drop");
    client
        .execute("DELETE FROM hopper_etl_state WHERE target = $1", &[&table])
        .await
        .expect("clean state");

    assert_eq!(ok(sqlite)["rows_new"], values.len());
    let conn = rusqlite::Connection::open(config.files.dir.join("etl/json.db")).expect("open");
    let mut stmt = conn
        .prepare(&format!("SELECT typeof(v), v FROM \"{table}\" ORDER BY id"))
        .expect("select");
    let rows: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    for ((ty, text), want) in rows.iter().zip(&values) {
        assert_eq!(ty, "text", "{want}");
        let got: Value = serde_json::from_str(text).expect("sqlite holds JSON text");
        assert_eq!(&got, want);
    }
    assert_eq!(rows.len(), values.len());

    assert_eq!(ok(pg)["rows_new"], values.len());
    let rows = stored.expect("pg rows");
    let got: Vec<Value> = rows
        .iter()
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).expect("jsonb"))
        .collect();
    assert_eq!(got, values);
}

/// Table names the databases resolve elsewhere are refused with a 400: the state table in
/// any case (SQLite names are case-insensitive, so `HOPPER_ETL_STATE` was the state table
/// itself, and a payload could rewrite other syncs' cursors), and the prefixes the databases
/// reserve (`pg_class` was created in `public` but written in `pg_catalog`, which comes
/// first in the search path; `sqlite_*` are SQLite's own).
#[tokio::test]
async fn table_names_the_database_resolves_elsewhere_are_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let base = "http://127.0.0.1:1";
    let registry = common::registry(&etl_config(tmp.path(), base));
    let mut p = payload(base, "sqlite:etl/a.db", "orders");
    for table in [
        "HOPPER_ETL_STATE",
        "Hopper_Etl_State",
        "pg_class",
        "PG_description",
        "sqlite_master",
        "sqlite_stat1",
    ] {
        p["target"]["table"] = json!(table);
        let e = common::validate(&registry, "etl.sync", &p).expect_err(table);
        assert_eq!(e.field, "payload.target.table", "{table}");
    }
    p["target"]["table"] = json!("pgsql_orders");
    assert!(common::validate(&registry, "etl.sync", &p).is_ok());
}
