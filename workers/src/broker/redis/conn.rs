//! The connections to Redis and what their failures mean.
//!
//! This file owns opening the client (TLS for `rediss://`, timeouts, the reconnect backoff of
//! the shared [`ConnectionManager`], the refusal of an evicting Redis), running one command or
//! pipeline on it, the few dedicated connections kept for `BLPOP` and `XREAD BLOCK` (which would stall every
//! command queued behind it on the shared multiplexed connection), and the translation of a
//! [`RedisError`] into a [`BrokerError`], with one warning every few seconds while Redis is
//! unreachable rather than one per failed call. It does not know what it sends: keys are
//! `keys.rs`'s, scripts `scripts.rs`'s, and replies are read by the caller.
//!
//! A Redis Cluster (`redis-cluster://`) is behind the same calls: [`Shared`] is either
//! connection, a [`Pipe`] is split by slot on a cluster and a blocking wait blocks once per
//! slot, each on a connection to that slot's node (how, is `cluster.rs`'s).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use std::collections::HashMap;

use futures::future::{FutureExt, select_all};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Client, Cmd, FromRedisValue, Pipeline, RedisError, RedisResult,
    ToRedisArgs, Value,
};

use super::RedisBroker;
use super::cluster::{self, ClusterUrl, Nodes};
use super::decode::corrupt;
use super::scripts::is_noscript;
use crate::error::{BrokerError, BrokerResult};

/// How long one command may take before it fails (the redis crate's 500 ms default is fatal
/// under load: a large batch times out although it was applied).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening a connection may take.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// Extra time a `BLPOP` reply may take beyond its own timeout.
const BLOCK_SLACK: Duration = Duration::from_secs(5);
/// Idle blocking connections kept for `wait_for_work`.
const MAX_IDLE_BLOCKING: usize = 8;
/// Warn at most this often while Redis is unreachable.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Tracks whether Redis answers, so that an outage is one clear warning every few seconds
/// rather than one per failed call, and its end is noted.
#[derive(Debug, Default)]
pub(super) struct Health {
    down: AtomicBool,
    last_warn: Mutex<Option<Instant>>,
}

impl Health {
    fn failed(&self, url: &str, e: &RedisError) {
        self.down.store(true, Ordering::Relaxed);
        let Ok(mut last) = self.last_warn.lock() else {
            return;
        };
        if last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(redis = %url, error = %e, "Redis is unreachable; reconnecting with backoff");
        }
    }

    fn ok(&self, url: &str) {
        if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::Relaxed) {
            if let Ok(mut last) = self.last_warn.lock() {
                *last = None;
            }
            tracing::info!(redis = %url, "Redis is reachable again");
        }
    }
}

/// Whether `e` says Redis cannot serve right now (and the call may be tried again): no
/// connection, or a server that refuses every command for a while: a cluster that lost a
/// shard (`CLUSTERDOWN`, answered for ~20 s after the shard is back), a slot being moved
/// (`TRYAGAIN`), a replica cut off from its primary (`MASTERDOWN`), a Redis loading its data
/// (`LOADING`). Those were answered as 500s, a failure of Hopper's own.
fn is_unavailable(e: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::ClusterDown
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::BusyLoading
            )
        )
}

/// A first connection that failed: [`BrokerError::Unavailable`] when trying again may work (a
/// server down, unreachable, loading), [`BrokerError::Config`] when it cannot (a refused
/// password, a server that answers otherwise than Redis), so that a command waiting for its
/// broker does not wait for ever on a setting.
pub(super) fn not_connected(e: &RedisError, what: &str) -> BrokerError {
    if is_unavailable(e) {
        BrokerError::Unavailable(format!("{what}: {e}").into())
    } else {
        BrokerError::Config(format!("{what}: {e}"))
    }
}

pub(super) fn poisoned() -> BrokerError {
    corrupt("a lock of the Redis broker was poisoned by a panic")
}

/// The shared connection every non-blocking command goes through: to one Redis, or to a
/// cluster (which routes each command to the node of its key).
#[derive(Clone)]
pub(super) enum Shared {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Where the dedicated connections of blocking waits go: the one Redis, or the node that
/// serves the slot waited on.
pub(super) enum Blocking {
    Single(Client),
    Cluster(Nodes),
}

/// A pipeline as the broker builds it: redis' [`Pipeline`], and which of its commands are
/// ignored (which the redis crate keeps to itself, and a cluster's split needs).
#[derive(Default)]
pub(super) struct Pipe {
    pipe: Pipeline,
    ignored: Vec<bool>,
}

impl Pipe {
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// Starts a command; [`Self::arg`] adds to it.
    pub(super) fn cmd(&mut self, name: &str) -> &mut Self {
        self.pipe.cmd(name);
        self.ignored.push(false);
        self
    }

    pub(super) fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        self.pipe.arg(arg);
        self
    }

    pub(super) fn add_command(&mut self, cmd: Cmd) -> &mut Self {
        self.pipe.add_command(cmd);
        self.ignored.push(false);
        self
    }

    /// Sends the commands as one transaction (`MULTI` … `EXEC`): no other client's command
    /// runs between them. One Redis only: a cluster's split runs each slot's part alone.
    pub(super) fn atomic(&mut self) -> &mut Self {
        self.pipe.atomic();
        self
    }

    /// Leaves the last command's reply out of the answer.
    pub(super) fn ignore(&mut self) -> &mut Self {
        self.pipe.ignore();
        if let Some(last) = self.ignored.last_mut() {
            *last = true;
        }
        self
    }

    pub(super) fn commands(&self) -> impl Iterator<Item = &Cmd> {
        self.pipe.cmd_iter()
    }

    pub(super) fn is_ignored(&self, i: usize) -> bool {
        self.ignored.get(i).copied().unwrap_or(false)
    }
}

/// Opens the client for `url` (`redis://`, `rediss://`, `redis-cluster://` or
/// `rediss-cluster://`) and its shared connection, and checks that Redis does not evict;
/// `shown` is the URL without credentials, for messages.
pub(super) async fn open(url: &str, shown: &str) -> BrokerResult<(Blocking, Shared)> {
    if url.starts_with("rediss") {
        // rustls needs one process-wide crypto provider; ring is the one built in. An
        // error means one is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    if cluster::is_cluster_url(url) {
        let parsed = ClusterUrl::parse(url, shown)?;
        let (mut conn, nodes) =
            cluster::open(&parsed, shown, CONNECTION_TIMEOUT, RESPONSE_TIMEOUT).await?;
        check_no_eviction(&mut conn, shown).await?;
        return Ok((Blocking::Cluster(nodes), Shared::Cluster(conn)));
    }
    let client = Client::open(url)
        .map_err(|e| BrokerError::Config(format!("{shown}: not a usable Redis URL: {e}")))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECTION_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(4)
        .set_exponent_base(2.0)
        .set_min_delay(Duration::from_millis(100))
        .set_max_delay(Duration::from_secs(5));
    let mut conn = ConnectionManager::new_with_config(client.clone(), config)
        .await
        .map_err(|e| not_connected(&e, &format!("cannot connect to Redis at {shown}")))?;
    check_no_eviction(&mut conn, shown).await?;
    check_not_a_cluster(&mut conn, shown).await?;
    Ok((Blocking::Single(client), Shared::Single(conn)))
}

/// Refuses a node of a Redis Cluster named by a plain `redis://` URL: every script there
/// takes the event clock as a second key, and the event log is read in one `MULTI` over
/// several queues' streams, which a cluster node refuses (`CROSSSLOT`) as keys of different
/// slots; with `redis-cluster://` the broker keeps each call to one slot. A Redis that does
/// not answer `INFO` is taken as it is.
async fn check_not_a_cluster(
    conn: &mut impl redis::aio::ConnectionLike,
    shown: &str,
) -> BrokerResult<()> {
    let info: Result<String, RedisError> =
        redis::cmd("INFO").arg("cluster").query_async(conn).await;
    match info {
        Ok(info) if info.lines().any(|l| l.trim() == "cluster_enabled:1") => {
            Err(BrokerError::Config(format!(
                "{shown} is a node of a Redis Cluster: name the cluster with \
                 redis-cluster://HOST:PORT[,HOST:PORT...] (or rediss-cluster://) instead"
            )))
        }
        Err(e) if is_unavailable(&e) => Err(not_connected(
            &e,
            &format!("cannot talk to Redis at {shown}"),
        )),
        _ => Ok(()),
    }
}

/// Refuses a Redis whose `maxmemory-policy` is not `noeviction`: an evicting Redis drops jobs
/// silently. On a cluster, the node asked is any one of them.
async fn check_no_eviction(
    conn: &mut impl redis::aio::ConnectionLike,
    shown: &str,
) -> BrokerResult<()> {
    let policy: Result<Vec<String>, RedisError> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(conn)
        .await;
    match policy {
        Ok(v) => match v.get(1) {
            Some(p) if p != "noeviction" => {
                return Err(BrokerError::Config(format!(
                    "Redis at {shown} has maxmemory-policy {p}; Hopper needs noeviction, \
                     because an evicting Redis silently loses jobs (set \
                     `maxmemory-policy noeviction` in redis.conf)"
                )));
            }
            _ => {}
        },
        Err(e) if is_unavailable(&e) => {
            return Err(BrokerError::Unavailable(
                format!("cannot talk to Redis at {shown}: {e}").into(),
            ));
        }
        // Managed Redis services often disable CONFIG: not fatal, but worth saying.
        Err(e) => tracing::warn!(
            redis = %shown,
            error = %e,
            "cannot read maxmemory-policy; make sure it is noeviction, or jobs may be evicted"
        ),
    }
    Ok(())
}

/// What one round-trip sends: a command or a pipeline.
#[derive(Clone, Copy)]
enum Request<'a> {
    One(&'a Cmd),
    Pipe(&'a Pipe),
}

impl Request<'_> {
    async fn send<T: FromRedisValue>(self, conn: &mut Shared) -> RedisResult<T> {
        match (self, conn) {
            (Self::One(cmd), Shared::Single(c)) => cmd.query_async(c).await,
            (Self::One(cmd), Shared::Cluster(c)) => cmd.query_async(c).await,
            (Self::Pipe(pipe), Shared::Single(c)) => pipe.pipe.query_async(c).await,
            (Self::Pipe(pipe), Shared::Cluster(c)) => {
                let v = cluster::send_pipe(c, pipe).await?;
                Ok(T::from_redis_value(v)?)
            }
        }
    }
}

impl RedisBroker {
    /// A failed call as the broker reports it; an unreachable Redis is also logged (see
    /// [`Health`]).
    pub(super) fn err(&self, e: RedisError) -> BrokerError {
        if is_unavailable(&e) {
            self.health.failed(&self.url, &e);
            BrokerError::Unavailable(Box::new(e))
        } else {
            BrokerError::backend(e)
        }
    }

    /// A call's result, noting that Redis answers when it did.
    fn settle<T>(&self, res: RedisResult<T>) -> BrokerResult<T> {
        match res {
            Ok(v) => {
                self.health.ok(&self.url);
                Ok(v)
            }
            Err(e) => Err(self.err(e)),
        }
    }

    /// Runs one command; reloads the scripts once if Redis lost them (a restart, SCRIPT FLUSH).
    /// Whether this broker is on a Redis Cluster.
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self.conn, Shared::Cluster(_))
    }

    pub(super) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> BrokerResult<T> {
        self.send(Request::One(cmd)).await
    }

    /// Runs a pipeline in one round-trip; like [`Self::query`] for lost scripts. Pipelines that
    /// are retried hold only idempotent index writes besides their scripts, which did not run.
    pub(super) async fn query_pipe<T: FromRedisValue>(&self, pipe: &Pipe) -> BrokerResult<T> {
        self.send(Request::Pipe(pipe)).await
    }

    async fn send<T: FromRedisValue>(&self, req: Request<'_>) -> BrokerResult<T> {
        let mut conn = self.conn.clone();
        let mut res = req.send(&mut conn).await;
        if matches!(&res, Err(e) if is_noscript(e)) {
            self.load_scripts().await?;
            res = req.send(&mut conn).await;
        }
        self.settle(res)
    }

    /// `BLPOP`s `keys` for at most `wait` (on a cluster, one `BLPOP` per slot; see
    /// [`Self::block_by_slot`]).
    pub(super) async fn blpop(&self, keys: &[String], wait: Duration) -> BrokerResult<()> {
        let secs = format!("{:.3}", wait.as_secs_f64());
        self.block_by_slot(
            keys,
            |k| k,
            |group| {
                let mut cmd = redis::cmd("BLPOP");
                for k in group {
                    cmd.arg(k.as_str());
                }
                cmd.arg(&secs);
                cmd
            },
            wait,
        )
        .await
    }

    /// Runs the blocking command `make` builds from `items` (each naming its key by
    /// `key_of`) and returns when it does. On a cluster, where one command cannot span slots,
    /// `make` builds one command per slot's items, each blocks on a connection to its slot's
    /// node, and the first to return ends the wait (the others are dropped with their
    /// connections).
    pub(super) async fn block_by_slot<I>(
        &self,
        items: &[I],
        key_of: impl Fn(&I) -> &str,
        make: impl Fn(&[&I]) -> Cmd,
        wait: Duration,
    ) -> BrokerResult<()> {
        let Blocking::Cluster(_) = &self.blocking_to else {
            let all: Vec<&I> = items.iter().collect();
            return self.block(&make(&all), None, wait).await;
        };
        let mut groups: Vec<(u16, Vec<&I>)> = Vec::new();
        for item in items {
            let slot = cluster::key_slot_number(key_of(item));
            match groups.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, g)) => g.push(item),
                None => groups.push((slot, vec![item])),
            }
        }
        let waits: Vec<_> = groups
            .iter()
            .filter_map(|(_, g)| {
                let key = key_of(g.first()?).to_owned();
                let cmd = make(g);
                Some(async move { self.block(&cmd, Some(&key), wait).await }.boxed())
            })
            .collect();
        if waits.is_empty() {
            return Ok(());
        }
        select_all(waits).await.0
    }

    /// Runs a blocking command (`BLPOP`, `XREAD BLOCK`) that gives up after `wait` on a
    /// dedicated connection (to the node that serves `key`'s slot, on a cluster), ignoring
    /// its reply. Returns as well when the reply is late; a connection that answered is kept
    /// for the next wait.
    pub(super) async fn block(
        &self,
        cmd: &Cmd,
        key: Option<&str>,
        wait: Duration,
    ) -> BrokerResult<()> {
        let (node, mut conn) = self.blocking_conn(key).await?;
        match tokio::time::timeout(wait + BLOCK_SLACK, cmd.query_async::<Value>(&mut conn)).await {
            Ok(Err(e)) if matches!(e.code(), Some("MOVED" | "ASK")) => {
                // The slot moved: the map is read again next time; this wait ends early,
                // which costs the caller one look for work, never a job.
                if let Blocking::Cluster(nodes) = &self.blocking_to {
                    nodes.forget();
                }
                Ok(())
            }
            Ok(res) => {
                self.settle(res)?;
                self.return_blocking(node, conn);
                Ok(())
            }
            // A reply may still arrive on that connection: drop it rather than reuse it.
            Err(_) => Ok(()),
        }
    }

    /// An idle dedicated connection to the node of `key` (the one Redis when standalone),
    /// or a new one; with the node's address, under which it goes back.
    async fn blocking_conn(
        &self,
        key: Option<&str>,
    ) -> BrokerResult<(String, MultiplexedConnection)> {
        let (node, client) = match (&self.blocking_to, key) {
            (Blocking::Single(client), _) => (String::new(), client.clone()),
            (Blocking::Cluster(nodes), key) => {
                let Shared::Cluster(shared) = &self.conn else {
                    return Err(corrupt(
                        "a cluster's blocking wait without a cluster connection",
                    ));
                };
                nodes
                    .client_for(shared, key.unwrap_or_default())
                    .await
                    .map_err(|e| self.err(e))?
            }
        };
        let idle = self
            .blocking
            .lock()
            .map_err(|_| poisoned())?
            .get_mut(&node)
            .and_then(Vec::pop);
        if let Some(c) = idle {
            return Ok((node, c));
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECTION_TIMEOUT))
            .set_response_timeout(None);
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.err(e))?;
        Ok((node, conn))
    }

    fn return_blocking(&self, node: String, conn: MultiplexedConnection) {
        if let Ok(mut idle) = self.blocking.lock() {
            let idle = idle.entry(node).or_default();
            if idle.len() < MAX_IDLE_BLOCKING {
                idle.push(conn);
            }
        }
    }
}

/// Idle dedicated connections for blocking waits, by node (`""` for a standalone Redis).
pub(super) type IdleBlocking = Mutex<HashMap<String, Vec<MultiplexedConnection>>>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The error Redis answered as `reply`, as the client hands it over.
    fn answered(reply: &[u8]) -> RedisError {
        match redis::parse_redis_value(reply) {
            Ok(redis::Value::ServerError(e)) => RedisError::from(e),
            other => panic!("not an error reply: {other:?}"),
        }
    }

    /// A Redis that refuses service for a while is unavailable (a 503 to clients, retried),
    /// not a failure of Hopper's (a 500).
    #[test]
    fn a_cluster_that_is_down_is_unavailable() {
        for reply in [
            &b"-CLUSTERDOWN The cluster is down\r\n"[..],
            b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
            b"-MASTERDOWN Link with MASTER is down\r\n",
            b"-LOADING Redis is loading the dataset in memory\r\n",
        ] {
            assert!(
                is_unavailable(&answered(reply)),
                "{}",
                String::from_utf8_lossy(reply)
            );
        }
        assert!(!is_unavailable(&answered(
            b"-ERR wrong number of arguments\r\n"
        )));
    }
}
