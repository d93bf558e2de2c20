//! The sections of `config.toml`, one struct each, as the file spells them. Every field's doc
//! states its default; `config.toml` at the repository's root lists them all (a test keeps
//! the two in step).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use hopper_jobs::config::duration_str;
use hopper_workers::broker::Durability;
pub use hopper_workers::broker::shown_url;

use super::RateLimit;

/// `[[schedule]]`: a job enqueued on every tick of a cron expression, once per tick however
/// many `serve` and `worker` processes run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Stable name, unique among schedules, at most 100 bytes of UTF-8. Required. The broker keeps
    /// the schedule's last tick under it: a renamed schedule is a new one.
    pub name: String,
    /// Cron expression with seconds, in UTC: "sec min hour day-of-month month day-of-week".
    /// Required.
    pub cron: String,
    /// Job kind. Required.
    pub kind: String,
    /// Payload of each job. Default `{}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<toml::Table>,
    /// Queue of each job. Default `"default"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Priority of each job. Default 5.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
}

/// `[[subscription]]`: a job enqueued for every event published on a matching topic
/// (`POST /v1/publish`, `hopper publish`, and Hopper's own `job.*` events). See `crate::bus`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscriptionConfig {
    /// The topics it takes: dot-separated segments, `*` standing for exactly one segment and
    /// `#` for any number of them (`user.created`, `user.*`, `billing.#`, `job.dead`).
    /// Required.
    pub topic: String,
    /// Kind of each job. Required; a kind this build does not register is refused at start.
    pub kind: String,
    /// Queue of each job. Default `"default"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Priority of each job. Default 5.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// Payload of each job: a table whose strings are minijinja templates over `data`,
    /// `topic` and `key`. A string that is one `{{ expression }}` and nothing else takes the
    /// expression's JSON value (a number, an object...); any other string is rendered as
    /// text. Other values are copied. Default `{}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<toml::Table>,
    /// For `job.*` topics only: take only events of jobs of this queue and/or kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<SubscriptionFilter>,
}

/// `[[subscription]] filter`: which jobs' events a `job.*` subscription takes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscriptionFilter {
    /// Only events of jobs of this queue. Default: any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Only events of jobs of this kind. Default: any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// `[server]`: the HTTP API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on, `IP:PORT`. Default `"127.0.0.1:8080"`. A non-loopback address
    /// needs `[auth] tokens`.
    pub listen: String,
    /// Largest accepted request body, in bytes. Default `1048576` (1 MiB).
    pub body_limit: usize,
    /// Most jobs in one `POST /v1/jobs/batch` (more is a 413 naming `jobs`), and the batch
    /// size of `hopper enqueue --file`. 1 to 100000. Default `1000`.
    pub max_batch: usize,
    /// Most `GET /v1/events` streams (WebSocket and SSE) open at once; past it a new one is
    /// answered 503. Default `10000`.
    pub max_connections: usize,
    /// How often the server pings each `GET /v1/events` WebSocket (and sends an SSE stream a
    /// comment); a peer that misses two pongs in a row (or whose send stays blocked for two
    /// intervals) is dropped. At least
    /// `"1s"`. Default `"20s"`.
    #[serde(with = "duration_str")]
    pub ws_ping_interval: Duration,
    /// Requests a second (`"500/s"`) or a minute (`"30000/m"`) one token may make on `/v1`
    /// (with `[auth] tokens` empty: one client address); past it a request is answered 429
    /// with `Retry-After`. `"off"`: no limit. Default `"off"`.
    pub rate_limit: RateLimit,
    /// How many requests past the steady rate a client may make at once. At least 1. Default:
    /// one second's worth of `rate_limit` (rounded up).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_burst: Option<u32>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            body_limit: 1024 * 1024,
            max_batch: 1000,
            max_connections: 10_000,
            ws_ping_interval: Duration::from_secs(20),
            rate_limit: RateLimit::Off,
            rate_limit_burst: None,
        }
    }
}

/// `[broker]`: where jobs are stored. Its `Debug` shows the URL without its password.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// `sqlite://PATH`, `redis://HOST:PORT/DB` or a Redis Cluster's
    /// `redis-cluster://HOST:PORT,HOST:PORT,...` (`rediss://`, `rediss-cluster://` with TLS).
    /// Default `"sqlite://data/hopper.db"`.
    /// Overridden by `HOPPER_BROKER`.
    pub url: String,
    /// Prefix of every Redis key (unused by SQLite). Default `"hopper"`.
    pub prefix: String,
    /// What an acknowledged write (an enqueue answered 201) survives, SQLite only: `"full"`
    /// (on disk before it is acknowledged: survives a power loss) or `"normal"` (survives a
    /// crash of the process; a power loss may take the last writes). Default `"full"`. A
    /// Redis broker's durability is the Redis server's `appendfsync`.
    pub durability: Durability,
}

impl std::fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("url", &self.shown_url())
            .field("prefix", &self.prefix)
            .field("durability", &self.durability)
            .finish()
    }
}

impl BrokerConfig {
    /// The `url` as it may be shown (errors, logs, listings): any `user:password@` replaced
    /// by `***@`, since a Redis URL may carry its password.
    pub fn shown_url(&self) -> String {
        shown_url(&self.url)
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://data/hopper.db".into(),
            prefix: "hopper".into(),
            durability: Durability::Full,
        }
    }
}

/// `[worker]`: the worker pool of `serve` and `worker`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Jobs run at once by this process: 1 to 10000 (`hopper_workers::pool::MAX_CONCURRENCY`).
    /// Default `16`.
    pub concurrency: usize,
    /// Queues this process fetches from, each `NAME` or `NAME:WEIGHT` (`["critical:6",
    /// "default:2", "low"]`): a fetch round starts with a queue of weight 6 three times as
    /// often as with one of weight 2, and a queue with no weight has 1. A weight is a whole
    /// number from 1 to 1000. Default `["default"]`.
    pub queues: Vec<String>,
    /// How long a fetched job stays leased without a heartbeat. Default `"30s"`.
    #[serde(with = "duration_str")]
    pub lease: Duration,
    /// How often leases of running jobs are extended; less than `lease`. Default `"10s"`.
    #[serde(with = "duration_str")]
    pub heartbeat: Duration,
    /// On shutdown, how long running jobs may finish before they are cancelled and released.
    /// Default `"25s"`.
    #[serde(with = "duration_str")]
    pub shutdown_grace: Duration,
    /// Per-attempt time limit of jobs that set none. Default `"30m"`.
    #[serde(with = "duration_str")]
    pub job_timeout: Duration,
    /// Register the diagnostic kinds `sys.noop`, `sys.sleep`, `sys.fail`. Default `true`.
    pub diagnostics: bool,
    /// How long a job of a kind no worker serves is put off (snoozed every 5 s, its
    /// `last_error` saying so) before it goes dead, from the first time it was put off.
    /// Default `"1h"`.
    #[serde(with = "duration_str")]
    pub unknown_kind_grace: Duration,
    /// Where `hopper worker` serves `GET /metrics` (IP:PORT); loopback unless `[auth] tokens`
    /// is set, which it then asks for. Default: none, no listener (`hopper serve` has
    /// `/metrics` on its API port).
    pub metrics_listen: Option<String>,
    /// How many distinct values a label that clients name may take on this process's
    /// `/metrics` (`hopper serve`'s and `hopper worker`'s alike): `queue` on every family
    /// that has one (queue names come from `POST /v1/jobs`), and `endpoint` on
    /// `hopper_notify_circuit_open` (push services come from users' subscriptions). The
    /// first values seen keep their own, the queues of `[worker] queues` and `[[queue]]`
    /// always; later ones are summed under `"_other"`, and a warning is logged the first
    /// time. At least 1. Default `1000`.
    pub metrics_max_label_values: usize,
}

impl WorkerConfig {
    /// The names of the queues `queues` lists, their weights left out.
    pub fn queue_names(&self) -> impl Iterator<Item = &str> {
        self.queues.iter().map(|entry| queue_entry(entry).0)
    }
}

/// An entry of `[worker] queues` split at its first ':' into the queue's name and its weight
/// as written, if any: `"critical:6"` is `("critical", Some("6"))`. Queue names hold no ':'.
/// Checked once, with the rest of the config, by [`Config::settings`](super::Config::settings).
pub fn queue_entry(entry: &str) -> (&str, Option<&str>) {
    match entry.split_once(':') {
        Some((name, weight)) => (name, Some(weight)),
        None => (entry, None),
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            queues: vec!["default".into()],
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(25),
            job_timeout: Duration::from_secs(30 * 60),
            diagnostics: true,
            unknown_kind_grace: Duration::from_secs(3600),
            metrics_listen: None,
            metrics_max_label_values: hopper_workers::metrics::DEFAULT_MAX_LABEL_VALUES,
        }
    }
}

/// `[[queue]]`: settings of one queue.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// The queue's name. Required.
    pub name: String,
    /// At most this many of its jobs run at once per process, 1 to 10000. Default: no limit
    /// of its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// A paused queue accepts jobs but runs none, in the processes that read this config.
    /// Default `false`. `hopper pause QUEUE` (or `POST /v1/queues/{name}/pause`) pauses it
    /// in the broker instead, for every node; a queue is paused when either says so.
    pub paused: bool,
    /// At most this many of its jobs start, across every node sharing the broker: `"COUNT/s"`
    /// or `"COUNT/m"` (e.g. `"100/s"`, `"10/m"`), or `"off"`. Default `"off"`. Enforced by
    /// the broker in the fetch itself; a job held back stays queued. Nodes whose configs give
    /// different rates each apply their own to the one shared budget.
    #[serde(skip_serializing_if = "RateLimit::is_off")]
    pub rate_limit: RateLimit,
}

/// `[retry]`: what happens after a failed attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Retries of a job that does not say. Default `3`.
    pub max_retries: u32,
    /// Bound of the first retry's wait; doubles per attempt (full jitter). Default `"1s"`.
    #[serde(with = "duration_str")]
    pub backoff_base: Duration,
    /// No retry waits longer. Default `"1h"`.
    #[serde(with = "duration_str")]
    pub backoff_max: Duration,
    /// A job whose worker died this many times in a row goes to `dead`. Default `3`.
    pub max_interruptions: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_retries: 3,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(3600),
            max_interruptions: 3,
        }
    }
}

/// `[auth]`: who may call the API.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Bearer tokens accepted on `/v1`. Default `[]`: no auth, and the server then only
    /// listens on loopback. Overridden by `HOPPER_TOKENS` (comma-separated).
    pub tokens: Vec<String>,
    /// The HS256 secret that signs users' JWTs (`GET /v1/notifications`, a user's push
    /// subscriptions). Default `""`: none. A secret: never logged nor shown.
    pub jwt_secret: String,
    /// A PEM file with the public key that verifies users' RS256 (RSA) or EdDSA (Ed25519)
    /// JWTs. Default `""`: none.
    pub jwt_public_key: String,
}

// Tokens are secrets: keep them out of logs and panics.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("tokens", &format_args!("[{} redacted]", self.tokens.len()))
            .field(
                "jwt_secret",
                &if self.jwt_secret.is_empty() {
                    ""
                } else {
                    "[redacted]"
                },
            )
            .field("jwt_public_key", &self.jwt_public_key)
            .finish()
    }
}

/// `[log]`: how the process writes its log (to stderr; the level is `RUST_LOG`'s).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `"text"` (one human-readable line per event) or `"json"` (one JSON object per line,
    /// for a log collector). Default `"text"`.
    pub format: LogFormat,
}

/// The format of the log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogFormat {
    #[default]
    #[serde(rename = "text")]
    Text,
    #[serde(rename = "json")]
    Json,
}

/// `[retention]`: how long finished jobs and events are kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Succeeded jobs are deleted this long after they finish. Default `"7d"`.
    #[serde(with = "duration_str")]
    pub succeeded: Duration,
    /// Dead and cancelled jobs are deleted this long after they finished. Default `"30d"`.
    #[serde(with = "duration_str")]
    pub dead: Duration,
    /// The event log keeps this many newest events (SQLite: in all; Redis: per queue, each
    /// queue's stream). Default `100000`.
    pub events: u64,
    /// When the retention job (`hopper.retention` on queue
    /// `hopper.maintenance`) runs: cron with seconds. Default `"0 * * * * *"` (every minute).
    pub cron: String,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            succeeded: Duration::from_secs(7 * 86_400),
            dead: Duration::from_secs(30 * 86_400),
            events: 100_000,
            cron: "0 * * * * *".to_owned(),
        }
    }
}
