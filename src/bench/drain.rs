//! The `drain` workload: enqueue N `sys.noop` jobs in batches of [`BATCH`], then start the
//! pool and time until all have finished. Reports enqueue and processing throughput.
//!
//! Not here: the report and its printing (`super`), the other workloads.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use hopper_workers::Registry;
use hopper_workers::job::NewJob;
use serde_json::json;

use super::{BATCH, Bench, Report, per_s};

impl Bench {
    pub(super) async fn drain(&self, n: u64) -> Result<Report> {
        let mut registry = Registry::new();
        hopper_workers::diagnostics::register(&mut registry)?;

        let started = Instant::now();
        let mut left = n;
        while left > 0 {
            if self.shutdown.is_cancelled() {
                bail!("interrupted");
            }
            let size = usize::try_from(left).unwrap_or(BATCH).min(BATCH);
            let batch = (0..size)
                .map(|_| {
                    NewJob::new("sys.noop", json!({}))
                        .queue(&self.queue)
                        .max_retries(0)
                })
                .collect();
            self.broker.enqueue(batch).await.context("enqueueing")?;
            left -= size as u64;
        }
        let enqueue_s = started.elapsed().as_secs_f64();
        tracing::info!(jobs = n, seconds = enqueue_s, "enqueued; starting the pool");

        let (stop, task) = self.start_pool(registry);
        let started = Instant::now();
        let waited = self.wait_done(n, &task).await;
        let processed_s = started.elapsed().as_secs_f64();
        stop.cancel();
        task.await.context("bench pool panicked")??;
        waited?;

        Ok(Report {
            enqueue_jobs_per_s: Some(per_s(n, enqueue_s)),
            processed_jobs_per_s: Some(per_s(n, processed_s)),
            ..Report::new("drain", self, n)
        })
    }
}
