//! The worker pool: runs jobs from a broker on a bounded number of async slots.
//!
//! It owns *when* and *how* a job runs, never *what* it does (that is a
//! [`Handler`](crate::handler::Handler)):
//!
//! - **Fetch up to free slots.** One semaphore permit per slot (and per queue, when a queue has
//!   its own limit); a fetch asks for no more jobs than there are free permits, so no job waits
//!   in a local buffer while another node is idle. With nothing to do it blocks in
//!   [`Broker::wait_for_work`] instead of polling.
//! - **Outcomes become transitions.** Ok -> `succeeded`; a retryable error -> `retrying` after the
//!   [`RetryPolicy`] backoff while `attempt <= max_retries`, else `dead`; a permanent error ->
//!   `dead`; snooze -> `scheduled`. A timeout and a panic are retryable failures.
//! - **Leases.** A heartbeat task extends the leases of every running job in one call; a lease
//!   found lost or a job found cancelled stops its handler, and so does a lease whose deadline
//!   passes without a successful heartbeat (the broker unreachable): by then another node may
//!   run the job. A rescuer returns expired leases (of any node) to the queue.
//! - **Batching.** Completions go through one acknowledger task that writes whatever has
//!   accumulated in one [`Broker::finish`] call; progress reports are coalesced per job, at
//!   most one write per job every 100 ms, and a job's last report is written before its end.
//! - **Two-phase shutdown.** When `shutdown` fires: stop fetching, let running jobs finish within
//!   `shutdown_grace` (or until [`PoolHandle::end_grace`]), then cancel the rest and release
//!   their leases at once (`queued` again, the attempt not counted) so another node picks them
//!   up without waiting for the lease.

//!
//! - `running`: the jobs running in this pool, and the [`PoolHandle`] that stops one.
//! - `fetch`: the fetch loop: slots, per-queue limits and rates, waiting for work; the
//!   test-only fault hook that blocks it.
//! - `weights`: the order a fetch round asks its queues in, by their weights (smooth weighted
//!   round-robin).
//! - `execute`: one attempt: the handler under its timeout, panics caught, the outcome.
//! - `unserved`: a job of a kind this pool has no handler for: snoozed saying why, then dead
//!   after `unknown_kind_grace`.
//! - `writes`: the acknowledger: completions and progress, batched.
//! - `leases`: heartbeats, the expiry watch and the rescuer.
//! - `liveness`: the loops' vital signs ([`Vitals`]) for a supervisor such as systemd's
//!   watchdog.
//! - `presence`: this pool's entry in the registry of worker nodes (`crate::nodes`), refreshed
//!   every few seconds and dropped at shutdown; and the per-queue count of running jobs it shows.

mod execute;
mod fetch;
mod leases;
mod liveness;
mod presence;
mod running;
mod unserved;
mod weights;
mod writes;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::broker::{Broker, Finish, JobRate, LeaseStatus, Outcome};
use crate::clock::Clock;
use crate::error::{BrokerError, BrokerResult};
use crate::handler::{Handler, JobContext, JobError, ProgressUpdate, Registry};
use crate::job::{Job, JobId, Lease};
use crate::metrics as meter;
use crate::retry::RetryPolicy;
use crate::time::Timestamp;

use execute::run_job;
use fetch::fetch_loop;
use leases::{expire, heartbeat, rescue};
use liveness::Liveness;
pub use liveness::{BEAT, Vitals};
pub use running::PoolHandle;
use running::{Running, StopReason};
use unserved::unserved;
pub use unserved::unserved_since;
use writes::{acknowledge, write_progress};

/// One queue the pool serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    /// At most this many of its jobs run at once in this pool; `None`: only the pool's limit.
    pub concurrency: Option<usize>,
    /// A paused queue is not fetched from.
    pub paused: bool,
    /// At most this many of its jobs start per period, counted by the broker across every
    /// node (see [`Broker::fetch_rated`]); `None`: no rate, and a plain [`Broker::fetch`].
    pub rate: Option<JobRate>,
    /// How often a fetch round starts with this queue, against the other queues' weights
    /// (Sidekiq's weighted queues): a queue of weight 6 is asked first three times as often
    /// as one of weight 2, and every queue is asked first at least once every sum-of-weights
    /// rounds, so a light queue is slowed, never starved. 1 to [`MAX_WEIGHT`] (0 counts as 1);
    /// 1 by default, and equal weights make plain round-robin.
    pub weight: u32,
}

/// The largest [`QueueSpec::weight`]: a heavier queue would leave the others one round in
/// thousands, which is starvation in all but name.
pub const MAX_WEIGHT: u32 = 1000;

/// The largest [`PoolConfig::concurrency`] and [`QueueSpec::concurrency`] the shell accepts.
/// Each slot can hold a running job: its task, its lease (renewed by the heartbeat) and what
/// its handler holds, and one fetch round asks the broker for up to every free slot at once.
/// Past some thousands a single process is better split into several nodes; a value such as
/// `1000000000000000` is a typing error, and the tokio semaphore refuses more than
/// `usize::MAX >> 3` permits with a panic.
pub const MAX_CONCURRENCY: usize = 10_000;

impl QueueSpec {
    /// A queue with no limit of its own.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            concurrency: None,
            paused: false,
            rate: None,
            weight: 1,
        }
    }
}

/// How the pool runs. The shell builds it from `config.toml` (`[worker]`, `[[queue]]`, `[retry]`).
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Slots: jobs running at once. Defaults to 16.
    pub concurrency: usize,
    /// Queues served, each fetch round starting at the one their weights pick (a queue with
    /// a backlog does not hold the others' jobs back). Defaults to `default`.
    pub queues: Vec<QueueSpec>,
    /// How long a fetched job is held without a heartbeat. Defaults to 30 s.
    pub lease: Duration,
    /// How often leases are extended (and cancellations noticed). Defaults to 10 s.
    pub heartbeat: Duration,
    /// How long running jobs may finish after a shutdown signal. Defaults to 25 s.
    pub shutdown_grace: Duration,
    /// Per-attempt time limit when neither the job nor its kind sets one. Defaults to 30 min.
    pub job_timeout: Duration,
    /// Backoff between attempts.
    pub retry: RetryPolicy,
    /// Interruptions in a row after which a job is dead (poison pill). Defaults to 3.
    pub max_interruptions: u32,
    /// How often expired leases are looked for. Defaults to 1 s.
    pub rescue_interval: Duration,
    /// Longest idle wait for new work before fetching again anyway. Defaults to 1 s.
    pub idle_wait: Duration,
    /// How long a job of a kind this pool does not serve is put off (snoozed, every 5 s,
    /// saying so in its `last_error`) before it goes dead, counted from the first time it
    /// was put off. Defaults to 1 h.
    pub unknown_kind_grace: Duration,
    /// Test-only fault hook: while this file exists, the fetch loop blocks inside an
    /// iteration (until the file is gone or shutdown), as a hung loop would; the watchdog
    /// tests use it. `None` (the default): no check at all.
    pub fault_block_fetch_file: Option<PathBuf>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            queues: vec![QueueSpec::new(crate::job::DEFAULT_QUEUE)],
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(25),
            job_timeout: Duration::from_secs(1800),
            retry: RetryPolicy::default(),
            max_interruptions: 3,
            rescue_interval: Duration::from_secs(1),
            idle_wait: Duration::from_secs(1),
            unknown_kind_grace: Duration::from_secs(3600),
            fault_block_fetch_file: None,
        }
    }
}

/// The worker pool.
#[derive(Debug)]
pub struct Pool {
    broker: Arc<dyn Broker>,
    registry: Arc<Registry>,
    config: PoolConfig,
    clock: Arc<dyn Clock>,
    handle: PoolHandle,
}

/// What a job task needs, shared by all of them.
#[derive(Debug)]
struct Shared {
    /// Where handlers' checkpoints are saved.
    broker: Arc<dyn Broker>,
    registry: Arc<Registry>,
    config: PoolConfig,
    clock: Arc<dyn Clock>,
    handle: PoolHandle,
    finish_tx: mpsc::UnboundedSender<Finish>,
    progress_tx: mpsc::UnboundedSender<ProgressUpdate>,
    /// Progress reports sent by handlers and not yet written (or superseded): while it is 0,
    /// ending an attempt need not wait for the progress writer.
    unwritten: Arc<AtomicUsize>,
    /// Jobs of each queue running now, for the registry of nodes.
    busy: Arc<presence::QueueBusy>,
    /// The job metrics' handles, resolved once per queue and kind.
    meters: Arc<meter::JobMetrics>,
}

impl Pool {
    /// A pool over `broker` running the kinds of `registry`.
    pub fn new(
        broker: Arc<dyn Broker>,
        registry: Arc<Registry>,
        config: PoolConfig,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            broker,
            registry,
            config,
            clock,
            handle: PoolHandle::default(),
        }
    }

    /// A handle for cancelling jobs running in this pool.
    pub fn handle(&self) -> PoolHandle {
        self.handle.clone()
    }

    /// Runs until `shutdown` fires, then drains within the grace period, releases the rest,
    /// flushes every completion to the broker and returns.
    pub async fn run(self, shutdown: CancellationToken) -> BrokerResult<()> {
        let Pool {
            broker,
            registry,
            config,
            clock,
            handle,
        } = self;
        let concurrency = config.concurrency.max(1);
        info!(
            broker = broker.name(),
            concurrency,
            queues = ?config.queues.iter().map(|q| q.name.as_str()).collect::<Vec<_>>(),
            "worker pool started"
        );

        // Background services stop on `services`, after the jobs are done, so that the last
        // completions are still written and leases still extended while jobs drain.
        let services = CancellationToken::new();
        let service_tasks = TaskTracker::new();
        let jobs = TaskTracker::new();

        let (finish_tx, finish_rx) = mpsc::unbounded_channel();
        let (progress_tx, progress_rx) = mpsc::unbounded_channel();
        let (flush_tx, flush_rx) = mpsc::unbounded_channel();
        let unwritten = Arc::new(AtomicUsize::new(0));
        handle.liveness().set_slots(concurrency);
        service_tasks.spawn(acknowledge(
            broker.clone(),
            finish_rx,
            handle.clone(),
            flush_tx,
            unwritten.clone(),
        ));
        service_tasks.spawn(write_progress(
            broker.clone(),
            progress_rx,
            flush_rx,
            unwritten.clone(),
        ));
        service_tasks.spawn(heartbeat(
            broker.clone(),
            handle.clone(),
            clock.clone(),
            config.lease,
            config.heartbeat,
            services.clone(),
        ));
        service_tasks.spawn(expire(handle.clone(), clock.clone(), services.clone()));
        let meters = Arc::new(meter::JobMetrics::default());
        service_tasks.spawn(rescue(
            broker.clone(),
            meters.clone(),
            config.max_interruptions,
            config.rescue_interval,
            services.clone(),
        ));

        let shared = Arc::new(Shared {
            broker: broker.clone(),
            registry,
            config: config.clone(),
            clock,
            handle: handle.clone(),
            finish_tx,
            progress_tx,
            unwritten,
            busy: Arc::new(presence::QueueBusy::default()),
            meters,
        });
        service_tasks.spawn(presence::register(
            broker.clone(),
            presence::Presence {
                config: config.clone(),
                registry: shared.registry.clone(),
                clock: shared.clock.clone(),
                handle: handle.clone(),
                busy: shared.busy.clone(),
            },
            services.clone(),
        ));

        fetch_loop(&broker, &shared, &jobs, concurrency, &shutdown).await;

        // Phase 1: drain within the grace period.
        jobs.close();
        let running = handle.running();
        if running > 0 {
            info!(
                running,
                grace = ?config.shutdown_grace,
                "shutting down: waiting for running jobs"
            );
        }
        let drained = tokio::select! {
            waited = tokio::time::timeout(config.shutdown_grace, jobs.wait()) => waited.is_ok(),
            () = handle.grace_ended() => false,
        };
        if !drained {
            // Phase 2: stop the rest and give them back at once.
            let n = handle.stop_all(StopReason::Shutdown);
            warn!(
                jobs = n,
                "shutdown grace period over: releasing running jobs"
            );
            jobs.wait().await;
        }
        // Every job task has ended and dropped its senders; dropping ours lets the
        // acknowledger drain and exit.
        drop(shared);
        services.cancel();
        service_tasks.close();
        service_tasks.wait().await;
        info!("worker pool stopped");
        Ok(())
    }
}
