//! Opening the database file: its connections, their settings, and schema migrations.
//!
//! It owns everything that happens before the first command: creating the file and its
//! directory, switching it to WAL, bringing its schema up to date (`workers/migrations/sqlite`,
//! recorded in `PRAGMA user_version`), setting every connection's `synchronous` from the
//! broker's [`Durability`], keeping the writer's temporary storage in memory, and making the
//! read connections read-only. It does not start the writer thread (`super::writer`) nor hand
//! the connections out (`super`, `super::readers`).

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

use super::SqliteOptions;
use super::error::open_error;
use super::sql;
use crate::broker::Durability;
use crate::error::{BrokerError, BrokerResult};

/// How long a writer waits for another process's write lock before giving up (`Unavailable`).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// One schema migration: its `user_version` after it is applied, and its SQL.
struct Migration {
    version: i64,
    sql: &'static str,
}

/// Every migration, in order. Append only.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: include_str!("../../../migrations/sqlite/0001_init.sql"),
    },
    Migration {
        version: 2,
        sql: include_str!("../../../migrations/sqlite/0002_chains.sql"),
    },
    Migration {
        version: 3,
        sql: include_str!("../../../migrations/sqlite/0003_unique_per_queue.sql"),
    },
    Migration {
        version: 4,
        sql: include_str!("../../../migrations/sqlite/0004_paused_queues.sql"),
    },
    Migration {
        version: 5,
        sql: include_str!("../../../migrations/sqlite/0005_queue_rates.sql"),
    },
    Migration {
        version: 6,
        sql: include_str!("../../../migrations/sqlite/0006_cursors.sql"),
    },
    Migration {
        version: 7,
        sql: include_str!("../../../migrations/sqlite/0007_worker_nodes.sql"),
    },
    Migration {
        version: 8,
        sql: include_str!("../../../migrations/sqlite/0008_inbox.sql"),
    },
    Migration {
        version: 9,
        sql: include_str!("../../../migrations/sqlite/0009_checkpoint.sql"),
    },
    Migration {
        version: 10,
        sql: include_str!("../../../migrations/sqlite/0010_circuits.sql"),
    },
    Migration {
        version: 11,
        sql: include_str!("../../../migrations/sqlite/0011_outcome_index.sql"),
    },
    Migration {
        version: 12,
        sql: include_str!("../../../migrations/sqlite/0012_finished_index.sql"),
    },
    Migration {
        version: 13,
        sql: include_str!("../../../migrations/sqlite/0013_state_indexes.sql"),
    },
];

/// Opens the file, retrying while another process holds it locked: two processes opening a
/// new file at once race to switch it to WAL and migrate it, and switching the journal mode
/// does not wait on the busy timeout. Returns the writer's connection, then the readers'
/// (`options.readers` of them, at least one).
pub(super) fn open_connections(
    path: &Path,
    options: &SqliteOptions,
) -> BrokerResult<(Connection, Vec<Connection>)> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    let mut wait = Duration::from_millis(10);
    loop {
        match open_connections_once(path, options) {
            Err(BrokerError::Unavailable(_)) if Instant::now() < deadline => {
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

fn open_connections_once(
    path: &Path,
    options: &SqliteOptions,
) -> BrokerResult<(Connection, Vec<Connection>)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            BrokerError::Config(format!("cannot create directory {}: {e}", dir.display()))
        })?;
    }
    let writer = connect(path, options.durability).map_err(open_error)?;
    writer_settings(&writer).map_err(open_error)?;
    // WAL is a property of the file: set once, by the writer, outside any transaction.
    let mode: String = writer
        .query_row(sql::JOURNAL_MODE_WAL, [], |r| r.get(0))
        .map_err(open_error)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(BrokerError::Config(format!(
            "{}: cannot switch to WAL mode (journal_mode is {mode})",
            path.display()
        )));
    }
    migrate(&writer)?;
    let readers = (0..options.readers.max(1))
        .map(|_| {
            let reader = connect(path, options.durability)?;
            // A reader must never write, even by mistake.
            reader.pragma_update(None, "query_only", true)?;
            Ok(reader)
        })
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(open_error)?;
    Ok((writer, readers))
}

/// A connection with the settings every one of them shares (busy timeout, planner stability,
/// `synchronous`, statement cache).
fn connect(path: &Path, durability: Durability) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // The query planner stability guarantee: a statement's plan never depends on the values
    // bound to it. Without it SQLite plans `LIMIT ?` for the value bound at the time, and an
    // equality on a column no index serves (`lease_token = ?`) for whether the value is 0 or
    // 1, and re-prepares the statement (parsing it and its RETURNING list again) when a new
    // binding differs; rusqlite clears a cached statement's bindings after each use, so every
    // fetch, promotion and finish was prepared anew (5.4% of the writer thread's time in a
    // 20,000-job drain). Every statement here names its states literally, so no plan lost
    // anything by it.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    conn.pragma_update(None, "synchronous", synchronous(durability))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// The writer's own setting: `temp_store = MEMORY` keeps the savepoint journal in memory.
/// Each command of a batch runs in a savepoint, so every page a batch touches again is copied
/// there; on disk that journal was a temporary file, opened per batch and written with four
/// times as many `pwrite`s as the WAL (strace of a 5,000-job drain: 73,820 against 18,097),
/// never synced and never read unless a command failed. It holds at most one batch's pages.
fn writer_settings(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "temp_store", "MEMORY")
}

/// `PRAGMA synchronous` for a durability. In WAL mode, FULL fsyncs the WAL at every commit, so
/// a committed (and so acknowledged) write survives a power cut; NORMAL fsyncs only at
/// checkpoints: a power cut or OS crash may lose the last commits (never corrupting the file),
/// a process crash loses nothing. The writer's group commit makes FULL one fsync per batch.
fn synchronous(durability: Durability) -> &'static str {
    match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    }
}

/// Applies every migration newer than the file's `user_version`, in one transaction that also
/// records the new version; `BEGIN IMMEDIATE` keeps two processes from migrating at once.
fn migrate(conn: &Connection) -> BrokerResult<()> {
    let run = || -> rusqlite::Result<Result<(), BrokerError>> {
        conn.execute_batch(sql::BEGIN)?;
        let current: i64 = conn.query_row(sql::USER_VERSION, [], |r| r.get(0))?;
        let latest = MIGRATIONS.last().map_or(0, |m| m.version);
        if current > latest {
            conn.execute_batch(sql::ROLLBACK)?;
            return Ok(Err(BrokerError::Config(format!(
                "the database has schema version {current}, newer than this hopper knows ({latest})"
            ))));
        }
        for m in MIGRATIONS.iter().filter(|m| m.version > current) {
            conn.execute_batch(m.sql)?;
            conn.pragma_update(None, "user_version", m.version)?;
        }
        conn.execute_batch(sql::COMMIT)?;
        Ok(Ok(()))
    };
    match run() {
        Ok(answer) => answer,
        Err(e) => {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch(sql::ROLLBACK);
            }
            Err(open_error(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::sqlite::rows::to_i64;
    use rusqlite::types::Value as SqlValue;

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(
                m.version,
                to_i64(i + 1),
                "migration {i} has version {}",
                m.version
            );
            assert!(!m.sql.trim().is_empty());
        }
    }

    #[test]
    fn schema_is_applied_once_and_newer_schemas_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a/b/hopper.db");
        let options = SqliteOptions::default();
        let (w, _r) = open_connections(&path, &options).expect("first open creates the file");
        let version: i64 = w
            .query_row(sql::USER_VERSION, [], |r| r.get(0))
            .expect("user_version");
        assert_eq!(version, to_i64(MIGRATIONS.len()));
        drop(w);
        open_connections(&path, &options).expect("reopen applies nothing");

        let conn = Connection::open(&path).expect("open");
        conn.pragma_update(None, "user_version", 99)
            .expect("set version");
        drop(conn);
        let err = open_connections(&path, &options).expect_err("a newer schema is refused");
        assert!(matches!(err, BrokerError::Config(_)), "got {err:?}");
    }

    /// `[broker] durability` reaches every connection: `PRAGMA synchronous` reads 2 (FULL)
    /// or 1 (NORMAL) on the writer's and on each reader's.
    #[test]
    fn durability_sets_synchronous_on_every_connection() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (durability, expected) in [(Durability::Full, 2), (Durability::Normal, 1)] {
            let options = SqliteOptions {
                durability,
                ..SqliteOptions::default()
            };
            let path = dir.path().join(format!("{durability:?}.db"));
            let (w, readers) = open_connections(&path, &options).expect("open");
            assert_eq!(readers.len(), options.readers);
            for (i, conn) in std::iter::once(&w).chain(&readers).enumerate() {
                let got: i64 = conn
                    .query_row("PRAGMA synchronous", [], |r| r.get(0))
                    .expect("synchronous");
                assert_eq!(got, expected, "{durability:?}: connection {i}");
            }
        }
    }

    /// The statements whose speed rests on the schema keep their plan: the outcome count walks
    /// the partial index `events_outcome_at` (its condition matches the index's), retention's
    /// purge walks a state's finished jobs by `finished_at` up to its bound (`jobs_finished`),
    /// a page of one state reads it in `seq` order (`jobs_state`), an event's
    /// insert checks that index's condition without a temporary B-tree, and the hot writes are
    /// not prepared again when bound anew (the QPSG set by `connect`).
    #[test]
    fn hot_statements_keep_their_plans() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (w, _r) =
            open_connections(&dir.path().join("p.db"), &SqliteOptions::default()).expect("open");
        let plan: Vec<String> = w
            .prepare(&format!("EXPLAIN QUERY PLAN {}", sql::RECENT_OUTCOMES))
            .expect("explain")
            .query_map([0], |r| r.get(3))
            .expect("plan")
            .collect::<Result<_, _>>()
            .expect("plan rows");
        assert!(
            plan.iter().any(|step| step.contains("events_outcome_at")),
            "{plan:?}"
        );

        // Retention's walk of a state's jobs stops at its bound (`jobs_state_finished`), not
        // after every retained job of the state.
        let purge: Vec<String> = w
            .prepare(&format!("EXPLAIN QUERY PLAN {}", sql::PURGE_CHUNK))
            .expect("explain")
            .query_map(rusqlite::params!["succeeded", 0, 500], |r| r.get(3))
            .expect("plan")
            .collect::<Result<_, _>>()
            .expect("plan rows");
        assert!(
            purge
                .iter()
                .any(|step| step.contains("jobs_finished (state=? AND finished_at<?)")),
            "{purge:?}"
        );
        // A page of one state, newest first, reads the state's rows in `seq` order: no sort
        // of every job of the state.
        let list = format!(
            "EXPLAIN QUERY PLAN {}{}{}{}",
            sql::LIST,
            sql::LIST_STATE,
            sql::LIST_AFTER_CURSOR,
            sql::LIST_NEWEST_FIRST
        );
        let by_state: Vec<String> = w
            .prepare(&list)
            .expect("explain")
            .query_map(rusqlite::params!["succeeded", i64::MAX, 50], |r| r.get(3))
            .expect("plan")
            .collect::<Result<_, _>>()
            .expect("plan rows");
        assert!(
            by_state.iter().any(|s| s.contains("INDEX jobs_state "))
                && !by_state.iter().any(|s| s.contains("TEMP B-TREE")),
            "{by_state:?}"
        );

        let insert: Vec<String> = w
            .prepare(&format!("EXPLAIN {}", sql::INSERT_EVENT))
            .expect("explain")
            .query_map(
                rusqlite::params_from_iter(std::iter::repeat_n(SqlValue::Null, 10)),
                |r| r.get(1),
            )
            .expect("program")
            .collect::<Result<_, _>>()
            .expect("opcodes");
        assert!(!insert.iter().any(|op| op == "OpenEphemeral"), "{insert:?}");

        let text = |s: &str| SqlValue::Text(s.to_owned());
        let hot: [(&str, Vec<SqlValue>); 3] = [
            (sql::FETCH, vec![text("q"), 0.into(), 0.into(), 0.into()]),
            (sql::PROMOTE_DUE, vec![text("q"), 0.into(), 100.into()]),
            (
                sql::FINISH_SUCCEEDED,
                vec![text("j"), 0.into(), text("{}"), 0.into()],
            ),
        ];
        for (statement, args) in hot {
            for n in 0..3_i64 {
                // A cached statement, cleared after each use, as the writer runs them, bound
                // with a new value each time (the second parameter: a limit, `now`, a token).
                let mut args = args.clone();
                args[1] = n.into();
                let mut stmt = w.prepare_cached(statement).expect("prepare");
                stmt.execute(rusqlite::params_from_iter(args))
                    .expect("execute");
                assert_eq!(
                    stmt.get_status(rusqlite::StatementStatus::RePrepare),
                    0,
                    "{statement}"
                );
            }
        }
    }
}
