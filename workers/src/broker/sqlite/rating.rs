//! Job rate limits on SQLite: a row of `queue_rates` per rated queue
//! (`workers/migrations/sqlite/0005_queue_rates.sql`), read and advanced inside the write
//! transaction that leases the jobs, so that every process on the file shares one budget.
//!
//! The rule is `crate::broker::rate`'s; the lease itself is `super::lifecycle`'s.

use std::time::Duration;

use rusqlite::{OptionalExtension, params};

use super::SqliteBroker;
use super::lifecycle::{lease_queued, promote_unless_paused};
use super::sql;
use crate::broker::rate::{self, JobRate, RatedFetch};
use crate::error::BrokerResult;
use crate::time::Timestamp;

pub(super) async fn fetch_rated(
    broker: &SqliteBroker,
    queue: &str,
    max: usize,
    lease: Duration,
    job_rate: JobRate,
) -> BrokerResult<RatedFetch> {
    crate::job::check_queue(queue)?;
    if max == 0 {
        return Ok(RatedFetch::default());
    }
    let queue = queue.to_owned();
    broker
        .write(move |conn, now| {
            if !promote_unless_paused(conn, &queue, now)? {
                return Ok(RatedFetch::default());
            }
            let next: Option<f64> = conn
                .prepare_cached(sql::RATE_NEXT)?
                .query_row([&queue], |r| r.get(0))
                .optional()?;
            let now_ms = now.as_millis() as f64;
            let (allowed, from) = job_rate.allowed(next, now_ms, max);
            let jobs = if allowed == 0 {
                Vec::new()
            } else {
                lease_queued(conn, &queue, allowed, lease, now)?
            };
            let next = job_rate.advance(from, jobs.len());
            if !jobs.is_empty() {
                conn.prepare_cached(sql::SET_RATE_NEXT)?
                    .execute(params![queue, next])?;
            }
            Ok(RatedFetch {
                jobs,
                held_for: rate::held_for(next, now_ms),
            })
        })
        .await
}

pub(super) async fn rate_held_until(
    broker: &SqliteBroker,
    queue: &str,
) -> BrokerResult<Option<Timestamp>> {
    crate::job::check_queue(queue)?;
    let queue = queue.to_owned();
    broker
        .read(move |conn, now| {
            let next: Option<f64> = conn
                .prepare_cached(sql::RATE_NEXT)?
                .query_row([&queue], |r| r.get(0))
                .optional()?;
            Ok(rate::held_until(next, now))
        })
        .await
}
