//! The Redis broker: jobs in Redis, every multi-key step one Lua script (`workers/lua/*.lua`).
//!
//! This module owns the Redis side of the [`Broker`] seam: the key layout, the scripts' calling
//! conventions, the connections and the translation between Redis replies and Hopper types. It
//! does not decide anything about jobs: the pool says what happens, the scripts record it
//! atomically.
//!
//! # Layout
//!
//! - `mod.rs` (here): [`RedisBroker`], [`connect`], and the [`Broker`] impl, which only says
//!   which file answers each call.
//! - `conn.rs`: the connections (a [`ConnectionManager`](redis::aio::ConnectionManager), or a
//!   cluster connection, for everything but blocking waits; a few dedicated connections for
//!   `BLPOP` and `XREAD BLOCK`), TLS, and what a failure means, with outage logging.
//! - `cluster.rs`: Redis Cluster: its URLs, pipelines split by slot, and the node of a slot
//!   for blocking waits.
//! - `keys.rs`: the key layout (one hash tag per queue) and the global keys.
//! - `layout.rs`: the storage layout's version (`<prefix>:layout`) and the migration a node
//!   runs on connecting to jobs stored in an older one.
//! - `scripts.rs`: loading the Lua code (a Redis Function library, or scripts) and calling it.
//! - `decode.rs`: replies -> jobs and script answers.
//! - `lifecycle.rs`: a job's path: enqueue, fetch, wait, heartbeat, progress, checkpoint,
//!   finish, cancel, retry, rescue.
//! - `due_hint.rs`: each queue's earliest due time as its last fetch answered it, which
//!   spares the idle wait after that fetch its own round trips.
//! - `read.rs`: what operators ask (get, list, queues) and order (purge, drop_queue).
//! - `events.rs`: the event streams, event ids, a job's history and the merged log.
//! - `announce.rs`: queues new to this process, announced so that an event waiter wakes for
//!   them.
//! - `cursors.rs`: named places in the event log its readers keep (`<prefix>:cursor:<name>`).
//! - `pausing.rs`: pausing and resuming a queue (its `paused` key; fetch.lua honours it).
//! - `rating.rs`: job rate limits (its `rate` key; fetch.lua advances it).
//! - `nodes.rs`: the registry of worker nodes (two keys in the tag `{<prefix>}`), and the
//!   count of ready jobs ahead of a priority.
//! - `inbox.rs`: users' notification inboxes and Web Push subscriptions, under one hash tag
//!   of their own (`{<prefix>:@inbox}:`).
//! - `circuits.rs`: the circuit breakers of `notify.send`'s endpoints, one hash in the tag
//!   `{<prefix>}` (`{<prefix>}:circuits`).
//!
//! # Chains
//!
//! A chain step's record carries `chain_id`, `chain_index` and `chain_next`; every step is on
//! the chain's queue, so the scripts walk `chain_next` links inside one slot. The step after a
//! succeeded one gets the result as its payload's `input`: the scripts store the result's JSON
//! text as it came in the step's field `input` and never touch the payload (Lua's cjson would
//! turn `[]` into `{}` and round integers beyond 2^53); `decode.rs` sets it as the payload's
//! top-level `input` (replacing one the payload had) when it reads the job, as SQLite's
//! `json_set(payload, '$.input', ..)` does. A payload that is not an object gets no `input`.
//!
//! # Time
//!
//! Every lease, due time and rescue decision is made on Redis' clock: the scripts read `TIME`
//! (`clock_ms` in `common.lua`), so nodes whose clocks disagree still agree on whether a lease
//! is live, and a node whose clock runs 20 s fast never rescues a job still running elsewhere.
//! The times the pool hands over are made relative first: a retry's or a snooze's `at` is
//! turned into a delay against the clock that computed it (this node's), and the script adds
//! that delay to Redis' time, so a node's skew cancels out. Times a caller gives as times stay
//! absolute and are read on Redis' clock: a job's `run_at`, and the `before` of `purge`.
//! Reads that bucket or compare by time (`queues`' last minute, `wait_for_work`'s earliest
//! due job) ask Redis for `TIME` too, or take it from a script that read it: the wait after a
//! fetch takes fetch.lua's delay to the earliest due job, counted from this node's clock when
//! the reply came (`due_hint.rs`), which is off by no more than the round trip.
//! [`RedisBroker::with_clock_time`] makes the scripts use
//! the broker's [`Clock`] instead, for tests that move a manual clock.
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
//! - Redis Cluster (`redis-cluster://`): each queue is one slot, so one queue's throughput is
//!   one shard's; queues spread over the shards. A wait for work or events blocks once per
//!   slot waited on (a dedicated connection each); the merged event log holds back the
//!   current millisecond by the clock of one node, so nodes' clocks must agree within a
//!   millisecond or so for its order across queues (NTP on one LAN does that). The
//!   `maxmemory-policy` check asks one node.
//! - `rediss://` connects with TLS (rustls): the server's certificate is checked against the
//!   system's roots (or the file `SSL_CERT_FILE` names).

mod announce;
mod circuits;
mod cluster;
mod conn;
mod cursors;
mod decode;
mod due_hint;
mod events;
mod inbox;
mod keys;
mod layout;
mod lifecycle;
mod nodes;
mod pausing;
mod rating;
mod read;
mod scripts;

use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use crate::broker::Broker;
use crate::clock::Clock;
use crate::error::BrokerResult;

use self::conn::{Blocking, Health, IdleBlocking, Shared};
use self::due_hint::DueHints;

/// Default bound of each queue's event stream (approximate, trimmed as events are added).
pub const DEFAULT_EVENT_CAP: u64 = 100_000;

/// Connects the Redis broker at `url` (see [`RedisBroker::connect`]).
pub async fn connect(
    url: &str,
    prefix: &str,
    clock: Arc<dyn Clock>,
) -> BrokerResult<Arc<dyn Broker>> {
    Ok(Arc::new(RedisBroker::connect(url, prefix, clock).await?))
}

/// The Redis implementation of [`Broker`].
pub struct RedisBroker {
    /// Where blocking waits connect: the Redis, or the node of a cluster's slot.
    blocking_to: Blocking,
    conn: Shared,
    /// The URL without credentials, for messages.
    url: String,
    prefix: String,
    clock: Arc<dyn Clock>,
    /// Whether the scripts take their time from `clock` (tests) rather than Redis' `TIME`.
    clock_time: bool,
    event_cap: u64,
    /// Idle dedicated connections for `BLPOP` and `XREAD BLOCK` (by node), which would stall
    /// every other command queued behind them on the shared multiplexed connection.
    blocking: IdleBlocking,
    health: Health,
    /// What the last fetches answered about their queues' earliest due jobs, for the wait
    /// that follows them.
    due_hints: DueHints,
    /// Whether the Lua code is called as Redis Functions (`FCALL`) or, where Redis refuses
    /// them, as scripts (`EVALSHA`): see `scripts.rs`.
    use_functions: AtomicBool,
    /// The queues this process announced on `newq` (see `keys.rs`), so that it announces
    /// each once.
    announced: Mutex<HashSet<String>>,
    /// What the event log's last read listed (see `keys.rs`, `events.rs`).
    listed: Mutex<keys::Listing>,
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

impl RedisBroker {
    /// Connects to `url` (`redis://[user:password@]host:port/db`, `rediss://` with TLS, or a
    /// Redis Cluster: `redis-cluster://[user:password@]host:port[,host:port...]`,
    /// `rediss-cluster://` with TLS) and keeps every key under `prefix`. Refuses a Redis whose `maxmemory-policy` is not `noeviction`: an evicting
    /// Redis drops jobs silently.
    pub async fn connect(url: &str, prefix: &str, clock: Arc<dyn Clock>) -> BrokerResult<Self> {
        let shown = super::shown_url(url);
        keys::check_prefix(prefix)?;
        let (blocking_to, conn) = conn::open(url, &shown).await?;
        let broker = Self {
            blocking_to,
            conn,
            url: shown,
            prefix: prefix.to_owned(),
            clock,
            clock_time: false,
            event_cap: DEFAULT_EVENT_CAP,
            blocking: IdleBlocking::default(),
            health: Health::default(),
            due_hints: DueHints::default(),
            use_functions: AtomicBool::new(true),
            announced: Mutex::default(),
            listed: Mutex::default(),
        };
        broker.load_scripts().await?;
        broker.migrate_layout().await?;
        // Queues used before the index of leased queues existed may hold running jobs. Read
        // and added in two steps, as the two sets are in different Cluster slots (a queue
        // created in between is added by its first fetch).
        let names = broker.queue_names().await?;
        if !names.is_empty() {
            broker
                .query::<()>(redis::cmd("SADD").arg(broker.leased_key()).arg(names))
                .await?;
        }
        Ok(broker)
    }

    /// Decides leases, due times and rescue by the clock the broker was given instead of by
    /// Redis' own clock (`TIME`): for tests, which move a manual clock instead of sleeping.
    /// Never for a deployment: nodes whose clocks disagree would then disagree on whether a
    /// lease is live (see "Time" in the module docs).
    #[must_use]
    pub fn with_clock_time(mut self) -> Self {
        self.clock_time = true;
        self
    }

    /// Bounds each queue's event stream to about `cap` entries (default
    /// [`DEFAULT_EVENT_CAP`]); older events are trimmed as new ones are added.
    #[must_use]
    pub fn with_event_cap(mut self, cap: u64) -> Self {
        self.event_cap = cap.max(1);
        self
    }
}

// The trait's operations, each answered by the module that owns its concern.
crate::broker::delegate::delegate_broker!(RedisBroker, "redis",
    store: lifecycle, fetch: lifecycle, fetch_rated: rating, rate_held_until: rating,
    wait_for_work: lifecycle, heartbeat: lifecycle,
    progress: lifecycle, checkpoint: lifecycle, finish: lifecycle, cancel: lifecycle, retry: lifecycle,
    retry_all_dead: lifecycle, rescue: lifecycle, get: read, history: events, list: read,
    queues: read, events: events, wait_for_events: events, purge: read, drop_queue: read,
    ping: read, pause: pausing, resume: pausing, cursor: cursors,
    ready_ahead: nodes, register_node: nodes,
    deregister_node: nodes, nodes: nodes, inbox: inbox,
    circuits: circuits);
