//! The `events` workload: how fast the live event stream delivers, and what it costs.
//!
//! The bench starts, in this process, what a node runs: the pool (on the bench queue only),
//! the event [`Hub`] and the HTTP API (`crate::api::router`) on `127.0.0.1:0`, over the
//! bench's broker. N WebSocket clients (tokio-tungstenite) follow the bench queue over
//! `GET /v1/events?queue=Q`, while `bench.events` jobs are enqueued at a steady rate. Each
//! job appends 3 `job.progress` events and then completes (`job.succeeded`): `--rate` counts
//! those 4 per job. The log also carries each job's `job.enqueued` and `job.started`, which
//! the clients receive too but which are not counted in the rate.
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
//! Samples go into one shared histogram (exact to the microsecond below 1.024 ms, then within
//! 0.2 %), not into a list: a thousand clients at thousands of events a second would make the
//! list the largest thing in the process, and the process's memory is part of the report.
//! That memory (`VmRSS` at the end, `VmHWM` the peak) is the whole process's: server, pool
//! and clients together, so it overstates the server's.
//!
//! Not here: the report and its printing (`super`), the other workloads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use futures::StreamExt;
use hopper_workers::{Broker, JobContext, JobResult, Registry};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::{Bench, Delivery, Report, micros_now, per_s};
use crate::api::{self, AppState};

/// The kind only `bench` registers for this workload.
const EVENTS_KIND: &str = "bench.events";
/// Progress events each job appends; with its completion, the events `--rate` counts per job.
const PROGRESS_PER_JOB: u64 = 3;
const EVENTS_PER_JOB: u64 = PROGRESS_PER_JOB + 1;
/// Marks the bench's timestamp in a progress message.
const STAMP: &str = "bench-us:";
/// How long the clients may take, after the last job finished, to receive everything.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(60);

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
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the bench API to 127.0.0.1:0")?;
        let addr = listener
            .local_addr()
            .context("reading the bench API address")?;
        let server = tokio::spawn(
            axum::serve(listener, api::router(state))
                .with_graceful_shutdown(stop.clone().cancelled_owned())
                .into_future(),
        );

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
        let shared = Arc::new(Shared::default());
        let url = format!("ws://{addr}/v1/events?queue={}", self.queue);
        let mut followers = Vec::with_capacity(clients);
        for _ in 0..clients {
            // Connected one by one, before any job: each has its stream open (the server
            // subscribes before answering the upgrade) when the first event is appended.
            let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .with_context(|| format!("connecting a client to {url}"))?;
            followers.push(tokio::spawn(follow(ws, shared.clone(), jobs, stop.clone())));
        }
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

        // Every client stops once it has every completion (or lagged); give them time.
        let all = futures::future::join_all(followers);
        if tokio::time::timeout(DELIVERY_DEADLINE, all).await.is_err() {
            tracing::warn!("some clients had not received every event; stopping them");
            stop.cancel();
        }
        let (rss_mb, peak_rss_mb) = memory();
        let incomplete = shared.incomplete.load(Ordering::Acquire);
        if incomplete > 0 {
            tracing::warn!(clients = incomplete, "clients that missed events");
        }
        let events = jobs * EVENTS_PER_JOB;
        Ok(Report {
            delivery: Delivery {
                clients: Some(clients),
                events: Some(events),
                events_per_s: Some(per_s(events, produce_s)),
                delivered: Some(shared.latency.count()),
                lagged_clients: Some(shared.lagged.load(Ordering::Acquire)),
                incomplete_clients: Some(incomplete),
                delivery_p50_ms: shared.latency.percentile_ms(0.50),
                delivery_p95_ms: shared.latency.percentile_ms(0.95),
                delivery_p99_ms: shared.latency.percentile_ms(0.99),
                delivery_max_ms: shared.latency.max_ms(),
                rss_mb,
                peak_rss_mb,
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

/// What the clients share: the latency histogram and how many of them lagged or missed events.
#[derive(Default)]
struct Shared {
    latency: Histogram,
    lagged: AtomicUsize,
    incomplete: AtomicUsize,
}

/// The fields of a frame a client looks at.
#[derive(Deserialize)]
struct FrameView<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default)]
    message: Option<&'a str>,
}

/// One client: reads frames until it has seen `jobs` completions, lagged, or is stopped.
async fn follow<S>(mut ws: S, shared: Arc<Shared>, jobs: u64, stop: CancellationToken)
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut done = 0u64;
    while done < jobs {
        let msg = tokio::select! {
            () = stop.cancelled() => break,
            msg = ws.next() => msg,
        };
        let text = match msg {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => break,
        };
        let now = micros_now();
        let Ok(frame) = serde_json::from_str::<FrameView<'_>>(text.as_str()) else {
            continue;
        };
        match frame.kind {
            "job.progress" => {
                if let Some(at) = frame
                    .message
                    .and_then(|m| m.strip_prefix(STAMP))
                    .and_then(|t| t.parse::<u64>().ok())
                {
                    shared.latency.record(now.saturating_sub(at));
                }
            }
            "job.succeeded" | "job.dead" | "job.cancelled" => done += 1,
            "lagged" => {
                shared.lagged.fetch_add(1, Ordering::AcqRel);
                break;
            }
            _ => {}
        }
    }
    if done < jobs {
        shared.incomplete.fetch_add(1, Ordering::AcqRel);
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
fn memory() -> (Option<f64>, Option<f64>) {
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

/// Bits of a value kept exactly: below `2^EXACT_BITS` µs every microsecond has its bucket;
/// above, `2^(EXACT_BITS - 1)` buckets per power of two (relative error under 0.2 %).
const EXACT_BITS: u32 = 10;
const HALF: usize = 1 << (EXACT_BITS - 1);
const EXACT: usize = 1 << EXACT_BITS;
/// Latencies up to 2^40 µs (12 days) have a bucket; longer ones count as that.
const TOP_EXPONENT: usize = 40 - EXACT_BITS as usize;

/// A histogram of microseconds that many tasks record into at once.
pub(super) struct Histogram {
    buckets: Vec<AtomicU64>,
    max: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: (0..EXACT + TOP_EXPONENT * HALF)
                .map(|_| AtomicU64::new(0))
                .collect(),
            max: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub(super) fn record(&self, us: u64) {
        let i = bucket(us).min(self.buckets.len() - 1);
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.max.fetch_max(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// The nearest-rank percentile `q`, in milliseconds (the lower bound of its bucket).
    pub(super) fn percentile_ms(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Acquire);
            if seen >= rank {
                return Some(floor(i) as f64 / 1000.0);
            }
        }
        self.max_ms()
    }

    pub(super) fn max_ms(&self) -> Option<f64> {
        (self.count() > 0).then(|| self.max.load(Ordering::Acquire) as f64 / 1000.0)
    }
}

/// The bucket of `us`.
fn bucket(us: u64) -> usize {
    let Ok(v) = usize::try_from(us) else {
        return usize::MAX;
    };
    if v < EXACT {
        return v;
    }
    // v has at least EXACT_BITS + 1 significant bits; keep the top EXACT_BITS.
    let shift = (usize::BITS - v.leading_zeros() - EXACT_BITS) as usize;
    EXACT + (shift - 1) * HALF + ((v >> shift) - HALF)
}

/// The smallest value in bucket `i`.
fn floor(i: usize) -> u64 {
    if i < EXACT {
        return i as u64;
    }
    let k = i - EXACT;
    let shift = k / HALF + 1;
    ((k % HALF + HALF) as u64) << shift
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_exact_below_a_millisecond_and_close_above() {
        for us in [0u64, 1, 999, 1023] {
            assert_eq!(floor(bucket(us)), us);
        }
        for us in [1024u64, 1025, 2047, 2048, 2_500, 49_999, 3_000_000] {
            let f = floor(bucket(us));
            assert!(
                f <= us && (us - f) as f64 <= us as f64 * 0.002,
                "{us} -> {f}"
            );
        }
    }

    #[test]
    fn histogram_percentiles_in_milliseconds() {
        let h = Histogram::default();
        for us in 1..=1000u64 {
            h.record(us);
        }
        assert_eq!(h.count(), 1000);
        assert_eq!(h.percentile_ms(0.50), Some(0.5));
        assert_eq!(h.percentile_ms(0.95), Some(0.95));
        assert_eq!(h.percentile_ms(0.99), Some(0.99));
        assert_eq!(h.max_ms(), Some(1.0));
        h.record(40_000);
        assert_eq!(h.max_ms(), Some(40.0));
        assert_eq!(Histogram::default().percentile_ms(0.5), None);
    }

    #[test]
    fn memory_is_read_from_proc() {
        let (rss, peak) = memory();
        assert!(rss.is_some_and(|r| r > 0.0));
        assert!(peak >= rss);
    }
}
