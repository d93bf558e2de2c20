//! `etl.sync`: pages of JSON items from an HTTP API, upserted into a table of an SQLite file
//! under the files directory or of a configured PostgreSQL database. This module owns the
//! payload, pagination, the in-job retries of one page request, the cursor kept between runs
//! and the SQL. Secrets and database URLs stay in `[etl]`: a payload names them.
//!
//! Payload:
//!
//! ```json
//! {"source": {"url": "https://api.example.com/v1/orders",
//!             "pagination": {"cursor": {"param": "after", "next": "meta.next"}}
//!                         | {"page": {"param": "page", "start": 1}},
//!             "items": "data", "token": "orders_api"},
//!  "target": {"database": "sqlite:etl/orders.db" | "warehouse", "table": "orders",
//!             "key": "id" | ["shop", "id"],
//!             "columns": {"id": "id", "total": "amount.total", "customer": "customer.name"},
//!             "types": {"id": "integer", "total": "real"}},
//!  "max_pages": 1000}
//! ```
//!
//! Paths are dotted with optional indexes (`result.items`, `data[0].id`); `""` is the whole
//! response or item. `types` are `text`, `integer`, `real`, `boolean` or `json` (default: the
//! JSON value as is in SQLite, `text` in PostgreSQL). The table is created when missing with
//! the key as its primary key; rows are upserted (`INSERT ... ON CONFLICT (key) DO UPDATE`),
//! so a run repeated is harmless. Items whose key is null are skipped.
//!
//! **Cursor:** after each page, its rows and the position that fetched it are committed in
//! one transaction, the position in table `hopper_etl_state` of the target database, keyed by
//! source URL and table. The next run (or a retry) resumes by fetching that page again, so it
//! sees items appended since, and moves on from there. With no pagination, every run fetches
//! the one response.
//!
//! **Errors:** one page request is tried up to 4 times on network errors, timeouts, 429 and
//! 5xx, waiting per `Retry-After` (seconds) or a doubling backoff; then (or when the server
//! asks for a wait over 10 s) the job fails retryable with that wait. Other 4xx, a body that
//! is not JSON, items that are not an array and SQL errors on the data are permanent.
//!
//! Result: `{"pages", "rows_upserted", "rows_new", "rows_skipped", "cursor", "table",
//! "database"}`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use hopper_workers::FieldError;
use hopper_workers::{Handler, JobContext, JobError, JobResult};
use reqwest::Client;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;

use crate::files::{FilesDir, check_relative};
use crate::http::{is_retryable_status, request_error, retry_after, status_error};
use crate::payload::{self, one_or_many, valid_ident};
use crate::{JobsConfig, JobsError};

/// The kind's stable name.
pub const KIND: &str = "etl.sync";
/// The table, in each target database, holding each sync's position.
pub const STATE_TABLE: &str = "hopper_etl_state";

/// Tries of one page request before the job gives the attempt up.
const PAGE_TRIES: u32 = 4;
/// First wait between tries; doubles after each.
const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// Longest wait spent inside the job; a longer `Retry-After` goes back to the queue instead.
const MAX_INLINE_WAIT: Duration = Duration::from_secs(10);
/// Default and ceiling of `max_pages`.
const DEFAULT_MAX_PAGES: u32 = 1000;
const MAX_MAX_PAGES: u32 = 100_000;
/// Connections per PostgreSQL pool.
const PG_POOL_SIZE: usize = 4;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    source: Source,
    target: Target,
    max_pages: Option<u32>,
    /// A chain predecessor's result: accepted, not used.
    #[serde(default, rename = "input")]
    _input: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Source {
    url: String,
    pagination: Option<Pagination>,
    #[serde(default)]
    items: String,
    token: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
enum Pagination {
    Cursor { param: String, next: String },
    Page { param: String, start: Option<u64> },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Target {
    database: String,
    table: String,
    #[serde(deserialize_with = "one_or_many")]
    key: Vec<String>,
    columns: BTreeMap<String, String>,
    #[serde(default)]
    types: BTreeMap<String, ColType>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ColType {
    Text,
    Integer,
    Real,
    Boolean,
    Json,
}

impl ColType {
    fn sqlite(self) -> &'static str {
        match self {
            ColType::Text | ColType::Json => "TEXT",
            ColType::Integer | ColType::Boolean => "INTEGER",
            ColType::Real => "REAL",
        }
    }

    fn postgres(self) -> &'static str {
        match self {
            ColType::Text => "text",
            ColType::Integer => "bigint",
            ColType::Real => "double precision",
            ColType::Boolean => "boolean",
            ColType::Json => "jsonb",
        }
    }
}

/// The table's shape, shared by both databases.
#[derive(Clone, Debug)]
struct Spec {
    table: String,
    /// Column names, in a stable (sorted) order, with their JSON paths and types.
    columns: Vec<(String, String, Option<ColType>)>,
    key: Vec<String>,
    /// The sync's identity in the state table.
    source: String,
}

/// `etl.sync`.
pub struct Sync {
    files: FilesDir,
    http: Client,
    tokens: BTreeMap<String, String>,
    postgres: BTreeMap<String, Pool>,
}

impl std::fmt::Debug for Sync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sync")
            .field("tokens", &self.tokens.keys().collect::<Vec<_>>())
            .field("postgres", &self.postgres.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Sync {
    /// The handler, with the shared HTTP client and one lazily connected pool per configured
    /// PostgreSQL URL (nothing connects until a job needs it).
    pub fn new(config: &JobsConfig, http: Client) -> Result<Self, JobsError> {
        let mut postgres = BTreeMap::new();
        for (name, url) in &config.etl.databases {
            let pg: tokio_postgres::Config = url.parse().map_err(|e| JobsError::Config {
                key: format!("etl.databases.{name}"),
                message: format!("not a PostgreSQL URL: {e}"),
            })?;
            let manager = Manager::from_config(
                pg,
                NoTls,
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            );
            let pool = Pool::builder(manager)
                .max_size(PG_POOL_SIZE)
                .runtime(Runtime::Tokio1)
                .create_timeout(Some(config.http_timeout))
                .wait_timeout(Some(config.http_timeout))
                .build()
                .map_err(|e| JobsError::Client {
                    what: "PostgreSQL pool",
                    message: e.to_string(),
                })?;
            postgres.insert(name.clone(), pool);
        }
        Ok(Self {
            files: FilesDir::new(&config.files_dir),
            http,
            tokens: config.etl.tokens.clone(),
            postgres,
        })
    }

    fn parse(&self, payload: &Value) -> Result<Args, FieldError> {
        let args: Args = payload::parse(payload)?;
        let s = &args.source;
        if !(s.url.starts_with("http://") || s.url.starts_with("https://")) {
            return Err(FieldError::new(
                "payload.source.url",
                "must be an http:// or https:// URL",
            ));
        }
        if let Some(t) = &s.token
            && !self.tokens.contains_key(t)
        {
            return Err(FieldError::new(
                "payload.source.token",
                format!("no token named {t:?} in [etl] tokens"),
            ));
        }
        match &s.pagination {
            Some(Pagination::Cursor { param, .. } | Pagination::Page { param, .. })
                if param.is_empty() =>
            {
                return Err(FieldError::new(
                    "payload.source.pagination.param",
                    "must not be empty",
                ));
            }
            _ => {}
        }
        let t = &args.target;
        if let Some(rel) = t.database.strip_prefix("sqlite:") {
            check_relative(rel).map_err(|m| FieldError::new("payload.target.database", m))?;
        } else if !self.postgres.contains_key(&t.database) {
            return Err(FieldError::new(
                "payload.target.database",
                format!(
                    "{:?} is neither sqlite:<file> nor a database named in [etl] databases",
                    t.database
                ),
            ));
        }
        if !valid_ident(&t.table) || t.table == STATE_TABLE {
            return Err(FieldError::new(
                "payload.target.table",
                "must be letters, digits and '_' (not starting with a digit), and not the state table",
            ));
        }
        if t.columns.is_empty() {
            return Err(FieldError::new(
                "payload.target.columns",
                "needs at least one column",
            ));
        }
        if let Some(c) = t.columns.keys().find(|c| !valid_ident(c)) {
            return Err(FieldError::new(
                format!("payload.target.columns.{c}"),
                "column names are letters, digits and '_', not starting with a digit",
            ));
        }
        if t.key.is_empty() {
            return Err(FieldError::new("payload.target.key", "needs a column"));
        }
        if let Some(k) = t.key.iter().find(|k| !t.columns.contains_key(*k)) {
            return Err(FieldError::new(
                "payload.target.key",
                format!("{k:?} is not one of the columns"),
            ));
        }
        if let Some(c) = t.types.keys().find(|c| !t.columns.contains_key(*c)) {
            return Err(FieldError::new(
                format!("payload.target.types.{c}"),
                "is not one of the columns",
            ));
        }
        if let Some(m) = args.max_pages
            && !(1..=MAX_MAX_PAGES).contains(&m)
        {
            return Err(FieldError::new(
                "payload.max_pages",
                format!("must be between 1 and {MAX_MAX_PAGES}"),
            ));
        }
        Ok(args)
    }

    async fn open(&self, database: &str) -> Result<Db, JobError> {
        if let Some(rel) = database.strip_prefix("sqlite:") {
            let path = self.files.output(rel)?;
            let conn = tokio::task::spawn_blocking(move || open_sqlite(path))
                .await
                .map_err(|e| JobError::retryable(format!("sqlite task: {e}")))??;
            Ok(Db::Sqlite(Some(conn)))
        } else {
            let pool = self.postgres.get(database).ok_or_else(|| {
                JobError::permanent(format!("no database named {database:?} in [etl] databases"))
            })?;
            let client = pool
                .get()
                .await
                .map_err(|e| JobError::retryable(format!("postgres {database}: {e}")))?;
            Ok(Db::Postgres(client))
        }
    }

    /// Fetches one page, retrying transient failures inside the job.
    async fn fetch(
        &self,
        cx: &JobContext,
        args: &Args,
        position: Option<&str>,
    ) -> Result<Value, JobError> {
        let source = &args.source;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self.http.get(&source.url);
            if let (Some(p), Some(pos)) = (&source.pagination, position) {
                let param = match p {
                    Pagination::Cursor { param, .. } | Pagination::Page { param, .. } => param,
                };
                req = req.query(&[(param.as_str(), pos)]);
            }
            if let Some(name) = &source.token
                && let Some(secret) = self.tokens.get(name)
            {
                req = req.bearer_auth(secret);
            }
            let what = format!("GET {}", source.url);
            let outcome = match req.send().await {
                Ok(resp) if resp.status().is_success() => {
                    return resp.json::<Value>().await.map_err(|e| {
                        if e.is_decode() {
                            JobError::permanent(format!("{what}: response is not JSON: {e}"))
                        } else {
                            request_error(&what, &e)
                        }
                    });
                }
                Ok(resp) if is_retryable_status(resp.status()) => {
                    let wait = retry_after(resp.headers());
                    (status_error(&what, resp.status(), resp.headers()), wait)
                }
                Ok(resp) => return Err(status_error(&what, resp.status(), resp.headers())),
                Err(e) => match request_error(&what, &e) {
                    permanent @ JobError::Permanent { .. } => return Err(permanent),
                    other => (other, None),
                },
            };
            let (error, asked) = outcome;
            let wait = asked.unwrap_or(BACKOFF_BASE * 2u32.pow(attempt - 1));
            if attempt >= PAGE_TRIES || wait > MAX_INLINE_WAIT {
                return Err(match (error, asked) {
                    (JobError::Retryable { message, .. }, Some(after)) => {
                        JobError::retry_after(message, after)
                    }
                    (e, _) => e,
                });
            }
            tracing::debug!(url = %source.url, attempt, ?wait, "etl page request failed, retrying");
            tokio::select! {
                () = cx.cancelled() => return Err(JobError::retryable("cancelled while waiting to retry")),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// A dotted path with optional indexes (`result.items`, `data[0].id`); `""` or `"."` is
/// the value itself.
pub fn json_path<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = value;
    for segment in path.split('.').filter(|s| !s.is_empty()) {
        let (name, mut rest) = match segment.find('[') {
            Some(i) => segment.split_at(i),
            None => (segment, ""),
        };
        if !name.is_empty() {
            cur = cur.get(name)?;
        }
        while let Some(stripped) = rest.strip_prefix('[') {
            let end = stripped.find(']')?;
            let index: usize = stripped[..end].parse().ok()?;
            cur = cur.get(index)?;
            rest = &stripped[end + 1..];
        }
    }
    Some(cur)
}

fn cursor_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[async_trait]
impl Handler for Sync {
    async fn run(&self, cx: JobContext) -> JobResult {
        let args = self.parse(cx.payload()).map_err(payload::permanent)?;
        let spec = Spec {
            table: args.target.table.clone(),
            columns: args
                .target
                .columns
                .iter()
                .map(|(c, p)| (c.clone(), p.clone(), args.target.types.get(c).copied()))
                .collect(),
            key: args.target.key.clone(),
            source: args.source.url.clone(),
        };
        let mut db = self.open(&args.target.database).await?;
        let stored = db.prepare(&spec).await?;
        let max_pages = args.max_pages.unwrap_or(DEFAULT_MAX_PAGES);

        // The position that fetches the current page: a cursor, or a page number.
        let mut position: Option<String> = match &args.source.pagination {
            Some(Pagination::Page { start, .. }) => Some(
                stored
                    .clone()
                    .unwrap_or_else(|| start.unwrap_or(1).to_string()),
            ),
            _ => stored.clone(),
        };
        let mut cursor = stored;
        let (mut pages, mut upserted, mut new, mut skipped) = (0u32, 0u64, 0u64, 0u64);
        loop {
            let body = self.fetch(&cx, &args, position.as_deref()).await?;
            let items = json_path(&body, &args.source.items)
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    JobError::permanent(format!(
                        "source.items: {:?} is not an array in the response",
                        args.source.items
                    ))
                })?;
            if items.is_empty() {
                break;
            }
            let mut rows = Vec::with_capacity(items.len());
            for item in items {
                let row: Vec<Value> = spec
                    .columns
                    .iter()
                    .map(|(_, path, _)| json_path(item, path).cloned().unwrap_or(Value::Null))
                    .collect();
                let key_missing = spec
                    .columns
                    .iter()
                    .zip(&row)
                    .any(|((c, _, _), v)| v.is_null() && spec.key.contains(c));
                if key_missing {
                    skipped += 1;
                } else {
                    rows.push(row);
                }
            }
            let (u, n) = db.upsert(&spec, rows, position.clone()).await?;
            pages += 1;
            upserted += u;
            new += n;
            cursor = position.clone();
            cx.progress(
                u8::try_from((pages * 100 / max_pages).min(99)).unwrap_or(99),
                Some(format!("{pages} pages, {upserted} rows")),
            );
            if pages >= max_pages || cx.is_cancelled() {
                break;
            }
            position = match &args.source.pagination {
                None => break,
                Some(Pagination::Cursor { next, .. }) => {
                    match json_path(&body, next).and_then(cursor_string) {
                        Some(n) if Some(&n) != position.as_ref() => Some(n),
                        _ => break,
                    }
                }
                Some(Pagination::Page { .. }) => {
                    let current: u64 = position
                        .as_deref()
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(1);
                    Some((current + 1).to_string())
                }
            };
        }
        if cx.is_cancelled() {
            return Err(JobError::retryable(
                "cancelled; the next run resumes from the cursor",
            ));
        }
        Ok(json!({
            "pages": pages,
            "rows_upserted": upserted,
            "rows_new": new,
            "rows_skipped": skipped,
            "cursor": cursor,
            "table": spec.table,
            "database": args.target.database,
        }))
    }

    fn validate(&self, payload: &Value) -> Result<(), FieldError> {
        self.parse(payload).map(|_| ())
    }
}

/// One job's connection to its target.
enum Db {
    /// `None` only while the connection is away in a blocking task.
    Sqlite(Option<rusqlite::Connection>),
    Postgres(deadpool_postgres::Object),
}

fn quote(ident: &str) -> String {
    // Identifiers are checked by `valid_ident`; quoting keeps reserved words usable.
    format!("\"{ident}\"")
}

fn column_list(spec: &Spec) -> String {
    spec.columns
        .iter()
        .map(|(c, _, _)| quote(c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `ON CONFLICT (...) DO UPDATE SET ...`, or `DO NOTHING` when every column is the key.
fn on_conflict(spec: &Spec) -> String {
    let key = spec
        .key
        .iter()
        .map(|k| quote(k))
        .collect::<Vec<_>>()
        .join(", ");
    let updates: Vec<String> = spec
        .columns
        .iter()
        .filter(|(c, _, _)| !spec.key.contains(c))
        .map(|(c, _, _)| format!("{0} = excluded.{0}", quote(c)))
        .collect();
    if updates.is_empty() {
        format!("ON CONFLICT ({key}) DO NOTHING")
    } else {
        format!("ON CONFLICT ({key}) DO UPDATE SET {}", updates.join(", "))
    }
}

fn open_sqlite(path: PathBuf) -> Result<rusqlite::Connection, JobError> {
    let conn = rusqlite::Connection::open(&path).map_err(sqlite_error)?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(sqlite_error)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sqlite_error)?;
    Ok(conn)
}

/// Busy, locked, full or failing storage may pass; anything about the SQL or data will not.
fn sqlite_error(e: rusqlite::Error) -> JobError {
    use rusqlite::ErrorCode::*;
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                DatabaseBusy | DatabaseLocked | DiskFull | SystemIoFailure | OutOfMemory
            ) =>
        {
            JobError::retryable(format!("sqlite: {e}"))
        }
        _ => JobError::permanent(format!("sqlite: {e}")),
    }
}

/// Connection trouble, deadlocks and resource limits may pass; errors in the SQL or the data
/// (classes 22, 23, 42, ...) will not.
fn postgres_error(e: &tokio_postgres::Error) -> JobError {
    let message = match e.as_db_error() {
        Some(db) => format!("postgres: {}: {}", db.code().code(), db.message()),
        None => format!("postgres: {e}"),
    };
    match e.code().map(|c| &c.code()[..2]) {
        None | Some("08" | "40" | "53" | "57" | "58") => JobError::retryable(message),
        Some(_) => JobError::permanent(message),
    }
}

fn sqlite_value(v: Value, ty: Option<ColType>) -> rusqlite::types::Value {
    use rusqlite::types::Value as S;
    match v {
        Value::Null => S::Null,
        Value::Bool(b) => S::Integer(i64::from(b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) if ty != Some(ColType::Real) => S::Integer(i),
            _ => n.as_f64().map_or(S::Text(n.to_string()), S::Real),
        },
        Value::String(s) => S::Text(s),
        other => S::Text(other.to_string()),
    }
}

fn postgres_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

impl Db {
    /// Runs `f` on the SQLite connection in a blocking task, and takes the connection back.
    async fn sqlite<R, F>(&mut self, f: F) -> Result<R, JobError>
    where
        R: Send + 'static,
        F: FnOnce(&mut rusqlite::Connection) -> Result<R, JobError> + Send + 'static,
    {
        let Db::Sqlite(slot) = self else {
            return Err(JobError::permanent("not an SQLite target"));
        };
        let mut conn = slot
            .take()
            .ok_or_else(|| JobError::retryable("sqlite connection lost"))?;
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let r = f(&mut conn);
            (conn, r)
        })
        .await
        .map_err(|e| JobError::retryable(format!("sqlite task: {e}")))?;
        *slot = Some(conn);
        result
    }

    /// Creates the target and state tables when missing; returns the stored position.
    async fn prepare(&mut self, spec: &Spec) -> Result<Option<String>, JobError> {
        let key = spec
            .key
            .iter()
            .map(|k| quote(k))
            .collect::<Vec<_>>()
            .join(", ");
        match self {
            Db::Sqlite(_) => {
                let spec = spec.clone();
                self.sqlite(move |conn| {
                    let cols = spec
                        .columns
                        .iter()
                        .map(|(c, _, t)| match t {
                            Some(t) => format!("{} {}", quote(c), t.sqlite()),
                            None => quote(c),
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    conn.execute_batch(&format!(
                        "CREATE TABLE IF NOT EXISTS {} ({cols}, PRIMARY KEY ({key}));
                         CREATE TABLE IF NOT EXISTS {STATE_TABLE} (
                             source TEXT NOT NULL, target TEXT NOT NULL, cursor TEXT,
                             updated_at TEXT NOT NULL, PRIMARY KEY (source, target));",
                        quote(&spec.table)
                    ))
                    .map_err(sqlite_error)?;
                    let cursor = conn
                        .query_row(
                            &format!(
                                "SELECT cursor FROM {STATE_TABLE} WHERE source = ?1 AND target = ?2"
                            ),
                            [&spec.source, &spec.table],
                            |r| r.get::<_, Option<String>>(0),
                        )
                        .map(Some)
                        .or_else(|e| match e {
                            rusqlite::Error::QueryReturnedNoRows => Ok(None),
                            e => Err(sqlite_error(e)),
                        })?;
                    Ok(cursor.flatten())
                })
                .await
            }
            Db::Postgres(client) => {
                let cols = spec
                    .columns
                    .iter()
                    .map(|(c, _, t)| {
                        format!("{} {}", quote(c), t.unwrap_or(ColType::Text).postgres())
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                client
                    .batch_execute(&format!(
                        "CREATE TABLE IF NOT EXISTS {} ({cols}, PRIMARY KEY ({key}));
                         CREATE TABLE IF NOT EXISTS {STATE_TABLE} (
                             source text NOT NULL, target text NOT NULL, cursor text,
                             updated_at timestamptz NOT NULL DEFAULT now(),
                             PRIMARY KEY (source, target));",
                        quote(&spec.table)
                    ))
                    .await
                    .map_err(|e| postgres_error(&e))?;
                let row = client
                    .query_opt(
                        &format!(
                            "SELECT cursor FROM {STATE_TABLE} WHERE source = $1 AND target = $2"
                        ),
                        &[&spec.source, &spec.table],
                    )
                    .await
                    .map_err(|e| postgres_error(&e))?;
                Ok(row.and_then(|r| r.get::<_, Option<String>>(0)))
            }
        }
    }

    /// Upserts one page and records `position` in the same transaction. Returns (rows
    /// upserted, rows that were new).
    async fn upsert(
        &mut self,
        spec: &Spec,
        rows: Vec<Vec<Value>>,
        position: Option<String>,
    ) -> Result<(u64, u64), JobError> {
        let n = spec.columns.len();
        match self {
            Db::Sqlite(_) => {
                let spec = spec.clone();
                self.sqlite(move |conn| {
                    let tx = conn.transaction().map_err(sqlite_error)?;
                    let count = |tx: &rusqlite::Transaction<'_>| {
                        tx.query_row(
                            &format!("SELECT COUNT(*) FROM {}", quote(&spec.table)),
                            [],
                            |r| r.get::<_, i64>(0),
                        )
                        .map_err(sqlite_error)
                    };
                    let before = count(&tx)?;
                    let upserted = rows.len() as u64;
                    {
                        let placeholders = (1..=n)
                            .map(|i| format!("?{i}"))
                            .collect::<Vec<_>>()
                            .join(", ");
                        let mut stmt = tx
                            .prepare(&format!(
                                "INSERT INTO {} ({}) VALUES ({placeholders}) {}",
                                quote(&spec.table),
                                column_list(&spec),
                                on_conflict(&spec)
                            ))
                            .map_err(sqlite_error)?;
                        for row in rows {
                            let values: Vec<rusqlite::types::Value> = row
                                .into_iter()
                                .zip(&spec.columns)
                                .map(|(v, (_, _, t))| sqlite_value(v, *t))
                                .collect();
                            stmt.execute(rusqlite::params_from_iter(values))
                                .map_err(sqlite_error)?;
                        }
                    }
                    let after = count(&tx)?;
                    tx.execute(
                        &format!(
                            "INSERT INTO {STATE_TABLE} (source, target, cursor, updated_at)
                             VALUES (?1, ?2, ?3, datetime('now'))
                             ON CONFLICT (source, target) DO UPDATE SET
                               cursor = excluded.cursor, updated_at = excluded.updated_at"
                        ),
                        rusqlite::params![spec.source, spec.table, position],
                    )
                    .map_err(sqlite_error)?;
                    tx.commit().map_err(sqlite_error)?;
                    Ok((upserted, u64::try_from(after - before).unwrap_or(0)))
                })
                .await
            }
            Db::Postgres(client) => {
                let pg = |e: tokio_postgres::Error| postgres_error(&e);
                let tx = client.transaction().await.map_err(pg)?;
                let placeholders = spec
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, (_, _, t))| {
                        format!(
                            "${}::text::{}",
                            i + 1,
                            t.unwrap_or(ColType::Text).postgres()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                let stmt = tx
                    .prepare(&format!(
                        "INSERT INTO {} ({}) VALUES ({placeholders}) {} RETURNING (xmax = 0)",
                        quote(&spec.table),
                        column_list(spec),
                        on_conflict(spec)
                    ))
                    .await
                    .map_err(pg)?;
                let (mut upserted, mut new) = (0u64, 0u64);
                for row in &rows {
                    let texts: Vec<Option<String>> = row.iter().map(postgres_text).collect();
                    let params: Vec<&(dyn ToSql + std::marker::Sync)> = texts
                        .iter()
                        .map(|t| t as &(dyn ToSql + std::marker::Sync))
                        .collect();
                    let returned = tx.query_opt(&stmt, &params).await.map_err(pg)?;
                    upserted += 1;
                    if returned.is_some_and(|r| r.get::<_, bool>(0)) {
                        new += 1;
                    }
                }
                tx.execute(
                    &format!(
                        "INSERT INTO {STATE_TABLE} (source, target, cursor, updated_at)
                         VALUES ($1, $2, $3, now())
                         ON CONFLICT (source, target) DO UPDATE SET
                           cursor = excluded.cursor, updated_at = excluded.updated_at"
                    ),
                    &[&spec.source, &spec.table, &position],
                )
                .await
                .map_err(pg)?;
                tx.commit().await.map_err(pg)?;
                Ok((upserted, new))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_paths() {
        let v = json!({"result": {"items": [{"id": 1}, {"id": 2}]}, "next": null});
        assert_eq!(json_path(&v, "result.items[1].id"), Some(&json!(2)));
        assert_eq!(json_path(&v, ""), Some(&v));
        assert_eq!(json_path(&v, "result.missing"), None);
        assert_eq!(json_path(&json!([[1, 2]]), "[0][1]"), Some(&json!(2)));
        assert_eq!(json_path(&v, "next").and_then(cursor_string), None);
    }
}
