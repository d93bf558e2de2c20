//! `hopper bench`: the workloads of DESIGN §9 and issue 9, run against a real broker with the
//! real pool in this process. This module owns the flags, the report and its printing, and
//! what the workloads share (the pool on the bench queue, waiting for it to finish); each
//! workload is its own file:
//!
//! - `drain`: enqueue N no-op jobs, then time the pool draining them.
//! - `batch`: `enqueue-batch`, N no-op jobs through `POST /v1/jobs/batch` of an API started in
//!   this process; bulk enqueue throughput.
//! - `publish`: N events through `POST /v1/publish` of an API started in this process, each
//!   fanned out to 3 subscriptions; publishes and jobs created per second.
//! - `latency`: a steady rate of jobs; pickup latency percentiles.
//! - `events`: jobs that report progress while WebSocket clients follow the queue through an
//!   API started in this process; delivery latency percentiles and memory.
//!
//! - `notify`: N WebSocket users on `GET /v1/notifications` of an API started in this process
//!   while notifications are appended to their inboxes at a steady rate; notifications
//!   delivered per second, delivery latency percentiles and memory.
//!
//! - `cpu`: the CPU counters (this process's, Redis') read around every workload.
//!
//! Each run uses its own queue (`bench-<uuid>`) and drops it afterwards, even when it fails.

mod batch;
mod clients;
mod cpu;
mod drain;
mod events;
mod latency;
mod notify;
mod publish;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hopper_workers::clock::{self, Clock};
use hopper_workers::job::JobId;
use hopper_workers::pool::{Pool, PoolConfig, QueueSpec};
use hopper_workers::{Broker, Registry};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Settings};
use crate::out;

/// Jobs per enqueue round-trip in the drain workload.
const BATCH: usize = 1000;
/// How often progress is polled.
const POLL: Duration = Duration::from_millis(50);
/// A run that makes no progress for this long is abandoned.
const STALL: Duration = Duration::from_secs(30);

/// Which workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    Drain,
    EnqueueBatch,
    Latency,
    Events,
    Publish,
    Notify,
}

/// Pool slots of a bench run that does not say.
pub const DEFAULT_CONCURRENCY: usize = 64;

/// `hopper bench` flags.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// drain: enqueue N jobs, then time the pool draining them; enqueue-batch: N jobs through
    /// POST /v1/jobs/batch ([server] max_batch a request), jobs stored per second; latency:
    /// steady rate, pickup latency percentiles; events: jobs reporting progress while
    /// WebSocket clients follow the queue, delivery latency percentiles and memory; publish:
    /// POST /v1/publish with 3 subscriptions, publishes and jobs created per second; notify:
    /// notifications appended to the inboxes of --clients WebSocket users on
    /// GET /v1/notifications, delivered per second, delivery latency percentiles and memory.
    #[arg(long, value_enum, default_value_t = Workload::Drain)]
    pub workload: Workload,
    /// Jobs to enqueue (drain, enqueue-batch); events to publish (publish: 3 jobs each).
    /// At least 1.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub jobs: u64,
    /// Pool slots. Default 64, the concurrency the peers' numbers in README were measured at
    /// (not `[worker] concurrency`, which is sized for real jobs, not no-ops).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Jobs per second (latency, default 1000); events per second (events, default 4000:
    /// each job appends 3 progress events and its completion); notifications per second
    /// (notify, default 1000, spread evenly over the users).
    #[arg(long)]
    pub rate: Option<u64>,
    /// WebSocket clients following the bench queue (events) or connected as users (notify);
    /// HTTP clients posting batches (enqueue-batch) or publishes (publish) at once.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// How long to enqueue for (latency, events, notify).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Broker URL (default: [broker] url).
    #[arg(long, value_name = "URL")]
    pub broker: Option<String>,
    /// Print only one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Internal: run only the events workload's WebSocket clients against this URL (the
    /// workload starts itself with it, so that clients and server are measured apart).
    #[arg(long, hide = true, value_name = "URL")]
    pub follow: Option<String>,
    /// Internal: with `--follow` of `GET /v1/notifications`, the prefix of the clients' user
    /// ids (the `notify` workload passes it, and the JWT secret in the environment).
    #[arg(long, hide = true, value_name = "PREFIX")]
    pub follow_users: Option<String>,
}

/// What a run measured; fields that do not apply are `null`. The field names are the
/// contract of DESIGN §9.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// `drain`, `enqueue-batch`, `latency`, `events`, `publish` or `notify`.
    pub workload: &'static str,
    /// `sqlite` or `redis`.
    pub broker: String,
    /// Jobs enqueued (and, for `drain`, processed).
    pub jobs: u64,
    /// Worker slots of the bench pool; for `enqueue-batch`, the HTTP clients posting at once.
    pub concurrency: usize,
    /// Jobs stored per second by the enqueuer (for `publish`, jobs created by publishes).
    pub enqueue_jobs_per_s: Option<f64>,
    /// Events published, for the `publish` workload (each creating one job per
    /// subscription: `jobs` is this times 3).
    pub publishes: Option<u64>,
    /// Those publishes per second.
    pub publishes_per_s: Option<f64>,
    /// Jobs finished per second while draining.
    pub processed_jobs_per_s: Option<f64>,
    /// Pickup latency (start - due), for the `latency` workload; `null`s otherwise.
    #[serde(flatten)]
    pub pickup: PickupLatency,
    /// Event delivery, for the `events` workload; `null`s otherwise.
    #[serde(flatten)]
    pub delivery: Delivery,
    /// The Redis server's CPU time (user + system) over the run, per job, in µs; `null` when
    /// the broker is not Redis or `INFO cpu` could not be read.
    pub broker_cpu_us_per_job: Option<f64>,
    /// This process's CPU time (user + system, every thread) over the run, per job, in µs.
    pub process_cpu_us_per_job: Option<f64>,
}

/// What the `events` and `notify` workloads measured (for `notify`, `events` counts the
/// notifications appended).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Delivery {
    /// WebSocket clients that followed the bench queue.
    pub clients: Option<usize>,
    /// Events the workers appended and the rate counts: 3 progress and 1 completion per job.
    pub events: Option<u64>,
    /// Those events per second, from the first enqueue to the last job's end.
    pub events_per_s: Option<f64>,
    /// Progress frames (notify: notifications) received and measured, over all clients.
    pub delivered: Option<u64>,
    /// Those per second, from the first append to the last delivery (notify).
    pub delivered_per_s: Option<f64>,
    /// Clients told `lagged` (they fell behind the server's buffer; notify: `rate_limited`).
    pub lagged_clients: Option<usize>,
    /// Clients that did not receive every job's completion.
    pub incomplete_clients: Option<usize>,
    /// Delivery latency of progress events (appended -> frame received), in ms.
    pub delivery_p50_ms: Option<f64>,
    pub delivery_p95_ms: Option<f64>,
    pub delivery_p99_ms: Option<f64>,
    pub delivery_max_ms: Option<f64>,
    /// The bench process's resident memory at the end (`VmRSS`), in MB: the server with the
    /// pool and the producer (the clients run in a process of their own).
    pub rss_mb: Option<f64>,
    /// Its peak (`VmHWM`), in MB.
    pub peak_rss_mb: Option<f64>,
    /// The client process's peak, in MB.
    pub clients_peak_rss_mb: Option<f64>,
}

/// Percentiles and maximum of the pickup latency, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct PickupLatency {
    /// Half of the jobs started within this.
    pub p50_ms: Option<f64>,
    /// 95 % of them.
    pub p95_ms: Option<f64>,
    /// 99 % of them.
    pub p99_ms: Option<f64>,
    /// The slowest.
    pub max_ms: Option<f64>,
}

impl PickupLatency {
    /// From samples in microseconds, sorted; reported in milliseconds with their fraction.
    fn of(sorted_us: &[u64]) -> Self {
        let ms = |us: Option<f64>| us.map(|us| us / 1000.0);
        Self {
            p50_ms: ms(percentile(sorted_us, 0.50)),
            p95_ms: ms(percentile(sorted_us, 0.95)),
            p99_ms: ms(percentile(sorted_us, 0.99)),
            max_ms: ms(sorted_us.last().map(|us| *us as f64)),
        }
    }
}

impl Report {
    /// A report of `workload` over `jobs` jobs, every measure still unset.
    fn new(workload: &'static str, bench: &Bench, jobs: u64) -> Self {
        Self {
            workload,
            broker: bench.broker.name().into(),
            jobs,
            concurrency: bench.concurrency,
            ..Self::default()
        }
    }
}

/// Runs the workload `args` names and prints its report.
pub async fn run(args: BenchArgs, settings: &Settings, shutdown: CancellationToken) -> Result<()> {
    if let Some(url) = &args.follow {
        let users = args.follow_users.as_deref().unwrap_or_default();
        return clients::run(url, args.clients, args.jobs, users).await;
    }
    // `--broker` is in it already (`crate::cli`), checked with the rest.
    let config = settings.config.clone();
    let concurrency = args.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
    if concurrency == 0 || concurrency > hopper_workers::pool::MAX_CONCURRENCY {
        bail!(crate::exit::CliError::Usage(format!(
            "--concurrency must be 1 to {}",
            hopper_workers::pool::MAX_CONCURRENCY
        )));
    }
    let clock = clock::system();
    // Recorded and timed as in `serve` and `worker`, so the figures include what metrics cost.
    crate::metrics::handle();
    let broker: Arc<dyn Broker> = Arc::new(hopper_workers::metrics::Metered::new(
        crate::app::open_broker(&config, clock.clone()).await?,
    ));
    let queue = format!("bench-{}", JobId::generate());
    let bench = Bench {
        broker: broker.clone(),
        clock,
        pool: settings.pool.clone(),
        config,
        queue: queue.clone(),
        concurrency,
        shutdown,
    };
    let redis_url = (broker.name() == "redis").then_some(bench.config.broker.url.as_str());
    let cpu_before = cpu::snapshot(redis_url).await;
    let ran = match args.workload {
        Workload::Drain => bench.drain(args.jobs).await,
        Workload::EnqueueBatch => bench.enqueue_batch(args.jobs, args.clients).await,
        Workload::Latency => {
            bench
                .latency(args.rate.unwrap_or(1000), args.duration)
                .await
        }
        Workload::Events => {
            bench
                .events(args.rate.unwrap_or(4000), args.duration, args.clients)
                .await
        }
        Workload::Publish => bench.publish(args.jobs, args.clients).await,
        Workload::Notify => {
            bench
                .notify(args.rate.unwrap_or(1000), args.duration, args.clients)
                .await
        }
    };
    let cpu_after = cpu::snapshot(redis_url).await;
    // Clean up whatever happened.
    match broker.drop_queue(&queue).await {
        Ok(n) => tracing::debug!(jobs = n, %queue, "dropped the bench queue"),
        Err(e) => tracing::warn!(error = %e, %queue, "could not drop the bench queue"),
    }
    let mut report = ran?;
    (report.process_cpu_us_per_job, report.broker_cpu_us_per_job) =
        cpu_before.per_job(&cpu_after, report.jobs);
    if args.json {
        out::json(&report)?;
    } else {
        print_table(&report)?;
    }
    Ok(())
}

struct Bench {
    broker: Arc<dyn Broker>,
    clock: Arc<dyn Clock>,
    /// `[worker]` and `[retry]`, as checked; the bench overrides concurrency and queues.
    pool: PoolConfig,
    /// The whole config, for the API the `events` workload starts.
    config: Config,
    queue: String,
    concurrency: usize,
    shutdown: CancellationToken,
}

impl Bench {
    /// Enqueues `n` jobs of `kind`, each with `payload`, on the bench queue, without retries.
    async fn enqueue_many(&self, kind: &str, payload: &serde_json::Value, n: u64) -> Result<()> {
        let batch = (0..n)
            .map(|_| {
                hopper_workers::job::NewJob::new(kind, payload.clone())
                    .queue(&self.queue)
                    .max_retries(0)
            })
            .collect();
        self.broker.enqueue(batch).await.context("enqueueing")?;
        Ok(())
    }

    /// A pool on the bench queue only, run until the returned token is cancelled.
    fn start_pool(
        &self,
        registry: Registry,
    ) -> (CancellationToken, tokio::task::JoinHandle<Result<()>>) {
        let mut pc = self.pool.clone();
        pc.concurrency = self.concurrency;
        pc.queues = vec![QueueSpec::new(self.queue.clone())];
        let pool = Pool::new(
            self.broker.clone(),
            Arc::new(registry),
            pc,
            self.clock.clone(),
        );
        let stop = self.shutdown.child_token();
        let token = stop.clone();
        let task = tokio::spawn(async move { pool.run(token).await.context("bench pool") });
        (stop, task)
    }

    /// Polls the bench queue until `n` jobs have finished; fails when the pool stops, the run
    /// stalls, or it is interrupted.
    async fn wait_done(&self, n: u64, pool: &tokio::task::JoinHandle<Result<()>>) -> Result<()> {
        let mut last = (0u64, Instant::now());
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => bail!("interrupted"),
                () = tokio::time::sleep(POLL) => {}
            }
            if pool.is_finished() {
                bail!("the pool stopped before the jobs were done");
            }
            let stats = self.broker.queues().await.context("reading queue counts")?;
            let counts = stats
                .into_iter()
                .find(|q| q.queue == self.queue)
                .map(|q| q.counts)
                .unwrap_or_default();
            let done = counts.succeeded + counts.dead + counts.cancelled;
            if done >= n {
                if counts.dead > 0 {
                    tracing::warn!(dead = counts.dead, "some bench jobs failed");
                }
                return Ok(());
            }
            if done > last.0 {
                last = (done, Instant::now());
            } else if last.1.elapsed() > STALL {
                bail!(
                    "no progress for {}s ({done} of {n} jobs done)",
                    STALL.as_secs()
                );
            }
        }
    }
}

/// The wall clock in microseconds since the epoch (the engine's clock counts milliseconds).
fn micros_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn per_s(n: u64, seconds: f64) -> f64 {
    let v = if seconds > 0.0 {
        n as f64 / seconds
    } else {
        0.0
    };
    (v * 10.0).round() / 10.0
}

/// The nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).map(|v| *v as f64)
}

fn print_table(r: &Report) -> std::io::Result<()> {
    let f = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |x| format!("{x:.1}"));
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |x| format!("{x:.3}"));
    if r.workload == "events" || r.workload == "notify" {
        let d = &r.delivery;
        let n = |v: Option<usize>| v.map_or_else(|| "-".to_owned(), |x| x.to_string());
        return out::table(
            &[
                "workload",
                "broker",
                ">clients",
                ">events",
                ">events/s",
                ">delivered",
                ">delivered/s",
                ">lagged",
                ">p50 ms",
                ">p95 ms",
                ">p99 ms",
                ">max ms",
                ">server rss MB",
                ">server peak MB",
                ">clients peak MB",
                ">broker µs/job",
                ">process µs/job",
            ],
            &[vec![
                r.workload.to_owned(),
                r.broker.clone(),
                n(d.clients),
                d.events.map_or_else(|| "-".to_owned(), |x| x.to_string()),
                f(d.events_per_s),
                d.delivered
                    .map_or_else(|| "-".to_owned(), |x| x.to_string()),
                f(d.delivered_per_s),
                n(d.lagged_clients),
                ms(d.delivery_p50_ms),
                ms(d.delivery_p95_ms),
                ms(d.delivery_p99_ms),
                ms(d.delivery_max_ms),
                f(d.rss_mb),
                f(d.peak_rss_mb),
                f(d.clients_peak_rss_mb),
                f(r.broker_cpu_us_per_job),
                f(r.process_cpu_us_per_job),
            ]],
        );
    }
    if r.workload == "publish" {
        return out::table(
            &[
                "workload",
                "broker",
                ">publishes",
                ">jobs",
                ">clients",
                ">publishes/s",
                ">jobs/s",
                ">broker µs/job",
                ">process µs/job",
            ],
            &[vec![
                r.workload.to_owned(),
                r.broker.clone(),
                r.publishes.unwrap_or(0).to_string(),
                r.jobs.to_string(),
                r.concurrency.to_string(),
                f(r.publishes_per_s),
                f(r.enqueue_jobs_per_s),
                f(r.broker_cpu_us_per_job),
                f(r.process_cpu_us_per_job),
            ]],
        );
    }
    out::table(
        &[
            "workload",
            "broker",
            ">jobs",
            ">concurrency",
            ">enqueue/s",
            ">processed/s",
            ">p50 ms",
            ">p95 ms",
            ">p99 ms",
            ">max ms",
            ">broker µs/job",
            ">process µs/job",
        ],
        &[vec![
            r.workload.to_owned(),
            r.broker.clone(),
            r.jobs.to_string(),
            r.concurrency.to_string(),
            f(r.enqueue_jobs_per_s),
            f(r.processed_jobs_per_s),
            // Latencies to the microsecond: a p99 of 0.4 ms is not one of 1.9 ms.
            ms(r.pickup.p50_ms),
            ms(r.pickup.p95_ms),
            ms(r.pickup.p99_ms),
            ms(r.pickup.max_ms),
            f(r.broker_cpu_us_per_job),
            f(r.process_cpu_us_per_job),
        ]],
    )
}

/// Serves the API of `state` on `127.0.0.1:0` until `stop` fires, for the workloads that drive
/// it over HTTP or WebSocket: its address, and the server's task to await once stopped.
async fn serve_api(
    state: crate::api::AppState,
    stop: &CancellationToken,
) -> Result<(
    std::net::SocketAddr,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    use std::future::IntoFuture;

    use axum::serve::ListenerExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the bench API to 127.0.0.1:0")?;
    let addr = listener
        .local_addr()
        .context("reading the bench API address")?;
    let server = tokio::spawn(
        axum::serve(
            listener.tap_io(crate::api::no_delay),
            crate::api::router(state),
        )
        .with_graceful_shutdown(stop.clone().cancelled_owned())
        .into_future(),
    );
    Ok((addr, server))
}

impl Bench {
    /// Posts `count` JSON bodies (`body(i)` for each `i` below `count`) to `url` from `clients`
    /// concurrent clients, each answer expected `201 Created` (`what` names a request in
    /// errors); returns the seconds taken. The HTTP workloads' (enqueue-batch, publish) loop.
    async fn post_created<F>(
        &self,
        url: &str,
        count: u64,
        clients: usize,
        what: &'static str,
        body: F,
    ) -> Result<f64>
    where
        F: Fn(u64) -> axum::body::Bytes + Send + Sync + 'static,
    {
        use std::sync::atomic::{AtomicU64, Ordering};
        let next = Arc::new(AtomicU64::new(0));
        let body = Arc::new(body);
        let http = reqwest::Client::new();
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let (http, url, next, body) =
                (http.clone(), url.to_owned(), next.clone(), body.clone());
            let shutdown = self.shutdown.clone();
            tasks.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return Ok(());
                    }
                    if shutdown.is_cancelled() {
                        bail!("interrupted");
                    }
                    let res = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body(i))
                        .send()
                        .await
                        .with_context(|| format!("posting a {what}"))?;
                    let status = res.status();
                    let answer = res
                        .bytes()
                        .await
                        .with_context(|| format!("reading a {what}'s answer"))?;
                    if status != reqwest::StatusCode::CREATED {
                        bail!(
                            "a {what} was answered {status}: {}",
                            String::from_utf8_lossy(&answer)
                        );
                    }
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.context("a bench client panicked")??;
        }
        Ok(started.elapsed().as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pickup_latency_keeps_fractions_of_a_millisecond() {
        let us: Vec<u64> = (1..=100).map(|i| i * 19).collect();
        let p = PickupLatency::of(&us);
        assert_eq!(p.p50_ms, Some(0.95));
        assert_eq!(p.p99_ms, Some(1.881));
        assert_eq!(p.max_ms, Some(1.9));
        assert_eq!(PickupLatency::of(&[]).p50_ms, None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.50), Some(50.0));
        assert_eq!(percentile(&v, 0.95), Some(95.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&[7], 0.99), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn report_has_the_design_fields() {
        let v = serde_json::to_value(Report::default()).unwrap_or_default();
        for k in [
            "workload",
            "broker",
            "jobs",
            "concurrency",
            "enqueue_jobs_per_s",
            "publishes",
            "publishes_per_s",
            "processed_jobs_per_s",
            "p50_ms",
            "p95_ms",
            "p99_ms",
            "max_ms",
            "clients",
            "events",
            "delivery_p50_ms",
            "delivery_p95_ms",
            "delivery_p99_ms",
            "delivery_max_ms",
            "rss_mb",
            "peak_rss_mb",
            "clients_peak_rss_mb",
            "broker_cpu_us_per_job",
            "process_cpu_us_per_job",
        ] {
            assert!(v.get(k).is_some(), "{k} missing");
        }
    }
}
