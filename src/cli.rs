//! The command line (DESIGN §7): flags, and what each command does.
//!
//! `serve` and `worker` hand over to `crate::app`; `bench` to `crate::bench`. The inspection
//! commands (`enqueue`, `queues`, `jobs`, `job`, `retry`, `cancel`) talk to the broker
//! directly, so they work on a worker node with no API. Results go to stdout (`crate::out`),
//! logs and errors to stderr. Exit codes: 0 ok, 1 failure, 2 bad usage or bad config, 3 not
//! found ([`exit_code`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use hopper_workers::broker::JobFilter;
use hopper_workers::clock;
use hopper_workers::job::{JobId, JobState};
use hopper_workers::{Broker, BrokerError};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::bench::BenchArgs;
use crate::config::{Config, ConfigError, Loaded};
use crate::enqueue::{self, EnqueueRequest};
use crate::view::{self, JobPageView, JobView, JobWithHistory};
use crate::{app, out, shutdown};
use hopper_workers::job::link_chain;

/// Hopper: a durable job queue on SQLite or Redis.
#[derive(Debug, Parser)]
#[command(name = "hopper", version, about, propagate_version = true)]
pub struct Cli {
    /// Config file (default: ./config.toml, then /etc/hopper/config.toml, then built-in
    /// defaults).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API and the worker pool.
    Serve {
        /// Listen address, IP:PORT (overrides [server] listen).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Serve the API only; run no jobs in this process.
        #[arg(long)]
        no_workers: bool,
    },
    /// Run a worker node: the pool only, no API.
    Worker {
        /// Queues to take jobs from, comma-separated (overrides [worker] queues).
        #[arg(long, value_delimiter = ',', value_name = "A,B")]
        queues: Vec<String>,
        /// Jobs run at once (overrides [worker] concurrency).
        #[arg(long, value_name = "N")]
        concurrency: Option<usize>,
    },
    /// Enqueue a job; prints its id.
    Enqueue(EnqueueArgs),
    /// Show queues with their job counts by state.
    Queues {
        #[arg(long)]
        json: bool,
    },
    /// List jobs, newest first.
    Jobs {
        #[arg(long, value_name = "Q")]
        queue: Option<String>,
        /// queued, scheduled, running, retrying, dead, succeeded, cancelled or waiting.
        #[arg(long, value_name = "S", value_parser = parse_state)]
        state: Option<JobState>,
        #[arg(long, value_name = "K")]
        kind: Option<String>,
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: usize,
        /// Continue after a previous page (its next_cursor).
        #[arg(long)]
        cursor: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one job and its history.
    Job {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Put dead or cancelled jobs back in their queue; prints how many.
    Retry {
        #[arg(required_unless_present = "all_dead", value_name = "ID")]
        ids: Vec<String>,
        /// Every dead job (of --queue, or of all queues).
        #[arg(long, conflicts_with = "ids")]
        all_dead: bool,
        #[arg(long, requires = "all_dead", value_name = "Q")]
        queue: Option<String>,
    },
    /// Cancel jobs that have not finished.
    Cancel {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// Check a config file (default: the one `--config` or the search path picks).
    CheckConfig { path: Option<PathBuf> },
    /// Measure throughput (drain) or pickup latency on a broker.
    Bench(BenchArgs),
}

/// `hopper enqueue` flags.
#[derive(Debug, clap::Args)]
pub struct EnqueueArgs {
    /// The job kind, e.g. sys.noop.
    pub kind: String,
    /// The payload: a JSON object, or @FILE to read it from a file.
    #[arg(long, value_name = "JSON|@FILE")]
    pub payload: Option<String>,
    #[arg(long, value_name = "Q")]
    pub queue: Option<String>,
    /// 0 (most urgent) to 9; default 5.
    #[arg(long, value_name = "P")]
    pub priority: Option<u8>,
    /// Run no earlier than this from now, e.g. 30s.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub delay: Option<Duration>,
    #[arg(long, value_name = "N")]
    pub max_retries: Option<u32>,
    /// Per-attempt time limit, e.g. 5m.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// At most one job with this key exists; a duplicate prints the first job's id.
    #[arg(long, value_name = "KEY")]
    pub unique_key: Option<String>,
    /// A later step of a chain: KIND, or KIND=JSON, or KIND=@FILE. Repeat for more steps; each
    /// runs when the one before succeeds, with its result as `input`. Prints every step's id.
    #[arg(long, value_name = "KIND[=JSON|@FILE]")]
    pub then: Vec<String>,
}

/// Failures with their own exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Exit 2.
    #[error("{0}")]
    Usage(String),
    /// Exit 3.
    #[error("{0}")]
    NotFound(String),
}

/// The exit code for an error: 2 for bad usage or config, 3 for not found, else 1.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<ConfigError>() {
            return 2;
        }
        if let Some(e) = cause.downcast_ref::<CliError>() {
            return match e {
                CliError::Usage(_) => 2,
                CliError::NotFound(_) => 3,
            };
        }
        if let Some(BrokerError::NotFound(_)) = cause.downcast_ref::<BrokerError>() {
            return 3;
        }
    }
    1
}

impl Command {
    /// The log level when `RUST_LOG` is unset: daemons say what they do, one-shot commands
    /// keep stderr for problems.
    pub fn default_log_level(&self) -> &'static str {
        match self {
            Command::Serve { .. } | Command::Worker { .. } | Command::Bench(_) => "info",
            _ => "warn",
        }
    }
}

/// Runs the command.
pub async fn run(cli: Cli) -> Result<()> {
    if let Command::CheckConfig { path } = &cli.command {
        return check_config(path.as_deref().or(cli.config.as_deref()));
    }
    let Loaded { mut config, path } = Config::load(cli.config.as_deref())?;
    let origin = path.map_or_else(
        || "(built-in defaults)".to_owned(),
        |p| p.display().to_string(),
    );
    match cli.command {
        Command::Serve { listen, no_workers } => {
            if let Some(addr) = listen {
                config.server.listen = addr.to_string();
            }
            config.check(&origin)?;
            let addr = config.listen_addr()?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            app::serve(config, listener, on_signal(), no_workers).await
        }
        Command::Worker {
            queues,
            concurrency,
        } => {
            if !queues.is_empty() {
                config.worker.queues = queues;
            }
            if let Some(n) = concurrency {
                config.worker.concurrency = n;
            }
            config.check(&origin)?;
            app::worker(config, on_signal()).await
        }
        Command::Bench(args) => {
            config.check(&origin)?;
            crate::bench::run(args, &config, on_signal()).await
        }
        Command::CheckConfig { .. } => Ok(()),
        command => {
            config.check(&origin)?;
            let broker = app::open_broker(&config, clock::system()).await?;
            inspect(command, &config, broker).await
        }
    }
}

/// A token cancelled by the first Ctrl-C or SIGTERM. A second signal exits at once, for a
/// drain that takes longer than the operator will wait.
fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    // The process-level watcher: it lives as long as the process, so nothing awaits it.
    tokio::spawn(async move {
        shutdown::shutdown_signal().await;
        tracing::info!("shutting down (again to exit at once)");
        t.cancel();
        shutdown::shutdown_signal().await;
        tracing::warn!("second signal: exiting without waiting");
        std::process::exit(130);
    });
    token
}

fn check_config(path: Option<&std::path::Path>) -> Result<()> {
    let loaded = Config::load(path)?;
    loaded.config.check(&loaded.origin())?;
    out::line(format!("{}: ok", loaded.origin()))?;
    Ok(())
}

async fn inspect(command: Command, config: &Config, broker: Arc<dyn Broker>) -> Result<()> {
    match command {
        Command::Enqueue(args) => enqueue_cmd(args, config, broker.as_ref()).await,
        Command::Queues { json } => {
            let stats = view::merge_configured_queues(broker.queues().await?, config);
            if json {
                return Ok(out::json(&stats)?);
            }
            let rows: Vec<Vec<String>> = stats
                .iter()
                .map(|q| {
                    let c = &q.counts;
                    let mut row = vec![q.queue.clone()];
                    row.extend(
                        [
                            c.queued,
                            c.scheduled,
                            c.running,
                            c.retrying,
                            c.dead,
                            c.succeeded,
                        ]
                        .map(|n| n.to_string()),
                    );
                    row.push(if q.paused { "yes" } else { "" }.to_owned());
                    row
                })
                .collect();
            Ok(out::table(
                &[
                    "queue",
                    ">queued",
                    ">scheduled",
                    ">running",
                    ">retrying",
                    ">dead",
                    ">succeeded",
                    "paused",
                ],
                &rows,
            )?)
        }
        Command::Jobs {
            queue,
            state,
            kind,
            limit,
            cursor,
            json,
        } => {
            let page = broker
                .list(&JobFilter {
                    queue,
                    state,
                    kind,
                    limit,
                    cursor,
                })
                .await?;
            if json {
                return Ok(out::json(&JobPageView {
                    jobs: page.jobs.iter().map(JobView::from).collect(),
                    next_cursor: page.next_cursor,
                })?);
            }
            let rows: Vec<Vec<String>> = page
                .jobs
                .iter()
                .map(|j| {
                    vec![
                        j.id.to_string(),
                        j.queue.clone(),
                        j.kind.clone(),
                        j.state.to_string(),
                        j.priority.to_string(),
                        j.attempt.to_string(),
                        view::rfc3339(j.created_at),
                    ]
                })
                .collect();
            out::table(
                &[
                    "id", "queue", "kind", "state", ">prio", ">attempt", "created",
                ],
                &rows,
            )?;
            if let Some(c) = page.next_cursor {
                out::line(format!("(more: --cursor {c})"))?;
            }
            Ok(())
        }
        Command::Job { id, json } => {
            let id = JobId(id);
            let job = broker
                .get(&id)
                .await?
                .ok_or_else(|| CliError::NotFound(format!("job {id} not found")))?;
            let history = broker.history(&id).await?;
            let steps = match &job.chain {
                Some(link) => broker.chain(&link.id).await?,
                None => Vec::new(),
            };
            let shown = JobWithHistory::new(&job, &history).with_steps(&steps);
            if json {
                return Ok(out::json(&shown)?);
            }
            print_job(&shown)
        }
        Command::Retry {
            ids,
            all_dead,
            queue,
        } => {
            if all_dead {
                let n = broker.retry_all_dead(queue.as_deref()).await?;
                out::line(format!("{n} {} retried", plural(n)))?;
                return Ok(());
            }
            let broker = &broker;
            each(ids, "retried", |id| async move { broker.retry(&id).await }).await
        }
        Command::Cancel { ids } => {
            let broker = &broker;
            each(
                ids,
                "cancelled",
                |id| async move { broker.cancel(&id).await },
            )
            .await
        }
        Command::Serve { .. }
        | Command::Worker { .. }
        | Command::Bench(_)
        | Command::CheckConfig { .. } => Ok(()),
    }
}

/// Applies `op` to every id, reports each failure on stderr, prints how many succeeded.
/// Fails (exit 3 if every failure was a missing job, else 1) when any id failed.
async fn each<F, Fut>(ids: Vec<String>, verb: &str, op: F) -> Result<()>
where
    F: Fn(JobId) -> Fut,
    Fut: Future<Output = Result<hopper_workers::Job, BrokerError>>,
{
    let (mut done, mut missing, mut failed) = (0u64, 0u64, 0u64);
    for id in ids {
        match op(JobId(id.clone())).await {
            Ok(_) => done += 1,
            Err(BrokerError::NotFound(_)) => {
                missing += 1;
                eprint_line(&format!("job {id} not found"));
            }
            Err(e) => {
                failed += 1;
                eprint_line(&format!("{id}: {e}"));
            }
        }
    }
    out::line(format!("{done} {} {verb}", plural(done)))?;
    match (missing, failed) {
        (0, 0) => Ok(()),
        (m, 0) => Err(CliError::NotFound(format!("{m} {} not found", plural(m))).into()),
        (m, f) => bail!("{} {} not {verb}", m + f, plural(m + f)),
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "job" } else { "jobs" }
}

/// A message for the operator on stderr (results go to stdout).
fn eprint_line(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{msg}");
}

/// A payload flag's JSON, given inline or as @FILE.
fn read_payload(text: Option<&str>, flag: &str) -> Result<Value> {
    let Some(text) = text else {
        return Ok(serde_json::json!({}));
    };
    let (text, from) = match text.strip_prefix('@') {
        Some(file) => (
            std::fs::read_to_string(file)
                .with_context(|| format!("reading the payload file {file}"))?,
            format!(" in {file}"),
        ),
        None => (text.to_owned(), String::new()),
    };
    Ok(serde_json::from_str(&text)
        .map_err(|e| CliError::Usage(format!("{flag}: not valid JSON{from}: {e}")))?)
}

async fn enqueue_cmd(args: EnqueueArgs, config: &Config, broker: &dyn Broker) -> Result<()> {
    let payload = read_payload(args.payload.as_deref(), "--payload")?;
    let registry = app::build_registry(config)?;
    let req = EnqueueRequest {
        queue: args.queue,
        priority: args.priority,
        delay: args.delay,
        max_retries: args.max_retries,
        timeout: args.timeout,
        unique_key: args.unique_key,
        ..EnqueueRequest::new(args.kind, payload)
    };
    let now = view::now_ms();
    let job = enqueue::prepare(req, &registry, config.retry.max_retries, now)
        .map_err(|e| CliError::Usage(format!("{}: {}", flag_of(&e.field), e.message)))?;
    let mut steps = vec![job];
    for (i, step) in args.then.iter().enumerate() {
        let (kind, payload) = match step.split_once('=') {
            Some((kind, json)) => (kind, read_payload(Some(json), "--then")?),
            None => (step.as_str(), serde_json::json!({})),
        };
        let step = enqueue::prepare_step(
            EnqueueRequest::new(kind, payload),
            &format!("then[{i}]"),
            &steps[0].queue,
            &registry,
            config.retry.max_retries,
            now,
        )
        .map_err(|e| CliError::Usage(format!("--then {}: {}", e.field, e.message)))?;
        steps.push(step);
    }
    let done = broker.enqueue(link_chain(steps)).await?;
    let first = done
        .first()
        .context("the broker answered an enqueue with nothing")?;
    if !first.created {
        eprint_line("a job with this unique key exists already; its id:");
    }
    for step in done {
        out::line(step.id)?;
    }
    Ok(())
}

/// The flag (or argument) a request field came from, for messages.
fn flag_of(field: &str) -> String {
    match field {
        "kind" => "KIND".into(),
        "payload" => "--payload".into(),
        f if f.starts_with("payload.") => format!("--payload ({f})"),
        f => format!("--{}", f.replace('_', "-")),
    }
}

fn print_job(j: &JobWithHistory) -> Result<()> {
    let v = &j.job;
    let mut lines = vec![
        ("id", v.id.to_string()),
        ("kind", v.kind.clone()),
        ("queue", v.queue.clone()),
        ("state", v.state.to_string()),
        ("priority", v.priority.to_string()),
        (
            "attempt",
            format!("{} (max retries {})", v.attempt, v.max_retries),
        ),
        ("run at", v.run_at.clone()),
        ("created", v.created_at.clone()),
    ];
    let mut opt = |k: &'static str, val: Option<String>| {
        if let Some(val) = val {
            lines.push((k, val));
        }
    };
    opt("started", v.started_at.clone());
    opt("finished", v.finished_at.clone());
    opt(
        "progress",
        (v.progress > 0).then(|| match &v.progress_message {
            Some(m) => format!("{}% {m}", v.progress),
            None => format!("{}%", v.progress),
        }),
    );
    opt(
        "interruptions",
        (v.interruptions > 0).then(|| v.interruptions.to_string()),
    );
    opt("unique key", v.unique_key.clone());
    opt(
        "timeout",
        v.timeout_ms
            .map(|ms| humantime::format_duration(Duration::from_millis(ms)).to_string()),
    );
    opt("last error", v.last_error.clone());
    opt("result", v.result.as_ref().map(Value::to_string));
    lines.push(("payload", v.payload.to_string()));
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, val) in &lines {
        out::line(format!("{k:<width$}  {val}"))?;
    }
    if !j.steps.is_empty() {
        out::line("")?;
        out::line("chain:")?;
        for step in &j.steps {
            let here = if step.id == v.id { "  <- this job" } else { "" };
            out::line(format!(
                "  {}. {}  {}  {}{here}",
                step.index, step.kind, step.state, step.id
            ))?;
        }
    }
    out::line("")?;
    out::line("history:")?;
    let rows: Vec<Vec<String>> = j
        .history
        .iter()
        .map(|e| {
            let detail = [
                e.progress.map(|p| format!("{p}%")),
                e.message.clone(),
                e.error.clone(),
                e.result.as_ref().map(Value::to_string),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
            vec![
                e.at.clone(),
                e.kind_of_event.as_str().to_owned(),
                e.attempt.to_string(),
                detail,
            ]
        })
        .collect();
    out::table(&["at", "event", ">attempt", "detail"], &rows)?;
    Ok(())
}

fn parse_state(s: &str) -> Result<JobState, String> {
    JobState::parse(s).ok_or_else(|| {
        let names: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
        format!("one of {}", names.join(", "))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_usage_exits_2() {
        let err = Cli::try_parse_from(["hopper", "retry"])
            .map(|_| ())
            .unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err = Cli::try_parse_from(["hopper", "jobs", "--state", "sleeping"])
            .map(|_| ())
            .unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn exit_codes_follow_the_error() {
        let nf: anyhow::Error = CliError::NotFound("x".into()).into();
        assert_eq!(exit_code(&nf), 3);
        let nf: anyhow::Error = BrokerError::NotFound(JobId("x".into())).into();
        assert_eq!(exit_code(&nf.context("getting the job")), 3);
        let cfg: anyhow::Error = ConfigError::Invalid {
            origin: "c.toml".into(),
            problems: vec![],
        }
        .into();
        assert_eq!(exit_code(&cfg), 2);
        assert_eq!(exit_code(&anyhow::anyhow!("boom")), 1);
    }
}
