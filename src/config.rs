//! The configuration: one typed [`Config`], read from TOML, with environment overrides merged
//! in typed Rust.
//!
//! This module owns the shape of `config.toml` (DESIGN §8), the defaults, where the file is
//! looked for, and [`Config::validate`], which reports every problem at once. It does not apply
//! the config: [`Config::pool_config`] hands the worker settings to the engine, and
//! `crate::app` wires the rest. Environment variables are read, never written.
//!
//! Every section is `#[serde(default, deny_unknown_fields)]`: a missing key takes its default,
//! a misspelt one is an error naming it. The committed `config.toml` lists every key with its
//! default; a test keeps the two in step.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hopper_workers::job::valid_name;
use hopper_workers::pool::{PoolConfig, QueueSpec};
use hopper_workers::retry::RetryPolicy;
use hopper_workers::schedule;
use serde::{Deserialize, Serialize};

/// Where the config is looked for when `--config` is not given, in order.
pub const SEARCH_PATH: [&str; 2] = ["config.toml", "/etc/hopper/config.toml"];

/// The queue of Hopper's own maintenance jobs (retention); every pool serves it, one job at a
/// time, besides its `[worker] queues`.
pub const MAINTENANCE_QUEUE: &str = "hopper.maintenance";

/// Overrides `[broker] url`.
pub const ENV_BROKER: &str = "HOPPER_BROKER";
/// Overrides `[auth] tokens` (comma-separated).
pub const ENV_TOKENS: &str = "HOPPER_TOKENS";

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub broker: BrokerConfig,
    pub worker: WorkerConfig,
    /// `[[queue]]` tables: per-queue settings. Default: none (every queue unlimited, running).
    #[serde(rename = "queue")]
    pub queues: Vec<QueueConfig>,
    pub retry: RetryConfig,
    pub auth: AuthConfig,
    pub retention: RetentionConfig,
    /// `[[schedule]]` tables: periodic jobs. Default: none.
    #[serde(rename = "schedule")]
    pub schedules: Vec<ScheduleConfig>,
    pub files: FilesConfig,
    pub smtp: SmtpSection,
    pub etl: EtlSection,
    pub http: HttpConfig,
}

/// `[files]`: where job inputs and outputs live.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilesConfig {
    /// Job inputs given as relative paths, and every output. Default `"data/files"`.
    pub dir: PathBuf,
    /// Where `email.send` writes `.eml` files when `[smtp] url` is empty. Default `"data/outbox"`.
    pub outbox: PathBuf,
    /// Largest download `image.resize` accepts, in bytes. Default 50 MiB.
    pub max_download_bytes: u64,
    /// Largest image (width x height) decoded. Default 100,000,000.
    pub image_max_pixels: u64,
}

impl Default for FilesConfig {
    fn default() -> Self {
        let d = hopper_jobs::JobsConfig::default();
        Self {
            dir: d.files_dir,
            outbox: d.outbox_dir,
            max_download_bytes: d.max_download_bytes,
            image_max_pixels: d.image_max_pixels,
        }
    }
}

/// `[smtp]`: the mail relay of `email.send`.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpSection {
    /// `smtp://HOST:PORT` (STARTTLS when offered), `smtps://HOST:465` (TLS), with optional
    /// `user:password@`. Default `""`: no relay, mail goes to `[files] outbox` as `.eml` files.
    pub url: String,
    /// The sender of every message. Default `""` (required when `url` is set).
    pub from: String,
}

impl std::fmt::Debug for SmtpSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("SmtpSection")
            .field("url", &if self.url.is_empty() { "" } else { "<set>" })
            .field("from", &self.from)
            .finish()
    }
}

/// `[etl]`: named secrets and databases `etl.sync` payloads refer to (payloads never carry
/// secrets).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtlSection {
    /// Bearer tokens by name: `source.token = "crm"` sends `tokens.crm`. Default none.
    pub tokens: std::collections::BTreeMap<String, String>,
    /// PostgreSQL URLs by name: `target.database = "warehouse"`. Default none.
    pub databases: std::collections::BTreeMap<String, String>,
}

impl std::fmt::Debug for EtlSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtlSection")
            .field("tokens", &self.tokens.keys().collect::<Vec<_>>())
            .field("databases", &self.databases.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// `[http]`: outgoing HTTP of job kinds (image downloads, ETL pages).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Time limit of one request. Default `"30s"`.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            timeout: hopper_jobs::JobsConfig::default().http_timeout,
        }
    }
}

/// `[[schedule]]`: a job enqueued on every tick of a cron expression, once per tick however
/// many `serve` and `worker` processes run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Stable name, unique among schedules. Required.
    pub name: String,
    /// Cron expression with seconds: "sec min hour day-of-month month day-of-week". Required.
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

/// `[server]`: the HTTP API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on, `IP:PORT`. Default `"127.0.0.1:8080"`. A non-loopback address
    /// needs `[auth] tokens`.
    pub listen: String,
    /// Largest accepted request body, in bytes. Default `1048576` (1 MiB).
    pub body_limit: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            body_limit: 1024 * 1024,
        }
    }
}

/// `[broker]`: where jobs are stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// `sqlite://PATH` or `redis://HOST:PORT/DB`. Default `"sqlite://data/hopper.db"`.
    /// Overridden by `HOPPER_BROKER`.
    pub url: String,
    /// Prefix of every Redis key (unused by SQLite). Default `"hopper"`.
    pub prefix: String,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://data/hopper.db".into(),
            prefix: "hopper".into(),
        }
    }
}

/// `[worker]`: the worker pool of `serve` and `worker`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Jobs run at once by this process. Default `16`.
    pub concurrency: usize,
    /// Queues this process fetches from. Default `["default"]`.
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
        }
    }
}

/// `[[queue]]`: settings of one queue.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// The queue's name. Required.
    pub name: String,
    /// At most this many of its jobs run at once per process. Default: no limit of its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// A paused queue accepts jobs but runs none. Default `false`.
    pub paused: bool,
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
}

// Tokens are secrets: keep them out of logs and panics.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("tokens", &format_args!("[{} redacted]", self.tokens.len()))
            .finish()
    }
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
    /// The event log keeps this many newest events. Default `100000`.
    pub events: u64,
    /// When the retention job (`cleanup.purge {"records": true}` on queue
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

/// Why a config could not be loaded or is not usable. The shell exits 2 on any of these.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, a wrong type, or an unknown key (toml's message names the key and shows
    /// the line).
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// [`Config::validate`] found problems; one line each.
    #[error("config {origin} is not valid:\n  {}", problems.join("\n  "))]
    Invalid {
        origin: String,
        problems: Vec<String>,
    },
}

/// A config and the file it came from (`None`: built-in defaults).
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: Config,
    pub path: Option<PathBuf>,
}

impl Loaded {
    /// Where the config came from, for messages.
    pub fn origin(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => "(built-in defaults)".into(),
        }
    }
}

impl Config {
    /// Parses TOML text; `path` only labels errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
    }

    /// Reads and parses one file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Loads `explicit` if given (it must exist), else the first of [`SEARCH_PATH`] that
    /// exists, else the defaults; then applies `HOPPER_BROKER` and `HOPPER_TOKENS`. Does not
    /// validate: callers apply their command-line overrides first.
    pub fn load(explicit: Option<&Path>) -> Result<Loaded, ConfigError> {
        let path = match explicit {
            Some(p) => Some(p.to_owned()),
            None => SEARCH_PATH.iter().map(PathBuf::from).find(|p| p.is_file()),
        };
        let mut config = match &path {
            Some(p) => Self::from_file(p)?,
            None => Self::default(),
        };
        config.apply_env(|k| std::env::var(k).ok());
        Ok(Loaded { config, path })
    }

    /// Applies the environment overrides, read through `var` (so tests need not touch the
    /// process environment). Empty values are ignored.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) {
        if let Some(url) = var(ENV_BROKER).filter(|v| !v.trim().is_empty()) {
            self.broker.url = url.trim().to_owned();
        }
        if let Some(tokens) = var(ENV_TOKENS).filter(|v| !v.trim().is_empty()) {
            self.auth.tokens = tokens
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect();
        }
    }

    /// The job kinds' settings (`[files]`, `[smtp]`, `[etl]`, `[http]`).
    pub fn jobs_config(&self) -> hopper_jobs::JobsConfig {
        hopper_jobs::JobsConfig {
            files_dir: self.files.dir.clone(),
            outbox_dir: self.files.outbox.clone(),
            smtp: (!self.smtp.url.is_empty()).then(|| hopper_jobs::SmtpConfig {
                url: self.smtp.url.clone(),
                from: self.smtp.from.clone(),
            }),
            etl: hopper_jobs::EtlConfig {
                tokens: self.etl.tokens.clone(),
                databases: self.etl.databases.clone(),
            },
            http_timeout: self.http.timeout,
            max_download_bytes: self.files.max_download_bytes,
            image_max_pixels: self.files.image_max_pixels,
        }
    }

    /// The built-in retention schedule: `cleanup.purge {"records": true}` on the maintenance
    /// queue, per `[retention] cron`.
    pub fn retention_schedule(&self) -> schedule::ScheduleSpec {
        schedule::ScheduleSpec {
            name: "hopper.retention".to_owned(),
            cron: self.retention.cron.clone(),
            kind: "cleanup.purge".to_owned(),
            payload: serde_json::json!({ "records": true }),
            queue: MAINTENANCE_QUEUE.to_owned(),
            priority: hopper_workers::job::MAX_PRIORITY,
            max_retries: self.retry.max_retries,
        }
    }

    /// The engine's definition of a `[[schedule]]` entry.
    pub fn schedule_spec(&self, sc: &ScheduleConfig) -> schedule::ScheduleSpec {
        schedule::ScheduleSpec {
            name: sc.name.clone(),
            cron: sc.cron.clone(),
            kind: sc.kind.clone(),
            payload: sc
                .payload
                .as_ref()
                .and_then(|t| serde_json::to_value(t).ok())
                .unwrap_or_else(|| serde_json::json!({})),
            queue: sc
                .queue
                .clone()
                .unwrap_or_else(|| hopper_workers::job::DEFAULT_QUEUE.to_owned()),
            priority: sc.priority.unwrap_or(hopper_workers::job::DEFAULT_PRIORITY),
            max_retries: self.retry.max_retries,
        }
    }

    /// Every `[[schedule]]`, parsed. Fails on the first bad cron expression (which `validate`
    /// has reported already).
    pub fn schedules(&self) -> Result<Vec<schedule::Schedule>, hopper_workers::FieldError> {
        self.schedules
            .iter()
            .map(|sc| schedule::Schedule::new(self.schedule_spec(sc)))
            .collect()
    }

    /// Checks everything that parses but cannot work, and reports every problem, each
    /// starting with the key it is about.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut p = Vec::new();

        match self.server.listen.parse::<SocketAddr>() {
            Err(_) => p.push(format!(
                "server.listen: {:?} is not IP:PORT (e.g. \"127.0.0.1:8080\")",
                self.server.listen
            )),
            Ok(addr) if !addr.ip().is_loopback() && self.auth.tokens.is_empty() => p.push(format!(
                "server.listen: {addr} is not a loopback address and [auth] tokens is empty; \
                 set tokens (or HOPPER_TOKENS) before exposing the API"
            )),
            Ok(_) => {}
        }
        if self.server.body_limit == 0 {
            p.push("server.body_limit: must be greater than 0".into());
        }

        let url = &self.broker.url;
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                p.push("broker.url: sqlite:// needs a path, e.g. sqlite://data/hopper.db".into());
            }
        } else if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            p.push(format!(
                "broker.url: {url:?} is not sqlite://PATH or redis://HOST:PORT/DB"
            ));
        }
        if !valid_name(&self.broker.prefix) {
            p.push(format!(
                "broker.prefix: {:?} must be 1 to 64 letters, digits, '-', '_' or '.'",
                self.broker.prefix
            ));
        }

        let w = &self.worker;
        if w.concurrency == 0 {
            p.push("worker.concurrency: must be at least 1".into());
        }
        if w.queues.is_empty() {
            p.push("worker.queues: must name at least one queue".into());
        }
        let mut seen = HashSet::new();
        for q in &w.queues {
            if !valid_name(q) {
                p.push(format!(
                    "worker.queues: {q:?} must be 1 to 64 letters, digits, '-', '_' or '.'"
                ));
            } else if !seen.insert(q.as_str()) {
                p.push(format!("worker.queues: {q:?} is listed twice"));
            }
        }
        if w.lease < Duration::from_secs(1) {
            p.push("worker.lease: must be at least 1s".into());
        }
        if w.heartbeat.is_zero() {
            p.push("worker.heartbeat: must be greater than 0".into());
        } else if w.heartbeat >= w.lease {
            p.push(format!(
                "worker.heartbeat: {} must be shorter than worker.lease ({})",
                humantime::format_duration(w.heartbeat),
                humantime::format_duration(w.lease)
            ));
        }
        if w.job_timeout.is_zero() {
            p.push("worker.job_timeout: must be greater than 0".into());
        }

        if !self.smtp.url.is_empty() && self.smtp.from.is_empty() {
            p.push("smtp.from: is required when smtp.url is set".into());
        }
        if let Err(e) = self.jobs_config().validate() {
            p.push(e.to_string());
        }

        if let Err(e) = schedule::Schedule::new(self.retention_schedule()) {
            p.push(format!("retention.cron: {}", e.message));
        }

        let mut seen = HashSet::new();
        for (i, sc) in self.schedules.iter().enumerate() {
            if sc.name.is_empty() {
                p.push(format!("schedule[{i}].name: is required"));
            } else if !seen.insert(sc.name.as_str()) {
                p.push(format!(
                    "schedule[{i}].name: {:?} is declared twice",
                    sc.name
                ));
            }
            if sc.kind.is_empty() {
                p.push(format!("schedule[{i}].kind: is required"));
            }
            if let Err(e) = schedule::Schedule::new(self.schedule_spec(sc)) {
                p.push(format!("schedule[{i}].cron: {}", e.message));
            }
            if let Some(q) = &sc.queue
                && !valid_name(q)
            {
                p.push(format!(
                    "schedule[{i}].queue: {q:?} is not a valid queue name"
                ));
            }
            if sc.priority.is_some_and(|pr| pr > 9) {
                p.push(format!("schedule[{i}].priority: must be 0 to 9"));
            }
        }

        let mut seen = HashSet::new();
        for (i, q) in self.queues.iter().enumerate() {
            if !valid_name(&q.name) {
                p.push(format!(
                    "queue[{i}].name: {:?} must be 1 to 64 letters, digits, '-', '_' or '.'",
                    q.name
                ));
            } else if !seen.insert(q.name.as_str()) {
                p.push(format!("queue[{i}].name: {:?} is declared twice", q.name));
            }
            if q.concurrency == Some(0) {
                p.push(format!("queue[{i}].concurrency: must be at least 1"));
            }
        }

        let r = &self.retry;
        if r.max_retries > 1000 {
            p.push("retry.max_retries: must be at most 1000".into());
        }
        if r.backoff_base > r.backoff_max {
            p.push(format!(
                "retry.backoff_base: {} is longer than retry.backoff_max ({})",
                humantime::format_duration(r.backoff_base),
                humantime::format_duration(r.backoff_max)
            ));
        }
        if r.max_interruptions == 0 {
            p.push("retry.max_interruptions: must be at least 1".into());
        }

        for (i, t) in self.auth.tokens.iter().enumerate() {
            if t.is_empty() || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
                p.push(format!(
                    "auth.tokens[{i}]: must be non-empty, without spaces or control characters"
                ));
            }
        }

        if self.retention.events == 0 {
            p.push("retention.events: must be at least 1".into());
        }

        if p.is_empty() { Ok(()) } else { Err(p) }
    }

    /// [`Config::validate`] as a [`ConfigError`] labelled with where the config came from.
    pub fn check(&self, origin: &str) -> Result<(), ConfigError> {
        self.validate().map_err(|problems| ConfigError::Invalid {
            origin: origin.to_owned(),
            problems,
        })
    }

    /// The listen address. Call after [`Config::validate`]; a bad address is reported there.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server
            .listen
            .parse()
            .map_err(|_| ConfigError::Invalid {
                origin: "server.listen".into(),
                problems: vec![format!("{:?} is not IP:PORT", self.server.listen)],
            })
    }

    /// The retry policy of the pool.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            base: self.retry.backoff_base,
            max: self.retry.backoff_max,
            jitter: true,
        }
    }

    /// The pool's settings: `[worker]`, the `[[queue]]` entries of the queues it serves, and
    /// `[retry]`.
    pub fn pool_config(&self) -> PoolConfig {
        let queues = self
            .worker
            .queues
            .iter()
            .map(|name| {
                let q = self.queue(name);
                QueueSpec {
                    name: name.clone(),
                    concurrency: q.and_then(|q| q.concurrency),
                    paused: q.is_some_and(|q| q.paused),
                }
            })
            // Last, so that real work is fetched first; one slot at most.
            .chain(std::iter::once(QueueSpec {
                name: MAINTENANCE_QUEUE.to_owned(),
                concurrency: Some(1),
                paused: false,
            }))
            .collect();
        PoolConfig {
            concurrency: self.worker.concurrency,
            queues,
            lease: self.worker.lease,
            heartbeat: self.worker.heartbeat,
            shutdown_grace: self.worker.shutdown_grace,
            job_timeout: self.worker.job_timeout,
            retry: self.retry_policy(),
            max_interruptions: self.retry.max_interruptions,
            ..PoolConfig::default()
        }
    }

    /// The `[[queue]]` entry of `name`, if declared.
    pub fn queue(&self, name: &str) -> Option<&QueueConfig> {
        self.queues.iter().find(|q| q.name == name)
    }
}

/// Durations as humantime strings (`"30s"`, `"2m"`, `"7d"`), both ways.
pub mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({e}); expected e.g. \"500ms\", \"30s\", \"5m\", \"1h\", \"7d\""
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const COMMITTED: &str = include_str!("../config.toml");

    #[test]
    fn committed_config_is_the_default() {
        let parsed = Config::from_toml(COMMITTED, Path::new("config.toml")).unwrap();
        assert_eq!(parsed, Config::default());
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn committed_config_lists_every_key() {
        // Every key the defaults serialize to appears in the committed file, so a new field
        // cannot be added without documenting it there.
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for (section, table) in &defaults {
            let Some(table) = table.as_table() else {
                continue;
            };
            assert!(
                COMMITTED.contains(&format!("[{section}]")),
                "config.toml lacks [{section}]"
            );
            for key in table.keys() {
                assert!(
                    COMMITTED
                        .lines()
                        .any(|l| l.trim_start().starts_with(&format!("{key} ="))),
                    "config.toml lacks {section}.{key}"
                );
            }
        }
        for key in ["[[queue]]", "name =", "concurrency =", "paused ="] {
            assert!(COMMITTED.contains(key), "config.toml lacks {key}");
        }
    }

    #[test]
    fn unknown_key_is_named_with_the_file() {
        let err = Config::from_toml(
            "[worker]\nconcurency = 4\n",
            Path::new("/etc/hopper/config.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/etc/hopper/config.toml"), "{err}");
        assert!(err.contains("concurency"), "{err}");

        let err = Config::from_toml("[sever]\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sever"), "{err}");
    }

    #[test]
    fn durations_parse_and_bad_ones_are_named() {
        let c = Config::from_toml(
            "[worker]\nlease = \"2m\"\nheartbeat = \"500ms\"\n[retention]\ndead = \"1d\"\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(c.worker.lease, Duration::from_secs(120));
        assert_eq!(c.worker.heartbeat, Duration::from_millis(500));
        assert_eq!(c.retention.dead, Duration::from_secs(86_400));

        let err = Config::from_toml("[worker]\nlease = \"soon\"\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("lease") && err.contains("soon"), "{err}");
    }

    #[test]
    fn validate_reports_every_problem() {
        let mut c = Config::default();
        c.worker.concurrency = 0;
        c.worker.heartbeat = Duration::from_secs(60);
        c.server.listen = "nowhere".into();
        c.broker.url = "postgres://x".into();
        c.queues.push(QueueConfig {
            name: "a b".into(),
            concurrency: Some(0),
            paused: false,
        });
        let problems = c.validate().unwrap_err();
        for key in [
            "worker.concurrency",
            "worker.heartbeat",
            "server.listen",
            "broker.url",
            "queue[0].name",
            "queue[0].concurrency",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(key)),
                "{key} missing from {problems:#?}"
            );
        }
        assert_eq!(problems.len(), 6, "{problems:#?}");
    }

    #[test]
    fn public_listen_needs_tokens() {
        let mut c = Config::default();
        c.server.listen = "0.0.0.0:8080".into();
        let problems = c.validate().unwrap_err();
        assert!(problems[0].contains("tokens"), "{problems:?}");
        c.auth.tokens = vec!["s3cret".into()];
        assert!(c.validate().is_ok());
    }

    #[test]
    fn env_overrides_are_typed() {
        let mut c = Config::default();
        c.apply_env(|k| match k {
            ENV_BROKER => Some("redis://127.0.0.1:6379/0".into()),
            ENV_TOKENS => Some("a, b,,c".into()),
            _ => None,
        });
        assert_eq!(c.broker.url, "redis://127.0.0.1:6379/0");
        assert_eq!(c.auth.tokens, vec!["a", "b", "c"]);
    }

    #[test]
    fn pool_config_maps_queues() {
        let c = Config::from_toml(
            "[worker]\nqueues = [\"a\", \"b\"]\nconcurrency = 4\n\
             [[queue]]\nname = \"b\"\nconcurrency = 2\npaused = true\n",
            Path::new("c.toml"),
        )
        .unwrap();
        let pc = c.pool_config();
        assert_eq!(pc.concurrency, 4);
        assert_eq!(pc.queues.len(), 3, "a, b and the maintenance queue");
        assert_eq!(pc.queues[2].name, MAINTENANCE_QUEUE);
        assert_eq!(pc.queues[0].concurrency, None);
        assert_eq!(pc.queues[1].concurrency, Some(2));
        assert!(pc.queues[1].paused);
        assert_eq!(pc.retry.base, Duration::from_secs(1));
    }

    #[test]
    fn tokens_are_not_debug_printed() {
        let mut c = Config::default();
        c.auth.tokens = vec!["hunter2".into()];
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
