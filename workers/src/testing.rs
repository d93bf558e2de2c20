//! The broker conformance suite (feature `test-util`): every lifecycle case written once, run
//! against every [`Broker`].
//!
//! Each case is a `pub async fn(Arc<dyn Broker>, Arc<ManualClock>)`. The broker under test must
//! read time only through the clock it was built with, so a case moves time with
//! [`ManualClock::advance`] instead of sleeping. A broker's test file is one macro call:
//!
//! ```ignore
//! // workers/tests/conformance_sqlite.rs
//! hopper_workers::conformance_suite!(|clock| async move {
//!     let dir = tempfile::tempdir().expect("tempdir");
//!     let broker = SqliteBroker::open(dir.path().join("t.db"), clock).await.expect("open");
//!     (Arc::new(broker) as Arc<dyn Broker>, dir) // the guard lives as long as the test
//! });
//! ```
//!
//! The factory gets an `Arc<dyn Clock>` and returns a fresh, isolated broker: either an
//! `Arc<dyn Broker>`, or `(Arc<dyn Broker>, guard)` where the guard (a temp dir, say) is kept
//! alive until the case ends. It does not own the pool or the API: those have their own tests.

use std::any::Any;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

pub use crate::clock::ManualClock;

use crate::broker::{Broker, Enqueued, Finish, JobFilter, LeaseStatus, Outcome};
use crate::clock::Clock;
use crate::error::BrokerError;
use crate::event::{Event, EventType};
use crate::job::{Job, JobId, JobState, Lease, NewJob, link_chain};

/// Where every case's clock starts: a fixed, realistic time (2023-11-14T22:13:20Z).
pub const START: i64 = 1_700_000_000_000;
/// The lease cases fetch with unless they say otherwise.
pub const LEASE: Duration = Duration::from_secs(30);
const LEASE_MS: i64 = 30_000;

/// What a conformance factory may return: a broker, or a broker and a guard to keep alive.
pub trait TestBroker {
    /// The broker and whatever must outlive it.
    fn split(self) -> (Arc<dyn Broker>, Box<dyn Any + Send>);
}

impl TestBroker for Arc<dyn Broker> {
    fn split(self) -> (Arc<dyn Broker>, Box<dyn Any + Send>) {
        (self, Box::new(()))
    }
}

impl<G: Send + 'static> TestBroker for (Arc<dyn Broker>, G) {
    fn split(self) -> (Arc<dyn Broker>, Box<dyn Any + Send>) {
        (self.0, Box::new(self.1))
    }
}

/// A fresh manual clock at [`START`], and the same clock as the `dyn Clock` a factory takes.
pub fn clocks() -> (Arc<ManualClock>, Arc<dyn Clock>) {
    let clock = ManualClock::new(START);
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    (clock, dyn_clock)
}

/// An SQLite broker on a file in a fresh temporary directory (removed when the guard drops).
///
/// # Panics
///
/// When the directory or the database cannot be created: this is test support.
#[cfg(feature = "sqlite")]
pub async fn temp_sqlite(clock: Arc<dyn Clock>) -> (Arc<dyn Broker>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let broker = crate::broker::sqlite::SqliteBroker::open(dir.path().join("hopper.db"), clock)
        .await
        .expect("open the SQLite broker");
    (Arc::new(broker), dir)
}

/// Expands to one `#[tokio::test]` per conformance case, each on a fresh broker from
/// `$factory` (a closure taking `Arc<dyn Clock>` and returning a future of a [`TestBroker`]).
/// The calling crate needs `tokio` with the `macros` and `rt` features.
#[macro_export]
macro_rules! conformance_suite {
    ($factory:expr) => {
        $crate::conformance_suite!(@cases $factory;
            enqueue_get_history,
            enqueue_is_all_or_none,
            strict_priority_fifo_within_level,
            delayed_job_waits_for_run_at,
            unique_key_returns_existing,
            fetch_respects_max_and_never_repeats,
            concurrent_fetches_never_share_a_job,
            finish_succeeded,
            finish_retry_then_dead,
            finish_snooze,
            finish_released,
            finish_batch_answers_each_entry,
            stale_token_refused_after_rescue,
            heartbeat_extends_and_reports,
            rescue_counts_interruption_not_attempt,
            poison_pill_after_max_interruptions,
            cancel_non_final_and_conflict_on_final,
            retry_dead_and_cancelled_only,
            retry_all_dead_counts_and_filters,
            list_filters_and_cursor,
            queues_counts,
            events_resume_after_id,
            purge_finished_and_trim_events,
            progress_recorded_and_fenced,
            drop_queue_removes_jobs_and_events,
            wait_for_work_returns,
            ping_answers,
            chain_passes_results_in_order,
            chain_dead_step_cancels_rest_and_retry_resumes,
            chain_cancel_cancels_rest,
            chain_replay_with_taken_key_creates_nothing,
            chain_retry_of_later_step_waits_for_predecessor,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test]
            async fn $case() {
                let (clock, dyn_clock) = $crate::testing::clocks();
                let factory = $factory;
                let (broker, _guard) =
                    $crate::testing::TestBroker::split(factory(dyn_clock).await);
                $crate::testing::$case(broker, clock).await;
            }
        )*
    };
}

// ---- Helpers ---------------------------------------------------------------------------------

fn job(kind: &str) -> NewJob {
    NewJob::new(kind, json!({}))
}

async fn enqueue(b: &Arc<dyn Broker>, job: NewJob) -> JobId {
    let answers = b.enqueue(vec![job]).await.expect("enqueue");
    assert_eq!(answers.len(), 1, "one answer per job");
    assert!(answers[0].created, "a new job is created");
    answers[0].id.clone()
}

async fn get(b: &Arc<dyn Broker>, id: &JobId) -> Job {
    b.get(id).await.expect("get").expect("the job exists")
}

async fn fetch_one(b: &Arc<dyn Broker>, queue: &str) -> Option<Job> {
    let mut jobs = b.fetch(queue, 1, LEASE).await.expect("fetch");
    assert!(
        jobs.len() <= 1,
        "fetch(max = 1) returned {} jobs",
        jobs.len()
    );
    jobs.pop()
}

async fn fetch_expect(b: &Arc<dyn Broker>, queue: &str, id: &JobId) -> Job {
    let job = fetch_one(b, queue).await.expect("a job is due");
    assert_eq!(&job.id, id, "the expected job is fetched");
    job
}

async fn finish(b: &Arc<dyn Broker>, lease: Lease, outcome: Outcome) -> Result<(), BrokerError> {
    let mut answers = b
        .finish(vec![Finish { lease, outcome }])
        .await
        .expect("finish round-trip");
    assert_eq!(answers.len(), 1, "one answer per entry");
    answers.remove(0)
}

fn ok() -> Outcome {
    Outcome::Succeeded {
        result: json!({"ok": true}),
    }
}

fn types(events: &[Event]) -> Vec<EventType> {
    events.iter().map(|e| e.kind_of_event).collect()
}

async fn history_types(b: &Arc<dyn Broker>, id: &JobId) -> Vec<EventType> {
    types(&b.history(id).await.expect("history"))
}

async fn last_event(b: &Arc<dyn Broker>, id: &JobId) -> Event {
    b.history(id)
        .await
        .expect("history")
        .pop()
        .expect("the job has events")
}

fn assert_lease_lost(r: Result<(), BrokerError>, what: &str) {
    assert!(
        matches!(r, Err(BrokerError::LeaseLost(_))),
        "{what}: expected LeaseLost, got {r:?}"
    );
}

/// A job that ran once and died, in `queue`.
async fn make_dead(b: &Arc<dyn Broker>, queue: &str) -> JobId {
    let id = enqueue(b, job("test.dead").queue(queue)).await;
    let j = fetch_expect(b, queue, &id).await;
    finish(
        b,
        j.lease(),
        Outcome::Dead {
            error: "boom".into(),
        },
    )
    .await
    .expect("finish dead");
    id
}

/// A job that ran once and succeeded, in `queue`.
async fn make_succeeded(b: &Arc<dyn Broker>, queue: &str) -> JobId {
    let id = enqueue(b, job("test.ok").queue(queue)).await;
    let j = fetch_expect(b, queue, &id).await;
    finish(b, j.lease(), ok()).await.expect("finish ok");
    id
}

// ---- Cases -----------------------------------------------------------------------------------

/// A job is stored as given, starts `queued`, and its history opens with `job.enqueued`.
pub async fn enqueue_get_history(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let now = clock.now_ms();
    let new = NewJob::new("test.echo", json!({"n": 1, "s": "x"}))
        .queue("q1")
        .priority(3)
        .max_retries(2)
        .timeout(Duration::from_secs(5));
    let answers = b.enqueue(vec![new.clone()]).await.expect("enqueue");
    assert_eq!(
        answers,
        vec![Enqueued {
            id: new.id.clone(),
            created: true
        }]
    );

    let j = get(&b, &new.id).await;
    assert_eq!(j.id, new.id);
    assert_eq!(j.queue, "q1");
    assert_eq!(j.kind, "test.echo");
    assert_eq!(j.payload, json!({"n": 1, "s": "x"}));
    assert_eq!(j.priority, 3);
    assert_eq!(j.state, JobState::Queued);
    assert_eq!(j.run_at, now);
    assert_eq!(j.attempt, 0);
    assert_eq!(j.max_retries, 2);
    assert_eq!(j.timeout_ms, Some(5000));
    assert_eq!(j.interruptions, 0);
    assert_eq!(j.progress, 0);
    assert_eq!(j.result, None);
    assert_eq!(j.last_error, None);
    assert_eq!(j.created_at, now);
    assert_eq!(j.started_at, None);
    assert_eq!(j.finished_at, None);

    let history = b.history(&new.id).await.expect("history");
    assert_eq!(types(&history), vec![EventType::Enqueued]);
    let e = &history[0];
    assert_eq!(e.job_id, new.id);
    assert_eq!(e.queue, "q1");
    assert_eq!(e.kind, "test.echo");
    assert_eq!(e.at, now);
    assert_eq!(e.attempt, 0);

    let missing = JobId::generate();
    assert_eq!(b.get(&missing).await.expect("get missing"), None);
    assert!(
        b.history(&missing)
            .await
            .expect("history missing")
            .is_empty()
    );
    assert!(
        b.enqueue(Vec::new())
            .await
            .expect("empty enqueue")
            .is_empty()
    );
}

/// A batch with one invalid job creates nothing.
pub async fn enqueue_is_all_or_none(b: Arc<dyn Broker>, _clock: Arc<ManualClock>) {
    let good = job("test.ok");
    let bad = job("test.bad").priority(12);
    let r = b.enqueue(vec![good.clone(), bad]).await;
    assert!(matches!(r, Err(BrokerError::Invalid(_))), "got {r:?}");
    assert_eq!(b.get(&good.id).await.expect("get"), None);
    assert!(fetch_one(&b, "default").await.is_none());
}

/// Strict order between priority levels, first in first out inside a level.
pub async fn strict_priority_fifo_within_level(b: Arc<dyn Broker>, _clock: Arc<ManualClock>) {
    let mut low = Vec::new();
    for _ in 0..20 {
        low.push(enqueue(&b, job("test.low").priority(9)).await);
    }
    let mut high = Vec::new();
    for _ in 0..20 {
        high.push(enqueue(&b, job("test.high").priority(0)).await);
    }
    // And a batch at the default priority, which must come between the two.
    let mid: Vec<NewJob> = (0..5).map(|_| job("test.mid")).collect();
    let mid_ids: Vec<JobId> = mid.iter().map(|j| j.id.clone()).collect();
    b.enqueue(mid).await.expect("enqueue batch");

    let mut order = Vec::new();
    while let Some(j) = fetch_one(&b, "default").await {
        order.push(j.id);
    }
    let expected: Vec<JobId> = high.into_iter().chain(mid_ids).chain(low).collect();
    assert_eq!(order, expected);
}

/// A job with a future `run_at` is `scheduled`, not fetched early, and fetched once due ahead
/// of less urgent queued jobs.
pub async fn delayed_job_waits_for_run_at(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let at = clock.now_ms() + 10_000;
    let delayed = enqueue(&b, job("test.later").priority(0).run_at(at)).await;
    let j = get(&b, &delayed).await;
    assert_eq!(j.state, JobState::Scheduled);
    assert_eq!(j.run_at, at);
    assert!(fetch_one(&b, "default").await.is_none(), "not due yet");

    let now_job = enqueue(&b, job("test.now").priority(5)).await;
    let other = enqueue(&b, job("test.now").priority(5)).await;
    fetch_expect(&b, "default", &now_job).await;

    clock.advance(9_999);
    let still = fetch_one(&b, "default").await.expect("the queued job");
    assert_eq!(still.id, other, "the delayed job is still not due");

    // A past run_at is simply "now".
    let past = enqueue(&b, job("test.past").run_at(clock.now_ms() - 50_000)).await;
    assert_eq!(get(&b, &past).await.state, JobState::Queued);

    clock.advance(1);
    let j = fetch_expect(&b, "default", &delayed).await;
    assert_eq!(j.state, JobState::Running);
    assert_eq!(j.attempt, 1);
    fetch_expect(&b, "default", &past).await;
}

/// A taken `unique_key` returns the existing job and creates nothing, also inside one batch.
pub async fn unique_key_returns_existing(b: Arc<dyn Broker>, _clock: Arc<ManualClock>) {
    let first = enqueue(&b, job("test.u").unique_key("k1")).await;
    let dup = job("test.u").unique_key("k1");
    let answers = b.enqueue(vec![dup.clone()]).await.expect("enqueue dup");
    assert_eq!(
        answers,
        vec![Enqueued {
            id: first.clone(),
            created: false
        }]
    );
    assert_eq!(b.get(&dup.id).await.expect("get"), None);
    assert_eq!(history_types(&b, &first).await, vec![EventType::Enqueued]);

    let a = job("test.u").unique_key("k2");
    let c = job("test.u").unique_key("k2");
    let plain = job("test.u");
    let answers = b
        .enqueue(vec![a.clone(), c.clone(), plain.clone()])
        .await
        .expect("enqueue batch");
    assert_eq!(
        answers,
        vec![
            Enqueued {
                id: a.id.clone(),
                created: true
            },
            Enqueued {
                id: a.id.clone(),
                created: false
            },
            Enqueued {
                id: plain.id.clone(),
                created: true
            },
        ]
    );
    assert_eq!(b.get(&c.id).await.expect("get"), None);
    assert_eq!(get(&b, &a.id).await.unique_key.as_deref(), Some("k2"));
}

/// Fetch leases at most `max` jobs, never the same one twice, and records the lease.
pub async fn fetch_respects_max_and_never_repeats(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let mut ids = HashSet::new();
    for _ in 0..10 {
        ids.insert(enqueue(&b, job("test.f")).await);
    }
    enqueue(&b, job("test.f").queue("other")).await;
    let now = clock.now_ms();

    let mut seen = HashSet::new();
    for (max, expect) in [(3, 3), (3, 3), (10, 4), (10, 0)] {
        let jobs = b.fetch("default", max, LEASE).await.expect("fetch");
        assert_eq!(jobs.len(), expect, "fetch(max = {max})");
        for j in jobs {
            assert!(ids.contains(&j.id), "a job of this queue");
            assert!(seen.insert(j.id.clone()), "job {} fetched twice", j.id);
            assert_eq!(j.state, JobState::Running);
            assert_eq!(j.attempt, 1);
            assert_eq!(j.lease_until, Some(now + LEASE_MS));
            assert_eq!(j.started_at, Some(now));
            let stored = get(&b, &j.id).await;
            assert_eq!(stored.state, JobState::Running);
            assert_eq!(
                stored.lease_token, j.lease_token,
                "the stored token is the one returned"
            );
            let last = last_event(&b, &j.id).await;
            assert_eq!(last.kind_of_event, EventType::Started);
            assert_eq!(last.attempt, 1);
        }
    }
    assert_eq!(seen, ids);
    assert!(
        b.fetch("default", 0, LEASE)
            .await
            .expect("fetch 0")
            .is_empty()
    );
    assert!(
        b.fetch("nowhere", 5, LEASE)
            .await
            .expect("fetch")
            .is_empty()
    );
}

/// Many concurrent fetchers on one broker never share a job, and together drain the queue.
pub async fn concurrent_fetches_never_share_a_job(b: Arc<dyn Broker>, _clock: Arc<ManualClock>) {
    const N: usize = 300;
    let batch: Vec<NewJob> = (0..N).map(|_| job("test.c").queue("c")).collect();
    b.enqueue(batch).await.expect("enqueue");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let jobs = b.fetch("c", 7, LEASE).await.expect("fetch");
                if jobs.is_empty() {
                    return mine;
                }
                mine.extend(jobs.into_iter().map(|j| j.id));
            }
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        for id in t.await.expect("fetch task") {
            assert!(all.insert(id.clone()), "job {id} fetched twice");
        }
    }
    assert_eq!(all.len(), N);
}

/// `running -> succeeded` with the result; the lease is then spent.
pub async fn finish_succeeded(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let id = enqueue(&b, job("test.ok")).await;
    let j = fetch_expect(&b, "default", &id).await;
    clock.advance(250);
    let result = json!({"answer": 42});
    finish(
        &b,
        j.lease(),
        Outcome::Succeeded {
            result: result.clone(),
        },
    )
    .await
    .expect("finish");
    let done = get(&b, &id).await;
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.result, Some(result.clone()));
    assert_eq!(done.progress, 100);
    assert_eq!(done.attempt, 1);
    assert_eq!(done.finished_at, Some(clock.now_ms()));
    assert_eq!(done.started_at, Some(clock.now_ms() - 250));
    let history = b.history(&id).await.expect("history");
    assert_eq!(
        types(&history),
        vec![
            EventType::Enqueued,
            EventType::Started,
            EventType::Succeeded
        ]
    );
    assert_eq!(history[2].result, Some(result));
    assert_eq!(history[2].attempt, 1);

    assert_lease_lost(finish(&b, j.lease(), ok()).await, "second finish");
    assert!(fetch_one(&b, "default").await.is_none());
}

/// `running -> retrying` until due, then `queued` again; then `running -> dead`.
pub async fn finish_retry_then_dead(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let id = enqueue(&b, job("test.retry")).await;
    let first = fetch_expect(&b, "default", &id).await;
    let at = clock.now_ms() + 5_000;
    finish(
        &b,
        first.lease(),
        Outcome::Retry {
            at,
            error: "flaky".into(),
        },
    )
    .await
    .expect("finish retry");
    let j = get(&b, &id).await;
    assert_eq!(j.state, JobState::Retrying);
    assert_eq!(j.run_at, at);
    assert_eq!(j.attempt, 1);
    assert_eq!(j.last_error.as_deref(), Some("flaky"));
    assert_eq!(j.finished_at, None);
    let e = last_event(&b, &id).await;
    assert_eq!(e.kind_of_event, EventType::Retrying);
    assert_eq!(e.error.as_deref(), Some("flaky"));

    assert!(fetch_one(&b, "default").await.is_none(), "not due yet");
    clock.advance(5_000);
    let second = fetch_expect(&b, "default", &id).await;
    assert_eq!(second.attempt, 2);
    assert!(second.lease_token > first.lease_token);
    assert_lease_lost(
        finish(&b, first.lease(), ok()).await,
        "first attempt's lease",
    );

    finish(
        &b,
        second.lease(),
        Outcome::Dead {
            error: "fatal".into(),
        },
    )
    .await
    .expect("finish dead");
    let j = get(&b, &id).await;
    assert_eq!(j.state, JobState::Dead);
    assert_eq!(j.attempt, 2);
    assert_eq!(j.last_error.as_deref(), Some("fatal"));
    assert_eq!(j.finished_at, Some(clock.now_ms()));
    let e = last_event(&b, &id).await;
    assert_eq!(e.kind_of_event, EventType::Dead);
    assert_eq!(e.error.as_deref(), Some("fatal"));
    assert_eq!(e.attempt, 2);
    assert!(fetch_one(&b, "default").await.is_none());
}

/// `running -> scheduled` at the given time, the attempt not counted.
pub async fn finish_snooze(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let id = enqueue(&b, job("test.snooze")).await;
    let j = fetch_expect(&b, "default", &id).await;
    let at = clock.now_ms() + 1_000;
    finish(&b, j.lease(), Outcome::Snooze { at })
        .await
        .expect("finish snooze");
    let s = get(&b, &id).await;
    assert_eq!(s.state, JobState::Scheduled);
    assert_eq!(s.run_at, at);
    assert_eq!(s.attempt, 0, "a snoozed attempt is not counted");
    assert_eq!(s.finished_at, None);
    // No event type names "scheduled": a snooze is recorded as enqueued again, for later.
    let e = last_event(&b, &id).await;
    assert_eq!(e.kind_of_event, EventType::Enqueued);
    assert_eq!(history_types(&b, &id).await.len(), 3);

    assert!(fetch_one(&b, "default").await.is_none());
    clock.advance(1_000);
    let again = fetch_expect(&b, "default", &id).await;
    assert_eq!(again.attempt, 1);
}

/// `running -> queued` at once (shutdown), not an attempt and not an interruption.
pub async fn finish_released(b: Arc<dyn Broker>, _clock: Arc<ManualClock>) {
    let id = enqueue(&b, job("test.release")).await;
    let j = fetch_expect(&b, "default", &id).await;
    finish(
        &b,
        j.lease(),
        Outcome::Released {
            reason: "shutting down".into(),
        },
    )
    .await
    .expect("finish released");
    let r = get(&b, &id).await;
    assert_eq!(r.state, JobState::Queued);
    assert_eq!(r.attempt, 0);
    assert_eq!(r.interruptions, 0);
    let e = last_event(&b, &id).await;
    assert_eq!(e.kind_of_event, EventType::Interrupted);
    assert_eq!(e.message.as_deref(), Some("shutting down"));

    let again = fetch_expect(&b, "default", &id).await;
    assert_eq!(again.attempt, 1);
    assert!(again.lease_token > j.lease_token);
    assert_lease_lost(finish(&b, j.lease(), ok()).await, "released lease");
    finish(&b, again.lease(), ok()).await.expect("finish");
}

/// One finish call answers each entry on its own: a stale one does not spoil the others.
pub async fn finish_batch_answers_each_entry(b: Arc<dyn Broker>, _clock: Arc<ManualClock>) {
    let a = enqueue(&b, job("test.a")).await;
    let c = enqueue(&b, job("test.c")).await;
    let ja = fetch_expect(&b, "default", &a).await;
    let jc = fetch_expect(&b, "default", &c).await;
    let stale = Lease {
        job_id: a.clone(),
        queue: ja.queue.clone(),
        token: ja.lease_token + 100,
    };
    let answers = b
        .finish(vec![
            Finish {
                lease: stale,
                outcome: ok(),
            },
            Finish {
                lease: jc.lease(),
                outcome: ok(),
            },
            Finish {
                lease: Lease {
                    job_id: JobId::generate(),
                    queue: "default".into(),
                    token: 1,
                },
                outcome: ok(),
            },
        ])
        .await
        .expect("finish batch");
    assert_eq!(answers.len(), 3);
    assert!(matches!(answers[0], Err(BrokerError::LeaseLost(ref id)) if *id == a));
    assert!(answers[1].is_ok(), "{:?}", answers[1]);
    assert!(matches!(answers[2], Err(BrokerError::LeaseLost(_))));
    assert_eq!(get(&b, &a).await.state, JobState::Running);
    assert_eq!(get(&b, &c).await.state, JobState::Succeeded);
    assert!(b.finish(Vec::new()).await.expect("empty finish").is_empty());
}

/// After a rescue and a new fetch, the first attempt's writes are all refused.
pub async fn stale_token_refused_after_rescue(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let id = enqueue(&b, job("test.stale")).await;
    let first = b
        .fetch("default", 1, Duration::from_secs(10))
        .await
        .expect("fetch")
        .pop()
        .expect("a job");
    clock.advance(10_001);
    assert_eq!(b.rescue(3).await.expect("rescue"), vec![id.clone()]);
    let second = fetch_expect(&b, "default", &id).await;
    assert!(second.lease_token > first.lease_token);
    assert_eq!(second.attempt, 1);

    assert_lease_lost(finish(&b, first.lease(), ok()).await, "stale finish");
    assert_lease_lost(b.progress(&first.lease(), 50, None).await, "stale progress");
    assert_eq!(
        b.heartbeat(&[first.lease()], LEASE)
            .await
            .expect("heartbeat"),
        vec![LeaseStatus::Lost]
    );
    let j = get(&b, &id).await;
    assert_eq!(j.state, JobState::Running);
    assert_eq!(j.lease_token, second.lease_token);

    finish(&b, second.lease(), ok())
        .await
        .expect("current finish");
    let j = get(&b, &id).await;
    assert_eq!(j.state, JobState::Succeeded);
    assert_eq!(j.interruptions, 1, "the interruption stays on record");
    assert_eq!(j.interruption_streak, 0, "a normal end resets the streak");
}

/// Heartbeats extend held leases and report cancelled and lost ones.
pub async fn heartbeat_extends_and_reports(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let lease = Duration::from_secs(10);
    let a = enqueue(&b, job("test.hb")).await;
    let c = enqueue(&b, job("test.hb")).await;
    let ja = b
        .fetch("default", 1, lease)
        .await
        .expect("fetch")
        .pop()
        .expect("a");
    let jc = b
        .fetch("default", 1, lease)
        .await
        .expect("fetch")
        .pop()
        .expect("c");
    assert_eq!((&ja.id, &jc.id), (&a, &c));

    clock.advance(8_000);
    assert_eq!(
        b.heartbeat(&[ja.lease(), jc.lease()], lease)
            .await
            .expect("heartbeat"),
        vec![LeaseStatus::Held, LeaseStatus::Held]
    );
    assert_eq!(get(&b, &a).await.lease_until, Some(clock.now_ms() + 10_000));
    clock.advance(8_000);
    assert!(
        b.rescue(3).await.expect("rescue").is_empty(),
        "an extended lease has not expired"
    );

    b.cancel(&c).await.expect("cancel");
    let unknown = Lease {
        job_id: JobId::generate(),
        queue: "default".into(),
        token: 1,
    };
    assert_eq!(
        b.heartbeat(&[ja.lease(), jc.lease(), unknown], lease)
            .await
            .expect("heartbeat"),
        vec![LeaseStatus::Held, LeaseStatus::Cancelled, LeaseStatus::Lost]
    );
    assert!(b.heartbeat(&[], lease).await.expect("empty").is_empty());
}

/// An expired lease goes back to `queued`: an interruption, not an attempt.
pub async fn rescue_counts_interruption_not_attempt(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    assert!(b.rescue(3).await.expect("rescue nothing").is_empty());
    let short = enqueue(&b, job("test.short")).await;
    let long = enqueue(&b, job("test.long")).await;
    b.fetch("default", 1, Duration::from_secs(1))
        .await
        .expect("fetch");
    b.fetch("default", 1, Duration::from_secs(60))
        .await
        .expect("fetch");

    clock.advance(1_001);
    assert_eq!(b.rescue(3).await.expect("rescue"), vec![short.clone()]);
    let j = get(&b, &short).await;
    assert_eq!(j.state, JobState::Queued);
    assert_eq!(j.attempt, 0, "the interrupted attempt is not counted");
    assert_eq!(j.interruptions, 1);
    assert_eq!(j.interruption_streak, 1);
    assert_eq!(
        last_event(&b, &short).await.kind_of_event,
        EventType::Interrupted
    );
    assert_eq!(get(&b, &long).await.state, JobState::Running);
    assert!(b.rescue(3).await.expect("rescue again").is_empty());

    let again = fetch_expect(&b, "default", &short).await;
    assert_eq!(again.attempt, 1);
}

/// A job interrupted `max_interruptions` times in a row is dead; a normal end resets the count.
pub async fn poison_pill_after_max_interruptions(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let lease = Duration::from_secs(1);
    let id = enqueue(&b, job("test.poison").max_retries(5)).await;
    let interrupt = |expect_state: JobState| {
        let b = b.clone();
        let clock = clock.clone();
        let id = id.clone();
        async move {
            let j = b
                .fetch("default", 1, lease)
                .await
                .expect("fetch")
                .pop()
                .expect("due");
            assert_eq!(j.id, id);
            clock.advance(1_001);
            assert_eq!(b.rescue(3).await.expect("rescue"), vec![id.clone()]);
            let after = get(&b, &id).await;
            assert_eq!(after.state, expect_state);
            after
        }
    };

    interrupt(JobState::Queued).await;
    interrupt(JobState::Queued).await;
    // An attempt that ends normally (here: a retry) breaks the streak.
    let j = fetch_expect(&b, "default", &id).await;
    finish(
        &b,
        j.lease(),
        Outcome::Retry {
            at: clock.now_ms(),
            error: "flaky".into(),
        },
    )
    .await
    .expect("retry");
    assert_eq!(get(&b, &id).await.interruption_streak, 0);

    interrupt(JobState::Queued).await;
    interrupt(JobState::Queued).await;
    let dead = interrupt(JobState::Dead).await;
    assert_eq!(dead.interruptions, 5);
    assert_eq!(dead.interruption_streak, 3);
    assert_eq!(dead.attempt, 1, "interrupted attempts are not counted");
    assert!(
        dead.last_error
            .as_deref()
            .is_some_and(|e| e.contains("poison pill")),
        "last_error names the poison pill: {:?}",
        dead.last_error
    );
    assert!(dead.finished_at.is_some());
    let history = history_types(&b, &id).await;
    assert_eq!(history.last(), Some(&EventType::Dead));
    assert!(fetch_one(&b, "default").await.is_none());
}

/// Cancel works from every non-final state and is a conflict from a final one.
pub async fn cancel_non_final_and_conflict_on_final(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let queued = enqueue(&b, job("test.cancel")).await;
    let scheduled = enqueue(&b, job("test.cancel").run_at(clock.now_ms() + 60_000)).await;
    let running = enqueue(&b, job("test.cancel").priority(0)).await;
    let r = fetch_expect(&b, "default", &running).await;

    for id in [&queued, &scheduled, &running] {
        let j = b.cancel(id).await.expect("cancel");
        assert_eq!(&j.id, id);
        assert_eq!(j.state, JobState::Cancelled);
        assert_eq!(j.finished_at, Some(clock.now_ms()));
        assert_eq!(get(&b, id).await.state, JobState::Cancelled);
        assert_eq!(last_event(&b, id).await.kind_of_event, EventType::Cancelled);
    }
    assert!(
        fetch_one(&b, "default").await.is_none(),
        "cancelled jobs are not fetched"
    );
    clock.advance(60_000);
    assert!(
        fetch_one(&b, "default").await.is_none(),
        "nor when their time comes"
    );

    assert_eq!(
        b.heartbeat(&[r.lease()], LEASE).await.expect("heartbeat"),
        vec![LeaseStatus::Cancelled]
    );
    assert_lease_lost(finish(&b, r.lease(), ok()).await, "finish after cancel");
    assert_eq!(get(&b, &running).await.state, JobState::Cancelled);

    let again = b.cancel(&queued).await;
    assert!(
        matches!(
            again,
            Err(BrokerError::Conflict {
                state: JobState::Cancelled,
                ..
            })
        ),
        "got {again:?}"
    );
    let done = make_succeeded(&b, "default").await;
    let r = b.cancel(&done).await;
    assert!(
        matches!(
            r,
            Err(BrokerError::Conflict {
                state: JobState::Succeeded,
                ..
            })
        ),
        "got {r:?}"
    );
    let dead = make_dead(&b, "default").await;
    let r = b.cancel(&dead).await;
    assert!(
        matches!(
            r,
            Err(BrokerError::Conflict {
                state: JobState::Dead,
                ..
            })
        ),
        "got {r:?}"
    );
    let r = b.cancel(&JobId::generate()).await;
    assert!(matches!(r, Err(BrokerError::NotFound(_))), "got {r:?}");
}

/// Retry puts dead and cancelled jobs back with fresh attempts; anything else is a conflict.
pub async fn retry_dead_and_cancelled_only(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let dead = make_dead(&b, "default").await;
    clock.advance(1_000);
    let j = b.retry(&dead).await.expect("retry dead");
    assert_eq!(j.state, JobState::Queued);
    assert_eq!(j.attempt, 0);
    assert_eq!(j.interruption_streak, 0);
    assert_eq!(
        j.last_error.as_deref(),
        Some("boom"),
        "the last error is kept"
    );
    assert_eq!(j.finished_at, None);
    assert_eq!(j.run_at, clock.now_ms());
    let e = last_event(&b, &dead).await;
    assert_eq!(e.kind_of_event, EventType::Enqueued);
    assert_eq!(e.message.as_deref(), Some("retried"));
    let again = fetch_expect(&b, "default", &dead).await;
    assert_eq!(again.attempt, 1);

    let cancelled = enqueue(&b, job("test.retry")).await;
    b.cancel(&cancelled).await.expect("cancel");
    assert_eq!(
        b.retry(&cancelled).await.expect("retry cancelled").state,
        JobState::Queued
    );

    let r = b.retry(&cancelled).await;
    assert!(
        matches!(
            r,
            Err(BrokerError::Conflict {
                state: JobState::Queued,
                ..
            })
        ),
        "got {r:?}"
    );
    let r = b.retry(&dead).await;
    assert!(
        matches!(
            r,
            Err(BrokerError::Conflict {
                state: JobState::Running,
                ..
            })
        ),
        "got {r:?}"
    );
    let done = make_succeeded(&b, "other").await;
    let r = b.retry(&done).await;
    assert!(
        matches!(
            r,
            Err(BrokerError::Conflict {
                state: JobState::Succeeded,
                ..
            })
        ),
        "got {r:?}"
    );
    let r = b.retry(&JobId::generate()).await;
    assert!(matches!(r, Err(BrokerError::NotFound(_))), "got {r:?}");
}

/// `retry_all_dead` counts what it retried and honours the queue filter.
pub async fn retry_all_dead_counts_and_filters(b: Arc<dyn Broker>, _clock: Arc<ManualClock>) {
    let mut in_a = Vec::new();
    for _ in 0..3 {
        in_a.push(make_dead(&b, "a").await);
    }
    let in_b = [make_dead(&b, "b").await, make_dead(&b, "b").await];
    let queued = enqueue(&b, job("test.q").queue("a")).await;

    assert_eq!(b.retry_all_dead(Some("a")).await.expect("retry a"), 3);
    for id in &in_a {
        assert_eq!(get(&b, id).await.state, JobState::Queued);
    }
    for id in &in_b {
        assert_eq!(get(&b, id).await.state, JobState::Dead);
    }
    assert_eq!(get(&b, &queued).await.state, JobState::Queued);
    assert_eq!(b.retry_all_dead(None).await.expect("retry all"), 2);
    assert_eq!(get(&b, &in_b[0]).await.state, JobState::Queued);
    assert_eq!(b.retry_all_dead(None).await.expect("retry none"), 0);
    assert_eq!(
        b.retry_all_dead(Some("nowhere")).await.expect("retry none"),
        0
    );
}

/// Listing: newest first, filters combine, and the cursor pages through everything once.
pub async fn list_filters_and_cursor(b: Arc<dyn Broker>, _clock: Arc<ManualClock>) {
    let mut a = Vec::new();
    for _ in 0..5 {
        a.push(enqueue(&b, job("k.one").queue("a")).await);
    }
    let mut bq = Vec::new();
    for _ in 0..3 {
        bq.push(enqueue(&b, job("k.two").queue("b")).await);
    }
    let running: Vec<JobId> = b
        .fetch("a", 2, LEASE)
        .await
        .expect("fetch")
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(running, a[..2].to_vec());

    let ids = |page: crate::broker::JobPage| -> Vec<JobId> {
        page.jobs.into_iter().map(|j| j.id).collect()
    };
    let filter = |queue: Option<&str>, state: Option<JobState>, kind: Option<&str>| JobFilter {
        queue: queue.map(str::to_owned),
        state,
        kind: kind.map(str::to_owned),
        limit: 100,
        cursor: None,
    };
    let newest_first = |v: &[JobId]| v.iter().rev().cloned().collect::<Vec<_>>();

    let page = b.list(&filter(Some("a"), None, None)).await.expect("list");
    assert_eq!(page.next_cursor, None);
    assert_eq!(ids(page), newest_first(&a));
    let page = b
        .list(&filter(None, Some(JobState::Running), None))
        .await
        .expect("list");
    assert_eq!(ids(page), newest_first(&a[..2]));
    let page = b
        .list(&filter(None, None, Some("k.two")))
        .await
        .expect("list");
    assert_eq!(ids(page), newest_first(&bq));
    let page = b
        .list(&filter(Some("a"), Some(JobState::Queued), Some("k.one")))
        .await
        .expect("list");
    assert_eq!(ids(page), newest_first(&a[2..]));
    let page = b
        .list(&filter(Some("b"), Some(JobState::Running), None))
        .await
        .expect("list");
    assert!(page.jobs.is_empty());

    let all: Vec<JobId> = a.iter().chain(&bq).cloned().collect();
    let mut paged = Vec::new();
    let mut cursor = None;
    for _ in 0..10 {
        let page = b
            .list(&JobFilter {
                limit: 3,
                cursor: cursor.clone(),
                ..JobFilter::default()
            })
            .await
            .expect("list page");
        assert!(page.jobs.len() <= 3);
        cursor = page.next_cursor.clone();
        paged.extend(ids(page));
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(cursor, None, "paging ends");
    assert_eq!(paged, newest_first(&all));
}

/// Counts by state per queue, and what finished in the last minute.
pub async fn queues_counts(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    assert!(b.queues().await.expect("queues").is_empty());
    make_succeeded(&b, "a").await;
    make_dead(&b, "a").await;
    let retrying = enqueue(&b, job("test.r").queue("a")).await;
    let j = fetch_expect(&b, "a", &retrying).await;
    finish(
        &b,
        j.lease(),
        Outcome::Retry {
            at: clock.now_ms() + 60_000,
            error: "later".into(),
        },
    )
    .await
    .expect("retry");
    enqueue(&b, job("test.s").queue("a").run_at(clock.now_ms() + 60_000)).await;
    enqueue(&b, job("test.q").queue("a")).await;
    enqueue(&b, job("test.q").queue("a")).await;
    b.fetch("a", 1, LEASE).await.expect("fetch");
    enqueue(&b, job("test.q").queue("b")).await;

    let stats = b.queues().await.expect("queues");
    let names: Vec<&str> = stats.iter().map(|s| s.queue.as_str()).collect();
    assert_eq!(names, vec!["a", "b"]);
    let a = &stats[0];
    assert_eq!(a.counts.queued, 1);
    assert_eq!(a.counts.running, 1);
    assert_eq!(a.counts.scheduled, 1);
    assert_eq!(a.counts.retrying, 1);
    assert_eq!(a.counts.succeeded, 1);
    assert_eq!(a.counts.dead, 1);
    assert_eq!(a.counts.cancelled, 0);
    assert_eq!(a.processed_last_minute, 1);
    assert_eq!(a.failed_last_minute, 2, "the retry and the death");
    let bs = &stats[1];
    assert_eq!(bs.counts.queued, 1);
    assert_eq!(bs.counts.get(JobState::Running), 0);
    assert_eq!(bs.processed_last_minute, 0);

    clock.advance(120_000);
    let stats = b.queues().await.expect("queues");
    assert_eq!(stats[0].processed_last_minute, 0);
    assert_eq!(stats[0].failed_last_minute, 0);
    assert_eq!(stats[0].counts.succeeded, 1);
}

/// The event log resumes after any id it handed out, oldest first.
pub async fn events_resume_after_id(b: Arc<dyn Broker>, _clock: Arc<ManualClock>) {
    assert!(b.events(None, 100).await.expect("events").is_empty());
    let ids = [
        enqueue(&b, job("test.e")).await,
        enqueue(&b, job("test.e")).await,
        enqueue(&b, job("test.e")).await,
    ];
    let all = b.events(None, 100).await.expect("events");
    assert_eq!(all.len(), 3);
    for (e, id) in all.iter().zip(&ids) {
        assert_eq!(&e.job_id, id);
        assert_eq!(e.kind_of_event, EventType::Enqueued);
        assert_eq!(e.queue, "default");
        assert_eq!(e.kind, "test.e");
    }
    assert_eq!(b.events(None, 2).await.expect("events").len(), 2);
    let rest = b.events(Some(&all[0].id), 100).await.expect("events after");
    assert_eq!(rest, all[1..].to_vec());
    assert!(
        b.events(Some(&all[2].id), 100)
            .await
            .expect("events")
            .is_empty()
    );

    let j = fetch_expect(&b, "default", &ids[0]).await;
    let new = b.events(Some(&all[2].id), 100).await.expect("events after");
    assert_eq!(types(&new), vec![EventType::Started]);
    assert_eq!(new[0].job_id, j.id);
    assert_eq!(new[0].attempt, 1);
}

/// Purge deletes finished jobs of the given states finished before the cut, with their events,
/// and trims the log to the newest entries.
pub async fn purge_finished_and_trim_events(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let old_ok = make_succeeded(&b, "default").await;
    let old_dead = make_dead(&b, "default").await;
    let old_cancelled = enqueue(&b, job("test.c")).await;
    b.cancel(&old_cancelled).await.expect("cancel");
    let cut = clock.now_ms() + 1;
    clock.advance(10_000);
    let new_ok = make_succeeded(&b, "default").await;
    let queued = enqueue(&b, job("test.q")).await;

    let n = b
        .purge(&[JobState::Succeeded, JobState::Dead], cut, 1_000_000)
        .await
        .expect("purge");
    assert_eq!(n, 2);
    for id in [&old_ok, &old_dead] {
        assert_eq!(b.get(id).await.expect("get"), None);
        assert!(b.history(id).await.expect("history").is_empty());
    }
    assert_eq!(get(&b, &old_cancelled).await.state, JobState::Cancelled);
    assert_eq!(get(&b, &new_ok).await.state, JobState::Succeeded);
    assert_eq!(get(&b, &queued).await.state, JobState::Queued);

    let n = b
        .purge(
            &[JobState::Queued, JobState::Running],
            clock.now_ms() + 1,
            1_000_000,
        )
        .await
        .expect("purge unfinished");
    assert_eq!(n, 0, "only finished jobs are purged");
    assert_eq!(get(&b, &queued).await.state, JobState::Queued);

    let before = b.events(None, 1000).await.expect("events");
    assert!(before.len() > 2);
    b.purge(&[], 0, 2).await.expect("trim");
    let after = b.events(None, 1000).await.expect("events");
    assert_eq!(
        after,
        before[before.len() - 2..].to_vec(),
        "the newest two are kept"
    );
}

/// Progress is recorded with its event, and refused once the lease is stale or the job done.
pub async fn progress_recorded_and_fenced(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let id = enqueue(&b, job("test.p")).await;
    let first = b
        .fetch("default", 1, Duration::from_secs(5))
        .await
        .expect("fetch")
        .pop()
        .expect("a job");
    b.progress(&first.lease(), 40, Some("reading".into()))
        .await
        .expect("progress");
    let j = get(&b, &id).await;
    assert_eq!(j.progress, 40);
    assert_eq!(j.progress_message.as_deref(), Some("reading"));
    let e = last_event(&b, &id).await;
    assert_eq!(e.kind_of_event, EventType::Progress);
    assert_eq!(e.progress, Some(40));
    assert_eq!(e.message.as_deref(), Some("reading"));

    clock.advance(5_001);
    b.rescue(3).await.expect("rescue");
    let second = fetch_expect(&b, "default", &id).await;
    assert_lease_lost(
        b.progress(&first.lease(), 90, None).await,
        "progress with a stale token",
    );
    assert_ne!(get(&b, &id).await.progress, 90);
    finish(&b, second.lease(), ok()).await.expect("finish");
    assert_lease_lost(
        b.progress(&second.lease(), 10, None).await,
        "progress after finishing",
    );
    assert_eq!(get(&b, &id).await.progress, 100);
}

/// `drop_queue` removes a queue's jobs and events and nothing else.
pub async fn drop_queue_removes_jobs_and_events(b: Arc<dyn Broker>, _clock: Arc<ManualClock>) {
    let mut x = Vec::new();
    for _ in 0..3 {
        x.push(enqueue(&b, job("test.x").queue("x")).await);
    }
    b.fetch("x", 1, LEASE).await.expect("fetch");
    let y = enqueue(&b, job("test.y").queue("y")).await;

    assert_eq!(b.drop_queue("x").await.expect("drop"), 3);
    for id in &x {
        assert_eq!(b.get(id).await.expect("get"), None);
        assert!(b.history(id).await.expect("history").is_empty());
    }
    assert!(fetch_one(&b, "x").await.is_none());
    assert_eq!(get(&b, &y).await.state, JobState::Queued);
    assert_eq!(history_types(&b, &y).await, vec![EventType::Enqueued]);
    let queues: Vec<String> = b
        .queues()
        .await
        .expect("queues")
        .into_iter()
        .map(|q| q.queue)
        .collect();
    assert_eq!(queues, vec!["y".to_owned()]);
    assert_eq!(b.drop_queue("x").await.expect("drop again"), 0);
}

/// `wait_for_work` returns (woken by an enqueue, or by its timeout) and does not hang.
pub async fn wait_for_work_returns(b: Arc<dyn Broker>, _clock: Arc<ManualClock>) {
    let queues = vec!["default".to_owned()];
    let started = std::time::Instant::now();
    b.wait_for_work(&queues, Duration::from_millis(50))
        .await
        .expect("wait (timeout)");
    assert!(started.elapsed() < Duration::from_secs(5));

    let waiter = {
        let b = b.clone();
        let queues = queues.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            b.wait_for_work(&queues, Duration::from_secs(30))
                .await
                .expect("wait");
            started.elapsed()
        })
    };
    tokio::task::yield_now().await;
    enqueue(&b, job("test.w")).await;
    let waited = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("wait_for_work returned after an enqueue")
        .expect("waiter task");
    assert!(waited < Duration::from_secs(10));
    assert!(fetch_one(&b, "default").await.is_some());
}

/// The broker answers.
pub async fn ping_answers(b: Arc<dyn Broker>, _clock: Arc<ManualClock>) {
    b.ping().await.expect("ping");
    assert!(!b.name().is_empty());
}

// ---- Chains ----------------------------------------------------------------------------------

/// Enqueues a three-step chain on `queue` and returns its step ids.
async fn enqueue_chain(b: &Arc<dyn Broker>, queue: &str) -> Vec<JobId> {
    let steps = link_chain(vec![
        job("test.a").queue(queue),
        job("test.b").queue(queue),
        job("test.c").queue(queue),
    ]);
    let answers = b.enqueue(steps).await.expect("enqueue chain");
    assert!(answers.iter().all(|a| a.created));
    answers.into_iter().map(|a| a.id).collect()
}

/// A chain's later steps wait; each runs after its predecessor succeeds, with the
/// predecessor's result as `input`, and `chain()` lists the steps in order.
pub async fn chain_passes_results_in_order(b: Arc<dyn Broker>, _clock: Arc<ManualClock>) {
    let ids = enqueue_chain(&b, "chain").await;
    assert_eq!(get(&b, &ids[0]).await.state, JobState::Queued);
    assert_eq!(get(&b, &ids[1]).await.state, JobState::Waiting);
    assert_eq!(get(&b, &ids[2]).await.state, JobState::Waiting);
    let steps = b.chain(&ids[0]).await.expect("chain");
    assert_eq!(
        steps.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
        ids,
        "chain() lists the steps in order"
    );

    let first = fetch_expect(&b, "chain", &ids[0]).await;
    assert!(
        fetch_one(&b, "chain").await.is_none(),
        "a waiting step is never fetched"
    );
    finish(
        &b,
        first.lease(),
        Outcome::Succeeded {
            result: json!({"rows": 3}),
        },
    )
    .await
    .expect("finish first");
    let second = fetch_expect(&b, "chain", &ids[1]).await;
    assert_eq!(second.payload["input"], json!({"rows": 3}));
    assert_eq!(get(&b, &ids[2]).await.state, JobState::Waiting);
    finish(
        &b,
        second.lease(),
        Outcome::Succeeded {
            result: json!({"path": "r.pdf"}),
        },
    )
    .await
    .expect("finish second");
    let third = fetch_expect(&b, "chain", &ids[2]).await;
    assert_eq!(third.payload["input"], json!({"path": "r.pdf"}));
    let link = third.chain.clone().expect("a chain step knows its chain");
    assert_eq!((link.id, link.index, link.next), (ids[0].clone(), 2, None));
    finish(&b, third.lease(), ok()).await.expect("finish third");
    let states: Vec<JobState> = b
        .chain(&ids[0])
        .await
        .expect("chain")
        .iter()
        .map(|j| j.state)
        .collect();
    assert_eq!(states, vec![JobState::Succeeded; 3]);
}

/// A step that dies cancels the waiting steps after it, with a reason; retrying that step puts
/// them back to waiting and the chain resumes.
pub async fn chain_dead_step_cancels_rest_and_retry_resumes(
    b: Arc<dyn Broker>,
    _clock: Arc<ManualClock>,
) {
    let ids = enqueue_chain(&b, "chain").await;
    let first = fetch_expect(&b, "chain", &ids[0]).await;
    finish(&b, first.lease(), ok()).await.expect("finish first");
    let second = fetch_expect(&b, "chain", &ids[1]).await;
    finish(
        &b,
        second.lease(),
        Outcome::Dead {
            error: "boom".into(),
        },
    )
    .await
    .expect("finish dead");
    let third = get(&b, &ids[2]).await;
    assert_eq!(third.state, JobState::Cancelled);
    assert!(
        third
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("chain")),
        "the cancelled step says why: {:?}",
        third.last_error
    );
    assert_eq!(
        last_event(&b, &ids[2]).await.kind_of_event,
        EventType::Cancelled
    );

    b.retry(&ids[1]).await.expect("retry the dead step");
    assert_eq!(get(&b, &ids[2]).await.state, JobState::Waiting);
    let second = fetch_expect(&b, "chain", &ids[1]).await;
    assert_eq!(
        second.payload["input"],
        json!({"ok": true}),
        "the input survives a retry"
    );
    finish(&b, second.lease(), ok())
        .await
        .expect("finish second");
    let third = fetch_expect(&b, "chain", &ids[2]).await;
    finish(&b, third.lease(), ok()).await.expect("finish third");
    assert_eq!(get(&b, &ids[2]).await.state, JobState::Succeeded);
}

/// Cancelling a step (running or waiting) cancels the steps after it, not the ones before.
pub async fn chain_cancel_cancels_rest(b: Arc<dyn Broker>, _clock: Arc<ManualClock>) {
    let ids = enqueue_chain(&b, "chain").await;
    let first = fetch_expect(&b, "chain", &ids[0]).await;
    finish(&b, first.lease(), ok()).await.expect("finish first");
    b.cancel(&ids[1]).await.expect("cancel the second step");
    assert_eq!(get(&b, &ids[0]).await.state, JobState::Succeeded);
    assert_eq!(get(&b, &ids[1]).await.state, JobState::Cancelled);
    assert_eq!(get(&b, &ids[2]).await.state, JobState::Cancelled);
    b.retry(&ids[1]).await.expect("retry the cancelled step");
    assert_eq!(get(&b, &ids[1]).await.state, JobState::Queued);
    assert_eq!(get(&b, &ids[2]).await.state, JobState::Waiting);
}

/// A chain whose first step's unique key is taken (an `Idempotency-Key` replay) is the earlier
/// chain: no step is created again, and each answer names the earlier chain's step.
pub async fn chain_replay_with_taken_key_creates_nothing(
    b: Arc<dyn Broker>,
    _clock: Arc<ManualClock>,
) {
    let make = || {
        link_chain(vec![
            job("test.a").queue("chain").unique_key("idem:1"),
            job("test.b").queue("chain"),
            job("test.c").queue("chain"),
        ])
    };
    let first: Vec<JobId> = b
        .enqueue(make())
        .await
        .expect("enqueue")
        .into_iter()
        .map(|a| a.id)
        .collect();
    let replay = b.enqueue(make()).await.expect("enqueue replay");
    assert!(
        replay.iter().all(|a| !a.created),
        "nothing is created: {replay:?}"
    );
    let ids: Vec<JobId> = replay.into_iter().map(|a| a.id).collect();
    assert_eq!(ids, first, "the answers name the earlier chain's steps");
    let page = b
        .list(&JobFilter {
            queue: Some("chain".into()),
            limit: 100,
            ..JobFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(page.jobs.len(), 3, "no orphan steps were left waiting");
}

/// Retrying a later step whose predecessor has not succeeded puts it back to `waiting` (it
/// needs that step's result); once the predecessor succeeds it runs with the result.
pub async fn chain_retry_of_later_step_waits_for_predecessor(
    b: Arc<dyn Broker>,
    _clock: Arc<ManualClock>,
) {
    let ids = enqueue_chain(&b, "chain").await;
    let first = fetch_expect(&b, "chain", &ids[0]).await;
    finish(
        &b,
        first.lease(),
        Outcome::Dead {
            error: "boom".into(),
        },
    )
    .await
    .expect("finish dead");
    assert_eq!(get(&b, &ids[1]).await.state, JobState::Cancelled);
    let retried = b.retry(&ids[1]).await.expect("retry the second step");
    assert_eq!(
        retried.state,
        JobState::Waiting,
        "it waits for its predecessor"
    );
    assert!(fetch_one(&b, "chain").await.is_none(), "nothing to run yet");

    b.retry(&ids[0]).await.expect("retry the first step");
    let first = fetch_expect(&b, "chain", &ids[0]).await;
    finish(
        &b,
        first.lease(),
        Outcome::Succeeded {
            result: json!({"n": 7}),
        },
    )
    .await
    .expect("finish first");
    let second = fetch_expect(&b, "chain", &ids[1]).await;
    assert_eq!(second.payload["input"], json!({"n": 7}));
    finish(&b, second.lease(), ok())
        .await
        .expect("finish second");
    // Retrying a later step whose predecessor succeeded queues it with that result.
    let third = fetch_expect(&b, "chain", &ids[2]).await;
    finish(
        &b,
        third.lease(),
        Outcome::Dead {
            error: "boom".into(),
        },
    )
    .await
    .expect("finish third dead");
    let again = b.retry(&ids[2]).await.expect("retry the third step");
    assert_eq!(again.state, JobState::Queued);
    let third = fetch_expect(&b, "chain", &ids[2]).await;
    assert_eq!(third.payload["input"], json!({"ok": true}));
}
