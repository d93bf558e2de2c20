//! The configuration: one typed [`Config`], read from TOML, with environment overrides merged
//! in typed Rust.
//!
//! This module owns the shape of `config.toml` (DESIGN §8), the defaults, where the file is
//! looked for, and the one check of a config: [`Config::check`] reports every problem at once
//! and hands back [`Settings`], the values later code needs, already parsed (the listen
//! address, the pool's settings, the schedules, the job kinds' settings), so nothing parses a
//! config value twice. It does not apply the config: `crate::app` wires the parts.
//! Environment variables are read, never written.
//!
//! - `sections`: one struct per `[section]`, each field's doc stating its default.
//! - `settings`: [`Settings`] and the check that builds them.
//! - `rate`: [`RateLimit`], the syntax of `[server] rate_limit`.
//! - `parse_error`: the message of a file toml could not read, secrets left out.
//!
//! Every section is `#[serde(default, deny_unknown_fields)]`: a missing key takes its default,
//! a misspelt one is an error naming it. The committed `config.toml` lists every key with its
//! default; a test keeps the two in step.

mod parse_error;
mod rate;
mod sections;
mod settings;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use rate::{Per, RateLimit};
pub use sections::*;
pub use settings::Settings;
pub(crate) use settings::job_queue_problem;

/// Where the config is looked for when `--config` is not given, in order.
pub const SEARCH_PATH: [&str; 2] = ["config.toml", "/etc/hopper/config.toml"];

/// The queue of Hopper's own maintenance jobs (retention); every pool serves it, one job at a
/// time, besides its `[worker] queues`.
pub use hopper_workers::retention::MAINTENANCE_QUEUE;

/// The largest `[server] max_batch` accepted.
pub const MAX_BATCH: usize = 100_000;

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
    pub log: LogConfig,
    /// `[[schedule]]` tables: periodic jobs. Default: none.
    #[serde(rename = "schedule")]
    pub schedules: Vec<ScheduleConfig>,
    /// `[[subscription]]` tables: jobs enqueued for published events. Default: none.
    #[serde(rename = "subscription")]
    pub subscriptions: Vec<SubscriptionConfig>,
    /// The job kinds' sections, declared by `hopper-jobs` (`hopper_jobs::config`).
    pub files: hopper_jobs::FilesConfig,
    pub smtp: hopper_jobs::SmtpConfig,
    pub etl: hopper_jobs::EtlConfig,
    pub http: hopper_jobs::HttpConfig,
    pub notify: hopper_jobs::NotifyConfig,
    /// The keys an environment variable replaced, each with the variable: a problem with one
    /// of them names the variable, since the file's own value is not the one in use.
    #[serde(skip)]
    pub overridden: Vec<(&'static str, &'static str)>,
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
    /// TOML syntax, a wrong type, or an unknown key: the line, column and key, never the line's
    /// text, and a value only when its key holds no secret (`parse_error`).
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
    /// The queues `[[queue]] paused` pauses in this config.
    pub fn paused_queues(&self) -> Vec<String> {
        self.queues
            .iter()
            .filter(|q| q.paused)
            .map(|q| q.name.clone())
            .collect()
    }

    /// The queues `[[queue]] rate_limit` rates in this config, each with its rate as written.
    pub fn queue_rates(&self) -> std::collections::HashMap<String, String> {
        self.queues
            .iter()
            .filter(|q| !q.rate_limit.is_off())
            .map(|q| (q.name.clone(), q.rate_limit.to_string()))
            .collect()
    }

    /// Parses TOML text; `path` only labels errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: parse_error::describe(text, e),
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
            self.overridden.push(("broker.url", ENV_BROKER));
        }
        if let Some(tokens) = var(ENV_TOKENS).filter(|v| !v.trim().is_empty()) {
            self.overridden.push(("auth.tokens", ENV_TOKENS));
            self.auth.tokens = tokens
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect();
        }
    }
}

pub use hopper_jobs::config::duration_str;
