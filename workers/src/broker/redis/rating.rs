//! Job rate limits on Redis: the key `{<prefix>:<queue>}:rate`, in the queue's own hash tag, so
//! that `fetch.lua` reads and advances it in the script that leases the queue's jobs (one
//! Cluster slot, one atomic step, one budget for every node).
//!
//! The rule is `crate::broker::rate`'s (and fetch.lua's, in Lua); the call itself is
//! `lifecycle::run_fetch`'s. An unrated fetch never touches the key.

use std::time::Duration;

use super::RedisBroker;
use super::keys::check_queue;
use super::lifecycle::run_fetch;
use crate::broker::rate::{self, JobRate, RatedFetch};
use crate::error::BrokerResult;
use crate::time::Timestamp;

pub(super) async fn fetch_rated(
    broker: &RedisBroker,
    queue: &str,
    max: usize,
    lease: Duration,
    job_rate: JobRate,
) -> BrokerResult<RatedFetch> {
    run_fetch(broker, queue, max, lease, Some(job_rate)).await
}

pub(super) async fn rate_held_until(
    broker: &RedisBroker,
    queue: &str,
) -> BrokerResult<Option<Timestamp>> {
    check_queue(queue)?;
    let next: Option<String> = broker
        .query(redis::cmd("GET").arg(format!("{}rate", broker.base(queue))))
        .await?;
    let Some(next) = next.and_then(|n| n.parse::<f64>().ok()) else {
        return Ok(None);
    };
    Ok(rate::held_until(Some(next), broker.now().await?))
}
