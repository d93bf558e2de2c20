//! Queues paused by an operator: the key `{<prefix>:<queue>}:paused`, in the queue's own
//! hash tag, so that the fetch script reads it in the slot it already works in.
//!
//! It owns pausing and resuming; it does not enforce a pause: `fetch.lua` checks the key in
//! the same script that would lease the queue's jobs, so every node honours a pause from its
//! next fetch on, and `read::queues` reports it.

use super::RedisBroker;
use super::conn::Pipe;
use super::keys::check_queue;
use crate::error::BrokerResult;

pub(super) async fn pause(broker: &RedisBroker, queue: &str) -> BrokerResult<()> {
    check_queue(queue)?;
    // The queue joins the index of queues, so `queues` lists it even before it holds a job.
    let mut pipe = Pipe::new();
    pipe.cmd("SET")
        .arg(format!("{}paused", broker.base(queue)))
        .arg(1)
        .ignore();
    pipe.cmd("SADD")
        .arg(broker.queues_key())
        .arg(queue)
        .ignore();
    broker.query_pipe::<()>(&pipe).await
}

pub(super) async fn is_paused(broker: &RedisBroker, queue: &str) -> BrokerResult<bool> {
    check_queue(queue)?;
    let n: i64 = broker
        .query(redis::cmd("EXISTS").arg(format!("{}paused", broker.base(queue))))
        .await?;
    Ok(n == 1)
}

pub(super) async fn resume(broker: &RedisBroker, queue: &str) -> BrokerResult<()> {
    check_queue(queue)?;
    let base = broker.base(queue);
    // Wake the workers blocked on the queue at once (as common.lua's `signal` does), rather
    // than at the end of their idle wait.
    let mut pipe = Pipe::new();
    pipe.cmd("DEL").arg(format!("{base}paused")).ignore();
    pipe.cmd("LPUSH")
        .arg(broker.signal_key(queue))
        .arg(&["1"; 8])
        .ignore();
    pipe.cmd("LTRIM")
        .arg(broker.signal_key(queue))
        .arg(0)
        .arg(15)
        .ignore();
    broker.query_pipe::<()>(&pipe).await
}
