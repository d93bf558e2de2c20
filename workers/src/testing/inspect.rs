//! What an operator reads: job lists with filters and cursors, per-queue counts, and the
//! event log resumed after an id. These cases change nothing but what they set up.

use std::sync::Arc;

use super::{
    LEASE, ManualClock, enqueue, fetch_expect, finish, job, make_dead, make_succeeded, types,
};
use crate::broker::{Broker, JobFilter, Outcome};
use crate::clock::Clock;
use crate::event::EventType;
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
