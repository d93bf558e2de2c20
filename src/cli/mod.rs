//! The command line (DESIGN §7): flags, and what each command does.
//!
//! `serve` and `worker` hand over to `crate::app`; `bench` to `crate::bench`; `chaos` to
//! `crate::chaos`. The inspection
//! commands (`enqueue`, `queues`, `jobs`, `job`, `retry`, `cancel`) talk to the broker
//! directly, so they work on a worker node with no API. Results go to stdout (`crate::out`),
//! logs and errors to stderr. Exit codes: 0 ok, 1 failure, 2 bad usage or bad config, 3 not
//! found, 4 a cancelled job for `tail --job` (`crate::exit`).
//!
//! - `enqueue`: `hopper enqueue`, through the same `crate::service` as `POST /v1/jobs`.
//! - `enqueue_file`: `hopper enqueue --file`, a newline-delimited JSON file of jobs in
//!   batches, as `POST /v1/jobs/batch` takes them.
//! - `publish`: `hopper publish`, through the same `crate::bus` as `POST /v1/publish`.
//! - `inspect`: `queues`, `jobs`, `job`, `retry`, `cancel`.
//! - `tail`: `hopper tail`, following the event stream of the broker or of a remote node.
//! - `workers`: `hopper workers`, the worker nodes registered in the broker.

mod enqueue;
mod enqueue_file;
mod inspect;
mod publish;
mod queue_ctl;
mod tail;
mod workers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use hopper_workers::clock;
use hopper_workers::job::JobState;
use tokio_util::sync::CancellationToken;

use crate::bench::BenchArgs;
use crate::chaos::ChaosArgs;
use crate::config::{Config, Loaded};
pub use crate::exit::{CliError, exit_code};
use crate::{app, out, shutdown};

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
        /// Offer `chaos.ledger`, writing its ledger in DIR: set by `hopper chaos` only.
        #[arg(long, hide = true, value_name = "DIR")]
        chaos_ledger: Option<PathBuf>,
    },
    /// Run a worker node: the pool only, no API.
    Worker {
        /// Queues to take jobs from, comma-separated, each with an optional weight
        /// (`critical:6,default:2,low`: a queue of weight 6 is asked first three times as often
        /// as one of weight 2; no weight is 1). Overrides [worker] queues.
        #[arg(long, value_delimiter = ',', value_name = "A[:W],B[:W]")]
        queues: Vec<String>,
        /// Jobs run at once, 1 to 10000 (overrides [worker] concurrency).
        #[arg(long, value_name = "N")]
        concurrency: Option<usize>,
        /// Offer `chaos.ledger`, writing its ledger in DIR: set by `hopper chaos` only.
        #[arg(long, hide = true, value_name = "DIR")]
        chaos_ledger: Option<PathBuf>,
    },
    /// Enqueue a job; prints its id. With --file, every job of a newline-delimited JSON file.
    Enqueue(EnqueueArgs),
    /// Publish an event: one job per matching [[subscription]]; prints each job's id.
    Publish(publish::PublishArgs),
    /// Show queues with their job counts by state.
    Queues {
        #[arg(long)]
        json: bool,
    },
    /// List the worker nodes heard from in the last minute: host, pid, queues, kinds, busy
    /// slots, last seen.
    Workers {
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
        /// Jobs per page, 1 to 1000.
        #[arg(long, value_name = "N", default_value_t = 50, value_parser = parse_limit)]
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
    // Job ids or --all-dead, one of the two: a bare `hopper retry` names both in its error.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["ids", "all_dead"])))]
    Retry {
        #[arg(value_name = "ID")]
        ids: Vec<String>,
        /// Every dead job (of --queue, or of all queues).
        #[arg(long)]
        all_dead: bool,
        /// With --all-dead: only this queue's dead jobs.
        #[arg(long, requires = "all_dead", value_name = "Q")]
        queue: Option<String>,
    },
    /// Cancel jobs that have not finished.
    Cancel {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// Pause a queue on every node: its jobs wait (new ones are still accepted) until resumed.
    Pause {
        #[arg(value_name = "QUEUE")]
        queue: String,
    },
    /// Resume a paused queue: its jobs run again.
    Resume {
        #[arg(value_name = "QUEUE")]
        queue: String,
    },
    /// Follow the event stream: one line per event, as it happens. With --job, exit with how
    /// the job ended: 0 succeeded, 1 dead, 4 cancelled.
    Tail(tail::TailArgs),
    /// Check a config file (default: the one `--config` or the search path picks).
    CheckConfig { path: Option<PathBuf> },
    /// Measure throughput (drain) or pickup latency on a broker.
    Bench(BenchArgs),
    /// Run a fault campaign on processes of its own (a private broker, an API, N workers):
    /// kill, stop and restart them while jobs run, then print a ledger of lost and duplicated
    /// jobs as one JSON line. Exits 1 when a job was lost or completed twice unexplained.
    Chaos(ChaosArgs),
}

/// `hopper enqueue` flags.
#[derive(Debug, clap::Args)]
pub struct EnqueueArgs {
    /// The job kind, e.g. sys.noop.
    #[arg(required_unless_present = "file")]
    pub kind: Option<String>,
    /// Enqueue every line of this newline-delimited JSON file (`-`: stdin) instead, one job a
    /// line as `POST /v1/jobs` takes it, in batches of `[server] max_batch`. A bad line stops
    /// the run (exit 2) naming the line; the batches before its own stay enqueued.
    #[arg(
        long,
        value_name = "PATH|-",
        conflicts_with_all = [
            "kind", "payload", "queue", "priority", "delay", "max_retries", "timeout",
            "unique_key", "then",
        ],
    )]
    pub file: Option<String>,
    /// The payload: a JSON object, or @FILE to read it from a file.
    #[arg(long, value_name = "JSON|@FILE")]
    pub payload: Option<String>,
    #[arg(long, value_name = "Q")]
    pub queue: Option<String>,
    // The numbers and durations take values starting with '-' (`--delay -5s`), so that a
    // negative one is refused by their parser, naming the flag, rather than read as a flag.
    /// 0 (most urgent) to 9; default 5.
    #[arg(long, value_name = "P", allow_hyphen_values = true)]
    pub priority: Option<u8>,
    /// Run no earlier than this from now, e.g. 30s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    pub delay: Option<Duration>,
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub max_retries: Option<u32>,
    /// Per-attempt time limit, e.g. 5m.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    pub timeout: Option<Duration>,
    /// At most one job with this key exists; a duplicate prints the first job's id.
    #[arg(long, value_name = "KEY")]
    pub unique_key: Option<String>,
    /// A later step of a chain: KIND, or KIND=JSON, or KIND=@FILE. Repeat for more steps; each
    /// runs when the one before succeeds, with its result as `input`. Prints every step's id.
    #[arg(long, value_name = "KIND[=JSON|@FILE]")]
    pub then: Vec<String>,
}

impl Command {
    /// The log level when `RUST_LOG` is unset: daemons say what they do, one-shot commands
    /// keep stderr for problems.
    pub fn default_log_level(&self) -> &'static str {
        match self {
            Command::Serve { .. }
            | Command::Worker { .. }
            | Command::Bench(_)
            | Command::Chaos(_) => "info",
            _ => "warn",
        }
    }
}

/// Runs the command.
pub async fn run(cli: Cli) -> Result<()> {
    if let Command::CheckConfig { path } = &cli.command {
        return check_config(path.as_deref().or(cli.config.as_deref()));
    }
    // The campaign writes the config of its own processes; it reads none.
    if let Command::Chaos(args) = cli.command {
        return crate::chaos::run(args, on_signal()).await;
    }
    let Loaded { mut config, path } = Config::load(cli.config.as_deref())?;
    let origin = path.map_or_else(
        || "(built-in defaults)".to_owned(),
        |p| p.display().to_string(),
    );
    match cli.command {
        Command::Serve {
            listen,
            no_workers,
            chaos_ledger,
        } => {
            if let Some(addr) = listen {
                config.server.listen = addr.to_string();
            }
            let mut settings = config.check(&origin)?;
            settings.chaos_ledger = chaos_ledger;
            let addr = settings.listen;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            let hurry = CancellationToken::new();
            // An API-only node has no running job to hand back: a second signal ends it at
            // once rather than allowing it the release's time.
            let shutdown = on_signals((!no_workers).then(|| hurry.clone()));
            app::serve(settings, listener, shutdown, hurry, no_workers).await
        }
        Command::Worker {
            queues,
            concurrency,
            chaos_ledger,
        } => {
            if !queues.is_empty() {
                config.worker.queues = queues;
            }
            if let Some(n) = concurrency {
                config.worker.concurrency = n;
            }
            let mut settings = config.check(&origin)?;
            settings.chaos_ledger = chaos_ledger;
            let hurry = CancellationToken::new();
            let shutdown = on_signals(Some(hurry.clone()));
            app::worker(settings, shutdown, hurry).await
        }
        Command::Bench(args) => {
            // Checked with the rest of the config (exit 2, naming the flag), as HOPPER_BROKER
            // is: applied after the check, a bad URL was a broker error (exit 1).
            if let Some(url) = &args.broker {
                config.broker.url.clone_from(url);
                config.overridden.retain(|(key, _)| *key != "broker.url");
                config.overridden.push(("broker.url", "--broker"));
            }
            crate::bench::run(args, &config.check(&origin)?, on_signal()).await
        }
        Command::CheckConfig { .. } | Command::Chaos(_) => Ok(()),
        command @ (Command::Pause { .. } | Command::Resume { .. }) => {
            let settings = config.check(&origin)?;
            inspect::refuse_missing_database(&settings.config.broker.url, &origin)?;
            let broker = app::open_broker(&settings.config, clock::system()).await?;
            queue_ctl::run(command, &settings, broker).await
        }
        Command::Workers { json } => {
            let settings = config.check(&origin)?;
            inspect::refuse_missing_database(&settings.config.broker.url, &origin)?;
            let broker = app::open_broker(&settings.config, clock::system()).await?;
            workers::run(&*broker, json).await
        }
        Command::Tail(args) if args.server.is_some() => tail::run_remote(args).await,
        Command::Tail(args) => {
            let settings = config.check(&origin)?;
            inspect::refuse_missing_database(&settings.config.broker.url, &origin)?;
            // Opened by `tail`, which waits for a broker that cannot be reached yet.
            tail::run_local(args, &settings.config).await
        }
        Command::Publish(args) => {
            let settings = config.check(&origin)?;
            inspect::warn_new_database(&settings.config.broker.url, &origin);
            let broker = app::open_broker(&settings.config, clock::system()).await?;
            publish::run(args, &settings, broker).await
        }
        command => {
            let settings = config.check(&origin)?;
            if matches!(command, Command::Enqueue(_)) {
                inspect::warn_new_database(&settings.config.broker.url, &origin);
            } else {
                inspect::refuse_missing_database(&settings.config.broker.url, &origin)?;
            }
            let broker = app::open_broker(&settings.config, clock::system()).await?;
            inspect::run(command, &settings, broker).await
        }
    }
}

/// A token cancelled by the first Ctrl-C or SIGTERM.
fn on_signal() -> CancellationToken {
    on_signals(None)
}

/// How long a second signal leaves the node to hand its running jobs back (one broker write)
/// before the process exits regardless.
const HURRY_LIMIT: Duration = Duration::from_secs(10);

/// A token cancelled by the first Ctrl-C or SIGTERM. A second signal is for a drain that takes
/// longer than the operator will wait: with `hurry`, it cancels `hurry` (a node then releases
/// its running jobs at once and exits: jobs left leased would sit `running` until their lease
/// ran out and be counted as interrupted), and exits after [`HURRY_LIMIT`] if the node has not
/// by then; without, it exits at once.
fn on_signals(hurry: Option<CancellationToken>) -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    // The process-level watcher: it lives as long as the process, so nothing awaits it.
    tokio::spawn(async move {
        shutdown::shutdown_signal().await;
        tracing::info!("shutting down (again to stop without waiting)");
        t.cancel();
        shutdown::shutdown_signal().await;
        if let Some(hurry) = hurry {
            tracing::warn!("second signal: stopping without waiting for running jobs");
            hurry.cancel();
            tokio::time::sleep(HURRY_LIMIT).await;
            tracing::warn!(limit = ?HURRY_LIMIT, "still not stopped: exiting");
        } else {
            tracing::warn!("second signal: exiting without waiting");
        }
        std::process::exit(130);
    });
    token
}

fn check_config(path: Option<&std::path::Path>) -> Result<()> {
    let loaded = Config::load(path)?;
    let settings = loaded.config.check(&loaded.origin())?;
    // Built as `serve` builds it (without a broker), so a setting only a job kind can judge
    // (`smtp.url`) is refused here too, not first at start.
    let registry = app::build_registry(&settings, None)?;
    app::check_kinds(&settings, &registry)?;
    out::line(format!("{}: ok", loaded.origin()))?;
    Ok(())
}

/// A duration such as `30s`; a negative one is refused as such.
fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim_start().starts_with('-') {
        return Err("must not be negative".to_owned());
    }
    humantime::parse_duration(s.trim()).map_err(|e| format!("{e}; write e.g. 500ms, 30s, 5m"))
}

/// A page size, as `GET /v1/jobs` takes it: 1 to 1000.
fn parse_limit(s: &str) -> Result<usize, String> {
    // The API's own page limit: the CLI and `GET /v1/jobs` take the same range.
    use crate::api::MAX_LIMIT;
    s.parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| format!("must be an integer from 1 to {MAX_LIMIT}"))
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
        for (flag, value, says) in [
            ("--delay", "-5s", "negative"),
            ("--timeout", "-1m", "negative"),
            ("--delay", "soon", "--delay"),
            ("--priority", "-1", "--priority"),
            ("--max-retries", "-1", "--max-retries"),
        ] {
            let err = Cli::try_parse_from(["hopper", "enqueue", "sys.noop", flag, value])
                .map(|_| ())
                .unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{flag} {value}"
            );
            assert!(err.to_string().contains(says), "{flag} {value}: {err}");
        }
        let err = Cli::try_parse_from(["hopper", "bench", "--jobs", "0"])
            .map(|_| ())
            .unwrap_err();
        assert_eq!(err.exit_code(), 2);
        for limit in ["0", "1001", "-1", "x"] {
            let err = Cli::try_parse_from(["hopper", "jobs", "--limit", limit])
                .map(|_| ())
                .unwrap_err();
            assert_eq!(err.exit_code(), 2, "--limit {limit}");
        }
    }
}
