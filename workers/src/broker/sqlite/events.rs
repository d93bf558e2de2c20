//! Appending to the event log, inside the write that changed the job.
//!
//! It owns the one statement that inserts an event row and the small constructors of the event
//! data that several transitions share, so that an event is always appended in the same
//! transaction as its state change (the broker's atomicity guarantee). It does not read the log
//! (`history` and `events` are in `super::read`) nor trim it (`super::admin`).

use rusqlite::{CachedStatement, Connection, params};

use super::error::Fail;
use super::rows::Owner;
use super::sql;
use crate::event::{EventData, EventType};
use crate::time::Timestamp;

/// Appends one event about `owner`'s job, at `owner.attempt`.
pub(super) fn append_event(
    conn: &Connection,
    owner: &Owner,
    event: EventType,
    at: Timestamp,
    data: &EventData,
) -> Result<(), Fail> {
    let result = match &data.result {
        Some(v) => Some(serde_json::to_string(v)?),
        None => None,
    };
    conn.prepare_cached(sql::INSERT_EVENT)?.execute(params![
        owner.id.as_str(),
        owner.queue,
        owner.kind,
        event.as_str(),
        at,
        i64::from(owner.attempt),
        data.progress.map(i64::from),
        data.message,
        result,
        data.error,
    ])?;
    Ok(())
}

/// The `job.enqueued` events of one enqueue batch, appended through one prepared statement.
///
/// A batch of a thousand jobs appends a thousand events that differ only in their job: the
/// statement is fetched from the cache once (not once per job), and the columns every one of
/// them shares (type, time, attempt, and the empty data) are bound once, since a statement
/// keeps its bindings from one execution to the next. Per job, only the job's own columns are
/// bound. Its rows are the ones [`append_event`] would write for `EventData::default()`.
pub(super) struct EnqueuedEvents<'c> {
    stmt: CachedStatement<'c>,
}

impl<'c> EnqueuedEvents<'c> {
    /// Prepares the batch's statement, with the columns its events share bound.
    pub fn new(conn: &'c Connection, at: Timestamp) -> Result<Self, Fail> {
        let mut stmt = conn.prepare_cached(sql::INSERT_EVENT)?;
        let none: Option<&str> = None;
        stmt.raw_bind_parameter(4, EventType::Enqueued.as_str())?;
        stmt.raw_bind_parameter(5, at)?;
        stmt.raw_bind_parameter(7, none)?;
        stmt.raw_bind_parameter(8, none)?;
        stmt.raw_bind_parameter(9, none)?;
        stmt.raw_bind_parameter(10, none)?;
        Ok(Self { stmt })
    }

    /// Appends the `job.enqueued` event of `owner`'s job, at `owner.attempt`.
    pub fn append(&mut self, owner: &Owner) -> Result<(), Fail> {
        self.stmt.raw_bind_parameter(1, owner.id.as_str())?;
        self.stmt.raw_bind_parameter(2, owner.queue.as_str())?;
        self.stmt.raw_bind_parameter(3, owner.kind.as_str())?;
        self.stmt.raw_bind_parameter(6, i64::from(owner.attempt))?;
        self.stmt.raw_execute()?;
        Ok(())
    }
}

/// Event data that carries only a message ("retried", "lease expired", a chain's reason).
pub(super) fn note(message: impl Into<String>) -> EventData {
    EventData {
        message: Some(message.into()),
        ..EventData::default()
    }
}

/// Event data that carries only an error (a failed or dead attempt).
pub(super) fn failure(error: String) -> EventData {
    EventData {
        error: Some(error),
        ..EventData::default()
    }
}

/// The message of the `job.enqueued` a retry appends.
pub(super) const RETRIED: &str = "retried";
/// The message of the `job.interrupted` a rescue appends.
pub(super) const LEASE_EXPIRED: &str = "lease expired";
/// The message of the `job.enqueued` a snooze appends: there is no "scheduled" event type, so a
/// snoozed job is enqueued again, for later.
pub(super) const SNOOZED: &str = "snoozed";
