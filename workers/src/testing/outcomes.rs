//! How `finish` ends an attempt: succeeded, retrying, dead, snoozed or released, each
//! with its state, fields and event, and each entry of a batch answered on its own.

use std::sync::Arc;

use serde_json::json;

use super::support::{bury, release, retry_at, snooze, succeed_with};
use super::{
    LEASE, ManualClock, RAN_AND_SUCCEEDED, assert_lease_lost, assert_none_fetched, enqueue,
    enqueue_ids, fetch_expect, fetch_one, finish, get, history_types, job, last_event, ms, ok,
    types,
};
use crate::broker::{Broker, Finish, Outcome};
use crate::clock::Clock;
use crate::error::BrokerError;
use crate::event::EventType;
use crate::job::{JobId, JobState, Lease};

/// `running -> succeeded` with the result; the lease is then spent.
pub async fn finish_succeeded(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let id = enqueue(&b, job("test.ok")).await;
    let j = fetch_expect(&b, "default", &id).await;
    clock.advance(250);
    let result = json!({"answer": 42});
    succeed_with(&b, &j, result.clone()).await;
    let done = get(&b, &id).await;
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.result, Some(result.clone()));
    assert_eq!(done.progress, 100);
    assert_eq!(done.attempt, 1);
    assert_eq!(done.finished_at, Some(clock.now()));
    assert_eq!(done.started_at, Some(clock.now() - ms(250)));
    let history = b.history(&id).await.expect("history");
    assert_eq!(types(&history), RAN_AND_SUCCEEDED);
    assert_eq!(history[2].result, Some(result));
    assert_eq!(history[2].attempt, 1);

    assert_lease_lost(finish(&b, j.lease(), ok()).await, "second finish");
    assert!(fetch_one(&b, "default").await.is_none());
}

/// `running -> retrying` until due, then `queued` again; then `running -> dead`.
pub async fn finish_retry_then_dead(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let id = enqueue(&b, job("test.retry")).await;
    let first = fetch_expect(&b, "default", &id).await;
    let at = clock.now() + ms(5_000);
    retry_at(&b, &first, at).await;
    let j = get(&b, &id).await;
    assert_eq!(j.state, JobState::Retrying);
    assert_eq!(j.run_at, at);
    assert_eq!(j.attempt, 1);
    assert_eq!(j.last_error.as_deref(), Some("flaky"));
    assert_eq!(j.finished_at, None);
    let e = last_event(&b, &id).await;
    assert_eq!(e.kind_of_event, EventType::Retrying);
    assert_eq!(e.error.as_deref(), Some("flaky"));

    assert_none_fetched(&b, "default", "not due yet").await;
    clock.advance(5_000);
    let second = fetch_expect(&b, "default", &id).await;
    assert_eq!(second.attempt, 2);
    assert!(second.lease_token > first.lease_token);
    assert_lease_lost(
        finish(&b, first.lease(), ok()).await,
        "first attempt's lease",
    );

    bury(&b, &second, "fatal").await;
    let j = get(&b, &id).await;
    assert_eq!(j.state, JobState::Dead);
    assert_eq!(j.attempt, 2);
    assert_eq!(j.last_error.as_deref(), Some("fatal"));
    assert_eq!(j.finished_at, Some(clock.now()));
    let e = last_event(&b, &id).await;
    assert_eq!(e.kind_of_event, EventType::Dead);
    assert_eq!(e.error.as_deref(), Some("fatal"));
    assert_eq!(e.attempt, 2);
    assert!(fetch_one(&b, "default").await.is_none());
}

/// `running -> scheduled` at the given time, the attempt not counted.
pub async fn finish_snooze(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let id = enqueue(&b, job("test.snooze")).await;
    let j = fetch_expect(&b, "default", &id).await;
    let at = clock.now() + ms(1_000);
    snooze(&b, &j, at, None).await;
    let s = get(&b, &id).await;
    assert_eq!(s.state, JobState::Scheduled);
    assert_eq!(s.run_at, at);
    assert_eq!(s.attempt, 0, "a snoozed attempt is not counted");
    assert_eq!(s.finished_at, None);
    // No event type names "scheduled": a snooze is recorded as enqueued again, for later.
    let e = last_event(&b, &id).await;
    assert_eq!(e.kind_of_event, EventType::Enqueued);
    assert_eq!(
        e.attempt, 1,
        "the event names the attempt that was put off, as a release's does"
    );
    assert_eq!(history_types(&b, &id).await.len(), 3);

    assert!(fetch_one(&b, "default").await.is_none());
    clock.advance(1_000);
    let again = fetch_expect(&b, "default", &id).await;
    assert_eq!(again.attempt, 1);
}

/// A snooze with a reason records it as the job's `last_error` (so a job put off again and
/// again says why); a snooze without one leaves `last_error` as it was.
pub async fn finish_snooze_records_its_reason(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let id = enqueue(&b, job("test.snooze").max_retries(3)).await;
    let j = fetch_expect(&b, "default", &id).await;
    retry_at(&b, &j, clock.now()).await;
    let j = fetch_expect(&b, "default", &id).await;
    snooze(&b, &j, clock.now(), None).await;
    assert_eq!(get(&b, &id).await.last_error.as_deref(), Some("flaky"));

    let j = fetch_expect(&b, "default", &id).await;
    let at = clock.now() + ms(5_000);
    snooze(&b, &j, at, Some("no worker serves kind test.snooze")).await;
    let s = get(&b, &id).await;
    assert_eq!(s.state, JobState::Scheduled);
    assert_eq!(s.run_at, at);
    assert_eq!(s.attempt, 1, "snoozed attempts are not counted");
    assert_eq!(
        s.last_error.as_deref(),
        Some("no worker serves kind test.snooze")
    );
}

/// `running -> queued` at once (shutdown), not an attempt and not an interruption:
/// `job.released`.
pub async fn finish_released(b: Arc<dyn Broker>, _clock: Arc<ManualClock>) {
    let id = enqueue(&b, job("test.release")).await;
    let j = fetch_expect(&b, "default", &id).await;
    release(&b, &j).await;
    let r = get(&b, &id).await;
    assert_eq!(r.state, JobState::Queued);
    assert_eq!(r.attempt, 0);
    assert_eq!(r.interruptions, 0);
    let e = last_event(&b, &id).await;
    assert_eq!(e.kind_of_event, EventType::Released);
    assert_eq!(e.message.as_deref(), Some("shutting down"));

    let again = fetch_expect(&b, "default", &id).await;
    assert_eq!(again.attempt, 1);
    assert!(again.lease_token > j.lease_token);
    assert_lease_lost(finish(&b, j.lease(), ok()).await, "released lease");
    finish(&b, again.lease(), ok()).await.expect("finish");
}

/// A job handed back at shutdown goes back to its old place in line, ahead of the jobs
/// enqueued after it: it had waited its turn already, and a deploy's restart must not send it
/// behind a backlog. (Redis always kept its place; SQLite made it due anew, at the back.)
pub async fn a_released_job_keeps_its_place_in_line(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let first = enqueue(&b, job("test.first")).await;
    clock.advance(10);
    let second = enqueue(&b, job("test.second")).await;
    let j = fetch_expect(&b, "default", &first).await;
    clock.advance(10);
    release(&b, &j).await;
    fetch_expect(&b, "default", &first).await;
    fetch_expect(&b, "default", &second).await;
}

/// One finish call answers each entry on its own: a stale one does not spoil the others.
pub async fn finish_batch_answers_each_entry(b: Arc<dyn Broker>, _clock: Arc<ManualClock>) {
    let a = enqueue(&b, job("test.a")).await;
    let c = enqueue(&b, job("test.c")).await;
    let ja = fetch_expect(&b, "default", &a).await;
    let jc = fetch_expect(&b, "default", &c).await;
    let stale = Lease {
        job_id: a.clone(),
        queue: ja.queue.clone(),
        token: ja.lease_token + 100,
    };
    let answers = b
        .finish(vec![
            Finish {
                lease: stale,
                outcome: ok(),
            },
            Finish {
                lease: jc.lease(),
                outcome: ok(),
            },
            Finish {
                lease: Lease {
                    job_id: JobId::generate(),
                    queue: "default".into(),
                    token: 1,
                },
                outcome: ok(),
            },
        ])
        .await
        .expect("finish batch");
    assert_eq!(answers.len(), 3);
    assert!(matches!(answers[0], Err(BrokerError::LeaseLost(ref id)) if *id == a));
    assert!(answers[1].is_ok(), "{:?}", answers[1]);
    assert!(matches!(answers[2], Err(BrokerError::LeaseLost(_))));
    assert_eq!(get(&b, &a).await.state, JobState::Running);
    assert_eq!(get(&b, &c).await.state, JobState::Succeeded);
    assert!(b.finish(Vec::new()).await.expect("empty finish").is_empty());
}

/// One finish batch with every outcome at once, and a stale token among them: each entry is
/// recorded as its own outcome, the stale one refused, a spent lease refused again; then the
/// released job is first in line and the snoozed and retried ones follow as they fall due.
pub async fn finish_batch_mixes_outcomes_and_refuses_stale_tokens(
    b: Arc<dyn Broker>,
    clock: Arc<ManualClock>,
) {
    let t0 = clock.now();
    let ids = enqueue_ids(&*b, (0..5).map(|_| job("k")).collect()).await;
    let got = b.fetch("default", 5, LEASE).await.expect("fetch");
    let mut stale = got[0].lease();
    stale.token += 1;
    let entries = [
        (stale, Outcome::Succeeded { result: json!(1) }),
        (
            got[0].lease(),
            Outcome::Succeeded {
                result: json!({"n": 1}),
            },
        ),
        (
            got[1].lease(),
            Outcome::Retry {
                at: t0 + ms(5000),
                error: "flaky".into(),
            },
        ),
        (
            got[2].lease(),
            Outcome::Dead {
                error: "bad".into(),
            },
        ),
        (
            got[3].lease(),
            Outcome::Snooze {
                at: t0 + ms(1000),
                reason: None,
            },
        ),
        (
            got[4].lease(),
            Outcome::Released {
                reason: "shutdown".into(),
            },
        ),
    ];
    let res = b
        .finish(
            entries
                .into_iter()
                .map(|(lease, outcome)| Finish { lease, outcome })
                .collect(),
        )
        .await
        .expect("finish");
    assert!(matches!(res[0], Err(BrokerError::LeaseLost(_))));
    assert!(res[1..].iter().all(Result::is_ok), "{res:?}");
    // Same lease twice: the second is refused.
    assert_lease_lost(
        finish(&b, got[0].lease(), Outcome::Dead { error: "x".into() }).await,
        "a spent lease",
    );

    let j = get(&b, &ids[0]).await;
    assert_eq!(
        (j.state, j.result.clone(), j.finished_at),
        (JobState::Succeeded, Some(json!({"n": 1})), Some(t0))
    );
    assert_eq!(j.lease_until, None);
    let j = get(&b, &ids[1]).await;
    assert_eq!(
        (j.state, j.run_at, j.attempt),
        (JobState::Retrying, t0 + ms(5000), 1)
    );
    assert_eq!(j.last_error.as_deref(), Some("flaky"));
    assert_eq!(get(&b, &ids[2]).await.state, JobState::Dead);
    let j = get(&b, &ids[3]).await;
    assert_eq!(
        (j.state, j.attempt, j.run_at),
        (JobState::Scheduled, 0, t0 + ms(1000))
    );
    let j = get(&b, &ids[4]).await;
    assert_eq!(
        (j.state, j.attempt, j.interruptions),
        (JobState::Queued, 0, 0)
    );

    let next = b.fetch("default", 10, LEASE).await.expect("fetch");
    assert_eq!(
        next.iter().map(|j| &j.id).collect::<Vec<_>>(),
        vec![&ids[4]]
    );
    assert_eq!((next[0].attempt, next[0].lease_token), (1, 2));
    clock.advance(5000);
    let next = b.fetch("default", 10, LEASE).await.expect("fetch");
    assert_eq!(
        next.iter().map(|j| &j.id).collect::<Vec<_>>(),
        vec![&ids[3], &ids[1]]
    );
    assert_eq!(next[1].attempt, 2);

    let stats = b.queues().await.expect("queues");
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].counts.running, 3);
    assert_eq!(stats[0].counts.succeeded, 1);
    assert_eq!(stats[0].counts.dead, 1);
    assert_eq!(stats[0].processed_last_minute, 1);
    assert_eq!(stats[0].failed_last_minute, 2);
    clock.advance(61_000);
    let stats = b.queues().await.expect("queues");
    assert_eq!(
        (stats[0].processed_last_minute, stats[0].failed_last_minute),
        (0, 0)
    );
}
