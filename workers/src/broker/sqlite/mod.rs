//! The SQLite broker (`sqlite://PATH`): jobs and events in one WAL-mode database file.
//!
//! It owns the schema (`workers/migrations/sqlite/*.sql`, applied in order and recorded in
//! `PRAGMA user_version`), the SQL of every [`Broker`] operation, and the threads that run it.
//! It does not decide policy (retries, backoff, poison-pill limits come from the caller).
//!
//! # Threads
//!
//! - **One writer thread** owns the write connection. Every write is a command sent over a
//!   channel; the thread drains whatever is queued and runs the whole batch in one
//!   `BEGIN IMMEDIATE` transaction, each command inside its own savepoint so a failed command
//!   rolls back alone; commands sent while the batch runs join it before the commit. Answers
//!   go out through oneshot channels only after `COMMIT`, so nobody is told "done" about a
//!   write that was lost. Batching is what makes many small writes (enqueues, fetches, acks,
//!   heartbeats from many slots) cheap: one commit, and so under [`Durability::Full`] one
//!   fsync, for all of them ([`SqliteBroker::commits`] counts them).
//! - **A few read connections** (`readers`, [`SqliteOptions::readers`]), each lent to one read
//!   at a time on a blocking thread, for `get`, `history`, `list`, `queues`, `events` and
//!   `ping`. In WAL mode readers never block the writer nor each other, so a slow `list` does
//!   not hold up `/readyz`.
//!
//! # Durability
//!
//! [`SqliteOptions::durability`] sets `PRAGMA synchronous` on every connection: `FULL` (the
//! default) fsyncs the WAL at every commit, so an acknowledged write survives a power loss;
//! `NORMAL` fsyncs only at checkpoints (a power loss may take the last acknowledged writes,
//! a process crash takes none).
//!
//! # Several processes, one file
//!
//! Several `hopper` processes on one machine may share the file (e.g. `hopper serve` and two
//! `hopper worker`s). `BEGIN IMMEDIATE` takes SQLite's write lock up front, so two writers
//! serialize instead of deadlocking on a read-to-write upgrade, and `busy_timeout` makes a
//! writer wait for the other instead of failing at once. Another process cannot wake this
//! one's [`Broker::wait_for_work`], so that wait is capped at [`CROSS_PROCESS_POLL`].
//!
//! Leases, due times and rescue are decided by the broker's [`Clock`],
//! the local one, by design: every process sharing the file runs on the same machine and so
//! reads the same clock. (Redis, shared by many machines, decides by its own clock instead.)
//!
//! # Where the trait leaves a choice
//!
//! The conformance suite (`crate::testing`) pins what both brokers must agree on; beyond it:
//! a snooze appends `job.enqueued` with message `"snoozed"` (no event type names
//! `scheduled`); promotion of due jobs by fetch appends no event; a rescued or released job keeps
//! its `run_at` (it already waited its turn; the suite pins the released one's place); the `attempt` of a
//! `job.interrupted` event is the attempt that was cut short; `max_interruptions = 0` disables
//! the poison-pill cut-off; `list` with `limit = 0` returns a page of 100.

//!
//! # Layout
//!
//! This file holds the [`SqliteBroker`] type, how it is opened and how a command reaches a
//! connection ([`SqliteBroker::write`], [`SqliteBroker::read`]); the [`Broker`] impl below only
//! says which file does the work:
//!
//! - `lifecycle`: the pool's writes (enqueue, fetch, heartbeat, progress, checkpoint, finish,
//!   rescue).
//! - `admin`: the operator's writes (cancel, retry, retry all dead, purge, drop a queue).
//! - `read`: everything that only reads (get, history, list, queues, events, ping).
//! - `chain`: what a step's end or retry does to the other steps of its chain.
//! - `events`: appending to the event log, inside the write that changed the job.
//! - `writer`: the writer thread and its batches; `readers`: the pool of read connections;
//!   `open`: connections, their settings and migrations.
//! - `cursors`: named places in the event log its readers keep (`Broker::cursor`).
//! - `pausing`: queues paused and resumed by an operator (fetch checks the pause itself).
//! - `rating`: job rate limits: a rated fetch and the read of a queue's held-until time.
//! - `nodes`: the registry of worker nodes, and the count of ready jobs ahead of a priority.
//! - `inbox`: users' notification inboxes and Web Push subscriptions.
//! - `circuits`: the circuit breakers of `notify.send`'s endpoints (`Broker::circuits`).
//! - `sql`: the text of every statement; `rows`: decoding rows; `error`: mapping errors.

mod admin;
mod chain;
mod circuits;
mod cursors;
mod error;
mod events;
mod inbox;
mod lifecycle;
mod nodes;
mod open;
mod pausing;
mod rating;
mod read;
mod readers;
mod rows;
mod sql;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{Notify, oneshot, watch};

use self::error::{Fail, writer_gone};
pub use self::readers::DEFAULT_READERS;
use self::readers::Readers;
use self::writer::{Op, WriteOp, WriterStats};
use crate::broker::{Broker, Durability};
use crate::clock::Clock;
use crate::error::{BrokerError, BrokerResult};
use crate::time::Timestamp;

/// Longest [`Broker::wait_for_work`] sleep: other processes sharing the file cannot notify us,
/// so this is how late at worst we notice their enqueues.
pub const CROSS_PROCESS_POLL: Duration = Duration::from_millis(100);

/// The SQLite broker. Cheap to share behind an `Arc`; dropping the last handle stops the
/// writer thread once it has answered what was already sent.
pub struct SqliteBroker {
    path: PathBuf,
    clock: Arc<dyn Clock>,
    writer: mpsc::Sender<Box<dyn WriteOp>>,
    /// What the writer thread has done (commits, commands, time).
    stats: Arc<WriterStats>,
    readers: Readers,
    /// Woken by this instance's writes that make work available.
    work: Arc<Notify>,
    /// Bumped by the writer thread after each of its commits (most append events): what
    /// [`Broker::wait_for_events`] waits on. Bumped there, not when a caller's task has its
    /// answer: under load that task may wake milliseconds after the commit, and the event
    /// hub would learn of the rows that much later.
    written: Arc<watch::Sender<u64>>,
}

impl std::fmt::Debug for SqliteBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBroker")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// How a [`SqliteBroker`] is opened.
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// What an acknowledged write survives (`PRAGMA synchronous`). Default [`Durability::Full`].
    pub durability: Durability,
    /// Read connections: how many reads run at once. Default [`DEFAULT_READERS`]; at least 1.
    pub readers: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            durability: Durability::default(),
            readers: DEFAULT_READERS,
        }
    }
}

/// Opens the SQLite broker at `path` with default options (see [`SqliteBroker::open`]).
pub async fn open(path: &str, clock: Arc<dyn Clock>) -> BrokerResult<Arc<dyn Broker>> {
    open_with(path, SqliteOptions::default(), clock).await
}

/// Opens the SQLite broker at `path` with `options` (see [`SqliteBroker::open_with`]).
pub async fn open_with(
    path: &str,
    options: SqliteOptions,
    clock: Arc<dyn Clock>,
) -> BrokerResult<Arc<dyn Broker>> {
    Ok(Arc::new(
        SqliteBroker::open_with(path, options, clock).await?,
    ))
}

impl SqliteBroker {
    /// Opens (creating on first use, with its parent directory) the database at `path` with
    /// default options ([`SqliteOptions`]: durability full), brings its schema up to date,
    /// and starts the writer thread.
    ///
    /// ```no_run
    /// # async fn demo() -> hopper_workers::BrokerResult<()> {
    /// use hopper_workers::broker::sqlite::SqliteBroker;
    /// let broker = SqliteBroker::open("data/hopper.db", hopper_workers::clock::system()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn open(path: impl AsRef<Path>, clock: Arc<dyn Clock>) -> BrokerResult<Self> {
        Self::open_with(path, SqliteOptions::default(), clock).await
    }

    /// [`SqliteBroker::open`] with `options`.
    ///
    /// ```no_run
    /// # async fn demo() -> hopper_workers::BrokerResult<()> {
    /// use hopper_workers::broker::Durability;
    /// use hopper_workers::broker::sqlite::{SqliteBroker, SqliteOptions};
    /// let options = SqliteOptions { durability: Durability::Normal, ..SqliteOptions::default() };
    /// let broker =
    ///     SqliteBroker::open_with("data/hopper.db", options, hopper_workers::clock::system()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn open_with(
        path: impl AsRef<Path>,
        options: SqliteOptions,
        clock: Arc<dyn Clock>,
    ) -> BrokerResult<Self> {
        let path = path.as_ref().to_path_buf();
        let opened = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || open::open_connections(&path, &options))
                .await
                .map_err(BrokerError::backend)??
        };
        let (write_conn, read_conns) = opened;
        let (tx, rx) = mpsc::channel::<Box<dyn WriteOp>>();
        let writer_clock = clock.clone();
        let stats = Arc::new(WriterStats::default());
        let writer_stats = stats.clone();
        let written = Arc::new(watch::Sender::new(0u64));
        let bump = written.clone();
        std::thread::Builder::new()
            .name("hopper-sqlite-writer".into())
            .spawn(move || {
                let committed = || bump.send_modify(|n| *n = n.wrapping_add(1));
                writer::run_writer(write_conn, writer_clock, rx, &writer_stats, &committed);
            })
            .map_err(|e| BrokerError::Backend(Box::new(e)))?;
        Ok(Self {
            path,
            clock,
            writer: tx,
            stats,
            readers: Readers::new(read_conns),
            work: Arc::new(Notify::new()),
            written,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Transactions the writer thread has committed since this broker was opened: under
    /// [`Durability::Full`], each is one fsync of the WAL, however many writes it carried.
    pub fn commits(&self) -> u64 {
        self.stats.commits.load(Ordering::Relaxed)
    }

    /// Runs `f` on the writer thread inside the current batch's transaction.
    async fn write<T, F>(&self, f: F) -> BrokerResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, Timestamp) -> Result<T, Fail> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Box::new(Op::new(f, reply)))
            .map_err(|_| writer_gone())?;
        answer.await.map_err(|_| writer_gone())?
    }

    /// Runs `f` on a read connection, off the async runtime.
    async fn read<T, F>(&self, f: F) -> BrokerResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, Timestamp) -> Result<T, Fail> + Send + 'static,
    {
        let now = self.clock.now();
        self.readers
            .run(move |conn| f(conn, now).map_err(Fail::into_broker))
            .await
    }

    fn wake(&self) {
        // Wake every current waiter, and leave one permit for a worker that is between its
        // empty fetch and its wait (a spurious early return, which the trait allows).
        self.work.notify_waiters();
        self.work.notify_one();
    }
}

// The trait's operations, each answered by the module that owns its concern.
crate::broker::delegate::delegate_broker!(SqliteBroker, "sqlite",
    store: lifecycle, fetch: lifecycle, fetch_rated: rating, rate_held_until: rating,
    wait_for_work: lifecycle, heartbeat: lifecycle,
    progress: lifecycle, checkpoint: lifecycle, finish: lifecycle, cancel: admin, retry: admin, retry_all_dead: admin,
    rescue: lifecycle, get: read, history: read, list: read, queues: read, events: read,
    wait_for_events: read, purge: admin, drop_queue: admin, ping: read, pause: pausing,
    resume: pausing, cursor: cursors,
    ready_ahead: nodes, register_node: nodes, deregister_node: nodes,
    nodes: nodes, inbox: inbox,
    circuits: circuits);

#[cfg(test)]
mod tests {
    use super::*;

    /// The durability an opened broker was given is what its writer and its readers run
    /// with: `PRAGMA synchronous` 2 (FULL) by default, 1 (NORMAL) when asked.
    #[tokio::test]
    async fn durability_reaches_the_writer_and_the_readers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let normal = SqliteOptions {
            durability: Durability::Normal,
            ..SqliteOptions::default()
        };
        for (options, expected) in [(SqliteOptions::default(), 2), (normal, 1)] {
            let path = dir.path().join(format!("{:?}.db", options.durability));
            let broker = SqliteBroker::open_with(&path, options, crate::clock::system())
                .await
                .expect("open");
            let pragma = |conn: &Connection, _| -> Result<i64, Fail> {
                Ok(conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?)
            };
            assert_eq!(broker.write(pragma).await.expect("write"), expected);
            assert_eq!(broker.read(pragma).await.expect("read"), expected);
        }
    }

    /// A database that cannot take a write (its disk full, here its page limit reached) is
    /// not ready, and says why: `/readyz` answered "ready" while every write failed. The
    /// write itself is `Unavailable` (503, retried), not a backend failure (500). Once a write
    /// of rows goes through again, it is ready again (and after `UNWRITABLE_HOLD` without a
    /// write failing so, which this test does not wait for).
    #[tokio::test]
    async fn a_database_that_cannot_take_a_write_is_not_ready() {
        use crate::broker::Broker;
        use crate::job::NewJob;

        let dir = tempfile::tempdir().expect("tempdir");
        let broker = SqliteBroker::open_with(
            &dir.path().join("full.db"),
            SqliteOptions::default(),
            crate::clock::system(),
        )
        .await
        .expect("open");
        broker.ready().await.expect("ready when opened");
        let limit = |pages: Option<i64>| {
            move |conn: &Connection, _| -> Result<(), Fail> {
                let now: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
                conn.pragma_update(None, "max_page_count", pages.unwrap_or(now))?;
                Ok(())
            }
        };
        broker.write(limit(None)).await.expect("limit the file");
        let big = serde_json::json!({ "blob": "x".repeat(200_000) });
        let refused = broker
            .enqueue(vec![NewJob::new("sys.noop", big.clone())])
            .await
            .expect_err("no room for the job");
        assert!(
            matches!(refused, BrokerError::Unavailable(_)),
            "{refused:?}"
        );
        let why = broker
            .ready()
            .await
            .expect_err("not ready while writes fail");
        assert!(matches!(why, BrokerError::Unavailable(_)), "{why:?}");
        assert!(why.to_string().contains("full"), "{why}");

        broker
            .write(limit(Some(1_000_000)))
            .await
            .expect("room again");
        // A batch that wrote no row (as the pool's idle fetches) does not say writes go
        // through: still not ready.
        broker
            .ready()
            .await
            .expect_err("a write that changed nothing proves nothing");
        broker
            .enqueue(vec![NewJob::new("sys.noop", big)])
            .await
            .expect("the job fits now");
        broker
            .ready()
            .await
            .expect("ready once a write went through");
    }

    /// A command sent while a batch runs joins that batch's transaction instead of waiting
    /// out its commit (and fsync) for one of its own: the pool's fetch and its acknowledger's
    /// finish arrive microseconds apart and share one commit.
    #[tokio::test]
    async fn a_command_sent_while_a_batch_runs_joins_its_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = Arc::new(
            SqliteBroker::open(dir.path().join("t.db"), crate::clock::system())
                .await
                .expect("open"),
        );
        let before = broker.commits();
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        let first = {
            let broker = broker.clone();
            tokio::spawn(async move {
                broker
                    .write(move |_, _| {
                        let _ = started_tx.send(());
                        // Holds the batch open until the second command is queued.
                        let _ = go_rx.recv();
                        Ok(1)
                    })
                    .await
            })
        };
        tokio::task::spawn_blocking(move || started.recv())
            .await
            .expect("join")
            .expect("the first command runs");
        let (reply, second) = oneshot::channel();
        broker
            .writer
            .send(Box::new(Op::new(|_: &Connection, _| Ok(2), reply)))
            .expect("send");
        go.send(()).expect("go");
        assert_eq!(first.await.expect("join").expect("first"), 1);
        assert_eq!(second.await.expect("answer").expect("second"), 2);
        assert_eq!(broker.commits() - before, 1, "both commands in one commit");
    }

    /// The writer keeps its savepoint journal in memory (`temp_store` 2): on disk it was a
    /// temporary file written at every batch.
    #[tokio::test]
    async fn the_writer_keeps_temporary_storage_in_memory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = SqliteBroker::open(dir.path().join("t.db"), crate::clock::system())
            .await
            .expect("open");
        let pragma = |conn: &Connection, _| -> Result<i64, Fail> {
            Ok(conn.query_row("PRAGMA temp_store", [], |r| r.get(0))?)
        };
        assert_eq!(broker.write(pragma).await.expect("write"), 2);
    }
}
