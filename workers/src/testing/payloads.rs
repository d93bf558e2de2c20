//! Payloads and results come back exactly: the JSON text of what was stored equals the JSON
//! text of what `get` returns and of what a fetch (a handler) receives, through every path a
//! chain step's payload takes (promotion, retry of a dead later step, cancel and retry of the
//! chain). The values are the ones a JSON round-trip through a lossy codec breaks: empty arrays
//! and objects, an integer beyond 2^53, short and tiny floats, non-ASCII text and `null`. And
//! a job's free text (its unique key, its last error) comes back exactly from a fetch, whatever
//! bytes a broker might use to pack a fetched job: NUL, `|`, line breaks, `ÿ` (U+00FF).

use std::sync::Arc;

use serde_json::{Value, json};

use super::support::{bury, succeed_with};
use super::{ManualClock, fetch_expect, get};
use crate::broker::Broker;
use crate::broker::{Finish, Outcome};
use crate::clock::Clock;
use crate::job::{Job, JobId, JobState, NewJob, link_chain};

/// Every value a lossy JSON round-trip damages, nested once.
fn awkward() -> Value {
    json!({
        "empty_array": [],
        "empty_object": {},
        "big": 9_007_199_254_740_993_u64,
        "negative_big": -9_007_199_254_740_993_i64,
        "tenth": 0.1,
        "tiny": 1e-7,
        "text": "héllo wörld, 日本語, ✓ \u{1F600} \"quoted\" / slash",
        "nothing": null,
        "nested": {"list": [[], {}, null, 9_007_199_254_740_993_u64, 0.1], "deeper": {"e": []}},
    })
}

/// The predecessor's result a step receives under `input`.
fn result() -> Value {
    json!({"rows": [], "meta": {}, "id": 9_007_199_254_740_993_u64, "ratio": 1e-7, "who": "Zoë", "x": null})
}

fn text(v: &Value) -> String {
    serde_json::to_string(v).expect("a JSON value serializes")
}

/// `payload` with its top-level `input` set to `input`, as a broker hands a step its input.
fn with_input(payload: &Value, input: &Value) -> Value {
    let mut p = payload.clone();
    if let Some(map) = p.as_object_mut() {
        map.insert("input".into(), input.clone());
    }
    p
}

/// Asserts that both `get` and `seen` (a fetched job) carry exactly `expected` as payload.
async fn assert_payload(b: &Arc<dyn Broker>, seen: &Job, expected: &Value, when: &str) {
    assert_eq!(
        text(&seen.payload),
        text(expected),
        "{when}: the payload a handler receives"
    );
    assert_eq!(
        text(&get(b, &seen.id).await.payload),
        text(expected),
        "{when}: the payload get returns"
    );
}

/// A two-step chain whose steps both carry the awkward payload; returns the step ids.
async fn enqueue_pair(b: &Arc<dyn Broker>, queue: &str) -> Vec<JobId> {
    let steps = link_chain(vec![
        NewJob::new("test.a", awkward()).queue(queue),
        NewJob::new("test.b", awkward()).queue(queue),
    ]);
    let answers = b.enqueue(steps).await.expect("enqueue chain");
    for a in &answers {
        assert_eq!(
            text(&a.job.payload),
            text(&awkward()),
            "enqueue answers the payload as stored"
        );
        assert_eq!(text(&get(b, &a.job.id).await.payload), text(&awkward()));
    }
    answers.into_iter().map(|a| a.job.id).collect()
}

/// A plain job's payload and result come back byte for byte (as JSON text), from `get`,
/// from a fetch, and from the `job.succeeded` event.
pub async fn payloads_and_results_round_trip_exactly(b: Arc<dyn Broker>, _clock: Arc<ManualClock>) {
    let id = super::enqueue(&b, NewJob::new("test.p", awkward()).queue("p")).await;
    let j = fetch_expect(&b, "p", &id).await;
    assert_payload(&b, &j, &awkward(), "a plain job").await;
    succeed_with(&b, &j, awkward()).await;
    let done = get(&b, &id).await;
    assert_eq!(
        done.result.as_ref().map(text),
        Some(text(&awkward())),
        "the result as stored"
    );
    let events = b.history(&id).await.expect("history");
    let succeeded = events.last().expect("events");
    assert_eq!(succeeded.result.as_ref().map(text), Some(text(&awkward())));
}

/// A later step's payload, with its predecessor's result spliced in as `input`, stays exact
/// when promoted and again when the step dies and is retried (its `input` replaced).
pub async fn chain_payloads_stay_exact_through_promote_and_retry(
    b: Arc<dyn Broker>,
    _clock: Arc<ManualClock>,
) {
    let ids = enqueue_pair(&b, "pc").await;
    let first = fetch_expect(&b, "pc", &ids[0]).await;
    assert_payload(&b, &first, &awkward(), "the first step").await;
    succeed_with(&b, &first, result()).await;
    let expected = with_input(&awkward(), &result());
    assert_eq!(
        text(&get(&b, &ids[1]).await.payload),
        text(&expected),
        "promoted"
    );
    let second = fetch_expect(&b, "pc", &ids[1]).await;
    assert_payload(&b, &second, &expected, "the promoted step").await;

    bury(&b, &second, "boom").await;
    let retried = b.retry(&ids[1]).await.expect("retry the dead step");
    assert_eq!(retried.state, JobState::Queued);
    assert_eq!(text(&retried.payload), text(&expected), "retry answers it");
    let second = fetch_expect(&b, "pc", &ids[1]).await;
    assert_payload(&b, &second, &expected, "the retried step").await;

    // Dead again, then every dead job retried at once: the same path in bulk.
    bury(&b, &second, "boom").await;
    assert_eq!(b.retry_all_dead(Some("pc")).await.expect("retry all"), 1);
    let second = fetch_expect(&b, "pc", &ids[1]).await;
    assert_payload(&b, &second, &expected, "the step retried in bulk").await;
}

/// Cancelling a chain and retrying it: the steps' payloads are untouched while cancelled and
/// waiting, and the later step runs with an exact `input` once the first succeeds.
pub async fn chain_payloads_stay_exact_through_cancel_and_retry(
    b: Arc<dyn Broker>,
    _clock: Arc<ManualClock>,
) {
    let ids = enqueue_pair(&b, "pk").await;
    b.cancel(&ids[0]).await.expect("cancel the chain");
    assert_eq!(get(&b, &ids[1]).await.state, JobState::Cancelled);
    b.retry(&ids[0]).await.expect("retry the first step");
    assert_eq!(get(&b, &ids[1]).await.state, JobState::Waiting);
    assert_eq!(text(&get(&b, &ids[1]).await.payload), text(&awkward()));
    let first = fetch_expect(&b, "pk", &ids[0]).await;
    assert_payload(&b, &first, &awkward(), "the retried first step").await;
    succeed_with(&b, &first, result()).await;
    let second = fetch_expect(&b, "pk", &ids[1]).await;
    let expected = with_input(&awkward(), &result());
    assert_payload(&b, &second, &expected, "the step after the retry").await;

    // A second run of the chain's first step (retried after the chain's end is cancelled)
    // hands the later step the new result, replacing the old `input` exactly.
    b.cancel(&ids[1]).await.expect("cancel the second step");
    b.retry(&ids[1]).await.expect("retry the second step");
    let second = fetch_expect(&b, "pk", &ids[1]).await;
    assert_payload(&b, &second, &expected, "the second step retried").await;
}

/// Text holding every byte a packed reply might split on, and then some.
const AWKWARD_TEXT: &str =
    "nul\u{0}pipe|tab\tline\nreturn\r del\u{7f} \u{ff}\u{fe} \"q\" \u{1F600} end";

/// A fetched job carries its unique key and last error exactly, on its first fetch and on the
/// fetch of its retry.
pub async fn free_text_round_trips_through_a_fetch(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let job = NewJob::new("test.t", json!({}))
        .queue("t")
        .unique_key(AWKWARD_TEXT);
    let id = super::enqueue(&b, job).await;
    let first = fetch_expect(&b, "t", &id).await;
    assert_eq!(
        first.unique_key.as_deref(),
        Some(AWKWARD_TEXT),
        "the first fetch's unique key"
    );
    let error = format!("failed: {AWKWARD_TEXT}");
    let at = clock.now();
    let answers = b
        .finish(vec![Finish {
            lease: first.lease(),
            outcome: Outcome::Retry {
                at,
                error: error.clone(),
            },
        }])
        .await
        .expect("finish round-trip");
    assert!(
        answers.iter().all(Result::is_ok),
        "the retry is applied: {answers:?}"
    );
    clock.advance(1_000);
    let second = fetch_expect(&b, "t", &id).await;
    assert_eq!(
        second.unique_key.as_deref(),
        Some(AWKWARD_TEXT),
        "the retry's unique key"
    );
    assert_eq!(
        second.last_error.as_deref(),
        Some(error.as_str()),
        "the retry's last error"
    );
    assert_eq!(second.attempt, 2, "the second attempt");
}
