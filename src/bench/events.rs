//! The `events` workload: how fast the live event stream delivers, and what it costs.
//!
//! The bench starts, in this process, what a node runs: the pool (on the bench queue only),
//! the event hub and the HTTP API (`crate::api::router`) on `127.0.0.1:0`, over the bench's
//! broker; and, in a child process (`super::clients`), N WebSocket clients (tokio-tungstenite)
//! following the bench queue over `GET /v1/events?queue=Q`. Then `bench.events` jobs are
//! enqueued at a steady rate. Each job appends 3 `job.progress` events and then completes
//! (`job.succeeded`): `--rate` counts those 4 per job. The log also carries each job's
//! `job.enqueued` and `job.started`, which the clients receive too but which are not counted
//! in the rate.
//!
//! Delivery latency is measured on progress events only (completion events carry no
//! timestamp of ours): the handler writes each progress through `Broker::progress` itself,
//! with the wall clock in microseconds in its `message` taken just before the write (the
//! event's `at` only has milliseconds), and a client subtracts it from the time the frame
//! arrived. So a sample spans the broker's write, the hub's read, the fan-out and the
//! WebSocket. Writing directly skips the pool's progress coalescing, which would otherwise
//! hold a report for up to 100 ms (it exists to spare the log, not to delay events).
//!
//! The hub learns of each write as a node's hub does, from the broker
//! (`Broker::wait_for_events`): nothing here wakes it.
//!
//! The memory reported (`VmRSS` at the end, `VmHWM` the peak) is this process's: the server
//! with the pool and the producer, not the clients (whose peak is reported apart).
//!
//! Not here: the clients (`clients`), the report and its printing (`super`), the other
//! workloads.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use hopper_workers::{Broker, JobContext, JobResult, Registry};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio_util::sync::CancellationToken;

use super::clients::{READY, STAMP, Summary};
use super::{Bench, Delivery, Report, micros_now, per_s};
use crate::api::AppState;

/// The kind only `bench` registers for this workload.
const EVENTS_KIND: &str = "bench.events";
/// Progress events each job appends; with its completion, the events `--rate` counts per job.
const PROGRESS_PER_JOB: u64 = 3;
const EVENTS_PER_JOB: u64 = PROGRESS_PER_JOB + 1;
/// How long the clients may take, after the last job finished, to receive everything.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(60);
/// How long the client process may take to connect every client.
const CONNECT_DEADLINE: Duration = Duration::from_secs(120);

impl Bench {
    pub(super) async fn events(
        &self,
        rate: u64,
        duration: Duration,
        clients: usize,
    ) -> Result<Report> {
        if rate == 0 || clients == 0 {
            bail!(crate::exit::CliError::Usage(
                "--rate and --clients must be at least 1".into()
            ));
        }
        let jobs = u64::try_from(
            (u128::from(rate) * duration.as_millis() / 1000 / u128::from(EVENTS_PER_JOB)).max(1),
        )
        .unwrap_or(u64::MAX);

        // The server: hub and API over the bench's broker, on loopback.
        let stop = self.shutdown.child_token();
        let state = AppState::new(
            self.broker.clone(),
            Arc::new(Registry::new()),
            self.clock.clone(),
            Arc::new(self.config.clone()),
        );
        let hub = tokio::spawn(state.hub.clone().run(stop.clone()));
        let (addr, server) = super::serve_api(state, &stop).await?;

        let ran = self
            .follow_and_produce(addr, jobs, rate, clients, &stop)
            .await;
        stop.cancel();
        let _ = server.await;
        let _ = hub.await;
        ran
    }

    async fn follow_and_produce(
        &self,
        addr: std::net::SocketAddr,
        jobs: u64,
        rate: u64,
        clients: usize,
        stop: &CancellationToken,
    ) -> Result<Report> {
        let url = format!("ws://{addr}/v1/events?queue={}", self.queue);
        let mut child = Clients::start(&url, clients, jobs, None, stop).await?;
        tracing::info!(clients, jobs, "clients connected; producing events");

        let mut registry = Registry::new();
        registry.register(
            EVENTS_KIND,
            Emit {
                broker: self.broker.clone(),
            },
        )?;
        let (pool_stop, pool) = self.start_pool(registry);
        let started = Instant::now();
        let produced = async {
            self.enqueue_steadily(jobs, rate as f64 / EVENTS_PER_JOB as f64)
                .await?;
            self.wait_done(jobs, &pool).await
        }
        .await;
        let produce_s = started.elapsed().as_secs_f64();
        pool_stop.cancel();
        pool.await.context("bench pool panicked")??;
        produced?;

        // The clients stop once each has every completion (or lagged); give them time.
        let summary = child.finish(DELIVERY_DEADLINE).await?;
        let (rss_mb, peak_rss_mb) = memory();
        if summary.incomplete_clients > 0 {
            tracing::warn!(
                clients = summary.incomplete_clients,
                "clients that missed events"
            );
        }
        let events = jobs * EVENTS_PER_JOB;
        Ok(Report {
            delivery: Delivery {
                clients: Some(clients),
                events: Some(events),
                events_per_s: Some(per_s(events, produce_s)),
                delivered: Some(summary.delivered),
                delivered_per_s: None,
                lagged_clients: Some(summary.lagged_clients),
                incomplete_clients: Some(summary.incomplete_clients),
                delivery_p50_ms: summary.p50_ms,
                delivery_p95_ms: summary.p95_ms,
                delivery_p99_ms: summary.p99_ms,
                delivery_max_ms: summary.max_ms,
                rss_mb,
                peak_rss_mb,
                clients_peak_rss_mb: summary.peak_rss_mb,
            },
            ..Report::new("events", self, jobs)
        })
    }

    /// Enqueues `total` bench jobs at `per_s` a second, catching up every 5 ms.
    async fn enqueue_steadily(&self, total: u64, per_s: f64) -> Result<()> {
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        let mut sent = 0u64;
        while sent < total {
            tokio::select! {
                () = self.shutdown.cancelled() => bail!("interrupted"),
                _ = tick.tick() => {}
            }
            let due = ((per_s * started.elapsed().as_secs_f64()) as u64).min(total);
            let n = due.saturating_sub(sent);
            if n == 0 {
                continue;
            }
            self.enqueue_many(EVENTS_KIND, &json!({}), n).await?;
            sent += n;
        }
        Ok(())
    }
}

/// The client process: `hopper bench --follow URL` (see `super::clients`).
pub(super) struct Clients {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Clients {
    /// Starts the child and waits until every client is connected. `users` (notification
    /// clients only): their user ids' prefix and the JWT secret, handed over in the child's
    /// environment.
    pub(super) async fn start(
        url: &str,
        clients: usize,
        jobs: u64,
        users: Option<(&str, &str)>,
        stop: &CancellationToken,
    ) -> Result<Self> {
        let exe = std::env::current_exe().context("finding this program to start the clients")?;
        let mut cmd = Command::new(exe);
        cmd.args(["bench", "--follow", url, "--clients"])
            .arg(clients.to_string())
            .arg("--jobs")
            .arg(jobs.to_string());
        if let Some((prefix, secret)) = users {
            cmd.args(["--follow-users", prefix])
                .env(super::clients::SECRET_ENV, secret);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the client process")?;
        let stdout = child
            .stdout
            .take()
            .context("the client process has no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::select! {
            () = stop.cancelled() => bail!("interrupted"),
            line = tokio::time::timeout(CONNECT_DEADLINE, lines.next_line()) => line,
        };
        match ready {
            Ok(Ok(Some(line))) if line == READY => Ok(Self { child, lines }),
            Ok(Ok(other)) => bail!("the client process did not connect its clients: {other:?}"),
            Ok(Err(e)) => Err(e).context("reading the client process"),
            Err(_) => bail!("the clients did not connect within {CONNECT_DEADLINE:?}"),
        }
    }

    /// Waits at most `deadline` for the clients to receive everything (then tells them to
    /// stop, by closing their stdin), and reads what they measured.
    pub(super) async fn finish(&mut self, deadline: Duration) -> Result<Summary> {
        let last = match tokio::time::timeout(deadline, self.lines.next_line()).await {
            Ok(line) => line,
            Err(_) => {
                tracing::warn!("some clients had not received every event; stopping them");
                drop(self.child.stdin.take());
                self.lines.next_line().await
            }
        };
        let last = last
            .context("reading the client process")?
            .context("the client process ended without a summary")?;
        let _ = self.child.wait().await;
        serde_json::from_str(&last).with_context(|| format!("the clients' summary: {last}"))
    }
}

/// `bench.events`: appends [`PROGRESS_PER_JOB`] progress events, each stamped with the wall
/// clock in microseconds, then succeeds.
struct Emit {
    broker: Arc<dyn Broker>,
}

#[async_trait]
impl hopper_workers::Handler for Emit {
    async fn run(&self, cx: JobContext) -> JobResult {
        let lease = cx.job().lease();
        for step in 1..=PROGRESS_PER_JOB {
            let percent = u8::try_from(step * 100 / (PROGRESS_PER_JOB + 1)).unwrap_or(100);
            let message = format!("{STAMP}{}", micros_now());
            if let Err(e) = self.broker.progress(&lease, percent, Some(message)).await {
                tracing::debug!(error = %e, "bench progress not written");
            }
        }
        Ok(json!({}))
    }
}

/// This process's resident memory now (`VmRSS`) and at its peak (`VmHWM`), in MB.
pub(super) fn memory() -> (Option<f64>, Option<f64>) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return (None, None);
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| (kb / 1024.0 * 10.0).round() / 10.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_read_from_proc() {
        let (rss, peak) = memory();
        assert!(rss.is_some_and(|r| r > 0.0));
        assert!(peak >= rss);
    }
}
