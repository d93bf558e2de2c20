//! `hopper chaos`: a fault campaign on this machine that prints a ledger of lost and
//! duplicated jobs (issue 13).
//!
//! The campaign starts its own broker, `hopper serve --no-workers` and N `hopper worker`
//! processes (`procs`), enqueues M `chaos.ledger` jobs (`kind`) through the API (`client`),
//! and while they run, kills, stops and restarts processes (`faults`). At the end it holds
//! every acknowledged job against the ledger the jobs wrote and against the broker
//! (`ledger`), counts the stale writes the workers saw refused (`logs`), and prints one JSON
//! line (`report`). Progress goes to stderr.
//!
//! This module owns the flags and the campaign's course: start, load, faults until every
//! acknowledged job is finished (or `--duration` runs out), check, and tear down on every
//! path, Ctrl-C included.

mod client;
mod faults;
mod kind;
mod ledger;
mod logs;
mod procs;
mod report;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hopper_workers::Registry;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

pub use report::Report;

use crate::exit::CliError;
use client::Api;
use faults::Faults;
use procs::Cluster;

/// Which broker a campaign runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Broker {
    /// A temporary SQLite file.
    Sqlite,
    /// A private `redis-server` from PATH, AOF on with `appendfsync always`.
    Redis,
}

impl Broker {
    fn name(self) -> &'static str {
        match self {
            Broker::Sqlite => "sqlite",
            Broker::Redis => "redis",
        }
    }
}

/// `hopper chaos` flags.
#[derive(Clone, Debug, clap::Args)]
pub struct ChaosArgs {
    /// The broker to start and torment.
    #[arg(long, value_enum)]
    pub broker: Broker,
    /// Jobs to enqueue.
    #[arg(long, default_value_t = 10_000)]
    pub jobs: u64,
    /// Worker processes (at most 64: each is a whole `hopper worker` process on this machine).
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// Jobs each worker runs at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Give up waiting for the jobs after this long (the ledger is still checked and
    /// printed; unfinished jobs count as lost).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    pub duration: Duration,
    /// Seed of the random choices (job lengths, which worker, when); default: from the
    /// clock, and printed.
    #[arg(long)]
    pub seed: Option<u64>,
}

/// Registers `chaos.ledger`, writing into `dir`: only in the processes a campaign starts
/// (their hidden `--chaos-ledger DIR` flag).
pub fn register_ledger(registry: &mut Registry, dir: &Path) -> Result<()> {
    kind::register(registry, dir)
}

/// The most worker processes a campaign starts: one machine's worth (100,000 were accepted,
/// and froze the machine starting them).
const MAX_WORKERS: usize = 64;

/// How often the campaign looks at the jobs' progress.
const POLL: Duration = Duration::from_millis(100);

/// Runs a campaign and prints its [`Report`]; fails (exit 1) when a job was lost or completed
/// twice without an interruption. `shutdown` (Ctrl-C) ends it early, processes killed and the
/// temporary directory removed.
pub async fn run(args: ChaosArgs, shutdown: CancellationToken) -> Result<()> {
    if args.jobs == 0 || args.workers == 0 || args.concurrency == 0 {
        return Err(CliError::Usage(
            "chaos: --jobs, --workers and --concurrency must be at least 1".into(),
        )
        .into());
    }
    if args.workers > MAX_WORKERS {
        return Err(CliError::Usage(format!(
            "chaos: --workers must be at most {MAX_WORKERS} (each is a process of this machine)"
        ))
        .into());
    }
    if args.concurrency > hopper_workers::pool::MAX_CONCURRENCY {
        return Err(CliError::Usage(format!(
            "chaos: --concurrency must be at most {}",
            hopper_workers::pool::MAX_CONCURRENCY
        ))
        .into());
    }
    let seed = args.seed.unwrap_or_else(|| rand::rng().random());
    tracing::info!(
        broker = args.broker.name(),
        jobs = args.jobs,
        workers = args.workers,
        seed,
        "chaos: starting (repeat with --seed {seed})"
    );
    let started = Instant::now();
    let mut cluster = tokio::select! {
        () = shutdown.cancelled() => return Err(interrupted()),
        c = Cluster::start(args.broker, args.workers, args.concurrency) => c?,
    };
    let ran = tokio::select! {
        () = shutdown.cancelled() => Err(interrupted()),
        r = campaign(&mut cluster, &args, seed, started) => r,
    };
    cluster.stop().await;
    drop(cluster);
    let (report, unexplained) = ran?;
    report.finish(unexplained)
}

fn interrupted() -> anyhow::Error {
    CliError::Ended {
        message: "chaos: interrupted; every process stopped".into(),
        code: 130,
    }
    .into()
}

/// Loads, torments, waits and checks; the report and the count of unexplained duplicates.
async fn campaign(
    cluster: &mut Cluster,
    args: &ChaosArgs,
    seed: u64,
    started: Instant,
) -> Result<(Report, u64)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let api = Api::new(&cluster.base)?;
    let campaign_id = format!("chaos-{seed}");
    let jobs = args.jobs;
    let mut job_rng = StdRng::seed_from_u64(rng.random());
    let enqueue = {
        let api = Api::new(&cluster.base)?;
        tokio::spawn(async move { api.enqueue(jobs, &campaign_id, &mut job_rng).await })
    };
    let mut enqueue = Some(enqueue);
    let mut acknowledged: Option<Vec<String>> = None;
    let mut faults = Faults::new(
        StdRng::seed_from_u64(rng.random()),
        Instant::now(),
        args.broker == Broker::Redis,
    );
    // A duration past what the clock can count means "no deadline" in practice.
    let deadline = started
        .checked_add(args.duration)
        .unwrap_or_else(|| started + Duration::from_secs(100 * 365 * 24 * 3600));
    let mut next_report = Instant::now() + Duration::from_secs(1);
    let mut finished = 0;
    loop {
        tokio::time::sleep(POLL).await;
        let now = Instant::now();
        cluster.check_alive()?;
        faults.step(cluster, now).await?;
        if let Some(task) = enqueue.take_if(|t| t.is_finished()) {
            let ids = task.await.context("the enqueue task panicked")??;
            tracing::info!("chaos: {} of {jobs} jobs acknowledged", ids.len());
            acknowledged = Some(ids);
        }
        if let Some(counts) = api.counts().await {
            finished = ["succeeded", "dead", "cancelled"]
                .iter()
                .filter_map(|s| counts.get(*s))
                .sum::<u64>();
        }
        let all_in = acknowledged
            .as_ref()
            .is_some_and(|ids| finished >= ids.len() as u64);
        if all_in && faults.settled() {
            break;
        }
        if now >= deadline {
            tracing::warn!("chaos: --duration ran out with jobs unfinished");
            break;
        }
        if now >= next_report {
            next_report = now + Duration::from_secs(1);
            tracing::info!(
                "chaos: {finished}/{jobs} finished; kills {}, stops {}, redis restarts {}",
                faults.kills,
                faults.stops,
                faults.redis_restarts
            );
        }
    }
    faults.finish(cluster)?;
    // A resumed worker's late writes reach the broker (and are refused) within moments.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acknowledged = match (acknowledged, enqueue) {
        (Some(ids), _) => ids,
        (None, Some(task)) => {
            task.abort();
            anyhow::bail!("the jobs were still being enqueued when --duration ran out");
        }
        (None, None) => Vec::new(),
    };
    let finals = api.jobs().await?;
    let tally = ledger::check(&cluster.ledger_dir(), &acknowledged, &finals)?;
    for example in &tally.examples {
        tracing::warn!("chaos: {example}");
    }
    let report = Report {
        broker: args.broker.name(),
        jobs,
        acknowledged: acknowledged.len() as u64,
        lost: tally.lost,
        completed_twice: tally.completed_twice,
        starts: tally.starts,
        interruptions: tally.interruptions,
        stale_writes_refused: logs::stale_writes_refused(&cluster.log_dir())?,
        redis_restarts: faults.redis_restarts,
        kills: faults.kills,
        stops: faults.stops,
        seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    };
    Ok((report, tally.unexplained))
}
