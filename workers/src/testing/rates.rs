//! Job rate limits in the broker ([`Broker::fetch_rated`]): however many handles fetch from a
//! rated queue, together they start no more jobs than its rate; a job held back stays
//! `queued` with its attempt untouched; the broker says how long the queue is held, and
//! [`Broker::rate_held_until`] reads it without writing. The pool's side (it sleeps instead of
//! polling) is `pool`'s business, and the `[[queue]] rate_limit` syntax the shell's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::partition::Partitioned;
use super::pool::{config, start};
use super::{LEASE, ManualClock, START, enqueue_ids, get, job, ms};
use crate::broker::{Broker, JobFilter, JobRate};
use crate::clock::Clock;
use crate::handler::Registry;
use crate::job::JobState;
use crate::pool::QueueSpec;

/// Twenty starts a second.
fn twenty_per_second() -> JobRate {
    JobRate::new(20, Duration::from_secs(1)).expect("a rate")
}

/// Two handles on one store fetch greedily from a rated queue every 10 ms for five seconds:
/// each whole second starts the rate's count (the first second may add the small burst an
/// idle queue saved up), every held job stays `queued` at attempt 0, and while the queue is
/// held `held_for` and `rate_held_until` say until when.
pub async fn rated_fetch_starts_no_more_than_the_rate(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let rate = twenty_per_second();
    let jobs = (0..200).map(|_| job("test.rated").queue("rated")).collect();
    let ids = enqueue_ids(&*b, jobs).await;
    let handles = [b.clone(), b.clone()];
    let mut per_second: BTreeMap<i64, usize> = BTreeMap::new();
    let mut started = Vec::new();
    for _ in 0..500 {
        for h in &handles {
            let fetched = h
                .fetch_rated("rated", 8, LEASE, rate)
                .await
                .expect("fetch rated");
            let now = clock.now();
            for j in &fetched.jobs {
                assert_eq!(j.state, JobState::Running);
                assert_eq!(j.attempt, 1, "a started job is on its first attempt");
                started.push(j.id.clone());
            }
            *per_second
                .entry((now.as_millis() - START.as_millis()) / 1000)
                .or_default() += fetched.jobs.len();
            if fetched.jobs.len() < 8 {
                let held = fetched
                    .held_for
                    .expect("a fetch the rate cut short says how long the queue is held");
                assert!(held <= ms(50), "held for {held:?}, over one interval");
                let until = h
                    .rate_held_until("rated")
                    .await
                    .expect("rate_held_until")
                    .expect("a held queue has a held-until time");
                assert!(until > now && until <= now + ms(50), "held until {until:?}");
            }
        }
        clock.advance(10);
    }
    let first = per_second.get(&0).copied().unwrap_or(0);
    assert!(
        (20..=23).contains(&first),
        "first second: {first} starts (20 and a burst of at most 3)"
    );
    for second in 1..5 {
        let n = per_second.get(&second).copied().unwrap_or(0);
        assert!(
            (19..=21).contains(&n),
            "second {second}: {n} starts, not ~20"
        );
    }
    assert!(started.len() < ids.len(), "the rate held some jobs back");
    for id in ids.iter().filter(|id| !started.contains(id)).take(20) {
        let held = get(&b, id).await;
        assert_eq!(held.state, JobState::Queued, "a held job stays queued");
        assert_eq!(held.attempt, 0, "a held job's attempt is not counted");
    }
    // Left alone, the queue is no longer held.
    clock.advance(1_000);
    assert_eq!(
        b.rate_held_until("rated").await.expect("rate_held_until"),
        None
    );
}

/// A per-minute rate spaces starts out by its interval (one job, then nothing until the
/// interval has passed, however often it is asked); a queue never fetched with a rate has no
/// held-until time, and a plain fetch of another queue is not limited.
pub async fn rated_fetch_spaces_a_per_minute_rate(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let rate = JobRate::new(10, Duration::from_secs(60)).expect("a rate");
    let jobs = (0..5).map(|_| job("test.rated").queue("slow")).collect();
    enqueue_ids(&*b, jobs).await;
    let first = b
        .fetch_rated("slow", 5, LEASE, rate)
        .await
        .expect("fetch rated");
    assert_eq!(first.jobs.len(), 1, "one start, then one every 6 s");
    let held = first.held_for.expect("held after its one start");
    assert!(
        held > ms(5_000) && held <= ms(6_000),
        "held for {held:?}, about one interval"
    );
    for _ in 0..5 {
        clock.advance(1_000);
        let again = b.fetch_rated("slow", 5, LEASE, rate).await.expect("fetch");
        assert!(again.jobs.is_empty(), "no start within the interval");
        assert!(again.held_for.is_some());
    }
    clock.advance(1_000);
    let next = b.fetch_rated("slow", 5, LEASE, rate).await.expect("fetch");
    assert_eq!(next.jobs.len(), 1, "one start once the interval has passed");

    assert_eq!(
        b.rate_held_until("never-rated")
            .await
            .expect("rate_held_until"),
        None
    );
    let free = (0..5).map(|_| job("test.free").queue("free")).collect();
    enqueue_ids(&*b, free).await;
    assert_eq!(b.fetch("free", 5, LEASE).await.expect("fetch").len(), 5);
}

/// A pool whose queue is held by its rate sleeps until the broker allows the next start
/// instead of asking again and again (its idle wait here is 50 ms): with one start a minute
/// allowed, it starts one job, leaves the others `queued` on attempt 0, and in the second
/// that follows calls the broker at most a few times.
pub async fn pool_sleeps_while_its_queue_is_held_by_its_rate(
    b: Arc<dyn Broker>,
    clock: Arc<ManualClock>,
) {
    let rate = JobRate::new(1, Duration::from_secs(60)).expect("a rate");
    let jobs = (0..3).map(|_| job("sys.noop").queue("slow")).collect();
    enqueue_ids(&*b, jobs).await;
    let counted = Partitioned::new(b.clone());
    let mut registry = Registry::new();
    crate::diagnostics::register(&mut registry).expect("the diagnostic kinds");
    let mut cfg = config();
    cfg.queues = vec![QueueSpec {
        rate: Some(rate),
        ..QueueSpec::new("slow")
    }];
    let pool = start(counted.clone(), Arc::new(registry), cfg, &clock);
    let done = |state| {
        let b = b.clone();
        async move {
            b.list(&JobFilter {
                queue: Some("slow".into()),
                state: Some(state),
                ..JobFilter::default()
            })
            .await
            .expect("list")
            .jobs
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while done(JobState::Succeeded).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no job started");
        tokio::time::sleep(ms(20)).await;
    }
    let before = counted.rated_fetches();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = counted.rated_fetches() - before;
    pool.stop().await;
    assert_eq!(
        done(JobState::Succeeded).await.len(),
        1,
        "one start a minute"
    );
    let waiting = done(JobState::Queued).await;
    assert_eq!(waiting.len(), 2, "the others wait queued");
    assert!(waiting.iter().all(|j| j.attempt == 0), "{waiting:?}");
    assert!(
        during <= 2,
        "{during} rated fetches in a second while the queue was held: the pool polls"
    );
}
