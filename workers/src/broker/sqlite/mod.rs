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
//!   rolls back alone. Answers go out through oneshot channels only after `COMMIT`, so nobody
//!   is told "done" about a write that was lost. Batching is what makes many small writes
//!   (fetches, acks, heartbeats from many slots) cheap: one commit for all of them.
//! - **One reader connection** behind a mutex, used from `spawn_blocking`, for `get`,
//!   `history`, `list`, `queues` and `events`. In WAL mode readers never block the writer.
//!
//! # Several processes, one file
//!
//! Several `hopper` processes on one machine may share the file (e.g. `hopper serve` and two
//! `hopper worker`s). `BEGIN IMMEDIATE` takes SQLite's write lock up front, so two writers
//! serialize instead of deadlocking on a read-to-write upgrade, and `busy_timeout` makes a
//! writer wait for the other instead of failing at once. Another process cannot wake this
//! one's [`Broker::wait_for_work`], so that wait is capped at [`CROSS_PROCESS_POLL`].
//!
//! # Where the trait leaves a choice
//!
//! The conformance suite (`crate::testing`) pins what both brokers must agree on; beyond it:
//! a snooze appends `job.enqueued` with message `"snoozed"` (no event type names
//! `scheduled`); promotion of due jobs by fetch appends no event; a rescued job keeps its
//! `run_at` (it already waited its turn), a released one is due now; the `attempt` of a
//! `job.interrupted` event is the attempt that was cut short; `max_interruptions = 0` disables
//! the poison-pill cut-off; `list` with `limit = 0` returns a page of 100.

//!
//! # Layout
//!
//! This file holds the [`SqliteBroker`] type, how it is opened and how a command reaches a
//! connection ([`SqliteBroker::write`], [`SqliteBroker::read`]); the [`Broker`] impl below only
//! says which file does the work:
//!
//! - `lifecycle`: the pool's writes (enqueue, fetch, heartbeat, progress, finish, rescue).
//! - `admin`: the operator's writes (cancel, retry, retry all dead, purge, drop a queue).
//! - `read`: everything that only reads (get, history, list, queues, events, ping).
//! - `chain`: what a step's end or retry does to the other steps of its chain.
//! - `events`: appending to the event log, inside the write that changed the job.
//! - `writer`: the writer thread and its batches; `open`: connections and migrations.
//! - `sql`: the text of every statement; `rows`: decoding rows; `error`: mapping errors.

mod admin;
mod chain;
mod error;
mod events;
mod lifecycle;
mod open;
mod read;
mod readers;
mod rows;
mod sql;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{Notify, oneshot};

use self::error::{Fail, writer_gone};
use self::writer::{Op, WriteOp};
use crate::broker::Broker;
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
    reader: Arc<Mutex<Connection>>,
    /// Woken by this instance's writes that make work available.
    work: Arc<Notify>,
}

impl std::fmt::Debug for SqliteBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBroker")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Opens the SQLite broker at `path` (see [`SqliteBroker::open`]).
pub async fn open(path: &str, clock: Arc<dyn Clock>) -> BrokerResult<Arc<dyn Broker>> {
    Ok(Arc::new(SqliteBroker::open(path, clock).await?))
}

impl SqliteBroker {
    /// Opens (creating on first use, with its parent directory) the database at `path`,
    /// brings its schema up to date, and starts the writer thread.
    ///
    /// ```no_run
    /// # async fn demo() -> hopper_workers::BrokerResult<()> {
    /// use hopper_workers::broker::sqlite::SqliteBroker;
    /// let broker = SqliteBroker::open("data/hopper.db", hopper_workers::clock::system()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn open(path: impl AsRef<Path>, clock: Arc<dyn Clock>) -> BrokerResult<Self> {
        let path = path.as_ref().to_path_buf();
        let opened = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || open::open_connections(&path))
                .await
                .map_err(BrokerError::backend)??
        };
        let (write_conn, read_conn) = opened;
        let (tx, rx) = mpsc::channel::<Box<dyn WriteOp>>();
        let writer_clock = clock.clone();
        std::thread::Builder::new()
            .name("hopper-sqlite-writer".into())
            .spawn(move || writer::run_writer(write_conn, writer_clock, rx))
            .map_err(|e| BrokerError::Backend(Box::new(e)))?;
        Ok(Self {
            path,
            clock,
            writer: tx,
            reader: Arc::new(Mutex::new(read_conn)),
            work: Arc::new(Notify::new()),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
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

    /// Runs `f` on the reader connection, off the async runtime.
    async fn read<T, F>(&self, f: F) -> BrokerResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, Timestamp) -> Result<T, Fail> + Send + 'static,
    {
        let reader = self.reader.clone();
        let now = self.clock.now();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock leaves the connection itself intact.
            let conn = reader.lock().unwrap_or_else(PoisonError::into_inner);
            f(&conn, now).map_err(Fail::into_broker)
        })
        .await
        .map_err(BrokerError::backend)?
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
    store: lifecycle, fetch: lifecycle, wait_for_work: lifecycle, heartbeat: lifecycle,
    progress: lifecycle, finish: lifecycle, cancel: admin, retry: admin, retry_all_dead: admin,
    rescue: lifecycle, get: read, history: read, list: read, queues: read, events: read,
    purge: admin, drop_queue: admin, ping: read);
