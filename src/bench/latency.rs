//! The `latency` workload: with the pool running, enqueue `bench.latency` jobs at a steady
//! rate for a while (10 s by default), each carrying its enqueue time in microseconds; the
//! handler records how long it waited to start. Reports p50, p95, p99 and max pickup latency.
//!
//! Not here: the report and its printing (`super`), the other workloads.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use hopper_workers::{JobContext, JobResult, Registry};
use serde_json::json;

use super::{Bench, PickupLatency, Report, micros_now, per_s};

/// The kind only `bench` registers.
const LATENCY_KIND: &str = "bench.latency";

impl Bench {
    pub(super) async fn latency(&self, rate: u64, duration: Duration) -> Result<Report> {
        if rate == 0 {
            bail!(crate::exit::CliError::Usage(
                "--rate must be at least 1".into()
            ));
        }
        let samples = Arc::new(Mutex::new(Vec::new()));
        let mut registry = Registry::new();
        registry.register(
            LATENCY_KIND,
            Pickup {
                samples: samples.clone(),
            },
        )?;
        let (stop, task) = self.start_pool(registry);

        let total = u64::try_from((u128::from(rate) * duration.as_millis() / 1000).max(1))
            .unwrap_or(u64::MAX);
        let mut sent = 0u64;
        let started = Instant::now();
        // Every millisecond: at 10,000 jobs/s a call of 10 jobs. Every 5 ms (until 2026-12-02)
        // sent bursts of 50 stamped at once, so the p99 measured how long the 50th of a burst
        // waited behind the 49 before it (2.5 ms against 1.5 with this cadence), not how soon
        // a job arriving at that rate is picked up.
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let enqueued: Result<()> = async {
            while sent < total {
                tokio::select! {
                    () = self.shutdown.cancelled() => bail!("interrupted"),
                    _ = tick.tick() => {}
                }
                // Catch up to where a perfectly steady sender would be by now.
                let due = ((rate as f64) * started.elapsed().as_secs_f64()) as u64;
                let n = due.min(total) - sent.min(due.min(total));
                if n == 0 {
                    continue;
                }
                // The payload carries a plain number: microseconds since the epoch, so that
                // a p99 under a millisecond can be told apart from one of 1.9 ms.
                let at = micros_now();
                self.enqueue_many(LATENCY_KIND, &json!({ "enqueued_at_us": at }), n)
                    .await?;
                sent += n;
            }
            Ok(())
        }
        .await;
        let send_s = started.elapsed().as_secs_f64();
        let waited = match enqueued {
            Ok(()) => self.wait_done(sent, &task).await,
            Err(e) => Err(e),
        };
        stop.cancel();
        task.await.context("bench pool panicked")??;
        waited?;

        let mut us: Vec<u64> = samples
            .lock()
            .map_err(|_| anyhow::anyhow!("latency samples poisoned"))?
            .clone();
        us.sort_unstable();
        Ok(Report {
            enqueue_jobs_per_s: Some(per_s(sent, send_s)),
            pickup: PickupLatency::of(&us),
            ..Report::new("latency", self, sent)
        })
    }
}

/// `bench.latency`: records how long after its enqueue the job started, in microseconds.
struct Pickup {
    samples: Arc<Mutex<Vec<u64>>>,
}

#[async_trait]
impl hopper_workers::Handler for Pickup {
    async fn run(&self, cx: JobContext) -> JobResult {
        let now = micros_now();
        let at = cx
            .payload()
            .get("enqueued_at_us")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(now);
        let waited = now.saturating_sub(at);
        if let Ok(mut s) = self.samples.lock() {
            s.push(waited);
        }
        Ok(json!({}))
    }
}
