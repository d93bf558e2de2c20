//! Chains: a step runs once its predecessor succeeded, with that result as `input`; a
//! dead or cancelled step cancels the rest, and a retry resumes the chain.

use std::sync::Arc;

use serde_json::json;

use super::support::{bury, enqueue_chain, filter, pass_on, succeed_with};
use super::{
    LEASE, ManualClock, assert_none_fetched, fetch_expect, finish, get, job, last_event, ok,
};
use crate::broker::Broker;
use crate::event::EventType;
use crate::job::{JobId, JobState, NewJob, link_chain};

/// A chain's later steps wait; each runs after its predecessor succeeds, with the
/// predecessor's result as `input`, and `chain()` lists the steps in order.
pub async fn chain_passes_results_in_order(b: Arc<dyn Broker>, _clock: Arc<ManualClock>) {
    let ids = enqueue_chain(&b, "chain", 3).await;
    assert_eq!(get(&b, &ids[0]).await.state, JobState::Queued);
    assert_eq!(get(&b, &ids[1]).await.state, JobState::Waiting);
    assert_eq!(get(&b, &ids[2]).await.state, JobState::Waiting);
    let steps = b.chain(&ids[0]).await.expect("chain");
    assert_eq!(
        steps.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
        ids,
        "chain() lists the steps in order"
    );

    let first = fetch_expect(&b, "chain", &ids[0]).await;
    assert_none_fetched(&b, "chain", "a waiting step is never fetched").await;
    let second = pass_on(&b, "chain", &first, json!({"rows": 3}), &ids[1]).await;
    assert_eq!(get(&b, &ids[2]).await.state, JobState::Waiting);
    let third = pass_on(&b, "chain", &second, json!({"path": "r.pdf"}), &ids[2]).await;
    let link = third.chain.clone().expect("a chain step knows its chain");
    assert_eq!((link.id, link.index, link.next), (ids[0].clone(), 2, None));
    finish(&b, third.lease(), ok()).await.expect("finish third");
    let states: Vec<JobState> = b
        .chain(&ids[0])
        .await
        .expect("chain")
        .iter()
        .map(|j| j.state)
        .collect();
    assert_eq!(states, vec![JobState::Succeeded; 3]);
}

/// A step that dies cancels the waiting steps after it, with a reason; retrying that step puts
/// them back to waiting and the chain resumes.
pub async fn chain_dead_step_cancels_rest_and_retry_resumes(
    b: Arc<dyn Broker>,
    _clock: Arc<ManualClock>,
) {
    let ids = enqueue_chain(&b, "chain", 3).await;
    let first = fetch_expect(&b, "chain", &ids[0]).await;
    finish(&b, first.lease(), ok()).await.expect("finish first");
    let second = fetch_expect(&b, "chain", &ids[1]).await;
    bury(&b, &second, "boom").await;
    let third = get(&b, &ids[2]).await;
    assert_eq!(third.state, JobState::Cancelled);
    assert!(
        third
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("chain")),
        "the cancelled step says why: {:?}",
        third.last_error
    );
    assert_eq!(
        last_event(&b, &ids[2]).await.kind_of_event,
        EventType::Cancelled
    );

    b.retry(&ids[1]).await.expect("retry the dead step");
    assert_eq!(get(&b, &ids[2]).await.state, JobState::Waiting);
    let second = fetch_expect(&b, "chain", &ids[1]).await;
    assert_eq!(
        second.payload["input"],
        json!({"ok": true}),
        "the input survives a retry"
    );
    finish(&b, second.lease(), ok())
        .await
        .expect("finish second");
    let third = fetch_expect(&b, "chain", &ids[2]).await;
    finish(&b, third.lease(), ok()).await.expect("finish third");
    assert_eq!(get(&b, &ids[2]).await.state, JobState::Succeeded);
}

/// Cancelling a step (running or waiting) cancels the steps after it, not the ones before.
pub async fn chain_cancel_cancels_rest(b: Arc<dyn Broker>, _clock: Arc<ManualClock>) {
    let ids = enqueue_chain(&b, "chain", 3).await;
    let first = fetch_expect(&b, "chain", &ids[0]).await;
    finish(&b, first.lease(), ok()).await.expect("finish first");
    b.cancel(&ids[1]).await.expect("cancel the second step");
    assert_eq!(get(&b, &ids[0]).await.state, JobState::Succeeded);
    assert_eq!(get(&b, &ids[1]).await.state, JobState::Cancelled);
    assert_eq!(get(&b, &ids[2]).await.state, JobState::Cancelled);
    b.retry(&ids[1]).await.expect("retry the cancelled step");
    assert_eq!(get(&b, &ids[1]).await.state, JobState::Queued);
    assert_eq!(get(&b, &ids[2]).await.state, JobState::Waiting);
}

/// A chain whose first step's unique key is taken (an `Idempotency-Key` replay) is the earlier
/// chain: no step is created again, and each answer names the earlier chain's step.
pub async fn chain_replay_with_taken_key_creates_nothing(
    b: Arc<dyn Broker>,
    _clock: Arc<ManualClock>,
) {
    let make = || {
        link_chain(vec![
            job("test.a").queue("chain").unique_key("idem:1"),
            job("test.b").queue("chain"),
            job("test.c").queue("chain"),
        ])
    };
    let first: Vec<JobId> = b
        .enqueue(make())
        .await
        .expect("enqueue")
        .into_iter()
        .map(|a| a.job.id)
        .collect();
    let replay = b.enqueue(make()).await.expect("enqueue replay");
    assert!(
        replay.iter().all(|a| !a.created),
        "nothing is created: {replay:?}"
    );
    let ids: Vec<JobId> = replay.into_iter().map(|a| a.job.id).collect();
    assert_eq!(ids, first, "the answers name the earlier chain's steps");
    let page = b
        .list(&filter(Some("chain"), None, 100))
        .await
        .expect("list");
    assert_eq!(page.jobs.len(), 3, "no orphan steps were left waiting");
}

/// Retrying a later step whose predecessor has not succeeded puts it back to `waiting` (it
/// needs that step's result); once the predecessor succeeds it runs with the result.
pub async fn chain_retry_of_later_step_waits_for_predecessor(
    b: Arc<dyn Broker>,
    _clock: Arc<ManualClock>,
) {
    let ids = enqueue_chain(&b, "chain", 3).await;
    let first = fetch_expect(&b, "chain", &ids[0]).await;
    bury(&b, &first, "boom").await;
    assert_eq!(get(&b, &ids[1]).await.state, JobState::Cancelled);
    let retried = b.retry(&ids[1]).await.expect("retry the second step");
    assert_eq!(
        retried.state,
        JobState::Waiting,
        "it waits for its predecessor"
    );
    assert_none_fetched(&b, "chain", "nothing to run yet").await;

    b.retry(&ids[0]).await.expect("retry the first step");
    let first = fetch_expect(&b, "chain", &ids[0]).await;
    let second = pass_on(&b, "chain", &first, json!({"n": 7}), &ids[1]).await;
    finish(&b, second.lease(), ok())
        .await
        .expect("finish second");
    // Retrying a later step whose predecessor succeeded queues it with that result.
    let third = fetch_expect(&b, "chain", &ids[2]).await;
    bury(&b, &third, "boom").await;
    let again = b.retry(&ids[2]).await.expect("retry the third step");
    assert_eq!(again.state, JobState::Queued);
    // Answered as stored, the predecessor's result as `input` (SQLite answered the payload
    // as read before the retry wrote it back).
    assert_eq!(again.payload["input"], json!({"ok": true}), "{again:?}");
    assert_eq!(again.payload, get(&b, &ids[2]).await.payload);
    let third = fetch_expect(&b, "chain", &ids[2]).await;
    assert_eq!(third.payload["input"], json!({"ok": true}));

    // A step cancelled while waiting never got its input; retried after its predecessor
    // succeeded, it is queued with that result, and answered so.
    let ids = enqueue_chain(&b, "chain2", 2).await;
    b.cancel(&ids[1]).await.expect("cancel the waiting step");
    let first = fetch_expect(&b, "chain2", &ids[0]).await;
    succeed_with(&b, &first, json!({"slept_ms": 10})).await;
    let again = b.retry(&ids[1]).await.expect("retry the cancelled step");
    assert_eq!(again.state, JobState::Queued);
    assert_eq!(again.payload["input"], json!({"slept_ms": 10}), "{again:?}");
    assert_eq!(again.payload, get(&b, &ids[1]).await.payload);
}

/// Steps waiting are counted under `waiting`; a step's payload keeps its big numbers and empty
/// arrays when the predecessor's result is spliced in (an existing `input` is replaced); and a
/// step that becomes a poison pill cancels the rest, which `retry_all_dead` resumes.
pub async fn chain_counts_waiting_splices_input_and_survives_poison(
    b: Arc<dyn Broker>,
    clock: Arc<ManualClock>,
) {
    let steps = link_chain(vec![
        job("a").queue("c"),
        NewJob::new("b", json!({"big": 12_345_678_901_234_567_i64, "tags": []})),
        NewJob::new("c", json!({"input": "old", "n": 1})),
    ]);
    let ids: Vec<JobId> = steps.iter().map(|s| s.id.clone()).collect();
    b.enqueue(steps).await.expect("enqueue");
    let counts = b.queues().await.expect("queues")[0].counts.clone();
    assert_eq!((counts.queued, counts.waiting), (1, 2));

    let got = b.fetch("c", 10, LEASE).await.expect("fetch");
    assert_eq!(got.len(), 1, "waiting steps are not fetched");
    succeed_with(&b, &got[0], json!({"rows": [1, 2]})).await;
    let second = b.fetch("c", 10, LEASE).await.expect("fetch");
    assert_eq!(
        second[0].payload,
        json!({"input": {"rows": [1, 2]}, "big": 12_345_678_901_234_567_i64, "tags": []})
    );
    let events = b.history(&ids[1]).await.expect("history");
    assert_eq!(
        events[1].message.as_deref(),
        Some("chain: step 0 succeeded")
    );

    // The second step's lease runs out three times: a poison pill, and the third is cancelled.
    for round in 0..3 {
        if round > 0 {
            b.fetch("c", 10, LEASE).await.expect("fetch");
        }
        clock.advance(31_000);
        b.rescue(3).await.expect("rescue");
    }
    let third = get(&b, &ids[2]).await;
    assert_eq!(third.state, JobState::Cancelled);
    assert_eq!(
        third.last_error.as_deref(),
        Some(format!("chain: step 1 ({}) is dead", ids[1]).as_str())
    );
    let counts = b.queues().await.expect("queues")[0].counts.clone();
    assert_eq!((counts.dead, counts.cancelled, counts.waiting), (1, 1, 0));

    assert_eq!(b.retry_all_dead(Some("c")).await.expect("retry"), 1);
    let third = get(&b, &ids[2]).await;
    assert_eq!(
        (third.state, third.finished_at, third.last_error),
        (JobState::Waiting, None, None)
    );
    let counts = b.queues().await.expect("queues")[0].counts.clone();
    assert_eq!((counts.queued, counts.cancelled, counts.waiting), (1, 0, 1));
    let second = b.fetch("c", 10, LEASE).await.expect("fetch");
    succeed_with(&b, &second[0], json!(7)).await;
    let third = b.fetch("c", 10, LEASE).await.expect("fetch");
    assert_eq!(third[0].payload, json!({"input": 7, "n": 1}));
}
