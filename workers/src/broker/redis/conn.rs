//! The connections to Redis and what their failures mean.
//!
//! This file owns opening the client (TLS for `rediss://`, timeouts, the reconnect backoff of
//! the shared [`ConnectionManager`], the refusal of an evicting Redis), running one command or
//! pipeline on it, the few dedicated connections kept for `BLPOP` and `XREAD BLOCK` (which would stall every
//! command queued behind it on the shared multiplexed connection), and the translation of a
//! [`RedisError`] into a [`BrokerError`], with one warning every few seconds while Redis is
//! unreachable rather than one per failed call. It does not know what it sends: keys are
//! `keys.rs`'s, scripts `scripts.rs`'s, and replies are read by the caller.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Client, Cmd, FromRedisValue, Pipeline, RedisError, RedisResult, Value,
};

use super::RedisBroker;
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

/// `redis://user:secret@host/0` -> `redis://host/0`.
pub(super) fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://{}", &url[at + 1..]),
        _ => url.to_owned(),
    }
}

fn is_unavailable(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

fn poisoned() -> BrokerError {
    corrupt("a lock of the Redis broker was poisoned by a panic")
}

/// Opens the client for `url` and its shared connection, and checks that Redis does not evict;
/// `shown` is the URL without credentials, for messages.
pub(super) async fn open(url: &str, shown: &str) -> BrokerResult<(Client, ConnectionManager)> {
    if url.starts_with("rediss://") {
        // rustls needs one process-wide crypto provider; ring is the one built in. An
        // error means one is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
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
        .map_err(|e| {
            BrokerError::Unavailable(format!("cannot connect to Redis at {shown}: {e}").into())
        })?;
    check_no_eviction(&mut conn, shown).await?;
    Ok((client, conn))
}

/// Refuses a Redis whose `maxmemory-policy` is not `noeviction`: an evicting Redis drops jobs
/// silently.
async fn check_no_eviction(conn: &mut ConnectionManager, shown: &str) -> BrokerResult<()> {
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
    Pipe(&'a Pipeline),
}

impl Request<'_> {
    async fn send<T: FromRedisValue>(self, conn: &mut ConnectionManager) -> RedisResult<T> {
        match self {
            Self::One(cmd) => cmd.query_async(conn).await,
            Self::Pipe(pipe) => pipe.query_async(conn).await,
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
    pub(super) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> BrokerResult<T> {
        self.send(Request::One(cmd)).await
    }

    /// Runs a pipeline in one round-trip; like [`Self::query`] for lost scripts. Pipelines that
    /// are retried hold only idempotent index writes besides their scripts, which did not run.
    pub(super) async fn query_pipe<T: FromRedisValue>(&self, pipe: &Pipeline) -> BrokerResult<T> {
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

    /// `BLPOP`s `keys` for at most `wait` on a dedicated connection. Returns as well when the
    /// reply is late; a connection that answered is kept for the next wait.
    pub(super) async fn blpop(&self, keys: &[String], wait: Duration) -> BrokerResult<()> {
        let mut cmd = redis::cmd("BLPOP");
        cmd.arg(keys).arg(format!("{:.3}", wait.as_secs_f64()));
        self.block(&cmd, wait).await
    }

    /// Runs a blocking command (`BLPOP`, `XREAD BLOCK`) that gives up after `wait` on a
    /// dedicated connection, ignoring its reply. Returns as well when the reply is late; a
    /// connection that answered is kept for the next wait.
    pub(super) async fn block(&self, cmd: &Cmd, wait: Duration) -> BrokerResult<()> {
        let mut conn = self.blocking_conn().await?;
        match tokio::time::timeout(wait + BLOCK_SLACK, cmd.query_async::<Value>(&mut conn)).await {
            Ok(res) => {
                self.settle(res)?;
                self.return_blocking(conn);
                Ok(())
            }
            // A reply may still arrive on that connection: drop it rather than reuse it.
            Err(_) => Ok(()),
        }
    }

    async fn blocking_conn(&self) -> BrokerResult<MultiplexedConnection> {
        let idle = self.blocking.lock().map_err(|_| poisoned())?.pop();
        if let Some(c) = idle {
            return Ok(c);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECTION_TIMEOUT))
            .set_response_timeout(None);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.err(e))
    }

    fn return_blocking(&self, conn: MultiplexedConnection) {
        if let Ok(mut idle) = self.blocking.lock()
            && idle.len() < MAX_IDLE_BLOCKING
        {
            idle.push(conn);
        }
    }
}
