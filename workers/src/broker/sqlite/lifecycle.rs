//! The worker's path through the broker: enqueue, fetch, heartbeat, progress, checkpoint, finish,
//! rescue.
//!
//! It owns the writes the pool makes many times a second, each one closure run by the writer
//! thread inside its batch's transaction, with the event it appends. It does not own the
//! operator's commands (cancel, retry, purge: `super::admin`), the reads (`super::read`), nor
//! what a step's end does to the rest of its chain (`super::chain`, called from here). Each
//! function wakes this process's waiting pools (`SqliteBroker::wake`) only when its write made
//! a job due, so that a busy pool is not woken for nothing.

use std::collections::HashMap;
use std::time::Duration;

use rusqlite::types::Value as SqlValue;
use rusqlite::{CachedStatement, Connection, OptionalExtension, Row, params};

use super::SqliteBroker;
use super::chain;
use super::error::Fail;
use super::events::{EnqueuedEvents, LEASE_EXPIRED, SNOOZED, append_event, failure, note};
use super::rows::{
    Owner, chain_from_columns, is_exact_text, job_from_row, lossy_text, owner_from_row, stored_id,
    to_i64, to_u32, token_to_i64,
};
use super::sql;
use crate::broker::{Enqueued, Finish, LeaseStatus, Outcome, Rescued};
use crate::error::{BrokerError, BrokerResult};
use crate::event::{EventData, EventType};
use crate::job::{Job, JobId, JobState, Lease, NewJob};
use crate::time::Timestamp;

/// Most jobs one fetch leases.
const MAX_FETCH: usize = 1000;
/// Most due jobs one fetch promotes (`scheduled`/`retrying` -> `queued`), earliest due first:
/// a backlog of a million jobs falling due at once is promoted over many fetches, each a
/// bounded write, instead of one statement holding the write lock for all of them. The same
/// bound as the Redis broker's (`crate::testing::PROMOTE_BOUND` checks both).
const MAX_PROMOTE: i64 = 1000;

pub(super) async fn store(broker: &SqliteBroker, jobs: Vec<NewJob>) -> BrokerResult<Vec<Enqueued>> {
    let answers = broker
        .write(move |conn, now| {
            let mut out = Vec::with_capacity(jobs.len());
            // Chains whose first step exists already (its unique key is taken), to that step's
            // id: the whole chain is that earlier one; none of its steps is created again.
            let mut existing_chains: HashMap<JobId, JobId> = HashMap::new();
            // Prepared once for the whole batch rather than fetched from the statement cache
            // for each job; the events are appended by one statement after the last job.
            let mut inserts = Inserts {
                job: conn.prepare_cached(sql::INSERT_JOB)?,
                events: EnqueuedEvents::default(),
            };
            for job in jobs {
                out.push(store_one(
                    conn,
                    now,
                    job,
                    &mut existing_chains,
                    &mut inserts,
                )?);
            }
            inserts.events.append(conn, now)?;
            Ok(out)
        })
        .await?;
    if answers.iter().any(|a| a.created) {
        broker.wake();
    }
    Ok(answers)
}

/// Stores one job of an enqueue batch, unless its unique key is taken, its chain exists or its
/// id names a stored job; answers the job as stored, or the existing one.
fn store_one(
    conn: &Connection,
    now: Timestamp,
    new: NewJob,
    existing_chains: &mut HashMap<JobId, JobId>,
    inserts: &mut Inserts<'_>,
) -> Result<Enqueued, Fail> {
    if let Some(link) = &new.chain
        && let Some(earlier) = existing_chains.get(&link.id)
    {
        let step = conn
            .prepare_cached(sql::CHAIN_STEP)?
            .query_row(
                params![earlier.as_str(), i64::from(link.index)],
                job_from_row,
            )
            .optional()?;
        // A chain shorter than this replay: nothing of it stands at this index.
        let job = step.unwrap_or_else(|| new.stored(now));
        return Ok(Enqueued {
            job,
            created: false,
        });
    }
    if let Some(key) = &new.unique_key {
        let taken = conn
            .prepare_cached(sql::FIND_UNIQUE)?
            .query_row(params![new.queue, key], job_from_row)
            .optional()?;
        if let Some(job) = taken {
            if let Some(link) = &new.chain {
                existing_chains.insert(link.id.clone(), job.id.clone());
            }
            return Ok(Enqueued {
                job,
                created: false,
            });
        }
    }
    let job = new.stored(now);
    let chain = job.chain.as_ref();
    let inserted = inserts.job.execute(params![
        job.id.as_str(),
        job.queue,
        job.kind,
        serde_json::to_string(&job.payload)?,
        i64::from(job.priority),
        job.state.as_str(),
        job.run_at,
        i64::from(job.max_retries),
        job.timeout_ms.map(to_i64),
        job.unique_key,
        job.created_at,
        chain.map(|c| c.id.as_str()),
        chain.map_or(0, |c| i64::from(c.index)),
        chain.and_then(|c| c.next.as_ref()).map(JobId::as_str),
    ])?;
    if inserted == 0 {
        // Its id names a stored job (a retried batch with the same ids): that job is the
        // answer, unchanged, as on Redis.
        let stored = conn
            .prepare_cached(sql::GET)?
            .query_row([job.id.as_str()], job_from_row)?;
        return Ok(Enqueued {
            job: stored,
            created: false,
        });
    }
    inserts.events.created(conn);
    Ok(Enqueued { job, created: true })
}

/// What every job of an enqueue batch writes: its row, through a statement held for the whole
/// batch, and its event, appended with the others at the batch's end.
struct Inserts<'c> {
    job: CachedStatement<'c>,
    events: EnqueuedEvents,
}

/// One signal for every queue: a wake-up for another queue is a harmless early return. Other
/// processes on the same file cannot signal, hence the bound of [`CROSS_PROCESS_POLL`](super::CROSS_PROCESS_POLL).
pub(super) async fn wait_for_work(
    broker: &SqliteBroker,
    _queues: &[String],
    timeout: Duration,
) -> BrokerResult<()> {
    let _ = tokio::time::timeout(
        timeout.min(super::CROSS_PROCESS_POLL),
        broker.work.notified(),
    )
    .await;
    Ok(())
}

pub(super) async fn fetch(
    broker: &SqliteBroker,
    queue: &str,
    max: usize,
    lease: Duration,
) -> BrokerResult<Vec<Job>> {
    if max == 0 {
        return Ok(Vec::new());
    }
    let queue = queue.to_owned();
    broker
        .write(move |conn, now| {
            if !promote_unless_paused(conn, &queue, now)? {
                return Ok(Vec::new());
            }
            lease_queued(conn, &queue, max, lease, now)
        })
        .await
}

/// A fetch's first step: promotes the queue's due jobs, and says whether it may lease any
/// (false when the queue is paused).
pub(super) fn promote_unless_paused(
    conn: &Connection,
    queue: &str,
    now: Timestamp,
) -> Result<bool, Fail> {
    conn.prepare_cached(sql::PROMOTE_DUE)?
        .execute(params![queue, now, MAX_PROMOTE])?;
    // Due jobs are promoted even in a paused queue, so that they wait as `queued`
    // and a worker's `wait_for_work` does not keep finding them due.
    let paused: bool = conn
        .prepare_cached(sql::IS_PAUSED)?
        .query_row([queue], |r| r.get(0))?;
    Ok(!paused)
}

/// A fetch's second step: leases up to `max` queued jobs in priority order and appends their
/// `job.started` events.
pub(super) fn lease_queued(
    conn: &Connection,
    queue: &str,
    max: usize,
    lease: Duration,
    now: Timestamp,
) -> Result<Vec<Job>, Fail> {
    let max = to_i64(max.min(MAX_FETCH));
    // A row that cannot be read is kept apart with its id and new lease token, not allowed to
    // fail the whole fetch (see `bury_unreadable`).
    let rows = conn
        .prepare_cached(sql::FETCH)?
        .query_map(params![queue, max, now + lease, now], |row| {
            let seq = row.get::<_, i64>(0)?;
            let stored = stored_id(row, 1)?;
            let renamed = stored.foreign.is_some();
            let read = match stored.foreign {
                // Every later write for the job finds it by its id, which this one is not.
                Some(bytes) => Err(format!(
                    "its id is not UTF-8 text (stored as X'{}')",
                    hex(&bytes)
                )),
                // `job_from_row` reads the kind lossily, for listings; a handler must not run
                // under a kind the row does not hold.
                None if !is_exact_text(row, 3)? => Err("its kind is not UTF-8 text".to_owned()),
                None => job_from_row(row).map_err(|e| e.to_string()),
            };
            Ok(match read {
                Ok(job) => Ok((seq, job)),
                Err(reason) => Err(Unreadable {
                    seq,
                    owner: Owner {
                        id: stored.id,
                        queue: queue.to_owned(),
                        kind: lossy_text(row, 3)?,
                        attempt: to_u32(row.get(8)?),
                    },
                    token: row.get::<_, i64>(13)?,
                    renamed,
                    reason,
                }),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut jobs = Vec::with_capacity(rows.len());
    for row in rows {
        match row {
            Ok(job) => jobs.push(job),
            Err(unreadable) => bury_unreadable(conn, now, unreadable)?,
        }
    }
    // RETURNING has no defined order: restore the fetch order.
    jobs.sort_by_key(|(seq, j)| (j.priority, j.run_at, *seq));
    let jobs: Vec<Job> = jobs.into_iter().map(|(_, j)| j).collect();
    for job in &jobs {
        let owner = Owner::of(job);
        append_event(conn, &owner, EventType::Started, now, &EventData::default())?;
    }
    Ok(jobs)
}

/// A row a fetch leased but cannot hand out.
struct Unreadable {
    seq: i64,
    /// Its id lossily when `renamed`.
    owner: Owner,
    token: i64,
    /// The id is not UTF-8 text: the row is given `owner.id` (or a fresh id) before burial.
    renamed: bool,
    reason: String,
}

/// Ends as `dead`, saying why, a job the fetch leased but cannot read (a row holding data
/// Hopper did not write, such as a payload that is not JSON), in the fetch's own transaction:
/// the rest of the fetch runs. Failing the fetch instead would roll it back, and every later
/// fetch of the queue would meet the same row: no job of the queue would run again. Its
/// history reads `job.started` then `job.dead`, as on Redis.
///
/// A row whose id is not UTF-8 text is first given a text id (its id read lossily, or a fresh
/// one when that is taken), the stored bytes kept in the reason: every statement finds a job by
/// its id, so without one the job could be neither ended, nor looked up, nor retried.
fn bury_unreadable(conn: &Connection, now: Timestamp, mut row: Unreadable) -> Result<(), Fail> {
    let queue = row.owner.queue.clone();
    if row.renamed {
        let taken: bool = conn
            .prepare_cached(sql::ID_TAKEN)?
            .query_row([row.owner.id.as_str()], |r| r.get(0))?;
        if taken {
            row.owner.id = JobId::generate();
        }
        // Events that name the row by its stored id follow it (the subquery keeps the stored
        // value's type: a BLOB bound from Rust would not equal a text that is not UTF-8).
        conn.prepare_cached(sql::RENAME_EVENTS)?
            .execute(params![row.seq, row.owner.id.as_str()])?;
        conn.prepare_cached(sql::RENAME_JOB)?
            .execute(params![row.seq, row.owner.id.as_str()])?;
        row.reason = format!("{}; it is now job {}", row.reason, row.owner.id);
    }
    tracing::warn!(job = %row.owner.id, %queue, error = %row.reason, "a fetched job cannot be read; burying it");
    append_event(
        conn,
        &row.owner,
        EventType::Started,
        now,
        &EventData::default(),
    )?;
    let lease = Lease {
        job_id: row.owner.id,
        queue: row.owner.queue,
        token: u64::try_from(row.token).unwrap_or(0),
    };
    let outcome = Outcome::Dead {
        error: format!(
            "unreadable job data in SQLite, buried by a fetch: {}",
            row.reason
        ),
    };
    let mut requeued = false;
    if let Err(refused) = finish_one(conn, now, Finish { lease, outcome }, &mut requeued)? {
        tracing::warn!(%queue, error = %refused, "burying an unreadable job was refused");
    }
    Ok(())
}

/// Lowercase hex of at most the first 64 bytes: enough to find the row, short enough to log.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len().min(64) * 2 + 3);
    for b in bytes.iter().take(64) {
        let _ = write!(out, "{b:02x}");
    }
    if bytes.len() > 64 {
        out.push_str("...");
    }
    out
}

pub(super) async fn heartbeat(
    broker: &SqliteBroker,
    leases: &[Lease],
    lease: Duration,
) -> BrokerResult<Vec<LeaseStatus>> {
    let leases = leases.to_vec();
    broker
        .write(move |conn, now| {
            let until = now + lease;
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

pub(super) async fn progress(
    broker: &SqliteBroker,
    lease: &Lease,
    percent: u8,
    message: Option<String>,
) -> BrokerResult<()> {
    let lease = lease.clone();
    let percent = percent.min(100);
    broker
        .write(move |conn, now| {
            let owner = conn
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
            let Some(owner) = owner else {
                return Err(BrokerError::LeaseLost(lease.job_id).into());
            };
            let data = EventData {
                progress: Some(percent),
                message,
                ..EventData::default()
            };
            append_event(conn, &owner, EventType::Progress, now, &data)?;
            Ok(())
        })
        .await
}

pub(super) async fn checkpoint(
    broker: &SqliteBroker,
    lease: &Lease,
    value: &serde_json::Value,
) -> BrokerResult<()> {
    let lease = lease.clone();
    let text = value.to_string();
    broker
        .write(move |conn, _now| {
            let saved = conn.prepare_cached(sql::CHECKPOINT)?.execute(params![
                lease.job_id.as_str(),
                token_to_i64(lease.token),
                text
            ])?;
            if saved == 0 {
                return Err(BrokerError::LeaseLost(lease.job_id).into());
            }
            Ok(())
        })
        .await
}

pub(super) async fn finish(
    broker: &SqliteBroker,
    batch: Vec<Finish>,
) -> BrokerResult<Vec<BrokerResult<()>>> {
    // Wake this process's pools only when a job became due: a release, a snooze, or a chain
    // step queued by its predecessor's success.
    let (answers, requeued) = broker
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
        broker.wake();
    }
    Ok(answers)
}

/// The fenced update that ends an attempt with `outcome`, and its third parameter and fourth
/// (`None` for the statements that declare only three).
fn finish_statement(
    outcome: &Outcome,
    now: Timestamp,
) -> Result<(&'static str, SqlValue, Option<SqlValue>), Fail> {
    use SqlValue::Text;
    // Times are stored as their integer milliseconds (see `super::rows`).
    let time = |t: Timestamp| SqlValue::Integer(t.as_millis());
    Ok(match outcome {
        Outcome::Succeeded { result } => (
            sql::FINISH_SUCCEEDED,
            Text(serde_json::to_string(result)?),
            Some(time(now)),
        ),
        Outcome::Retry { at, error } => (sql::FINISH_RETRY, time(*at), Some(Text(error.clone()))),
        Outcome::Dead { error } => (sql::FINISH_DEAD, Text(error.clone()), Some(time(now))),
        Outcome::Snooze { at, reason } => (
            sql::FINISH_SNOOZE,
            time(*at),
            Some(reason.clone().map_or(SqlValue::Null, Text)),
        ),
        Outcome::Released { .. } => (sql::FINISH_RELEASED, time(now), None),
    })
}

/// The event an attempt's end appends.
fn finish_event(outcome: Outcome) -> (EventType, EventData) {
    match outcome {
        Outcome::Succeeded { result } => (
            EventType::Succeeded,
            EventData {
                result: Some(result),
                ..EventData::default()
            },
        ),
        Outcome::Retry { error, .. } => (EventType::Retrying, failure(error)),
        Outcome::Dead { error } => (EventType::Dead, failure(error)),
        Outcome::Snooze { .. } => (EventType::Enqueued, note(SNOOZED)),
        Outcome::Released { reason } => (EventType::Released, note(reason)),
    }
}

/// Ends one attempt. A stale lease is an answer (`LeaseLost`), not a failure of the batch.
/// `requeued` is set when the attempt's end made a job due (a release, a snooze, a chain's
/// next step).
fn finish_one(
    conn: &Connection,
    now: Timestamp,
    f: Finish,
    requeued: &mut bool,
) -> Result<BrokerResult<()>, Fail> {
    let makes_due = matches!(f.outcome, Outcome::Released { .. } | Outcome::Snooze { .. });
    let id = f.lease.job_id.as_str();
    let token = token_to_i64(f.lease.token);
    let (text, arg3, arg4) = finish_statement(&f.outcome, now)?;
    let (event, data) = finish_event(f.outcome);
    let mut stmt = conn.prepare_cached(text)?;
    // Succeeded and dead also return the job's chain link, to move its chain along.
    let decode = |r: &Row<'_>| -> rusqlite::Result<_> {
        let link = if r.as_ref().column_count() > 4 {
            chain_from_columns(r, 4)?
        } else {
            None
        };
        Ok((owner_from_row(r)?, link))
    };
    let row = match arg4 {
        Some(arg4) => stmt.query_row(params![id, token, arg3, arg4], decode),
        None => stmt.query_row(params![id, token, arg3], decode),
    }
    .optional()?;
    let Some((owner, link)) = row else {
        return Ok(Err(BrokerError::LeaseLost(f.lease.job_id)));
    };
    append_event(conn, &owner, event, now, &data)?;
    *requeued |= makes_due;
    if let Some(link) = link {
        match event {
            EventType::Succeeded => {
                if let (Some(next), Some(result)) = (&link.next, &data.result) {
                    *requeued |= chain::promote_next(conn, now, next, result, link.index)?;
                }
            }
            _ => chain::cancel_rest(conn, now, &link, &owner.id, "dead")?,
        }
    }
    Ok(Ok(()))
}

pub(super) async fn rescue(
    broker: &SqliteBroker,
    max_interruptions: u32,
) -> BrokerResult<Vec<Rescued>> {
    let max = i64::from(max_interruptions);
    let (ids, any_requeued) = broker
        .write(move |conn, now| {
            let mut ids = Vec::new();
            let interrupted = note(LEASE_EXPIRED);
            let poisoned = conn
                .prepare_cached(sql::RESCUE_POISON)?
                .query_map(params![now, max], |r| {
                    Ok((
                        owner_from_row(r)?,
                        r.get::<_, String>(4)?,
                        chain_from_columns(r, 5)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            for (owner, error, link) in poisoned {
                if let Some(link) = &link {
                    chain::cancel_rest(conn, now, link, &owner.id, "dead")?;
                }
                append_event(conn, &owner, EventType::Interrupted, now, &interrupted)?;
                // The interrupted attempt is not counted: `job.dead` carries the attempt as
                // the row now stores it.
                let dead = Owner {
                    attempt: owner.attempt.saturating_sub(1),
                    ..owner
                };
                append_event(conn, &dead, EventType::Dead, now, &failure(error))?;
                ids.push(Rescued {
                    id: dead.id,
                    queue: dead.queue,
                    kind: dead.kind,
                    state: JobState::Dead,
                });
            }
            let requeued = conn
                .prepare_cached(sql::RESCUE)?
                .query_map(params![now], owner_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            let any_requeued = !requeued.is_empty();
            for owner in requeued {
                append_event(conn, &owner, EventType::Interrupted, now, &interrupted)?;
                ids.push(Rescued {
                    id: owner.id,
                    queue: owner.queue,
                    kind: owner.kind,
                    state: JobState::Queued,
                });
            }
            Ok((ids, any_requeued))
        })
        .await?;
    if any_requeued {
        broker.wake();
    }
    Ok(ids)
}
