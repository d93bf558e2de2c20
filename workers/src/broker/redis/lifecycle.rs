//! A job's path through the broker: enqueue, fetch, the wait for work, heartbeats, progress,
//! checkpoints, finish, and the moves an operator or the pool's rescue makes on it (cancel,
//! retry, retry of all dead jobs, rescue of expired leases).
//!
//! Each step is one script call per queue (batched, and pipelined across queues), so a change
//! and its event are atomic; this file packs the arguments and unpacks the replies. What a step
//! means is the [`Broker`] trait's, what a script does is its header's (`workers/lua/`).
//! The scripts take and keep times as integer milliseconds: every [`Timestamp`] and lease
//! `Duration` becomes one here, as it is packed (a `Timestamp` argument through its
//! `ToRedisArgs`, below; one inside a packed string through `as_millis`, never `Display`,
//! which is RFC 3339). A script's `now` is Redis' own unless the broker runs on its clock
//! (see "Time" in `mod.rs`): [`RedisBroker::now_arg`] says which.
//!
//! [`Broker`]: crate::broker::Broker

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use redis::{Cmd, Value};

use super::RedisBroker;
use super::conn::Pipe;
use super::decode::{Answer, answer, corrupt, fetched_lease, int, job_from_fetch, string};
use super::keys::check_queue;
use super::scripts::{BATCH, Lua, SCRIPTS};
use crate::broker::rate::{self, JobRate, RatedFetch, TOLERANCE_MS};
use crate::broker::{Enqueued, Finish, LeaseStatus, Outcome, Rescued};
use crate::error::{BrokerError, BrokerResult};
use crate::job::{Job, JobId, JobState, Lease, NewJob};
use crate::time::{Timestamp, duration_ms};

/// A time goes to the scripts as its integer milliseconds, what they compare and score by.
impl redis::ToRedisArgs for Timestamp {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        self.as_millis().write_redis_args(out);
    }

    fn describe_numeric_behavior(&self) -> redis::NumericBehavior {
        self.as_millis().describe_numeric_behavior()
    }
}

/// Jobs per enqueue script call: bounds how long one call blocks Redis (a few ms).
const ENQUEUE_CHUNK: usize = 500;
/// Entries per finish / heartbeat script call.
const FINISH_CHUNK: usize = 500;
/// Jobs leased per fetch call at most (fetch.lua's bound).
const FETCH_MAX: usize = 500;
/// Due jobs promoted per fetch call.
const PROMOTE_LIMIT: usize = 1000;

pub(super) async fn store(broker: &RedisBroker, jobs: Vec<NewJob>) -> BrokerResult<Vec<Enqueued>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let now_arg = broker.now_arg();
    // Run times go to the script as delays from this node's now (see `job_args`).
    let local_now = broker.clock.now();
    let queues: Vec<&str> = jobs.iter().map(|j| j.queue.as_str()).collect();
    // A chain goes whole into one call: enqueue.lua recognises a chain whose unique key is
    // taken by its first step, within the call.
    let calls = group(&queues, ENQUEUE_CHUNK, |i| {
        jobs[i].chain.as_ref().is_none_or(|c| c.index == 0)
    });
    let mut names: Vec<&str> = calls.iter().map(|(q, _)| *q).collect();
    names.dedup();
    // Per call, whether it goes through enqueue_plain.lua (every job of it [`is_plain`]).
    let plain: Vec<bool> = calls
        .iter()
        .map(|(_, chunk)| chunk.iter().all(|&i| is_plain(&jobs[i])))
        .collect();
    let mut pipe = Pipe::new();
    pipe.cmd("SADD")
        .arg(broker.queues_key())
        .arg(&names)
        .ignore();
    // The id index first, see `keys.rs` for why: one command for every call, before all of
    // them, so that a Cluster, whose pipeline runs in stages where it moves between the index
    // and the queues' slots, takes two round trips, not two per queue.
    let mut index = redis::cmd("HSET");
    index.arg(broker.jobq_key());
    for (queue, chunk) in &calls {
        for &i in chunk {
            index.arg(jobs[i].id.as_str()).arg(*queue);
        }
    }
    pipe.add_command(index).ignore();
    for ((queue, chunk), &plain) in calls.iter().zip(&plain) {
        pipe.add_command(enqueue_call(
            broker, queue, chunk, &jobs, plain, &now_arg, local_now,
        )?);
    }
    // After the scripts: a follower of the event log wakes for a queue it did not know.
    let fresh = broker.unannounced(&names);
    for q in &fresh {
        pipe.add_command(broker.announce(q)).ignore();
    }
    let replies: Vec<Vec<Value>> = broker.query_pipe(&pipe).await?;
    broker.announced(fresh);
    // Per job: the id enqueue.lua answered, whether it created the job, and when.
    let mut answered: Vec<Option<(JobId, bool, Timestamp)>> = vec![None; jobs.len()];
    let mut stale_index = Vec::new();
    for (((queue, idx), mut reply), plain) in calls.iter().zip(replies).zip(plain) {
        if plain {
            // enqueue_plain.lua: `[now]`, or `[]` when an id names a stored job and nothing
            // was written: then the call goes to enqueue.lua, which answers that job.
            if let [now] = reply.as_slice() {
                let now = Timestamp::from_millis(int(now)?);
                for &i in idx {
                    answered[i] = Some((jobs[i].id.clone(), true, now));
                }
                continue;
            }
            if !reply.is_empty() {
                return Err(corrupt(
                    "enqueue_plain.lua answered the wrong number of entries",
                ));
            }
            let cmd = enqueue_call(broker, queue, idx, &jobs, false, &now_arg, local_now)?;
            reply = broker.query(&cmd).await?;
        }
        let Some((now, pairs)) = reply.split_last() else {
            return Err(corrupt("enqueue.lua answered nothing"));
        };
        let now = Timestamp::from_millis(int(now)?);
        if pairs.len() != idx.len() * 2 {
            return Err(corrupt("enqueue.lua answered the wrong number of entries"));
        }
        for (&i, pair) in idx.iter().zip(pairs.chunks_exact(2)) {
            let id = JobId(string(&pair[0])?);
            let created = int(&pair[1])? == 1;
            if id != jobs[i].id {
                // A duplicate of a unique job: the id written to the index names nothing.
                stale_index.push(jobs[i].id.0.clone());
            }
            answered[i] = Some((id, created, now));
        }
    }
    if !stale_index.is_empty() {
        broker.unindex(&stale_index).await?;
    }
    // Only a taken unique key (or id) reads the existing job back: [`TAKEN_IN_FLIGHT`] at a
    // time (a replayed batch of a thousand was two thousand round trips one after another;
    // all at once, a batch of `max_batch` would queue every other command of the process
    // behind its reads on the shared connection).
    let taken: Vec<JobId> = answered
        .iter()
        .flatten()
        .filter(|(_, created, _)| !created)
        .map(|(id, _, _)| id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut found: BTreeMap<JobId, Job> = BTreeMap::new();
    for some in taken.chunks(TAKEN_IN_FLIGHT) {
        let read =
            futures::future::try_join_all(some.iter().map(|id| super::read::get(broker, id)))
                .await?;
        for (id, job) in some.iter().zip(read) {
            if let Some(j) = job {
                found.insert(id.clone(), j);
            }
        }
    }
    let mut out = Vec::with_capacity(jobs.len());
    for (new, answer) in jobs.into_iter().zip(answered) {
        let (id, created, now) = answer.ok_or_else(|| corrupt("enqueue.lua skipped a job"))?;
        let job = match found.get(&id) {
            // A batch may name one taken key twice: each is answered with its job.
            Some(existing) if !created => existing.clone(),
            _ => new.stored(now),
        };
        out.push(Enqueued { job, created });
    }
    Ok(out)
}

/// Reads of taken unique keys' jobs in flight at once, per enqueue call.
const TAKEN_IN_FLIGHT: usize = 64;

/// Whether a job goes through enqueue_plain.lua: `queued` at once, with no unique key and no
/// chain (see that script). A `run_at` given, even a past one, goes through enqueue.lua.
fn is_plain(j: &NewJob) -> bool {
    j.unique_key.is_none() && j.chain.is_none() && j.run_at.is_none()
}

/// The script call storing the jobs `chunk` of `jobs` on `queue`: enqueue_plain.lua when
/// `plain` (every job [`is_plain`]), else enqueue.lua.
fn enqueue_call(
    broker: &RedisBroker,
    queue: &str,
    chunk: &[usize],
    jobs: &[NewJob],
    plain: bool,
    now_arg: &str,
    local_now: Timestamp,
) -> BrokerResult<Cmd> {
    let script = if plain {
        &SCRIPTS.enqueue_plain
    } else {
        &SCRIPTS.enqueue
    };
    let mut cmd = broker.eval(script, queue);
    cmd.arg(now_arg).arg(broker.event_cap).arg(chunk.len());
    for &i in chunk {
        if plain {
            plain_args(&mut cmd, &jobs[i])?;
        } else {
            job_args(&mut cmd, &jobs[i], local_now)?;
        }
    }
    Ok(cmd)
}

/// Adds one plain job's ARGV for enqueue_plain.lua: id, kind, head, priority, payload.
fn plain_args(cmd: &mut Cmd, j: &NewJob) -> BrokerResult<()> {
    let payload = serde_json::to_string(&j.payload).map_err(BrokerError::backend)?;
    cmd.arg(j.id.as_str())
        .arg(&j.kind)
        .arg(d_head(j))
        .arg(j.priority)
        .arg(payload);
    Ok(())
}

/// A job's packed field `d` up to its creation time, which the script adds (see common.lua):
/// the time is Redis'.
fn d_head(j: &NewJob) -> String {
    format!(
        "{}|{}|{}|",
        j.priority,
        j.max_retries,
        j.timeout_ms.map(|t| t.to_string()).unwrap_or_default(),
    )
}

/// Adds one job's ARGV for enqueue.lua: id, kind, the head of its packed fields, priority,
/// run_at, unique key, chain links and payload.
///
/// A `run_at` goes as the delay from `local_now`, this node's clock, which the script adds
/// to its own (Redis') now: a node whose clock is off delays the job by what it was asked,
/// not by what it was asked plus its error.
fn job_args(cmd: &mut Cmd, j: &NewJob, local_now: Timestamp) -> BrokerResult<()> {
    let head = d_head(j);
    let payload = serde_json::to_string(&j.payload).map_err(BrokerError::backend)?;
    cmd.arg(j.id.as_str())
        .arg(&j.kind)
        .arg(head)
        .arg(j.priority)
        .arg(
            j.run_at
                .map(|t| (t.as_millis() - local_now.as_millis()).to_string())
                .unwrap_or_default(),
        )
        .arg(j.unique_key.as_deref().unwrap_or(""));
    match &j.chain {
        Some(c) => cmd
            .arg(c.id.as_str())
            .arg(c.index)
            .arg(c.next.as_ref().map_or("", JobId::as_str)),
        None => cmd.arg("").arg(0).arg(""),
    };
    cmd.arg(payload);
    Ok(())
}

pub(super) async fn fetch(
    broker: &RedisBroker,
    queue: &str,
    max: usize,
    lease: Duration,
) -> BrokerResult<Vec<Job>> {
    Ok(run_fetch(broker, queue, max, lease, None).await?.jobs)
}

/// One call of fetch.lua, with a rate (`super::rating`) or without (exactly the unrated
/// script call, no argument or key more).
pub(super) async fn run_fetch(
    broker: &RedisBroker,
    queue: &str,
    max: usize,
    lease: Duration,
    rate: Option<JobRate>,
) -> BrokerResult<RatedFetch> {
    check_queue(queue)?;
    let mut cmd = broker.eval(&SCRIPTS.fetch, queue);
    cmd.arg(broker.now_arg())
        .arg(max.min(FETCH_MAX))
        .arg(duration_ms(lease))
        .arg(broker.event_cap)
        .arg(PROMOTE_LIMIT);
    if let Some(rate) = rate {
        cmd.arg(rate.interval_ms()).arg(TOLERANCE_MS);
    }
    // After the script: rescue visits the queues in this index (see `keys.rs`).
    let mut pipe = Pipe::new();
    pipe.add_command(cmd);
    pipe.cmd("SADD")
        .arg(broker.leased_key())
        .arg(queue)
        .ignore();
    let (reply,): (Vec<Value>,) = broker.query_pipe(&pipe).await?;
    // fetch.lua answers the time it ran at, the deadline it wrote and how long until the
    // queue's earliest due job (and, rated, when the rate next allows a start), then each job's
    // id, record as it was before the lease and d; the lease is applied as it was stored.
    let [now, deadline, next_due, rest @ ..] = reply.as_slice() else {
        return Err(corrupt("fetch.lua answered without its time"));
    };
    let (now, deadline) = (
        Timestamp::from_millis(int(now)?),
        Timestamp::from_millis(int(deadline)?),
    );
    let next_due = string(next_due)?;
    let due_in = if next_due.is_empty() {
        None
    } else {
        Some(
            next_due
                .parse::<i64>()
                .map_err(|_| corrupt("fetch.lua answered a bad due time"))?,
        )
    };
    // The delay is Redis' (or the broker clock's): kept from this node's now, as the wait
    // that uses it reads this node's clock.
    broker.due_hints.record(queue, broker.clock.now(), due_in);
    let (held_for, jobs) = match (rate, rest) {
        (None, jobs) => (None, jobs),
        (Some(_), [held, jobs @ ..]) => {
            let held = string(held)?;
            let held_for = if held.is_empty() {
                None
            } else {
                let next: f64 = held
                    .parse()
                    .map_err(|_| corrupt("fetch.lua answered a bad rate time"))?;
                rate::held_for(next, now.as_millis() as f64)
            };
            (held_for, jobs)
        }
        (Some(_), []) => return Err(corrupt("fetch.lua answered without its rate")),
    };
    let mut leased = Vec::with_capacity(jobs.len());
    let mut unreadable = Vec::new();
    if jobs.len() % 3 != 0 {
        return Err(corrupt("fetch.lua answered a job without its record or d"));
    }
    for job in jobs.chunks_exact(3) {
        match job_from_fetch(&job[0], &job[1], &job[2], queue) {
            Ok(mut job) => {
                job.begin_attempt(now, deadline);
                leased.push(job);
            }
            Err(e) => unreadable.push((&job[0], &job[1], e)),
        }
    }
    if !unreadable.is_empty() {
        bury_unreadable(broker, queue, unreadable).await;
    }
    Ok(RatedFetch {
        jobs: leased,
        held_for,
    })
}

/// Ends as `dead`, saying why, the jobs a fetch leased but cannot read (a record holding data
/// Hopper did not write): the rest of the fetch runs, instead of the whole fetch failing
/// after the script leased every job in it (the others would wait for their leases to run
/// out, and the next fetch lease the unreadable job again). A job whose id cannot even be
/// read keeps its lease, logged, until rescue.
async fn bury_unreadable(
    broker: &RedisBroker,
    queue: &str,
    jobs: Vec<(&Value, &Value, BrokerError)>,
) {
    let mut batch = Vec::with_capacity(jobs.len());
    for (id, rec, e) in jobs {
        let Some((id, token)) = fetched_lease(id, rec) else {
            tracing::error!(%queue, error = %e, "a fetched job cannot be read, not even its id");
            continue;
        };
        tracing::warn!(job = %id, %queue, error = %e, "a fetched job cannot be read; burying it");
        batch.push(Finish {
            lease: Lease {
                job_id: JobId(id),
                queue: queue.to_owned(),
                token,
            },
            outcome: Outcome::Dead {
                error: format!("unreadable job data in Redis, buried by a fetch: {e}"),
            },
        });
    }
    if batch.is_empty() {
        return;
    }
    match finish(broker, batch).await {
        Ok(answers) => {
            for e in answers.into_iter().filter_map(Result::err) {
                tracing::warn!(%queue, error = %e, "burying an unreadable job was refused");
            }
        }
        Err(e) => tracing::warn!(%queue, error = %e, "burying unreadable jobs failed"),
    }
}

pub(super) async fn wait_for_work(
    broker: &RedisBroker,
    queues: &[String],
    timeout: Duration,
) -> BrokerResult<()> {
    if queues.is_empty() {
        tokio::time::sleep(timeout).await;
        return Ok(());
    }
    for q in queues {
        check_queue(q)?;
    }
    // Due jobs carry no signal when their time comes: wait no longer than the earliest, by
    // the clock the scripts promote them by. The fetch just before this wait answered it
    // (see `due_hint.rs`); without that, look.
    let local_now = broker.clock.now();
    if let Some(earliest) = broker.due_hints.take(queues, local_now) {
        let wait = match earliest {
            Some(due) if due <= local_now => return Ok(()),
            Some(due) => timeout.min(due.since(local_now)),
            None => timeout,
        };
        return block_for_signal(broker, queues, wait).await;
    }
    let now = broker.now().await?;
    let mut pipe = Pipe::new();
    for q in queues {
        pipe.cmd("ZRANGE")
            .arg(broker.due_key(q))
            .arg(0)
            .arg(0)
            .arg("WITHSCORES");
    }
    let dues: Vec<Vec<(String, f64)>> = broker.query_pipe(&pipe).await?;
    let mut wait = timeout;
    for (_, due) in dues.iter().flatten() {
        // Scores are the due time's milliseconds, exact in an f64 for any date in reach.
        let due = Timestamp::from_millis(*due as i64);
        if due <= now {
            return Ok(());
        }
        wait = wait.min(due.since(now));
    }
    block_for_signal(broker, queues, wait).await
}

/// Blocks until a script signals one of `queues` (see `signal` in common.lua), or `wait`.
async fn block_for_signal(
    broker: &RedisBroker,
    queues: &[String],
    wait: Duration,
) -> BrokerResult<()> {
    if wait < Duration::from_millis(1) {
        return Ok(());
    }
    let signals: Vec<String> = queues.iter().map(|q| broker.signal_key(q)).collect();
    broker.blpop(&signals, wait).await
}

pub(super) async fn heartbeat(
    broker: &RedisBroker,
    leases: &[Lease],
    lease: Duration,
) -> BrokerResult<Vec<LeaseStatus>> {
    let lease_ms = duration_ms(lease);
    let now = broker.now_arg();
    let queues: Vec<&str> = leases.iter().map(|l| l.queue.as_str()).collect();
    let codes = per_lease(broker, &queues, |q, idx| {
        let mut cmd = broker.eval(&SCRIPTS.heartbeat, q);
        cmd.arg(&now).arg(lease_ms).arg(idx.len());
        for &i in idx {
            cmd.arg(leases[i].job_id.as_str()).arg(leases[i].token);
        }
        Ok(cmd)
    })
    .await?;
    Ok(codes
        .into_iter()
        .map(|r| match r {
            1 => LeaseStatus::Held,
            2 => LeaseStatus::Cancelled,
            _ => LeaseStatus::Lost,
        })
        .collect())
}

pub(super) async fn progress(
    broker: &RedisBroker,
    lease: &Lease,
    percent: u8,
    message: Option<String>,
) -> BrokerResult<()> {
    let mut cmd = broker.eval(&SCRIPTS.progress, &lease.queue);
    cmd.arg(broker.now_arg())
        .arg(broker.event_cap)
        .arg(lease.job_id.as_str())
        .arg(lease.token)
        .arg(percent.min(100))
        .arg(if message.is_some() { "1" } else { "0" })
        .arg(message.as_deref().unwrap_or(""));
    match broker.query::<i64>(&cmd).await? {
        1 => Ok(()),
        _ => Err(BrokerError::LeaseLost(lease.job_id.clone())),
    }
}

pub(super) async fn checkpoint(
    broker: &RedisBroker,
    lease: &Lease,
    value: &serde_json::Value,
) -> BrokerResult<()> {
    let mut cmd = broker.eval(&SCRIPTS.checkpoint, &lease.queue);
    cmd.arg(lease.job_id.as_str())
        .arg(lease.token)
        .arg(value.to_string());
    match broker.query::<i64>(&cmd).await? {
        1 => Ok(()),
        _ => Err(BrokerError::LeaseLost(lease.job_id.clone())),
    }
}

pub(super) async fn finish(
    broker: &RedisBroker,
    batch: Vec<Finish>,
) -> BrokerResult<Vec<BrokerResult<()>>> {
    // The pool's due times were computed on this node's clock: as delays from its now they
    // mean the same on Redis' clock, whatever this one's skew (see "Time" in mod.rs).
    let local_now = broker.clock.now();
    let now = broker.now_arg_at(local_now);
    let queues: Vec<&str> = batch.iter().map(|f| f.lease.queue.as_str()).collect();
    let codes = per_lease(broker, &queues, |q, idx| {
        let mut cmd = broker.eval(&SCRIPTS.finish, q);
        cmd.arg(&now).arg(broker.event_cap).arg(idx.len());
        for &i in idx {
            let f = &batch[i];
            let (code, a, b) = outcome_args(&f.outcome, local_now)?;
            cmd.arg(f.lease.job_id.as_str())
                .arg(f.lease.token)
                .arg(code)
                .arg(a)
                .arg(b);
        }
        Ok(cmd)
    })
    .await?;
    Ok(batch
        .iter()
        .zip(codes)
        .map(|(f, r)| {
            if r == 1 {
                Ok(())
            } else {
                Err(BrokerError::LeaseLost(f.lease.job_id.clone()))
            }
        })
        .collect())
}

pub(super) async fn cancel(broker: &RedisBroker, id: &JobId) -> BrokerResult<Job> {
    change_one(
        broker,
        &SCRIPTS.cancel,
        id,
        "only a job that has not finished can be cancelled",
    )
    .await
}

pub(super) async fn retry(broker: &RedisBroker, id: &JobId) -> BrokerResult<Job> {
    change_one(
        broker,
        &SCRIPTS.retry,
        id,
        "only a dead or cancelled job can be retried",
    )
    .await
}

pub(super) async fn retry_all_dead(broker: &RedisBroker, queue: Option<&str>) -> BrokerResult<u64> {
    let queues = broker.queue_or_all(queue).await?;
    let mut total = 0u64;
    for q in &queues {
        // The jobs dead when the queue's first call ran (see retry_all_dead.lua).
        let mut bound = String::new();
        loop {
            let mut cmd = broker.eval(&SCRIPTS.retry_all_dead, q);
            cmd.arg(broker.now_arg())
                .arg(broker.event_cap)
                .arg(BATCH)
                .arg(&bound);
            let (n, taken, answered): (u64, u64, String) = broker.query(&cmd).await?;
            total += n;
            if taken < BATCH as u64 {
                break;
            }
            bound = answered;
        }
    }
    Ok(total)
}

pub(super) async fn rescue(
    broker: &RedisBroker,
    max_interruptions: u32,
) -> BrokerResult<Vec<Rescued>> {
    // Only the queues that may hold running jobs (see `keys.rs`), not every queue ever used.
    let mut pending: Vec<String> = broker
        .query(redis::cmd("SMEMBERS").arg(broker.leased_key()))
        .await?;
    let mut rescued = Vec::new();
    let mut idle = Vec::new();
    // One pipelined call per queue, and how many jobs still run there; queues that filled a
    // batch go round again.
    while !pending.is_empty() {
        let now = broker.now_arg();
        let mut pipe = Pipe::new();
        for q in &pending {
            let mut cmd = broker.eval(&SCRIPTS.rescue, q);
            cmd.arg(&now)
                .arg(broker.event_cap)
                .arg(max_interruptions)
                .arg(BATCH);
            pipe.add_command(cmd);
            running_count(&mut pipe, broker, q);
        }
        let replies: Vec<Value> = broker.query_pipe(&pipe).await?;
        let mut again = Vec::new();
        for (q, pair) in pending.into_iter().zip(replies.chunks_exact(2)) {
            let jobs: Vec<(String, String, String)> =
                redis::FromRedisValue::from_redis_value_ref(&pair[0])
                    .map_err(|e| corrupt(format!("rescue.lua: {e}")))?;
            let full = jobs.len() >= BATCH;
            for (id, kind, state) in jobs {
                let state = JobState::parse(&state)
                    .ok_or_else(|| corrupt(format!("rescue.lua: state {state:?}")))?;
                rescued.push(Rescued {
                    id: JobId(id),
                    queue: q.clone(),
                    kind,
                    state,
                });
            }
            if full {
                again.push(q);
            } else if int(&pair[1])? == 0 {
                idle.push(q);
            }
        }
        pending = again;
    }
    forget_idle(broker, &idle).await?;
    Ok(rescued)
}

/// Adds to `pipe` the count of `queue`'s running jobs: its `running` zset's members below
/// +inf, which leaves out the pin at +inf that keeps the zset a skiplist (see common.lua).
fn running_count(pipe: &mut Pipe, broker: &RedisBroker, queue: &str) {
    pipe.cmd("ZCOUNT")
        .arg(broker.running_key(queue))
        .arg("-inf")
        .arg("(+inf");
}

/// Drops queues with nothing running from the index of leased queues. A fetch may lease a job
/// there between the look and the removal: it adds the queue after its script, so a second
/// look after the removal sees its job, and the queue goes back.
async fn forget_idle(broker: &RedisBroker, idle: &[String]) -> BrokerResult<()> {
    if idle.is_empty() {
        return Ok(());
    }
    let mut pipe = Pipe::new();
    pipe.cmd("SREM").arg(broker.leased_key()).arg(idle).ignore();
    for q in idle {
        running_count(&mut pipe, broker, q);
    }
    let running: Vec<i64> = broker.query_pipe(&pipe).await?;
    let busy: Vec<&String> = idle
        .iter()
        .zip(running)
        .filter(|(_, n)| *n > 0)
        .map(|(q, _)| q)
        .collect();
    if !busy.is_empty() {
        broker
            .query::<()>(redis::cmd("SADD").arg(broker.leased_key()).arg(busy))
            .await?;
    }
    Ok(())
}

/// Runs a one-job script (cancel.lua, retry.lua: ARGV now, event cap, id) and turns its
/// answer into the job, `NotFound`, or a `Conflict` with `refusal` as the message.
async fn change_one(
    broker: &RedisBroker,
    script: &Lua,
    id: &JobId,
    refusal: &'static str,
) -> BrokerResult<Job> {
    let queue = broker
        .queue_of(id)
        .await?
        .ok_or_else(|| BrokerError::NotFound(id.clone()))?;
    let mut cmd = broker.eval(script, &queue);
    cmd.arg(broker.now_arg())
        .arg(broker.event_cap)
        .arg(id.as_str());
    match answer(broker.query(&cmd).await?, id, &queue)? {
        Answer::Ok(job) => Ok(*job),
        Answer::NotFound => Err(BrokerError::NotFound(id.clone())),
        Answer::State(state) => Err(BrokerError::Conflict {
            id: id.clone(),
            state,
            message: refusal,
        }),
    }
}

/// Outcome -> (code, a, b) as finish.lua reads them; due times become delays from `now`, the
/// time of the clock that computed them.
fn outcome_args(o: &Outcome, now: Timestamp) -> BrokerResult<(&'static str, String, String)> {
    let delay = |at: &Timestamp| (at.as_millis() - now.as_millis()).to_string();
    Ok(match o {
        Outcome::Succeeded { result } => (
            "ok",
            serde_json::to_string(result).map_err(BrokerError::backend)?,
            String::new(),
        ),
        Outcome::Retry { at, error } => ("retry", delay(at), error.clone()),
        Outcome::Dead { error } => ("dead", error.clone(), String::new()),
        Outcome::Snooze { at, reason } => ("snooze", delay(at), reason.clone().unwrap_or_default()),
        Outcome::Released { reason } => ("release", reason.clone(), String::new()),
    })
}

/// Runs a per-lease script (heartbeat.lua, finish.lua) for entries on `queues`: one call per
/// queue and chunk, made by `call` from the queue and its entries' indices, all in one
/// pipeline. Returns each entry's reply code, 0 for an entry a call did not answer.
async fn per_lease(
    broker: &RedisBroker,
    queues: &[&str],
    call: impl Fn(&str, &[usize]) -> BrokerResult<Cmd>,
) -> BrokerResult<Vec<i64>> {
    let calls = group(queues, FINISH_CHUNK, |_| true);
    let mut pipe = Pipe::new();
    for (q, idx) in &calls {
        pipe.add_command(call(q, idx)?);
    }
    let replies: Vec<Vec<i64>> = broker.query_pipe(&pipe).await?;
    let mut codes = vec![0; queues.len()];
    for ((_, idx), reply) in calls.iter().zip(replies) {
        for (&i, r) in idx.iter().zip(reply) {
            codes[i] = r;
        }
    }
    Ok(codes)
}

impl RedisBroker {
    /// The `now` a script takes: '' for Redis' own clock, or the broker's clock's time in
    /// milliseconds when it runs on that (see "Time" in `mod.rs`).
    pub(super) fn now_arg(&self) -> String {
        self.now_arg_at(self.clock.now())
    }

    /// [`RedisBroker::now_arg`] with the broker's clock read already as `now`.
    fn now_arg_at(&self, now: Timestamp) -> String {
        if self.clock_time {
            now.as_millis().to_string()
        } else {
            String::new()
        }
    }

    /// The time the scripts decide by: Redis' `TIME`, or the broker's clock (see
    /// [`RedisBroker::now_arg`]).
    pub(super) async fn now(&self) -> BrokerResult<Timestamp> {
        if self.clock_time {
            return Ok(self.clock.now());
        }
        let (s, us): (i64, i64) = self.query(&redis::cmd("TIME")).await?;
        Ok(Timestamp::from_millis(s * 1000 + us / 1000))
    }
}

/// The indices of `queues` grouped by queue (in name order), in chunks of `chunk`; a chunk
/// ends only before an index `may_cut` allows, so it may run over by what it keeps together.
fn group<'q>(
    queues: &[&'q str],
    chunk: usize,
    may_cut: impl Fn(usize) -> bool,
) -> Vec<(&'q str, Vec<usize>)> {
    let mut by: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, q) in queues.iter().enumerate() {
        by.entry(q).or_default().push(i);
    }
    let mut out = Vec::new();
    for (q, idx) in by {
        let mut current = Vec::with_capacity(chunk.min(idx.len()));
        for i in idx {
            if current.len() >= chunk && may_cut(i) {
                out.push((q, std::mem::take(&mut current)));
            }
            current.push(i);
        }
        if !current.is_empty() {
            out.push((q, current));
        }
    }
    out
}
