//! The writer thread: the one owner of the write connection, running commands in batches.
//!
//! It owns the command type ([`WriteOp`], built by `SqliteBroker::write` in `super`), the
//! thread's loop ([`run_writer`]) and the transaction around each batch: one `BEGIN IMMEDIATE`
//! for everything queued, each command in its own savepoint so that a failed one rolls back
//! alone, and answers sent only after `COMMIT`, so that nobody is told "done" about a write
//! that was lost. It knows nothing of jobs: what a command does is the closure it carries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::error::{Fail, is_unavailable, is_unwritable};
use super::sql;
use crate::clock::Clock;
use crate::error::{BrokerError, BrokerResult};
use crate::time::Timestamp;

/// Most commands in one transaction; bounds how long one commit keeps the others waiting.
const MAX_BATCH: usize = 512;
/// How long after its `BEGIN` a batch still takes commands sent meanwhile (see `try_batch`).
#[cfg(not(test))]
const JOIN_WINDOW: Duration = Duration::from_millis(1);
/// In this crate's unit tests the window is long, so that a test holding a batch open can
/// show a command joining it however slow the machine is (with 1 ms, a loaded machine made
/// that test fail at random). A batch still ends as soon as nothing is queued.
#[cfg(test)]
const JOIN_WINDOW: Duration = Duration::from_secs(5);

/// A command for the writer thread: run inside the batch's transaction, then answer.
pub(super) trait WriteOp: Send {
    /// Runs the command; true when it succeeded (its savepoint is kept).
    fn run(&mut self, conn: &Connection, now: Timestamp) -> bool;
    /// Why the last `run` could not write, when the database takes no writes (a full disk, a
    /// file that cannot be written): SQLite's message.
    fn unwritable(&self) -> Option<&str>;
    /// The batch failed as a whole: whatever `run` produced is void.
    fn fail(&mut self, why: &BatchFailure);
    /// Sends the answer (after the commit).
    fn answer(self: Box<Self>);
}

/// The one [`WriteOp`]: a closure, its result once run, and where the answer goes.
pub(super) struct Op<T, F> {
    work: Option<F>,
    result: Option<BrokerResult<T>>,
    unwritable: Option<String>,
    reply: oneshot::Sender<BrokerResult<T>>,
}

impl<T, F> Op<T, F> {
    pub fn new(work: F, reply: oneshot::Sender<BrokerResult<T>>) -> Self {
        Self {
            work: Some(work),
            result: None,
            unwritable: None,
            reply,
        }
    }
}

impl<T, F> WriteOp for Op<T, F>
where
    T: Send,
    F: FnOnce(&Connection, Timestamp) -> Result<T, Fail> + Send,
{
    fn run(&mut self, conn: &Connection, now: Timestamp) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        let result = work(conn, now);
        self.unwritable = match &result {
            Err(Fail::Sql(e)) if is_unwritable(e) => Some(e.to_string()),
            _ => None,
        };
        let result = result.map_err(Fail::into_broker);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn unwritable(&self) -> Option<&str> {
        self.unwritable.as_deref()
    }

    fn fail(&mut self, why: &BatchFailure) {
        self.work = None;
        self.result = Some(Err(why.to_error()));
    }

    fn answer(self: Box<Self>) {
        let result = self
            .result
            .unwrap_or_else(|| Err(BatchFailure::new("command was not run").to_error()));
        // The caller may have stopped waiting (e.g. a timed-out fetch); nothing to tell then.
        let _ = self.reply.send(result);
    }
}

/// A failure that ends a whole batch (its transaction could not begin or commit). Kept as text
/// so that every command of the batch gets its own copy.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub(super) struct BatchFailure {
    busy: bool,
    /// The database takes no writes (a full disk, a file that cannot be written).
    unwritable: bool,
    message: String,
}

impl BatchFailure {
    fn new(message: &str) -> Self {
        Self {
            busy: false,
            unwritable: false,
            message: message.to_owned(),
        }
    }

    /// A failed transaction statement (`what`); busy stays busy, so the caller may retry.
    fn sql(what: &'static str) -> impl FnOnce(rusqlite::Error) -> Self {
        move |e| Self {
            busy: is_unavailable(&e),
            unwritable: is_unwritable(&e),
            message: format!("{what}: {e}"),
        }
    }

    fn to_error(&self) -> BrokerError {
        if self.busy {
            BrokerError::Unavailable(Box::new(self.clone()))
        } else {
            BrokerError::Backend(Box::new(self.clone()))
        }
    }
}

/// What the writer thread has done since the broker was opened: the figures that say where a
/// drain's time goes (commands per commit, time running commands, time committing).
#[derive(Debug, Default)]
pub(super) struct WriterStats {
    /// Transactions committed (under `synchronous = FULL`, one fsync each).
    pub commits: AtomicU64,
    /// Commands run, committed or not.
    pub commands: AtomicU64,
    /// Microseconds spent running commands (`BEGIN` to just before `COMMIT`).
    pub run_us: AtomicU64,
    /// Microseconds spent in `COMMIT` (writing the WAL, its fsync under full, and the
    /// checkpoints SQLite runs when the WAL has grown).
    pub commit_us: AtomicU64,
    /// Why the database takes no writes, and when a write last failed so (a full disk, a file
    /// that cannot be written): what `ready` answers instead of "ready", until a batch that
    /// changed rows commits with no command failing so, or [`UNWRITABLE_HOLD`] passes with no
    /// write failing so (a node nobody writes through must not stay unready once fixed).
    unwritable: Mutex<Option<(String, Instant)>>,
}

/// How long a write that failed for want of room or permission keeps the database unready
/// (see [`WriterStats::unwritable`]).
pub(super) const UNWRITABLE_HOLD: Duration = Duration::from_secs(30);

impl WriterStats {
    /// Why the database takes no writes now; `None` while writes go through.
    pub fn unwritable(&self) -> Option<String> {
        let slot = self.unwritable.lock().ok()?;
        let (why, at) = slot.as_ref()?;
        (at.elapsed() < UNWRITABLE_HOLD).then(|| why.clone())
    }

    fn set_unwritable(&self, why: Option<String>) {
        if let Ok(mut slot) = self.unwritable.lock() {
            *slot = why.map(|w| (w, Instant::now()));
        }
    }

    fn add(counter: &AtomicU64, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        counter.fetch_add(us, Ordering::Relaxed);
    }
}

/// The writer thread: runs until every `SqliteBroker` handle is dropped, counting what it
/// does in `stats` (logged at debug level when it stops). `committed` is called after each
/// commit, from this thread and before the batch's answers go out, so that whoever follows
/// the log hears of the new rows at once rather than once a caller's task has woken.
pub(super) fn run_writer(
    conn: Connection,
    clock: Arc<dyn Clock>,
    rx: mpsc::Receiver<Box<dyn WriteOp>>,
    stats: &WriterStats,
    committed: &dyn Fn(),
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        take_queued(&rx, &mut batch);
        let changes = conn.total_changes();
        let ok = run_batch(&conn, clock.as_ref(), &rx, &mut batch, stats);
        stats
            .commands
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        if ok {
            stats.commits.fetch_add(1, Ordering::Relaxed);
            committed();
            // Written again: ready again, unless a command of this very batch could not write.
            // Only a batch that changed rows says so: the pool's idle fetches commit batches
            // that write nothing, which go through on a full disk as well.
            if conn.total_changes() > changes && batch.iter().all(|op| op.unwritable().is_none()) {
                stats.set_unwritable(None);
            }
        }
        for op in batch {
            op.answer();
        }
    }
    tracing::debug!(
        commits = stats.commits.load(Ordering::Relaxed),
        commands = stats.commands.load(Ordering::Relaxed),
        run_ms = stats.run_us.load(Ordering::Relaxed) / 1000,
        commit_ms = stats.commit_us.load(Ordering::Relaxed) / 1000,
        "sqlite writer stopped"
    );
}

/// Moves the commands queued now into `batch`, up to [`MAX_BATCH`]; true when it took any.
fn take_queued(rx: &mpsc::Receiver<Box<dyn WriteOp>>, batch: &mut Vec<Box<dyn WriteOp>>) -> bool {
    let before = batch.len();
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(op) => batch.push(op),
            Err(_) => break,
        }
    }
    batch.len() > before
}

/// Runs a batch in one transaction; when the transaction as a whole fails, every command of
/// the batch is told so (even one that ran: its work was rolled back with the rest). True
/// when the batch committed.
fn run_batch(
    conn: &Connection,
    clock: &dyn Clock,
    rx: &mpsc::Receiver<Box<dyn WriteOp>>,
    batch: &mut Vec<Box<dyn WriteOp>>,
    stats: &WriterStats,
) -> bool {
    let Err(why) = try_batch(conn, clock, rx, batch, stats) else {
        return true;
    };
    rollback(conn);
    if why.unwritable {
        stats.set_unwritable(Some(why.message.clone()));
    }
    tracing::warn!(error = %why, commands = batch.len(), "sqlite write batch failed");
    for op in batch.iter_mut() {
        op.fail(&why);
    }
    false
}

/// The transaction of [`run_batch`], each command in its own savepoint. Commands sent while
/// the batch ran join it before the commit (up to [`MAX_BATCH`], and only within
/// [`JOIN_WINDOW`] of its start): the pool's fetch and its
/// acknowledger's finish are sent a few microseconds apart, and each would otherwise wait out
/// the other's whole commit and sync; together they share one.
fn try_batch(
    conn: &Connection,
    clock: &dyn Clock,
    rx: &mpsc::Receiver<Box<dyn WriteOp>>,
    batch: &mut Vec<Box<dyn WriteOp>>,
    stats: &WriterStats,
) -> Result<(), BatchFailure> {
    let started = Instant::now();
    exec(conn, sql::BEGIN).map_err(BatchFailure::sql("begin"))?;
    let mut next = 0;
    loop {
        while let Some(op) = batch.get_mut(next) {
            run_one(conn, clock, op.as_mut(), stats)?;
            next += 1;
        }
        // Joining is bounded in time: every command already in the batch waits for its
        // commit, and a batch that kept taking what a busy pool sends would hold each of
        // them for as long as it ran (up to 512 commands: ~10 ms of delay on every write).
        if started.elapsed() >= JOIN_WINDOW || !take_queued(rx, batch) {
            break;
        }
    }
    let committing = Instant::now();
    WriterStats::add(&stats.run_us, committing - started);
    let committed = exec(conn, sql::COMMIT).map_err(BatchFailure::sql("commit"));
    WriterStats::add(&stats.commit_us, committing.elapsed());
    committed
}

/// Runs one command of an open transaction in its own savepoint, rolled back alone when the
/// command fails.
fn run_one(
    conn: &Connection,
    clock: &dyn Clock,
    op: &mut dyn WriteOp,
    stats: &WriterStats,
) -> Result<(), BatchFailure> {
    exec(conn, sql::SAVEPOINT).map_err(BatchFailure::sql("savepoint"))?;
    let ok = op.run(conn, clock.now());
    if let Some(why) = op.unwritable() {
        stats.set_unwritable(Some(why.to_owned()));
    }
    if conn.is_autocommit() {
        // SQLite rolled the whole transaction back on its own (e.g. disk full): every
        // earlier command of the batch is void too, and worth retrying when it was for want
        // of room or permission (503, as for a busy database), not a broken broker (500).
        return Err(match op.unwritable() {
            Some(why) => BatchFailure {
                busy: true,
                unwritable: true,
                message: format!("the transaction was rolled back by SQLite: {why}"),
            },
            None => BatchFailure::new("the transaction was rolled back by SQLite"),
        });
    }
    if !ok {
        exec(conn, sql::ROLLBACK_TO).map_err(BatchFailure::sql("savepoint"))?;
    }
    exec(conn, sql::RELEASE).map_err(BatchFailure::sql("savepoint"))
}

fn exec(conn: &Connection, text: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(text)?.execute([])?;
    Ok(())
}

/// Ends an open transaction; a no-op when there is none (it never began, or SQLite ended it).
fn rollback(conn: &Connection) {
    if !conn.is_autocommit()
        && let Err(e) = conn.execute_batch(sql::ROLLBACK)
    {
        tracing::error!(error = %e, "sqlite rollback failed");
    }
}
