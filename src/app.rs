//! Wiring: builds a node (the broker, the registry of job kinds, the worker pool, the
//! schedules, `hopper.retention`, and in `serve` the relay of job events to
//! `[[subscription]]`s) once from checked [`Settings`],
//! and runs them with the HTTP API ([`serve`]) or alone ([`worker`]) until a shutdown token
//! fires.
//!
//! Every task started here is tracked and stops on the token; [`serve`] and [`worker`] return
//! only when all of them have. The two-phase drain of running jobs is the pool's own
//! (`hopper_workers::pool::Pool::run`); this module only decides *when* it starts. Under
//! systemd (`NOTIFY_SOCKET` set) it says `READY=1` once the broker answered, the pool runs and
//! (for `serve`) the API listens, and leaves the rest of the conversation to [`systemd`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::serve::ListenerExt;
use hopper_workers::broker::OpenOptions;
use hopper_workers::clock::{self, Clock};
use hopper_workers::metrics::Metered;
use hopper_workers::pool::{Pool, PoolHandle};
use hopper_workers::retention::{Retention, RetentionPolicy};
use hopper_workers::{Broker, Registry};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, AppState};
use crate::config::{Config, ConfigError, Settings};
use crate::systemd;

/// Test-only fault hook (not a setting): while the file this names exists, the fetch loop
/// blocks, as a hung one would (`PoolConfig::fault_block_fetch_file`). Unset: no cost.
const FAULT_BLOCK_FETCH_FILE: &str = "HOPPER_FAULT_BLOCK_FETCH_FILE";

/// Opens the broker `[broker]` names.
pub async fn open_broker(config: &Config, clock: Arc<dyn Clock>) -> Result<Arc<dyn Broker>> {
    let options = OpenOptions {
        prefix: config.broker.prefix.clone(),
        durability: config.broker.durability,
    };
    hopper_workers::broker::open_with(&config.broker.url, &options, clock)
        .await
        .with_context(|| format!("opening broker {}", config.broker.shown_url()))
}

/// How long a starting node waits before trying its broker again.
const BROKER_RETRY: Duration = Duration::from_secs(1);

/// Opens the broker and waits until it answers. A node started while its broker is down (at
/// boot, a Redis restarted in a rolling deploy, on another machine) waits for it, saying so
/// once, instead of exiting: under systemd, five quick failures in two minutes stop the unit
/// for good (`StartLimitBurst`), and its `TimeoutStartSec` bounds the wait instead. A broker
/// setting that cannot work (a refused password, an unknown scheme) still ends the start at
/// once, and `shutdown` ends the wait (exit 0). A host name that does not resolve waits too:
/// Redis' client tells it from a host that is down only by its text. `waiting` fires when the
/// wait begins: `serve`'s port answers 503 meanwhile ([`stand_in`]).
async fn open_patiently(
    config: &Config,
    clock: &Arc<dyn Clock>,
    shutdown: &CancellationToken,
    waiting: &CancellationToken,
) -> Result<Arc<dyn Broker>> {
    let mut said = false;
    loop {
        let attempt = async {
            let broker = open_broker(config, clock.clone()).await?;
            broker
                .ping()
                .await
                .with_context(|| format!("the broker {} does not answer", broker.name()))?;
            anyhow::Ok(broker)
        };
        // A stop asked for while waiting (Ctrl-C, `systemctl stop`) is no failure: exit 0,
        // and at once, not after an attempt's connect timeout.
        let stopped = || {
            anyhow::Error::new(crate::exit::CliError::Ended {
                message: "stopped before the broker answered".to_owned(),
                code: 0,
            })
        };
        let attempt = tokio::select! {
            () = shutdown.cancelled() => return Err(stopped()),
            attempt = attempt => attempt,
        };
        match attempt {
            Err(e) if crate::exit::broker_unavailable(&e) => {
                if !said {
                    tracing::warn!(
                        "{}; waiting for the broker (trying again every {}s)",
                        crate::exit::message(&e),
                        BROKER_RETRY.as_secs()
                    );
                    said = true;
                    waiting.cancel();
                }
                tokio::select! {
                    () = shutdown.cancelled() => return Err(stopped()),
                    () = tokio::time::sleep(BROKER_RETRY) => {}
                }
            }
            Err(e) => return Err(e),
            Ok(broker) => {
                if said {
                    tracing::info!("the broker answers; starting");
                }
                return Ok(broker);
            }
        }
    }
}

/// The job kinds this process knows: the diagnostic `sys.*` kinds unless
/// `[worker] diagnostics = false`, every kind of `hopper-jobs`, `notify.send` delivering
/// through `broker` (its inbox, push subscriptions and shared circuits; without a broker, as in
/// `hopper check-config`, known but unable to deliver), and `chaos.ledger` in the processes
/// `hopper chaos` starts.
pub fn build_registry(settings: &Settings, broker: Option<&Arc<dyn Broker>>) -> Result<Registry> {
    let mut registry = Registry::new();
    if settings.config.worker.diagnostics {
        hopper_workers::diagnostics::register(&mut registry)
            .context("registering the diagnostic kinds")?;
    }
    hopper_jobs::register_all(&mut registry, &settings.jobs)
        .context("registering the job kinds")?;
    match broker {
        // Inbox, push subscriptions and the circuits every node's breakers share.
        Some(broker) => crate::notify::register(&mut registry, &settings.jobs, broker.clone())
            .context("registering notify.send")?,
        None => {
            let (inbox, subscriptions) =
                crate::notify::ports_or_offline(None, &settings.jobs.notify);
            hopper_jobs::notify::register_notify(
                &mut registry,
                &settings.jobs,
                inbox,
                subscriptions,
            )
            .context("registering notify.send")?;
        }
    }
    if let Some(dir) = &settings.chaos_ledger {
        crate::chaos::register_ledger(&mut registry, dir)?;
    }
    Ok(registry)
}

/// Refuses, as a config problem (exit 2), `[notify] templates` that cannot be used (see
/// `hopper_jobs::notify::check_templates`), `[[subscription]]` and `[[schedule]]` kinds
/// `registry` does not know, and a schedule payload its kind refuses: a schedule's payload is
/// fixed, so one the kind refuses would enqueue a job bound for `dead` at every tick.
pub fn check_kinds(settings: &Settings, registry: &Registry) -> Result<()> {
    hopper_jobs::notify::check_templates(&settings.jobs)?;
    let mut problems = settings.bus.check_kinds(registry);
    for schedule in &settings.schedules {
        let spec = schedule.spec();
        // Named as written: names are unique (`Config::check`), so the index is found.
        let at = settings
            .config
            .schedules
            .iter()
            .position(|c| c.name == spec.name)
            .map_or_else(
                || format!("schedule {:?}", spec.name),
                |i| format!("schedule[{i}]"),
            );
        match registry.get(&spec.kind) {
            // Every node registers it over its broker (`node_registry`); a registry built
            // without one (`check-config`, `publish`) lacks it, and the node checks it.
            None if spec.kind == <Retention as hopper_workers::Kind>::NAME => {}
            None => problems.push(format!(
                "{at}.kind: no job kind {:?} is registered (known: {})",
                spec.kind,
                registry.kinds().collect::<Vec<_>>().join(", ")
            )),
            Some(handler) => {
                if let Err(e) = handler.validate(&spec.payload) {
                    problems.push(format!("{at}.{}: {}", e.field, e.message));
                }
            }
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let origin: Vec<&str> = [
        ("subscription", "[[subscription]]"),
        ("schedule", "[[schedule]]"),
    ]
    .into_iter()
    .filter(|(key, _)| problems.iter().any(|p| p.starts_with(key)))
    .map(|(_, table)| table)
    .collect();
    Err(ConfigError::Invalid {
        origin: origin.join(" / "),
        problems,
    }
    .into())
}

/// The registry of a `serve` or `worker` process: every kind of [`build_registry`], and the
/// engine's `hopper.retention` over this node's broker.
fn node_registry(
    settings: &Settings,
    broker: &Arc<dyn Broker>,
    clock: &Arc<dyn Clock>,
) -> Result<Registry> {
    let mut registry = build_registry(settings, Some(broker))?;
    let r = &settings.config.retention;
    let policy = RetentionPolicy {
        succeeded: r.succeeded,
        dead: r.dead,
        events: r.events,
    };
    registry
        .add(Retention::new(broker.clone(), policy, clock.clone()))
        .context("registering hopper.retention")?;
    Ok(registry)
}

/// The parts of a running node, built once for `serve` and `worker` alike: the broker, the
/// registry of kinds, the pool (unless the node runs none) and the schedules, every task
/// tracked.
struct Node {
    broker: Arc<dyn Broker>,
    registry: Arc<Registry>,
    clock: Arc<dyn Clock>,
    config: Arc<Config>,
    tracker: TaskTracker,
    pool: Option<(PoolHandle, JoinHandle<Result<()>>)>,
    /// Cancelled once the pool has drained (at once without a pool), for the tasks that
    /// outlive `shutdown` until then (telling systemd the stop is under way).
    drained: CancellationToken,
}

impl Node {
    /// Opens the broker and starts the pool (when `workers`) and the schedules; everything
    /// stops on `shutdown`. `waiting` fires if the broker does not answer at once.
    async fn start(
        settings: Settings,
        workers: bool,
        shutdown: &CancellationToken,
        hurry: &CancellationToken,
        waiting: &CancellationToken,
    ) -> Result<Self> {
        // Installed before anything records, with its label caps.
        crate::metrics::handle();
        crate::metrics::bound_labels(&settings.config);
        let clock = clock::system();
        // A node is only up (READY=1 under systemd) once its broker answers.
        let broker: Arc<dyn Broker> = Arc::new(Metered::new(
            open_patiently(&settings.config, &clock, shutdown, waiting).await?,
        ));
        let registry = Arc::new(node_registry(&settings, &broker, &clock)?);
        check_kinds(&settings, &registry)?;
        let tracker = TaskTracker::new();
        tracker.spawn(crate::metrics::upkeep(shutdown.clone()));
        let pool = workers.then(|| {
            let mut config = settings.pool.clone();
            config.fault_block_fetch_file =
                std::env::var_os(FAULT_BLOCK_FETCH_FILE).map(PathBuf::from);
            let pool = Pool::new(broker.clone(), registry.clone(), config, clock.clone());
            let handle = pool.handle();
            (handle, spawn_pool(&tracker, pool, shutdown.clone()))
        });
        spawn_schedules(
            &tracker,
            broker.clone(),
            &settings,
            &registry,
            clock.clone(),
            shutdown.clone(),
        )?;
        let drained = CancellationToken::new();
        if let Some((handle, _)) = &pool {
            tracker.spawn(end_grace_on(hurry.clone(), handle.clone(), drained.clone()));
        }
        let config = Arc::new(settings.config);
        Ok(Self {
            broker,
            registry,
            clock,
            config,
            tracker,
            pool,
            drained,
        })
    }

    /// Under systemd: `READY=1` now, then status lines, watchdog pings and the stop
    /// notifications, in a tracked task that ends once the node has drained.
    fn notify_ready(&self, label: String, shutdown: &CancellationToken) {
        let Some(notifier) = systemd::Notifier::from_env() else {
            return;
        };
        let pool = self.pool.as_ref().map(|(handle, _)| handle.clone());
        notifier.ready(&label);
        self.tracker.spawn(notifier.run(
            pool,
            label,
            self.config.worker.shutdown_grace,
            shutdown.clone(),
            self.drained.clone(),
        ));
    }

    /// Waits for the pool to drain (it does once `shutdown` fires, or when it fails), then
    /// for every other task.
    async fn stop(self, shutdown: &CancellationToken) -> Result<()> {
        self.tracker.close();
        let pooled = match self.pool {
            None => Ok(()),
            Some((_, task)) => task
                .await
                .context("the worker pool task panicked")
                .and_then(|ran| ran),
        };
        self.drained.cancel();
        shutdown.cancel();
        self.tracker.wait().await;
        tracing::info!("stopped");
        pooled
    }
}

/// Ends the pool's grace period when `hurry` fires (a second signal: `crate::cli`), so its
/// running jobs are released now rather than left leased; returns once the pool drained.
async fn end_grace_on(hurry: CancellationToken, pool: PoolHandle, drained: CancellationToken) {
    tokio::select! {
        () = hurry.cancelled() => {
            tracing::warn!("not waiting for running jobs: releasing them to their queues");
            pool.end_grace();
        }
        () = drained.cancelled() => {}
    }
}

/// Runs the HTTP API on `listener` and, unless `no_workers`, the worker pool, until
/// `shutdown` fires; then stops accepting requests, lets the pool drain (cut short by
/// `hurry`: the running jobs are released at once), and returns.
///
/// Logs `listening on ADDR` once the broker is open and requests are accepted. Refuses a
/// non-loopback listener when no auth tokens are configured.
pub async fn serve(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
    hurry: CancellationToken,
    no_workers: bool,
) -> Result<()> {
    let addr = listener
        .local_addr()
        .context("reading the listen address")?;
    if !addr.ip().is_loopback() && settings.config.auth.tokens.is_empty() {
        return Err(ConfigError::Invalid {
            origin: "server.listen".into(),
            problems: vec![format!(
                "{addr} is not a loopback address and [auth] tokens is empty; set tokens (or \
                 HOPPER_TOKENS) before exposing the API"
            )],
        }
        .into());
    }
    let bus = settings.bus.clone();
    let (waiting, started) = (CancellationToken::new(), CancellationToken::new());
    let (listener, mut stand_in) = stand_in(listener, &waiting, &started)?;
    let node = Node::start(settings, !no_workers, &shutdown, &hurry, &waiting).await;
    // The stand-in stops taking connections and finishes its answers before the API takes
    // the port over (or the start failed): for [`STAND_IN_DRAIN`] at most, as a peer that
    // sent half a request would hold it (and the API) for as long as it likes.
    started.cancel();
    tokio::select! {
        ended = &mut stand_in => if ended.is_err() {
            tracing::warn!("the stand-in answering while the broker was awaited panicked");
        },
        () = tokio::time::sleep(STAND_IN_DRAIN) => stand_in.abort(),
        () = shutdown.cancelled() => stand_in.abort(),
    }
    let node = node?;
    let mut state = AppState::new(
        node.broker.clone(),
        node.registry.clone(),
        node.clock.clone(),
        node.config.clone(),
    )
    .with_bus(bus.clone());
    if let Some((handle, _)) = &node.pool {
        state = state.with_pool(handle.clone());
    }
    // One reader of the event log for every stream this process serves.
    node.tracker.spawn(state.hub.clone().run(shutdown.clone()));
    // Job events as topics (`job.dead`), once across every node (see `crate::bus`).
    if bus.takes_job_events() {
        node.tracker.spawn(crate::bus::run_relay(
            bus,
            state.service.clone(),
            shutdown.clone(),
        ));
    }
    node.tracker
        .spawn(state.inbox.clone().run(shutdown.clone()));
    tracing::info!(
        broker = node.broker.name(),
        workers = if no_workers {
            0
        } else {
            node.config.worker.concurrency
        },
        "listening on {addr}"
    );
    node.notify_ready(format!("serving on {addr}"), &shutdown);
    // With the peer's address, which `[server] rate_limit` keys on when auth is off.
    let app = api::router(state).into_make_service_with_connect_info::<SocketAddr>();
    // A peer that stops reading for two ping intervals loses its connection (see `stall`).
    let patience = 2 * node.config.server.ws_ping_interval;
    let listener = api::stall::StallGuard::new(listener, patience).tap_io(api::stall::no_delay);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await
        .context("serving HTTP");
    // However the server ended, stop the rest and wait for it.
    shutdown.cancel();
    let stopped = node.stop(&shutdown).await;
    served.and(stopped)
}

/// How long the stand-in ([`stand_in`]) may take to finish its answers once the broker
/// answered; its connections still open then are closed.
const STAND_IN_DRAIN: Duration = Duration::from_secs(2);

/// Answers on `listener`'s port from when `waiting` fires (the broker did not answer at once)
/// until `started` does (`crate::api::starting`), on a second handle of the same socket;
/// returns the listener for the API and the stand-in's task. A node whose broker answers at
/// once never starts it: a request in its first milliseconds waits for the API, as before.
fn stand_in(
    listener: TcpListener,
    waiting: &CancellationToken,
    started: &CancellationToken,
) -> Result<(TcpListener, JoinHandle<()>)> {
    let socket = listener.into_std().context("taking the listener")?;
    let second = socket.try_clone().context("duplicating the listener")?;
    let listener = TcpListener::from_std(socket).context("taking the listener back")?;
    let (waiting, started) = (waiting.clone(), started.clone());
    let task = tokio::spawn(async move {
        tokio::select! {
            () = started.cancelled() => return,
            () = waiting.cancelled() => {}
        }
        let second = match TcpListener::from_std(second) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot answer while waiting for the broker");
                return;
            }
        };
        if let Ok(addr) = second.local_addr() {
            tracing::info!("answering 503 on {addr} until the broker answers");
        }
        let served = axum::serve(second, crate::api::starting::router())
            .with_graceful_shutdown(started.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "answering while waiting for the broker failed");
        }
    });
    Ok((listener, task))
}

/// Runs only the worker pool (a worker node) until `shutdown` fires and the pool has drained
/// (cut short by `hurry`, as in [`serve`]), and `GET /metrics` on `[worker] metrics_listen`
/// if set.
pub async fn worker(
    settings: Settings,
    shutdown: CancellationToken,
    hurry: CancellationToken,
) -> Result<()> {
    // Bound first: a taken port fails the start before any job is fetched.
    let metrics = match settings.metrics_listen {
        None => None,
        Some(addr) => Some((
            addr,
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding [worker] metrics_listen {addr}"))?,
        )),
    };
    let node = Node::start(settings, true, &shutdown, &hurry, &CancellationToken::new()).await?;
    if let Some((addr, listener)) = metrics {
        let mut state = AppState::new(
            node.broker.clone(),
            node.registry.clone(),
            node.clock.clone(),
            node.config.clone(),
        );
        if let Some((handle, _)) = &node.pool {
            state = state.with_pool(handle.clone());
        }
        let stop = shutdown.clone();
        node.tracker.spawn(async move {
            let served = axum::serve(listener, api::metrics_router(state))
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "serving /metrics failed");
            }
        });
        tracing::info!("serving /metrics on {addr}");
    }
    tracing::info!(
        broker = node.broker.name(),
        queues = %node.config.worker.queues.join(","),
        concurrency = node.config.worker.concurrency,
        "worker started"
    );
    node.notify_ready(
        format!("worker on {}", node.config.worker.queues.join(",")),
        &shutdown,
    );
    node.stop(&shutdown).await
}

/// Runs the pool; if it fails, the whole process shuts down (a server whose jobs silently
/// stopped running is worse than one that restarts).
fn spawn_pool(
    tracker: &TaskTracker,
    pool: Pool,
    shutdown: CancellationToken,
) -> JoinHandle<Result<()>> {
    tracker.spawn(async move {
        let ran = pool.run(shutdown.clone()).await;
        if let Err(e) = &ran {
            tracing::error!(error = %e, "the worker pool failed; shutting down");
            shutdown.cancel();
        }
        ran.context("worker pool")
    })
}

/// Runs the `[[schedule]]` entries. Every process runs them: each tick's job has a unique key,
/// so the broker keeps one however many processes enqueue it.
fn spawn_schedules(
    tracker: &TaskTracker,
    broker: Arc<dyn Broker>,
    settings: &Settings,
    registry: &Registry,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> Result<()> {
    let mut schedules = settings.schedules.clone();
    // Retention runs as a job like any other: once per tick across nodes, visible in the
    // history.
    schedules.push(settings.retention.clone());
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
