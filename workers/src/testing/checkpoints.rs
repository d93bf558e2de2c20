//! Checkpoints: what an attempt saves with `JobContext::save_checkpoint` is stored on the job
//! under its lease (fenced like progress), kept across retries, handed to the next attempt
//! and shown with the job; through a real pool, a handler that fails after saving one reads
//! it back on its retry.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::pool::{config, job_until, start};
use super::support::retry_at;
use super::{ManualClock, assert_lease_lost, enqueue, fetch_expect, finish, get, job, ok};
use crate::broker::Broker;
use crate::clock::Clock;
use crate::handler::{Handler, JobContext, JobError, JobResult, Registry};
use crate::job::JobState;

/// A checkpoint is stored under the lease, survives a retry, reaches the next attempt, is
/// refused with a stale token, and shows in the job's JSON.
pub async fn checkpoint_saved_fenced_and_kept_across_retries(
    b: Arc<dyn Broker>,
    clock: Arc<ManualClock>,
) {
    let id = enqueue(&b, job("test.cp")).await;
    let first = fetch_expect(&b, "default", &id).await;
    assert_eq!(first.checkpoint, None);
    let saved = json!({"email": {"state": "delivered"}, "n": [1, 2.5, "x"]});
    b.checkpoint(&first.lease(), &saved)
        .await
        .expect("checkpoint");
    assert_eq!(get(&b, &id).await.checkpoint.as_ref(), Some(&saved));
    let shown = serde_json::to_value(get(&b, &id).await).expect("json");
    assert_eq!(shown["checkpoint"], saved);

    retry_at(&b, &first, clock.now()).await;
    let second = fetch_expect(&b, "default", &id).await;
    assert_eq!(second.attempt, 2);
    assert_eq!(second.checkpoint.as_ref(), Some(&saved));
    assert_lease_lost(
        b.checkpoint(&first.lease(), &json!({"stale": true})).await,
        "checkpoint with a stale token",
    );
    let next = json!({"email": "delivered", "webhook": "delivered"});
    b.checkpoint(&second.lease(), &next)
        .await
        .expect("second checkpoint");
    finish(&b, second.lease(), ok()).await.expect("finish");
    assert_lease_lost(
        b.checkpoint(&second.lease(), &json!(1)).await,
        "checkpoint after finishing",
    );
    let done = get(&b, &id).await;
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.checkpoint, Some(next));
}

/// Saves `{"step": attempt}` and fails on its first attempt; succeeds on the next with the
/// checkpoint it was handed.
struct Resumes;

#[async_trait]
impl Handler for Resumes {
    async fn run(&self, cx: JobContext) -> JobResult {
        let seen = cx.checkpoint();
        cx.save_checkpoint(json!({"step": cx.attempt()})).await?;
        if cx.attempt() == 1 {
            return Err(JobError::retryable("first attempt fails after saving"));
        }
        Ok(json!({ "seen": seen.unwrap_or(Value::Null) }))
    }
}

/// Through a pool: the retry of a job reads the checkpoint its first attempt saved.
pub async fn pool_hands_a_saved_checkpoint_to_the_retry(
    b: Arc<dyn Broker>,
    clock: Arc<ManualClock>,
) {
    let mut r = Registry::new();
    r.register("test.resumes", Resumes).expect("one kind");
    let pool = start(b.clone(), Arc::new(r), config(), &clock);
    let id = enqueue(&b, job("test.resumes")).await;
    let j = job_until(&b, &id, "the resuming job to succeed", |j| {
        j.state == JobState::Succeeded
    })
    .await;
    pool.stop().await;
    assert_eq!(j.attempt, 2);
    assert_eq!(j.result, Some(json!({"seen": {"step": 1}})));
    assert_eq!(j.checkpoint, Some(json!({"step": 2})));
}
