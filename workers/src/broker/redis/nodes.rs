//! The registry of worker nodes (`crate::nodes`) and the count of ready jobs ahead of a
//! priority.
//!
//! Two keys, both in the hash tag `{<prefix>}` (never a queue's: a queue's tag is
//! `{<prefix>:<queue>}`), so that every command on them works in one Cluster slot:
//! `{<prefix>}:nodes`, a hash id -> the node's entry as JSON, and `{<prefix>}:seen`, a zset id
//! -> when it last refreshed its entry (ms, Redis' clock). A registration drops the entries
//! silent for longer than [`NODE_TTL`]; a listing leaves them out.
//!
//! It owns only storing and reading entries; what goes in them is the pool's business.

use std::collections::HashMap;

use redis::{FromRedisValue, Value};

use super::RedisBroker;
use super::conn::Pipe;
use super::decode::corrupt;
use super::keys::check_queue;
use crate::error::BrokerResult;
use crate::nodes::{NODE_TTL, WorkerNode};
use crate::time::Timestamp;

impl RedisBroker {
    fn nodes_key(&self) -> String {
        format!("{{{}}}:nodes", self.prefix)
    }

    fn seen_key(&self) -> String {
        format!("{{{}}}:seen", self.prefix)
    }
}

pub(super) async fn register_node(broker: &RedisBroker, node: &WorkerNode) -> BrokerResult<()> {
    let now = broker.now().await?;
    let mut node = node.clone();
    node.last_seen = now;
    let json = serde_json::to_string(&node).map_err(crate::error::BrokerError::backend)?;
    let expired = now.saturating_sub(NODE_TTL).as_millis();
    let gone: Vec<String> = broker
        .query(
            redis::cmd("ZRANGEBYSCORE")
                .arg(broker.seen_key())
                .arg("-inf")
                .arg(format!("({expired}")),
        )
        .await?;
    let mut pipe = Pipe::new();
    if !gone.is_empty() {
        pipe.cmd("HDEL").arg(broker.nodes_key()).arg(&gone).ignore();
        pipe.cmd("ZREM").arg(broker.seen_key()).arg(&gone).ignore();
    }
    pipe.cmd("HSET")
        .arg(broker.nodes_key())
        .arg(&node.id)
        .arg(json)
        .ignore();
    pipe.cmd("ZADD")
        .arg(broker.seen_key())
        .arg(now.as_millis())
        .arg(&node.id)
        .ignore();
    broker.query_pipe::<()>(&pipe).await
}

pub(super) async fn deregister_node(broker: &RedisBroker, id: &str) -> BrokerResult<()> {
    let mut pipe = Pipe::new();
    pipe.cmd("HDEL").arg(broker.nodes_key()).arg(id).ignore();
    pipe.cmd("ZREM").arg(broker.seen_key()).arg(id).ignore();
    broker.query_pipe::<()>(&pipe).await
}

pub(super) async fn nodes(broker: &RedisBroker) -> BrokerResult<Vec<WorkerNode>> {
    let since = broker.now().await?.saturating_sub(NODE_TTL).as_millis();
    let seen: Vec<(String, i64)> = broker
        .query(
            redis::cmd("ZRANGEBYSCORE")
                .arg(broker.seen_key())
                .arg(since)
                .arg("+inf")
                .arg("WITHSCORES"),
        )
        .await?;
    if seen.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = seen.iter().map(|(id, _)| id.as_str()).collect();
    let entries: Vec<Option<String>> = broker
        .query(redis::cmd("HMGET").arg(broker.nodes_key()).arg(&ids))
        .await?;
    let mut nodes = Vec::with_capacity(seen.len());
    for ((id, at), entry) in seen.iter().zip(entries) {
        // Deregistered between the two reads.
        let Some(json) = entry else { continue };
        let mut node: WorkerNode =
            serde_json::from_str(&json).map_err(|e| corrupt(format!("worker node {id}: {e}")))?;
        node.last_seen = Timestamp::from_millis(*at);
        nodes.push(node);
    }
    Ok(nodes)
}

pub(super) async fn ready_ahead(
    broker: &RedisBroker,
    queue: &str,
    priority: u8,
) -> BrokerResult<u64> {
    check_queue(queue)?;
    let base = broker.base(queue);
    let mut pipe = Pipe::new();
    pipe.cmd("HGETALL").arg(format!("{base}counts"));
    pipe.cmd("ZCOUNT")
        .arg(format!("{base}queued"))
        .arg("-inf")
        .arg(priority);
    for p in 0..=priority {
        pipe.cmd("LLEN").arg(format!("{base}lane:{p}"));
    }
    let replies: Vec<Value> = broker.query_pipe(&pipe).await?;
    let counts: HashMap<String, i64> = replies
        .first()
        .map(HashMap::from_redis_value_ref)
        .transpose()
        .map_err(|e| corrupt(format!("counts of {queue}: {e}")))?
        .unwrap_or_default();
    let queued = u64::try_from(counts.get("queued").copied().unwrap_or(0)).unwrap_or(0);
    let mut ahead = 0u64;
    for reply in replies.iter().skip(1) {
        let n = i64::from_redis_value_ref(reply)
            .map_err(|e| corrupt(format!("ready jobs of {queue}: {e}")))?;
        ahead += u64::try_from(n).unwrap_or(0);
    }
    // Lanes keep the entries of jobs cancelled while queued until a fetch skips them.
    Ok(ahead.min(queued))
}
