//! `GET /metrics`: the process's Prometheus recorder, the gauges read at scrape time, and the
//! shell's own `hopper_*` metrics (HTTP requests, event streams, published events).
//!
//! The recorder is installed once per process ([`handle`]); everything recorded through the
//! `metrics` facade, the engine's job and broker metrics included
//! (`hopper_workers::metrics`), is rendered by it. Gauges that describe state rather than
//! count happenings (queue depth, worker slots, the open circuits of notification endpoints) are computed when scraped, from a cache of
//! the broker's `queues()` (and `circuits()`) at most [`QUEUES_MAX_AGE`] old ([`Scrape`]): nothing polls the
//! broker while nobody scrapes, and a burst of scrapes costs one broker call a second.
//!
//! Label values that clients choose (queue names, push service origins) are capped
//! (`hopper_workers::metrics::LabelValues`, `[worker] metrics_max_label_values`): past the
//! cap they are folded into `_other`, so a client cannot grow a scrape without bound.
//!
//! Not here: the route and its auth (`crate::api`), the listener of `hopper worker`
//! (`crate::app`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use hopper_jobs::notify::CIRCUIT_OPEN;
use hopper_workers::job::JobState;
use hopper_workers::metrics::{ENDPOINT_LABELS, QUEUE_LABELS};
use hopper_workers::pool::PoolHandle;
use hopper_workers::{Broker, BrokerResult};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Jobs by `queue` and `state` (gauge).
pub const QUEUE_JOBS: &str = "hopper_queue_jobs";
/// This process's worker slots by `state`, `busy` or `idle` (gauge).
pub const WORKER_SLOTS: &str = "hopper_worker_slots";
/// HTTP requests by `route` (the matched route template) and `status`.
pub const HTTP_REQUESTS: &str = "hopper_http_requests_total";
/// Seconds per HTTP request by `route`.
pub const HTTP_REQUEST_SECONDS: &str = "hopper_http_request_seconds";
/// Open WebSocket event streams (gauge).
pub const WS_CONNECTIONS: &str = "hopper_ws_connections";
/// Open `GET /v1/notifications` WebSockets (gauge).
pub const NOTIFICATION_CONNECTIONS: &str = "hopper_notification_connections";
/// Events the hub published to its streams, by `type`.
pub const EVENTS_PUBLISHED: &str = "hopper_events_published_total";

/// How old the cached `queues()` may be when a scrape reads it.
pub const QUEUES_MAX_AGE: Duration = Duration::from_secs(1);

/// Histogram buckets (seconds), one set for every `_seconds` family: from a fast broker call
/// (0.5 ms) to the default job timeout (30 min).
const BUCKETS: [f64; 18] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 1800.0,
];

/// The route label of a request that matched no route: one value, however many paths.
const UNMATCHED: &str = "unmatched";

/// How often [`upkeep`] folds recorded histogram samples into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The process's recorder, installed on first use; `None` if another recorder was installed
/// first (then nothing is rendered, and `/metrics` says so).
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE.get_or_init(install).as_ref()
}

fn install() -> Option<PrometheusHandle> {
    let recorder = match PrometheusBuilder::new().set_buckets(&BUCKETS) {
        Ok(b) => b.build_recorder(),
        Err(e) => {
            tracing::error!(error = %e, "metrics: bad histogram buckets");
            return None;
        }
    };
    let handle = recorder.handle();
    if let Err(e) = metrics::set_global_recorder(recorder) {
        tracing::warn!(error = %e, "metrics: another recorder is installed; /metrics is empty");
        return None;
    }
    describe();
    // The families without labels are series from the start, at 0: absent until their first
    // event, an alert on them or a graph of them read "no data" where the answer was 0.
    metrics::gauge!(WS_CONNECTIONS).increment(0.0);
    metrics::gauge!(NOTIFICATION_CONNECTIONS).increment(0.0);
    metrics::counter!(hopper_workers::metrics::HEARTBEAT_FAILURES).increment(0);
    metrics::counter!(hopper_workers::metrics::LEASES_LOST).increment(0);
    Some(handle)
}

/// Sets the label caps of `[worker] metrics_max_label_values`, the queues the config names
/// keeping their own labels whatever the cap.
pub fn bound_labels(config: &crate::config::Config) {
    hopper_workers::metrics::set_max_label_values(config.worker.metrics_max_label_values);
    // By name: an entry of `[worker] queues` may carry a weight ("critical:6").
    QUEUE_LABELS.keep(
        config
            .worker
            .queue_names()
            .chain(config.queues.iter().map(|q| q.name.as_str()))
            .chain([hopper_workers::retention::MAINTENANCE_QUEUE]),
    );
}

/// Folds the samples recorded since the last pass into the histograms' buckets every
/// [`UPKEEP_EVERY`], until `shutdown`.
///
/// The exporter appends each histogram sample (24 bytes) to a queue and only folds the queue
/// into its buckets when it renders or runs upkeep; a node nobody scrapes would otherwise grow
/// by a few dozen bytes per job, without bound. A pass costs a few microseconds per queued
/// sample, so every 5 s keeps the queues small without showing in the pool's throughput.
pub async fn upkeep(shutdown: tokio_util::sync::CancellationToken) {
    let Some(handle) = handle() else {
        return;
    };
    let mut every = tokio::time::interval(UPKEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => handle.run_upkeep(),
        }
    }
}

/// The `# HELP` lines.
fn describe() {
    use hopper_workers::metrics as engine;
    metrics::describe_gauge!(QUEUE_JOBS, "Jobs by queue and state.");
    metrics::describe_gauge!(WORKER_SLOTS, "Worker slots of this process, busy or idle.");
    metrics::describe_counter!(HTTP_REQUESTS, "HTTP requests by route template and status.");
    metrics::describe_histogram!(HTTP_REQUEST_SECONDS, "HTTP request time by route template.");
    metrics::describe_gauge!(WS_CONNECTIONS, "Open WebSocket event streams.");
    metrics::describe_gauge!(
        NOTIFICATION_CONNECTIONS,
        "Open WebSocket notification streams."
    );
    metrics::describe_counter!(EVENTS_PUBLISHED, "Events published to streams, by type.");
    metrics::describe_counter!(engine::JOBS_FINISHED, "Attempts ended, by outcome.");
    metrics::describe_histogram!(engine::JOB_RUN_SECONDS, "Handler run time.");
    metrics::describe_histogram!(engine::JOB_PICKUP_SECONDS, engine::JOB_PICKUP_HELP);
    metrics::describe_counter!(engine::HEARTBEAT_FAILURES, "Heartbeat calls that failed.");
    metrics::describe_counter!(engine::LEASES_LOST, "Handlers stopped for a lost lease.");
    metrics::describe_histogram!(
        engine::BROKER_CALL_SECONDS,
        "Broker call time by operation."
    );
    metrics::describe_counter!(engine::BROKER_ERRORS, "Broker calls that failed.");
    metrics::describe_counter!(
        crate::bus::PUBLISH_TOTAL,
        "Events published to the bus, by the first matching subscription's topic pattern \
         (\"(unmatched)\" when none matched) and whether any matched."
    );
}

/// What a scrape reads besides the recorder: the broker (through a cache) and the pool.
#[derive(Clone, Debug)]
pub struct Scrape {
    broker: Arc<dyn Broker>,
    /// When the queue gauges were last set; held across the broker call, so concurrent
    /// scrapes wait for one call instead of each making their own.
    refreshed: Arc<tokio::sync::Mutex<Option<Instant>>>,
    /// The pool of this process and its slots, if it runs one.
    pool: Option<(PoolHandle, usize)>,
    /// The endpoints whose `hopper_notify_circuit_open` the last refresh set to 1.
    open_circuits: Arc<std::sync::Mutex<HashSet<String>>>,
}

impl Scrape {
    /// Queue gauges from `broker`; no worker slots until [`Scrape::with_pool`].
    pub fn new(broker: Arc<dyn Broker>) -> Self {
        Self {
            broker,
            refreshed: Arc::default(),
            pool: None,
            open_circuits: Arc::default(),
        }
    }

    /// Reports the slots of `pool`, `concurrency` in all.
    #[must_use]
    pub fn with_pool(mut self, pool: PoolHandle, concurrency: usize) -> Self {
        self.pool = Some((pool, concurrency));
        self
    }

    /// Sets the scrape-time gauges and renders every metric in the Prometheus text format.
    /// A broker that does not answer fails no scrape: the process's own series are what
    /// describe the outage (`hopper_broker_errors_total`, the HTTP answers), so they are
    /// rendered, and the gauges read from the broker keep their last values (logged).
    pub async fn render(&self) -> BrokerResult<String> {
        if let Err(e) = self.refresh_queues().await {
            tracing::warn!(error = %e, "metrics: the broker's gauges were not refreshed");
        }
        if let Some((pool, concurrency)) = &self.pool {
            let busy = pool.running().min(*concurrency);
            metrics::gauge!(WORKER_SLOTS, "state" => "busy").set(busy as f64);
            metrics::gauge!(WORKER_SLOTS, "state" => "idle").set((concurrency - busy) as f64);
        }
        Ok(handle().map_or_else(String::new, |h| {
            h.run_upkeep();
            h.render()
        }))
    }

    async fn refresh_queues(&self) -> BrokerResult<()> {
        let mut refreshed = self.refreshed.lock().await;
        if refreshed.is_some_and(|at| at.elapsed() < QUEUES_MAX_AGE) {
            return Ok(());
        }
        // Queues folded into one label (past the cap) show their sum.
        let mut by_label: HashMap<String, [u64; JobState::ALL.len()]> = HashMap::new();
        for q in self.broker.queues().await? {
            let counts = by_label.entry(QUEUE_LABELS.of(&q.queue)).or_default();
            for (i, state) in JobState::ALL.into_iter().enumerate() {
                counts[i] += q.counts.get(state);
            }
        }
        for (label, counts) in by_label {
            for (i, state) in JobState::ALL.into_iter().enumerate() {
                metrics::gauge!(
                    QUEUE_JOBS,
                    "queue" => label.clone(),
                    "state" => state.as_str(),
                )
                .set(counts[i] as f64);
            }
        }
        self.refresh_circuits().await?;
        *refreshed = Some(Instant::now());
        Ok(())
    }

    /// `hopper_notify_circuit_open` from the circuits shared in the broker, so that any node
    /// shows every open circuit (1), and 0 for one that closed since the last refresh. The
    /// endpoints past the label cap share `_other`, whose value is how many of them are open.
    async fn refresh_circuits(&self) -> BrokerResult<()> {
        let mut open: HashMap<String, u32> = HashMap::new();
        for c in self.broker.circuits().await? {
            if c.open_for.is_none() {
                continue;
            }
            // Never the whole URL: it may carry the webhook's secret.
            let label = ENDPOINT_LABELS.of(&hopper_jobs::notify::breaker::label(&c.endpoint));
            *open.entry(label).or_default() += 1;
        }
        let mut last = self
            .open_circuits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for closed in last.iter().filter(|e| !open.contains_key(*e)) {
            metrics::gauge!(CIRCUIT_OPEN, "endpoint" => closed.clone()).set(0.0);
        }
        for (endpoint, n) in &open {
            metrics::gauge!(CIRCUIT_OPEN, "endpoint" => endpoint.clone()).set(f64::from(*n));
        }
        *last = open.into_keys().collect();
        Ok(())
    }
}

/// Middleware: counts and times each request under its route template (`/v1/jobs/{id}`),
/// never its raw path, so the label's values are as many as the routes.
pub async fn track_http(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| UNMATCHED.to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(req).await;
    metrics::histogram!(HTTP_REQUEST_SECONDS, "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(
        HTTP_REQUESTS,
        "route" => route,
        "status" => response.status().as_str().to_owned(),
    )
    .increment(1);
    response
}

/// Counts one open WebSocket stream in [`WS_CONNECTIONS`] for as long as it lives.
#[derive(Debug)]
pub struct WsConnection(());

impl WsConnection {
    /// Counts a stream opened.
    pub fn open() -> Self {
        metrics::gauge!(WS_CONNECTIONS).increment(1.0);
        Self(())
    }
}

impl Drop for WsConnection {
    fn drop(&mut self) {
        metrics::gauge!(WS_CONNECTIONS).decrement(1.0);
    }
}

/// Counts one event published by the hub.
pub fn event_published(kind: &'static str) {
    metrics::counter!(EVENTS_PUBLISHED, "type" => kind).increment(1);
}
