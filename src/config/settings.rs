//! The one check of a config: [`Config::settings`] walks every section, reports every
//! problem at once (each starting with the key it is about), and returns [`Settings`]: the
//! values the rest of the shell needs, parsed here and nowhere else.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use hopper_workers::job::valid_name;
use hopper_workers::pool::{MAX_CONCURRENCY, MAX_WEIGHT, PoolConfig, QueueSpec};
use hopper_workers::retry::RetryPolicy;
use hopper_workers::schedule::{self, Schedule};

use super::{
    Config, ConfigError, MAINTENANCE_QUEUE, MAX_BATCH, QueueConfig, RateLimit, ScheduleConfig,
    queue_entry, shown_url,
};

/// The longest `[[schedule]] name`, in bytes: `schedule:NAME` must fit a broker cursor name.
const MAX_SCHEDULE_NAME: usize = 100;

/// A checked config and what was parsed from it.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The config as written (after environment overrides).
    pub config: Config,
    /// `[server] listen`.
    pub listen: SocketAddr,
    /// `[worker] metrics_listen`: where `hopper worker` serves `GET /metrics`, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// The pool's settings: `[worker]`, `[[queue]]` and `[retry]`.
    pub pool: PoolConfig,
    /// The `[[schedule]]` entries.
    pub schedules: Vec<Schedule>,
    /// The built-in retention schedule (`[retention] cron`).
    pub retention: Schedule,
    /// The job kinds' settings: `[files]`, `[smtp]`, `[etl]`, `[http]`.
    pub jobs: hopper_jobs::JobsConfig,
    /// Where the `chaos.ledger` kind writes, in the processes `hopper chaos` starts (their
    /// hidden `--chaos-ledger DIR` flag, never the config file); `None` everywhere else, and
    /// then the kind is not offered.
    pub chaos_ledger: Option<std::path::PathBuf>,
    /// The `[[subscription]]` entries (their kinds are checked against the registry when a
    /// node starts: `crate::app::check_kinds`).
    pub bus: crate::bus::Bus,
}

impl Config {
    /// Checks the whole config once and returns what later code needs; on failure, every
    /// problem, each starting with the key it is about.
    pub fn settings(&self) -> Result<Settings, Vec<String>> {
        let mut p = Vec::new();
        let listen = self.check_server(&mut p);
        self.check_broker(&mut p);
        let served = self.check_worker(&mut p);
        let metrics_listen = self.check_metrics_listen(&mut p);
        let jobs = self.jobs_config();
        p.extend(jobs.problems());
        let retention = Schedule::new(self.retention_schedule())
            .map_err(|e| p.push(format!("retention.cron: {}", e.message)))
            .ok();
        let schedules = self.check_schedules(&mut p);
        let bus = crate::bus::Bus::compile(&self.subscriptions, &mut p);
        self.check_queues(&mut p);
        self.check_retry(&mut p);
        for (i, t) in self.auth.tokens.iter().enumerate() {
            if t.is_empty() || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
                p.push(format!(
                    "auth.tokens[{i}]: must be non-empty, without spaces or control characters"
                ));
            }
        }
        // A variable of separators only (`HOPPER_TOKENS=","`) names no token: taken as set,
        // it turned auth off whatever the file said.
        if self.auth.tokens.is_empty() && self.overridden.iter().any(|(k, _)| *k == "auth.tokens") {
            p.push(
                "auth.tokens: names no token (only separators); unset the variable to keep \
                    the file's tokens"
                    .into(),
            );
        }
        if let Err(e) = crate::notify::jwt::Verifier::from_config(&self.auth) {
            p.push(e);
        }
        if self.retention.events == 0 {
            p.push("retention.events: must be at least 1".into());
        }
        self.name_overrides(&mut p);
        match (listen, retention) {
            (Some(listen), Some(retention)) if p.is_empty() => Ok(Settings {
                config: self.clone(),
                listen,
                metrics_listen,
                pool: self.pool_config(served),
                schedules,
                retention,
                jobs,
                chaos_ledger: None,
                bus,
            }),
            _ => Err(p),
        }
    }

    /// Marks each problem with a key an environment variable set (`broker.url (set by
    /// HOPPER_BROKER): ...`), so that the operator looks at the variable, not the file.
    fn name_overrides(&self, problems: &mut [String]) {
        for problem in problems.iter_mut() {
            let Some((key, var)) = self.overridden.iter().find(|(key, _)| {
                problem
                    .strip_prefix(key)
                    .is_some_and(|rest| rest.starts_with([':', '[']))
            }) else {
                continue;
            };
            let (head, rest) = problem.split_at(key.len());
            // `auth.tokens[0]: ...` keeps its index before the note.
            let (index, rest) = rest.split_at(rest.find(':').unwrap_or(0));
            *problem = format!("{head}{index} (set by {var}){rest}");
        }
    }

    /// [`Config::settings`], the problems only.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        self.settings().map(drop)
    }

    /// [`Config::settings`], its problems as a [`ConfigError`] labelled with where the config
    /// came from.
    pub fn check(&self, origin: &str) -> Result<Settings, ConfigError> {
        self.settings().map_err(|problems| ConfigError::Invalid {
            origin: origin.to_owned(),
            problems,
        })
    }

    fn check_server(&self, p: &mut Vec<String>) -> Option<SocketAddr> {
        if self.server.body_limit == 0 {
            p.push("server.body_limit: must be greater than 0".into());
        }
        if !(1..=MAX_BATCH).contains(&self.server.max_batch) {
            // One batch is one SQLite transaction: a huge one would hold the writer, and every
            // other write, for as long as it takes.
            p.push(format!("server.max_batch: must be from 1 to {MAX_BATCH}"));
        }
        if self.server.max_connections == 0 {
            p.push("server.max_connections: must be greater than 0".into());
        }
        if self.server.rate_limit_burst == Some(0) {
            p.push("server.rate_limit_burst: must be at least 1".into());
        } else if self.server.rate_limit_burst.is_some() && self.server.rate_limit == RateLimit::Off
        {
            // A burst of no rate limits nothing: whoever set it believes the API is limited.
            p.push(
                "server.rate_limit_burst: set while server.rate_limit is \"off\"; set a \
                 rate_limit too, or remove the burst"
                    .into(),
            );
        }
        if self.server.ws_ping_interval < Duration::from_secs(1) {
            // Faster pings would drop healthy clients on a busy network for nothing.
            p.push("server.ws_ping_interval: must be at least \"1s\"".into());
        }
        match self.server.listen.parse::<SocketAddr>() {
            Err(_) => {
                p.push(format!(
                    "server.listen: {:?} is not IP:PORT (e.g. \"127.0.0.1:8080\")",
                    self.server.listen
                ));
                None
            }
            Ok(addr) if !addr.ip().is_loopback() && self.auth.tokens.is_empty() => {
                p.push(format!(
                    "server.listen: {addr} is not a loopback address and [auth] tokens is \
                     empty; set tokens (or HOPPER_TOKENS) before exposing the API"
                ));
                None
            }
            Ok(addr) => Some(addr),
        }
    }

    /// `[worker] metrics_listen`: an address, loopback unless tokens guard it (the same rule
    /// as `[server] listen`).
    fn check_metrics_listen(&self, p: &mut Vec<String>) -> Option<SocketAddr> {
        if self.worker.metrics_max_label_values == 0 {
            p.push("worker.metrics_max_label_values: must be at least 1".into());
        }
        let listen = self.worker.metrics_listen.as_deref()?;
        match listen.parse::<SocketAddr>() {
            Err(_) => {
                p.push(format!(
                    "worker.metrics_listen: {listen:?} is not IP:PORT (e.g. \"127.0.0.1:9464\")"
                ));
                None
            }
            Ok(addr) if !addr.ip().is_loopback() && self.auth.tokens.is_empty() => {
                p.push(format!(
                    "worker.metrics_listen: {addr} is not a loopback address and [auth] tokens \
                     is empty; set tokens (or HOPPER_TOKENS) before exposing /metrics"
                ));
                None
            }
            Ok(addr) => Some(addr),
        }
    }

    fn check_broker(&self, p: &mut Vec<String>) {
        let url = &self.broker.url;
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                p.push("broker.url: sqlite:// needs a path, e.g. sqlite://data/hopper.db".into());
            }
        } else if let Some(nodes) = url
            .strip_prefix("redis-cluster://")
            .or_else(|| url.strip_prefix("rediss-cluster://"))
        {
            if let Err(why) = check_cluster_nodes(nodes) {
                p.push(format!(
                    "broker.url: {why}; expected \
                     redis-cluster://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]"
                ));
            }
        } else if url.starts_with("redis://") || url.starts_with("rediss://") {
            // Parsed as the broker will parse it, without connecting, so a bad port or
            // database number is a config problem here rather than a failure at start.
            if let Err(e) = redis::Client::open(url.as_str()) {
                p.push(format!(
                    "broker.url: {:?} is not a usable Redis URL ({e}); expected \
                     redis://[USER:PASSWORD@]HOST:PORT/DB",
                    shown_url(url)
                ));
            }
        } else {
            p.push(format!(
                "broker.url: {:?} is not sqlite://PATH, redis://HOST:PORT/DB or \
                 redis-cluster://HOST:PORT,HOST:PORT",
                shown_url(url)
            ));
        }
        if !valid_name(&self.broker.prefix) {
            p.push(format!(
                "broker.prefix: {:?} must be 1 to 64 letters, digits, '-', '_' or '.'",
                self.broker.prefix
            ));
        }
    }

    /// `[worker]`; returns the queues served, each with its weight.
    fn check_worker(&self, p: &mut Vec<String>) -> Vec<(String, u32)> {
        let w = &self.worker;
        if let Some(problem) = concurrency_problem(w.concurrency) {
            p.push(format!("worker.concurrency: {problem}"));
        }
        if w.queues.is_empty() {
            p.push("worker.queues: must name at least one queue".into());
        }
        let mut seen = HashSet::new();
        let mut served = Vec::with_capacity(w.queues.len());
        for entry in &w.queues {
            match weighted_queue(entry) {
                Err(why) => p.push(format!("worker.queues: {why}")),
                Ok((name, _)) if !seen.insert(name) => {
                    p.push(format!("worker.queues: {name:?} is listed twice"));
                }
                Ok((name, weight)) => served.push((name.to_owned(), weight)),
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
        served
    }

    fn check_schedules(&self, p: &mut Vec<String>) -> Vec<Schedule> {
        let mut schedules = Vec::new();
        let mut seen = HashSet::new();
        for (i, sc) in self.schedules.iter().enumerate() {
            if sc.name.is_empty() {
                p.push(format!("schedule[{i}].name: is required"));
            } else if sc.name.len() > MAX_SCHEDULE_NAME {
                // The name is part of the broker cursor that remembers its last tick.
                // Bytes, as the broker counts cursor names: say so, or a name of 60 'é'
                // would be refused for "100 characters".
                p.push(format!(
                    "schedule[{i}].name: must be at most {MAX_SCHEDULE_NAME} bytes of UTF-8, \
                     not {}",
                    sc.name.len()
                ));
            } else if sc.name.trim().is_empty() || sc.name.chars().any(char::is_control) {
                // The name is in every tick's job key and in logs: a blank one names nothing.
                p.push(format!(
                    "schedule[{i}].name: {:?}: must not be blank or hold control characters",
                    sc.name
                ));
            } else if sc.name.starts_with("hopper.") {
                // Hopper's own schedules (`hopper.retention`) keep their last tick under
                // their name: one of the config's would move the built-in's cursor.
                p.push(format!(
                    "schedule[{i}].name: {:?}: names starting with \"hopper.\" are Hopper's own",
                    sc.name
                ));
            } else if !seen.insert(sc.name.as_str()) {
                p.push(format!(
                    "schedule[{i}].name: {:?} is declared twice",
                    sc.name
                ));
            }
            if sc.kind.is_empty() {
                p.push(format!("schedule[{i}].kind: is required"));
            }
            match Schedule::new(self.schedule_spec(sc)) {
                Ok(s) => schedules.push(s),
                Err(e) => p.push(format!("schedule[{i}].cron: {}", e.message)),
            }
            if let Some(why) = sc
                .queue
                .as_deref()
                .and_then(|q| job_queue_problem(q, &sc.kind))
            {
                p.push(format!("schedule[{i}].queue: {why}"));
            }
            if sc.priority.is_some_and(|pr| pr > 9) {
                p.push(format!("schedule[{i}].priority: must be 0 to 9"));
            }
        }
        schedules
    }

    fn check_queues(&self, p: &mut Vec<String>) {
        let mut seen = HashSet::new();
        for (i, q) in self.queues.iter().enumerate() {
            if !valid_name(&q.name) {
                p.push(format!(
                    "queue[{i}].name: {:?} must be 1 to 64 letters, digits, '-', '_' or '.'",
                    q.name
                ));
            } else if q.name == MAINTENANCE_QUEUE {
                // Every pool serves it one job at a time whatever is set here (`pool_config`).
                p.push(format!(
                    "queue[{i}].name: {MAINTENANCE_QUEUE} is Hopper's own queue; its settings \
                     are fixed (one job at a time on every node)"
                ));
            } else if !seen.insert(q.name.as_str()) {
                p.push(format!("queue[{i}].name: {:?} is declared twice", q.name));
            }
            if let Some(problem) = q.concurrency.and_then(concurrency_problem) {
                p.push(format!("queue[{i}].concurrency: {problem}"));
            }
        }
    }

    fn check_retry(&self, p: &mut Vec<String>) {
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
    }

    /// The job kinds' settings (`[files]`, `[smtp]`, `[etl]`, `[http]`, `[notify]`).
    fn jobs_config(&self) -> hopper_jobs::JobsConfig {
        hopper_jobs::JobsConfig {
            files: self.files.clone(),
            smtp: self.smtp.clone(),
            etl: self.etl.clone(),
            http: self.http.clone(),
            notify: self.notify.clone(),
        }
    }

    /// The built-in retention schedule: `hopper.retention` on the maintenance queue, per
    /// `[retention] cron`.
    fn retention_schedule(&self) -> schedule::ScheduleSpec {
        hopper_workers::retention::Retention::schedule(&self.retention.cron, self.retry.max_retries)
    }

    /// The engine's definition of a `[[schedule]]` entry.
    fn schedule_spec(&self, sc: &ScheduleConfig) -> schedule::ScheduleSpec {
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
                .unwrap_or_else(|| hopper_workers::retention::queue_for(&sc.kind).to_owned()),
            priority: sc.priority.unwrap_or(hopper_workers::job::DEFAULT_PRIORITY),
            max_retries: self.retry.max_retries,
        }
    }

    /// The retry policy of the pool.
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            base: self.retry.backoff_base,
            max: self.retry.backoff_max,
            jitter: true,
        }
    }

    /// The pool's settings: `[worker]` (its queues as `check_worker` parsed them:
    /// names and weights), the `[[queue]]` entries of the queues it serves, and `[retry]`.
    fn pool_config(&self, served: Vec<(String, u32)>) -> PoolConfig {
        let queues = served
            .into_iter()
            // Served below, as every pool serves it: named in `[worker] queues` too, it was a
            // second entry, without the one-slot cap, so retention jobs could run side by side.
            .filter(|(name, _)| name != MAINTENANCE_QUEUE)
            .map(|(name, weight)| {
                let q = self.queue(&name);
                QueueSpec {
                    concurrency: q.and_then(|q| q.concurrency),
                    paused: q.is_some_and(|q| q.paused),
                    rate: q.and_then(|q| q.rate_limit.job_rate()),
                    weight,
                    name,
                }
            })
            // One slot at most, and the least weight: it holds a job a minute or so.
            .chain(std::iter::once(QueueSpec {
                name: MAINTENANCE_QUEUE.to_owned(),
                concurrency: Some(1),
                paused: false,
                rate: None,
                weight: 1,
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
            unknown_kind_grace: self.worker.unknown_kind_grace,
            ..PoolConfig::default()
        }
    }

    /// The `[[queue]]` entry of `name`, if declared.
    pub fn queue(&self, name: &str) -> Option<&QueueConfig> {
        self.queues.iter().find(|q| q.name == name)
    }
}

/// What is wrong with `queue` as the queue of a config's job of `kind` (a `[[schedule]]`'s,
/// a `[[subscription]]`'s): a name no queue can have, or Hopper's maintenance queue for a
/// kind not Hopper's own (`hopper_workers::retention::client_may_use`).
pub(crate) fn job_queue_problem(queue: &str, kind: &str) -> Option<String> {
    if !valid_name(queue) {
        Some(format!("{queue:?} is not a valid queue name"))
    } else if let Err(e) = hopper_workers::job::check_new_queue(queue) {
        // Only dots: the queue could not be named in a URL, and no job is made on it.
        Some(format!("{queue:?} {}", e.message))
    } else if !hopper_workers::retention::client_may_use(queue, kind) {
        Some(hopper_workers::retention::maintenance_refusal(kind))
    } else {
        None
    }
}

/// An entry of `[worker] queues`, `NAME` or `NAME:WEIGHT`, as the queue's name and weight (1
/// when none is given); or the problem with it, after the key.
fn weighted_queue(entry: &str) -> Result<(&str, u32), String> {
    let (name, weight) = queue_entry(entry);
    if !valid_name(name) {
        return Err(match weight {
            None => format!("{entry:?} must be 1 to 64 letters, digits, '-', '_' or '.'"),
            Some(_) => format!(
                "{entry:?}: the queue name {name:?} must be 1 to 64 letters, digits, '-', '_' \
                 or '.', then optionally ':' and a weight"
            ),
        });
    }
    let Some(weight) = weight else {
        return Ok((name, 1));
    };
    // Digits only: `u32::from_str` would also take a sign ("+2").
    let parsed = Some(weight)
        .filter(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|w| w.parse::<u32>().ok())
        .filter(|w| (1..=MAX_WEIGHT).contains(w));
    parsed.map(|w| (name, w)).ok_or_else(|| {
        format!(
            "{entry:?}: the weight after ':' must be a whole number from 1 to {MAX_WEIGHT} \
             (e.g. \"critical:6\")"
        )
    })
}

/// Checks the part of a `redis-cluster://` URL after the scheme: optional credentials, then
/// one or more `HOST:PORT` separated by commas, and at most a trailing `/` or `/0` (a cluster
/// has one database). The message never repeats the credentials.
fn check_cluster_nodes(rest: &str) -> Result<(), String> {
    let hosts = rest.rfind('@').map_or(rest, |at| &rest[at + 1..]);
    let hosts = match hosts.split_once('/') {
        Some((h, "" | "0")) => h,
        Some(_) => return Err("a Redis Cluster has only database 0".into()),
        None => hosts,
    };
    for node in hosts.split(',') {
        let ok = node
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !ok {
            return Err(format!("Redis Cluster node {node:?} is not HOST:PORT"));
        }
    }
    Ok(())
}

/// What is wrong with a concurrency (`[worker]`'s or a queue's), if anything.
fn concurrency_problem(n: usize) -> Option<String> {
    if n == 0 {
        Some("must be at least 1".into())
    } else if n > MAX_CONCURRENCY {
        Some(format!("{n} is more than the maximum, {MAX_CONCURRENCY}"))
    } else {
        None
    }
}
