//! The checkpointer thread: copies the WAL back into the database file off the writer's path.
//!
//! Left to itself, SQLite checkpoints inside the `COMMIT` that takes the WAL past 1,000 pages,
//! on the writer thread: reading those pages back from the WAL, writing them into the database
//! file and, under `synchronous = FULL`, fsyncing it, while every command queued behind that
//! commit waits. Here a WAL hook on the writer's connection (which replaces SQLite's own
//! automatic checkpoint) only signals this thread, which runs a `PASSIVE` checkpoint on a
//! connection of its own; in WAL mode that copy runs alongside the writer's next commits.
//!
//! It owns that thread, its connection and the hook; it knows nothing of jobs. When the
//! writer's connection is dropped, the hook (and with it the signal's sender) goes too, and the
//! thread ends, closing its connection.

use std::ffi::c_int;
use std::path::Path;
use std::sync::mpsc;

use rusqlite::Connection;

use super::error::sql_error;
use super::open;
use super::sql;
use crate::broker::Durability;
use crate::error::{BrokerError, BrokerResult};

/// WAL pages after a commit that call for a checkpoint: SQLite's own default threshold.
const WAL_PAGES: c_int = 1000;

/// WAL pages beyond which the writer checkpoints itself, as SQLite would: a bound on the WAL's
/// growth should this thread fall behind (or be kept from running by a loaded machine).
const BACKSTOP_PAGES: c_int = 16 * WAL_PAGES;

/// Starts the checkpointer thread on its own connection to `path` and hooks `writer`'s commits
/// to it.
pub(super) fn start(
    path: &Path,
    durability: Durability,
    writer: &mut Connection,
) -> BrokerResult<()> {
    let conn = open::connect(path, durability).map_err(sql_error)?;
    // Capacity 1: a signal sent while one is pending adds nothing, as the next checkpoint
    // copies every page committed until it starts.
    let (signal, signals) = mpsc::sync_channel::<()>(1);
    std::thread::Builder::new()
        .name("hopper-sqlite-checkpointer".into())
        .spawn(move || run(&conn, &signals))
        .map_err(|e| BrokerError::Backend(Box::new(e)))?;
    writer
        .wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages: c_int| {
            if pages >= BACKSTOP_PAGES {
                // The commit is done whatever the checkpoint's outcome: an error returned
                // here would fail the statement that committed, so it is only logged.
                if let Err(e) = wal.checkpoint_v2(rusqlite::wal::CheckpointMode::PASSIVE) {
                    tracing::debug!(error = %e, "sqlite backstop checkpoint failed");
                }
            } else if pages >= WAL_PAGES {
                let _ = signal.try_send(());
            }
            Ok(())
        }))
        .map_err(sql_error)
}

/// The thread's loop: one `PASSIVE` checkpoint per signal, until the writer's hook is gone.
fn run(conn: &Connection, signals: &mpsc::Receiver<()>) {
    while signals.recv().is_ok() {
        // PASSIVE neither waits for readers nor blocks the writer; what it cannot copy now
        // (pages a reader still needs) the next signal's checkpoint copies.
        if let Err(e) = conn.query_row(sql::WAL_CHECKPOINT, [], |_| Ok(())) {
            tracing::debug!(error = %e, "sqlite checkpoint failed");
        }
    }
}
