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

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, Row, params};
use serde_json::Value;
use tokio::sync::{Notify, oneshot};

use crate::broker::{
    Broker, Enqueued, Finish, JobFilter, JobPage, LeaseStatus, Outcome, QueueStats,
};
use crate::clock::Clock;
use crate::error::{BrokerError, BrokerResult};
use crate::event::{Event, EventData, EventType};
use crate::job::{ChainLink, FieldError, Job, JobId, JobState, Lease, Millis, NewJob};

/// How long a writer waits for another process's write lock before giving up (`Unavailable`).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest [`Broker::wait_for_work`] sleep: other processes sharing the file cannot notify us,
/// so this is how late at worst we notice their enqueues.
pub const CROSS_PROCESS_POLL: Duration = Duration::from_millis(100);
/// Most commands in one transaction; bounds how long one commit keeps the others waiting.
const MAX_BATCH: usize = 512;
/// Most jobs one fetch leases.
const MAX_FETCH: usize = 1000;
/// Largest page of [`Broker::list`], and the page size when the filter asks for 0.
const MAX_PAGE: usize = 1000;
const DEFAULT_PAGE: usize = 100;
/// Largest page of [`Broker::events`].
const MAX_EVENTS_PAGE: usize = 10_000;
/// Rows changed per transaction by bulk maintenance (retry of all dead, purge, drop), so other
/// writers get a turn between chunks.
const CHUNK: i64 = 500;
/// Event rows trimmed per transaction.
const TRIM_CHUNK: i64 = 10_000;

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
];

/// The SQL of every operation, in one place. Column lists are spelled out so that a query and
/// the row decoder ([`job_from_row`], [`event_from_row`]) can be checked side by side.
mod sql {
    /// The columns [`super::job_from_row`] decodes, `seq` first.
    macro_rules! job_columns {
        () => {
            "seq, id, queue, kind, payload, priority, state, run_at, attempt, max_retries, \
             timeout_ms, interruptions, interruption_streak, lease_token, lease_until, progress, \
             progress_message, result, last_error, unique_key, created_at, started_at, finished_at, \
             chain_id, chain_index, chain_next"
        };
    }
    pub(super) use job_columns;

    /// The columns [`super::event_from_row`] decodes.
    macro_rules! event_columns {
        () => {
            "id, type, job_id, queue, kind, at, attempt, progress, message, result, error"
        };
    }

    pub const BEGIN: &str = "BEGIN IMMEDIATE";
    pub const COMMIT: &str = "COMMIT";
    pub const ROLLBACK: &str = "ROLLBACK";
    pub const SAVEPOINT: &str = "SAVEPOINT op";
    pub const RELEASE: &str = "RELEASE op";
    pub const ROLLBACK_TO: &str = "ROLLBACK TO op";

    pub const INSERT_EVENT: &str = "INSERT INTO events \
        (job_id, queue, kind, type, at, attempt, progress, message, result, error) \
        VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

    pub const FIND_UNIQUE: &str = "SELECT id FROM jobs WHERE unique_key = ?1";
    pub const INSERT_JOB: &str = "INSERT INTO jobs \
        (id, queue, kind, payload, priority, state, run_at, max_retries, timeout_ms, unique_key, \
         created_at, chain_id, chain_index, chain_next) \
        VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)";

    /// Due scheduled and retrying jobs become queued, keeping their due time as `run_at` so
    /// they line up as if queued then.
    pub const PROMOTE_DUE: &str = "UPDATE jobs SET state = 'queued' \
        WHERE queue = ?1 AND state IN ('scheduled', 'retrying') AND run_at <= ?2";
    pub const FETCH: &str = concat!(
        "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_token = lease_token + 1, \
         lease_until = ?3, started_at = COALESCE(started_at, ?4) \
         WHERE seq IN (SELECT seq FROM jobs WHERE queue = ?1 AND state = 'queued' \
                       ORDER BY priority, run_at, seq LIMIT ?2) \
         RETURNING ",
        job_columns!()
    );

    // Finishing an attempt. Each is fenced by the lease token and the running state; the
    // attempt returned is the one that ended (for its event).
    pub const FINISH_SUCCEEDED: &str = "UPDATE jobs SET state = 'succeeded', result = ?3, \
        finished_at = ?4, progress = 100, interruption_streak = 0, lease_until = NULL \
        WHERE id = ?1 AND lease_token = ?2 AND state = 'running' \
        RETURNING queue, kind, attempt, chain_id, chain_index, chain_next";
    pub const FINISH_RETRY: &str = "UPDATE jobs SET state = 'retrying', run_at = ?3, \
        last_error = ?4, interruption_streak = 0, lease_until = NULL \
        WHERE id = ?1 AND lease_token = ?2 AND state = 'running' RETURNING queue, kind, attempt";
    pub const FINISH_DEAD: &str = "UPDATE jobs SET state = 'dead', last_error = ?3, \
        finished_at = ?4, interruption_streak = 0, lease_until = NULL \
        WHERE id = ?1 AND lease_token = ?2 AND state = 'running' \
        RETURNING queue, kind, attempt, chain_id, chain_index, chain_next";
    pub const FINISH_SNOOZE: &str = "UPDATE jobs SET state = 'scheduled', run_at = ?3, \
        attempt = MAX(attempt - 1, 0), interruption_streak = 0, lease_until = NULL \
        WHERE id = ?1 AND lease_token = ?2 AND state = 'running' \
        RETURNING queue, kind, attempt + 1";
    pub const FINISH_RELEASED: &str = "UPDATE jobs SET state = 'queued', run_at = ?3, \
        attempt = MAX(attempt - 1, 0), lease_until = NULL \
        WHERE id = ?1 AND lease_token = ?2 AND state = 'running' \
        RETURNING queue, kind, attempt + 1";

    pub const HEARTBEAT: &str = "UPDATE jobs SET lease_until = ?3 \
        WHERE id = ?1 AND lease_token = ?2 AND state = 'running'";
    pub const LEASE_STATE: &str = "SELECT state FROM jobs WHERE id = ?1 AND lease_token = ?2";
    pub const PROGRESS: &str = "UPDATE jobs SET progress = ?3, progress_message = ?4 \
        WHERE id = ?1 AND lease_token = ?2 AND state = 'running' RETURNING queue, kind, attempt";

    pub const STATE_OF: &str = "SELECT state FROM jobs WHERE id = ?1";
    pub const CANCEL: &str = concat!(
        "UPDATE jobs SET state = 'cancelled', finished_at = ?2, lease_until = NULL \
         WHERE id = ?1 AND state NOT IN ('succeeded', 'dead', 'cancelled') RETURNING ",
        job_columns!()
    );
    pub const RETRY: &str = concat!(
        "UPDATE jobs SET state = 'queued', attempt = 0, interruption_streak = 0, run_at = ?2, \
         finished_at = NULL, lease_until = NULL, progress = 0, progress_message = NULL \
         WHERE id = ?1 AND state IN ('dead', 'cancelled') RETURNING ",
        job_columns!()
    );
    pub const COUNT_DEAD: &str = "SELECT count(*) FROM jobs WHERE state = 'dead'";
    pub const COUNT_DEAD_IN: &str = "SELECT count(*) FROM jobs WHERE queue = ?1 AND state = 'dead'";
    pub const RETRY_DEAD_CHUNK: &str = "UPDATE jobs SET state = 'queued', attempt = 0, \
        interruption_streak = 0, run_at = ?1, finished_at = NULL, lease_until = NULL, \
        progress = 0, progress_message = NULL \
        WHERE seq IN (SELECT seq FROM jobs WHERE state = 'dead' LIMIT ?3) \
        RETURNING id, queue, kind, attempt, chain_id, chain_index";
    pub const RETRY_DEAD_CHUNK_IN: &str = "UPDATE jobs SET state = 'queued', attempt = 0, \
        interruption_streak = 0, run_at = ?1, finished_at = NULL, lease_until = NULL, \
        progress = 0, progress_message = NULL \
        WHERE seq IN (SELECT seq FROM jobs WHERE queue = ?2 AND state = 'dead' LIMIT ?3) \
        RETURNING id, queue, kind, attempt, chain_id, chain_index";

    // Rescue. SET expressions read the row as it was, RETURNING as it is now: the attempt
    // returned is the interrupted one.
    pub const RESCUE_POISON: &str = "UPDATE jobs SET state = 'dead', \
        attempt = MAX(attempt - 1, 0), interruptions = interruptions + 1, \
        interruption_streak = interruption_streak + 1, \
        last_error = 'poison pill: interrupted ' || (interruption_streak + 1) || ' times in a row', \
        finished_at = ?1, lease_until = NULL \
        WHERE state = 'running' AND lease_until < ?1 AND ?2 > 0 AND interruption_streak + 1 >= ?2 \
        RETURNING id, queue, kind, attempt + 1, last_error, chain_id, chain_index";
    pub const RESCUE: &str = "UPDATE jobs SET state = 'queued', \
        attempt = MAX(attempt - 1, 0), interruptions = interruptions + 1, \
        interruption_streak = interruption_streak + 1, lease_until = NULL \
        WHERE state = 'running' AND lease_until < ?1 \
        RETURNING id, queue, kind, attempt + 1";

    pub const GET: &str = concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = ?1");
    pub const HISTORY: &str = concat!(
        "SELECT ",
        event_columns!(),
        " FROM events WHERE job_id = ?1 ORDER BY id"
    );
    pub const EVENTS_AFTER: &str = concat!(
        "SELECT ",
        event_columns!(),
        " FROM events WHERE id > ?1 ORDER BY id LIMIT ?2"
    );
    pub const COUNTS: &str = "SELECT queue, state, count(*) FROM jobs GROUP BY queue, state";
    pub const RECENT_OUTCOMES: &str = "SELECT queue, type, count(*) FROM events \
        WHERE type IN ('job.succeeded', 'job.retrying', 'job.dead') AND at >= ?1 \
        GROUP BY queue, type";

    pub const PURGE_CHUNK: &str = "DELETE FROM jobs WHERE seq IN \
        (SELECT seq FROM jobs WHERE state = ?1 AND finished_at < ?2 LIMIT ?3) RETURNING id";
    pub const DELETE_JOB_EVENTS: &str = "DELETE FROM events WHERE job_id = ?1";
    pub const EVENT_CUT: &str = "SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?1";
    pub const TRIM_EVENTS_CHUNK: &str = "DELETE FROM events WHERE id IN \
        (SELECT id FROM events WHERE id <= ?1 ORDER BY id LIMIT ?2)";
    pub const DROP_CHUNK: &str = "DELETE FROM jobs WHERE seq IN \
        (SELECT seq FROM jobs WHERE queue = ?1 LIMIT ?2) RETURNING id";

    // Chains. The step after a succeeded one is queued with its result as `input`; the
    // waiting steps after a dead or cancelled one are cancelled; retrying a step puts the
    // steps cancelled after it back to waiting.
    pub const CHAIN_PROMOTE: &str = "UPDATE jobs SET state = 'queued', run_at = ?3, \
        payload = json_set(payload, '$.input', json(?2)) \
        WHERE id = ?1 AND state = 'waiting' RETURNING queue, kind, attempt";
    pub const CHAIN_CANCEL_REST: &str = "UPDATE jobs SET state = 'cancelled', finished_at = ?3, \
        last_error = ?4 \
        WHERE chain_id = ?1 AND chain_index > ?2 AND state = 'waiting' \
        RETURNING id, queue, kind, attempt";
    pub const CHAIN_STEP: &str = "SELECT id FROM jobs WHERE chain_id = ?1 AND chain_index = ?2";
    pub const CHAIN_PREDECESSOR: &str =
        "SELECT state, result FROM jobs WHERE chain_id = ?1 AND chain_index = ?2";
    /// A retried later step: queued with its predecessor's result, or waiting for it.
    pub const CHAIN_REQUEUE_STEP: &str = "UPDATE jobs SET state = ?2, \
        payload = CASE WHEN ?3 IS NULL THEN payload ELSE json_set(payload, '$.input', json(?3)) END \
        WHERE id = ?1";
    pub const CHAIN_RESUME_REST: &str = "UPDATE jobs SET state = 'waiting', finished_at = NULL, \
        last_error = NULL \
        WHERE chain_id = ?1 AND chain_index > ?2 AND state = 'cancelled'";

    pub const PING: &str = "SELECT 1";
}

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
            tokio::task::spawn_blocking(move || open_connections(&path))
                .await
                .map_err(BrokerError::backend)??
        };
        let (write_conn, read_conn) = opened;
        let (tx, rx) = mpsc::channel::<Box<dyn WriteOp>>();
        let writer_clock = clock.clone();
        std::thread::Builder::new()
            .name("hopper-sqlite-writer".into())
            .spawn(move || run_writer(write_conn, writer_clock, rx))
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
        F: FnOnce(&Connection, Millis) -> Result<T, Fail> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Box::new(Op {
                work: Some(f),
                result: None,
                reply,
            }))
            .map_err(|_| writer_gone())?;
        answer.await.map_err(|_| writer_gone())?
    }

    /// Runs `f` on the reader connection, off the async runtime.
    async fn read<T, F>(&self, f: F) -> BrokerResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, Millis) -> Result<T, Fail> + Send + 'static,
    {
        let reader = self.reader.clone();
        let now = self.clock.now_ms();
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

#[async_trait]
impl Broker for SqliteBroker {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    async fn enqueue(&self, jobs: Vec<NewJob>) -> BrokerResult<Vec<Enqueued>> {
        for job in &jobs {
            job.validate()?;
        }
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let answers = self
            .write(move |conn, now| {
                let mut out = Vec::with_capacity(jobs.len());
                let mut find = conn.prepare_cached(sql::FIND_UNIQUE)?;
                let mut insert = conn.prepare_cached(sql::INSERT_JOB)?;
                // Chains whose first step exists already (its unique key is taken): the whole
                // chain is that earlier one; none of its steps is created again.
                let mut existing_chains: std::collections::HashMap<JobId, JobId> =
                    std::collections::HashMap::new();
                for job in jobs {
                    if let Some(link) = &job.chain
                        && let Some(first) = existing_chains.get(&link.id)
                    {
                        let step: Option<String> = conn
                            .prepare_cached(sql::CHAIN_STEP)?
                            .query_row(params![first.as_str(), i64::from(link.index)], |r| r.get(0))
                            .optional()?;
                        out.push(Enqueued {
                            id: step.map_or_else(|| job.id.clone(), JobId),
                            created: false,
                        });
                        continue;
                    }
                    if let Some(key) = &job.unique_key {
                        let existing: Option<String> =
                            find.query_row([key], |r| r.get(0)).optional()?;
                        if let Some(id) = existing {
                            if let Some(link) = &job.chain {
                                existing_chains.insert(link.id.clone(), JobId(id.clone()));
                            }
                            out.push(Enqueued {
                                id: JobId(id),
                                created: false,
                            });
                            continue;
                        }
                    }
                    let waiting = job.chain.as_ref().is_some_and(|c| c.index > 0);
                    let (state, run_at) = match job.run_at {
                        _ if waiting => (JobState::Waiting, now),
                        Some(at) if at > now => (JobState::Scheduled, at),
                        _ => (JobState::Queued, now),
                    };
                    let chain = job.chain.as_ref();
                    insert.execute(params![
                        job.id.as_str(),
                        job.queue,
                        job.kind,
                        serde_json::to_string(&job.payload)?,
                        i64::from(job.priority),
                        state.as_str(),
                        run_at,
                        i64::from(job.max_retries),
                        job.timeout_ms.map(to_i64),
                        job.unique_key,
                        now,
                        chain.map(|c| c.id.as_str()),
                        chain.map_or(0, |c| i64::from(c.index)),
                        chain.and_then(|c| c.next.as_ref()).map(JobId::as_str),
                    ])?;
                    append_event(
                        conn,
                        &job.id,
                        &job.queue,
                        &job.kind,
                        EventType::Enqueued,
                        now,
                        0,
                        &EventData::default(),
                    )?;
                    out.push(Enqueued {
                        id: job.id,
                        created: true,
                    });
                }
                Ok(out)
            })
            .await?;
        if answers.iter().any(|a| a.created) {
            self.wake();
        }
        Ok(answers)
    }

    async fn fetch(&self, queue: &str, max: usize, lease: Duration) -> BrokerResult<Vec<Job>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let queue = queue.to_owned();
        let max = to_i64(max.min(MAX_FETCH));
        let lease_ms = duration_ms(lease);
        self.write(move |conn, now| {
            conn.prepare_cached(sql::PROMOTE_DUE)?
                .execute(params![queue, now])?;
            let mut jobs = conn
                .prepare_cached(sql::FETCH)?
                .query_map(
                    params![queue, max, now.saturating_add(lease_ms), now],
                    |row| Ok((row.get::<_, i64>(0)?, job_from_row(row)?)),
                )?
                .collect::<Result<Vec<_>, _>>()?;
            // RETURNING has no defined order: restore the fetch order.
            jobs.sort_by_key(|(seq, j)| (j.priority, j.run_at, *seq));
            let jobs: Vec<Job> = jobs.into_iter().map(|(_, j)| j).collect();
            for job in &jobs {
                append_event(
                    conn,
                    &job.id,
                    &job.queue,
                    &job.kind,
                    EventType::Started,
                    now,
                    job.attempt,
                    &EventData::default(),
                )?;
            }
            Ok(jobs)
        })
        .await
    }

    async fn wait_for_work(&self, _queues: &[String], timeout: Duration) -> BrokerResult<()> {
        // One signal for every queue: a wake-up for another queue is a harmless early return.
        let _ = tokio::time::timeout(timeout.min(CROSS_PROCESS_POLL), self.work.notified()).await;
        Ok(())
    }

    async fn heartbeat(&self, leases: &[Lease], lease: Duration) -> BrokerResult<Vec<LeaseStatus>> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let leases = leases.to_vec();
        let lease_ms = duration_ms(lease);
        self.write(move |conn, now| {
            let until = now.saturating_add(lease_ms);
            let mut extend = conn.prepare_cached(sql::HEARTBEAT)?;
            let mut state = conn.prepare_cached(sql::LEASE_STATE)?;
            let mut out = Vec::with_capacity(leases.len());
            for l in &leases {
                let token = token_to_i64(l.token);
                if extend.execute(params![l.job_id.as_str(), token, until])? == 1 {
                    out.push(LeaseStatus::Held);
                    continue;
                }
                let st: Option<String> = state
                    .query_row(params![l.job_id.as_str(), token], |r| r.get(0))
                    .optional()?;
                out.push(if st.as_deref() == Some(JobState::Cancelled.as_str()) {
                    LeaseStatus::Cancelled
                } else {
                    LeaseStatus::Lost
                });
            }
            Ok(out)
        })
        .await
    }

    async fn progress(
        &self,
        lease: &Lease,
        percent: u8,
        message: Option<String>,
    ) -> BrokerResult<()> {
        let lease = lease.clone();
        let percent = percent.min(100);
        self.write(move |conn, now| {
            let row = conn
                .prepare_cached(sql::PROGRESS)?
                .query_row(
                    params![
                        lease.job_id.as_str(),
                        token_to_i64(lease.token),
                        i64::from(percent),
                        message
                    ],
                    owner_from_row,
                )
                .optional()?;
            let Some((queue, kind, attempt)) = row else {
                return Err(BrokerError::LeaseLost(lease.job_id).into());
            };
            let data = EventData {
                progress: Some(percent),
                message,
                ..EventData::default()
            };
            append_event(
                conn,
                &lease.job_id,
                &queue,
                &kind,
                EventType::Progress,
                now,
                attempt,
                &data,
            )?;
            Ok(())
        })
        .await
    }

    async fn finish(&self, batch: Vec<Finish>) -> BrokerResult<Vec<BrokerResult<()>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // Wake this process's pools only when a job became due: a release, a snooze, or a
        // chain step queued by its predecessor's success.
        let (answers, requeued) = self
            .write(move |conn, now| {
                let mut out = Vec::with_capacity(batch.len());
                let mut requeued = false;
                for f in batch {
                    out.push(finish_one(conn, now, f, &mut requeued)?);
                }
                Ok((out, requeued))
            })
            .await?;
        if requeued {
            self.wake();
        }
        Ok(answers)
    }

    async fn cancel(&self, id: &JobId) -> BrokerResult<Job> {
        let id = id.clone();
        self.write(move |conn, now| {
            let job = conn
                .prepare_cached(sql::CANCEL)?
                .query_row(params![id.as_str(), now], job_from_row)
                .optional()?;
            let Some(job) = job else {
                return Err(refusal(
                    conn,
                    id,
                    "only a job that has not finished can be cancelled",
                ));
            };
            append_event(
                conn,
                &job.id,
                &job.queue,
                &job.kind,
                EventType::Cancelled,
                now,
                job.attempt,
                &EventData::default(),
            )?;
            if let Some(link) = &job.chain {
                chain_cancel_rest(conn, now, link, &job.id, "cancelled")?;
            }
            Ok(job)
        })
        .await
    }

    async fn retry(&self, id: &JobId) -> BrokerResult<Job> {
        let id = id.clone();
        let job = self
            .write(move |conn, now| {
                let job = conn
                    .prepare_cached(sql::RETRY)?
                    .query_row(params![id.as_str(), now], job_from_row)
                    .optional()?;
                let Some(job) = job else {
                    return Err(refusal(
                        conn,
                        id,
                        "only a dead or cancelled job can be retried",
                    ));
                };
                append_event(
                    conn,
                    &job.id,
                    &job.queue,
                    &job.kind,
                    EventType::Enqueued,
                    now,
                    job.attempt,
                    &retried(),
                )?;
                let mut job = job;
                if let Some(link) = job.chain.clone() {
                    if let Some(state) = chain_requeue_step(conn, &job.id, &link)? {
                        job.state = state;
                    }
                    chain_resume_rest(conn, link.id.as_str(), link.index)?;
                }
                Ok(job)
            })
            .await?;
        self.wake();
        Ok(job)
    }

    async fn retry_all_dead(&self, queue: Option<&str>) -> BrokerResult<u64> {
        let queue = queue.map(str::to_owned);
        // Counted first, so that jobs dying again while we work cannot keep us looping.
        let total = {
            let queue = queue.clone();
            self.read(move |conn, _| {
                let n: i64 = match &queue {
                    Some(q) => conn
                        .prepare_cached(sql::COUNT_DEAD_IN)?
                        .query_row([q], |r| r.get(0))?,
                    None => conn
                        .prepare_cached(sql::COUNT_DEAD)?
                        .query_row([], |r| r.get(0))?,
                };
                Ok(n)
            })
            .await?
        };
        let mut done: i64 = 0;
        while done < total {
            let queue = queue.clone();
            let limit = CHUNK.min(total - done);
            let n = self
                .write(move |conn, now| {
                    let (text, q) = match &queue {
                        Some(q) => (sql::RETRY_DEAD_CHUNK_IN, Some(q.as_str())),
                        None => (sql::RETRY_DEAD_CHUNK, None),
                    };
                    let rows = conn
                        .prepare_cached(text)?
                        .query_map(params![now, q, limit], |r| {
                            Ok((owner_with_id_from_row(r)?, chain_from_columns(r, 4)?))
                        })?
                        .collect::<Result<Vec<_>, _>>()?;
                    for ((id, queue, kind, attempt), link) in &rows {
                        if let Some(link) = link {
                            chain_requeue_step(conn, id, link)?;
                            chain_resume_rest(conn, link.id.as_str(), link.index)?;
                        }
                        append_event(
                            conn,
                            id,
                            queue,
                            kind,
                            EventType::Enqueued,
                            now,
                            *attempt,
                            &retried(),
                        )?;
                    }
                    Ok(to_i64(rows.len()))
                })
                .await?;
            if n > 0 {
                self.wake();
            }
            done += n;
            if n < limit {
                break;
            }
        }
        Ok(u64::try_from(done).unwrap_or(0))
    }

    async fn rescue(&self, max_interruptions: u32) -> BrokerResult<Vec<JobId>> {
        let max = i64::from(max_interruptions);
        let rescued = self
            .write(move |conn, now| {
                let mut ids = Vec::new();
                let poisoned = conn
                    .prepare_cached(sql::RESCUE_POISON)?
                    .query_map(params![now, max], |r| {
                        Ok((
                            owner_with_id_from_row(r)?,
                            r.get::<_, String>(4)?,
                            chain_from_columns(r, 5)?,
                        ))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                for ((id, queue, kind, attempt), error, link) in poisoned {
                    if let Some(link) = &link {
                        chain_cancel_rest(conn, now, link, &id, "dead")?;
                    }
                    let interrupted = lease_expired();
                    append_event(
                        conn,
                        &id,
                        &queue,
                        &kind,
                        EventType::Interrupted,
                        now,
                        attempt,
                        &interrupted,
                    )?;
                    let dead = EventData {
                        error: Some(error),
                        ..EventData::default()
                    };
                    let stored_attempt = attempt.saturating_sub(1);
                    append_event(
                        conn,
                        &id,
                        &queue,
                        &kind,
                        EventType::Dead,
                        now,
                        stored_attempt,
                        &dead,
                    )?;
                    ids.push(id);
                }
                let requeued = conn
                    .prepare_cached(sql::RESCUE)?
                    .query_map(params![now], owner_with_id_from_row)?
                    .collect::<Result<Vec<_>, _>>()?;
                let any_requeued = !requeued.is_empty();
                for (id, queue, kind, attempt) in requeued {
                    append_event(
                        conn,
                        &id,
                        &queue,
                        &kind,
                        EventType::Interrupted,
                        now,
                        attempt,
                        &lease_expired(),
                    )?;
                    ids.push(id);
                }
                Ok((ids, any_requeued))
            })
            .await?;
        if rescued.1 {
            self.wake();
        }
        Ok(rescued.0)
    }

    async fn get(&self, id: &JobId) -> BrokerResult<Option<Job>> {
        let id = id.clone();
        self.read(move |conn, _| {
            Ok(conn
                .prepare_cached(sql::GET)?
                .query_row([id.as_str()], job_from_row)
                .optional()?)
        })
        .await
    }

    async fn history(&self, id: &JobId) -> BrokerResult<Vec<Event>> {
        let id = id.clone();
        self.read(move |conn, _| {
            Ok(conn
                .prepare_cached(sql::HISTORY)?
                .query_map([id.as_str()], event_from_row)?
                .collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn list(&self, filter: &JobFilter) -> BrokerResult<JobPage> {
        let limit = match filter.limit {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let cursor = match &filter.cursor {
            Some(c) => Some(
                c.parse::<i64>()
                    .map_err(|_| FieldError::new("cursor", "not a cursor this broker issued"))?,
            ),
            None => None,
        };
        // Only the filters given become clauses, so SQLite can pick the index that fits
        // (`?1 IS NULL OR ...` would defeat it). The text varies over 16 shapes at most, each
        // cached as a prepared statement.
        let mut text = String::from(concat!(
            "SELECT ",
            sql::job_columns!(),
            " FROM jobs WHERE 1"
        ));
        let mut args: Vec<SqlValue> = Vec::new();
        if let Some(q) = &filter.queue {
            text.push_str(" AND queue = ?");
            args.push(SqlValue::Text(q.clone()));
        }
        if let Some(st) = filter.state {
            text.push_str(" AND state = ?");
            args.push(SqlValue::Text(st.as_str().to_owned()));
        }
        if let Some(k) = &filter.kind {
            text.push_str(" AND kind = ?");
            args.push(SqlValue::Text(k.clone()));
        }
        if let Some(c) = cursor {
            text.push_str(" AND seq < ?");
            args.push(SqlValue::Integer(c));
        }
        text.push_str(" ORDER BY seq DESC LIMIT ?");
        // One more than asked tells whether another page follows.
        args.push(SqlValue::Integer(to_i64(limit + 1)));
        self.read(move |conn, _| {
            let mut rows = conn
                .prepare_cached(&text)?
                .query_map(rusqlite::params_from_iter(args), |row| {
                    Ok((row.get::<_, i64>(0)?, job_from_row(row)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let next_cursor = if rows.len() > limit {
                rows.truncate(limit);
                rows.last().map(|(seq, _)| seq.to_string())
            } else {
                None
            };
            Ok(JobPage {
                jobs: rows.into_iter().map(|(_, j)| j).collect(),
                next_cursor,
            })
        })
        .await
    }

    async fn queues(&self) -> BrokerResult<Vec<QueueStats>> {
        self.read(move |conn, now| {
            // One read transaction, so counts and recent outcomes describe the same moment.
            let tx = conn.unchecked_transaction()?;
            let mut stats: Vec<QueueStats> = Vec::new();
            fn entry<'a>(stats: &'a mut Vec<QueueStats>, queue: &str) -> &'a mut QueueStats {
                let i = match stats.iter().position(|s| s.queue == queue) {
                    Some(i) => i,
                    None => {
                        stats.push(QueueStats {
                            queue: queue.to_owned(),
                            ..QueueStats::default()
                        });
                        stats.len() - 1
                    }
                };
                &mut stats[i]
            }
            {
                let mut counts = tx.prepare_cached(sql::COUNTS)?;
                let mut rows = counts.query([])?;
                while let Some(row) = rows.next()? {
                    let queue: String = row.get(0)?;
                    let state: String = row.get(1)?;
                    let n: i64 = row.get(2)?;
                    if let Some(st) = JobState::parse(&state) {
                        *entry(&mut stats, &queue).counts.get_mut(st) +=
                            u64::try_from(n).unwrap_or(0);
                    }
                }
                let mut recent = tx.prepare_cached(sql::RECENT_OUTCOMES)?;
                let mut rows = recent.query([now.saturating_sub(60_000)])?;
                while let Some(row) = rows.next()? {
                    let queue: String = row.get(0)?;
                    let kind: String = row.get(1)?;
                    let n = u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0);
                    // Only queues that still hold jobs are listed.
                    let Some(s) = stats.iter_mut().find(|s| s.queue == queue) else {
                        continue;
                    };
                    if kind == EventType::Succeeded.as_str() {
                        s.processed_last_minute += n;
                    } else {
                        s.failed_last_minute += n;
                    }
                }
            }
            tx.finish()?;
            stats.sort_by(|a, b| a.queue.cmp(&b.queue));
            Ok(stats)
        })
        .await
    }

    async fn events(&self, after: Option<&str>, limit: usize) -> BrokerResult<Vec<Event>> {
        let after = match after {
            Some(a) => a
                .parse::<i64>()
                .map_err(|_| FieldError::new("since", "not an event id this broker issued"))?,
            None => 0,
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = to_i64(limit.min(MAX_EVENTS_PAGE));
        self.read(move |conn, _| {
            Ok(conn
                .prepare_cached(sql::EVENTS_AFTER)?
                .query_map(params![after, limit], event_from_row)?
                .collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn purge(
        &self,
        states: &[JobState],
        before: Millis,
        keep_events: u64,
    ) -> BrokerResult<u64> {
        let mut deleted: u64 = 0;
        // Only finished jobs are ever purged, whatever the caller asks.
        for state in states.iter().copied().filter(|s| s.is_final()) {
            loop {
                let n = self
                    .write(move |conn, _| {
                        let ids = conn
                            .prepare_cached(sql::PURGE_CHUNK)?
                            .query_map(params![state.as_str(), before, CHUNK], |r| {
                                r.get::<_, String>(0)
                            })?
                            .collect::<Result<Vec<_>, _>>()?;
                        delete_events_of(conn, &ids)?;
                        Ok(to_i64(ids.len()))
                    })
                    .await?;
                deleted += u64::try_from(n).unwrap_or(0);
                if n < CHUNK {
                    break;
                }
            }
        }
        let keep = i64::try_from(keep_events).unwrap_or(i64::MAX);
        let cut: Option<i64> = self
            .read(move |conn, _| {
                Ok(conn
                    .prepare_cached(sql::EVENT_CUT)?
                    .query_row([keep], |r| r.get(0))
                    .optional()?)
            })
            .await?;
        if let Some(cut) = cut {
            loop {
                let n = self
                    .write(move |conn, _| {
                        Ok(conn
                            .prepare_cached(sql::TRIM_EVENTS_CHUNK)?
                            .execute(params![cut, TRIM_CHUNK])?)
                    })
                    .await?;
                if to_i64(n) < TRIM_CHUNK {
                    break;
                }
            }
        }
        Ok(deleted)
    }

    async fn drop_queue(&self, queue: &str) -> BrokerResult<u64> {
        let mut deleted: u64 = 0;
        loop {
            let queue = queue.to_owned();
            let n = self
                .write(move |conn, _| {
                    let ids = conn
                        .prepare_cached(sql::DROP_CHUNK)?
                        .query_map(params![queue, CHUNK], |r| r.get::<_, String>(0))?
                        .collect::<Result<Vec<_>, _>>()?;
                    delete_events_of(conn, &ids)?;
                    Ok(to_i64(ids.len()))
                })
                .await?;
            deleted += u64::try_from(n).unwrap_or(0);
            if n < CHUNK {
                return Ok(deleted);
            }
        }
    }

    async fn ping(&self) -> BrokerResult<()> {
        self.read(|conn, _| {
            conn.prepare_cached(sql::PING)?
                .query_row([], |r| r.get::<_, i64>(0))?;
            Ok(())
        })
        .await
    }
}

/// Ends one attempt. A stale lease is an answer (`LeaseLost`), not a failure of the batch.
/// `requeued` is set when the attempt's end made a job due (a release, a snooze, a chain's
/// next step).
fn finish_one(
    conn: &Connection,
    now: Millis,
    f: Finish,
    requeued: &mut bool,
) -> Result<BrokerResult<()>, Fail> {
    let makes_due = matches!(f.outcome, Outcome::Released { .. } | Outcome::Snooze { .. });
    let id = f.lease.job_id.as_str();
    let token = token_to_i64(f.lease.token);
    let (text, arg3, arg4, event, data): (&str, SqlValue, SqlValue, EventType, EventData) =
        match f.outcome {
            Outcome::Succeeded { result } => (
                sql::FINISH_SUCCEEDED,
                SqlValue::Text(serde_json::to_string(&result)?),
                SqlValue::Integer(now),
                EventType::Succeeded,
                EventData {
                    result: Some(result),
                    ..EventData::default()
                },
            ),
            Outcome::Retry { at, error } => (
                sql::FINISH_RETRY,
                SqlValue::Integer(at),
                SqlValue::Text(error.clone()),
                EventType::Retrying,
                EventData {
                    error: Some(error),
                    ..EventData::default()
                },
            ),
            Outcome::Dead { error } => (
                sql::FINISH_DEAD,
                SqlValue::Text(error.clone()),
                SqlValue::Integer(now),
                EventType::Dead,
                EventData {
                    error: Some(error),
                    ..EventData::default()
                },
            ),
            // There is no "scheduled" event type: a snoozed job is enqueued again, for later.
            Outcome::Snooze { at } => (
                sql::FINISH_SNOOZE,
                SqlValue::Integer(at),
                SqlValue::Null,
                EventType::Enqueued,
                EventData {
                    message: Some("snoozed".into()),
                    ..EventData::default()
                },
            ),
            Outcome::Released { reason } => (
                sql::FINISH_RELEASED,
                SqlValue::Integer(now),
                SqlValue::Null,
                EventType::Interrupted,
                EventData {
                    message: Some(reason),
                    ..EventData::default()
                },
            ),
        };
    let mut stmt = conn.prepare_cached(text)?;
    // Succeeded and dead also return the job's chain link, to move its chain along.
    let decode = |r: &Row<'_>| -> rusqlite::Result<_> {
        let owner = owner_from_row(r)?;
        let link = if r.as_ref().column_count() > 3 {
            chain_from_columns(r, 3)?
        } else {
            None
        };
        Ok((owner, link))
    };
    // Statements with three parameters ignore the fourth: bind only what each one declares.
    let row = if stmt.parameter_count() == 4 {
        stmt.query_row(params![id, token, arg3, arg4], decode)
    } else {
        stmt.query_row(params![id, token, arg3], decode)
    }
    .optional()?;
    let Some(((queue, kind, attempt), link)) = row else {
        return Ok(Err(BrokerError::LeaseLost(f.lease.job_id)));
    };
    append_event(
        conn,
        &f.lease.job_id,
        &queue,
        &kind,
        event,
        now,
        attempt,
        &data,
    )?;
    *requeued |= makes_due;
    if let Some(link) = link {
        match event {
            EventType::Succeeded => {
                if let (Some(next), Some(result)) = (&link.next, &data.result) {
                    *requeued |= chain_promote(conn, now, next, result, link.index)?;
                }
            }
            _ => chain_cancel_rest(conn, now, &link, &f.lease.job_id, "dead")?,
        }
    }
    Ok(Ok(()))
}

/// Reads `chain_id, chain_index, chain_next` starting at column `at`.
fn chain_from_columns(r: &Row<'_>, at: usize) -> rusqlite::Result<Option<ChainLink>> {
    let Some(id) = r.get::<_, Option<String>>(at)? else {
        return Ok(None);
    };
    let next = if r.as_ref().column_count() > at + 2 {
        r.get::<_, Option<String>>(at + 2)?.map(JobId)
    } else {
        None
    };
    Ok(Some(ChainLink {
        id: JobId(id),
        index: to_u32(r.get(at + 1)?),
        next,
    }))
}

/// Queues the step after a succeeded one, handing it the result as `input`. True when it was
/// waiting and is queued now.
fn chain_promote(
    conn: &Connection,
    now: Millis,
    next: &JobId,
    result: &Value,
    index: u32,
) -> Result<bool, Fail> {
    let row = conn
        .prepare_cached(sql::CHAIN_PROMOTE)?
        .query_row(
            params![next.as_str(), serde_json::to_string(result)?, now],
            owner_from_row,
        )
        .optional()?;
    if let Some((queue, kind, attempt)) = row {
        let data = EventData {
            message: Some(format!("chain: step {index} succeeded")),
            ..EventData::default()
        };
        append_event(
            conn,
            next,
            &queue,
            &kind,
            EventType::Enqueued,
            now,
            attempt,
            &data,
        )?;
        return Ok(true);
    }
    Ok(false)
}

/// Cancels the waiting steps after a step that ended `dead` or `cancelled`.
fn chain_cancel_rest(
    conn: &Connection,
    now: Millis,
    link: &ChainLink,
    step: &JobId,
    how: &str,
) -> Result<(), Fail> {
    let reason = format!("chain: step {} ({step}) is {how}", link.index);
    let rows = conn
        .prepare_cached(sql::CHAIN_CANCEL_REST)?
        .query_map(
            params![link.id.as_str(), i64::from(link.index), now, reason],
            owner_with_id_from_row,
        )?
        .collect::<Result<Vec<_>, _>>()?;
    for (id, queue, kind, attempt) in rows {
        let data = EventData {
            message: Some(reason.clone()),
            ..EventData::default()
        };
        append_event(
            conn,
            &id,
            &queue,
            &kind,
            EventType::Cancelled,
            now,
            attempt,
            &data,
        )?;
    }
    Ok(())
}

/// A retried later step of a chain runs with its predecessor's result: queued with it as
/// `input` when the predecessor succeeded, else back to `waiting` for it. Returns the state
/// it set, if it changed the step.
fn chain_requeue_step(
    conn: &Connection,
    id: &JobId,
    link: &ChainLink,
) -> Result<Option<JobState>, Fail> {
    if link.index == 0 {
        return Ok(None);
    }
    let pred: Option<(String, Option<String>)> = conn
        .prepare_cached(sql::CHAIN_PREDECESSOR)?
        .query_row(params![link.id.as_str(), i64::from(link.index - 1)], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let (state, input) = match pred {
        Some((st, result)) if st == JobState::Succeeded.as_str() => (JobState::Queued, result),
        _ => (JobState::Waiting, None),
    };
    conn.prepare_cached(sql::CHAIN_REQUEUE_STEP)?
        .execute(params![id.as_str(), state.as_str(), input])?;
    Ok(Some(state))
}

/// Puts the steps cancelled after a retried step back to `waiting`.
fn chain_resume_rest(conn: &Connection, chain_id: &str, index: u32) -> Result<(), Fail> {
    conn.prepare_cached(sql::CHAIN_RESUME_REST)?
        .execute(params![chain_id, i64::from(index)])?;
    Ok(())
}

/// Why an update matched no row: the job is missing, or its state forbids the change.
fn refusal(conn: &Connection, id: JobId, message: &'static str) -> Fail {
    let state: Result<Option<String>, _> = conn
        .prepare_cached(sql::STATE_OF)
        .and_then(|mut s| s.query_row([id.as_str()], |r| r.get(0)).optional());
    match state {
        Err(e) => Fail::Sql(e),
        Ok(None) => BrokerError::NotFound(id).into(),
        Ok(Some(st)) => match JobState::parse(&st) {
            Some(state) => BrokerError::Conflict { id, state, message }.into(),
            None => bad_column(&st).into(),
        },
    }
}

fn delete_events_of(conn: &Connection, ids: &[String]) -> Result<(), Fail> {
    let mut stmt = conn.prepare_cached(sql::DELETE_JOB_EVENTS)?;
    for id in ids {
        stmt.execute([id])?;
    }
    Ok(())
}

fn retried() -> EventData {
    EventData {
        message: Some("retried".into()),
        ..EventData::default()
    }
}

fn lease_expired() -> EventData {
    EventData {
        message: Some("lease expired".into()),
        ..EventData::default()
    }
}

#[allow(clippy::too_many_arguments)] // the columns of one event row
fn append_event(
    conn: &Connection,
    job_id: &JobId,
    queue: &str,
    kind: &str,
    event: EventType,
    at: Millis,
    attempt: u32,
    data: &EventData,
) -> Result<(), Fail> {
    let result = match &data.result {
        Some(v) => Some(serde_json::to_string(v)?),
        None => None,
    };
    conn.prepare_cached(sql::INSERT_EVENT)?.execute(params![
        job_id.as_str(),
        queue,
        kind,
        event.as_str(),
        at,
        i64::from(attempt),
        data.progress.map(i64::from),
        data.message,
        result,
        data.error,
    ])?;
    Ok(())
}

// ---- Row decoding ----------------------------------------------------------------------------

/// `queue, kind, attempt` of a fenced update.
fn owner_from_row(r: &Row<'_>) -> rusqlite::Result<(String, String, u32)> {
    Ok((r.get(0)?, r.get(1)?, to_u32(r.get(2)?)))
}

/// `id, queue, kind, attempt` of a bulk update.
fn owner_with_id_from_row(r: &Row<'_>) -> rusqlite::Result<(JobId, String, String, u32)> {
    Ok((JobId(r.get(0)?), r.get(1)?, r.get(2)?, to_u32(r.get(3)?)))
}

/// Decodes [`sql::job_columns`] (column 0, `seq`, is left to the caller).
fn job_from_row(r: &Row<'_>) -> rusqlite::Result<Job> {
    let state: String = r.get(6)?;
    Ok(Job {
        id: JobId(r.get(1)?),
        queue: r.get(2)?,
        kind: r.get(3)?,
        payload: json_column(r, 4)?.unwrap_or(Value::Null),
        priority: u8::try_from(r.get::<_, i64>(5)?).unwrap_or(u8::MAX),
        state: JobState::parse(&state).ok_or_else(|| conversion(6, bad_column(&state)))?,
        run_at: r.get(7)?,
        attempt: to_u32(r.get(8)?),
        max_retries: to_u32(r.get(9)?),
        timeout_ms: r
            .get::<_, Option<i64>>(10)?
            .map(|v| u64::try_from(v).unwrap_or(0)),
        interruptions: to_u32(r.get(11)?),
        interruption_streak: to_u32(r.get(12)?),
        lease_token: u64::try_from(r.get::<_, i64>(13)?).unwrap_or(0),
        lease_until: r.get(14)?,
        progress: u8::try_from(r.get::<_, i64>(15)?).unwrap_or(0),
        progress_message: r.get(16)?,
        result: json_column(r, 17)?,
        last_error: r.get(18)?,
        unique_key: r.get(19)?,
        created_at: r.get(20)?,
        started_at: r.get(21)?,
        finished_at: r.get(22)?,
        chain: r
            .get::<_, Option<String>>(23)?
            .map(|id| -> rusqlite::Result<ChainLink> {
                Ok(ChainLink {
                    id: JobId(id),
                    index: to_u32(r.get(24)?),
                    next: r.get::<_, Option<String>>(25)?.map(JobId),
                })
            })
            .transpose()?,
    })
}

/// Decodes [`sql::event_columns`].
fn event_from_row(r: &Row<'_>) -> rusqlite::Result<Event> {
    let kind_of_event: String = r.get(1)?;
    Ok(Event {
        id: r.get::<_, i64>(0)?.to_string(),
        kind_of_event: EventType::parse(&kind_of_event)
            .ok_or_else(|| conversion(1, bad_column(&kind_of_event)))?,
        job_id: JobId(r.get(2)?),
        queue: r.get(3)?,
        kind: r.get(4)?,
        at: r.get(5)?,
        attempt: to_u32(r.get(6)?),
        progress: r
            .get::<_, Option<i64>>(7)?
            .map(|p| u8::try_from(p).unwrap_or(0)),
        message: r.get(8)?,
        result: json_column(r, 9)?,
        error: r.get(10)?,
    })
}

fn json_column(r: &Row<'_>, idx: usize) -> rusqlite::Result<Option<Value>> {
    match r.get::<_, Option<String>>(idx)? {
        Some(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| conversion(idx, e)),
        None => Ok(None),
    }
}

fn conversion(idx: usize, e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
}

/// A stored value this version does not know (a newer `hopper` wrote it, or the file was edited).
#[derive(Debug, thiserror::Error)]
#[error("unexpected value {0:?} in the database")]
struct BadColumn(String);

fn bad_column(value: &str) -> BadColumn {
    BadColumn(value.to_owned())
}

// ---- Numbers ---------------------------------------------------------------------------------

fn to_i64<T: TryInto<i64>>(v: T) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

fn to_u32(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

/// Lease tokens are `u64` in Hopper and `i64` in SQLite; they start at 0 and grow by one per
/// fetch, so the high bit is never reached.
fn token_to_i64(token: u64) -> i64 {
    i64::try_from(token).unwrap_or(i64::MAX)
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

// ---- Errors ----------------------------------------------------------------------------------

/// What a closure run on a connection fails with: SQLite, JSON, or a broker answer such as
/// `NotFound`. Private, so that no rusqlite type reaches a public signature.
enum Fail {
    Sql(rusqlite::Error),
    Broker(BrokerError),
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Fail::Sql(e)
    }
}

impl From<BrokerError> for Fail {
    fn from(e: BrokerError) -> Self {
        Fail::Broker(e)
    }
}

impl From<serde_json::Error> for Fail {
    fn from(e: serde_json::Error) -> Self {
        Fail::Broker(BrokerError::backend(e))
    }
}

impl From<BadColumn> for Fail {
    fn from(e: BadColumn) -> Self {
        Fail::Broker(BrokerError::backend(e))
    }
}

impl Fail {
    fn into_broker(self) -> BrokerError {
        match self {
            Fail::Sql(e) => sql_error(e),
            Fail::Broker(e) => e,
        }
    }
}

/// SQLite gave up waiting for another connection's lock: worth retrying, not a broken broker.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

fn sql_error(e: rusqlite::Error) -> BrokerError {
    if is_busy(&e) {
        BrokerError::Unavailable(Box::new(e))
    } else {
        BrokerError::Backend(Box::new(e))
    }
}

/// A failure that ends a whole batch (its transaction could not begin or commit). Kept as text
/// so that every command of the batch gets its own copy.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
struct BatchFailure {
    busy: bool,
    message: String,
}

impl BatchFailure {
    fn from_sql(e: &rusqlite::Error, what: &str) -> Self {
        Self {
            busy: is_busy(e),
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

fn writer_gone() -> BrokerError {
    BrokerError::Unavailable("the SQLite writer thread has stopped".into())
}

// ---- Opening and migrations ------------------------------------------------------------------

/// Opens the file, retrying while another process holds it locked: two processes opening a
/// new file at once race to switch it to WAL and migrate it, and switching the journal mode
/// does not wait on the busy timeout.
fn open_connections(path: &Path) -> BrokerResult<(Connection, Connection)> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    let mut wait = Duration::from_millis(10);
    loop {
        match open_connections_once(path) {
            Err(BrokerError::Unavailable(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

fn open_connections_once(path: &Path) -> BrokerResult<(Connection, Connection)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            BrokerError::Config(format!("cannot create directory {}: {e}", dir.display()))
        })?;
    }
    let writer = connect(path).map_err(sql_error)?;
    // WAL is a property of the file: set once, by the writer, outside any transaction.
    let mode: String = writer
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(sql_error)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(BrokerError::Config(format!(
            "{}: cannot switch to WAL mode (journal_mode is {mode})",
            path.display()
        )));
    }
    migrate(&writer)?;
    let reader = connect(path).map_err(sql_error)?;
    // The reader must never write, even by mistake.
    reader
        .pragma_update(None, "query_only", true)
        .map_err(sql_error)?;
    Ok((writer, reader))
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // In WAL mode NORMAL syncs at checkpoints, not at every commit: a power cut may lose the
    // last commits but never corrupts the file; a process crash loses nothing.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Applies every migration newer than the file's `user_version`, in one transaction that also
/// records the new version; `BEGIN IMMEDIATE` keeps two processes from migrating at once.
fn migrate(conn: &Connection) -> BrokerResult<()> {
    let run = || -> rusqlite::Result<Result<(), BrokerError>> {
        conn.execute_batch(sql::BEGIN)?;
        let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
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
            Err(sql_error(e))
        }
    }
}

// ---- The writer thread -----------------------------------------------------------------------

/// A command for the writer thread: run inside the batch's transaction, then answer.
trait WriteOp: Send {
    /// Runs the command; true when it succeeded (its savepoint is kept).
    fn run(&mut self, conn: &Connection, now: Millis) -> bool;
    /// The batch failed as a whole: whatever `run` produced is void.
    fn fail(&mut self, why: &BatchFailure);
    /// Sends the answer (after the commit).
    fn answer(self: Box<Self>);
}

struct Op<T, F> {
    work: Option<F>,
    result: Option<BrokerResult<T>>,
    reply: oneshot::Sender<BrokerResult<T>>,
}

impl<T, F> WriteOp for Op<T, F>
where
    T: Send,
    F: FnOnce(&Connection, Millis) -> Result<T, Fail> + Send,
{
    fn run(&mut self, conn: &Connection, now: Millis) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        let result = work(conn, now).map_err(Fail::into_broker);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn fail(&mut self, why: &BatchFailure) {
        self.work = None;
        self.result = Some(Err(why.to_error()));
    }

    fn answer(self: Box<Self>) {
        let result = self.result.unwrap_or_else(|| {
            Err(BatchFailure {
                busy: false,
                message: "command was not run".into(),
            }
            .to_error())
        });
        // The caller may have stopped waiting (e.g. a timed-out fetch); nothing to tell then.
        let _ = self.reply.send(result);
    }
}

/// The writer thread: runs until every [`SqliteBroker`] handle is dropped.
fn run_writer(conn: Connection, clock: Arc<dyn Clock>, rx: mpsc::Receiver<Box<dyn WriteOp>>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        run_batch(&conn, clock.as_ref(), &mut batch);
        for op in batch {
            op.answer();
        }
    }
}

fn exec(conn: &Connection, text: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(text)?.execute([])?;
    Ok(())
}

/// Runs a batch in one transaction, each command in its own savepoint.
fn run_batch(conn: &Connection, clock: &dyn Clock, batch: &mut [Box<dyn WriteOp>]) {
    let fail_all = |batch: &mut [Box<dyn WriteOp>], why: BatchFailure| {
        tracing::warn!(error = %why, commands = batch.len(), "sqlite write batch failed");
        for op in batch.iter_mut() {
            op.fail(&why);
        }
    };
    if let Err(e) = exec(conn, sql::BEGIN) {
        fail_all(batch, BatchFailure::from_sql(&e, "begin"));
        return;
    }
    for i in 0..batch.len() {
        if let Err(e) = exec(conn, sql::SAVEPOINT) {
            rollback(conn);
            fail_all(batch, BatchFailure::from_sql(&e, "savepoint"));
            return;
        }
        let ok = batch[i].run(conn, clock.now_ms());
        if conn.is_autocommit() {
            // SQLite rolled the whole transaction back on its own (e.g. disk full): every
            // earlier command of the batch is void too.
            fail_all(
                batch,
                BatchFailure {
                    busy: false,
                    message: "the transaction was rolled back by SQLite".into(),
                },
            );
            return;
        }
        let end = if ok {
            exec(conn, sql::RELEASE)
        } else {
            exec(conn, sql::ROLLBACK_TO).and_then(|()| exec(conn, sql::RELEASE))
        };
        if let Err(e) = end {
            rollback(conn);
            fail_all(batch, BatchFailure::from_sql(&e, "savepoint"));
            return;
        }
    }
    if let Err(e) = exec(conn, sql::COMMIT) {
        rollback(conn);
        fail_all(batch, BatchFailure::from_sql(&e, "commit"));
    }
}

fn rollback(conn: &Connection) {
    if !conn.is_autocommit()
        && let Err(e) = conn.execute_batch(sql::ROLLBACK)
    {
        tracing::error!(error = %e, "sqlite rollback failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (w, _r) = open_connections(&path).expect("first open creates the file");
        let version: i64 = w
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("user_version");
        assert_eq!(version, to_i64(MIGRATIONS.len()));
        drop(w);
        open_connections(&path).expect("reopen applies nothing");

        let conn = Connection::open(&path).expect("open");
        conn.pragma_update(None, "user_version", 99)
            .expect("set version");
        drop(conn);
        let err = open_connections(&path).expect_err("a newer schema is refused");
        assert!(matches!(err, BrokerError::Config(_)), "got {err:?}");
    }

    #[test]
    fn busy_is_unavailable() {
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert!(matches!(sql_error(busy), BrokerError::Unavailable(_)));
        let other = rusqlite::Error::QueryReturnedNoRows;
        assert!(matches!(sql_error(other), BrokerError::Backend(_)));
    }
}
