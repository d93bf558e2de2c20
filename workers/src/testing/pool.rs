//! The worker pool against a real broker: each case starts an in-process [`Pool`] over the
//! broker under test and watches what it makes of a job (a handler that times out, panics,
//! keeps failing, is cut off from the broker past its lease, answers a result or saves a
//! checkpoint nested too deep to read back, or whose kind no worker serves).
//! The broker's own transitions are the other topics' business; these cases check the pool's
//! decisions, and that both brokers carry them out alike.
//!
//! Time: the broker and the pool share the case's [`ManualClock`], so lease deadlines and the
//! unserved-kind grace move only when a case advances it; timeouts and heartbeats run on real
//! time, short. Every wait polls for a condition under a generous deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::partition::Partitioned;
use super::support::ran_twice;
use super::{ManualClock, enqueue, get, history_types, job};
use crate::broker::Broker;
use crate::clock::Clock;
use crate::error::BrokerResult;
use crate::event::EventType;
use crate::handler::{Handler, JobContext, JobError, JobResult, Registry};
use crate::job::{Job, JobId, JobState};
use crate::pool::{Pool, PoolConfig, QueueSpec};
use crate::retry::RetryPolicy;

/// How long any one condition may take to come true on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(60);

/// What a test handler does on each run.
#[derive(Clone, Copy, Debug)]
enum Act {
    /// Never returns and ignores cancellation: only the pool's timeout ends it.
    Stuck,
    /// Panics.
    Panic,
    /// Fails, retryably.
    Fail,
    /// The first run waits until it is told to stop; later runs succeed at once.
    HoldFirst,
    /// Succeeds with a result nested deeper than a broker reads back.
    DeepResult,
    /// Saves a checkpoint nested deeper than a broker reads back (stopping at a refusal),
    /// then succeeds.
    DeepCheckpoint,
    /// Succeeds at once.
    Quick,
}

/// What test handlers saw: runs started, and runs that ended because they were told to stop.
#[derive(Debug, Default)]
struct Probe {
    runs: AtomicU32,
    stopped: AtomicU32,
}

impl Probe {
    fn runs(&self) -> u32 {
        self.runs.load(Ordering::SeqCst)
    }

    fn stopped(&self) -> u32 {
        self.stopped.load(Ordering::SeqCst)
    }
}

/// Counts a stopped run when dropped.
struct Stopped(Arc<Probe>);

impl Drop for Stopped {
    fn drop(&mut self) {
        self.0.stopped.fetch_add(1, Ordering::SeqCst);
    }
}

struct TestHandler {
    act: Act,
    probe: Arc<Probe>,
}

#[async_trait]
impl Handler for TestHandler {
    async fn run(&self, cx: JobContext) -> JobResult {
        let run = self.probe.runs.fetch_add(1, Ordering::SeqCst) + 1;
        match self.act {
            Act::Stuck => loop {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            },
            Act::Panic => panic!("boom on run {run}"),
            Act::Fail => Err(JobError::retryable(format!("fail #{run}"))),
            Act::HoldFirst if run == 1 => {
                // Counted however the run ends: by returning on the signal, or by being dropped
                // by the pool, which races the handler against the same signal.
                let _stopped = Stopped(self.probe.clone());
                cx.cancelled().await;
                Err(JobError::retryable("stopped"))
            }
            Act::HoldFirst | Act::Quick => Ok(json!({"run": run})),
            Act::DeepResult => Ok((0..200).fold(json!(1), |v, _| json!([v]))),
            Act::DeepCheckpoint => {
                cx.save_checkpoint((0..200).fold(json!(1), |v, _| json!([v])))
                    .await?;
                Ok(json!({"run": run}))
            }
        }
    }
}

/// A registry of test kinds, each with its act, all reporting to `probe`.
fn registry(probe: &Arc<Probe>, kinds: &[(&str, Act)]) -> Arc<Registry> {
    let mut r = Registry::new();
    for &(kind, act) in kinds {
        r.register(
            kind,
            TestHandler {
                act,
                probe: probe.clone(),
            },
        )
        .expect("distinct test kinds");
    }
    Arc::new(r)
}

/// A pool that notices everything quickly: heartbeats, rescues and idle waits every 50 ms,
/// retries due at once, a 30 s lease (on the case's clock).
pub(super) fn config() -> PoolConfig {
    PoolConfig {
        concurrency: 4,
        lease: Duration::from_secs(30),
        heartbeat: Duration::from_millis(50),
        shutdown_grace: Duration::from_secs(5),
        job_timeout: Duration::from_secs(600),
        retry: RetryPolicy {
            base: Duration::ZERO,
            max: Duration::ZERO,
            jitter: false,
        },
        rescue_interval: Duration::from_millis(50),
        idle_wait: Duration::from_millis(50),
        ..PoolConfig::default()
    }
}

/// A pool running in its own task until [`Started::stop`].
pub(super) struct Started {
    shutdown: CancellationToken,
    task: JoinHandle<BrokerResult<()>>,
}

pub(super) fn start(
    broker: Arc<dyn Broker>,
    registry: Arc<Registry>,
    config: PoolConfig,
    clock: &Arc<ManualClock>,
) -> Started {
    let clock: Arc<dyn Clock> = clock.clone();
    let pool = Pool::new(broker, registry, config, clock);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(pool.run(shutdown.clone()));
    Started { shutdown, task }
}

/// A pool over `b` with the default [`config`], serving `kinds` as told and reporting to
/// `probe`.
fn start_plain(
    b: &Arc<dyn Broker>,
    probe: &Arc<Probe>,
    kinds: &[(&str, Act)],
    clock: &Arc<ManualClock>,
) -> Started {
    start(b.clone(), registry(probe, kinds), config(), clock)
}

impl Started {
    pub(super) async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the pool stops")
            .expect("the pool task did not panic")
            .expect("the pool ran without error");
    }
}

/// Calls `attempt` every 20 ms until it answers `Ok`, and returns that; fails the case after
/// [`PATIENCE`], with `what` and the last `Err` (how things stood) in the message.
async fn eventually<T, F>(what: &str, mut attempt: impl FnMut() -> F) -> T
where
    F: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let stood = match attempt().await {
            Ok(done) => return done,
            Err(stood) => stood,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {PATIENCE:?} for {what}{stood}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls until `cond` holds, failing the case after [`PATIENCE`].
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    eventually(what, || {
        let held = cond();
        async move { if held { Ok(()) } else { Err(String::new()) } }
    })
    .await;
}

/// Polls the job until `cond` holds; returns it as it then was.
pub(super) async fn job_until(
    b: &Arc<dyn Broker>,
    id: &JobId,
    what: &str,
    cond: impl Fn(&Job) -> bool,
) -> Job {
    eventually(what, || async {
        let j = get(b, id).await;
        if cond(&j) {
            Ok(j)
        } else {
            Err(format!("; the job is now {j:?}"))
        }
    })
    .await
}

/// A handler that outlives its job's timeout is abandoned, and the attempt fails as a
/// timeout (here with no retries left: dead).
pub async fn pool_times_out_a_stuck_handler(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let probe = Arc::new(Probe::default());
    let pool = start_plain(&b, &probe, &[("test.stuck", Act::Stuck)], &clock);
    let id = enqueue(
        &b,
        job("test.stuck")
            .max_retries(0)
            .timeout(Duration::from_millis(200)),
    )
    .await;
    let j = job_until(&b, &id, "the timed-out job to be dead", |j| {
        j.state == JobState::Dead
    })
    .await;
    assert_eq!(j.last_error.as_deref(), Some("timed out after 200ms"));
    assert_eq!(j.attempt, 1);
    assert_eq!(probe.runs(), 1);
    pool.stop().await;
}

/// A panicking handler is a failed attempt like any other (retried, then dead with the
/// panic's message), and the pool goes on running jobs.
pub async fn pool_turns_a_panic_into_a_failed_attempt(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let probe = Arc::new(Probe::default());
    let kinds = [("test.panic", Act::Panic), ("test.ok", Act::HoldFirst)];
    let pool = start_plain(&b, &probe, &kinds, &clock);
    let id = enqueue(&b, job("test.panic").max_retries(1)).await;
    let j = job_until(&b, &id, "the panicking job to be dead", |j| {
        j.state == JobState::Dead
    })
    .await;
    assert_eq!(
        j.last_error.as_deref(),
        Some("handler panicked: boom on run 2")
    );
    assert_eq!(j.attempt, 2);
    assert_eq!(
        history_types(&b, &id).await,
        ran_twice(EventType::Retrying, EventType::Dead)
    );
    // The slots the panics held are free again: the next job runs (run 3 of the probe, so it
    // succeeds at once).
    let next = enqueue(&b, job("test.ok")).await;
    job_until(&b, &next, "a job after the panics to succeed", |j| {
        j.state == JobState::Succeeded
    })
    .await;
    pool.stop().await;
}

/// A handler's result nested deeper than a broker reads back (serde_json refuses more than
/// 128 levels) would make its job unreadable, and every read of it (the job's page, listings,
/// the event bus's relay) fail: the job is dead instead, at once (the next run would answer
/// the same), saying why, and stays readable; the queue runs on.
pub async fn pool_buries_a_result_nested_too_deep_to_read_back(
    b: Arc<dyn Broker>,
    clock: Arc<ManualClock>,
) {
    let probe = Arc::new(Probe::default());
    let kinds = [("test.deep", Act::DeepResult), ("test.ok", Act::HoldFirst)];
    let pool = start_plain(&b, &probe, &kinds, &clock);
    let id = enqueue(&b, job("test.deep").max_retries(3)).await;
    let j = job_until(&b, &id, "the deep result's job to be dead", |j| {
        j.state == JobState::Dead
    })
    .await;
    assert!(j.result.is_none(), "no result stored");
    assert_dead_at_once_too_deep(&b, j, "the next run would answer the same").await;
    // The slot is free and the queue runs on (run 2 of the probe: the hold-first handler
    // succeeds at once).
    let next = enqueue(&b, job("test.ok")).await;
    job_until(&b, &next, "a job after it to succeed", |j| {
        j.state == JobState::Succeeded
    })
    .await;
    pool.stop().await;
}

/// A checkpoint nested deeper than a broker reads back would make its job unreadable like a
/// result would (its page, listings and fetches failed on it): refused, so the handler that
/// saves it (with `?`) makes its job dead, saying why, and the job stays readable.
pub async fn pool_buries_a_checkpoint_nested_too_deep_to_read_back(
    b: Arc<dyn Broker>,
    clock: Arc<ManualClock>,
) {
    let probe = Arc::new(Probe::default());
    let kinds = [("test.deepck", Act::DeepCheckpoint)];
    let pool = start_plain(&b, &probe, &kinds, &clock);
    let id = enqueue(&b, job("test.deepck").max_retries(3)).await;
    let j = job_until(&b, &id, "the deep checkpoint's job to end", |j| {
        j.state.is_final()
    })
    .await;
    assert!(j.checkpoint.is_none(), "no checkpoint stored");
    assert_dead_at_once_too_deep(&b, j, "the next run would save the same").await;
    pool.stop().await;
}

/// Asserts that `j` is dead after its first attempt (not retried: `why`), saying that what it
/// produced nests too deep, and that its queue's listing still reads.
async fn assert_dead_at_once_too_deep(b: &Arc<dyn Broker>, j: Job, why: &str) {
    assert_eq!(j.state, JobState::Dead, "{j:?}");
    assert_eq!(j.attempt, 1, "not retried: {why}");
    let error = j.last_error.unwrap_or_default();
    assert!(error.contains("nests more than"), "{error}");
    assert!(
        b.list(&super::support::filter(Some(&j.queue), None, 10))
            .await
            .is_ok(),
        "the queue's listing reads"
    );
}

/// `max_retries: N` is exactly N + 1 runs, then dead with the last run's error.
pub async fn pool_runs_a_failing_job_max_retries_plus_one_times(
    b: Arc<dyn Broker>,
    clock: Arc<ManualClock>,
) {
    for retries in [0_u32, 2] {
        let probe = Arc::new(Probe::default());
        let pool = start_plain(&b, &probe, &[("test.fail", Act::Fail)], &clock);
        let id = enqueue(&b, job("test.fail").max_retries(retries)).await;
        let j = job_until(&b, &id, "the failing job to be dead", |j| {
            j.state == JobState::Dead
        })
        .await;
        pool.stop().await;
        let runs = retries + 1;
        assert_eq!(probe.runs(), runs, "max_retries {retries}");
        assert_eq!(j.attempt, runs);
        assert_eq!(j.last_error, Some(format!("fail #{runs}")));
        let started = history_types(&b, &id)
            .await
            .into_iter()
            .filter(|t| *t == EventType::Started)
            .count();
        assert_eq!(started, runs as usize);
    }
}

/// A queue at its own concurrency limit starts its next job as soon as one of its jobs ends,
/// while the pool's other queues keep it from idling as a whole. The wait for work did not
/// wake when such a slot freed (on Redis it blocks on the other queues' wake-ups, up to a
/// second), and a queue limited to 1 ran about one job a second. Six trivial jobs one after
/// the other take milliseconds; the bound is loose for a loaded machine.
pub async fn pool_starts_a_capped_queues_next_job_when_its_slot_frees(
    b: Arc<dyn Broker>,
    clock: Arc<ManualClock>,
) {
    let probe = Arc::new(Probe::default());
    let mut config = config();
    config.idle_wait = Duration::from_secs(10);
    config.queues = vec![
        QueueSpec {
            concurrency: Some(1),
            ..QueueSpec::new("capped")
        },
        QueueSpec::new("other"),
    ];
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(enqueue(&b, job("test.quick").queue("capped")).await);
    }
    let began = std::time::Instant::now();
    let pool = start(
        b.clone(),
        registry(&probe, &[("test.quick", Act::Quick)]),
        config,
        &clock,
    );
    for id in &ids {
        job_until(&b, id, "the capped queue's job to succeed", |j| {
            j.state == JobState::Succeeded
        })
        .await;
    }
    let took = began.elapsed();
    pool.stop().await;
    assert!(
        took < Duration::from_secs(3),
        "six jobs of a queue limited to 1 took {took:?}"
    );
}

/// A pool cut off from the broker cannot extend its leases. Once a lease's deadline passes
/// without a successful heartbeat, the job may be rescued and run by another node, so the
/// pool stops the handler by then and writes nothing for it; the job then runs once more,
/// elsewhere.
pub async fn pool_stops_a_handler_whose_lease_ran_out_unrenewed(
    b: Arc<dyn Broker>,
    clock: Arc<ManualClock>,
) {
    let probe = Arc::new(Probe::default());
    let kinds = [("test.hold", Act::HoldFirst)];
    let lease = Duration::from_secs(10);
    let cut_off = Partitioned::new(b.clone());
    let first = start(
        cut_off.clone(),
        registry(&probe, &kinds),
        PoolConfig { lease, ..config() },
        &clock,
    );
    let id = enqueue(&b, job("test.hold")).await;
    until("the first run to start", || probe.runs() == 1).await;
    let running = get(&b, &id).await;
    assert_eq!(running.state, JobState::Running);

    cut_off.cut().await;
    clock.advance(10_001);
    until("the handler to be stopped after its lease ran out", || {
        probe.stopped() == 1
    })
    .await;
    // Nobody could have rescued the job yet: the broker still has the first attempt running.
    let still = get(&b, &id).await;
    assert_eq!(
        still.state,
        JobState::Running,
        "{:?}",
        b.history(&id).await.map(|h| h
            .iter()
            .map(|e| (e.kind_of_event, e.at, e.error.clone(), e.message.clone()))
            .collect::<Vec<_>>())
    );
    assert_eq!(still.lease_token, running.lease_token);
    first.stop().await;

    // Another pool, reachable, rescues the job and runs it again: once.
    let second = start_plain(&b, &probe, &kinds, &clock);
    let done = job_until(&b, &id, "the job to succeed on the other pool", |j| {
        j.state == JobState::Succeeded
    })
    .await;
    second.stop().await;
    assert_eq!(done.result, Some(json!({"run": 2})));
    assert_eq!(probe.runs(), 2);
    assert_eq!(done.interruptions, 1);
    assert_eq!(
        history_types(&b, &id).await,
        ran_twice(EventType::Interrupted, EventType::Succeeded)
    );
}

/// A job whose kind no worker here serves is put off (not an attempt), saying so in its
/// `last_error` with the time it was first put off; once that is `unknown_kind_grace` ago it
/// goes dead with the reason, instead of being snoozed forever.
pub async fn pool_snoozes_an_unserved_kind_then_buries_it(
    b: Arc<dyn Broker>,
    clock: Arc<ManualClock>,
) {
    let probe = Arc::new(Probe::default());
    let pool = start(
        b.clone(),
        registry(&probe, &[("test.served", Act::Fail)]),
        PoolConfig {
            unknown_kind_grace: Duration::from_secs(3600),
            ..config()
        },
        &clock,
    );
    let since = clock.now();
    let id = enqueue(&b, job("test.unserved")).await;
    let reason = format!("no worker serves kind test.unserved (since {since})");
    let j = job_until(&b, &id, "the unserved job to be snoozed", |j| {
        j.state == JobState::Scheduled && j.last_error.is_some()
    })
    .await;
    assert_eq!(j.last_error.as_deref(), Some(reason.as_str()));
    assert_eq!(j.attempt, 0, "a snooze is not an attempt");
    assert!(j.run_at > since);

    // Offered again later, still unserved: the same reason, still since the first time.
    clock.advance(10_000);
    eventually("a second offer", || async {
        let history = history_types(&b, &id).await;
        if history.iter().filter(|t| **t == EventType::Started).count() >= 2 {
            Ok(())
        } else {
            Err(format!("; history {history:?}"))
        }
    })
    .await;
    let j = job_until(&b, &id, "the second snooze to be written", |j| {
        j.state == JobState::Scheduled
    })
    .await;
    assert_eq!(j.last_error.as_deref(), Some(reason.as_str()));

    // Past the grace: dead, saying why.
    clock.advance(3_600_000);
    let dead = job_until(&b, &id, "the unserved job to be dead", |j| {
        j.state == JobState::Dead
    })
    .await;
    pool.stop().await;
    assert_eq!(
        dead.last_error,
        Some(format!(
            "no worker served kind test.unserved from {since} to {} (unknown_kind_grace 1h)",
            clock.now()
        ))
    );
    assert_eq!(probe.runs(), 0);
}
