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
//!   found lost or a job found cancelled stops its handler. A rescuer returns expired leases
//!   (of any node) to the queue.
//! - **Batching.** Completions go through one acknowledger task that writes whatever has
//!   accumulated in one [`Broker::finish`] call; progress reports are coalesced per job.
//! - **Two-phase shutdown.** When `shutdown` fires: stop fetching, let running jobs finish within
//!   `shutdown_grace`, then cancel the rest and release their leases at once (`queued` again,
//!   the attempt not counted) so another node picks them up without waiting for the lease.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::broker::{Broker, Finish, LeaseStatus, Outcome};
use crate::clock::Clock;
use crate::error::{BrokerError, BrokerResult};
use crate::handler::{JobContext, JobError, ProgressUpdate, Registry};
use crate::job::{Job, JobId, Lease, Millis};
use crate::retry::RetryPolicy;

/// One queue the pool serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    /// At most this many of its jobs run at once in this pool; `None`: only the pool's limit.
    pub concurrency: Option<usize>,
    /// A paused queue is not fetched from.
    pub paused: bool,
}

impl QueueSpec {
    /// A queue with no limit of its own.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            concurrency: None,
            paused: false,
        }
    }
}

/// How the pool runs. The shell builds it from `config.toml` (`[worker]`, `[[queue]]`, `[retry]`).
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Slots: jobs running at once. Defaults to 16.
    pub concurrency: usize,
    /// Queues served, fetched in this order. Defaults to `default`.
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
        }
    }
}

/// Why a handler was told to stop before it finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum StopReason {
    None = 0,
    /// A user cancelled the job; the broker already has it `cancelled`.
    Cancelled = 1,
    /// Another attempt owns the job now; nothing this attempt writes would be accepted.
    LeaseLost = 2,
    /// Hard shutdown: give the job back.
    Shutdown = 3,
}

impl StopReason {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => StopReason::Cancelled,
            2 => StopReason::LeaseLost,
            3 => StopReason::Shutdown,
            _ => StopReason::None,
        }
    }
}

/// A job running in this pool: how to stop it, and why it was stopped.
#[derive(Debug)]
struct Running {
    lease: Lease,
    token: CancellationToken,
    reason: Arc<AtomicU8>,
    /// The handler has returned and its completion waits for the acknowledger: the lease is
    /// still heartbeated (a slow write must not let the job be rescued and run again), but
    /// there is nothing left to stop.
    finishing: bool,
}

impl Running {
    /// Records the first reason only: a job cancelled by a user stays "cancelled" even if a
    /// shutdown follows.
    fn stop(&self, reason: StopReason) {
        let _ = self.reason.compare_exchange(
            StopReason::None as u8,
            reason as u8,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        self.token.cancel();
    }
}

/// Jobs running in this process, by id.
type RunningMap = Arc<Mutex<HashMap<JobId, Running>>>;

/// A handle to a running pool, for the API of the same process.
#[derive(Clone, Debug, Default)]
pub struct PoolHandle {
    running: RunningMap,
}

impl PoolHandle {
    /// Tells the handler of `id`, if it runs in this process, to stop at once (the broker has
    /// already recorded the cancel). True if it was running here. Handlers in other processes
    /// learn of a cancel at their next heartbeat.
    pub fn cancel_local(&self, id: &JobId) -> bool {
        let map = lock(&self.running);
        match map.get(id) {
            Some(r) if !r.finishing => {
                r.stop(StopReason::Cancelled);
                true
            }
            _ => false,
        }
    }

    /// How many handlers run in this pool now.
    pub fn running(&self) -> usize {
        lock(&self.running)
            .values()
            .filter(|r| !r.finishing)
            .count()
    }

    /// Leases to heartbeat: running handlers, and completions not yet written.
    fn leases(&self) -> Vec<Lease> {
        lock(&self.running)
            .values()
            .map(|r| r.lease.clone())
            .collect()
    }

    /// Records a new attempt. An entry left by an older attempt of the same job (its lease
    /// expired and this pool fetched the job again) is stopped: its writes would be refused.
    fn insert(&self, running: Running) {
        let mut map = lock(&self.running);
        if let Some(old) = map.insert(running.lease.job_id.clone(), running)
            && !old.finishing
        {
            old.stop(StopReason::LeaseLost);
        }
    }

    /// Marks an attempt's handler as done, its completion on the way to the broker.
    fn finishing(&self, lease: &Lease) {
        if let Some(r) = lock(&self.running).get_mut(&lease.job_id)
            && r.lease.token == lease.token
        {
            r.finishing = true;
        }
    }

    /// Forgets an attempt (only that attempt: a newer one of the same job stays).
    fn remove(&self, lease: &Lease) {
        let mut map = lock(&self.running);
        if map
            .get(&lease.job_id)
            .is_some_and(|r| r.lease.token == lease.token)
        {
            map.remove(&lease.job_id);
        }
    }

    /// Stops the handler of this attempt if it still runs here; false when it had already
    /// ended (or a newer attempt runs instead).
    fn stop(&self, lease: &Lease, reason: StopReason) -> bool {
        match lock(&self.running).get(&lease.job_id) {
            Some(r) if r.lease.token == lease.token && !r.finishing => {
                r.stop(reason);
                true
            }
            _ => false,
        }
    }

    fn stop_all(&self, reason: StopReason) -> usize {
        let map = lock(&self.running);
        let mut n = 0;
        for r in map.values().filter(|r| !r.finishing) {
            r.stop(reason);
            n += 1;
        }
        n
    }
}

/// Locks a std mutex, recovering from poisoning: the map stays consistent because every
/// critical section is a single insert, remove or read.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
    registry: Arc<Registry>,
    config: PoolConfig,
    clock: Arc<dyn Clock>,
    handle: PoolHandle,
    finish_tx: mpsc::UnboundedSender<Finish>,
    progress_tx: mpsc::UnboundedSender<ProgressUpdate>,
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
        service_tasks.spawn(acknowledge(broker.clone(), finish_rx, handle.clone()));
        service_tasks.spawn(write_progress(
            broker.clone(),
            progress_rx,
            services.clone(),
        ));
        service_tasks.spawn(heartbeat(
            broker.clone(),
            handle.clone(),
            config.lease,
            config.heartbeat,
            services.clone(),
        ));
        service_tasks.spawn(rescue(
            broker.clone(),
            config.max_interruptions,
            config.rescue_interval,
            services.clone(),
        ));

        let shared = Arc::new(Shared {
            registry,
            config: config.clone(),
            clock,
            handle: handle.clone(),
            finish_tx,
            progress_tx,
        });

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
        if tokio::time::timeout(config.shutdown_grace, jobs.wait())
            .await
            .is_err()
        {
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

/// Fetches and starts jobs until `shutdown` fires.
async fn fetch_loop(
    broker: &Arc<dyn Broker>,
    shared: &Arc<Shared>,
    jobs: &TaskTracker,
    concurrency: usize,
    shutdown: &CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(concurrency));
    let queue_slots: HashMap<String, Arc<Semaphore>> = shared
        .config
        .queues
        .iter()
        .filter_map(|q| {
            q.concurrency
                .map(|c| (q.name.clone(), Arc::new(Semaphore::new(c.max(1)))))
        })
        .collect();
    let active: Vec<String> = shared
        .config
        .queues
        .iter()
        .filter(|q| !q.paused)
        .map(|q| q.name.clone())
        .collect();
    if active.is_empty() {
        warn!("every queue of this pool is paused: nothing will run");
    }
    let mut backoff = Duration::from_millis(100);

    while !shutdown.is_cancelled() {
        let mut saturated = false;
        let mut failed = false;
        // Queues with a free slot: the only ones worth waiting on (a queue at its own limit
        // may well have work, which would wake us at once, again and again).
        let mut open: Vec<String> = Vec::with_capacity(active.len());
        for queue in &active {
            let free = slots.available_permits();
            if free == 0 {
                break;
            }
            let queue_sem = queue_slots.get(queue);
            let want = queue_sem.map_or(free, |s| s.available_permits().min(free));
            if want == 0 {
                continue;
            }
            open.push(queue.clone());
            // Not raced against shutdown: a fetch dropped half-way may still lease jobs in
            // the broker, which would then sit `running` until their lease expired.
            match broker.fetch(queue, want, shared.config.lease).await {
                Ok(batch) if shutdown.is_cancelled() => {
                    for job in batch {
                        let _ = shared.finish_tx.send(Finish {
                            lease: job.lease(),
                            outcome: Outcome::Released {
                                reason: "worker shutting down".into(),
                            },
                        });
                    }
                    break;
                }
                Ok(batch) => {
                    backoff = Duration::from_millis(100);
                    saturated |= batch.len() == want;
                    for job in batch {
                        start_job(shared, jobs, &slots, queue_sem, job);
                    }
                }
                Err(e) => {
                    warn!(queue, error = %e, "fetch failed; retrying");
                    failed = true;
                }
            }
        }
        if failed {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        if slots.available_permits() == 0 {
            // Every slot is busy: wait for one to free up, without holding it.
            tokio::select! {
                () = shutdown.cancelled() => break,
                permit = slots.acquire() => drop(permit),
            }
            continue;
        }
        if open.is_empty() {
            // Free slots, but every queue is at its own limit: wait for one of its jobs to end.
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(QUEUE_LIMIT_WAIT) => {}
            }
            continue;
        }
        if !saturated {
            tokio::select! {
                () = shutdown.cancelled() => break,
                r = broker.wait_for_work(&open, shared.config.idle_wait) => {
                    if let Err(e) = r {
                        warn!(error = %e, "waiting for work failed");
                        tokio::time::sleep(backoff).await;
                    }
                }
            }
        }
    }
    debug!("fetch loop stopped");
}

/// How often a pool whose queues are all at their own limit looks again.
const QUEUE_LIMIT_WAIT: Duration = Duration::from_millis(50);

/// Takes the slots for a fetched job and spawns its task.
fn start_job(
    shared: &Arc<Shared>,
    jobs: &TaskTracker,
    slots: &Arc<Semaphore>,
    queue_sem: Option<&Arc<Semaphore>>,
    job: Job,
) {
    // The fetch asked for no more jobs than free permits and only this loop takes permits,
    // so these cannot fail; if they ever did, the job is given back rather than overrun.
    let slot = slots.clone().try_acquire_owned().ok();
    let queue_slot = match queue_sem {
        Some(s) => s.clone().try_acquire_owned().ok().map(Some),
        None => Some(None),
    };
    let (Some(slot), Some(queue_slot)) = (slot, queue_slot) else {
        warn!(job = %job.id, "fetched more jobs than free slots; releasing one");
        let _ = shared.finish_tx.send(Finish {
            lease: job.lease(),
            outcome: Outcome::Released {
                reason: "no free slot".into(),
            },
        });
        return;
    };
    let shared = shared.clone();
    jobs.spawn(async move {
        let finish = run_job(&shared, job).await;
        if let Some(finish) = finish {
            // The acknowledger outlives every job task, so this only fails if the pool's
            // run() was dropped mid-way, in which case the lease will expire and be rescued.
            let _ = shared.finish_tx.send(finish);
        }
        drop(queue_slot);
        drop(slot);
    });
}

/// Runs one attempt and decides its outcome. `None` when there is nothing to write (the job
/// was cancelled or its lease lost meanwhile).
async fn run_job(shared: &Shared, job: Job) -> Option<Finish> {
    let token = CancellationToken::new();
    let reason = Arc::new(AtomicU8::new(StopReason::None as u8));
    let lease = job.lease();
    shared.handle.insert(Running {
        lease: lease.clone(),
        token: token.clone(),
        reason: reason.clone(),
        finishing: false,
    });
    let job = Arc::new(job);
    let result = execute(shared, job.clone(), token).await;
    // Until the acknowledger has written the outcome, the lease stays heartbeated.
    shared.handle.finishing(&lease);

    let now = shared.clock.now_ms();
    let outcome = match result {
        Execution::Stopped => match StopReason::from_u8(reason.load(Ordering::SeqCst)) {
            StopReason::Shutdown => Outcome::Released {
                reason: "worker shutting down".into(),
            },
            // Cancelled: the broker already says so. Lease lost: another attempt owns it.
            StopReason::Cancelled | StopReason::LeaseLost | StopReason::None => {
                debug!(job = %job.id, "attempt stopped");
                shared.handle.remove(&lease);
                return None;
            }
        },
        Execution::Done(Ok(result)) => Outcome::Succeeded { result },
        Execution::Done(Err(JobError::Permanent { message })) => Outcome::Dead { error: message },
        Execution::Done(Err(JobError::Snooze(d))) => Outcome::Snooze {
            at: now.saturating_add(millis(d)),
        },
        Execution::Done(Err(JobError::Retryable {
            message,
            retry_after,
        })) => failed(shared, &job, now, message, retry_after),
    };
    Some(Finish { lease, outcome })
}

/// A failed attempt: retry after the backoff while retries are left, else dead.
fn failed(
    shared: &Shared,
    job: &Job,
    now: Millis,
    error: String,
    retry_after: Option<Duration>,
) -> Outcome {
    if job.attempt > job.max_retries {
        return Outcome::Dead { error };
    }
    let wait = retry_after.unwrap_or_else(|| shared.config.retry.delay(job.attempt));
    Outcome::Retry {
        at: now.saturating_add(millis(wait)),
        error,
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// How long a job of a kind this worker does not know waits before it is offered again.
const NO_HANDLER_SNOOZE: Duration = Duration::from_secs(5);

/// How running a handler ended.
enum Execution {
    Done(Result<Value, JobError>),
    /// Told to stop (cancel, lost lease, hard shutdown) before it finished.
    Stopped,
}

/// Runs the handler under its timeout, catching panics, until it returns or is told to stop.
async fn execute(shared: &Shared, job: Arc<Job>, token: CancellationToken) -> Execution {
    let Some(handler) = shared.registry.get(&job.kind).cloned() else {
        // Another node may know the kind (a rolling deploy, a feature left out here): give
        // the job back for later without spending one of its attempts.
        warn!(job = %job.id, kind = %job.kind, "no handler for this kind here; snoozing the job");
        return Execution::Done(Err(JobError::snooze(NO_HANDLER_SNOOZE)));
    };
    let timeout = job
        .timeout_ms
        .map(Duration::from_millis)
        .or_else(|| handler.timeout())
        .unwrap_or(shared.config.job_timeout);
    let cx = JobContext::new(job, token.clone(), Some(shared.progress_tx.clone()));
    let run = AssertUnwindSafe(handler.run(cx)).catch_unwind();
    tokio::select! {
        // A handler that honours the token returns promptly by itself; one that does not is
        // dropped here, which ends it at its next await point.
        () = token.cancelled() => Execution::Stopped,
        r = tokio::time::timeout(timeout, run) => match r {
            Err(_) => Execution::Done(Err(JobError::retryable(format!(
                "timed out after {}",
                humantime::format_duration(timeout)
            )))),
            Ok(Err(panic)) => Execution::Done(Err(JobError::retryable(format!(
                "handler panicked: {}",
                panic_message(panic.as_ref())
            )))),
            Ok(Ok(result)) => {
                if token.is_cancelled() {
                    Execution::Stopped
                } else {
                    Execution::Done(result)
                }
            }
        },
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

/// Writes completions in batches: whatever has accumulated since the last write goes in one
/// call. A broker that is down is retried with backoff, never dropping a completion: a
/// completion lost here would make the job run again after its lease expires. A batch that
/// keeps failing for another reason is written one completion at a time, so one bad entry
/// cannot hold back the others.
async fn acknowledge(
    broker: Arc<dyn Broker>,
    mut rx: mpsc::UnboundedReceiver<Finish>,
    handle: PoolHandle,
) {
    const MAX_BATCH: usize = 512;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        if !write_completions(&*broker, &batch).await {
            for one in batch.chunks(1) {
                if !write_completions(&*broker, one).await {
                    error!(
                        job = %one[0].lease.job_id,
                        "completion could not be written; the job will run again after its lease"
                    );
                }
            }
        }
        for f in &batch {
            handle.remove(&f.lease);
        }
    }
}

/// Writes one batch of completions, retrying while the broker is unavailable (for as long as
/// it takes) and up to three times on other errors. False when it gave up.
async fn write_completions(broker: &dyn Broker, batch: &[Finish]) -> bool {
    let mut backoff = Duration::from_millis(50);
    let mut failures = 0;
    loop {
        match broker.finish(batch.to_vec()).await {
            Ok(results) => {
                for (f, r) in batch.iter().zip(results) {
                    match r {
                        Ok(()) => {}
                        Err(BrokerError::LeaseLost(_)) => warn!(
                            job = %f.lease.job_id,
                            token = f.lease.token,
                            "completion refused: stale lease token (another attempt owns the job)"
                        ),
                        Err(other) => {
                            warn!(job = %f.lease.job_id, error = %other, "completion failed");
                        }
                    }
                }
                return true;
            }
            Err(e) => {
                if !matches!(e, BrokerError::Unavailable(_)) {
                    failures += 1;
                    if failures >= 3 {
                        warn!(error = %e, jobs = batch.len(), "writing completions keeps failing");
                        return false;
                    }
                }
                warn!(error = %e, jobs = batch.len(), "writing completions failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Writes progress reports, keeping only the latest per job and writing at most ten times a
/// second, so a chatty handler cannot flood the broker.
async fn write_progress(
    broker: Arc<dyn Broker>,
    mut rx: mpsc::UnboundedReceiver<ProgressUpdate>,
    stop: CancellationToken,
) {
    let mut pending: HashMap<JobId, ProgressUpdate> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            u = rx.recv() => match u {
                Some(u) => { pending.insert(u.lease.job_id.clone(), u); }
                None => break,
            },
            _ = tick.tick(), if !pending.is_empty() => {
                for (_, u) in pending.drain() {
                    if let Err(e) = broker.progress(&u.lease, u.percent, u.message).await {
                        debug!(job = %u.lease.job_id, error = %e, "progress not written");
                    }
                }
            }
        }
    }
}

/// Extends the leases of every running job, and stops handlers whose job was cancelled or
/// whose lease was lost.
async fn heartbeat(
    broker: Arc<dyn Broker>,
    handle: PoolHandle,
    lease: Duration,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let leases = handle.leases();
        if leases.is_empty() {
            continue;
        }
        match broker.heartbeat(&leases, lease).await {
            Ok(statuses) => {
                for (l, st) in leases.iter().zip(statuses) {
                    match st {
                        LeaseStatus::Held => {}
                        // A handler that ended since the leases were read has nothing to stop;
                        // its completion meets the same fence and is refused there.
                        LeaseStatus::Cancelled => {
                            if handle.stop(l, StopReason::Cancelled) {
                                info!(job = %l.job_id, "job cancelled: stopped its handler");
                            }
                        }
                        LeaseStatus::Lost => {
                            if handle.stop(l, StopReason::LeaseLost) {
                                warn!(job = %l.job_id, "lease lost: stopped its handler");
                            }
                        }
                    }
                }
            }
            Err(e) => warn!(error = %e, "heartbeat failed"),
        }
    }
}

/// Returns expired leases (of any node) to their queue.
async fn rescue(
    broker: Arc<dyn Broker>,
    max_interruptions: u32,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        match broker.rescue(max_interruptions).await {
            Ok(ids) if !ids.is_empty() => {
                info!(jobs = ids.len(), "rescued jobs whose lease expired");
            }
            Ok(_) => {}
            Err(e) => debug!(error = %e, "rescue failed"),
        }
    }
}
