//! Shorthands the conformance cases share for the steps around what they check: ending a
//! fetched attempt one way or another (succeeded with a result, dead, released, retrying),
//! enqueueing a chain and handing a step's result on to the next, building a list filter, and
//! the history of a job that ran twice. Each one asserts what it relies on, so a case reads as
//! the transitions it checks rather than as the calls that make them.

use std::sync::Arc;

use serde_json::Value;

use super::{fetch_expect, finish, job};
use crate::broker::{Broker, JobFilter, Outcome};
use crate::event::EventType;
use crate::job::{Job, JobId, link_chain};
use crate::time::Timestamp;

/// Enqueues a chain of `n` steps (kinds `test.a`, `test.b`, …) on `queue`, asserting every
/// step is created; returns the step ids in order.
pub(super) async fn enqueue_chain(b: &Arc<dyn Broker>, queue: &str, n: usize) -> Vec<JobId> {
    let steps = link_chain(
        (0..n)
            .map(|i| job(&format!("test.{}", char::from(b'a' + i as u8))).queue(queue))
            .collect(),
    );
    let answers = b.enqueue(steps).await.expect("enqueue chain");
    assert!(answers.iter().all(|a| a.created), "every step is created");
    answers.into_iter().map(|a| a.job.id).collect()
}

/// Ends `j`'s attempt as succeeded with `result`.
pub(super) async fn succeed_with(b: &Arc<dyn Broker>, j: &Job, result: Value) {
    finish(b, j.lease(), Outcome::Succeeded { result })
        .await
        .expect("finish succeeded");
}

/// Ends `j`'s attempt as dead with `error`.
pub(super) async fn bury(b: &Arc<dyn Broker>, j: &Job, error: &str) {
    let error = error.into();
    finish(b, j.lease(), Outcome::Dead { error })
        .await
        .expect("finish dead");
}

/// Hands `j` back unfinished, the way a pool does at shutdown ("shutting down").
pub(super) async fn release(b: &Arc<dyn Broker>, j: &Job) {
    let reason = "shutting down".into();
    finish(b, j.lease(), Outcome::Released { reason })
        .await
        .expect("finish released");
}

/// Ends `j`'s attempt as failed ("flaky"), to be retried at `at`.
pub(super) async fn retry_at(b: &Arc<dyn Broker>, j: &Job, at: Timestamp) {
    let error = "flaky".into();
    finish(b, j.lease(), Outcome::Retry { at, error })
        .await
        .expect("finish retry");
}

/// Puts `j` off until `at` (not an attempt), giving `reason` when there is one.
pub(super) async fn snooze(b: &Arc<dyn Broker>, j: &Job, at: Timestamp, reason: Option<&str>) {
    let reason = reason.map(Into::into);
    finish(b, j.lease(), Outcome::Snooze { at, reason })
        .await
        .expect("finish snooze");
}

/// Finishes the running chain step `running` with `result` and fetches the step `next` from
/// `queue`, asserting it runs with that result as its `input`.
pub(super) async fn pass_on(
    b: &Arc<dyn Broker>,
    queue: &str,
    running: &Job,
    result: Value,
    next: &JobId,
) -> Job {
    succeed_with(b, running, result.clone()).await;
    let step = fetch_expect(b, queue, next).await;
    assert_eq!(step.payload["input"], result, "the step's input");
    step
}

/// The history of a job that ran twice: its first run ended in `between`, its second in
/// `last`.
pub(super) fn ran_twice(between: EventType, last: EventType) -> [EventType; 5] {
    use EventType::{Enqueued, Started};
    [Enqueued, Started, between, Started, last]
}

/// A list filter on `queue` and `kind` (each when given), `limit` jobs a page.
pub(super) fn filter(queue: Option<&str>, kind: Option<&str>, limit: usize) -> JobFilter {
    JobFilter {
        queue: queue.map(Into::into),
        kind: kind.map(Into::into),
        limit,
        ..JobFilter::default()
    }
}
