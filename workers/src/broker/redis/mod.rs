//! The Redis broker: jobs in Redis, every multi-key step one Lua script (`workers/lua/*.lua`).
//!
//! This module owns the key layout, the scripts' calling conventions, the connections (a
//! [`ConnectionManager`] for everything but blocking pops, and a few dedicated connections for
//! `BLPOP`) and the translation between Redis replies and Hopper types. It does not decide
//! anything about jobs: the pool says what happens, the scripts record it atomically.
//!
//! # Key layout
//!
//! Every key of one queue starts with `{<prefix>:<queue>}:`, so all of them share one hash tag
//! and every script touches one Cluster slot. The per-queue keys are listed in
//! `workers/lua/common.lua`; in short: `job:<id>` (a hash per job), `all` (every id, a
//! lexicographic index for newest-first listing), `queued` (score = priority, member = fixed-width
//! due time + enqueue sequence + id, so strict priority then earliest due then FIFO, with no
//! double-precision limit), `due` (scheduled and retrying ids by due time), `running` (by lease
//! deadline), `succeeded` / `dead` / `cancelled` (by finish time), `counts` (state -> count, kept
//! by every script so that `queues()` is O(1) per queue), `events` (a stream), `signal` (wake-up
//! tokens for `BLPOP`), `unique` (unique key -> id), `seq` and per-second `stat:*` counters.
//!
//! Two keys are global, outside any queue's slot: `<prefix>:queues` (a set of queue names) and
//! `<prefix>:jobq` (a hash id -> queue, because `get`, `cancel` and `retry` know only an id).
//! They are written by the client in the same pipeline as the enqueue script, *before* it runs:
//! a crash in between leaves an index entry pointing to no job (`get` says not found), never a
//! job that cannot be found.
//!
//! The job hash stores neither the id nor the queue (its key names both) nor counters that
//! are 0 (nor the progress of a succeeded job, which is always 100; `lease_until` is read
//! only while the job runs, so finishing does not clear it). The fields fixed at enqueue but
//! `kind`, `unique_key` and the chain links (first event id, priority, max retries, timeout,
//! creation time and payload) are packed into one field `d` that only the client decodes (the
//! scripts read the priority from it, and rewrite it when a chain step gets its `input`). A
//! fresh job's hash is six fields, and fetch.lua reads it with one `HGETALL` and hands it over
//! as read: a queued no-op job costs
//! about 810 bytes of Redis memory (its hash, its `all`, `queued` and `jobq` entries and its
//! share of a stream entry).
//!
//! # Events
//!
//! Each queue has its own stream. Every state change appends its event, but the hot scripts
//! (enqueue, fetch, finish) put all the events of one call in *one* stream entry (one `XADD`
//! per call rather than per job; see `common.lua` for the entry format). An event id is
//! `<stream id>@<queue>` for the first event of an entry and `<stream id>.<n>@<queue>` for the
//! n-th after it; [`Broker::events`] merges the streams ordered by (stream id, queue, place in
//! the entry) and holds back the current millisecond, so that an event appended later to
//! another queue's stream can never sort before one already handed out. A job's history is the
//! part of its queue's stream between the ids of its first and last entries (kept in the job
//! hash as the head of `d` and as `evn`), filtered by job id.
//!
//! # Chains
//!
//! A chain step's hash carries `chain_id`, `chain_index` and `chain_next`; every step is on
//! the chain's queue, so the scripts walk `chain_next` links inside one slot. The step after a
//! succeeded one gets the result as its payload's `input`: spliced into the payload text when
//! the payload has no `input` yet (numbers and empty arrays stay exact), otherwise replaced
//! through Redis' cjson, which keeps 14 significant digits of a number and turns an empty
//! array into `{}`.
//!
//! # Limits, on purpose
//!
//! - Listing walks the queue's `all` index newest first and filters in Lua, at most
//!   1,000 ids per call; a very sparse filter over a huge queue gives a short page
//!   with a cursor rather than blocking Redis.
//! - Event retention is per queue stream and counts stream entries: `purge(.., keep_events)`
//!   and the event cap keep the newest `keep_events` entries of *each* queue, which hold at
//!   least that many events (an entry of a batch holds up to 500). Purged jobs' events stay
//!   until trimmed.
//! - Keys are Cluster-ready (one slot per queue), but the client is a plain one, and
//!   `wait_for_work` `BLPOP`s several queues' keys at once: a standalone (or Sentinel-fronted)
//!   Redis is what runs today.
//! - `rediss://` connects with TLS (rustls): the server's certificate is checked against the
//!   system's roots (or the file `SSL_CERT_FILE` names).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Client, Cmd, FromRedisValue, Pipeline, RedisError, Script, Value,
};

use crate::broker::{
    Broker, Enqueued, Finish, JobFilter, JobPage, LeaseStatus, Outcome, QueueStats, StateCounts,
};
use crate::clock::Clock;
use crate::error::{BrokerError, BrokerResult};
use crate::event::{Event, EventType};
use crate::job::{ChainLink, FieldError, Job, JobId, JobState, Lease, Millis, NewJob, valid_name};

/// How long one command may take before it fails (the redis crate's 500 ms default is fatal
/// under load: a large batch times out although it was applied).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening a connection may take.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// Extra time a `BLPOP` reply may take beyond its own timeout.
const BLOCK_SLACK: Duration = Duration::from_secs(5);
/// Idle blocking connections kept for `wait_for_work`.
const MAX_IDLE_BLOCKING: usize = 8;
/// Warn at most this often while Redis is unreachable.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Jobs per enqueue script call: bounds how long one call blocks Redis (a few ms).
const ENQUEUE_CHUNK: usize = 500;
/// Entries per finish / heartbeat script call.
const FINISH_CHUNK: usize = 500;
/// Jobs leased per fetch call at most (fetch.lua's bound).
const FETCH_MAX: usize = 500;
/// Due jobs promoted per fetch call.
const PROMOTE_LIMIT: usize = 1000;
/// Jobs per call of the batch scripts (retry_all_dead, rescue, purge, drop_queue).
const BATCH: usize = 200;
/// Ids a list call looks at, and how many calls one page may take.
const LIST_BUDGET: usize = 1000;
const LIST_MAX_CALLS: usize = 32;
/// Largest page `list` returns.
const LIST_MAX_LIMIT: usize = 1000;
/// Stream entries read per round-trip by `history` and `events`.
const STREAM_CHUNK: usize = 1000;
/// Default bound of each queue's event stream (approximate, trimmed as events are added).
pub const DEFAULT_EVENT_CAP: u64 = 100_000;

/// Loads a script: the shared helpers of `common.lua` followed by the script itself.
macro_rules! lua {
    ($file:literal) => {
        Lua::new(concat!(
            include_str!("../../../lua/common.lua"),
            include_str!(concat!("../../../lua/", $file))
        ))
    };
}

/// One script: its source (for `SCRIPT LOAD`) and SHA1 (for `EVALSHA`).
struct Lua {
    code: &'static str,
    hash: String,
}

impl Lua {
    fn new(code: &'static str) -> Self {
        Self {
            code,
            hash: Script::new(code).get_hash().to_owned(),
        }
    }
}

struct Scripts {
    enqueue: Lua,
    fetch: Lua,
    finish: Lua,
    heartbeat: Lua,
    progress: Lua,
    cancel: Lua,
    retry: Lua,
    retry_all_dead: Lua,
    rescue: Lua,
    purge: Lua,
    drop_queue: Lua,
    list: Lua,
}

impl Scripts {
    fn all(&self) -> [&Lua; 12] {
        [
            &self.enqueue,
            &self.fetch,
            &self.finish,
            &self.heartbeat,
            &self.progress,
            &self.cancel,
            &self.retry,
            &self.retry_all_dead,
            &self.rescue,
            &self.purge,
            &self.drop_queue,
            &self.list,
        ]
    }
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    enqueue: lua!("enqueue.lua"),
    fetch: lua!("fetch.lua"),
    finish: lua!("finish.lua"),
    heartbeat: lua!("heartbeat.lua"),
    progress: lua!("progress.lua"),
    cancel: lua!("cancel.lua"),
    retry: lua!("retry.lua"),
    retry_all_dead: lua!("retry_all_dead.lua"),
    rescue: lua!("rescue.lua"),
    purge: lua!("purge.lua"),
    drop_queue: lua!("drop_queue.lua"),
    list: lua!("list.lua"),
});

/// Redis returned something the broker did not write: a corrupt or foreign key.
#[derive(Debug, thiserror::Error)]
#[error("unexpected data in Redis: {0}")]
struct Corrupt(String);

fn corrupt(message: impl Into<String>) -> BrokerError {
    BrokerError::Backend(Box::new(Corrupt(message.into())))
}

/// Connects the Redis broker at `url` (see [`RedisBroker::connect`]).
pub async fn connect(
    url: &str,
    prefix: &str,
    clock: Arc<dyn Clock>,
) -> BrokerResult<Arc<dyn Broker>> {
    Ok(Arc::new(RedisBroker::connect(url, prefix, clock).await?))
}

/// Tracks whether Redis answers, so that an outage is one clear warning every few seconds
/// rather than one per failed call, and its end is noted.
#[derive(Debug, Default)]
struct Health {
    down: AtomicBool,
    last_warn: Mutex<Option<Instant>>,
}

impl Health {
    fn failed(&self, url: &str, e: &RedisError) {
        self.down.store(true, Ordering::Relaxed);
        let Ok(mut last) = self.last_warn.lock() else {
            return;
        };
        if last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(redis = %url, error = %e, "Redis is unreachable; reconnecting with backoff");
        }
    }

    fn ok(&self, url: &str) {
        if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::Relaxed) {
            if let Ok(mut last) = self.last_warn.lock() {
                *last = None;
            }
            tracing::info!(redis = %url, "Redis is reachable again");
        }
    }
}

/// The Redis implementation of [`Broker`].
pub struct RedisBroker {
    client: Client,
    conn: ConnectionManager,
    /// The URL without credentials, for messages.
    url: String,
    prefix: String,
    clock: Arc<dyn Clock>,
    event_cap: u64,
    /// Dedicated connections for `BLPOP`, which would stall every other command queued behind
    /// it on the shared multiplexed connection.
    blocking: Mutex<Vec<MultiplexedConnection>>,
    health: Health,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .field("event_cap", &self.event_cap)
            .finish_non_exhaustive()
    }
}

/// `redis://user:secret@host/0` -> `redis://host/0`.
fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://{}", &url[at + 1..]),
        _ => url.to_owned(),
    }
}

fn is_unavailable(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

fn is_noscript(e: &RedisError) -> bool {
    e.code() == Some("NOSCRIPT")
}

impl RedisBroker {
    /// Connects to `url` (`redis://[user:password@]host:port/db`) and keeps every key under
    /// `prefix`. Refuses a Redis whose `maxmemory-policy` is not `noeviction`: an evicting
    /// Redis drops jobs silently.
    pub async fn connect(url: &str, prefix: &str, clock: Arc<dyn Clock>) -> BrokerResult<Self> {
        let shown = redact(url);
        if url.starts_with("rediss://") {
            // rustls needs one process-wide crypto provider; ring is the one built in. An
            // error means one is installed already, which is as good.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        if prefix.is_empty()
            || prefix.contains(['{', '}'])
            || prefix.chars().any(char::is_whitespace)
        {
            return Err(BrokerError::Config(format!(
                "redis key prefix {prefix:?}: must be non-empty, without braces or spaces"
            )));
        }
        let client = Client::open(url)
            .map_err(|e| BrokerError::Config(format!("{shown}: not a usable Redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECTION_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(4)
            .set_exponent_base(2.0)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(5));
        let mut conn = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|e| {
                BrokerError::Unavailable(format!("cannot connect to Redis at {shown}: {e}").into())
            })?;

        let policy: Result<Vec<String>, RedisError> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut conn)
            .await;
        match policy {
            Ok(v) => match v.get(1) {
                Some(p) if p != "noeviction" => {
                    return Err(BrokerError::Config(format!(
                        "Redis at {shown} has maxmemory-policy {p}; Hopper needs noeviction, \
                         because an evicting Redis silently loses jobs (set \
                         `maxmemory-policy noeviction` in redis.conf)"
                    )));
                }
                _ => {}
            },
            Err(e) if is_unavailable(&e) => {
                return Err(BrokerError::Unavailable(
                    format!("cannot talk to Redis at {shown}: {e}").into(),
                ));
            }
            // Managed Redis services often disable CONFIG: not fatal, but worth saying.
            Err(e) => tracing::warn!(
                redis = %shown,
                error = %e,
                "cannot read maxmemory-policy; make sure it is noeviction, or jobs may be evicted"
            ),
        }

        let broker = Self {
            client,
            conn,
            url: shown,
            prefix: prefix.to_owned(),
            clock,
            event_cap: DEFAULT_EVENT_CAP,
            blocking: Mutex::new(Vec::new()),
            health: Health::default(),
        };
        broker.load_scripts().await?;
        Ok(broker)
    }

    /// Bounds each queue's event stream to about `cap` entries (default
    /// [`DEFAULT_EVENT_CAP`]); older events are trimmed as new ones are added.
    #[must_use]
    pub fn with_event_cap(mut self, cap: u64) -> Self {
        self.event_cap = cap.max(1);
        self
    }

    /// The key prefix of one queue: `{<prefix>:<queue>}:`.
    fn base(&self, queue: &str) -> String {
        format!("{{{}:{}}}:", self.prefix, queue)
    }

    fn jobq_key(&self) -> String {
        format!("{}:jobq", self.prefix)
    }

    fn queues_key(&self) -> String {
        format!("{}:queues", self.prefix)
    }

    /// Runs a one-job script (cancel.lua, retry.lua: ARGV now, event cap, id) and turns its
    /// answer into the job, `NotFound`, or a `Conflict` with `refusal` as the message.
    async fn change_one(
        &self,
        script: &Lua,
        id: &JobId,
        refusal: &'static str,
    ) -> BrokerResult<Job> {
        let queue = self
            .queue_of(id)
            .await?
            .ok_or_else(|| BrokerError::NotFound(id.clone()))?;
        let mut cmd = self.eval(script, &queue);
        cmd.arg(self.clock.now_ms())
            .arg(self.event_cap)
            .arg(id.as_str());
        match answer(self.query(&cmd).await?, id, &queue)? {
            Answer::Ok(job) => Ok(*job),
            Answer::NotFound => Err(BrokerError::NotFound(id.clone())),
            Answer::State(state) => Err(BrokerError::Conflict {
                id: id.clone(),
                state,
                message: refusal,
            }),
        }
    }

    fn err(&self, e: RedisError) -> BrokerError {
        if is_unavailable(&e) {
            self.health.failed(&self.url, &e);
            BrokerError::Unavailable(Box::new(e))
        } else {
            BrokerError::backend(e)
        }
    }

    async fn load_scripts(&self) -> BrokerResult<()> {
        let mut pipe = redis::pipe();
        for s in SCRIPTS.all() {
            pipe.cmd("SCRIPT").arg("LOAD").arg(s.code).ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.err(e))
    }

    /// Runs one command; reloads the scripts once if Redis lost them (a restart, SCRIPT FLUSH).
    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> BrokerResult<T> {
        let mut conn = self.conn.clone();
        let mut res = cmd.query_async(&mut conn).await;
        if matches!(&res, Err(e) if is_noscript(e)) {
            self.load_scripts().await?;
            res = cmd.query_async(&mut conn).await;
        }
        match res {
            Ok(v) => {
                self.health.ok(&self.url);
                Ok(v)
            }
            Err(e) => Err(self.err(e)),
        }
    }

    /// Runs a pipeline in one round-trip; like [`Self::query`] for lost scripts. Pipelines that
    /// are retried hold only idempotent index writes besides their scripts, which did not run.
    async fn query_pipe<T: FromRedisValue>(&self, pipe: &Pipeline) -> BrokerResult<T> {
        let mut conn = self.conn.clone();
        let mut res = pipe.query_async(&mut conn).await;
        if matches!(&res, Err(e) if is_noscript(e)) {
            self.load_scripts().await?;
            res = pipe.query_async(&mut conn).await;
        }
        match res {
            Ok(v) => {
                self.health.ok(&self.url);
                Ok(v)
            }
            Err(e) => Err(self.err(e)),
        }
    }

    /// `EVALSHA <script> 1 <queue prefix>`; the caller adds the ARGV.
    fn eval(&self, script: &Lua, queue: &str) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&script.hash).arg(1).arg(self.base(queue));
        cmd
    }

    async fn queue_names(&self) -> BrokerResult<Vec<String>> {
        let mut names: Vec<String> = self
            .query(redis::cmd("SMEMBERS").arg(self.queues_key()))
            .await?;
        names.sort();
        Ok(names)
    }

    async fn queue_of(&self, id: &JobId) -> BrokerResult<Option<String>> {
        self.query(redis::cmd("HGET").arg(self.jobq_key()).arg(id.as_str()))
            .await
    }

    async fn blocking_conn(&self) -> BrokerResult<MultiplexedConnection> {
        let idle = self.blocking.lock().map_err(|_| poisoned())?.pop();
        if let Some(c) = idle {
            return Ok(c);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECTION_TIMEOUT))
            .set_response_timeout(None);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.err(e))
    }

    fn return_blocking(&self, conn: MultiplexedConnection) {
        if let Ok(mut idle) = self.blocking.lock()
            && idle.len() < MAX_IDLE_BLOCKING
        {
            idle.push(conn);
        }
    }

    /// Runs `script` on `queue` until a call handles fewer than [`BATCH`] jobs; returns the ids
    /// the calls returned.
    async fn drain_batches(
        &self,
        script: &Lua,
        queue: &str,
        args: &[String],
    ) -> BrokerResult<Vec<String>> {
        let mut all = Vec::new();
        loop {
            let mut cmd = self.eval(script, queue);
            cmd.arg(args);
            let ids: Vec<String> = self.query(&cmd).await?;
            let n = ids.len();
            all.extend(ids);
            if n < BATCH {
                return Ok(all);
            }
        }
    }

    async fn unindex(&self, ids: &[String]) -> BrokerResult<()> {
        for chunk in ids.chunks(1000) {
            self.query::<()>(redis::cmd("HDEL").arg(self.jobq_key()).arg(chunk))
                .await?;
        }
        Ok(())
    }

    /// One queue's part of a listing: jobs newest first from `cursor` (exclusive), and where
    /// to continue (`None` when nothing matching is left).
    async fn list_queue(
        &self,
        queue: &str,
        cursor: &str,
        state: &str,
        kind: &str,
        want: usize,
    ) -> BrokerResult<(Vec<Job>, Option<String>)> {
        let mut jobs = Vec::new();
        let mut pos = cursor.to_owned();
        for _ in 0..LIST_MAX_CALLS {
            let mut cmd = self.eval(&SCRIPTS.list, queue);
            cmd.arg(&pos)
                .arg(state)
                .arg(kind)
                .arg(want - jobs.len())
                .arg(LIST_BUDGET);
            let reply: Vec<Value> = self.query(&cmd).await?;
            let mut it = reply.into_iter();
            let (Some(last), Some(more), Some(exhausted)) = (it.next(), it.next(), it.next())
            else {
                return Err(corrupt("short reply from list.lua"));
            };
            pos = string(&last)?;
            while let (Some(id), Some(hash)) = (it.next(), it.next()) {
                if let Some(job) = job_from_fields(&hash, &string(&id)?, queue)? {
                    jobs.push(job);
                }
            }
            if int(&more)? == 1 {
                return Ok((jobs, Some(pos)));
            }
            if int(&exhausted)? == 1 {
                return Ok((jobs, None));
            }
        }
        // Scan budget spent on a sparse filter: a short page, continued from where it stopped.
        Ok((jobs, Some(pos)))
    }

    /// The events of stream entries `start..=end` (either may be exclusive with `(`) of one
    /// queue, and how many entries they came from.
    async fn read_stream(
        &self,
        queue: &str,
        start: &str,
        end: &str,
        count: usize,
    ) -> BrokerResult<(Vec<(Pos, Event)>, usize)> {
        let v: Value = self
            .query(
                redis::cmd("XRANGE")
                    .arg(format!("{}events", self.base(queue)))
                    .arg(start)
                    .arg(end)
                    .arg("COUNT")
                    .arg(count),
            )
            .await?;
        parse_entries(&v, queue)
    }
}

fn poisoned() -> BrokerError {
    corrupt("a lock of the Redis broker was poisoned by a panic")
}

fn check_queue(queue: &str) -> BrokerResult<()> {
    if valid_name(queue) {
        Ok(())
    } else {
        Err(BrokerError::Invalid(FieldError::new(
            "queue",
            "must be 1 to 64 characters of letters, digits, '-', '_' or '.'",
        )))
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

// ---- reply parsing ----------------------------------------------------------------------

fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

fn string(v: &Value) -> BrokerResult<String> {
    text(v)
        .map(str::to_owned)
        .ok_or_else(|| corrupt(format!("expected a string, got {v:?}")))
}

fn int(v: &Value) -> BrokerResult<i64> {
    match v {
        Value::Int(i) => Ok(*i),
        other => text(other)
            .and_then(parse_num)
            .ok_or_else(|| corrupt(format!("expected an integer, got {other:?}"))),
    }
}

/// Integers written by Lua are plain digits; accept a float form too, should one appear.
fn parse_num(s: &str) -> Option<i64> {
    s.parse::<i64>().ok().or_else(|| {
        s.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(|f| f as i64)
    })
}

fn array(v: Value) -> BrokerResult<Vec<Value>> {
    match v {
        Value::Array(a) => Ok(a),
        Value::Nil => Ok(Vec::new()),
        other => Err(corrupt(format!("expected an array, got {other:?}"))),
    }
}

/// A job from its hash as a flat field/value array; `None` for an empty hash (no such job).
/// The hash does not store the id and the queue (its key names them), nor zero counters.
fn job_from_fields(v: &Value, id: &str, queue: &str) -> BrokerResult<Option<Job>> {
    let Value::Array(items) = v else {
        return Err(corrupt(format!("expected a job hash, got {v:?}")));
    };
    if items.is_empty() {
        return Ok(None);
    }
    job_from_pairs(items, id, queue).map(Some)
}

/// A job from the field/value pairs of its hash.
fn job_from_pairs(items: &[Value], id: &str, queue: &str) -> BrokerResult<Job> {
    let mut m: HashMap<&str, &str> = HashMap::with_capacity(items.len() / 2);
    for pair in items.chunks_exact(2) {
        if let (Some(k), Some(val)) = (text(&pair[0]), text(&pair[1])) {
            m.insert(k, val);
        }
    }
    // The fields never changed after enqueue, packed in `d` (see common.lua):
    // <ev0>|<priority>|<max_retries>|<timeout_ms>|<created_at>|<payload>.
    let mut packed = [None; 5];
    if let Some(d) = m.get("d") {
        let mut parts = d.splitn(6, '|').skip(1);
        for slot in &mut packed {
            *slot = parts.next();
        }
        if packed[4].is_none() {
            return Err(corrupt(format!("job {id}: bad field d")));
        }
    }
    let [priority, max_retries, timeout_ms, created_at, payload] = packed;
    let raw = RawJob {
        id,
        queue,
        state: m.get("state").copied(),
        attempt: m.get("attempt").copied(),
        lease_token: m.get("lease_token").copied(),
        kind: m.get("kind").copied(),
        payload,
        priority,
        run_at: m.get("run_at").copied(),
        max_retries,
        timeout_ms,
        interruptions: m.get("interruptions").copied(),
        interruption_streak: m.get("interruption_streak").copied(),
        last_error: m.get("last_error").copied(),
        unique_key: m.get("unique_key").copied(),
        created_at,
        chain_id: m.get("chain_id").copied(),
        chain_index: m.get("chain_index").copied(),
        chain_next: m.get("chain_next").copied(),
        progress: m.get("progress").copied(),
        progress_message: m.get("progress_message").copied(),
        lease_until: m.get("lease_until").copied(),
        result: m.get("result").copied(),
        started_at: m.get("started_at").copied(),
        finished_at: m.get("finished_at").copied(),
    };
    raw.decode()
}

/// A job leased by fetch.lua: its hash as a flat field/value array as it was before the
/// lease, followed by its id.
fn job_from_fetch(v: &Value, queue: &str) -> BrokerResult<Job> {
    let Value::Array(f) = v else {
        return Err(corrupt(format!("expected a fetched job, got {v:?}")));
    };
    let Some((id, fields)) = f.split_last() else {
        return Err(corrupt("fetch.lua answered an empty job"));
    };
    let id = text(id).ok_or_else(|| corrupt("fetch.lua answered a job without an id"))?;
    job_from_pairs(fields, id, queue)
}

/// `None` for an absent or empty field ('' is how scripts clear a field in place).
fn nonempty(v: Option<&str>) -> Option<&str> {
    v.filter(|s| !s.is_empty())
}

/// A job's stored fields as text, however they were read (`None`: absent).
struct RawJob<'a> {
    id: &'a str,
    queue: &'a str,
    state: Option<&'a str>,
    attempt: Option<&'a str>,
    lease_token: Option<&'a str>,
    kind: Option<&'a str>,
    payload: Option<&'a str>,
    priority: Option<&'a str>,
    run_at: Option<&'a str>,
    max_retries: Option<&'a str>,
    timeout_ms: Option<&'a str>,
    interruptions: Option<&'a str>,
    interruption_streak: Option<&'a str>,
    last_error: Option<&'a str>,
    unique_key: Option<&'a str>,
    created_at: Option<&'a str>,
    chain_id: Option<&'a str>,
    chain_index: Option<&'a str>,
    chain_next: Option<&'a str>,
    progress: Option<&'a str>,
    progress_message: Option<&'a str>,
    lease_until: Option<&'a str>,
    result: Option<&'a str>,
    started_at: Option<&'a str>,
    finished_at: Option<&'a str>,
}

impl RawJob<'_> {
    fn decode(&self) -> BrokerResult<Job> {
        let id = self.id;
        let req = |f: &str, v: Option<&str>| -> BrokerResult<String> {
            v.map(str::to_owned)
                .ok_or_else(|| corrupt(format!("job {id} has no field {f}")))
        };
        let opt_num = |f: &str, v: Option<&str>| -> BrokerResult<Option<i64>> {
            v.filter(|s| !s.is_empty())
                .map(|s| {
                    parse_num(s)
                        .ok_or_else(|| corrupt(format!("job {id}: field {f} is not a number")))
                })
                .transpose()
        };
        let num = |f: &str, v: Option<&str>| -> BrokerResult<i64> {
            opt_num(f, v)?.ok_or_else(|| corrupt(format!("job {id} has no field {f}")))
        };
        // Counters are not stored while 0.
        let count = |f: &str, v: Option<&str>| -> BrokerResult<u32> {
            u32::try_from(opt_num(f, v)?.unwrap_or(0))
                .map_err(|_| corrupt(format!("job {id}: field {f} out of range")))
        };
        let json = |f: &str, s: &str| -> BrokerResult<serde_json::Value> {
            serde_json::from_str(s).map_err(|e| corrupt(format!("job {id}: field {f}: {e}")))
        };
        let state_s = req("state", self.state)?;
        let state = JobState::parse(&state_s)
            .ok_or_else(|| corrupt(format!("job {id}: unknown state {state_s}")))?;
        // A succeeded job's progress is 100, whatever it was before: finish.lua does not
        // write it.
        let progress = if state == JobState::Succeeded {
            100
        } else {
            u8::try_from(
                opt_num("progress", self.progress)?
                    .unwrap_or(0)
                    .clamp(0, 100),
            )
            .unwrap_or(0)
        };
        Ok(Job {
            id: JobId(id.to_owned()),
            queue: self.queue.to_owned(),
            kind: req("kind", self.kind)?,
            payload: json("payload", &req("payload", self.payload)?)?,
            priority: u8::try_from(num("priority", self.priority)?)
                .map_err(|_| corrupt(format!("job {id}: bad priority")))?,
            state,
            run_at: num("run_at", self.run_at)?,
            attempt: count("attempt", self.attempt)?,
            max_retries: count("max_retries", self.max_retries)?,
            timeout_ms: opt_num("timeout_ms", self.timeout_ms)?.and_then(|t| u64::try_from(t).ok()),
            interruptions: count("interruptions", self.interruptions)?,
            interruption_streak: count("interruption_streak", self.interruption_streak)?,
            lease_token: u64::try_from(opt_num("lease_token", self.lease_token)?.unwrap_or(0))
                .map_err(|_| corrupt(format!("job {id}: bad lease_token")))?,
            // Only a running job has a lease; finish.lua leaves the last deadline behind.
            lease_until: if state == JobState::Running {
                opt_num("lease_until", self.lease_until)?
            } else {
                None
            },
            progress,
            progress_message: nonempty(self.progress_message).map(str::to_owned),
            result: nonempty(self.result)
                .map(|s| json("result", s))
                .transpose()?,
            last_error: nonempty(self.last_error).map(str::to_owned),
            unique_key: nonempty(self.unique_key).map(str::to_owned),
            created_at: num("created_at", self.created_at)?,
            started_at: opt_num("started_at", self.started_at)?,
            finished_at: opt_num("finished_at", self.finished_at)?,
            chain: match nonempty(self.chain_id) {
                Some(chain_id) => Some(ChainLink {
                    id: JobId(chain_id.to_owned()),
                    index: opt_num("chain_index", self.chain_index)?
                        .and_then(|i| u32::try_from(i).ok())
                        .unwrap_or(0),
                    next: nonempty(self.chain_next).map(|n| JobId(n.to_owned())),
                }),
                None => None,
            },
        })
    }
}

/// A stream entry id, `<ms>-<seq>`, ordered numerically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct StreamId {
    ms: u64,
    seq: u64,
}

impl StreamId {
    fn parse(s: &str) -> Option<Self> {
        let (ms, seq) = s.split_once('-')?;
        Some(Self {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Where an event is in its queue's stream: the entry, and its place in that entry (an
/// entry holds the events of one script call).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pos {
    sid: StreamId,
    sub: u32,
}

/// An event id: `<stream id>@<queue>` for an entry's first event, `<stream id>.<n>@<queue>`
/// for its n-th after that.
fn event_id(pos: Pos, queue: &str) -> String {
    if pos.sub == 0 {
        format!("{}@{queue}", pos.sid)
    } else {
        format!("{}.{}@{queue}", pos.sid, pos.sub)
    }
}

/// Where a client is in the merged event log (see [`event_id`]).
fn parse_event_id(s: &str) -> Option<(Pos, &str)> {
    let (pos, queue) = s.split_once('@')?;
    let (sid, sub) = match pos.split_once('.') {
        Some((sid, sub)) => (sid, sub.parse().ok()?),
        None => (pos, 0),
    };
    Some((
        Pos {
            sid: StreamId::parse(sid)?,
            sub,
        },
        queue,
    ))
}

/// The events of stream entries (see `common.lua`: `at <ms>`, then events each starting with
/// `t <type>`), with their positions; and how many entries there were.
fn parse_entries(v: &Value, queue: &str) -> BrokerResult<(Vec<(Pos, Event)>, usize)> {
    let Value::Array(entries) = v else {
        return Ok((Vec::new(), 0));
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(parts) = entry else {
            return Err(corrupt("stream entry is not an array"));
        };
        let [sid, Value::Array(fields)] = parts.as_slice() else {
            return Err(corrupt("stream entry without fields"));
        };
        let sid_s = string(sid)?;
        let sid = StreamId::parse(&sid_s).ok_or_else(|| corrupt(format!("stream id {sid_s}")))?;
        let bad = |what: &str| corrupt(format!("event {sid}: {what}"));
        let mut at: Option<i64> = None;
        let mut sub = 0u32;
        let mut current: Option<Event> = None;
        for pair in fields.chunks_exact(2) {
            let (Some(k), Some(val)) = (text(&pair[0]), text(&pair[1])) else {
                continue;
            };
            if k == "t" {
                if let Some(e) = current.take() {
                    out.push((Pos { sid, sub }, e));
                    sub += 1;
                }
                let mut e = Event {
                    id: String::new(),
                    kind_of_event: EventType::parse(val)
                        .ok_or_else(|| bad(&format!("unknown type {val}")))?,
                    job_id: JobId(String::new()),
                    queue: queue.to_owned(),
                    kind: String::new(),
                    at: at.unwrap_or(0),
                    attempt: 0,
                    progress: None,
                    message: None,
                    result: None,
                    error: None,
                };
                e.id = event_id(Pos { sid, sub }, queue);
                current = Some(e);
                continue;
            }
            if k == "at" {
                at = Some(parse_num(val).ok_or_else(|| bad("at"))?);
                if let Some(e) = current.as_mut() {
                    e.at = at.unwrap_or(0);
                }
                continue;
            }
            let Some(e) = current.as_mut() else {
                continue;
            };
            match k {
                "j" => e.job_id = JobId(val.to_owned()),
                "k" => val.clone_into(&mut e.kind),
                "a" => {
                    e.attempt = u32::try_from(parse_num(val).ok_or_else(|| bad("a"))?).unwrap_or(0);
                }
                "p" => e.progress = parse_num(val).and_then(|p| u8::try_from(p).ok()),
                "m" => e.message = Some(val.to_owned()),
                "r" => {
                    e.result =
                        Some(serde_json::from_str(val).map_err(|e| bad(&format!("result: {e}")))?);
                }
                "e" => e.error = Some(val.to_owned()),
                _ => {}
            }
        }
        if let Some(e) = current {
            out.push((Pos { sid, sub }, e));
        }
    }
    Ok((out, entries.len()))
}

/// What cancel.lua and retry.lua answer.
enum Answer {
    Ok(Box<Job>),
    NotFound,
    State(JobState),
}

fn answer(v: Value, id: &JobId, queue: &str) -> BrokerResult<Answer> {
    let items = array(v)?;
    match items.first().and_then(text) {
        Some("ok") => items
            .get(1)
            .map(|h| job_from_fields(h, id.as_str(), queue))
            .transpose()?
            .flatten()
            .map(|j| Answer::Ok(Box::new(j)))
            .ok_or_else(|| corrupt("script answered ok without a job")),
        Some("nf") => Ok(Answer::NotFound),
        Some("final" | "state") => {
            let s = items.get(1).and_then(text).unwrap_or("");
            JobState::parse(s)
                .map(Answer::State)
                .ok_or_else(|| corrupt(format!("unknown state {s}")))
        }
        _ => Err(corrupt("unexpected script answer")),
    }
}

/// Outcome -> (code, a, b) as finish.lua reads them.
fn outcome_args(o: &Outcome) -> BrokerResult<(&'static str, String, String)> {
    Ok(match o {
        Outcome::Succeeded { result } => (
            "ok",
            serde_json::to_string(result).map_err(BrokerError::backend)?,
            String::new(),
        ),
        Outcome::Retry { at, error } => ("retry", at.to_string(), error.clone()),
        Outcome::Dead { error } => ("dead", error.clone(), String::new()),
        Outcome::Snooze { at } => ("snooze", at.to_string(), String::new()),
        Outcome::Released { reason } => ("release", reason.clone(), String::new()),
    })
}

/// Indices of `ids` grouped by queue, in chunks of `chunk`; ids without a queue are skipped.
fn group(queues: &[Option<String>], chunk: usize) -> Vec<(String, Vec<usize>)> {
    let mut by: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, q) in queues.iter().enumerate() {
        if let Some(q) = q {
            by.entry(q).or_default().push(i);
        }
    }
    let mut out = Vec::new();
    for (q, idx) in by {
        for c in idx.chunks(chunk) {
            out.push((q.to_owned(), c.to_vec()));
        }
    }
    out
}

#[async_trait]
impl Broker for RedisBroker {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn enqueue(&self, jobs: Vec<NewJob>) -> BrokerResult<Vec<Enqueued>> {
        for j in &jobs {
            j.validate()?;
        }
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.clock.now_ms();
        let mut by_queue: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, j) in jobs.iter().enumerate() {
            by_queue.entry(j.queue.as_str()).or_default().push(i);
        }
        let mut pipe = redis::pipe();
        pipe.cmd("SADD")
            .arg(self.queues_key())
            .arg(by_queue.keys().collect::<Vec<_>>())
            .ignore();
        let mut calls: Vec<Vec<usize>> = Vec::new();
        for (queue, idx) in &by_queue {
            for chunk in idx.chunks(ENQUEUE_CHUNK) {
                // The id index first: see the module docs for why.
                let mut index = redis::cmd("HSET");
                index.arg(self.jobq_key());
                let mut cmd = self.eval(&SCRIPTS.enqueue, queue);
                cmd.arg(now).arg(self.event_cap).arg(chunk.len());
                for &i in chunk {
                    let j = &jobs[i];
                    index.arg(j.id.as_str()).arg(*queue);
                    // The job's packed field `d` but its leading "<ev0>|" (see common.lua).
                    let mut packed = format!(
                        "{}|{}|{}|{now}|",
                        j.priority,
                        j.max_retries,
                        j.timeout_ms.map(|t| t.to_string()).unwrap_or_default()
                    );
                    packed.push_str(
                        &serde_json::to_string(&j.payload).map_err(BrokerError::backend)?,
                    );
                    cmd.arg(j.id.as_str())
                        .arg(&j.kind)
                        .arg(packed)
                        .arg(j.priority)
                        .arg(j.run_at.map(|t| t.to_string()).unwrap_or_default())
                        .arg(j.unique_key.as_deref().unwrap_or(""));
                    match &j.chain {
                        Some(c) => cmd
                            .arg(c.id.as_str())
                            .arg(c.index)
                            .arg(c.next.as_ref().map_or("", JobId::as_str)),
                        None => cmd.arg("").arg(0).arg(""),
                    };
                }
                pipe.add_command(index).ignore();
                pipe.add_command(cmd);
                calls.push(chunk.to_vec());
            }
        }
        let replies: Vec<Vec<Value>> = self.query_pipe(&pipe).await?;
        let mut out: Vec<Option<Enqueued>> = vec![None; jobs.len()];
        let mut stale_index = Vec::new();
        for (idx, reply) in calls.iter().zip(replies) {
            if reply.len() != idx.len() * 2 {
                return Err(corrupt("enqueue.lua answered the wrong number of entries"));
            }
            for (&i, pair) in idx.iter().zip(reply.chunks_exact(2)) {
                let id = JobId(string(&pair[0])?);
                let created = int(&pair[1])? == 1;
                if id != jobs[i].id {
                    // A duplicate of a unique job: the id written to the index names nothing.
                    stale_index.push(jobs[i].id.0.clone());
                }
                out[i] = Some(Enqueued { id, created });
            }
        }
        if !stale_index.is_empty() {
            self.unindex(&stale_index).await?;
        }
        out.into_iter()
            .map(|e| e.ok_or_else(|| corrupt("enqueue.lua skipped a job")))
            .collect()
    }

    async fn fetch(&self, queue: &str, max: usize, lease: Duration) -> BrokerResult<Vec<Job>> {
        check_queue(queue)?;
        let now = self.clock.now_ms();
        let mut cmd = self.eval(&SCRIPTS.fetch, queue);
        cmd.arg(now)
            .arg(max.min(FETCH_MAX))
            .arg(ms(lease))
            .arg(self.event_cap)
            .arg(PROMOTE_LIMIT);
        let reply: Vec<Value> = self.query(&cmd).await?;
        let lease_until = now.saturating_add(ms(lease));
        let mut jobs = Vec::with_capacity(reply.len());
        for v in &reply {
            // fetch.lua returns each job as it was before the lease: apply what it wrote.
            let mut job = job_from_fetch(v, queue)?;
            job.state = JobState::Running;
            job.attempt += 1;
            job.lease_token += 1;
            job.lease_until = Some(lease_until);
            job.started_at = Some(now);
            job.progress = 0;
            job.progress_message = None;
            jobs.push(job);
        }
        Ok(jobs)
    }

    async fn wait_for_work(&self, queues: &[String], timeout: Duration) -> BrokerResult<()> {
        if queues.is_empty() {
            tokio::time::sleep(timeout).await;
            return Ok(());
        }
        for q in queues {
            check_queue(q)?;
        }
        // Due jobs carry no signal when their time comes: wait no longer than the earliest.
        let now = self.clock.now_ms();
        let mut pipe = redis::pipe();
        for q in queues {
            pipe.cmd("ZRANGE")
                .arg(format!("{}due", self.base(q)))
                .arg(0)
                .arg(0)
                .arg("WITHSCORES");
        }
        let dues: Vec<Vec<(String, f64)>> = self.query_pipe(&pipe).await?;
        let mut wait = timeout;
        for (_, due) in dues.iter().flatten() {
            let due = *due as i64;
            if due <= now {
                return Ok(());
            }
            wait = wait.min(Duration::from_millis(u64::try_from(due - now).unwrap_or(0)));
        }
        if wait < Duration::from_millis(1) {
            return Ok(());
        }
        let mut conn = self.blocking_conn().await?;
        let mut cmd = redis::cmd("BLPOP");
        for q in queues {
            cmd.arg(format!("{}signal", self.base(q)));
        }
        cmd.arg(format!("{:.3}", wait.as_secs_f64()));
        match tokio::time::timeout(wait + BLOCK_SLACK, cmd.query_async::<Value>(&mut conn)).await {
            Ok(Ok(_)) => {
                self.health.ok(&self.url);
                self.return_blocking(conn);
                Ok(())
            }
            Ok(Err(e)) => Err(self.err(e)),
            // A reply may still arrive on that connection: drop it rather than reuse it.
            Err(_) => Ok(()),
        }
    }

    async fn heartbeat(&self, leases: &[Lease], lease: Duration) -> BrokerResult<Vec<LeaseStatus>> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.clock.now_ms();
        let queues: Vec<Option<String>> = leases.iter().map(|l| Some(l.queue.clone())).collect();
        let calls = group(&queues, FINISH_CHUNK);
        let mut pipe = redis::pipe();
        for (q, idx) in &calls {
            let mut cmd = self.eval(&SCRIPTS.heartbeat, q);
            cmd.arg(now).arg(ms(lease)).arg(idx.len());
            for &i in idx {
                cmd.arg(leases[i].job_id.as_str()).arg(leases[i].token);
            }
            pipe.add_command(cmd);
        }
        let mut out = vec![LeaseStatus::Lost; leases.len()];
        if !calls.is_empty() {
            let replies: Vec<Vec<i64>> = self.query_pipe(&pipe).await?;
            for ((_, idx), reply) in calls.iter().zip(replies) {
                for (&i, r) in idx.iter().zip(reply) {
                    out[i] = match r {
                        1 => LeaseStatus::Held,
                        2 => LeaseStatus::Cancelled,
                        _ => LeaseStatus::Lost,
                    };
                }
            }
        }
        Ok(out)
    }

    async fn progress(
        &self,
        lease: &Lease,
        percent: u8,
        message: Option<String>,
    ) -> BrokerResult<()> {
        let mut cmd = self.eval(&SCRIPTS.progress, &lease.queue);
        cmd.arg(self.clock.now_ms())
            .arg(self.event_cap)
            .arg(lease.job_id.as_str())
            .arg(lease.token)
            .arg(percent.min(100))
            .arg(if message.is_some() { "1" } else { "0" })
            .arg(message.as_deref().unwrap_or(""));
        match self.query::<i64>(&cmd).await? {
            1 => Ok(()),
            _ => Err(BrokerError::LeaseLost(lease.job_id.clone())),
        }
    }

    async fn finish(&self, batch: Vec<Finish>) -> BrokerResult<Vec<BrokerResult<()>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.clock.now_ms();
        let queues: Vec<Option<String>> =
            batch.iter().map(|f| Some(f.lease.queue.clone())).collect();
        let calls = group(&queues, FINISH_CHUNK);
        let mut pipe = redis::pipe();
        for (q, idx) in &calls {
            let mut cmd = self.eval(&SCRIPTS.finish, q);
            cmd.arg(now).arg(self.event_cap).arg(idx.len());
            for &i in idx {
                let f = &batch[i];
                let (code, a, b) = outcome_args(&f.outcome)?;
                cmd.arg(f.lease.job_id.as_str())
                    .arg(f.lease.token)
                    .arg(code)
                    .arg(a)
                    .arg(b);
            }
            pipe.add_command(cmd);
        }
        let mut applied = vec![false; batch.len()];
        if !calls.is_empty() {
            let replies: Vec<Vec<i64>> = self.query_pipe(&pipe).await?;
            for ((_, idx), reply) in calls.iter().zip(replies) {
                for (&i, r) in idx.iter().zip(reply) {
                    applied[i] = r == 1;
                }
            }
        }
        Ok(batch
            .iter()
            .zip(applied)
            .map(|(f, ok)| {
                if ok {
                    Ok(())
                } else {
                    Err(BrokerError::LeaseLost(f.lease.job_id.clone()))
                }
            })
            .collect())
    }

    async fn cancel(&self, id: &JobId) -> BrokerResult<Job> {
        self.change_one(&SCRIPTS.cancel, id, "a finished job cannot be cancelled")
            .await
    }

    async fn retry(&self, id: &JobId) -> BrokerResult<Job> {
        self.change_one(
            &SCRIPTS.retry,
            id,
            "only dead or cancelled jobs can be retried",
        )
        .await
    }

    async fn retry_all_dead(&self, queue: Option<&str>) -> BrokerResult<u64> {
        let queues = match queue {
            Some(q) => {
                check_queue(q)?;
                vec![q.to_owned()]
            }
            None => self.queue_names().await?,
        };
        let mut total = 0u64;
        for q in &queues {
            loop {
                let mut cmd = self.eval(&SCRIPTS.retry_all_dead, q);
                cmd.arg(self.clock.now_ms()).arg(self.event_cap).arg(BATCH);
                let n: u64 = self.query(&cmd).await?;
                total += n;
                if n < BATCH as u64 {
                    break;
                }
            }
        }
        Ok(total)
    }

    async fn rescue(&self, max_interruptions: u32) -> BrokerResult<Vec<JobId>> {
        let mut pending = self.queue_names().await?;
        let mut rescued = Vec::new();
        // One pipelined call per queue; queues that filled a batch go round again.
        while !pending.is_empty() {
            let now = self.clock.now_ms();
            let mut pipe = redis::pipe();
            for q in &pending {
                let mut cmd = self.eval(&SCRIPTS.rescue, q);
                cmd.arg(now)
                    .arg(self.event_cap)
                    .arg(max_interruptions)
                    .arg(BATCH);
                pipe.add_command(cmd);
            }
            let replies: Vec<Vec<String>> = self.query_pipe(&pipe).await?;
            let mut again = Vec::new();
            for (q, ids) in pending.into_iter().zip(replies) {
                if ids.len() >= BATCH {
                    again.push(q);
                }
                rescued.extend(ids.into_iter().map(JobId));
            }
            pending = again;
        }
        Ok(rescued)
    }

    async fn get(&self, id: &JobId) -> BrokerResult<Option<Job>> {
        let Some(queue) = self.queue_of(id).await? else {
            return Ok(None);
        };
        let v: Value = self
            .query(redis::cmd("HGETALL").arg(format!("{}job:{}", self.base(&queue), id)))
            .await?;
        job_from_fields(&v, id.as_str(), &queue)
    }

    async fn history(&self, id: &JobId) -> BrokerResult<Vec<Event>> {
        let Some(queue) = self.queue_of(id).await? else {
            return Ok(Vec::new());
        };
        // The job's first and last event ids bound the part of the stream to read (the first
        // leads its packed field `d`).
        let bounds: Vec<Option<String>> = self
            .query(
                redis::cmd("HMGET")
                    .arg(format!("{}job:{}", self.base(&queue), id))
                    .arg("d")
                    .arg("evn"),
            )
            .await?;
        let (Some(Some(d)), Some(Some(last))) = (bounds.first(), bounds.get(1)) else {
            return Ok(Vec::new());
        };
        let Some((first, _)) = d.split_once('|') else {
            return Err(corrupt(format!("job {id}: bad field d")));
        };
        let mut out = Vec::new();
        let mut start = first.to_owned();
        loop {
            let (chunk, n) = self.read_stream(&queue, &start, last, STREAM_CHUNK).await?;
            let Some((tail, _)) = chunk.last() else {
                break;
            };
            start = format!("({}", tail.sid);
            out.extend(
                chunk
                    .into_iter()
                    .map(|(_, e)| e)
                    .filter(|e| &e.job_id == id),
            );
            if n < STREAM_CHUNK {
                break;
            }
        }
        Ok(out)
    }

    async fn list(&self, filter: &JobFilter) -> BrokerResult<JobPage> {
        let limit = filter.limit.min(LIST_MAX_LIMIT);
        if limit == 0 {
            return Ok(JobPage::default());
        }
        let queues = match &filter.queue {
            Some(q) => {
                check_queue(q)?;
                vec![q.clone()]
            }
            None => self.queue_names().await?,
        };
        let cursor = filter.cursor.as_deref().unwrap_or("");
        let state = filter.state.map(JobState::as_str).unwrap_or("");
        let kind = filter.kind.as_deref().unwrap_or("");
        let mut jobs = Vec::new();
        // The lowest id at or above which every queue has been read completely.
        let mut floor: Option<String> = None;
        for q in &queues {
            let (js, resume) = self.list_queue(q, cursor, state, kind, limit).await?;
            jobs.extend(js);
            if let Some(p) = resume
                && floor.as_ref().is_none_or(|f| p > *f)
            {
                floor = Some(p);
            }
        }
        jobs.sort_by(|a, b| b.id.cmp(&a.id));
        if jobs.len() > limit {
            let cut = jobs[limit - 1].id.0.clone();
            if floor.as_ref().is_none_or(|f| cut > *f) {
                floor = Some(cut);
            }
        }
        if let Some(f) = &floor {
            jobs.retain(|j| j.id.0 >= *f);
        }
        jobs.truncate(limit);
        Ok(JobPage {
            jobs,
            next_cursor: floor,
        })
    }

    async fn queues(&self) -> BrokerResult<Vec<QueueStats>> {
        let names = self.queue_names().await?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let now_s = self.clock.now_ms().div_euclid(1000);
        let mut pipe = redis::pipe();
        for q in &names {
            let base = self.base(q);
            pipe.cmd("HGETALL").arg(format!("{base}counts"));
            for name in ["ok", "fail"] {
                let keys: Vec<String> = (now_s - 59..=now_s)
                    .map(|s| format!("{base}stat:{name}:{s}"))
                    .collect();
                pipe.cmd("MGET").arg(keys);
            }
        }
        let replies: Vec<Value> = self.query_pipe(&pipe).await?;
        let mut out = Vec::new();
        for (q, r) in names.iter().zip(replies.chunks_exact(3)) {
            let counts_map: HashMap<String, i64> = HashMap::from_redis_value_ref(&r[0])
                .map_err(|e| corrupt(format!("counts of {q}: {e}")))?;
            let mut counts = StateCounts::default();
            for (st, n) in counts_map {
                if let Some(state) = JobState::parse(&st) {
                    *counts.get_mut(state) = u64::try_from(n).unwrap_or(0);
                }
            }
            if JobState::ALL.iter().all(|s| counts.get(*s) == 0) {
                continue;
            }
            let sum = |v: &Value| -> BrokerResult<u64> {
                let xs: Vec<Option<u64>> = Vec::from_redis_value_ref(v)
                    .map_err(|e| corrupt(format!("stats of {q}: {e}")))?;
                Ok(xs.into_iter().flatten().sum())
            };
            out.push(QueueStats {
                queue: q.clone(),
                counts,
                paused: false,
                processed_last_minute: sum(&r[1])?,
                failed_last_minute: sum(&r[2])?,
            });
        }
        Ok(out)
    }

    async fn events(&self, after: Option<&str>, limit: usize) -> BrokerResult<Vec<Event>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let after = match after {
            None => None,
            Some(s) => Some(parse_event_id(s).ok_or_else(|| {
                BrokerError::Invalid(FieldError::new("since", "not an event id of this broker"))
            })?),
        };
        let names = self.queue_names().await?;
        for round in 0..2 {
            let mut pipe = redis::pipe();
            pipe.cmd("TIME");
            // Events are ordered by (stream id, queue, place in the entry).
            for q in &names {
                let (start, count) = match &after {
                    None => ("-".to_owned(), limit),
                    // Same stream id in a queue sorting after the cursor's: not yet seen.
                    Some((pos, cq)) if q.as_str() > *cq => (pos.sid.to_string(), limit),
                    // The cursor's own entry may hold events not yet seen; it may also hold
                    // none, so read one entry more.
                    Some((pos, cq)) if q.as_str() == *cq => (pos.sid.to_string(), limit + 1),
                    Some((pos, _)) => (format!("({}", pos.sid), limit),
                };
                pipe.cmd("XRANGE")
                    .arg(format!("{}events", self.base(q)))
                    .arg(start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(count);
            }
            let replies: Vec<Value> = self.query_pipe(&pipe).await?;
            let (time, streams) = replies
                .split_first()
                .ok_or_else(|| corrupt("no reply to TIME"))?;
            let time: Vec<u64> =
                Vec::from_redis_value_ref(time).map_err(|e| corrupt(format!("TIME: {e}")))?;
            let server_ms = time.first().copied().unwrap_or(0) * 1000
                + time.get(1).copied().unwrap_or(0) / 1000;
            let mut merged = Vec::new();
            for (q, v) in names.iter().zip(streams) {
                let seen = |pos: &Pos| match &after {
                    Some((cursor, cq)) => q.as_str() == *cq && pos <= cursor,
                    None => false,
                };
                merged.extend(
                    parse_entries(v, q)?
                        .0
                        .into_iter()
                        .filter(|(pos, _)| !seen(pos))
                        .map(|(pos, e)| (pos, q.clone(), e)),
                );
            }
            merged.sort_by(|a, b| (a.0.sid, &a.1, a.0.sub).cmp(&(b.0.sid, &b.1, b.0.sub)));
            merged.truncate(limit);
            // Another stream may still get an entry in the current millisecond with a lower
            // sequence than one already read: hand out only finished milliseconds.
            let settled = merged
                .iter()
                .take_while(|(pos, _, _)| pos.sid.ms < server_ms)
                .count();
            if settled == merged.len() || round == 1 {
                merged.truncate(settled);
                return Ok(merged.into_iter().map(|(_, _, e)| e).collect());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(Vec::new())
    }

    async fn purge(
        &self,
        states: &[JobState],
        before: Millis,
        keep_events: u64,
    ) -> BrokerResult<u64> {
        let finals: Vec<String> = states
            .iter()
            .filter(|s| s.is_final())
            .map(|s| s.as_str().to_owned())
            .collect();
        let mut total = 0u64;
        for q in self.queue_names().await? {
            if !finals.is_empty() {
                let mut args = vec![before.to_string(), BATCH.to_string()];
                args.extend(finals.iter().cloned());
                let ids = self.drain_batches(&SCRIPTS.purge, &q, &args).await?;
                self.unindex(&ids).await?;
                total += ids.len() as u64;
            }
            // The bound is per queue stream (each queue keeps its newest `keep_events`).
            self.query::<()>(
                redis::cmd("XTRIM")
                    .arg(format!("{}events", self.base(&q)))
                    .arg("MAXLEN")
                    .arg(keep_events),
            )
            .await?;
        }
        Ok(total)
    }

    async fn drop_queue(&self, queue: &str) -> BrokerResult<u64> {
        check_queue(queue)?;
        let ids = self
            .drain_batches(&SCRIPTS.drop_queue, queue, &[BATCH.to_string()])
            .await?;
        self.unindex(&ids).await?;
        self.query::<()>(redis::cmd("SREM").arg(self.queues_key()).arg(queue))
            .await?;
        Ok(ids.len() as u64)
    }

    async fn ping(&self) -> BrokerResult<()> {
        self.query::<()>(&redis::cmd("PING")).await
    }
}
