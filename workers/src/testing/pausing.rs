//! Pausing a queue in the broker: a paused queue keeps accepting jobs, but no fetch leases
//! them (on any node sharing the broker) until it is resumed, and `queues` says it is paused.
//! The pool's side of a pause (that it idles instead of spinning) is `pool`'s business, and
//! the `[[queue]] paused` config flag is the shell's.

use std::sync::Arc;

use super::{ManualClock, assert_none_fetched, enqueue, fetch_expect, get, job, ms};
use crate::broker::Broker;
use crate::clock::Clock;
use crate::error::BrokerError;
use crate::job::JobState;

/// Whether `queues` lists `queue` as paused (`None` when it does not list it).
async fn paused(b: &Arc<dyn Broker>, queue: &str) -> Option<bool> {
    b.queues()
        .await
        .expect("queues")
        .into_iter()
        .find(|s| s.queue == queue)
        .map(|s| s.paused)
}

/// A paused queue accepts jobs and leases none of them, due or queued, while other queues
/// run; resumed, it is fetched from again in the usual order. Pause and resume are
/// idempotent, and `queues` (and `is_paused`) report the pause, even for a queue that holds
/// no job yet.
pub async fn paused_queue_accepts_jobs_but_is_not_fetched(
    b: Arc<dyn Broker>,
    clock: Arc<ManualClock>,
) {
    b.pause("held").await.expect("pause an empty queue");
    assert_eq!(
        paused(&b, "held").await,
        Some(true),
        "an empty paused queue is listed"
    );
    b.pause("held").await.expect("pausing twice is fine");

    let first = enqueue(&b, job("test.held").queue("held")).await;
    let later = enqueue(
        &b,
        job("test.held")
            .queue("held")
            .run_at(clock.now() + ms(1_000)),
    )
    .await;
    let other = enqueue(&b, job("test.free").queue("free")).await;
    assert_eq!(
        get(&b, &first).await.state,
        JobState::Queued,
        "a paused queue accepts jobs"
    );
    assert_none_fetched(&b, "held", "a paused queue is not fetched from").await;
    clock.advance(2_000);
    assert_none_fetched(&b, "held", "nor when its scheduled jobs fall due").await;
    fetch_expect(&b, "free", &other).await;
    assert_eq!(paused(&b, "held").await, Some(true));
    assert_eq!(paused(&b, "free").await, Some(false));
    assert!(b.is_paused("held").await.expect("is_paused"));
    assert!(!b.is_paused("free").await.expect("is_paused"));
    assert!(!b.is_paused("never-seen").await.expect("is_paused"));
    let stats = b.queues().await.expect("queues");
    let held = stats
        .iter()
        .find(|s| s.queue == "held")
        .expect("held listed");
    // The due job was promoted by the fetches that leased nothing, and counted so: a count
    // left `scheduled` stayed wrong for good.
    assert_eq!(get(&b, &later).await.state, JobState::Queued);
    assert_eq!(
        (held.counts.queued, held.counts.scheduled),
        (2, 0),
        "its jobs wait, counted in the state they are in"
    );

    b.resume("held").await.expect("resume");
    b.resume("held").await.expect("resuming twice is fine");
    assert_eq!(paused(&b, "held").await, Some(false));
    assert!(!b.is_paused("held").await.expect("is_paused"));
    fetch_expect(&b, "held", &first).await;
    fetch_expect(&b, "held", &later).await;
    b.resume("never-paused")
        .await
        .expect("resuming a queue never paused is fine");
}

/// A queue name no job can have is refused, naming `queue`, by pause, resume and is_paused
/// alike.
pub async fn pause_refuses_an_invalid_queue_name(b: Arc<dyn Broker>, _clock: Arc<ManualClock>) {
    let asked = b.is_paused("a b").await.map(|_| ());
    for r in [b.pause("no spaces").await, b.resume("").await, asked] {
        match r {
            Err(BrokerError::Invalid(e)) => assert_eq!(e.field, "queue", "{e}"),
            other => panic!("expected Invalid naming queue, got {other:?}"),
        }
    }
}
