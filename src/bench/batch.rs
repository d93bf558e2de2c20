//! The `enqueue-batch` workload: `POST /v1/jobs/batch` over loopback HTTP to an API started in
//! this process, `[server] max_batch` `sys.noop` jobs a request, `--clients` requests at a
//! time, until `--jobs` are stored. Reports the jobs stored per second, from the first request
//! sent to the last answer read: the whole path of a bulk enqueue (HTTP, JSON, the checks of
//! every job, one broker call a batch, the answer listing every job).
//!
//! The bodies are serialized once before the clock starts, so the figure is the server's, not
//! the client's JSON encoding. Not here: the pool (nothing runs the jobs; the bench queue is
//! dropped afterwards), the report's printing (`super`).

use std::sync::Arc;

use anyhow::{Result, bail};
use hopper_workers::Registry;
use serde_json::json;

use super::{Bench, Report, per_s};
use crate::api::AppState;

impl Bench {
    pub(super) async fn enqueue_batch(&self, n: u64, clients: usize) -> Result<Report> {
        if n == 0 || clients == 0 {
            bail!(crate::exit::CliError::Usage(
                "--jobs and --clients must be at least 1".into()
            ));
        }
        let mut registry = Registry::new();
        hopper_workers::diagnostics::register(&mut registry)?;
        let stop = self.shutdown.child_token();
        let state = AppState::new(
            self.broker.clone(),
            Arc::new(registry),
            self.clock.clone(),
            Arc::new(self.config.clone()),
        );
        let (addr, server) = super::serve_api(state, &stop).await?;
        let ran = self
            .post_batches(&format!("http://{addr}/v1/jobs/batch"), n, clients)
            .await;
        stop.cancel();
        let _ = server.await;
        let seconds = ran?;
        Ok(Report {
            enqueue_jobs_per_s: Some(per_s(n, seconds)),
            // No pool runs: the concurrency is the clients'.
            concurrency: clients,
            ..Report::new("enqueue-batch", self, n)
        })
    }

    /// Posts `n` jobs in batches from `clients` concurrent clients; returns the seconds taken.
    async fn post_batches(&self, url: &str, n: u64, clients: usize) -> Result<f64> {
        let size = self.config.server.max_batch as u64;
        let body = |jobs: u64| {
            let job =
                json!({"kind": "sys.noop", "payload": {}, "queue": self.queue, "max_retries": 0});
            let all: Vec<_> = (0..jobs).map(|_| job.clone()).collect();
            axum::body::Bytes::from(json!({ "jobs": all }).to_string())
        };
        let full = body(size);
        let last = body(n % size);
        let batches = n.div_ceil(size);
        let last_is_short = !n.is_multiple_of(size);
        self.post_created(url, batches, clients, "batch", move |i| {
            if i + 1 == batches && last_is_short {
                last.clone()
            } else {
                full.clone()
            }
        })
        .await
    }
}
