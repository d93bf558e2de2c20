//! What an operator does to jobs: cancel, retry (one or every dead one), purge, drop a
//! queue, ping.

use std::sync::Arc;

use super::{
    LEASE, ManualClock, assert_conflict, assert_lease_lost, assert_none_fetched, assert_not_found,
    enqueue, enqueue_ids, fetch_expect, fetch_one, finish, get, history_types, job, last_event,
    make_dead, make_succeeded, ms, ok, succeed_all,
};
use crate::broker::{Broker, LeaseStatus};
use crate::clock::Clock;
use crate::event::EventType;
use crate::job::{JobId, JobState};

/// Cancel works from every non-final state and is a conflict from a final one.
pub async fn cancel_non_final_and_conflict_on_final(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let queued = enqueue(&b, job("test.cancel")).await;
    let scheduled = enqueue(&b, job("test.cancel").run_at(clock.now() + ms(60_000))).await;
    let running = enqueue(&b, job("test.cancel").priority(0)).await;
    let r = fetch_expect(&b, "default", &running).await;

    for id in [&queued, &scheduled, &running] {
        let j = b.cancel(id).await.expect("cancel");
        assert_eq!(&j.id, id);
        assert_eq!(j.state, JobState::Cancelled);
        assert_eq!(j.finished_at, Some(clock.now()));
        assert_eq!(get(&b, id).await.state, JobState::Cancelled);
        assert_eq!(last_event(&b, id).await.kind_of_event, EventType::Cancelled);
    }
    assert_none_fetched(&b, "default", "cancelled jobs are not fetched").await;
    clock.advance(60_000);
    assert_none_fetched(&b, "default", "nor when their time comes").await;

    assert_eq!(
        b.heartbeat(&[r.lease()], LEASE).await.expect("heartbeat"),
        vec![LeaseStatus::Cancelled]
    );
    assert_lease_lost(finish(&b, r.lease(), ok()).await, "finish after cancel");
    assert_eq!(get(&b, &running).await.state, JobState::Cancelled);

    assert_conflict(b.cancel(&queued).await, JobState::Cancelled);
    let done = make_succeeded(&b, "default").await;
    assert_conflict(b.cancel(&done).await, JobState::Succeeded);
    let dead = make_dead(&b, "default").await;
    assert_conflict(b.cancel(&dead).await, JobState::Dead);
    assert_not_found(b.cancel(&JobId::generate()).await);
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
    assert_eq!(j.run_at, clock.now());
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

    assert_conflict(b.retry(&cancelled).await, JobState::Queued);
    assert_conflict(b.retry(&dead).await, JobState::Running);
    let done = make_succeeded(&b, "other").await;
    assert_conflict(b.retry(&done).await, JobState::Succeeded);
    assert_not_found(b.retry(&JobId::generate()).await);
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

/// Purge deletes finished jobs of the given states finished before the cut, with their events,
/// and trims the log to the newest entries.
pub async fn purge_finished_and_trim_events(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let old_ok = make_succeeded(&b, "default").await;
    let old_dead = make_dead(&b, "default").await;
    let old_cancelled = enqueue(&b, job("test.c")).await;
    b.cancel(&old_cancelled).await.expect("cancel");
    let cut = clock.now() + ms(1);
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
            clock.now() + ms(1),
            1_000_000,
        )
        .await
        .expect("purge unfinished");
    assert_eq!(n, 0, "only finished jobs are purged");
    assert_eq!(get(&b, &queued).await.state, JobState::Queued);

    let before = b.events(None, 1000).await.expect("events");
    assert!(before.len() > 2);
    b.purge(&[], crate::time::Timestamp::EPOCH, 2)
        .await
        .expect("trim");
    let after = b.events(None, 1000).await.expect("events");
    assert_eq!(
        after,
        before[before.len() - 2..].to_vec(),
        "the newest two are kept"
    );
}

/// A reader whose cursor precedes events that purge removed is told (the log reads on after
/// its cursor without them): here a dead job's events stay (a longer retention) while a
/// succeeded job's, after the cursor, go. SQLite deletes a purged job's events wherever they
/// are in the log; Redis leaves them in the streams (they are read on).
pub async fn events_purged_after_a_cursor_are_a_gap(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    make_dead(&b, "default").await;
    let cursor = b
        .events(None, 1000)
        .await
        .expect("events")
        .pop()
        .expect("events")
        .id;
    let ok = make_succeeded(&b, "default").await;
    let cut = clock.now() + ms(1);
    clock.advance(10_000);
    let later = enqueue(&b, job("test.later")).await;
    b.purge(&[JobState::Succeeded], cut, 1_000_000)
        .await
        .expect("purge");
    let after = b.events(Some(&cursor), 1000).await.expect("events after");
    let told = b.trimmed_after(&cursor).await.expect("trimmed after");
    let read_on = after.iter().any(|e| e.job_id == ok);
    assert!(
        read_on || told == Some(true),
        "the succeeded job's events are gone after the cursor, untold: {after:?}, {told:?}"
    );
    assert!(after.iter().any(|e| e.job_id == later));
    // A cursor after what was removed is no gap.
    let newest = after.last().expect("events").id.clone();
    assert_ne!(b.trimmed_after(&newest).await.expect("trimmed"), Some(true));
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

/// The broker answers.
pub async fn ping_answers(b: Arc<dyn Broker>, _clock: Arc<ManualClock>) {
    b.ping().await.expect("ping");
    assert!(!b.name().is_empty());
}

/// Purge counts what it deleted, only in the states asked for, and a purged job's unique key
/// is free again; `drop_queue` counts what it removed, and a broker with no jobs lists no
/// queues.
pub async fn purge_frees_unique_keys_and_drop_queue_counts(
    b: Arc<dyn Broker>,
    clock: Arc<ManualClock>,
) {
    let t0 = clock.now();
    let ids = enqueue_ids(
        &*b,
        (0..450)
            .map(|i| job("k").unique_key(format!("u{i}")))
            .collect(),
    )
    .await;
    let got = b.fetch("default", 450, LEASE).await.expect("fetch");
    assert_eq!(got.len(), 450);
    b.finish(succeed_all(&got)).await.expect("finish");
    enqueue(&b, job("k").queue("other")).await;
    clock.advance(10);
    let cut = t0 + ms(10);
    assert_eq!(
        b.purge(&[JobState::Dead], cut, 1_000_000)
            .await
            .expect("purge"),
        0
    );
    assert_eq!(
        b.purge(&[JobState::Succeeded], cut, 1_000_000)
            .await
            .expect("purge"),
        450
    );
    assert_eq!(b.get(&ids[0]).await.expect("get"), None);
    // The unique key is free again once its job is gone.
    enqueue(&b, job("k").unique_key("u0")).await;

    assert_eq!(b.drop_queue("default").await.expect("drop"), 1);
    assert_eq!(b.drop_queue("other").await.expect("drop"), 1);
    assert!(b.queues().await.expect("queues").is_empty());
}

/// `retry_all_dead` retries the jobs that were dead when it began, each once. A job it
/// retried may run and die again while it still works through a large dead set (on the
/// broker's clock, later than the request began): that death is new, and retrying it again in
/// the same request would run it twice for one click. Played here with the clock: a job
/// dead at T+10 while the request runs at T+5.
pub async fn retry_all_dead_retries_only_jobs_dead_when_it_began(
    b: Arc<dyn Broker>,
    clock: Arc<ManualClock>,
) {
    let start = clock.now();
    let before = make_dead(&b, "d").await;
    clock.set(start + ms(10));
    let later = make_dead(&b, "d").await;
    clock.set(start + ms(5));
    assert_eq!(b.retry_all_dead(Some("d")).await.expect("retry"), 1);
    assert_eq!(get(&b, &before).await.state, JobState::Queued);
    assert_eq!(
        get(&b, &later).await.state,
        JobState::Dead,
        "dead after the request began"
    );
    assert_eq!(b.retry_all_dead(None).await.expect("retry all"), 0);
    clock.set(start + ms(10));
    assert_eq!(b.retry_all_dead(None).await.expect("retry all, later"), 1);
    assert_eq!(get(&b, &later).await.state, JobState::Queued);
}
