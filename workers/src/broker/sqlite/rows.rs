//! From SQLite values to Hopper types: row decoders and integer conversions.
//!
//! It owns the reading of the column lists `super::sql` spells out, and the conversions between
//! SQLite's `i64` and Hopper's unsigned numbers and [`Timestamp`]s (stored as integer
//! milliseconds, which order and compare in SQL). It does not run statements. A stored value this
//! version cannot read is a conversion error ([`BadColumn`]), never a panic or a guess, because
//! a newer `hopper` may share the file; the exceptions are labels read lossily when they are not
//! UTF-8 text: a job's or an event's queue and kind ([`lossy_text`]) and job ids ([`stored_id`]:
//! a job's own, its chain's), so that such a row can still be listed, and ended, rather than fail
//! every statement that meets it (a fetch checks the kind is exact before handing a job out). A statement that must find such a row again by its id binds the id
//! back as stored ([`RawId`]).

use rusqlite::Row;
use rusqlite::types::{FromSql, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde_json::Value;

use crate::event::{Event, EventType};
use crate::job::{ChainLink, Job, JobId, JobState};
use crate::time::Timestamp;

/// The job a changed row belongs to, as its events name it: the `id, queue, kind, attempt`
/// that fenced updates and bulk updates return first.
pub(super) struct Owner {
    pub id: JobId,
    pub queue: String,
    pub kind: String,
    pub attempt: u32,
}

impl Owner {
    /// The owner of a job already decoded in full.
    pub fn of(job: &Job) -> Self {
        Self {
            id: job.id.clone(),
            queue: job.queue.clone(),
            kind: job.kind.clone(),
            attempt: job.attempt,
        }
    }
}

/// Decodes `id, queue, kind, attempt` (columns 0 to 3). The queue and kind only label the
/// events, so one that is not UTF-8 (data Hopper did not write) is read lossily: failing here
/// would fail the statement that ends such a job, such as the fetch that buries it, every time.
pub(super) fn owner_from_row(r: &Row<'_>) -> rusqlite::Result<Owner> {
    Ok(Owner {
        id: stored_id(r, 0)?.id,
        queue: lossy_text(r, 1)?,
        kind: lossy_text(r, 2)?,
        attempt: to_u32(r.get(3)?),
    })
}

/// A text column read even when it is not UTF-8 (the bytes that are not replaced by U+FFFD):
/// for labels such as a job's queue and kind, shown in listings and on events. What a job does
/// must not hang on it: a fetch buries a job whose kind is not exact ([`is_exact_text`]).
pub(super) fn lossy_text(r: &Row<'_>, idx: usize) -> rusqlite::Result<String> {
    match r.get_ref(idx)? {
        ValueRef::Text(bytes) => Ok(String::from_utf8_lossy(bytes).into_owned()),
        _ => r.get(idx),
    }
}

/// Whether column `idx` reads exactly as a `String` (UTF-8 text, or a value that is not text),
/// which [`lossy_text`] would not change.
pub(super) fn is_exact_text(r: &Row<'_>, idx: usize) -> rusqlite::Result<bool> {
    Ok(match r.get_ref(idx)? {
        ValueRef::Text(bytes) => std::str::from_utf8(bytes).is_ok(),
        _ => true,
    })
}

/// A job's id as the row stores it. Hopper writes ids as UTF-8 text; another program may have
/// written a BLOB, or text that is not UTF-8, which no statement can find by a text id.
pub(super) struct StoredId {
    /// The id, lossily when it is not UTF-8 text (invalid bytes become U+FFFD).
    pub id: JobId,
    /// The stored bytes when `id` is not exactly what the row holds.
    pub foreign: Option<Vec<u8>>,
}

/// Reads a job id column (see [`StoredId`]).
pub(super) fn stored_id(r: &Row<'_>, idx: usize) -> rusqlite::Result<StoredId> {
    let bytes = match r.get_ref(idx)? {
        ValueRef::Text(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => {
                return Ok(StoredId {
                    id: JobId(text.to_owned()),
                    foreign: None,
                });
            }
            Err(_) => bytes,
        },
        ValueRef::Blob(bytes) => bytes,
        _ => {
            return Ok(StoredId {
                id: JobId(r.get(idx)?),
                foreign: None,
            });
        }
    };
    Ok(StoredId {
        id: JobId(String::from_utf8_lossy(bytes).into_owned()),
        foreign: Some(bytes.to_vec()),
    })
}

/// A job id exactly as its row stores it, bound back unchanged: how a statement that found
/// rows by other columns (a purge, a drop) then finds their events, whatever the id's type.
/// Read as a [`JobId`], an id that is not UTF-8 text would fail the statement (and with it every
/// purge that meets the row), or, read lossily, match other rows or none.
pub(super) enum RawId {
    Text(Vec<u8>),
    Blob(Vec<u8>),
    /// Not stored by the `TEXT` column's affinity, which turns numbers into text.
    Other(rusqlite::types::Value),
}

impl FromSql for RawId {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        use rusqlite::types::Value;
        Ok(match value {
            ValueRef::Text(bytes) => Self::Text(bytes.to_vec()),
            ValueRef::Blob(bytes) => Self::Blob(bytes.to_vec()),
            ValueRef::Null => Self::Other(Value::Null),
            ValueRef::Integer(i) => Self::Other(Value::Integer(i)),
            ValueRef::Real(r) => Self::Other(Value::Real(r)),
        })
    }
}

impl ToSql for RawId {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            // Bound as the stored bytes, even when they are not UTF-8.
            Self::Text(bytes) => ToSqlOutput::Borrowed(ValueRef::Text(bytes)),
            Self::Blob(bytes) => ToSqlOutput::Borrowed(ValueRef::Blob(bytes)),
            Self::Other(value) => ToSqlOutput::Borrowed(value.into()),
        })
    }
}

/// Reads `chain_id, chain_index[, chain_next]` starting at column `at`; `chain_next` is read
/// only when the statement returns it. Both ids are job ids, read lossily like a job's own
/// ([`stored_id`]): a link that is not UTF-8 text then leads to no step, instead of failing
/// every statement that returns the row, the fetch that would bury it among them.
pub(super) fn chain_from_columns(r: &Row<'_>, at: usize) -> rusqlite::Result<Option<ChainLink>> {
    let Some(id) = optional_id(r, at)? else {
        return Ok(None);
    };
    let next = if r.as_ref().column_count() > at + 2 {
        optional_id(r, at + 2)?
    } else {
        None
    };
    Ok(Some(ChainLink {
        id,
        index: to_u32(r.get(at + 1)?),
        next,
    }))
}

/// A job id column that may be NULL (see [`stored_id`]).
fn optional_id(r: &Row<'_>, idx: usize) -> rusqlite::Result<Option<JobId>> {
    match r.get_ref(idx)? {
        ValueRef::Null => Ok(None),
        _ => Ok(Some(stored_id(r, idx)?.id)),
    }
}

/// Decodes the job columns of `super::sql` (column 0, `seq`, is left to the caller). The id,
/// queue and kind are read lossily (see [`stored_id`], [`lossy_text`]): a fetch checks the id
/// and kind are exact before handing the job out (its queue is the one it asked for).
pub(super) fn job_from_row(r: &Row<'_>) -> rusqlite::Result<Job> {
    let state: String = r.get(6)?;
    Ok(Job {
        id: stored_id(r, 1)?.id,
        queue: lossy_text(r, 2)?,
        kind: lossy_text(r, 3)?,
        payload: json_column(r, 4)?.unwrap_or(Value::Null),
        priority: u8::try_from(r.get::<_, i64>(5)?).unwrap_or(u8::MAX),
        state: JobState::parse(&state).ok_or_else(|| conversion(6, bad_column(&state)))?,
        run_at: r.get(7)?,
        attempt: to_u32(r.get(8)?),
        max_retries: to_u32(r.get(9)?),
        timeout_ms: r
            .get::<_, Option<i64>>(10)?
            .map(|v| u64::try_from(v).unwrap_or(0)),
        interruptions: to_u32(r.get(11)?),
        interruption_streak: to_u32(r.get(12)?),
        lease_token: u64::try_from(r.get::<_, i64>(13)?).unwrap_or(0),
        lease_until: r.get(14)?,
        progress: u8::try_from(r.get::<_, i64>(15)?).unwrap_or(0),
        progress_message: r.get(16)?,
        result: json_column(r, 17)?,
        last_error: r.get(18)?,
        unique_key: r.get(19)?,
        created_at: r.get(20)?,
        started_at: r.get(21)?,
        finished_at: r.get(22)?,
        chain: chain_from_columns(r, 23)?,
        checkpoint: json_column(r, 26)?,
    })
}

/// Decodes the event columns of `super::sql`; the job's id, queue and kind lossily.
pub(super) fn event_from_row(r: &Row<'_>) -> rusqlite::Result<Event> {
    let kind_of_event: String = r.get(1)?;
    Ok(Event {
        id: r.get::<_, i64>(0)?.to_string(),
        kind_of_event: EventType::parse(&kind_of_event)
            .ok_or_else(|| conversion(1, bad_column(&kind_of_event)))?,
        job_id: stored_id(r, 2)?.id,
        queue: lossy_text(r, 3)?,
        kind: lossy_text(r, 4)?,
        at: r.get(5)?,
        attempt: to_u32(r.get(6)?),
        progress: r
            .get::<_, Option<i64>>(7)?
            .map(|p| u8::try_from(p).unwrap_or(0)),
        message: r.get(8)?,
        result: json_column(r, 9)?,
        error: r.get(10)?,
    })
}

fn json_column(r: &Row<'_>, idx: usize) -> rusqlite::Result<Option<Value>> {
    match r.get::<_, Option<String>>(idx)? {
        Some(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| conversion(idx, e)),
        None => Ok(None),
    }
}

fn conversion(idx: usize, e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
}

/// A stored value this version does not know (a newer `hopper` wrote it, or the file was edited).
#[derive(Debug, thiserror::Error)]
#[error("unexpected value {0:?} in the database")]
pub(super) struct BadColumn(String);

pub(super) fn bad_column(value: &str) -> BadColumn {
    BadColumn(value.to_owned())
}

// ---- Numbers ---------------------------------------------------------------------------------

pub(super) fn to_i64<T: TryInto<i64>>(v: T) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

pub(super) fn to_u32(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

/// A count SQLite returned, as Hopper reports it (a negative count cannot happen; it reads 0).
pub(super) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Lease tokens are `u64` in Hopper and `i64` in SQLite; they start at 0 and grow by one per
/// fetch, so the high bit is never reached.
pub(super) fn token_to_i64(token: u64) -> i64 {
    i64::try_from(token).unwrap_or(i64::MAX)
}

// ---- Times -----------------------------------------------------------------------------------

/// A time is bound as its integer milliseconds: the schema's `run_at`, `lease_until`, `at`...
/// columns are integers, compared and ordered in SQL.
impl ToSql for Timestamp {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_millis()))
    }
}

impl FromSql for Timestamp {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        i64::column_result(value).map(Timestamp::from_millis)
    }
}
