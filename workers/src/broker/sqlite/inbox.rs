//! Users' inboxes and Web Push subscriptions on SQLite (`0008_inbox.sql`; the rules are
//! `crate::broker::inbox`'s).
//!
//! An entry's cursor is its `seq` in decimal. An append trims, checks the id and inserts in
//! one write; the waits follow [`super::read::wait_for_events`]: this process's appends wake
//! them at once, other processes' within [`super::CROSS_PROCESS_POLL`].

use std::time::Duration;

use rusqlite::{Row, params};

use super::SqliteBroker;
use super::error::Fail;
use super::sql;
use crate::broker::inbox::{MAX_PUSH_SUBSCRIPTIONS, too_many_push_subscriptions};
use crate::broker::{Appended, InboxEntry, NewInboxEntry, WebPush};
use crate::error::{BrokerError, BrokerResult};
use crate::field::FieldError;
use crate::time::Timestamp;

fn cursor(s: &str) -> Result<i64, FieldError> {
    crate::broker::canonical_number(s)
        .and_then(|c| i64::try_from(c).ok())
        .ok_or_else(|| FieldError::new("since", "not a notification cursor this broker issued"))
}

fn entry(row: &Row<'_>) -> Result<InboxEntry, Fail> {
    let body: String = row.get(4)?;
    Ok(InboxEntry {
        cursor: row.get::<_, i64>(0)?.to_string(),
        id: row.get(1)?,
        user: row.get(2)?,
        at: Timestamp::from_millis(row.get(3)?),
        body: serde_json::from_str(&body)?,
    })
}

pub(super) async fn inbox_append(
    broker: &SqliteBroker,
    new: &NewInboxEntry,
    keep: Duration,
) -> BrokerResult<Appended> {
    let body = serde_json::to_string(&new.body).map_err(crate::BrokerError::backend)?;
    let (id, user) = (new.id.clone(), new.user.clone());
    broker
        .write(move |conn, now| {
            conn.prepare_cached(sql::INBOX_TRIM)?
                .execute([now.saturating_sub(keep)])?;
            let created = conn
                .prepare_cached(sql::INBOX_INSERT)?
                .execute(params![id, user, now, body])?
                > 0;
            let seq: i64 = conn
                .prepare_cached(sql::INBOX_SEQ_OF)?
                .query_row([&id], |r| r.get(0))?;
            Ok(Appended {
                cursor: seq.to_string(),
                created,
            })
        })
        .await
}

pub(super) async fn inbox_read(
    broker: &SqliteBroker,
    user: Option<&str>,
    after: Option<&str>,
    limit: usize,
    keep: Duration,
) -> BrokerResult<Vec<InboxEntry>> {
    let after = after.map(cursor).transpose()?.unwrap_or(0);
    if limit == 0 {
        return Ok(Vec::new());
    }
    let user = user.map(str::to_owned);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    broker
        .read(move |conn, now| {
            let since = now.saturating_sub(keep);
            let mut out = Vec::new();
            match &user {
                Some(u) => {
                    let mut stmt = conn.prepare_cached(sql::INBOX_READ_USER)?;
                    let mut rows = stmt.query(params![u, after, since, limit])?;
                    while let Some(row) = rows.next()? {
                        out.push(entry(row)?);
                    }
                }
                None => {
                    let mut stmt = conn.prepare_cached(sql::INBOX_READ_ALL)?;
                    let mut rows = stmt.query(params![after, since, limit])?;
                    while let Some(row) = rows.next()? {
                        out.push(entry(row)?);
                    }
                }
            }
            Ok(out)
        })
        .await
}

pub(super) async fn inbox_wait(
    broker: &SqliteBroker,
    after: Option<&str>,
    timeout: Duration,
) -> BrokerResult<()> {
    let after = after.map(cursor).transpose()?.unwrap_or(0);
    // Subscribed before looking, so that an append between the look and the wait still wakes.
    let mut written = broker.written.subscribe();
    let appended = broker
        .read(move |conn, _| {
            Ok(conn
                .prepare_cached(sql::INBOX_EXISTS_AFTER)?
                .query_row([after], |r| r.get::<_, bool>(0))?)
        })
        .await?;
    if !appended {
        let _ =
            tokio::time::timeout(timeout.min(super::CROSS_PROCESS_POLL), written.changed()).await;
    }
    Ok(())
}

/// The newest entry's `seq` ([`sql::INBOX_END`]).
pub(super) async fn inbox_end(broker: &SqliteBroker) -> BrokerResult<Option<String>> {
    broker
        .read(|conn, _| {
            Ok(conn
                .prepare_cached(sql::INBOX_END)?
                .query_row([], |r| r.get::<_, Option<i64>>(0))?
                .map(|seq| seq.to_string()))
        })
        .await
}

pub(super) async fn push_subscribe(
    broker: &SqliteBroker,
    user: &str,
    sub: &WebPush,
) -> BrokerResult<bool> {
    let (user, sub) = (user.to_owned(), sub.clone());
    broker
        .write(move |conn, now| {
            let existed: bool = conn
                .prepare_cached(sql::PUSH_EXISTS)?
                .query_row(params![user, sub.endpoint], |r| r.get(0))?;
            if !existed {
                let count: i64 = conn
                    .prepare_cached(sql::PUSH_COUNT)?
                    .query_row([&user], |r| r.get(0))?;
                if usize::try_from(count).unwrap_or(usize::MAX) >= MAX_PUSH_SUBSCRIPTIONS {
                    return Err(BrokerError::from(too_many_push_subscriptions()).into());
                }
            }
            conn.prepare_cached(sql::PUSH_UPSERT)?.execute(params![
                user,
                sub.endpoint,
                sub.p256dh,
                sub.auth,
                now
            ])?;
            Ok(!existed)
        })
        .await
}

pub(super) async fn push_subscriptions(
    broker: &SqliteBroker,
    user: &str,
) -> BrokerResult<Vec<WebPush>> {
    let user = user.to_owned();
    broker
        .read(move |conn, _| {
            let mut stmt = conn.prepare_cached(sql::PUSH_LIST)?;
            let rows = stmt.query_map([user], |r| {
                Ok(WebPush {
                    endpoint: r.get(0)?,
                    p256dh: r.get(1)?,
                    auth: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
}

pub(super) async fn push_unsubscribe(
    broker: &SqliteBroker,
    user: &str,
    endpoint: &str,
) -> BrokerResult<bool> {
    let (user, endpoint) = (user.to_owned(), endpoint.to_owned());
    broker
        .write(move |conn, _| {
            Ok(conn
                .prepare_cached(sql::PUSH_DELETE)?
                .execute(params![user, endpoint])?
                > 0)
        })
        .await
}
