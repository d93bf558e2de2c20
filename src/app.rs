//! Wiring: builds the broker, the registry of job kinds and the worker pool from a [`Config`],
//! and runs them with the HTTP API ([`serve`]) or alone ([`worker`]) until a shutdown token
//! fires.
//!
//! Every task started here is tracked and stops on the token; [`serve`] and [`worker`] return
//! only when all of them have. The two-phase drain of running jobs is the pool's own
//! (`hopper_workers::pool::Pool::run`); this module only decides *when* it starts.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hopper_workers::clock::{self, Clock};
use hopper_workers::job::JobState;
use hopper_workers::pool::Pool;
use hopper_workers::{Broker, Registry};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, AppState};
use crate::config::{Config, ConfigError};

/// Opens the broker `[broker]` names.
pub async fn open_broker(config: &Config, clock: Arc<dyn Clock>) -> Result<Arc<dyn Broker>> {
    hopper_workers::broker::open(&config.broker.url, &config.broker.prefix, clock)
        .await
        .with_context(|| format!("opening broker {}", config.broker.url))
}

/// The job kinds this process knows: the diagnostic `sys.*` kinds unless
/// `[worker] diagnostics = false`, and every kind of `hopper-jobs`.
pub fn build_registry(config: &Config) -> Result<Registry> {
    build_registry_with(config, None)
}

/// The registry of a `serve` or `worker` process: every kind, with `cleanup.purge` able to
/// run the retention of job records on `broker`.
fn node_registry(
    config: &Config,
    broker: &Arc<dyn Broker>,
    clock: &Arc<dyn Clock>,
) -> Result<Registry> {
    build_registry_with(
        config,
        Some(Arc::new(Retention {
            broker: broker.clone(),
            retention: config.retention.clone(),
            clock: clock.clone(),
        })),
    )
}

/// [`build_registry`] for a process that holds the broker: `cleanup.purge` can then run the
/// retention of job records.
fn build_registry_with(
    config: &Config,
    records: Option<hopper_jobs::RecordsHandle>,
) -> Result<Registry> {
    let mut registry = Registry::new();
    if config.worker.diagnostics {
        hopper_workers::diagnostics::register(&mut registry)
            .context("registering the diagnostic kinds")?;
    }
    hopper_jobs::register_all_with(&mut registry, &config.jobs_config(), records)
        .context("registering the job kinds")?;
    Ok(registry)
}

/// Runs the HTTP API on `listener` and, unless `no_workers`, the worker pool, until
/// `shutdown` fires; then stops accepting requests, lets the pool drain, and returns.
///
/// Logs `listening on ADDR` once the broker is open and requests are accepted. Refuses a
/// non-loopback listener when no auth tokens are configured.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
    no_workers: bool,
) -> Result<()> {
    let addr = listener
        .local_addr()
        .context("reading the listen address")?;
    if !addr.ip().is_loopback() && config.auth.tokens.is_empty() {
        return Err(ConfigError::Invalid {
            origin: "server.listen".into(),
            problems: vec![format!(
                "{addr} is not a loopback address and [auth] tokens is empty; set tokens (or \
                 HOPPER_TOKENS) before exposing the API"
            )],
        }
        .into());
    }
    let clock = clock::system();
    let broker = open_broker(&config, clock.clone()).await?;
    let registry = Arc::new(node_registry(&config, &broker, &clock)?);
    let config = Arc::new(config);
    let tracker = TaskTracker::new();

    let mut state = AppState::new(
        broker.clone(),
        registry.clone(),
        clock.clone(),
        config.clone(),
    );
    let pool_task = if no_workers {
        None
    } else {
        let pool = Pool::new(
            broker.clone(),
            registry.clone(),
            config.pool_config(),
            clock.clone(),
        );
        state = state.with_pool(pool.handle());
        Some(spawn_pool(&tracker, pool, &config, shutdown.clone()))
    };
    spawn_schedules(
        &tracker,
        broker.clone(),
        &config,
        &registry,
        clock.clone(),
        shutdown.clone(),
    )?;

    tracing::info!(
        broker = broker.name(),
        workers = if no_workers {
            0
        } else {
            config.worker.concurrency
        },
        "listening on {addr}"
    );
    let served = axum::serve(listener, api::router(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await
        .context("serving HTTP");
    // However the server ended, stop the rest and wait for it.
    shutdown.cancel();
    tracker.close();
    let pooled = join_pool(pool_task).await;
    tracker.wait().await;
    tracing::info!("stopped");
    served.and(pooled)
}

/// Runs only the worker pool (a worker node) until `shutdown` fires and the pool has drained.
pub async fn worker(config: Config, shutdown: CancellationToken) -> Result<()> {
    let clock = clock::system();
    let broker = open_broker(&config, clock.clone()).await?;
    let registry = Arc::new(node_registry(&config, &broker, &clock)?);
    let tracker = TaskTracker::new();
    let pool = Pool::new(
        broker.clone(),
        registry.clone(),
        config.pool_config(),
        clock.clone(),
    );
    let pool_task = spawn_pool(&tracker, pool, &config, shutdown.clone());
    spawn_schedules(
        &tracker,
        broker.clone(),
        &config,
        &registry,
        clock.clone(),
        shutdown.clone(),
    )?;
    tracing::info!(
        broker = broker.name(),
        queues = %config.worker.queues.join(","),
        concurrency = config.worker.concurrency,
        "worker started"
    );
    tracker.close();
    let pooled = join_pool(Some(pool_task)).await;
    shutdown.cancel();
    tracker.wait().await;
    tracing::info!("stopped");
    pooled
}

/// Runs the pool; if it fails, the whole process shuts down (a server whose jobs silently
/// stopped running is worse than one that restarts).
fn spawn_pool(
    tracker: &TaskTracker,
    pool: Pool,
    config: &Config,
    shutdown: CancellationToken,
) -> JoinHandle<Result<()>> {
    tracing::debug!(queues = ?config.worker.queues, "starting the worker pool");
    tracker.spawn(async move {
        let ran = pool.run(shutdown.clone()).await;
        if let Err(e) = &ran {
            tracing::error!(error = %e, "the worker pool failed; shutting down");
            shutdown.cancel();
        }
        ran.context("worker pool")
    })
}

async fn join_pool(task: Option<JoinHandle<Result<()>>>) -> Result<()> {
    match task {
        None => Ok(()),
        Some(t) => t.await.context("the worker pool task panicked")?,
    }
}

/// Runs the `[[schedule]]` entries. Every process runs them: each tick's job has a unique key,
/// so the broker keeps one however many processes enqueue it.
fn spawn_schedules(
    tracker: &TaskTracker,
    broker: Arc<dyn Broker>,
    config: &Config,
    registry: &Registry,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> Result<()> {
    let mut schedules = config
        .schedules()
        .map_err(|e| anyhow::anyhow!("{}: {}", e.field, e.message))?;
    // Retention runs as a job like any other (once per tick across nodes, visible in the
    // history), when this build has the `cleanup.purge` kind.
    if registry.get("cleanup.purge").is_some() {
        schedules.push(
            hopper_workers::schedule::Schedule::new(config.retention_schedule())
                .map_err(|e| anyhow::anyhow!("retention.cron: {}", e.message))?,
        );
    }
    for s in &schedules {
        let kind = &s.spec().kind;
        if registry.get(kind).is_none() {
            anyhow::bail!(
                "schedule {:?}: no job kind {kind:?} is registered here",
                s.spec().name
            );
        }
    }
    tracker.spawn(hopper_workers::schedule::run(
        broker, schedules, clock, shutdown,
    ));
    Ok(())
}

/// The engine's retention, run by `cleanup.purge {"records": true}` jobs: deletes finished
/// jobs past `[retention]` and trims the event log.
#[derive(Debug)]
struct Retention {
    broker: Arc<dyn Broker>,
    retention: crate::config::RetentionConfig,
    clock: Arc<dyn Clock>,
}

#[async_trait::async_trait]
impl hopper_jobs::cleanup::RecordPurger for Retention {
    async fn purge_records(&self) -> hopper_workers::JobResult {
        let r = &self.retention;
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let now = self.clock.now_ms();
        let succeeded = self
            .broker
            .purge(
                &[JobState::Succeeded],
                now.saturating_sub(ms(r.succeeded)),
                r.events,
            )
            .await
            .map_err(hopper_workers::JobError::retryable)?;
        let dead = self
            .broker
            .purge(
                &[JobState::Dead, JobState::Cancelled],
                now.saturating_sub(ms(r.dead)),
                r.events,
            )
            .await
            .map_err(hopper_workers::JobError::retryable)?;
        if succeeded + dead > 0 {
            tracing::info!(succeeded, dead, "retention purged old jobs");
        }
        Ok(serde_json::json!({ "succeeded_purged": succeeded, "dead_purged": dead }))
    }
}
