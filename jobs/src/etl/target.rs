//! The target side of `etl.sync`: the table rows are upserted into, in an SQLite file under
//! the files directory or a PostgreSQL database named in `[etl] databases`. This module owns
//! the `target` payload and its checks, the SQL (tables created when missing, upserts, the
//! cursor kept in [`STATE_TABLE`] in the same transaction as each page) and the sorting of
//! database errors into retryable and permanent ones. It does not own what a row holds
//! (`super::mapping`) nor where items come from (`super::source`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use deadpool_postgres::Pool;
use hopper_workers::{FieldError, JobError};
use serde::Deserialize;
use serde_json::Value;
use tokio_postgres::types::ToSql;

use super::STATE_TABLE;
use super::mapping::Spec;
use crate::files::{FilesDir, check_relative};
use crate::payload::{one_or_many, valid_ident};

/// Where the rows go (`target` in the payload).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Target {
    pub(super) database: String,
    pub(super) table: String,
    #[serde(deserialize_with = "one_or_many")]
    pub(super) key: Vec<String>,
    pub(super) columns: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) types: BTreeMap<String, ColType>,
}

impl Target {
    /// The rules serde cannot express: a known database, valid names, a key among the
    /// columns. `postgres` holds the names of the configured PostgreSQL databases.
    pub(super) fn check(&self, postgres: &BTreeMap<String, Pool>) -> Result<(), FieldError> {
        let t = self;
        if let Some(rel) = t.database.strip_prefix("sqlite:") {
            check_relative(rel).map_err(|m| FieldError::new("payload.target.database", m))?;
        } else if !postgres.contains_key(&t.database) {
            return Err(FieldError::new(
                "payload.target.database",
                format!(
                    "{:?} is neither sqlite:<file> nor a database named in [etl] databases",
                    t.database
                ),
            ));
        }
        if !valid_ident(&t.table) || resolves_elsewhere(&t.table) {
            return Err(FieldError::new(
                "payload.target.table",
                format!(
                    "must be letters, digits and '_' (not starting with a digit), not the state \
                     table {STATE_TABLE} and not starting with pg_ or sqlite_ (the databases' own)"
                ),
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
        Ok(())
    }
}

/// True for a table name that is not a table of the sync's own: the state table in any case
/// (SQLite compares names case-insensitively), or a prefix the databases reserve (in
/// PostgreSQL `pg_catalog` is searched before `public`, so `pg_class` would be created in one
/// and written in the other; `sqlite_*` are SQLite's own).
fn resolves_elsewhere(table: &str) -> bool {
    let lower = table.to_ascii_lowercase();
    lower == STATE_TABLE || lower.starts_with("pg_") || lower.starts_with("sqlite_")
}

/// A column's type, when the payload gives one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum ColType {
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

/// One job's connection to its target.
pub(super) enum Db {
    /// `None` only while the connection is away in a blocking task.
    Sqlite(Option<rusqlite::Connection>),
    Postgres(deadpool_postgres::Object),
}

fn quote(ident: &str) -> String {
    // Identifiers are checked by `valid_ident`; quoting keeps reserved words usable.
    format!("\"{ident}\"")
}

/// Quoted identifiers, comma-separated.
fn quoted<'a>(idents: impl Iterator<Item = &'a str>) -> String {
    idents.map(quote).collect::<Vec<_>>().join(", ")
}

fn column_list(spec: &Spec) -> String {
    quoted(spec.columns.iter().map(|(c, _, _)| c.as_str()))
}

/// The key columns, quoted.
fn key_list(spec: &Spec) -> String {
    quoted(spec.key.iter().map(String::as_str))
}

/// `ON CONFLICT (...) DO UPDATE SET ...`, or `DO NOTHING` when every column is the key.
fn on_conflict(spec: &Spec) -> String {
    let key = key_list(spec);
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

/// SQLite: `UPDATE` of the non-key columns of the row whose key matches, taking a row's
/// values as `?1..?n` in column order (as the insert does); `None` when every column is the
/// key (nothing to update).
fn update_by_key(spec: &Spec) -> Option<String> {
    let param = |i: usize| format!("?{}", i + 1);
    let (keys, sets): (Vec<_>, Vec<_>) = spec
        .columns
        .iter()
        .enumerate()
        .map(|(i, (c, _, _))| (c, format!("{} = {}", quote(c), param(i))))
        .partition(|(c, _)| spec.key.contains(c));
    if sets.is_empty() {
        return None;
    }
    let set = sets
        .into_iter()
        .map(|(_, s)| s)
        .collect::<Vec<_>>()
        .join(", ");
    let by = keys
        .into_iter()
        .map(|(_, s)| s)
        .collect::<Vec<_>>()
        .join(" AND ");
    Some(format!(
        "UPDATE {} SET {set} WHERE {by}",
        quote(&spec.table)
    ))
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

/// The PostgreSQL advisory lock (a transaction-level one) that serializes the table creations
/// of etl.sync jobs: any fixed number no other program is likely to use ("hopper" in ASCII).
const CREATE_LOCK: i64 = 0x686f_7070_6572;

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
        // A `json` column holds JSON text for every value, a string included (`"a"`).
        v if ty == Some(ColType::Json) => S::Text(v.to_string()),
        Value::Bool(b) => S::Integer(i64::from(b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) if ty != Some(ColType::Real) => S::Integer(i),
            _ => n.as_f64().map_or(S::Text(n.to_string()), S::Real),
        },
        Value::String(s) => S::Text(s),
        other => S::Text(other.to_string()),
    }
}

/// The text form of `v` that PostgreSQL casts to the column's type: a string as it is, except
/// for a `jsonb` column, which needs it as JSON (`"a"`, not bare `a`).
fn postgres_text(v: &Value, ty: Option<ColType>) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) if ty != Some(ColType::Json) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

impl Db {
    /// Connects to `database`: `sqlite:<file>` under `files`, or a pool of `postgres`.
    pub(super) async fn open(
        files: &FilesDir,
        postgres: &BTreeMap<String, Pool>,
        database: &str,
    ) -> Result<Self, JobError> {
        if let Some(rel) = database.strip_prefix("sqlite:") {
            let path = files.output(rel)?;
            let conn = tokio::task::spawn_blocking(move || open_sqlite(path))
                .await
                .map_err(|e| JobError::retryable(format!("sqlite task: {e}")))??;
            Ok(Db::Sqlite(Some(conn)))
        } else {
            let pool = postgres.get(database).ok_or_else(|| {
                JobError::permanent(format!("no database named {database:?} in [etl] databases"))
            })?;
            let client = pool
                .get()
                .await
                .map_err(|e| JobError::retryable(format!("postgres {database}: {e}")))?;
            Ok(Db::Postgres(client))
        }
    }

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
    pub(super) async fn prepare(&mut self, spec: &Spec) -> Result<Option<String>, JobError> {
        let key = key_list(spec);
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
                // `CREATE TABLE IF NOT EXISTS` is not safe against a concurrent creation
                // of the same table in PostgreSQL: the second one fails with a unique
                // violation on `pg_type`. So the creations of all syncs on the database take
                // one advisory lock, held until this batch's implicit transaction ends.
                client
                    .batch_execute(&format!(
                        "SELECT pg_advisory_xact_lock({CREATE_LOCK});
                         CREATE TABLE IF NOT EXISTS {} ({cols}, PRIMARY KEY ({key}));
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
    pub(super) async fn upsert(
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
                    // New rows are told apart from updated ones row by row: an insert that
                    // does nothing on a key conflict changes no row, and the row is then
                    // updated by its key. Both are lookups in the key's index; counting the
                    // table before and after each page read all of it twice per page.
                    let upserted = rows.len() as u64;
                    let mut new = 0u64;
                    {
                        let placeholders = (1..=n)
                            .map(|i| format!("?{i}"))
                            .collect::<Vec<_>>()
                            .join(", ");
                        let mut insert = tx
                            .prepare(&format!(
                                "INSERT INTO {} ({}) VALUES ({placeholders}) \
                                 ON CONFLICT ({}) DO NOTHING",
                                quote(&spec.table),
                                column_list(&spec),
                                key_list(&spec)
                            ))
                            .map_err(sqlite_error)?;
                        let mut update = match update_by_key(&spec) {
                            Some(sql) => Some(tx.prepare(&sql).map_err(sqlite_error)?),
                            None => None,
                        };
                        for row in rows {
                            let values: Vec<rusqlite::types::Value> = row
                                .into_iter()
                                .zip(&spec.columns)
                                .map(|(v, (_, _, t))| sqlite_value(v, *t))
                                .collect();
                            let inserted = insert
                                .execute(rusqlite::params_from_iter(&values))
                                .map_err(sqlite_error)?;
                            if inserted > 0 {
                                new += 1;
                            } else if let Some(update) = &mut update {
                                update
                                    .execute(rusqlite::params_from_iter(&values))
                                    .map_err(sqlite_error)?;
                            }
                        }
                    }
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
                    Ok((upserted, new))
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
                    let texts: Vec<Option<String>> = row
                        .iter()
                        .zip(&spec.columns)
                        .map(|(v, (_, _, t))| postgres_text(v, *t))
                        .collect();
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
    use std::sync::{Arc, Mutex};

    use rusqlite::trace::{TraceEvent, TraceEventCodes};
    use serde_json::json;

    use super::*;

    /// Upserts into SQLite report the right figures (rows upserted, rows new) without
    /// counting the table: a `COUNT(*)` before and after every page read the whole table
    /// twice per page, so a sync into a table of millions of rows slowed with its size.
    #[tokio::test]
    async fn sqlite_upserts_count_new_rows_without_counting_the_table() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut conn = open_sqlite(tmp.path().join("t.db")).expect("open");
        let statements = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = Arc::clone(&statements);
        conn.trace_v2(
            TraceEventCodes::SQLITE_TRACE_STMT,
            Some(move |e: TraceEvent<'_>| {
                if let TraceEvent::Stmt(_, sql) = e {
                    seen.lock().expect("lock").push(sql.to_owned());
                }
            }),
        )
        .expect("trace");
        let target: Target = serde_json::from_value(json!({
            "database": "sqlite:t.db", "table": "orders", "key": "id",
            "columns": {"id": "id", "name": "name"}, "types": {"id": "integer"},
        }))
        .expect("target");
        let spec = Spec::new(&target, "https://api.test/orders");
        let mut db = Db::Sqlite(Some(conn));
        assert_eq!(db.prepare(&spec).await.expect("prepare"), None);
        let rows = |ids: std::ops::Range<i64>| ids.map(|i| vec![json!(i), json!(format!("n{i}"))]);
        statements.lock().expect("lock").clear();

        // Page 1: 10 new rows. Page 2: 5 of page 1 again (changed) and 5 new. Page 3: all seen.
        let figures = [
            db.upsert(&spec, rows(0..10).collect(), Some("c1".into()))
                .await
                .expect("page 1"),
            db.upsert(
                &spec,
                rows(5..15)
                    .map(|mut r| {
                        r[1] = json!("changed");
                        r
                    })
                    .collect(),
                Some("c2".into()),
            )
            .await
            .expect("page 2"),
            db.upsert(&spec, rows(0..15).collect(), Some("c3".into()))
                .await
                .expect("page 3"),
        ];
        assert_eq!(figures, [(10, 10), (10, 5), (15, 0)]);

        let counts: Vec<String> = statements
            .lock()
            .expect("lock")
            .iter()
            .filter(|sql| sql.to_ascii_uppercase().contains("COUNT("))
            .cloned()
            .collect();
        assert!(counts.is_empty(), "the table was counted: {counts:?}");

        let Db::Sqlite(Some(conn)) = &db else {
            panic!("connection kept");
        };
        let (n, changed, cursor): (i64, i64, String) = conn
            .query_row(
                &format!(
                    "SELECT (SELECT COUNT(*) FROM orders),
                            (SELECT COUNT(*) FROM orders WHERE name = 'changed'),
                            (SELECT cursor FROM {STATE_TABLE})"
                ),
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .expect("read back");
        assert_eq!((n, changed, cursor.as_str()), (15, 0, "c3"));
    }
}
