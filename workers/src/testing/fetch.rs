//! Which jobs `fetch` hands out and in what order: strict priority, first in first out
//! inside a level, nothing before its `run_at`, never one job twice; and `wait_for_work`,
//! which tells a pool when fetching is worth it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::{
    LEASE, ManualClock, assert_none_fetched, drain, enqueue, enqueue_ids, fetch_expect, fetch_one,
    get, job, last_event, ms,
};
use crate::broker::Broker;
use crate::clock::Clock;
use crate::event::EventType;
use crate::job::{JobId, JobState, NewJob};

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
    let at = clock.now() + ms(10_000);
    let delayed = enqueue(&b, job("test.later").priority(0).run_at(at)).await;
    let j = get(&b, &delayed).await;
    assert_eq!(j.state, JobState::Scheduled);
    assert_eq!(j.run_at, at);
    assert_none_fetched(&b, "default", "not due yet").await;

    let now_job = enqueue(&b, job("test.now").priority(5)).await;
    let other = enqueue(&b, job("test.now").priority(5)).await;
    fetch_expect(&b, "default", &now_job).await;

    clock.advance(9_999);
    let still = fetch_one(&b, "default").await.expect("the queued job");
    assert_eq!(still.id, other, "the delayed job is still not due");

    // A past run_at is simply "now".
    let past = enqueue(&b, job("test.past").run_at(clock.now() - ms(50_000))).await;
    assert_eq!(get(&b, &past).await.state, JobState::Queued);

    clock.advance(1);
    let j = fetch_expect(&b, "default", &delayed).await;
    assert_eq!(j.state, JobState::Running);
    assert_eq!(j.attempt, 1);
    fetch_expect(&b, "default", &past).await;
}

/// Fetch leases at most `max` jobs, never the same one twice, and records the lease.
pub async fn fetch_respects_max_and_never_repeats(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let mut ids = HashSet::new();
    for _ in 0..10 {
        ids.insert(enqueue(&b, job("test.f")).await);
    }
    enqueue(&b, job("test.f").queue("other")).await;
    let now = clock.now();

    let mut seen = HashSet::new();
    for (max, expect) in [(3, 3), (3, 3), (10, 4), (10, 0)] {
        let jobs = b.fetch("default", max, LEASE).await.expect("fetch");
        assert_eq!(jobs.len(), expect, "fetch(max = {max})");
        for j in jobs {
            assert!(ids.contains(&j.id), "a job of this queue");
            assert!(seen.insert(j.id.clone()), "job {} fetched twice", j.id);
            assert_eq!(j.state, JobState::Running);
            assert_eq!(j.attempt, 1);
            assert_eq!(j.lease_until, Some(now + LEASE));
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

/// One fetch of several takes them by priority, then due time, then first in first out; a
/// `run_at` in the past is simply now and does not jump the line.
pub async fn batch_fetch_takes_priority_then_due_time_then_fifo(
    b: Arc<dyn Broker>,
    clock: Arc<ManualClock>,
) {
    let t0 = clock.now();
    let mut jobs = Vec::new();
    for (i, p) in [5u8, 9, 0, 5, 0, 9, 5, 1].into_iter().enumerate() {
        jobs.push(job("k").priority(p).unique_key(format!("u{i}")));
    }
    jobs.push(job("k").priority(5).run_at(t0 - ms(10)));
    let ids = enqueue_ids(&*b, jobs).await;
    let first = b.fetch("default", 4, LEASE).await.expect("fetch");
    let rest = b.fetch("default", 100, LEASE).await.expect("fetch");
    let order: Vec<&JobId> = first.iter().chain(&rest).map(|j| &j.id).collect();
    let want: Vec<&JobId> = [2, 4, 7, 0, 3, 6, 8, 1, 5]
        .iter()
        .map(|&i| &ids[i])
        .collect();
    assert_eq!(order, want);
    assert_eq!(first.len(), 4);
    for j in first.iter().chain(&rest) {
        assert_eq!(j.state, JobState::Running);
        assert_eq!(j.attempt, 1);
        assert_eq!(j.lease_token, 1);
        assert_eq!(j.lease_until, Some(t0 + LEASE));
        assert_eq!(j.started_at, Some(t0));
    }
    assert!(
        b.fetch("default", 10, LEASE)
            .await
            .expect("fetch")
            .is_empty()
    );
    assert_eq!(get(&b, &ids[0]).await.state, JobState::Running);
}

/// A backlog of 2 500 jobs falling due at once is fetched in full and counted (Redis promotes
/// due jobs in bounded steps: none may be left behind).
pub async fn large_due_backlog_is_fetched_in_full(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let at = clock.now() + ms(1000);
    let jobs: Vec<NewJob> = (0..2500).map(|_| job("k").run_at(at)).collect();
    let res = b.enqueue(jobs).await.expect("enqueue");
    assert!(res.iter().all(|e| e.created));
    assert!(
        b.fetch("default", 10, LEASE)
            .await
            .expect("fetch")
            .is_empty()
    );
    clock.advance(1000);
    assert_eq!(drain(&*b, "default", 64).await.len(), 2500);
    let stats = b.queues().await.expect("queues");
    assert_eq!(stats[0].counts.succeeded, 2500);
    assert_eq!(stats[0].counts.scheduled, 0);
    assert_eq!(stats[0].processed_last_minute, 2500);
}
