//! `etl.sync`: pages of JSON items from an HTTP API, upserted into a table of an SQLite file
//! under the files directory or of a configured PostgreSQL database. This module owns the
//! payload, pagination, the in-job retries of one page request, the cursor kept between runs
//! and the SQL. Secrets and database URLs stay in `[etl]`: a payload names them, and a named
//! token is only accepted for (and only sent to) URLs under its `url_prefix`.
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
//! JSON value as is in SQLite, `text` in PostgreSQL); a `json` column holds every value as
//! JSON text (a string as `"…"`), `jsonb` in PostgreSQL. The table (letters, digits and
//! `_`; not the state table, nor `pg_*` or `sqlite_*`, which the databases resolve to their
//! own) is created when missing with the key as its primary key; rows are upserted (in
//! PostgreSQL `INSERT ... ON CONFLICT (key) DO UPDATE`; in SQLite an insert that does nothing
//! on a conflict, then an update by key, which tells new rows from updated ones without
//! counting the table), so a run repeated is harmless. Items whose key is null are skipped.
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
//! is not JSON or is over `[files] max_download_bytes`, items that are not an array and SQL
//! errors on the data are permanent.
//!
//! Result: `{"pages", "rows_upserted", "rows_new", "rows_skipped", "cursor", "table",
//! "database"}`.
//!
//! [`Sync`] is a [`Kind`]: its payload is [`SyncArgs`]. Layout: `source` (the API side:
//! fetching pages, positions), `mapping` (items to rows, [`json_path`]), `target` (the
//! database side: SQL, the cursor table, error sorting); this file holds the payload, the
//! kind and the page loop.

use std::collections::BTreeMap;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use hopper_workers::FieldError;
use hopper_workers::{JobContext, JobError, JobResult, Kind};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::json;
use tokio_postgres::NoTls;

use crate::config::EtlToken;
use crate::files::FilesDir;
use crate::{HttpClient, JobsConfig, JobsError};

mod mapping;
mod source;
mod target;

use mapping::Spec;
pub use mapping::json_path;
use source::Source;
use target::{Db, Target};

/// The table, in each target database, holding each sync's position.
pub const STATE_TABLE: &str = "hopper_etl_state";

/// Default and ceiling of `max_pages`.
const DEFAULT_MAX_PAGES: u32 = 1000;
const MAX_MAX_PAGES: u32 = 100_000;
/// Connections per PostgreSQL pool.
const PG_POOL_SIZE: usize = 4;

/// The payload of `etl.sync` (see the module docs).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncArgs {
    source: Source,
    target: Target,
    max_pages: Option<u32>,
    /// A chain predecessor's result: accepted, not used.
    #[serde(default, rename = "input")]
    _input: Option<IgnoredAny>,
}

/// `etl.sync`.
pub struct Sync {
    files: FilesDir,
    http: HttpClient,
    /// `[files] max_download_bytes`: the largest page body read.
    max_page_bytes: u64,
    tokens: BTreeMap<String, EtlToken>,
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
    pub fn new(config: &JobsConfig, http: HttpClient) -> Result<Self, JobsError> {
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
                .create_timeout(Some(config.http.timeout))
                .wait_timeout(Some(config.http.timeout))
                .build()
                .map_err(|e| JobsError::Client {
                    what: "PostgreSQL pool",
                    message: e.to_string(),
                })?;
            postgres.insert(name.clone(), pool);
        }
        Ok(Self {
            files: FilesDir::new(&config.files.dir),
            http,
            max_page_bytes: config.files.max_download_bytes,
            tokens: config.etl.tokens.clone(),
            postgres,
        })
    }
}

impl Kind for Sync {
    const NAME: &'static str = "etl.sync";
    type Args = SyncArgs;

    async fn run(&self, cx: JobContext, args: SyncArgs) -> JobResult {
        let spec = Spec::new(&args.target, &args.source.url);
        let mut db = Db::open(&self.files, &self.postgres, &args.target.database).await?;
        let stored = db.prepare(&spec).await?;
        let max_pages = args.max_pages.unwrap_or(DEFAULT_MAX_PAGES);
        let token = (args.source.token.as_ref()).and_then(|name| self.tokens.get(name));

        // The position that fetches the current page: a cursor, or a page number.
        let mut position = args.source.first_position(stored.clone());
        let mut cursor = stored;
        let (mut pages, mut upserted, mut new, mut skipped) = (0u32, 0u64, 0u64, 0u64);
        loop {
            let body = source::fetch(
                &self.http,
                self.max_page_bytes,
                token,
                &cx,
                &args.source,
                position.as_deref(),
            )
            .await?;
            let items = args.source.items(&body)?;
            if items.is_empty() {
                break;
            }
            let mut rows = Vec::with_capacity(items.len());
            for item in items {
                match spec.row(item) {
                    Some(row) => rows.push(row),
                    None => skipped += 1,
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
            position = match args.source.next_position(&body, position.as_deref()) {
                Some(next) => Some(next),
                None => break,
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

    /// The rules serde cannot express, source then target: URLs, configured token and
    /// database names, valid identifiers, a key among the columns, `max_pages` in range.
    fn check(&self, args: &SyncArgs) -> Result<(), FieldError> {
        args.source.check(&self.tokens)?;
        args.target.check(&self.postgres)?;
        if let Some(m) = args.max_pages
            && !(1..=MAX_MAX_PAGES).contains(&m)
        {
            return Err(FieldError::new(
                "payload.max_pages",
                format!("must be between 1 and {MAX_MAX_PAGES}"),
            ));
        }
        Ok(())
    }
}
