//! Cases where the brokers used to answer the same input differently, or both wrongly (issue
//! 8): purge keeping a chain whole while any of its steps remain, unique keys per queue, a multi-call batch
//! refused whole, the first start kept, garbage cursors and filter names refused, and a job
//! handed back at shutdown recorded as released, not interrupted.

use std::sync::Arc;

use serde_json::json;

use super::support::{bury, enqueue_chain, filter, pass_on, release};
use super::{ManualClock, enqueue, fetch_expect, fetch_one, finish, get, job, last_event, ok};
use crate::broker::{Broker, JobFilter, Outcome};
use crate::clock::Clock;
use crate::error::BrokerError;
use crate::event::EventType;
use crate::job::{JobId, JobState, NewJob, link_chain};

/// Milliseconds past a [`LEASE`] taken now: its deadline has gone by.
const PAST_LEASE: i64 = 31_000;

/// Asserts `r` is `Invalid` naming `field`.
fn assert_invalid<T: std::fmt::Debug>(r: Result<T, BrokerError>, field: &str, what: &str) {
    match r {
        Err(BrokerError::Invalid(e)) => assert_eq!(e.field, field, "{what}: {e:?}"),
        other => panic!("{what}: expected Invalid({field}), got {other:?}"),
    }
}

/// Every job of every queue, newest first.
async fn all_jobs(b: &Arc<dyn Broker>) -> Vec<JobId> {
    b.list(&JobFilter {
        limit: 1000,
        ..JobFilter::default()
    })
    .await
    .expect("list")
    .jobs
    .into_iter()
    .map(|j| j.id)
    .collect()
}

/// Purges every job in `state` that finished before now (no batch limit to speak of); answers
/// how many went.
async fn purge_now(b: &Arc<dyn Broker>, clock: &ManualClock, state: JobState) -> u64 {
    b.purge(&[state], clock.now(), 1_000_000)
        .await
        .expect("purge")
}

/// Purge never deletes a chain step while a later step of its chain exists: a dead later step
/// retried after retention ran still finds its predecessor's result (and a step cancelled
/// before it ever got one is queued with it), instead of waiting forever for a step that is
/// gone. A chain whose steps are all due for purging goes as a whole, in one call.
pub async fn purge_keeps_a_chain_step_while_a_later_step_exists(
    b: Arc<dyn Broker>,
    clock: Arc<ManualClock>,
) {
    let ids = enqueue_chain(&b, "chain", 3).await;
    let first = fetch_expect(&b, "chain", &ids[0]).await;
    let second = pass_on(&b, "chain", &first, json!({"n": 1}), &ids[1]).await;
    bury(&b, &second, "boom").await;
    clock.advance(1_000);
    let purged = purge_now(&b, &clock, JobState::Succeeded).await;
    assert_eq!(purged, 0, "the first step is kept while later steps exist");
    assert_eq!(get(&b, &ids[0]).await.state, JobState::Succeeded);
    let purged = purge_now(&b, &clock, JobState::Dead).await;
    assert_eq!(
        purged, 0,
        "the dead step is kept while the cancelled one exists"
    );

    let retried = b.retry(&ids[1]).await.expect("retry the dead step");
    assert_eq!(retried.state, JobState::Queued, "its predecessor succeeded");
    let second = fetch_expect(&b, "chain", &ids[1]).await;
    assert_eq!(second.payload["input"], json!({"n": 1}));
    let third = pass_on(&b, "chain", &second, json!({"ok": true}), &ids[2]).await;
    finish(&b, third.lease(), ok()).await.expect("finish third");
    clock.advance(1_000);
    let purged = purge_now(&b, &clock, JobState::Succeeded).await;
    assert_eq!(purged, 3, "a chain due for purging goes whole");
    for id in &ids {
        assert_eq!(b.get(id).await.expect("get"), None);
    }

    // A step cancelled while waiting, whose predecessor then succeeded.
    let steps = link_chain(vec![job("test.x").queue("c2"), job("test.y").queue("c2")]);
    let (x, y) = (steps[0].id.clone(), steps[1].id.clone());
    b.enqueue(steps).await.expect("enqueue chain");
    b.cancel(&y).await.expect("cancel the waiting step");
    let jx = fetch_expect(&b, "c2", &x).await;
    finish(&b, jx.lease(), Outcome::Succeeded { result: json!("x") })
        .await
        .expect("finish x");
    clock.advance(1_000);
    let purged = purge_now(&b, &clock, JobState::Succeeded).await;
    assert_eq!(purged, 0);
    assert_eq!(b.retry(&y).await.expect("retry y").state, JobState::Queued);
    let jy = fetch_expect(&b, "c2", &y).await;
    assert_eq!(jy.payload["input"], json!("x"));
}

/// A unique key is unique within a queue: the same key on another queue is another job, in
/// separate calls and inside one batch; the same key on the same queue answers the first job.
pub async fn unique_key_is_per_queue(b: Arc<dyn Broker>, _clock: Arc<ManualClock>) {
    let a = enqueue(&b, job("test.u").queue("a").unique_key("k")).await;
    let other = b
        .enqueue(vec![job("test.u").queue("b").unique_key("k")])
        .await
        .expect("enqueue on b");
    assert!(other[0].created, "another queue, another job: {other:?}");
    assert_ne!(other[0].job.id, a);
    assert_eq!(other[0].job.queue, "b");
    let again = b
        .enqueue(vec![job("test.u").queue("a").unique_key("k")])
        .await
        .expect("enqueue again on a");
    assert!(!again[0].created);
    assert_eq!(again[0].job.id, a, "the same queue answers the first job");

    let batch = b
        .enqueue(vec![
            job("test.u").queue("a").unique_key("k2"),
            job("test.u").queue("b").unique_key("k2"),
            job("test.u").queue("a").unique_key("k2"),
        ])
        .await
        .expect("enqueue batch");
    assert!(batch[0].created && batch[1].created && !batch[2].created);
    assert_eq!(batch[2].job.id, batch[0].job.id);
    assert_eq!(all_jobs(&b).await.len(), 4);
}

/// A batch over several queues (one script call each on Redis) with an invalid job in the
/// second queue stores nothing.
pub async fn multi_queue_batch_with_invalid_job_stores_nothing(
    b: Arc<dyn Broker>,
    _clock: Arc<ManualClock>,
) {
    let r = b
        .enqueue(vec![
            job("test.a").queue("a"),
            job("test.b").queue("b"),
            job("test.b").queue("b").priority(12),
        ])
        .await;
    assert_invalid(r, "jobs[2].priority", "a bad job in the second queue");
    assert!(all_jobs(&b).await.is_empty(), "nothing was stored");
    assert!(b.queues().await.expect("queues").is_empty());
    assert!(fetch_one(&b, "a").await.is_none());
}

/// A batch of more than 500 jobs (several script calls per queue on Redis) over two queues
/// whose last job is invalid stores nothing.
pub async fn large_batch_over_two_queues_with_invalid_last_job_stores_nothing(
    b: Arc<dyn Broker>,
    _clock: Arc<ManualClock>,
) {
    let mut jobs: Vec<NewJob> = (0..1200)
        .map(|i| job("test.n").queue(if i % 2 == 0 { "a" } else { "b" }))
        .collect();
    if let Some(last) = jobs.last_mut() {
        last.payload = json!([1]);
    }
    let r = b.enqueue(jobs).await;
    assert_invalid(r, "jobs[1199].payload", "the last of 1,200 jobs");
    assert!(all_jobs(&b).await.is_empty(), "nothing was stored");
    assert!(b.queues().await.expect("queues").is_empty());
}

/// `started_at` is the first start: a later attempt (after a retry, a snooze, a shutdown
/// release or an expired lease) and a retry by an operator keep it.
pub async fn started_at_is_the_first_start(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let id = enqueue(&b, job("test.s").max_retries(5)).await;
    let first = clock.now();
    let j = fetch_expect(&b, "default", &id).await;
    assert_eq!(j.started_at, Some(first), "as fetched");
    assert_eq!(get(&b, &id).await.started_at, Some(first), "as stored");
    clock.advance(1_000);
    let outcomes = [
        Outcome::Retry {
            at: clock.now(),
            error: "again".into(),
        },
        Outcome::Snooze {
            at: clock.now(),
            reason: None,
        },
        Outcome::Released {
            reason: "shutting down".into(),
        },
    ];
    let mut lease = j.lease();
    for outcome in outcomes {
        finish(&b, lease, outcome).await.expect("finish");
        clock.advance(1_000);
        let j = fetch_expect(&b, "default", &id).await;
        assert_eq!(j.started_at, Some(first), "a later attempt, as fetched");
        assert_eq!(get(&b, &id).await.started_at, Some(first));
        lease = j.lease();
    }
    clock.advance(PAST_LEASE);
    b.rescue(10).await.expect("rescue");
    let j = fetch_expect(&b, "default", &id).await;
    assert_eq!(j.started_at, Some(first), "after an expired lease");
    bury(&b, &j, "boom").await;
    b.retry(&id).await.expect("retry");
    clock.advance(1_000);
    let j = fetch_expect(&b, "default", &id).await;
    assert_eq!(j.started_at, Some(first), "after an operator's retry");
}

/// A `list` cursor or an `events` position the broker never issued is refused (400), naming
/// `cursor` or `since`; a filter naming a queue that can never exist names `queue`, a kind that
/// can never exist names `kind`; a valid name with no jobs is an empty page. A limit of 0 is the
/// default page, not an empty one.
pub async fn garbage_cursors_and_filter_names_are_refused(
    b: Arc<dyn Broker>,
    _clock: Arc<ManualClock>,
) {
    for i in 0..3 {
        enqueue(&b, job("test.g").queue(if i == 0 { "a" } else { "b" })).await;
    }
    // `1-0@` and `1-0@a b` have a Redis stream id, but no queue a broker could name.
    for garbage in [
        "garbage", "", "{", "-1", "1.5", " 7", "0x10", "9@", "1-0@", "1-0@a b",
    ] {
        let r = b
            .list(&JobFilter {
                limit: 10,
                cursor: Some(garbage.into()),
                ..JobFilter::default()
            })
            .await;
        assert_invalid(r, "cursor", &format!("list cursor {garbage:?}"));
        for limit in [10, 0] {
            let r = b.events(Some(garbage), limit).await;
            assert_invalid(
                r,
                "since",
                &format!("events after {garbage:?}, limit {limit}"),
            );
        }
    }
    // `06` and `+6` are the event `6` to a number parser, not to an id compared as text (the
    // shell's cursors): so spelt, a cursor was taken as past the end of the log, a gap and the
    // whole log again.
    for odd in ["06", "+6", "00"] {
        assert_invalid(
            b.events(Some(odd), 10).await,
            "since",
            &format!("events after {odd:?}"),
        );
        // Likewise a listing's cursor: `045` paged from the job 45 on SQLite.
        let r = b
            .list(&JobFilter {
                limit: 10,
                cursor: Some(odd.into()),
                ..JobFilter::default()
            })
            .await;
        assert_invalid(r, "cursor", &format!("list cursor {odd:?}"));
    }
    let long_kind = "k".repeat(129);
    let refused: [(&str, JobFilter); 5] = [
        ("queue", filter(Some("{"), None, 0)),
        ("queue", filter(Some(""), None, 0)),
        ("queue", filter(Some("a b"), Some("test.g"), 0)),
        ("kind", filter(None, Some(""), 0)),
        ("kind", filter(Some("a"), Some(&long_kind), 0)),
    ];
    for (field, filter) in refused {
        let what = format!("{filter:?}");
        assert_invalid(b.list(&filter).await, field, &what);
    }
    let none = b
        .list(&filter(Some("nowhere"), Some("{"), 10))
        .await
        .expect("a valid name with no jobs");
    assert!(none.jobs.is_empty() && none.next_cursor.is_none());
    let default_page = b.list(&JobFilter::default()).await.expect("limit 0");
    assert_eq!(
        default_page.jobs.len(),
        3,
        "a limit of 0 is the default page"
    );
}

/// A job handed back at shutdown gets `job.released` (not `job.interrupted`): it was not
/// interrupted, and its `interruptions` and streak stay as they were.
pub async fn released_job_is_recorded_as_released(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let id = enqueue(&b, job("test.r")).await;
    // One real interruption first, so the streak is 1.
    fetch_expect(&b, "default", &id).await;
    clock.advance(PAST_LEASE);
    b.rescue(10).await.expect("rescue");
    let j = fetch_expect(&b, "default", &id).await;
    release(&b, &j).await;
    let e = last_event(&b, &id).await;
    assert_eq!(e.kind_of_event, EventType::Released);
    assert_eq!(e.message.as_deref(), Some("shutting down"));
    assert_eq!(e.attempt, 1, "the attempt that was handed back");
    let r = get(&b, &id).await;
    assert_eq!(
        (r.state, r.attempt, r.interruptions),
        (JobState::Queued, 0, 1)
    );
    let interrupted = b
        .history(&id)
        .await
        .expect("history")
        .iter()
        .filter(|e| e.kind_of_event == EventType::Interrupted)
        .count();
    assert_eq!(interrupted, 1, "one event per interruption counted");
    // The streak survived the release: two more expired leases make three in a row.
    for _ in 0..2 {
        fetch_expect(&b, "default", &id).await;
        clock.advance(PAST_LEASE);
        b.rescue(3).await.expect("rescue");
    }
    assert_eq!(get(&b, &id).await.state, JobState::Dead, "three in a row");
}
