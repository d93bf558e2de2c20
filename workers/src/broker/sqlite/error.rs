//! How SQLite failures become [`BrokerError`]s.
//!
//! It owns [`Fail`], what every closure run on a connection fails with, and the one rule that
//! sorts SQLite errors: a busy or locked database (another process holds the write lock), a
//! full disk or a file that cannot be written is `Unavailable` (worth retrying once fixed),
//! anything else is `Backend`. It does not own the failures of a whole write batch, which the
//! writer thread reports (`super::writer::BatchFailure`, built on [`is_unavailable`]).
//! Opening the file waits only on a busy one ([`open_error`]). Everything here is private to
//! the broker so that no rusqlite type reaches a public signature.

use rusqlite::ErrorCode;

use super::rows::BadColumn;
use crate::error::BrokerError;

/// What a closure run on a connection fails with: SQLite, JSON, or a broker answer such as
/// `NotFound`.
pub(super) enum Fail {
    Sql(rusqlite::Error),
    Broker(BrokerError),
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Fail::Sql(e)
    }
}

impl From<BrokerError> for Fail {
    fn from(e: BrokerError) -> Self {
        Fail::Broker(e)
    }
}

impl From<serde_json::Error> for Fail {
    fn from(e: serde_json::Error) -> Self {
        Fail::Broker(BrokerError::backend(e))
    }
}

impl From<BadColumn> for Fail {
    fn from(e: BadColumn) -> Self {
        Fail::Broker(BrokerError::backend(e))
    }
}

impl Fail {
    pub fn into_broker(self) -> BrokerError {
        match self {
            Fail::Sql(e) => sql_error(e),
            Fail::Broker(e) => e,
        }
    }
}

/// SQLite gave up waiting for another connection's lock: worth retrying, not a broken broker.
pub(super) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// A failure the operator fixes and the caller should wait out, as it does a broker it cannot
/// reach: the database is busy, its disk is full, or it cannot be written (a read-only file or
/// directory). Answered 503 `broker_unavailable` with SQLite's reason, and retried by the
/// pool (a completion is kept until it can be written), never 500 "internal".
pub(super) fn is_unavailable(e: &rusqlite::Error) -> bool {
    is_busy(e) || is_unwritable(e)
}

/// The database takes no writes: its disk is full, or its file (or directory) cannot be
/// written. The broker is then not ready (`super::read::ready`) until a write goes through.
pub(super) fn is_unwritable(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DiskFull | ErrorCode::ReadOnly)
    )
}

/// A failure while opening the file: only a busy file is worth waiting for (another process
/// is switching it to WAL or migrating it). A full disk or a file that cannot be written is
/// refused at once, so that a node stops at start with SQLite's reason instead of waiting, as
/// for a broker that is down, for something only an operator can fix.
pub(super) fn open_error(e: rusqlite::Error) -> BrokerError {
    if is_busy(&e) {
        BrokerError::Unavailable(Box::new(e))
    } else {
        BrokerError::Backend(Box::new(e))
    }
}

pub(super) fn sql_error(e: rusqlite::Error) -> BrokerError {
    if is_unavailable(&e) {
        BrokerError::Unavailable(Box::new(e))
    } else {
        BrokerError::Backend(Box::new(e))
    }
}

/// The writer thread is gone (it panicked, or the broker is being dropped): nothing can be
/// written any more.
pub(super) fn writer_gone() -> BrokerError {
    BrokerError::Unavailable("the SQLite writer thread has stopped".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_is_unavailable() {
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert!(matches!(sql_error(busy), BrokerError::Unavailable(_)));
        for code in [rusqlite::ffi::SQLITE_FULL, rusqlite::ffi::SQLITE_READONLY] {
            let e = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
            assert!(
                matches!(sql_error(e), BrokerError::Unavailable(_)),
                "{code}"
            );
        }
        // While opening, only busy waits: a read-only file stops the node at start.
        let readonly = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY),
            None,
        );
        assert!(matches!(open_error(readonly), BrokerError::Backend(_)));
        let other = rusqlite::Error::QueryReturnedNoRows;
        assert!(matches!(sql_error(other), BrokerError::Backend(_)));
    }
}
