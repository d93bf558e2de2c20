//! Named cursors in the event log: a row in `cursors` per name
//! (`workers/migrations/sqlite/0006_cursors.sql`).
//!
//! It owns storing and reading them; what a cursor means is its reader's business (the
//! shell's job-event relay).

use rusqlite::{OptionalExtension, params};

use super::SqliteBroker;
use super::sql;
use crate::error::BrokerResult;

pub(super) async fn cursor(broker: &SqliteBroker, name: &str) -> BrokerResult<Option<String>> {
    let name = name.to_owned();
    broker
        .read(move |conn, _| {
            Ok(conn
                .prepare_cached(sql::CURSOR)?
                .query_row([name], |row| row.get::<_, String>(0))
                .optional()?)
        })
        .await
}

pub(super) async fn save_cursor(
    broker: &SqliteBroker,
    name: &str,
    value: &str,
) -> BrokerResult<()> {
    let (name, value) = (name.to_owned(), value.to_owned());
    broker
        .write(move |conn, now| {
            conn.prepare_cached(sql::SAVE_CURSOR)?
                .execute(params![name, value, now])?;
            Ok(())
        })
        .await
}

pub(super) async fn advance_cursor(
    broker: &SqliteBroker,
    name: &str,
    value: i64,
) -> BrokerResult<()> {
    let name = name.to_owned();
    // Read and written inside the writer's `BEGIN IMMEDIATE` transaction: no other process
    // writes the file between the two.
    broker
        .write(move |conn, now| {
            let stored: Option<String> = conn
                .prepare_cached(sql::CURSOR)?
                .query_row([&name], |row| row.get(0))
                .optional()?;
            if stored
                .as_deref()
                .and_then(crate::broker::cursor_number)
                .is_some_and(|s| s >= value)
            {
                return Ok(());
            }
            conn.prepare_cached(sql::SAVE_CURSOR)?.execute(params![
                name,
                value.to_string(),
                now
            ])?;
            Ok(())
        })
        .await
}
