//! Appending to the event log, inside the write that changed the job.
//!
//! It owns the one statement that inserts an event row and the small constructors of the event
//! data that several transitions share, so that an event is always appended in the same
//! transaction as its state change (the broker's atomicity guarantee). It does not read the log
//! (`history` and `events` are in `super::read`) nor trim it (`super::admin`).

use rusqlite::{Connection, params};

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
