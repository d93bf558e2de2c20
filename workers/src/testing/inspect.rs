//! What an operator reads: job lists with filters and cursors, per-queue counts, and the
//! event log, merged across queues and resumed after any id it handed out.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::support::filter;
use super::{
    LEASE, ManualClock, RAN_AND_SUCCEEDED, enqueue, enqueue_ids, events_paged, fetch_expect,
    finish, job, list_paged, make_dead, make_succeeded, ms, types,
};
use crate::broker::{Broker, Finish, JobFilter, Outcome};
use crate::clock::Clock;
use crate::error::BrokerError;
use crate::event::{Event, EventType};
use crate::job::{JobId, JobState};

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
    let paged = list_paged(&b, 3).await;
    assert_eq!(paged, newest_first(&all), "paging ends, each job once");
}

/// One batch across two queues lists newest first (the batch's order reversed), pages
/// through, and filters by queue and kind together and by state.
pub async fn list_pages_a_batch_across_queues_with_filters(
    b: Arc<dyn Broker>,
    _clock: Arc<ManualClock>,
) {
    let mut all = Vec::new();
    for i in 0..7 {
        let q = if i % 2 == 0 { "even" } else { "odd" };
        let kind = if i < 4 { "early" } else { "late" };
        all.push(job(kind).queue(q));
    }
    let ids = enqueue_ids(&*b, all).await;
    let mut newest_first = ids.clone();
    newest_first.reverse();
    let paged = list_paged(&b, 3).await;
    assert_eq!(paged, newest_first);

    let page = b
        .list(&filter(Some("odd"), Some("late"), 10))
        .await
        .expect("list");
    assert_eq!(
        page.jobs.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
        vec![ids[5].clone()]
    );
    assert_eq!(page.next_cursor, None);

    b.cancel(&ids[2]).await.expect("cancel");
    let page = b
        .list(&JobFilter {
            state: Some(JobState::Cancelled),
            limit: 10,
            ..JobFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(page.jobs.len(), 1);
    assert_eq!(page.jobs[0].id, ids[2]);
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
            at: clock.now() + ms(60_000),
            error: "later".into(),
        },
    )
    .await
    .expect("retry");
    enqueue(
        &b,
        job("test.s").queue("a").run_at(clock.now() + ms(60_000)),
    )
    .await;
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

/// The log's end is the id of its newest event, across queues and within a batch's entry
/// (none for an empty log), and following from it hands out exactly what comes after.
pub async fn events_end_is_the_newest_event_handed_out(
    b: Arc<dyn Broker>,
    _clock: Arc<ManualClock>,
) {
    assert_eq!(b.events_end().await.expect("events_end"), None, "empty");
    // Queues on both sides of each other in the merged order, and batches of several events
    // in one call (one stream entry on Redis).
    enqueue_ids(&*b, vec![job("k").queue("m"), job("k").queue("m")]).await;
    enqueue(&b, job("k").queue("z")).await;
    enqueue_ids(&*b, vec![job("k").queue("a"), job("k").queue("a")]).await;
    let got = b.fetch("m", 2, LEASE).await.expect("fetch");
    assert_eq!(got.len(), 2);
    // A Redis Cluster holds back the events of its current millisecond; both reads below
    // come after it.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let all = b.events(None, 100).await.expect("events");
    assert_eq!(all.len(), 7, "{all:?}");
    let end = b.events_end().await.expect("events_end");
    assert_eq!(end.as_deref(), all.last().map(|e| e.id.as_str()));
    assert!(
        b.events(end.as_deref(), 100)
            .await
            .expect("events after the end")
            .is_empty()
    );

    let later = enqueue(&b, job("k").queue("a")).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let new = b.events(end.as_deref(), 100).await.expect("events after");
    assert_eq!(types(&new), vec![EventType::Enqueued]);
    assert_eq!(new[0].job_id, later);
    assert_eq!(
        b.events_end().await.expect("events_end").as_deref(),
        Some(new[0].id.as_str())
    );
}

/// A follower of the log waits for the next event instead of polling: `wait_for_events`
/// returns at once when events follow the cursor, and when one is appended while it waits
/// (the timeout here is far longer than the test's deadline); a cursor the broker never
/// issued is refused.
pub async fn wait_for_events_wakes_on_an_append(b: Arc<dyn Broker>, _clock: Arc<ManualClock>) {
    const LONG: Duration = Duration::from_secs(60);
    const DEADLINE: Duration = Duration::from_secs(20);
    enqueue(&b, job("test.w").queue("m")).await;
    let first = b.events(None, 10).await.expect("events");
    // Queues on both sides of the cursor's, known before the waits (a queue created during a
    // wait may be noticed only at its timeout).
    enqueue(&b, job("test.w").queue("a")).await;
    enqueue(&b, job("test.w").queue("z")).await;
    tokio::time::timeout(DEADLINE, b.wait_for_events(Some(&first[0].id), LONG))
        .await
        .expect("an event after the cursor: no wait")
        .expect("wait_for_events");

    for queue in ["a", "m", "z"] {
        let all = b.events(None, 100).await.expect("events");
        let cursor = all.last().map(|e| e.id.clone());
        let writer = b.clone();
        let append = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            enqueue(&writer, job("test.w").queue(queue)).await;
        });
        tokio::time::timeout(DEADLINE, b.wait_for_events(cursor.as_deref(), LONG))
            .await
            .unwrap_or_else(|_| panic!("an append to queue {queue} wakes the wait"))
            .expect("wait_for_events");
        append.await.expect("append task");
    }
    let r = b.wait_for_events(Some("garbage"), LONG).await;
    assert!(matches!(r, Err(BrokerError::Invalid(_))), "got {r:?}");
}

/// Events of several queues form one log: it reads whole or one event at a time alike, each
/// job's history holds its own events with their fields, and an id the log never handed out
/// is refused.
pub async fn events_merge_queues_and_page_one_at_a_time(
    b: Arc<dyn Broker>,
    _clock: Arc<ManualClock>,
) {
    let ids = enqueue_ids(&*b, vec![job("k").queue("a"), job("k").queue("b")]).await;
    let got = b.fetch("a", 1, LEASE).await.expect("fetch");
    b.progress(&got[0].lease(), 10, Some("step".into()))
        .await
        .expect("progress");
    finish(
        &b,
        got[0].lease(),
        Outcome::Succeeded {
            result: json!({"x": 1}),
        },
    )
    .await
    .expect("finish");

    let all = b.events(None, 100).await.expect("events");
    assert_eq!(all.len(), 5, "{all:?}");
    let of_first: Vec<Event> = all.iter().filter(|e| e.job_id == ids[0]).cloned().collect();
    assert_eq!(
        types(&of_first),
        vec![
            EventType::Enqueued,
            EventType::Started,
            EventType::Progress,
            EventType::Succeeded
        ]
    );
    assert_eq!(events_paged(&b, 1).await, all);

    let history = b.history(&ids[0]).await.expect("history");
    assert_eq!(history.len(), 4);
    assert_eq!(history[2].progress, Some(10));
    assert_eq!(history[2].message.as_deref(), Some("step"));
    assert_eq!(history[3].result, Some(json!({"x": 1})));
    assert_eq!(history[3].attempt, 1);
    let r = b.events(Some("garbage"), 10).await;
    assert!(matches!(r, Err(BrokerError::Invalid(_))), "got {r:?}");
}

/// The events of one batch call (an enqueue, a fetch, a finish) each have their own id and
/// page one by one, in order, at any page size; a job's history holds only its own.
pub async fn batched_events_page_one_by_one(b: Arc<dyn Broker>, _clock: Arc<ManualClock>) {
    let ids = enqueue_ids(&*b, vec![job("k"), job("k"), job("k"), job("k").queue("z")]).await;
    let got = b.fetch("default", 3, LEASE).await.expect("fetch");
    let batch = got
        .iter()
        .map(|j| Finish {
            lease: j.lease(),
            outcome: Outcome::Succeeded { result: json!({}) },
        })
        .collect();
    b.finish(batch).await.expect("finish");
    let all = b.events(None, 100).await.expect("events");
    assert_eq!(all.len(), 10, "{all:?}");
    let distinct: HashSet<&str> = all.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(distinct.len(), 10, "every event has its own id");
    for limit in [1, 2, 3] {
        assert_eq!(events_paged(&b, limit).await, all, "limit {limit}");
    }
    let history = b.history(&ids[1]).await.expect("history");
    assert_eq!(types(&history), RAN_AND_SUCCEEDED);
    assert!(history.iter().all(|e| e.job_id == ids[1] && e.kind == "k"));
    assert_eq!(history[1].attempt, 1);
    assert_eq!(history[2].result, Some(json!({})));
}

/// A follower reading the log while several processes write to several queues at once, new
/// queues among them, hands out every event once and in the log's order: what it collected,
/// page by page as the writes went on, is the log read whole afterwards. (On one Redis the
/// log is read without waiting for a millisecond to end, which only the event clock's order
/// makes safe: an entry written to one queue's stream after a read of it must never sort
/// before one the read handed out from another's.)
pub async fn a_live_follower_misses_nothing_while_queues_are_written_at_once(
    b: Arc<dyn Broker>,
    _clock: Arc<ManualClock>,
) {
    const WRITERS: usize = 4;
    const ROUNDS: usize = 30;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let b = b.clone();
            tokio::spawn(async move {
                for round in 0..ROUNDS {
                    // Half-way, each writer moves to a queue of its own that is new.
                    let queue = if round < ROUNDS / 2 {
                        format!("w{w}")
                    } else {
                        format!("late{w}")
                    };
                    let jobs = (0..3).map(|_| job("k").queue(&queue)).collect();
                    b.enqueue(jobs).await.expect("enqueue");
                    let got = b.fetch(&queue, 2, LEASE).await.expect("fetch");
                    let batch = got
                        .iter()
                        .map(|j| Finish {
                            lease: j.lease(),
                            outcome: Outcome::Succeeded {
                                result: json!(round),
                            },
                        })
                        .collect();
                    b.finish(batch).await.expect("finish");
                    // Out of step with each other: in lockstep every stream gains an entry
                    // per turn, and their ids keep an order that hides a reader's mistakes.
                    if (round * 7 + w * 3) % 4 == 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            })
        })
        .collect();
    let mut followed: Vec<Event> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut read = |page: Vec<Event>, cursor: &mut Option<String>| {
        if let Some(last) = page.last() {
            *cursor = Some(last.id.clone());
        }
        followed.extend(page);
    };
    while !writers.iter().all(tokio::task::JoinHandle::is_finished) {
        // Pages large enough to catch up: a follower at the log's end is the one an entry
        // written late into another queue's stream would pass by.
        let page = b.events(cursor.as_deref(), 100).await.expect("events");
        read(page, &mut cursor);
        tokio::task::yield_now().await;
    }
    for w in writers {
        w.await.expect("a writer");
    }
    loop {
        let page = b.events(cursor.as_deref(), 7).await.expect("events");
        if page.is_empty() {
            break;
        }
        read(page, &mut cursor);
    }
    let whole = events_paged(&b, 1000).await;
    // Each round: 3 enqueued, 2 started, 2 succeeded.
    assert_eq!(whole.len(), WRITERS * ROUNDS * 7);
    let ids = |events: &[Event]| events.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    let (followed, whole) = (ids(&followed), ids(&whole));
    let first_difference = followed.iter().zip(&whole).position(|(f, w)| f != w);
    assert!(
        followed == whole,
        "followed {} events of {}; first difference at {first_difference:?}: {:?}",
        followed.len(),
        whole.len(),
        first_difference.map(|i| (&followed[i], &whole[i]))
    );
}
