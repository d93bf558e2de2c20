//! The read path: get, history, list, queues, events, ping.
//!
//! It owns every operation that only reads, run on the reader connection (`SqliteBroker::read`,
//! off the async runtime), which in WAL mode never waits for the writer thread nor holds it up.
//! It does not write, not even an event: the reader connection is opened `query_only`
//! (`super::open`). Page sizes are capped here, so that one request cannot read the whole file.

use std::time::Duration;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use super::SqliteBroker;
use super::error::Fail;
use super::rows::{event_from_row, job_from_row, lossy_text, to_i64, to_u64};
use super::sql;
use crate::broker::{JobFilter, JobPage, QueueStats};
use crate::error::{BrokerError, BrokerResult};
use crate::event::{Event, EventType};
use crate::job::{FieldError, Job, JobId, JobState};

/// Largest page of `events`.
const MAX_EVENTS_PAGE: usize = 10_000;
/// How far back `queues` counts recent outcomes (`processed_last_minute`, `failed_last_minute`).
const RECENT: Duration = Duration::from_secs(60);

pub(super) async fn get(broker: &SqliteBroker, id: &JobId) -> BrokerResult<Option<Job>> {
    by_id(broker, id, |conn, id| {
        Ok(conn
            .prepare_cached(sql::GET)?
            .query_row([id], job_from_row)
            .optional()?)
    })
    .await
}

pub(super) async fn history(broker: &SqliteBroker, id: &JobId) -> BrokerResult<Vec<Event>> {
    by_id(broker, id, |conn, id| {
        Ok(conn
            .prepare_cached(sql::HISTORY)?
            .query_map([id], event_from_row)?
            .collect::<Result<Vec<_>, _>>()?)
    })
    .await
}

/// Runs a read about one job on a read connection.
async fn by_id<T: Send + 'static>(
    broker: &SqliteBroker,
    id: &JobId,
    read: impl FnOnce(&Connection, &str) -> Result<T, Fail> + Send + 'static,
) -> BrokerResult<T> {
    let id = id.clone();
    broker.read(move |conn, _| read(conn, id.as_str())).await
}

pub(super) async fn list(broker: &SqliteBroker, filter: &JobFilter) -> BrokerResult<JobPage> {
    let limit = filter.page_size();
    filter.check()?;
    // A cursor is the `seq` of a job, as this broker writes it (no sign, no leading zero).
    let cursor = match &filter.cursor {
        Some(c) => Some(
            crate::broker::canonical_number(c)
                .and_then(|c| i64::try_from(c).ok())
                .ok_or_else(|| FieldError::new("cursor", "not a cursor this broker issued"))?,
        ),
        None => None,
    };
    // Only the filters given become clauses (see `sql::LIST`).
    let mut text = String::from(sql::LIST);
    let mut args: Vec<SqlValue> = Vec::new();
    let mut clause = |part: &str, arg: SqlValue| {
        text.push_str(part);
        args.push(arg);
    };
    if let Some(q) = &filter.queue {
        clause(sql::LIST_QUEUE, SqlValue::Text(q.clone()));
    }
    if let Some(st) = filter.state {
        clause(sql::LIST_STATE, SqlValue::Text(st.as_str().to_owned()));
    }
    if let Some(k) = &filter.kind {
        clause(sql::LIST_KIND, SqlValue::Text(k.clone()));
    }
    if let Some(c) = cursor {
        clause(sql::LIST_AFTER_CURSOR, SqlValue::Integer(c));
    }
    // One more than asked tells whether another page follows.
    clause(sql::LIST_NEWEST_FIRST, SqlValue::Integer(to_i64(limit + 1)));
    broker
        .read(move |conn, _| {
            let mut rows = conn
                .prepare_cached(&text)?
                .query_map(params_from_iter(args), |row| {
                    Ok((row.get::<_, i64>(0)?, job_from_row(row)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let next_cursor = if rows.len() > limit {
                rows.truncate(limit);
                rows.last().map(|(seq, _)| seq.to_string())
            } else {
                None
            };
            Ok(JobPage {
                jobs: rows.into_iter().map(|(_, j)| j).collect(),
                next_cursor,
            })
        })
        .await
}

pub(super) async fn queues(broker: &SqliteBroker) -> BrokerResult<Vec<QueueStats>> {
    broker
        .read(move |conn, now| {
            // One read transaction, so counts and recent outcomes describe the same moment.
            let tx = conn.unchecked_transaction()?;
            let mut stats: Vec<QueueStats> = Vec::new();
            {
                let mut counts = tx.prepare_cached(sql::COUNTS)?;
                let mut rows = counts.query([])?;
                while let Some(row) = rows.next()? {
                    // Lossily, as listings show it: one foreign row must not hide every count.
                    let queue = lossy_text(row, 0)?;
                    let state: String = row.get(1)?;
                    let n: i64 = row.get(2)?;
                    if let Some(st) = JobState::parse(&state) {
                        *entry(&mut stats, &queue).counts.get_mut(st) += to_u64(n);
                    }
                }
                let mut paused = tx.prepare_cached(sql::PAUSED_QUEUES)?;
                let mut rows = paused.query([])?;
                while let Some(row) = rows.next()? {
                    let queue = lossy_text(row, 0)?;
                    entry(&mut stats, &queue).paused = true;
                }
                let mut recent = tx.prepare_cached(sql::RECENT_OUTCOMES)?;
                let mut rows = recent.query([now - RECENT])?;
                while let Some(row) = rows.next()? {
                    let queue = lossy_text(row, 0)?;
                    let kind: String = row.get(1)?;
                    let n = to_u64(row.get(2)?);
                    // Only queues that still hold jobs are listed.
                    let Some(s) = stats.iter_mut().find(|s| s.queue == queue) else {
                        continue;
                    };
                    if kind == EventType::Succeeded.as_str() {
                        s.processed_last_minute += n;
                    } else {
                        s.failed_last_minute += n;
                    }
                }
            }
            tx.finish()?;
            stats.sort_by(|a, b| a.queue.cmp(&b.queue));
            Ok(stats)
        })
        .await
}

/// The stats of `queue`, added empty when it is not there yet.
fn entry<'a>(stats: &'a mut Vec<QueueStats>, queue: &str) -> &'a mut QueueStats {
    let i = match stats.iter().position(|s| s.queue == queue) {
        Some(i) => i,
        None => {
            stats.push(QueueStats {
                queue: queue.to_owned(),
                ..QueueStats::default()
            });
            stats.len() - 1
        }
    };
    &mut stats[i]
}

/// The rowid an event id this broker issued stands for (never negative).
fn event_rowid(id: &str) -> Result<i64, FieldError> {
    crate::broker::canonical_number(id)
        .and_then(|a| i64::try_from(a).ok())
        .ok_or_else(|| FieldError::new("since", "not an event id this broker issued"))
}

/// Told exactly, for cursors of this file's log. Ids are `AUTOINCREMENT`: every id up to the
/// newest was an event, so the ids between `after` and the oldest event held are events lost
/// to the cap, which trims the log from its start; a cursor right before the oldest held (its
/// own event trimmed, nothing after it) missed nothing, and neither does `0` (before the
/// first id) while nothing was deleted. A purge or a queue's drop deletes its jobs' events
/// wherever they are, and keeps the newest such id ([`sql::REMOVED_EVENTS_CURSOR`]): a cursor
/// before it missed events. (A file replaced or restored from a backup issues ids again:
/// its cursors' answers are as good as the caller's rule, no better.)
pub(super) async fn trimmed_after(
    broker: &SqliteBroker,
    after: &str,
) -> BrokerResult<Option<bool>> {
    let after = event_rowid(after)?;
    broker
        .read(move |conn, _| {
            // One read transaction: a purge between the two reads could not pass unseen.
            let tx = conn.unchecked_transaction()?;
            let removed: Option<String> = tx
                .prepare_cached(sql::CURSOR)?
                .query_row([sql::REMOVED_EVENTS_CURSOR], |row| row.get(0))
                .optional()?;
            if removed
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|n| n > after)
            {
                return Ok(Some(true));
            }
            let oldest: Option<i64> = tx
                .prepare_cached(sql::EVENTS_OLDEST)?
                .query_row([], |r| r.get(0))?;
            Ok(Some(oldest.is_some_and(|o| o > after.saturating_add(1))))
        })
        .await
}

pub(super) async fn events(
    broker: &SqliteBroker,
    after: Option<&str>,
    limit: usize,
) -> BrokerResult<Vec<Event>> {
    let after = after.map(event_rowid).transpose()?.unwrap_or(0);
    if limit == 0 {
        return Ok(Vec::new());
    }
    let limit = to_i64(limit.min(MAX_EVENTS_PAGE));
    broker
        .read(move |conn, _| {
            Ok(conn
                .prepare_cached(sql::EVENTS_AFTER)?
                .query_map(params![after, limit], event_from_row)?
                .collect::<Result<Vec<_>, _>>()?)
        })
        .await
}

/// The largest event id: ids grow with each commit, and a reader sees whole commits.
pub(super) async fn events_end(broker: &SqliteBroker) -> BrokerResult<Option<String>> {
    broker
        .read(move |conn, _| {
            let end: Option<i64> = conn
                .prepare_cached(sql::EVENTS_END)?
                .query_row([], |r| r.get(0))?;
            Ok(end.map(|id| id.to_string()))
        })
        .await
}

/// Waits for this instance's next write, unless the log already holds events after `after`;
/// at most [`CROSS_PROCESS_POLL`](super::CROSS_PROCESS_POLL), as other processes' writes to
/// the file cannot wake us.
pub(super) async fn wait_for_events(
    broker: &SqliteBroker,
    after: Option<&str>,
    timeout: Duration,
) -> BrokerResult<()> {
    let after = after.map(event_rowid).transpose()?.unwrap_or(0);
    // Subscribed before looking, so that a write between the look and the wait still wakes.
    let mut written = broker.written.subscribe();
    let appended = broker
        .read(move |conn, _| {
            Ok(conn
                .prepare_cached(sql::EVENTS_EXIST_AFTER)?
                .query_row(params![after], |r| r.get::<_, bool>(0))?)
        })
        .await?;
    if !appended {
        let _ =
            tokio::time::timeout(timeout.min(super::CROSS_PROCESS_POLL), written.changed()).await;
    }
    Ok(())
}

/// Waits as short as the caller asks: other processes' writes cannot wake this broker.
pub(super) fn events_idle_wait(_: &SqliteBroker, short: Duration) -> Duration {
    short
}

pub(super) async fn ping(broker: &SqliteBroker) -> BrokerResult<()> {
    broker
        .read(|conn, _| {
            conn.prepare_cached(sql::PING)?
                .query_row([], |r| r.get::<_, i64>(0))?;
            Ok(())
        })
        .await
}

/// One file, always whole: ready when it answers and takes writes (a full disk or a file that
/// cannot be written, met by the last writes, is not ready: every enqueue would fail).
pub(super) async fn ready(broker: &SqliteBroker) -> BrokerResult<()> {
    if let Some(why) = broker.stats.unwritable() {
        return Err(BrokerError::Unavailable(
            format!("the database takes no writes: {why}").into(),
        ));
    }
    ping(broker).await
}
