//! Redis Cluster: the `redis-cluster://` URLs, the cluster connection, and the two things a
//! cluster does not take as a standalone Redis does: pipelines whose commands hash to several
//! slots, and blocking commands, which need a connection of their own to the node of a slot.
//!
//! The broker's keys are Cluster-ready already (see `keys.rs`: one hash tag per queue, and
//! every script touches only `KEYS[1] .. suffix`, so its slot is the one `FCALL` or `EVALSHA`
//! is routed by); this file only carries commands to the right node. It owns:
//!
//! - parsing `redis-cluster://[user:password@]host:port[,host:port...]` (`rediss-cluster://`
//!   for TLS) into the seed nodes;
//! - [`send_pipe`]: a pipeline split by slot. redis' cluster client sends a pipeline to the
//!   node of its first key and refuses one that spans slots, so the commands are grouped per
//!   slot and each group is one pipeline. The broker's pipelines order some writes to the
//!   global indexes (keys without a hash tag) before or after a queue's script on purpose
//!   (`keys.rs`, `lifecycle.rs`): the commands are cut into *stages* wherever they switch
//!   between global and per-queue keys, and the stages run one after the other, the groups of
//!   one stage at once. A group that meets `NOSCRIPT` or a missing function (a failover, a resharding onto a
//!   node that never loaded the code) loads it again and runs again alone, so a script that did
//!   run elsewhere is not run twice;
//! - [`Nodes`]: which node serves a slot (`CLUSTER SLOTS`, read again after a `MOVED`), for
//!   the dedicated connections of `BLPOP` and `XREAD BLOCK` (`conn.rs`), which block one slot
//!   each.
//!
//! It does not know what the commands mean; the single-node path is `conn.rs`'s alone.

use std::sync::Mutex;

use futures::future::try_join_all;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Client, Cmd, RedisError, RedisResult, Value};

use super::scripts::is_noscript;
use crate::error::{BrokerError, BrokerResult};

/// Whether `url` names a Redis Cluster.
pub(super) fn is_cluster_url(url: &str) -> bool {
    url.starts_with("redis-cluster://") || url.starts_with("rediss-cluster://")
}

/// A parsed `redis-cluster://` URL.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ClusterUrl {
    /// `redis` or `rediss`.
    scheme: &'static str,
    /// `user:password@` or empty.
    userinfo: String,
    /// `host:port` of each seed node.
    seeds: Vec<String>,
}

impl ClusterUrl {
    /// Parses `redis-cluster://[user:password@]host:port[,host:port...]` (or
    /// `rediss-cluster://`, TLS); `shown` is the URL without credentials, for messages.
    pub(super) fn parse(url: &str, shown: &str) -> BrokerResult<Self> {
        let bad = |why: &str| {
            BrokerError::Config(format!(
                "{shown}: not a usable Redis Cluster URL ({why}); expected \
                 redis-cluster://[user:password@]HOST:PORT[,HOST:PORT...]"
            ))
        };
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis-cluster://") {
            ("redis", rest)
        } else if let Some(rest) = url.strip_prefix("rediss-cluster://") {
            ("rediss", rest)
        } else {
            return Err(bad("unknown scheme"));
        };
        let (userinfo, hosts) = match rest.rfind('@') {
            Some(at) => (format!("{}@", &rest[..at]), &rest[at + 1..]),
            None => (String::new(), rest),
        };
        // A cluster has one database: a trailing `/` or `/0` is allowed, nothing else.
        let hosts = match hosts.split_once('/') {
            Some((h, "" | "0")) => h,
            Some(_) => return Err(bad("a cluster has only database 0")),
            None => hosts,
        };
        if hosts.contains('?') {
            return Err(bad("no query options are supported"));
        }
        let mut seeds = Vec::new();
        for node in hosts.split(',') {
            let Some((host, port)) = node.rsplit_once(':') else {
                return Err(bad(&format!("node {node:?} has no port")));
            };
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad(&format!("node {node:?} is not HOST:PORT")));
            }
            seeds.push(node.to_owned());
        }
        Ok(Self {
            scheme,
            userinfo,
            seeds,
        })
    }

    /// The URL of one node, `redis[s]://[user:password@]host:port`.
    fn node_url(&self, node: &str) -> String {
        format!("{}://{}{node}", self.scheme, self.userinfo)
    }
}

/// Opens the cluster client and its shared connection (which routes each command by its key
/// and follows `MOVED`), and the map of slots for the blocking connections.
pub(super) async fn open(
    url: &ClusterUrl,
    shown: &str,
    connection_timeout: std::time::Duration,
    response_timeout: std::time::Duration,
) -> BrokerResult<(ClusterConnection, Nodes)> {
    let seeds: Vec<String> = url.seeds.iter().map(|s| url.node_url(s)).collect();
    let client = ClusterClientBuilder::new(seeds)
        .connection_timeout(connection_timeout)
        .response_timeout(response_timeout)
        .retries(4)
        .build()
        .map_err(|e| {
            BrokerError::Config(format!("{shown}: not a usable Redis Cluster URL: {e}"))
        })?;
    let conn = client.get_async_connection().await.map_err(|e| {
        super::conn::not_connected(&e, &format!("cannot connect to Redis Cluster at {shown}"))
    })?;
    let nodes = Nodes {
        url: ClusterUrl {
            scheme: url.scheme,
            userinfo: url.userinfo.clone(),
            seeds: url.seeds.clone(),
        },
        slots: Mutex::new(Vec::new()),
    };
    Ok((conn, nodes))
}

/// Which node serves which slots, for the blocking connections: read with `CLUSTER SLOTS`
/// when first needed and after a `MOVED`.
#[derive(Debug)]
pub(super) struct Nodes {
    url: ClusterUrl,
    /// (first slot, last slot, `host:port` of the primary), sorted by first slot.
    slots: Mutex<Vec<(u16, u16, String)>>,
}

impl Nodes {
    /// The node (`host:port`) that serves the slot of `key`, and a client for it.
    pub(super) async fn client_for(
        &self,
        conn: &ClusterConnection,
        key: &str,
    ) -> RedisResult<(String, Client)> {
        let slot = key_slot_number(key);
        let known = self.lookup(slot);
        let node = match known {
            Some(n) => n,
            None => {
                self.refresh(conn).await?;
                self.lookup(slot).ok_or_else(|| {
                    RedisError::from((
                        redis::ErrorKind::ClusterConnectionNotFound,
                        "no node serves the slot",
                        format!("slot {slot}"),
                    ))
                })?
            }
        };
        let client = Client::open(self.url.node_url(&node))?;
        Ok((node, client))
    }

    fn lookup(&self, slot: u16) -> Option<String> {
        let map = self.slots.lock().ok()?;
        map.iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .map(|(_, _, node)| node.clone())
    }

    /// Forgets the map: the next blocking wait reads it again (after a `MOVED`).
    pub(super) fn forget(&self) {
        if let Ok(mut map) = self.slots.lock() {
            map.clear();
        }
    }

    async fn refresh(&self, conn: &ClusterConnection) -> RedisResult<()> {
        let mut conn = conn.clone();
        let reply: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn)
            .await?;
        let mut map = Vec::new();
        if let Value::Array(ranges) = reply {
            for range in ranges {
                let Value::Array(parts) = range else { continue };
                let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(primary))) =
                    (parts.first(), parts.get(1), parts.get(2))
                else {
                    continue;
                };
                let (Some(host), Some(Value::Int(port))) = (primary.first(), primary.get(1)) else {
                    continue;
                };
                let host = match host {
                    Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                    Value::SimpleString(s) => s.clone(),
                    _ => continue,
                };
                let (Ok(first), Ok(last)) = (u16::try_from(*first), u16::try_from(*last)) else {
                    continue;
                };
                map.push((first, last, format!("{host}:{port}")));
            }
        }
        map.sort();
        if let Ok(mut slots) = self.slots.lock() {
            *slots = map;
        }
        Ok(())
    }
}

/// The slot number of `key` (CRC16 of its hash tag, mod 16384), as `CLUSTER SLOTS` counts
/// (the redis crate computes it too, but does not hand the number out).
pub(super) fn key_slot_number(key: &str) -> u16 {
    let bytes = key.as_bytes();
    // The hash tag: between the first `{` and the next `}`, when not empty.
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16_xmodem(tagged.unwrap_or(bytes)) % 16384
}

/// CRC16-CCITT (XMODEM), the hash of Redis Cluster's key slots.
fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The key a command is routed by: the first key of `EVALSHA` or `FCALL`, the first argument of the
/// others the broker pipelines; none for `TIME` and other keyless commands.
fn routing_key(cmd: &Cmd) -> Option<Vec<u8>> {
    let mut args = cmd.args_iter().map(|a| match a {
        redis::Arg::Simple(b) => Some(b),
        _ => None,
    });
    let name = args.next().flatten()?;
    let at = match name.to_ascii_uppercase().as_slice() {
        b"EVALSHA" | b"EVAL" | b"FCALL" => 2,
        b"TIME" | b"PING" => return None,
        _ => 0,
    };
    args.nth(at).flatten().map(<[u8]>::to_vec)
}

/// What a command's key says about its order in a pipeline (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// A key with a hash tag: a queue's.
    Queue,
    /// A key without one: a global index.
    Global,
}

/// Runs `pipe` on a cluster, split by slot (see the module docs), and answers what a
/// standalone Redis would: the replies of the commands not ignored, in order.
pub(super) async fn send_pipe(
    conn: &ClusterConnection,
    pipe: &super::conn::Pipe,
) -> RedisResult<Value> {
    let cmds: Vec<&Cmd> = pipe.commands().collect();
    let mut replies: Vec<Option<Value>> = vec![None; cmds.len()];
    // Stages of (slot or none, command indices).
    let mut stages: Vec<Vec<(Option<u16>, Vec<usize>)>> = Vec::new();
    let mut scope: Option<Scope> = None;
    for (i, cmd) in cmds.iter().enumerate() {
        let key = routing_key(cmd);
        let (this_scope, slot) = match &key {
            Some(k) if k.contains(&b'{') => (Some(Scope::Queue), Some(slot_of(k))),
            Some(k) => (Some(Scope::Global), Some(slot_of(k))),
            None => (None, None),
        };
        if stages.is_empty() || (this_scope.is_some() && scope.is_some() && this_scope != scope) {
            stages.push(Vec::new());
        }
        if this_scope.is_some() {
            scope = this_scope;
        }
        let Some(stage) = stages.last_mut() else {
            continue;
        };
        match stage.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, idx)) => idx.push(i),
            None => stage.push((slot, vec![i])),
        }
    }
    for stage in stages {
        let done = try_join_all(stage.iter().map(|(_, idx)| send_group(conn, &cmds, idx))).await?;
        for ((_, idx), values) in stage.iter().zip(done) {
            for (&i, v) in idx.iter().zip(values) {
                replies[i] = Some(v);
            }
        }
    }
    let mut out = Vec::with_capacity(replies.len());
    for (i, v) in replies.into_iter().enumerate() {
        let v = v.unwrap_or(Value::Nil);
        if let Value::ServerError(e) = v {
            return Err(e.into());
        }
        if !pipe.is_ignored(i) {
            out.push(v);
        }
    }
    Ok(Value::Array(out))
}

fn slot_of(key: &[u8]) -> u16 {
    key_slot_number(&String::from_utf8_lossy(key))
}

/// One slot's commands as one pipeline; loads the code again and runs them again once if the
/// node had lost it (the scripts did not run there, and the other commands are idempotent
/// index writes and reads).
async fn send_group(
    conn: &ClusterConnection,
    cmds: &[&Cmd],
    idx: &[usize],
) -> RedisResult<Vec<Value>> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for &i in idx {
        pipe.add_command(cmds[i].clone());
    }
    let mut c = conn.clone();
    let values: Vec<Value> = pipe.query_async(&mut c).await?;
    let lost = values.iter().any(|v| match v {
        Value::ServerError(e) => is_noscript(&RedisError::from(e.clone())),
        _ => false,
    });
    if !lost {
        return Ok(values);
    }
    // The group's calls say which way the broker calls its code.
    let functions = idx.iter().any(|&i| {
        cmds[i]
            .args_iter()
            .next()
            .is_some_and(|a| matches!(a, redis::Arg::Simple(b) if b.eq_ignore_ascii_case(b"FCALL")))
    });
    load_scripts(conn, functions).await?;
    pipe.query_async(&mut c).await
}

/// Loads the function library (`functions`) or every script on every primary: the cluster
/// client sends `FUNCTION LOAD` and `SCRIPT LOAD` to all of them, each as a command of its
/// own (a pipeline would reach one node only).
pub(super) async fn load_scripts(conn: &ClusterConnection, functions: bool) -> RedisResult<()> {
    if functions {
        let mut c = conn.clone();
        return redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(&super::scripts::LIBRARY.code)
            .query_async::<Value>(&mut c)
            .await
            .map(drop);
    }
    let loads = super::scripts::SCRIPTS.all().into_iter().map(|s| {
        let mut c = conn.clone();
        async move {
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(s.code())
                .query_async::<Value>(&mut c)
                .await
        }
    });
    try_join_all(loads).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(key_slot_number("foo"), 12182);
        assert_eq!(key_slot_number("{user1000}.following"), 3443);
        assert_eq!(key_slot_number("{user1000}.followers"), 3443);
        assert_eq!(key_slot_number("foo{}{bar}"), 8363);
        assert_eq!(key_slot_number("foo{{bar}}zap"), 4015);
        assert_eq!(key_slot_number("{hopper:default}:signal"), 12798);
    }

    #[test]
    fn urls_parse() {
        let u = ClusterUrl::parse("redis-cluster://a:1,b:2", "x").expect("two nodes");
        assert_eq!(u.seeds, vec!["a:1", "b:2"]);
        assert_eq!(u.node_url("a:1"), "redis://a:1");
        let u = ClusterUrl::parse("rediss-cluster://u:p@a:1/", "x").expect("tls");
        assert_eq!(u.node_url("c:3"), "rediss://u:p@c:3");
        for bad in [
            "redis-cluster://",
            "redis-cluster://a",
            "redis-cluster://a:x",
            "redis-cluster://a:1,",
            "redis-cluster://a:1/3",
            "redis-cluster://:1",
        ] {
            assert!(
                matches!(ClusterUrl::parse(bad, bad), Err(BrokerError::Config(_))),
                "{bad}"
            );
        }
    }
}
