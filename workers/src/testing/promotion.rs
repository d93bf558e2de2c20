//! How `fetch` promotes due `scheduled` and `retrying` jobs when very many fall due at once: in
//! bounded steps, earliest due first, so that one fetch does a bounded amount of work however
//! large the backlog, and no due job is left behind or fetched out of its due-time order.
//!
//! It does not cover the ordinary cases of due work (one delayed job, a backlog smaller than
//! the bound): those are in `fetch`.

use std::sync::Arc;

use super::{LEASE, ManualClock, job, ms, succeed_all};
use crate::broker::{Broker, StateCounts};
use crate::clock::Clock;
use crate::job::{JobId, NewJob};

/// Most due jobs one fetch may promote: the bound both brokers share (the SQLite broker's
/// `lifecycle::MAX_PROMOTE`, the Redis broker's `lifecycle::PROMOTE_LIMIT`).
pub const PROMOTE_BOUND: u64 = 1000;

async fn counts(b: &Arc<dyn Broker>, queue: &str) -> StateCounts {
    b.queues()
        .await
        .expect("queues")
        .into_iter()
        .find(|s| s.queue == queue)
        .map(|s| s.counts)
        .unwrap_or_default()
}

/// 5 000 scheduled jobs, enqueued latest-due first, all fall due at once: each fetch promotes
/// at most [`PROMOTE_BOUND`] of them, and every one is fetched, in due-time order.
pub async fn huge_due_backlog_is_promoted_in_bounded_steps_in_order(
    b: Arc<dyn Broker>,
    clock: Arc<ManualClock>,
) {
    const N: u64 = 5_000;
    let queue = "backlog";
    let first_due = clock.now() + ms(1_000);
    // Enqueued in reverse due order, so that enqueue order (the FIFO tie-break) and due order
    // disagree: only due-time order passes.
    let jobs: Vec<NewJob> = (0..N)
        .rev()
        .map(|i| job("test.backlog").queue(queue).run_at(first_due + ms(i)))
        .collect();
    let mut due_order: Vec<JobId> = jobs.iter().map(|j| j.id.clone()).collect();
    due_order.reverse();
    for chunk in jobs.chunks(500) {
        let answers = b.enqueue(chunk.to_vec()).await.expect("enqueue");
        assert!(answers.iter().all(|e| e.created));
    }
    assert_eq!(counts(&b, queue).await.scheduled, N);
    clock.advance(6_000);

    let mut fetched = Vec::new();
    loop {
        let before = counts(&b, queue).await;
        let jobs = b.fetch(queue, 64, LEASE).await.expect("fetch");
        let after = counts(&b, queue).await;
        let promoted = before.scheduled - after.scheduled;
        assert!(
            promoted <= PROMOTE_BOUND,
            "one fetch promoted {promoted} due jobs (bound {PROMOTE_BOUND}); {} fetched so far",
            fetched.len()
        );
        if jobs.is_empty() {
            break;
        }
        for answer in b.finish(succeed_all(&jobs)).await.expect("finish") {
            answer.expect("the lease is held by whoever fetched it");
        }
        fetched.extend(jobs.into_iter().map(|j| j.id));
    }
    assert_eq!(fetched.len(), due_order.len(), "every due job is fetched");
    let first_out_of_order = fetched.iter().zip(&due_order).position(|(a, b)| a != b);
    assert_eq!(
        first_out_of_order, None,
        "due jobs are fetched in due-time order"
    );
    let end = counts(&b, queue).await;
    assert_eq!((end.scheduled, end.queued, end.succeeded), (0, 0, N));
}
