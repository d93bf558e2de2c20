//! The `publish` workload: `POST /v1/publish` over loopback HTTP to an API started in this
//! process, whose bus has 3 subscriptions matching the bench topic (an exact topic, `*` and
//! `#`), each a `sys.noop` job on the bench queue with a templated payload. `--jobs N`
//! publishes, each with its own key, `--clients` at a time. Reports publishes per second and
//! jobs created per second (3 a publish), from the first request sent to the last answer
//! read: HTTP, the topic match, 3 templates rendered, the checks of every job, one broker
//! batch a publish with its unique keys, and the answer.
//!
//! Not here: the pool (nothing runs the jobs; the bench queue is dropped afterwards), the
//! report's printing (`super`).

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use hopper_workers::Registry;
use serde_json::json;

use super::{Bench, Report, per_s};
use crate::api::AppState;
use crate::bus::Bus;
use crate::config::SubscriptionConfig;

/// The topic every bench publish uses.
const TOPIC: &str = "bench.user.created";
/// Subscriptions matching it: one job each.
pub const SUBSCRIPTIONS: u64 = 3;

impl Bench {
    pub(super) async fn publish(&self, n: u64, clients: usize) -> Result<Report> {
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
        )
        .with_bus(self.bench_bus()?);
        let (addr, server) = super::serve_api(state, &stop).await?;
        let ran = self
            .post_publishes(&format!("http://{addr}/v1/publish"), n, clients)
            .await;
        stop.cancel();
        let _ = server.await;
        let seconds = ran?;
        Ok(Report {
            publishes: Some(n),
            publishes_per_s: Some(per_s(n, seconds)),
            enqueue_jobs_per_s: Some(per_s(n * SUBSCRIPTIONS, seconds)),
            // No pool runs: the concurrency is the clients'.
            concurrency: clients,
            ..Report::new("publish", self, n * SUBSCRIPTIONS)
        })
    }

    /// The bench's 3 subscriptions, all on the bench queue.
    fn bench_bus(&self) -> Result<Bus> {
        let payload: toml::Table = toml::from_str(
            r#"to = "{{ data.email }}"
name = "Hello {{ data.name }}"
n = "{{ data.n }}""#,
        )
        .context("the bench's payload template")?;
        let configs: Vec<SubscriptionConfig> = ["bench.user.created", "bench.user.*", "bench.#"]
            .into_iter()
            .map(|topic| SubscriptionConfig {
                topic: topic.into(),
                kind: "sys.noop".into(),
                queue: Some(self.queue.clone()),
                payload: Some(payload.clone()),
                ..SubscriptionConfig::default()
            })
            .collect();
        let mut problems = Vec::new();
        let bus = Bus::compile(&configs, &mut problems);
        if !problems.is_empty() {
            bail!("the bench's subscriptions: {}", problems.join("; "));
        }
        Ok(bus)
    }

    /// Posts `n` publishes from `clients` concurrent clients; returns the seconds taken.
    async fn post_publishes(&self, url: &str, n: u64, clients: usize) -> Result<f64> {
        let run = self.queue.clone();
        self.post_created(url, n, clients, "publish", move |i| {
            let body = json!({"topic": TOPIC, "key": format!("{run}-{i}"),
                "data": {"email": format!("u{i}@example.com"), "name": "Ann", "n": i}});
            axum::body::Bytes::from(body.to_string())
        })
        .await
    }
}
