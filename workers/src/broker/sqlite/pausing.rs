//! Queues paused by an operator: a row in `paused_queues` per paused queue
//! (`workers/migrations/sqlite/0004_paused_queues.sql`).
//!
//! It owns pausing and resuming; it does not enforce a pause: `super::lifecycle::fetch` looks
//! the queue up in the same write transaction that would lease its jobs, which is what makes
//! every process on the file honour a pause from its next fetch on, and `super::read::queues`
//! reports it.

use rusqlite::params;

use super::SqliteBroker;
use super::sql;
use crate::error::BrokerResult;

fn check_queue(queue: &str) -> BrokerResult<()> {
    Ok(crate::job::check_queue(queue)?)
}

pub(super) async fn pause(broker: &SqliteBroker, queue: &str) -> BrokerResult<()> {
    check_queue(queue)?;
    let queue = queue.to_owned();
    broker
        .write(move |conn, now| {
            conn.prepare_cached(sql::PAUSE)?
                .execute(params![queue, now])?;
            Ok(())
        })
        .await
}

pub(super) async fn is_paused(broker: &SqliteBroker, queue: &str) -> BrokerResult<bool> {
    check_queue(queue)?;
    let queue = queue.to_owned();
    broker
        .read(move |conn, _| {
            Ok(conn
                .prepare_cached(sql::IS_PAUSED)?
                .query_row([queue], |r| r.get(0))?)
        })
        .await
}

pub(super) async fn resume(broker: &SqliteBroker, queue: &str) -> BrokerResult<()> {
    check_queue(queue)?;
    let queue = queue.to_owned();
    broker
        .write(move |conn, _| {
            conn.prepare_cached(sql::RESUME)?.execute([queue])?;
            Ok(())
        })
        .await?;
    // Workers of this process wait on it; those of other processes look again within
    // `CROSS_PROCESS_POLL`.
    broker.wake();
    Ok(())
}
