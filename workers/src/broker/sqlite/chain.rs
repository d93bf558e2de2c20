//! Chain transitions: what a step's end or retry does to the steps after it.
//!
//! It owns the moves of the steps *around* a job that changed: the next step queued with the
//! result of a succeeded one, the waiting steps cancelled after a dead or cancelled one, and,
//! on a retry, the retried step given its predecessor's result and the steps after it put back
//! to `waiting`. It does not change the job that ended or was retried (the callers in
//! `super::lifecycle` and `super::admin` do, in the same transaction, before calling in here),
//! nor decide when a chain is enqueued (`enqueue` in `super::lifecycle`).

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use super::error::Fail;
use super::events::{append_event, note};
use super::rows::owner_from_row;
use super::sql;
use crate::event::EventType;
use crate::job::{ChainLink, JobId, JobState};
use crate::time::Timestamp;

/// Queues the step after a succeeded one, handing it the result as `input`. True when it was
/// waiting and is queued now.
pub(super) fn promote_next(
    conn: &Connection,
    now: Timestamp,
    next: &JobId,
    result: &Value,
    index: u32,
) -> Result<bool, Fail> {
    let owner = conn
        .prepare_cached(sql::CHAIN_PROMOTE)?
        .query_row(
            params![next.as_str(), serde_json::to_string(result)?, now],
            owner_from_row,
        )
        .optional()?;
    let Some(owner) = owner else {
        return Ok(false);
    };
    let data = note(format!("chain: step {index} succeeded"));
    append_event(conn, &owner, EventType::Enqueued, now, &data)?;
    Ok(true)
}

/// Cancels the waiting steps after a step that ended `how` (`dead` or `cancelled`).
pub(super) fn cancel_rest(
    conn: &Connection,
    now: Timestamp,
    link: &ChainLink,
    step: &JobId,
    how: &str,
) -> Result<(), Fail> {
    let reason = format!("chain: step {} ({step}) is {how}", link.index);
    let owners = conn
        .prepare_cached(sql::CHAIN_CANCEL_REST)?
        .query_map(
            params![link.id.as_str(), i64::from(link.index), now, reason],
            owner_from_row,
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let data = note(reason);
    for owner in &owners {
        append_event(conn, owner, EventType::Cancelled, now, &data)?;
    }
    Ok(())
}

/// A retried later step of a chain runs with its predecessor's result: queued with it as
/// `input` when the predecessor succeeded, else back to `waiting` for it. Returns the state it
/// set, if it changed the step.
fn requeue_step(conn: &Connection, id: &JobId, link: &ChainLink) -> Result<Option<JobState>, Fail> {
    if link.index == 0 {
        return Ok(None);
    }
    let pred: Option<(String, Option<String>)> = conn
        .prepare_cached(sql::CHAIN_PREDECESSOR)?
        .query_row(params![link.id.as_str(), i64::from(link.index - 1)], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let (state, input) = match pred {
        Some((st, result)) if st == JobState::Succeeded.as_str() => (JobState::Queued, result),
        _ => (JobState::Waiting, None),
    };
    conn.prepare_cached(sql::CHAIN_REQUEUE_STEP)?
        .execute(params![id.as_str(), state.as_str(), input])?;
    Ok(Some(state))
}

/// Puts the steps cancelled after a retried step back to `waiting`.
fn resume_rest(conn: &Connection, link: &ChainLink) -> Result<(), Fail> {
    conn.prepare_cached(sql::CHAIN_RESUME_REST)?
        .execute(params![link.id.as_str(), i64::from(link.index)])?;
    Ok(())
}

/// Both halves of retrying step `id` of a chain ([`requeue_step`], then [`resume_rest`]).
/// Returns the state the step was given, if it changed it.
pub(super) fn retried(
    conn: &Connection,
    id: &JobId,
    link: &ChainLink,
) -> Result<Option<JobState>, Fail> {
    let state = requeue_step(conn, id, link)?;
    resume_rest(conn, link)?;
    Ok(state)
}
