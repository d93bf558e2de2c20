//! The registry of worker nodes (`crate::nodes`): a row per node in `worker_nodes`
//! (`workers/migrations/sqlite/0007_worker_nodes.sql`), its entry stored as JSON, and the
//! count of ready jobs ahead of a priority that "why is my job not running" asks for.
//!
//! It owns only storing and reading entries; what goes in them is the pool's business.

use rusqlite::params;

use super::SqliteBroker;
use super::error::Fail;
use super::rows::{to_i64, to_u64};
use super::sql;
use crate::error::BrokerResult;
use crate::nodes::{NODE_TTL, WorkerNode};
use crate::time::Timestamp;

pub(super) async fn register_node(broker: &SqliteBroker, node: &WorkerNode) -> BrokerResult<()> {
    let mut node = node.clone();
    broker
        .write(move |conn, now| {
            node.last_seen = now;
            let json = serde_json::to_string(&node)?;
            conn.prepare_cached(sql::NODES_EXPIRE)?
                .execute([now.saturating_sub(NODE_TTL).as_millis()])?;
            conn.prepare_cached(sql::NODE_UPSERT)?.execute(params![
                node.id,
                now.as_millis(),
                json
            ])?;
            Ok(())
        })
        .await
}

pub(super) async fn deregister_node(broker: &SqliteBroker, id: &str) -> BrokerResult<()> {
    let id = id.to_owned();
    broker
        .write(move |conn, _| {
            conn.prepare_cached(sql::NODE_DELETE)?.execute([id])?;
            Ok(())
        })
        .await
}

pub(super) async fn nodes(broker: &SqliteBroker) -> BrokerResult<Vec<WorkerNode>> {
    broker
        .read(|conn, now| {
            let since = now.saturating_sub(NODE_TTL).as_millis();
            let mut stmt = conn.prepare_cached(sql::NODES)?;
            let rows = stmt.query_map([since], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })?;
            let mut nodes = Vec::new();
            for row in rows {
                let (seen, json) = row?;
                let mut node: WorkerNode = serde_json::from_str(&json).map_err(Fail::from)?;
                node.last_seen = Timestamp::from_millis(seen);
                nodes.push(node);
            }
            Ok(nodes)
        })
        .await
}

pub(super) async fn ready_ahead(
    broker: &SqliteBroker,
    queue: &str,
    priority: u8,
) -> BrokerResult<u64> {
    crate::job::check_queue(queue)?;
    let queue = queue.to_owned();
    broker
        .read(move |conn, _| {
            let n: i64 = conn
                .prepare_cached(sql::READY_AHEAD)?
                .query_row(params![queue, to_i64(priority)], |r| r.get(0))?;
            Ok(to_u64(n))
        })
        .await
}
