//! The key layout: the names of every key the broker and its scripts use, the checks on the
//! prefix and queue names that go into them, and the global keys outside any queue.
//!
//! Every key of one queue starts with `{<prefix>:<queue>}:`, so all of them share one hash tag
//! and every script touches one Cluster slot. The per-queue keys are listed in
//! `workers/lua/common.lua`; in short: `job:<id>` and `jd:<id>` (a job's record and its fixed part), `all` (every id, a
//! lexicographic index for newest-first listing), `lane:<priority>` (a list per priority of the
//! jobs enqueued `queued`, in queue order; `lanes` names the priorities that have one) and
//! `queued` (the jobs queued later; score = priority, member = fixed-width due time + enqueue
//! sequence + id, so strict priority then earliest due then FIFO, with no double-precision
//! limit; fetch merges it with the lanes in that order), `due` (scheduled and retrying ids by due time), `running` (by lease
//! deadline, plus one long non-job member at +inf that keeps it a skiplist: count it with
//! `ZCOUNT .. -inf (+inf`), `done` (succeeded ids, a list in finish order) and `dead` / `cancelled` (zsets by finish time), `counts` (state -> count, kept
//! by every script so that `queues()` is O(1) per queue), `events` (a stream), `signal` (wake-up
//! tokens for `BLPOP`), `unique` (unique key -> id), `seq`, `rate` (a rated queue's next start,
//! see `rating.rs`) and per-second `stat:*` counters.
//!
//! Three keys are global, outside any queue's slot: `<prefix>:queues` (a set of queue names) and
//! `<prefix>:jobq` (a hash id -> queue, because `get`, `cancel` and `retry` know only an id)
//! are written by the client in the same pipeline as the enqueue script, *before* it runs:
//! a crash in between leaves an index entry pointing to no job (`get` says not found), never a
//! job that cannot be found. `<prefix>:leased` (a set of the queues that may hold running jobs)
//! is what rescue visits, so that its work follows the queues in use, not every queue ever
//! used: the client adds the queue in the same pipeline as each fetch, *after* the script (an
//! entry for a queue with nothing running costs one look); rescue removes a queue whose
//! `running` zset it found empty, then looks again and puts it back if a fetch leased a job
//! in between (see `lifecycle.rs`). A node that connects adds every queue of `queues` once,
//! so that jobs leased before this index existed are rescued too. On a Redis Cluster the three
//! global keys live in slots of their own: `cluster.rs` splits such a pipeline by slot and
//! keeps these orders (global writes before or after the queue's scripts, as written).
//!
//! A fourth global key, `<prefix>:layout`, holds the storage layout's version (`layout.rs`).
//! A fifth, `<prefix>:newq`, is a stream with an entry per queue a process enqueues to for
//! the first time (its name, written *after* the enqueue script, trimmed to about a thousand
//! entries): a follower of the event log blocked on the queues' streams wakes for it too, so
//! that a queue created while it waits is not waited out (`events.rs`).
//!
//! A sixth, `<prefix>:evclock`, on one Redis only (not a cluster), is the event clock: the last
//! id given to an entry of any queue's `events` stream, which every script takes as its second
//! key and numbers its entry after (`common.lua`), so that the streams' ids follow the order
//! the scripts ran in and the log's reader need not wait for a millisecond to end (`events.rs`).
//!
//! The registry of worker nodes lives in a hash tag of its own, `{<prefix>}` (a queue's is
//! `{<prefix>:<queue>}`, never that): `{<prefix>}:nodes` and `{<prefix>}:seen`, see `nodes.rs`.
//!
//! A job is two strings (storage layout 3; `layout.rs` migrates older ones). Its record,
//! `job:<id>`: the fields that change as it moves packed in `h`, its kind, then the optional
//! fields it has (a fresh job none, or its unique key and chain links), as name/value pairs,
//! all cut apart by the bytes 0xFF and 0xFE, which no UTF-8 text holds (the layout is in
//! `common.lua`). Its `d`, `jd:<id>`: the fields fixed at enqueue (first event id, priority,
//! max retries, timeout, creation time and payload), which no step after enqueue rewrites.
//! Neither stores the id nor the queue (their keys name both); a succeeded job keeps its last
//! progress, read as 100, and `lease_until` is read only while the job runs, so finishing
//! clears neither. fetch.lua and finish.lua read a batch of records with one `MGET` and write
//! them with one `MSET`: a hash paid a field search per field read and an insert per field written, and a
//! payload inside the record was copied and hashed by Lua at every step
//! (docs/research/redis-layout-v2/README.md).
//! fetch.lua hands the record and `d` over as read; only `decode.rs` reads all of them.
//!
//! The names are written out here and in `common.lua` by hand: they outlive deploys, so a
//! rename is a data migration, not a refactoring. What is stored under them is the scripts'
//! business, and reading it back `decode.rs`'s.

use super::RedisBroker;
use super::conn::poisoned;
use crate::error::{BrokerError, BrokerResult};
use crate::job::JobId;

/// The queues, sorted, as a read of the event log listed them, and the id of the last entry
/// of `newq` (see the module docs) when the same `MULTI` read it: a snapshot of both.
#[derive(Clone, Debug, Default)]
pub(super) struct Listing {
    pub(super) names: Vec<String>,
    pub(super) announced: Option<String>,
}

/// Refuses a prefix that would break the hash tag (braces) or the commands (spaces).
pub(super) fn check_prefix(prefix: &str) -> BrokerResult<()> {
    if prefix.is_empty() || prefix.contains(['{', '}']) || prefix.chars().any(char::is_whitespace) {
        return Err(BrokerError::Config(format!(
            "redis key prefix {prefix:?}: must be non-empty, without braces or spaces"
        )));
    }
    Ok(())
}

pub(super) fn check_queue(queue: &str) -> BrokerResult<()> {
    Ok(crate::job::check_queue(queue)?)
}

impl RedisBroker {
    /// The key prefix of one queue: `{<prefix>:<queue>}:`.
    pub(super) fn base(&self, queue: &str) -> String {
        format!("{{{}:{}}}:", self.prefix, queue)
    }

    pub(super) fn events_key(&self, queue: &str) -> String {
        format!("{}events", self.base(queue))
    }

    pub(super) fn due_key(&self, queue: &str) -> String {
        format!("{}due", self.base(queue))
    }

    pub(super) fn signal_key(&self, queue: &str) -> String {
        format!("{}signal", self.base(queue))
    }

    pub(super) fn jobq_key(&self) -> String {
        format!("{}:jobq", self.prefix)
    }

    pub(super) fn running_key(&self, queue: &str) -> String {
        format!("{}running", self.base(queue))
    }

    pub(super) fn leased_key(&self) -> String {
        format!("{}:leased", self.prefix)
    }

    /// A named cursor in the event log (`Broker::cursor`): a string, outside any queue.
    pub(super) fn cursor_key(&self, name: &str) -> String {
        format!("{}:cursor:{name}", self.prefix)
    }

    pub(super) fn queues_key(&self) -> String {
        format!("{}:queues", self.prefix)
    }

    /// The event clock (see the module docs).
    pub(super) fn event_clock_key(&self) -> String {
        format!("{}:evclock", self.prefix)
    }

    /// The stream announcing queues new to a process (see the module docs).
    pub(super) fn new_queues_key(&self) -> String {
        format!("{}:newq", self.prefix)
    }

    /// Every queue that has had a job, sorted.
    pub(super) async fn queue_names(&self) -> BrokerResult<Vec<String>> {
        let mut names: Vec<String> = self
            .query(redis::cmd("SMEMBERS").arg(self.queues_key()))
            .await?;
        names.sort();
        Ok(names)
    }

    /// What the event log's last read listed (nothing before the first): the queues whose
    /// streams the next read reads, which it checks against the queues then, and with them
    /// the last announcement of a new queue when one `MULTI` read both (`events.rs`).
    pub(super) fn listing(&self) -> BrokerResult<Listing> {
        Ok(self.listed.lock().map_err(|_| poisoned())?.clone())
    }

    pub(super) fn set_listing(&self, listing: Listing) -> BrokerResult<()> {
        *self.listed.lock().map_err(|_| poisoned())? = listing;
        Ok(())
    }

    /// `queue` (checked) when there is one, every queue otherwise.
    pub(super) async fn queue_or_all(&self, queue: Option<&str>) -> BrokerResult<Vec<String>> {
        match queue {
            Some(q) => {
                check_queue(q)?;
                Ok(vec![q.to_owned()])
            }
            None => self.queue_names().await,
        }
    }

    /// The queue a job id is on, from the global index.
    pub(super) async fn queue_of(&self, id: &JobId) -> BrokerResult<Option<String>> {
        self.query(redis::cmd("HGET").arg(self.jobq_key()).arg(id.as_str()))
            .await
    }

    /// Drops ids from the global index (jobs purged, dropped, or never created).
    pub(super) async fn unindex(&self, ids: &[String]) -> BrokerResult<()> {
        for chunk in ids.chunks(1000) {
            self.query::<()>(redis::cmd("HDEL").arg(self.jobq_key()).arg(chunk))
                .await?;
        }
        Ok(())
    }
}
