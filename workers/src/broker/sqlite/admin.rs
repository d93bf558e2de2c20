//! The operator's writes: cancel, retry, retry every dead job, purge, drop a queue.
//!
//! It owns the commands a person (CLI, HTTP API) or housekeeping issues, as opposed to the
//! pool's (`super::lifecycle`). Bulk commands work in chunks of [`CHUNK`] rows, each chunk its
//! own write, so that the pool's fetches and acks get a turn between them instead of waiting
//! behind one long transaction; a bulk command is therefore not atomic as a whole, only chunk by
//! chunk. What a retry does to a chain is `super::chain`'s.

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use super::SqliteBroker;
use super::chain;
use super::error::Fail;
use super::events::{RETRIED, append_event, note};
use super::rows::{
    Owner, RawId, bad_column, chain_from_columns, job_from_row, owner_from_row, to_i64, to_u64,
};
use super::sql;
use crate::error::{BrokerError, BrokerResult};
use crate::event::{EventData, EventType};
use crate::job::{Job, JobId, JobState};
use crate::time::Timestamp;

/// Rows changed per transaction by bulk maintenance (retry of all dead, purge, drop), so other
/// writers get a turn between chunks.
const CHUNK: i64 = 500;
/// Event rows trimmed per transaction.
const TRIM_CHUNK: i64 = 10_000;

pub(super) async fn cancel(broker: &SqliteBroker, id: &JobId) -> BrokerResult<Job> {
    let id = id.clone();
    broker
        .write(move |conn, now| {
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
            let owner = Owner::of(&job);
            append_event(
                conn,
                &owner,
                EventType::Cancelled,
                now,
                &EventData::default(),
            )?;
            if let Some(link) = &job.chain {
                chain::cancel_rest(conn, now, link, &job.id, "cancelled")?;
            }
            Ok(job)
        })
        .await
}

pub(super) async fn retry(broker: &SqliteBroker, id: &JobId) -> BrokerResult<Job> {
    let id = id.clone();
    let job = broker
        .write(move |conn, now| {
            let job = conn
                .prepare_cached(sql::RETRY)?
                .query_row(params![id.as_str(), now], job_from_row)
                .optional()?;
            let Some(mut job) = job else {
                return Err(refusal(
                    conn,
                    id,
                    "only a dead or cancelled job can be retried",
                ));
            };
            append_event(
                conn,
                &Owner::of(&job),
                EventType::Enqueued,
                now,
                &note(RETRIED),
            )?;
            if let Some(link) = job.chain.clone()
                && chain::retried(conn, &job.id, &link)?.is_some()
            {
                // The step as its retry left it: its state, and its predecessor's result
                // as `input` when it is queued (the row read above had neither).
                job = conn
                    .prepare_cached(sql::GET)?
                    .query_row([job.id.as_str()], job_from_row)?;
            }
            Ok(job)
        })
        .await?;
    broker.wake();
    Ok(job)
}

pub(super) async fn retry_all_dead(
    broker: &SqliteBroker,
    queue: Option<&str>,
) -> BrokerResult<u64> {
    let queue = queue.map(str::to_owned);
    // The jobs dead when the first chunk ran: one retried by an earlier chunk that ran and died
    // again meanwhile died later, and is not retried twice (nor keeps this looping).
    let mut bound: Option<Timestamp> = None;
    let mut done: i64 = 0;
    loop {
        let queue = queue.clone();
        let (n, at) = broker
            .write(move |conn, now| {
                let bound = bound.unwrap_or(now);
                let n = retry_dead_chunk(conn, now, queue.as_deref(), CHUNK, bound)?;
                Ok((n, bound))
            })
            .await?;
        bound = Some(at);
        if n > 0 {
            broker.wake();
        }
        done += n;
        if n < CHUNK {
            break;
        }
    }
    Ok(to_u64(done))
}

/// Retries up to `limit` dead jobs (of `queue`, or of all) that died at or before `bound`;
/// returns how many.
fn retry_dead_chunk(
    conn: &Connection,
    now: Timestamp,
    queue: Option<&str>,
    limit: i64,
    bound: Timestamp,
) -> Result<i64, Fail> {
    let text = match queue {
        Some(_) => sql::RETRY_DEAD_CHUNK_IN,
        None => sql::RETRY_DEAD_CHUNK,
    };
    let rows = conn
        .prepare_cached(text)?
        .query_map(params![now, queue, limit, bound], |r| {
            Ok((owner_from_row(r)?, chain_from_columns(r, 4)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let data = note(RETRIED);
    for (owner, link) in &rows {
        if let Some(link) = link {
            chain::retried(conn, &owner.id, link)?;
        }
        append_event(conn, owner, EventType::Enqueued, now, &data)?;
    }
    Ok(to_i64(rows.len()))
}

pub(super) async fn purge(
    broker: &SqliteBroker,
    states: &[JobState],
    before: Timestamp,
    keep_events: u64,
) -> BrokerResult<u64> {
    let mut deleted: u64 = 0;
    // Only finished jobs are ever purged, whatever the caller asks. A chain step is kept while
    // the step after it exists (`sql::PURGE_CHUNK`): deleting a step's successor may free it,
    // so rounds repeat until one deletes nothing, and a chain due whole goes in one call.
    loop {
        let mut round: u64 = 0;
        for state in states.iter().copied().filter(|s| s.is_final()) {
            let args = vec![
                SqlValue::Text(state.as_str().to_owned()),
                SqlValue::Integer(before.as_millis()),
            ];
            round += delete_jobs(broker, sql::PURGE_CHUNK, args).await?;
        }
        deleted += round;
        if round == 0 {
            break;
        }
    }
    let keep = i64::try_from(keep_events).unwrap_or(i64::MAX);
    let cut: Option<i64> = broker
        .read(move |conn, _| {
            Ok(conn
                .prepare_cached(sql::EVENT_CUT)?
                .query_row([keep], |r| r.get(0))
                .optional()?)
        })
        .await?;
    if let Some(cut) = cut {
        loop {
            let n = broker
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

pub(super) async fn drop_queue(broker: &SqliteBroker, queue: &str) -> BrokerResult<u64> {
    let deleted = delete_jobs(
        broker,
        sql::DROP_CHUNK,
        vec![SqlValue::Text(queue.to_owned())],
    )
    .await?;
    let queue = queue.to_owned();
    broker
        .write(move |conn, _| {
            conn.prepare_cached(sql::DROP_RATE)?.execute([queue])?;
            Ok(())
        })
        .await?;
    Ok(deleted)
}

/// Deletes jobs and their events a chunk at a time, until a chunk comes back short. `text`
/// takes `args` and then the chunk size, deletes at most that many jobs and returns their ids.
async fn delete_jobs(
    broker: &SqliteBroker,
    text: &'static str,
    args: Vec<SqlValue>,
) -> BrokerResult<u64> {
    let mut deleted: u64 = 0;
    loop {
        let args = args.clone();
        let n = broker
            .write(move |conn, now| {
                let bound = args.into_iter().chain([SqlValue::Integer(CHUNK)]);
                // Ids as stored: a row another program wrote may hold one that is not UTF-8
                // text, and it goes with its events like any other (see `RawId`).
                let ids = conn
                    .prepare_cached(text)?
                    .query_map(params_from_iter(bound), |r| r.get::<_, RawId>(0))?
                    .collect::<Result<Vec<_>, _>>()?;
                // The newest event removed: these come from anywhere in the log, not only its
                // start, and a reader whose cursor precedes one must be told (a gap).
                let mut newest: i64 = 0;
                let mut events = conn.prepare_cached(sql::DELETE_JOB_EVENTS)?;
                for id in &ids {
                    for removed in events.query_map([id], |r| r.get::<_, i64>(0))? {
                        newest = newest.max(removed?);
                    }
                }
                if newest > 0 {
                    conn.prepare_cached(sql::RAISE_REMOVED_EVENTS)?
                        .execute(params![newest.to_string(), now, sql::REMOVED_EVENTS_CURSOR])?;
                }
                Ok(to_i64(ids.len()))
            })
            .await?;
        deleted += to_u64(n);
        if n < CHUNK {
            return Ok(deleted);
        }
    }
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
