//! What operators ask of the broker (a job, a page of jobs, the queues and their counts) and
//! the two deletions they order (`purge`, `drop_queue`).
//!
//! None of this is on a job's path through the pool: these calls read the per-queue indexes
//! and counters the scripts keep (see `keys.rs`), or delete finished jobs in batches through
//! purge.lua and drop_queue.lua, which never touch a running job's lease. A job's history and
//! the event log are `events.rs`'s.

use std::collections::HashMap;

use redis::{FromRedisValue, Value};

use super::RedisBroker;
use super::conn::Pipe;
use super::decode::{corrupt, got, int, job_from_record, string};
use super::keys::check_queue;
use super::scripts::{BATCH, SCRIPTS};
use crate::broker::{JobFilter, JobPage, QueueStats, StateCounts};
use crate::error::{BrokerError, BrokerResult};
use crate::job::{FieldError, Job, JobId, JobState};
use crate::time::Timestamp;

/// Ids a list call looks at, and how many calls one page may take.
const LIST_BUDGET: usize = 1000;
const LIST_MAX_CALLS: usize = 32;
/// Queues a listing of several reads at once.
const LIST_IN_FLIGHT: usize = 64;

/// The job `id`, if the index and its record both have it.
pub(super) async fn get(broker: &RedisBroker, id: &JobId) -> BrokerResult<Option<Job>> {
    let Some(queue) = broker.queue_of(id).await? else {
        return Ok(None);
    };
    let mut cmd = broker.eval(&SCRIPTS.get, &queue);
    cmd.arg(id.as_str());
    let v: Value = broker.query(&cmd).await?;
    match got(&v)? {
        Some((rec, d)) => job_from_record(rec, d, id.as_str(), &queue),
        None => Ok(None),
    }
}

/// A page of jobs, newest first, across the queues the filter names.
pub(super) async fn list(broker: &RedisBroker, filter: &JobFilter) -> BrokerResult<JobPage> {
    filter.check()?;
    let limit = filter.page_size();
    // A cursor is a job id, which this broker generates as a UUID (`JobId::generate`):
    // anything else was not issued here, and would list from an arbitrary place.
    let cursor = match filter.cursor.as_deref() {
        Some(c) if uuid::Uuid::try_parse(c).is_ok() => c,
        Some(_) => {
            return Err(FieldError::new("cursor", "not a cursor this broker issued").into());
        }
        None => "",
    };
    let queues = broker.queue_or_all(filter.queue.as_deref()).await?;
    let state = filter.state.map(JobState::as_str).unwrap_or("");
    let kind = filter.kind.as_deref().unwrap_or("");
    let mut jobs = Vec::new();
    // The lowest id at or above which every queue has been read completely.
    let mut floor: Option<String> = None;
    // The queues' parts at once, a bounded number in flight: queue names come from whoever
    // enqueues, and one round trip after another took seconds with thousands of queues (a
    // dashboard's page timed out at 30 s while a queue drained).
    let mut parts: Vec<(Vec<Job>, Option<String>)> = Vec::with_capacity(queues.len());
    for some in queues.chunks(LIST_IN_FLIGHT) {
        let reads = some
            .iter()
            .map(|q| list_queue(broker, q, cursor, state, kind, limit));
        parts.extend(futures::future::try_join_all(reads).await?);
    }
    for (js, resume) in parts {
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

/// One queue's part of a listing: jobs newest first from `cursor` (exclusive), and where
/// to continue (`None` when nothing matching is left).
async fn list_queue(
    broker: &RedisBroker,
    queue: &str,
    cursor: &str,
    state: &str,
    kind: &str,
    want: usize,
) -> BrokerResult<(Vec<Job>, Option<String>)> {
    let mut jobs = Vec::new();
    let mut pos = cursor.to_owned();
    for _ in 0..LIST_MAX_CALLS {
        let mut cmd = broker.eval(&SCRIPTS.list, queue);
        cmd.arg(&pos)
            .arg(state)
            .arg(kind)
            .arg(want - jobs.len())
            .arg(LIST_BUDGET);
        let reply: Vec<Value> = broker.query(&cmd).await?;
        let mut it = reply.into_iter();
        let (Some(last), Some(more), Some(exhausted)) = (it.next(), it.next(), it.next()) else {
            return Err(corrupt("short reply from list.lua"));
        };
        pos = string(&last)?;
        while let (Some(id), Some(rec), Some(d)) = (it.next(), it.next(), it.next()) {
            if let Some(job) = job_from_record(&rec, &d, &string(&id)?, queue)? {
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

/// Every queue that holds jobs, with its counts and last minute's throughput.
pub(super) async fn queues(broker: &RedisBroker) -> BrokerResult<Vec<QueueStats>> {
    let names = broker.queue_names().await?;
    if names.is_empty() {
        return Ok(Vec::new());
    }
    // The per-second counters are keyed by the scripts' clock: read them by it.
    let now_s = broker.now().await?.as_millis().div_euclid(1000);
    let mut pipe = Pipe::new();
    for q in &names {
        let base = broker.base(q);
        pipe.cmd("HGETALL").arg(format!("{base}counts"));
        for name in ["ok", "fail"] {
            let keys: Vec<String> = (now_s - 59..=now_s)
                .map(|s| format!("{base}stat:{name}:{s}"))
                .collect();
            pipe.cmd("MGET").arg(keys);
        }
        pipe.cmd("EXISTS").arg(format!("{base}paused"));
    }
    let replies: Vec<Value> = broker.query_pipe(&pipe).await?;
    let mut out = Vec::new();
    for (q, r) in names.iter().zip(replies.chunks_exact(4)) {
        let counts_map: HashMap<String, i64> = HashMap::from_redis_value_ref(&r[0])
            .map_err(|e| corrupt(format!("counts of {q}: {e}")))?;
        let mut counts = StateCounts::default();
        for (st, n) in counts_map {
            if let Some(state) = JobState::parse(&st) {
                *counts.get_mut(state) = u64::try_from(n).unwrap_or(0);
            }
        }
        let paused = int(&r[3])? == 1;
        // A queue that held jobs once stays in the index; listed are those that hold jobs
        // now, and paused ones, which an operator wants to see even while empty.
        if !paused && JobState::ALL.iter().all(|s| counts.get(*s) == 0) {
            continue;
        }
        let sum = |v: &Value| -> BrokerResult<u64> {
            let xs: Vec<Option<u64>> =
                Vec::from_redis_value_ref(v).map_err(|e| corrupt(format!("stats of {q}: {e}")))?;
            Ok(xs.into_iter().flatten().sum())
        };
        out.push(QueueStats {
            queue: q.clone(),
            counts,
            paused,
            processed_last_minute: sum(&r[1])?,
            failed_last_minute: sum(&r[2])?,
        });
    }
    Ok(out)
}

/// Deletes the final jobs in `states` finished before `before`, and trims each queue's
/// stream to its newest `keep_events` entries.
pub(super) async fn purge(
    broker: &RedisBroker,
    states: &[JobState],
    before: Timestamp,
    keep_events: u64,
) -> BrokerResult<u64> {
    let finals: Vec<String> = states
        .iter()
        .filter(|s| s.is_final())
        .map(|s| s.as_str().to_owned())
        .collect();
    let mut total = 0u64;
    for q in broker.queue_names().await? {
        // A chain step is kept while the step after it exists (purge.lua): deleting a step
        // may free the one before it, so rounds repeat until one deletes nothing, and a chain
        // due whole goes in one call.
        loop {
            let mut round = 0u64;
            for st in &finals {
                round += purge_state(broker, &q, st, before).await?;
            }
            total += round;
            if round == 0 {
                break;
            }
        }
        // The bound is per queue stream (each queue keeps its newest `keep_events`).
        broker
            .query::<()>(
                redis::cmd("XTRIM")
                    .arg(broker.events_key(&q))
                    .arg("MAXLEN")
                    .arg(keep_events),
            )
            .await?;
    }
    Ok(total)
}

/// One pass of purge.lua over the jobs of `queue` in the final state `state` finished before
/// `before`, a batch per call; returns how many it deleted.
async fn purge_state(
    broker: &RedisBroker,
    queue: &str,
    state: &str,
    before: Timestamp,
) -> BrokerResult<u64> {
    let mut deleted = 0u64;
    let mut skip: i64 = 0;
    loop {
        let mut cmd = broker.eval(&SCRIPTS.purge, queue);
        cmd.arg(before).arg(BATCH).arg(state).arg(skip);
        let reply: Vec<Value> = broker.query(&cmd).await?;
        let [next, done, ids @ ..] = reply.as_slice() else {
            return Err(corrupt("short reply from purge.lua"));
        };
        let ids = ids.iter().map(string).collect::<BrokerResult<Vec<_>>>()?;
        broker.unindex(&ids).await?;
        deleted += ids.len() as u64;
        skip = int(next)?;
        if int(done)? == 1 {
            return Ok(deleted);
        }
    }
}

/// Deletes a queue and every job on it.
pub(super) async fn drop_queue(broker: &RedisBroker, queue: &str) -> BrokerResult<u64> {
    check_queue(queue)?;
    let ids = broker
        .drain_batches(&SCRIPTS.drop_queue, queue, &[BATCH.to_string()])
        .await?;
    broker.unindex(&ids).await?;
    let mut pipe = Pipe::new();
    pipe.cmd("SREM")
        .arg(broker.queues_key())
        .arg(queue)
        .ignore();
    pipe.cmd("SREM")
        .arg(broker.leased_key())
        .arg(queue)
        .ignore();
    broker.query_pipe::<()>(&pipe).await?;
    // Enqueued to again by this process, the queue is new again: announced again, so that a
    // follower waiting on the queues it listed before wakes for it (`announce.rs`).
    broker.forget_announced(queue);
    Ok(ids.len() as u64)
}

/// The broker answers: `PING` (a node starts once it does). Each node of a cluster that lost a
/// shard still answers it, but refuses every command on a key (`CLUSTERDOWN`) until the shard
/// is back: [`ready`] tells that.
pub(super) async fn ping(broker: &RedisBroker) -> BrokerResult<()> {
    broker.query::<()>(&redis::cmd("PING")).await
}

/// [`ping`], and on a Cluster its state: `CLUSTER INFO` (routed to any node) says `fail`
/// while a slot has no reachable primary. Where the command is refused (an ACL user without
/// `cluster|info`, a managed Redis that hides it), the ping alone answers, as before.
pub(super) async fn ready(broker: &RedisBroker) -> BrokerResult<()> {
    if !broker.is_cluster() {
        return ping(broker).await;
    }
    let info: String = match broker.query(redis::cmd("CLUSTER").arg("INFO")).await {
        Ok(info) => info,
        Err(BrokerError::Backend(why)) if refused(&why.to_string()) => {
            return ping(broker).await;
        }
        Err(e) => return Err(e),
    };
    let state = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("cluster_state:"))
        .unwrap_or("unknown");
    if state == "ok" {
        Ok(())
    } else {
        Err(BrokerError::Unavailable(
            format!("the Redis Cluster is down (cluster_state:{state}): a shard is unreachable")
                .into(),
        ))
    }
}

/// Whether an error's text says Redis refused the command itself (an ACL without it, a
/// server that hides it), not that it failed.
fn refused(why: &str) -> bool {
    let lower = why.to_ascii_lowercase();
    why.contains("NOPERM")
        || lower.contains("unknown command")
        || lower.contains("unknown subcommand")
}
