//! The broker seam: where jobs are stored and how they change state.
//!
//! [`Broker`] speaks only Hopper types: no SQLite or Redis type crosses it, so the pool, the
//! HTTP API and the CLI work unchanged on either. Each implementation guarantees:
//!
//! - **Atomic transitions.** Every method that changes a job changes its state and appends its
//!   event (`crate::event`) in one transaction (SQLite) or one script (Redis).
//! - **Fenced leases.** [`Broker::fetch`] moves `queued -> running` and bumps the job's lease
//!   token. Every later write of that attempt ([`Broker::finish`], [`Broker::progress`],
//!   [`Broker::heartbeat`]) carries the token and is refused with [`BrokerError::LeaseLost`]
//!   when it is stale, so a worker presumed dead can never overwrite a newer attempt.
//! - **Strict priorities, FIFO inside a level.** Fetch takes the due job with the lowest
//!   priority number, then the earliest due time, then the earliest enqueued.
//! - **One clock per store.** Whether a lease is live and whether a job is due is decided on
//!   one clock that every node sharing the store agrees on: the local clock for SQLite (one
//!   machine), Redis' own (`TIME`) for Redis, never a calling node's. The due times the pool
//!   hands over ([`Outcome::Retry`], [`Outcome::Snooze`]) are read as delays from the caller's
//!   clock, so that a node whose clock is off still schedules a retry after its backoff.
//! - **Due work is promoted by fetch.** `scheduled` and `retrying` jobs whose time has come are
//!   fetched as if queued at their due time: no separate poller has to run for them to start.
//!   Each fetch promotes at most 1 000 of them, earliest due first, so that its work stays
//!   bounded however many jobs fall due at once; the rest follow over the next fetches.
//!
//! Policy lives elsewhere: *whether* a failed job retries, and when, is the pool's decision
//! (`crate::pool`, `crate::retry`); the broker records what it is told.
//!
//! ```text
//!   enqueue ──> scheduled ──due──> queued ──fetch──> running ──finish(Succeeded)──> succeeded
//!                  ^                 ^  ^               │ ──finish(Retry)──> retrying ──due──> queued
//!                  │                 │  │               │ ──finish(Dead)───> dead
//!                  └──finish(Snooze)─┼──┼───────────────┤
//!                                    │  └──rescue / finish(Released)──┘ (interrupted)
//!                                    └──── retry (dead or cancelled)
//!   cancel: any non-final state ──> cancelled
//!   chains: a step after the first is enqueued `waiting`; when the step before it succeeds it
//!   becomes `queued` with that result under `payload.input`; a step that ends `dead` or
//!   `cancelled` cancels the waiting steps after it; retrying it puts them back to `waiting`
//! ```
//!
//! Chains and retention: a retried later step runs with its predecessor's result (queued
//! with it when the predecessor succeeded, else `waiting` until it does), so it needs its
//! predecessor to exist. [`Broker::purge`] therefore never deletes a chain step while the step
//! after it exists: a chain is purged from its end, each step once every later step is gone,
//! and a chain whose steps are all due goes whole in one call. A succeeded step whose later
//! step died is kept as long as the dead one is (`[retention] dead`, not `succeeded`). The
//! other way out, running a retried step with the input it stored, was not taken: a step
//! cancelled before its predecessor succeeded has no input to run with.

pub mod circuits;
#[cfg(any(feature = "sqlite", feature = "redis"))]
mod delegate;
pub mod inbox;
pub mod rate;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::Clock;
use crate::error::{BrokerError, BrokerResult};
use crate::event::Event;
use crate::field::FieldError;
use crate::job::{Job, JobId, JobState, Lease, NewJob, valid_name};
use crate::nodes::WorkerNode;
use crate::time::Timestamp;

pub use self::circuits::Circuit;
pub use self::inbox::{Appended, InboxEntry, NewInboxEntry, WebPush};
pub use rate::{JobRate, RatedFetch};

/// The result of enqueueing one job: the job as the broker stored it, so a caller never has
/// to read back what it just wrote.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Enqueued {
    /// The new job as stored; or the existing job, as it is now, when its `unique_key` (or its
    /// chain's) was taken.
    pub job: Job,
    /// False when a job with the same `unique_key` already existed and nothing was created.
    pub created: bool,
}

/// How an attempt ended, as the pool reports it to the broker.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// `running -> succeeded` with the handler's result.
    Succeeded { result: Value },
    /// `running -> retrying`, due again at `at`.
    Retry { at: Timestamp, error: String },
    /// `running -> dead` (retries exhausted, or a permanent failure).
    Dead { error: String },
    /// `running -> scheduled` at `at`; the attempt is not counted. A `reason` is recorded as
    /// the job's `last_error`, so that a job that keeps being put off says why (a kind no
    /// worker serves); without one, `last_error` is left as it was.
    Snooze {
        at: Timestamp,
        reason: Option<String>,
    },
    /// `running -> queued` at once, the attempt not counted: the worker is shutting down and
    /// gives the job back instead of letting its lease run out. Emits `job.released`, not
    /// `job.interrupted`: nothing went wrong with the job, so `interruptions` and the
    /// poison-pill streak stay as they were (a release neither counts nor forgives one).
    Released { reason: String },
}

/// One attempt's end: which lease, and how it ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Finish {
    pub lease: Lease,
    pub outcome: Outcome,
}

/// What a heartbeat learned about one lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseStatus {
    /// Extended.
    Held,
    /// The job was cancelled by a user: the handler should stop.
    Cancelled,
    /// Another attempt owns the job, or it no longer runs: the handler's writes will be refused.
    Lost,
}

/// A job whose attempt a rescue ended ([`Broker::rescue`]), with what the rescuer's metrics
/// count it by, as the rescue left it: read back later, the job may have moved on (run
/// again, even died of something else).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rescued {
    pub id: JobId,
    pub queue: String,
    pub kind: String,
    /// [`JobState::Queued`] (interrupted, to run again) or [`JobState::Dead`] (a poison pill).
    pub state: JobState,
}

/// Filters for [`Broker::list`]. Pages run newest first.
///
/// A queue or kind that no job can have (a queue name [`NewJob::validate`] would refuse, an
/// empty kind or one over 128 bytes of UTF-8) is a client's mistake, refused with
/// [`BrokerError::Invalid`] naming `queue` or `kind`, on every broker; a valid name that no job
/// has is an empty page. So is a `cursor` the broker never issued (naming `cursor`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFilter {
    pub queue: Option<String>,
    pub state: Option<JobState>,
    pub kind: Option<String>,
    /// At most this many jobs (the broker caps it at 1,000); 0 means the default page of 100.
    pub limit: usize,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl JobFilter {
    /// The page size a broker uses for `limit` 0.
    pub const DEFAULT_LIMIT: usize = 100;
    /// The largest page a broker returns.
    pub const MAX_LIMIT: usize = 1000;

    /// Refuses a queue or kind name no job can have (see [`NewJob::validate`] for the rules),
    /// so that both brokers answer it alike. Brokers call it first thing in `list`.
    pub fn check(&self) -> Result<(), FieldError> {
        if let Some(q) = &self.queue
            && !valid_name(q)
        {
            return Err(FieldError::new(
                "queue",
                "must be 1 to 64 characters of letters, digits, '-', '_' or '.'",
            ));
        }
        if let Some(k) = &self.kind {
            crate::job::check_kind(k)?;
        }
        Ok(())
    }

    /// The page size to read: `limit`, or the default for 0, capped.
    pub fn page_size(&self) -> usize {
        match self.limit {
            0 => Self::DEFAULT_LIMIT,
            n => n.min(Self::MAX_LIMIT),
        }
    }
}

/// A page of jobs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    /// Pass back to get the next page; `None` on the last page. A page may hold fewer jobs
    /// than asked, even none, while this is set: the Redis broker scans a bounded number of
    /// ids a page, so a filter matching few of many jobs is answered over several pages.
    pub next_cursor: Option<String>,
}

/// Jobs of one queue by state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCounts {
    pub waiting: u64,
    pub scheduled: u64,
    pub queued: u64,
    pub running: u64,
    pub retrying: u64,
    pub succeeded: u64,
    pub dead: u64,
    pub cancelled: u64,
}

impl StateCounts {
    /// The count for one state.
    pub fn get(&self, state: JobState) -> u64 {
        match state {
            JobState::Waiting => self.waiting,
            JobState::Scheduled => self.scheduled,
            JobState::Queued => self.queued,
            JobState::Running => self.running,
            JobState::Retrying => self.retrying,
            JobState::Succeeded => self.succeeded,
            JobState::Dead => self.dead,
            JobState::Cancelled => self.cancelled,
        }
    }

    /// Jobs in every state.
    pub fn total(&self) -> u64 {
        JobState::ALL.iter().map(|s| self.get(*s)).sum()
    }

    /// A mutable count for one state.
    pub fn get_mut(&mut self, state: JobState) -> &mut u64 {
        match state {
            JobState::Waiting => &mut self.waiting,
            JobState::Scheduled => &mut self.scheduled,
            JobState::Queued => &mut self.queued,
            JobState::Running => &mut self.running,
            JobState::Retrying => &mut self.retrying,
            JobState::Succeeded => &mut self.succeeded,
            JobState::Dead => &mut self.dead,
            JobState::Cancelled => &mut self.cancelled,
        }
    }
}

/// One queue's numbers, as `hopper queues` and `GET /v1/queues` show them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    pub queue: String,
    pub counts: StateCounts,
    pub paused: bool,
    /// Jobs that succeeded in the last minute.
    pub processed_last_minute: u64,
    /// Attempts that failed (retrying or dead) in the last minute.
    pub failed_last_minute: u64,
}

/// The store of jobs. See the module docs for the guarantees every implementation gives.
#[async_trait]
pub trait Broker: Send + Sync + std::fmt::Debug + 'static {
    /// Short name for logs and `hopper bench` output: `"sqlite"` or `"redis"`.
    fn name(&self) -> &'static str;

    /// Stores new jobs, all or none, each as [`NewJob::stored`] says, appending
    /// `job.enqueued` for each, and answers each job as stored. A job whose `unique_key` is
    /// taken is not created; its entry in the answer is the existing job.
    ///
    /// A `unique_key` (an `Idempotency-Key`, a schedule's tick) is unique **within a queue**:
    /// the same key on two queues names two jobs. Per queue keeps every Redis key of a job in
    /// its queue's Cluster slot, and loses nothing: a chain's steps all live on its queue and a
    /// schedule has a fixed queue. A key is free again once its job is purged.
    ///
    /// All or none, and its one limit: every job is checked below before anything is
    /// stored, so bad input fails the whole batch. SQLite stores a batch in one transaction.
    /// Redis stores it in one script call per queue and per 500 jobs, pipelined: should the
    /// connection to Redis fail between two of those calls, the calls already run stand (each
    /// of them whole), and the caller, which sees the error, may retry the batch; with unique
    /// keys the retry creates only what is missing.
    ///
    /// This is the seam every new job passes, whoever sends it (the API, the CLI, schedules,
    /// benchmarks), so it is where the engine's rules of a job ([`NewJob::validate`]) are
    /// checked, once, before anything is stored: one invalid job fails the whole batch with
    /// [`BrokerError::Invalid`] naming its field (`jobs[1].priority` in a batch of several).
    /// Brokers implement [`Broker::store`], not this.
    async fn enqueue(&self, jobs: Vec<NewJob>) -> BrokerResult<Vec<Enqueued>> {
        let several = jobs.len() > 1;
        for (i, job) in jobs.iter().enumerate() {
            job.validate().map_err(|e| {
                BrokerError::Invalid(if several {
                    e.under(&format!("jobs[{i}]"))
                } else {
                    e
                })
            })?;
        }
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        self.store(jobs).await
    }

    /// [`Broker::enqueue`]'s storage half: stores a non-empty batch of checked jobs, all or
    /// none, and answers each as stored.
    async fn store(&self, jobs: Vec<NewJob>) -> BrokerResult<Vec<Enqueued>>;

    /// Leases up to `max` due jobs of `queue` in priority order: `-> running`, attempt + 1,
    /// a new lease token, lease deadline now + `lease`, `started_at` now if the job never
    /// started before (it is the first start, kept across attempts and retries); appends
    /// `job.started` for each.
    async fn fetch(&self, queue: &str, max: usize, lease: Duration) -> BrokerResult<Vec<Job>>;

    /// [`Broker::fetch`] under a job rate (`[[queue]] rate_limit`): leases no more jobs than
    /// `rate` allows now, and advances the queue's rate state in the same transaction or
    /// script as the lease, so that every node fetching with a rate shares one budget (see
    /// [`rate`]). A job held back stays `queued`, its attempt untouched. When the rate allows
    /// no further start now, [`RatedFetch::held_for`] says how long until it does. Nodes that
    /// give the same queue different rates each apply their own to the shared state. The
    /// pool calls [`Broker::fetch`] for a queue without a rate, which costs nothing extra.
    async fn fetch_rated(
        &self,
        queue: &str,
        max: usize,
        lease: Duration,
        rate: JobRate,
    ) -> BrokerResult<RatedFetch>;

    /// When `queue`'s rate next allows a start, if that is later than now (the broker's
    /// clock); `None` when the queue has no rate state or its rate allows a start now. One
    /// cheap read, writing nothing: a queue with `queued` jobs and `Some` here is held back
    /// by its rate ("why is my job not running"). The time is the one the last rated fetch
    /// stored, under that node's rate.
    async fn rate_held_until(&self, queue: &str) -> BrokerResult<Option<Timestamp>>;

    /// Returns when work may be available in one of `queues`, or after `timeout`. Must not
    /// busy-poll; may return early (spuriously).
    async fn wait_for_work(&self, queues: &[String], timeout: Duration) -> BrokerResult<()>;

    /// Extends the leases of running jobs to now + `lease`, in one round-trip, and says for
    /// each whether it is still held.
    async fn heartbeat(&self, leases: &[Lease], lease: Duration) -> BrokerResult<Vec<LeaseStatus>>;

    /// Records a running job's progress (0..=100) and appends `job.progress`.
    async fn progress(
        &self,
        lease: &Lease,
        percent: u8,
        message: Option<String>,
    ) -> BrokerResult<()>;

    /// Saves a running job's checkpoint (see [`Job::checkpoint`]), replacing the one before:
    /// kept across the job's retries, shown with the job. No event. `LeaseLost` when the
    /// lease's token is stale or the job no longer runs.
    async fn checkpoint(&self, lease: &Lease, value: &Value) -> BrokerResult<()>;

    /// Ends attempts, in one transaction or round-trip. Each entry's answer is `Ok`, or
    /// `LeaseLost` when its token is stale (the attempt's result is then discarded).
    async fn finish(&self, batch: Vec<Finish>) -> BrokerResult<Vec<BrokerResult<()>>>;

    /// Cancels a job in any non-final state; returns it as it is now. `Conflict` when final.
    async fn cancel(&self, id: &JobId) -> BrokerResult<Job>;

    /// Puts a `dead` or `cancelled` job back in `queued`, with a fresh set of retries.
    /// `Conflict` in any other state.
    async fn retry(&self, id: &JobId) -> BrokerResult<Job>;

    /// Retries every dead job (of one queue, or of all); returns how many.
    async fn retry_all_dead(&self, queue: Option<&str>) -> BrokerResult<u64>;

    /// Pauses `queue`, for every node sharing this broker: from the next [`Broker::fetch`]
    /// on, no fetch leases its jobs (it answers none), while it still accepts new ones and
    /// its running jobs finish. The check is the broker's, in the fetch itself, so a pause
    /// is honoured at once by every node, not when each node next reads its settings.
    /// Idempotent; the pause is stored and outlives every process. [`Broker::queues`] lists
    /// a paused queue, with `paused` set, even before it holds a job. A queue name no job
    /// can have is [`BrokerError::Invalid`] naming `queue`.
    async fn pause(&self, queue: &str) -> BrokerResult<()>;

    /// Lifts [`Broker::pause`]: the queue's jobs are fetched again, and waiting workers are
    /// woken. Idempotent; resuming a queue that is not paused does nothing.
    async fn resume(&self, queue: &str) -> BrokerResult<()>;

    /// Whether `queue` is paused ([`Broker::pause`]): one lookup, where [`Broker::queues`]
    /// counts every queue's jobs (a scan of every job on SQLite), for "why is my job not
    /// running". A queue name no job can have is [`BrokerError::Invalid`] naming `queue`.
    async fn is_paused(&self, queue: &str) -> BrokerResult<bool> {
        crate::job::check_queue(queue)?;
        Ok(self
            .queues()
            .await?
            .iter()
            .any(|s| s.queue == queue && s.paused))
    }

    /// Returns running jobs whose lease expired to `queued` (an interruption, not a failed
    /// attempt; `job.interrupted`), or to `dead` once a job has been interrupted
    /// `max_interruptions` times in a row. Returns the rescued jobs, with their queue, kind
    /// and new state, so that counting them costs no read back.
    async fn rescue(&self, max_interruptions: u32) -> BrokerResult<Vec<Rescued>>;

    /// One job.
    async fn get(&self, id: &JobId) -> BrokerResult<Option<Job>>;

    /// A job's events, oldest first.
    async fn history(&self, id: &JobId) -> BrokerResult<Vec<Event>>;

    /// A page of jobs, newest first. A filter naming a queue or kind no job can have, or a
    /// cursor this broker did not issue, is [`BrokerError::Invalid`] (see [`JobFilter`]).
    async fn list(&self, filter: &JobFilter) -> BrokerResult<JobPage>;

    /// Every queue that holds jobs, with counts by state.
    async fn queues(&self) -> BrokerResult<Vec<QueueStats>>;

    /// Events after the event id `after` (from the start of the log when `None`), oldest
    /// first, at most `limit`. An `after` this broker did not issue is
    /// [`BrokerError::Invalid`] naming `since`, whatever the limit.
    async fn events(&self, after: Option<&str>, limit: usize) -> BrokerResult<Vec<Event>>;

    /// The id of the newest event of the log as [`Broker::events`] would hand it out now
    /// (`None` for an empty log): where following "from now on" starts, `events(end, _)`
    /// answering only what comes after it. A round trip or two however long the log is
    /// (paging through it to its end cost a long log's whole length, per queue on Redis).
    async fn events_end(&self) -> BrokerResult<Option<String>>;

    /// Whether retention dropped an event that came after the event id `after` (an id this
    /// broker issued; otherwise [`BrokerError::Invalid`] naming `since`): `Some` when the
    /// broker tells it from its own records of trimming, `None` when it leaves it to the
    /// caller, who judges by the oldest event the log holds (one log trimmed from its start:
    /// the first event after `after` is then the oldest held, and is not `after`). The Redis
    /// broker trims each queue's stream on its own, so another queue's older events hid a
    /// trimmed cursor there.
    async fn trimmed_after(&self, after: &str) -> BrokerResult<Option<bool>>;

    /// Returns when the log may hold events after the event id `after` (any event when
    /// `None`), or after `timeout`: how a follower of [`Broker::events`] waits without
    /// polling. May return early (spuriously); never busy-polls. An `after` this broker did
    /// not issue is [`BrokerError::Invalid`] naming `since`, as for `events`.
    async fn wait_for_events(&self, after: Option<&str>, timeout: Duration) -> BrokerResult<()>;

    /// How long a follower of [`Broker::events`] that found nothing new waits in
    /// [`Broker::wait_for_events`], given `short`, its bound on how late an event the broker
    /// cannot signal may arrive (another process's, on SQLite): `short`, unless the broker's
    /// waits wake on every new event of every process and queue (Redis), which then waits
    /// longer at no cost in delay, sparing the log a read per wait.
    fn events_idle_wait(&self, short: Duration) -> Duration {
        short
    }

    /// Deletes finished jobs that finished before `before`, of the given states, and trims
    /// the event log to its newest `keep_events` entries. Returns the jobs deleted. A chain
    /// step is kept while the step after it exists (see "Chains and retention" above).
    async fn purge(
        &self,
        states: &[JobState],
        before: Timestamp,
        keep_events: u64,
    ) -> BrokerResult<u64>;

    /// Deletes every job and event of a queue (used by `hopper bench` to clean up).
    async fn drop_queue(&self, queue: &str) -> BrokerResult<u64>;

    /// Checks that the broker answers (a node starts only once it does).
    async fn ping(&self) -> BrokerResult<()>;

    /// Whether the broker can serve now (`/readyz`): it answers, and, for a Redis Cluster,
    /// the cluster says every slot is served (`cluster_state:ok`). A node still starts on a
    /// cluster missing a shard ([`Broker::ping`]): the other shards' queues run.
    async fn ready(&self) -> BrokerResult<()> {
        self.ping().await
    }

    /// A named position in the event log (an event id [`Broker::events`] issued) that a
    /// reader of the log saved with [`Broker::save_cursor`], so that it resumes where it
    /// stopped on any node sharing this broker and after any restart; `None` until first
    /// saved. The job-event relay of `[[subscription]]` keeps its place here, and each
    /// `[[schedule]]` its last tick (`schedule:<name>`, see `crate::schedule`, moved with
    /// [`Broker::advance_cursor`]): the value is opaque to the broker but to that method. A name is 1 to 128 bytes of UTF-8, else [`BrokerError::Invalid`]
    /// naming `cursor`.
    async fn cursor(&self, name: &str) -> BrokerResult<Option<String>>;

    /// Stores a named cursor (see [`Broker::cursor`]), replacing its value: the last writer
    /// wins, so two readers of the same name may move it back a little, which a reader that
    /// is idempotent per event (the relay is, by event id) tolerates.
    async fn save_cursor(&self, name: &str, value: &str) -> BrokerResult<()>;

    /// Moves a named cursor that holds an integer (a `[[schedule]]`'s last tick, ms) forward
    /// to `value`, in one atomic step: it is stored when the cursor is absent, holds a smaller
    /// integer, or holds anything that is not one ([`cursor_number`]); else the cursor stays
    /// as it is. For a name every node writes (each node's scheduler records each tick it
    /// enqueued): a slow node's late record of an older value never moves it back, as
    /// [`Broker::save_cursor`]'s last writer would.
    async fn advance_cursor(&self, name: &str, value: i64) -> BrokerResult<()>;

    /// Jobs of `queue` that are `queued` (ready to be fetched) at `priority` or a more urgent
    /// one: how many a queued job at that priority may have to wait behind. A cheap count,
    /// not a walk: Redis counts its lanes and its `queued` zset, which may still hold entries
    /// of jobs cancelled since they were queued (never more than the queue's `queued` count).
    async fn ready_ahead(&self, queue: &str, priority: u8) -> BrokerResult<u64>;

    /// Records a worker node in the registry of nodes (`crate::nodes`), or refreshes its
    /// entry, stamping `last_seen` with the broker's clock; entries silent for longer than
    /// [`NODE_TTL`](crate::nodes::NODE_TTL) are dropped on the way. An id that is empty, over
    /// 200 bytes of UTF-8 or holds whitespace is [`BrokerError::Invalid`] naming `id`.
    async fn register_node(&self, node: &WorkerNode) -> BrokerResult<()>;

    /// Drops a node's entry (a node shutting down). Unknown ids are ignored.
    async fn deregister_node(&self, id: &str) -> BrokerResult<()>;

    /// The nodes heard from within [`NODE_TTL`](crate::nodes::NODE_TTL), sorted by host, pid
    /// and id ([`sort_nodes`](crate::nodes::sort_nodes)).
    async fn nodes(&self) -> BrokerResult<Vec<WorkerNode>>;
    /// Keeps `entry` in its user's inbox (see [`inbox`] for the log's rules) and wakes the
    /// inbox's waiters; first drops every entry older than `keep`. Idempotent by
    /// `entry.id` while that entry is kept: a second append answers its cursor and appends
    /// nothing. An empty or over-long id or user is [`BrokerError::Invalid`] naming it.
    async fn inbox_append(&self, entry: &NewInboxEntry, keep: Duration) -> BrokerResult<Appended>;

    /// Up to `limit` (capped at [`inbox::MAX_INBOX_PAGE`]) inbox entries after the cursor
    /// `after` (from the oldest kept when `None`), oldest first: one user's, or every user's
    /// when `user` is `None`. Entries older than `keep` are not read. A cursor this broker
    /// did not issue is [`BrokerError::Invalid`] naming `since`, whatever the limit.
    async fn inbox_read(
        &self,
        user: Option<&str>,
        after: Option<&str>,
        limit: usize,
        keep: Duration,
    ) -> BrokerResult<Vec<InboxEntry>>;

    /// Returns when the inbox may hold entries (of any user) after the cursor `after` (any
    /// entry when `None`), or after `timeout`; may return early, never busy-polls. A cursor
    /// this broker did not issue is [`BrokerError::Invalid`] naming `since`.
    async fn inbox_wait(&self, after: Option<&str>, timeout: Duration) -> BrokerResult<()>;

    /// The cursor of the newest entry of the inbox log (`None` while it has none; an append
    /// trims only entries older than `keep`, never its own, so the newest one handed out is
    /// kept): where following "from now on" starts, and what tells a cursor past the log's
    /// end (kept from before the broker's data was replaced, or from another broker). One
    /// round trip however long the log is.
    async fn inbox_end(&self) -> BrokerResult<Option<String>>;

    /// Stores a Web Push subscription of `user`, replacing the keys of one with the same
    /// endpoint. True when it is new. A new endpoint for a user who has
    /// [`inbox::MAX_PUSH_SUBSCRIPTIONS`] already is [`BrokerError::Invalid`] naming `endpoint`,
    /// decided in one step with the write.
    async fn push_subscribe(&self, user: &str, sub: &WebPush) -> BrokerResult<bool>;

    /// The Web Push subscriptions of `user`, by endpoint.
    async fn push_subscriptions(&self, user: &str) -> BrokerResult<Vec<WebPush>>;

    /// Forgets the subscription of `user` at `endpoint`. True when there was one.
    async fn push_unsubscribe(&self, user: &str, endpoint: &str) -> BrokerResult<bool>;

    /// The circuits of `notify.send`'s endpoints that are open or counting failures (see
    /// [`circuits`]), by endpoint.
    async fn circuits(&self) -> BrokerResult<Vec<Circuit>>;

    /// The circuit of one endpoint, when the broker keeps one (open or counting failures):
    /// what a delivery reads before it goes, one key or row, however many endpoints are kept.
    async fn circuit(&self, endpoint: &str) -> BrokerResult<Option<Circuit>>;

    /// Stores one endpoint's circuit, replacing the one it had (the last writer wins); a
    /// circuit neither open nor counting failures is forgotten. An empty or over-long
    /// endpoint is [`BrokerError::Invalid`] naming `endpoint`.
    async fn save_circuit(&self, circuit: &Circuit) -> BrokerResult<()>;

    /// The steps of the chain whose first step is `first`, in order (just that job when it
    /// is not a chain; empty when it does not exist). Follows each step's `next` link.
    async fn chain(&self, first: &JobId) -> BrokerResult<Vec<Job>> {
        let mut steps = Vec::new();
        let mut cursor = Some(first.clone());
        while let Some(id) = cursor {
            let Some(job) = self.get(&id).await? else {
                break;
            };
            cursor = job.chain.as_ref().and_then(|c| c.next.clone());
            steps.push(job);
        }
        Ok(steps)
    }
}

/// The integer a cursor holds, as [`Broker::advance_cursor`] reads it: an optional `-` and
/// ASCII digits only (no sign `+`, no spaces), within `i64`; `None` for anything else.
pub fn cursor_number(value: &str) -> Option<i64> {
    let digits = value.strip_prefix('-').unwrap_or(value);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// The number an event id's part holds, written as the broker writes it: ASCII digits, no
/// sign, no leading zero (but `0` itself). `None` for any other spelling: `06` or `+6` name
/// the event `6` for `parse`, but not as an id compares (ids are compared as text), so such a
/// cursor was taken as past the end of the log and the whole log replayed after a gap.
pub(crate) fn canonical_number(text: &str) -> Option<u64> {
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits_only || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    text.parse().ok()
}

/// Refuses a cursor name no broker stores (see [`Broker::cursor`]).
pub fn check_cursor_name(name: &str) -> Result<(), FieldError> {
    if name.is_empty() || name.len() > 128 {
        return Err(FieldError::byte_length("cursor", 128, name.len()));
    }
    Ok(())
}

/// Refuses a node id no registry stores (see [`Broker::register_node`]).
pub fn check_node_id(id: &str) -> Result<(), FieldError> {
    if id.is_empty() || id.len() > 200 {
        return Err(FieldError::byte_length("id", 200, id.len()));
    }
    if id.chars().any(char::is_whitespace) {
        return Err(FieldError::new("id", "must hold no whitespace"));
    }
    Ok(())
}

/// What an acknowledged write survives, where Hopper chooses it (`[broker] durability`).
///
/// SQLite only: a Redis broker's durability is the Redis server's own `appendonly` and
/// `appendfsync` settings, which Hopper does not change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// A write is on disk before it is acknowledged (an enqueue answered 201 survives a power
    /// loss). SQLite: `synchronous = FULL`, one fsync of the WAL per commit; the writer
    /// thread commits many writes together, so this is one fsync per batch, not per job.
    #[default]
    Full,
    /// A write survives a crash of the process, but the last writes acknowledged before a
    /// power loss or OS crash may be lost (the file is never corrupted). SQLite:
    /// `synchronous = NORMAL`, the WAL fsynced only at checkpoints.
    Normal,
}

/// How [`open_with`] sets a broker up beyond its URL.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Prefix of every Redis key (unused by SQLite).
    pub prefix: String,
    /// What an acknowledged write survives (SQLite only).
    pub durability: Durability,
}

impl OpenOptions {
    /// Every key under `prefix`, every other option at its default.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            durability: Durability::default(),
        }
    }
}

/// Opens the broker a URL names: `sqlite://PATH` (the file and its directory are created on
/// first use), or `redis://HOST:PORT/DB` / `rediss://…` / a Redis Cluster's
/// `redis-cluster://HOST:PORT,HOST:PORT…` / `rediss-cluster://…` with every key under
/// `prefix`; every other option at its default (see [`open_with`]).
pub async fn open(url: &str, prefix: &str, clock: Arc<dyn Clock>) -> BrokerResult<Arc<dyn Broker>> {
    open_with(url, &OpenOptions::new(prefix), clock).await
}

/// Opens the broker a URL names (see [`open`]) with `options`.
///
/// ```no_run
/// # async fn demo() -> hopper_workers::BrokerResult<()> {
/// use hopper_workers::broker::{Durability, OpenOptions, open_with};
/// let options = OpenOptions {
///     durability: Durability::Normal,
///     ..OpenOptions::new("hopper")
/// };
/// let broker = open_with("sqlite://data/hopper.db", &options, hopper_workers::clock::system()).await?;
/// # Ok(()) }
/// ```
pub async fn open_with(
    url: &str,
    options: &OpenOptions,
    clock: Arc<dyn Clock>,
) -> BrokerResult<Arc<dyn Broker>> {
    let prefix = options.prefix.as_str();
    if let Some(path) = url.strip_prefix("sqlite://") {
        #[cfg(feature = "sqlite")]
        {
            let _ = prefix;
            let options = sqlite::SqliteOptions {
                durability: options.durability,
                ..sqlite::SqliteOptions::default()
            };
            return sqlite::open_with(path, options, clock).await;
        }
        #[cfg(not(feature = "sqlite"))]
        return Err(BrokerError::Config(format!(
            "{path}: built without the sqlite feature"
        )));
    }
    if [
        "redis://",
        "rediss://",
        "redis-cluster://",
        "rediss-cluster://",
    ]
    .iter()
    .any(|scheme| url.starts_with(scheme))
    {
        #[cfg(feature = "redis")]
        {
            return redis::connect(url, prefix, clock).await;
        }
        #[cfg(not(feature = "redis"))]
        return Err(BrokerError::Config(
            "built without the redis feature".into(),
        ));
    }
    Err(BrokerError::Config(format!(
        "unsupported broker URL {:?}: expected sqlite://PATH, redis://HOST:PORT/DB or \
         redis-cluster://HOST:PORT,HOST:PORT",
        shown_url(url)
    )))
}

/// A broker URL as it may be shown (errors, logs, `hopper queues`): `redis://:s3cret@h:6379/0`
/// -> `redis://***@h:6379/0`; a URL without credentials as it is.
pub fn shown_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}
