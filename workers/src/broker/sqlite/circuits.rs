//! The circuit breakers of `notify.send`'s endpoints: a row in `circuits` per endpoint
//! (`workers/migrations/sqlite/0010_circuits.sql`), its probe time on the broker's clock.

use rusqlite::{OptionalExtension, params};

use super::SqliteBroker;
use super::sql;
use crate::broker::circuits::{Circuit, Stored};
use crate::error::BrokerResult;

pub(super) async fn circuits(broker: &SqliteBroker) -> BrokerResult<Vec<Circuit>> {
    broker
        .read(move |conn, now| {
            let now = now.as_millis();
            let mut stmt = conn.prepare_cached(sql::CIRCUITS)?;
            let rows = stmt.query_map([], |row| from_row(row, now))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
}

pub(super) async fn circuit(
    broker: &SqliteBroker,
    endpoint: &str,
) -> BrokerResult<Option<Circuit>> {
    let endpoint = endpoint.to_owned();
    broker
        .read(move |conn, now| {
            let now = now.as_millis();
            let mut stmt = conn.prepare_cached(sql::CIRCUIT)?;
            Ok(stmt
                .query_row([&endpoint], |row| from_row(row, now))
                .optional()?)
        })
        .await
}

/// A row of `sql::CIRCUITS` (or `sql::CIRCUIT`) as read at `now_ms`.
fn from_row(row: &rusqlite::Row<'_>, now_ms: i64) -> rusqlite::Result<Circuit> {
    let stored = Stored {
        failures: u32::try_from(row.get::<_, i64>(1)?).unwrap_or(u32::MAX),
        open_until: row.get(2)?,
        cooldown_ms: u64::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
        probing: row.get::<_, i64>(4)? != 0,
    };
    Ok(stored.into_circuit(row.get(0)?, now_ms))
}

pub(super) async fn save_circuit(broker: &SqliteBroker, circuit: &Circuit) -> BrokerResult<()> {
    let circuit = circuit.clone();
    broker
        .write(move |conn, now| {
            if !circuit.is_kept() {
                conn.prepare_cached(sql::DROP_CIRCUIT)?
                    .execute([&circuit.endpoint])?;
                return Ok(());
            }
            let s = Stored::from_circuit(&circuit, now.as_millis());
            conn.prepare_cached(sql::SAVE_CIRCUIT)?.execute(params![
                circuit.endpoint,
                s.failures,
                s.open_until,
                i64::try_from(s.cooldown_ms).unwrap_or(i64::MAX),
                s.probing,
            ])?;
            Ok(())
        })
        .await
}
