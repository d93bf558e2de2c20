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

/// The `job.enqueued` events of one enqueue batch, appended by one statement at its end.
///
/// A batch of a thousand jobs appends a thousand events that differ only in their job. One
/// `INSERT ... SELECT` over the jobs the batch created writes them all, instead of a statement
/// run (with its cursors opened, its bindings set, and the `AUTOINCREMENT` counter read and
/// written) per job. The jobs a batch creates are the rows after the last one before it (the
/// writer thread is the only writer, and `seq` is the next rowid), in the order they were
/// inserted, so the events keep the order of the jobs. Its rows are the ones
/// [`append_event`] would write for `EventData::default()`.
#[derive(Default)]
pub(super) struct EnqueuedEvents {
    /// The `seq` of the batch's first created job, once there is one.
    first: Option<i64>,
}

impl EnqueuedEvents {
    /// Notes a job the batch just inserted (its row is the connection's last insert).
    pub fn created(&mut self, conn: &Connection) {
        if self.first.is_none() {
            self.first = Some(conn.last_insert_rowid());
        }
    }

    /// Appends the `job.enqueued` event of every job the batch created, at `at`.
    pub fn append(self, conn: &Connection, at: Timestamp) -> Result<(), Fail> {
        if let Some(first) = self.first {
            conn.prepare_cached(sql::INSERT_ENQUEUED_EVENTS)?
                .execute(params![first, at])?;
        }
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
