//! Leases: heartbeats extend them, a stale token is fenced off from every write (finish,
//! progress, heartbeat), and `rescue` turns an expired lease into an interruption, then into
//! a poison pill.

use std::sync::Arc;
use std::time::Duration;

use super::{
    LEASE, ManualClock, assert_lease_lost, enqueue, fetch_expect, fetch_one, finish, get,
    history_types, job, last_event, ok,
};
use crate::broker::{Broker, LeaseStatus, Outcome};
use crate::clock::Clock;
use crate::event::EventType;
use crate::job::{JobId, JobState, Lease};

/// After a rescue and a new fetch, the first attempt's writes are all refused.
pub async fn stale_token_refused_after_rescue(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let id = enqueue(&b, job("test.stale")).await;
    let first = b
        .fetch("default", 1, Duration::from_secs(10))
        .await
        .expect("fetch")
        .pop()
        .expect("a job");
    clock.advance(10_001);
    assert_eq!(b.rescue(3).await.expect("rescue"), vec![id.clone()]);
    let second = fetch_expect(&b, "default", &id).await;
    assert!(second.lease_token > first.lease_token);
    assert_eq!(second.attempt, 1);

    assert_lease_lost(finish(&b, first.lease(), ok()).await, "stale finish");
    assert_lease_lost(b.progress(&first.lease(), 50, None).await, "stale progress");
    assert_eq!(
        b.heartbeat(&[first.lease()], LEASE)
            .await
            .expect("heartbeat"),
        vec![LeaseStatus::Lost]
    );
    let j = get(&b, &id).await;
    assert_eq!(j.state, JobState::Running);
    assert_eq!(j.lease_token, second.lease_token);

    finish(&b, second.lease(), ok())
        .await
        .expect("current finish");
    let j = get(&b, &id).await;
    assert_eq!(j.state, JobState::Succeeded);
    assert_eq!(j.interruptions, 1, "the interruption stays on record");
    assert_eq!(j.interruption_streak, 0, "a normal end resets the streak");
}

/// Heartbeats extend held leases and report cancelled and lost ones.
pub async fn heartbeat_extends_and_reports(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let lease = Duration::from_secs(10);
    let a = enqueue(&b, job("test.hb")).await;
    let c = enqueue(&b, job("test.hb")).await;
    let ja = b
        .fetch("default", 1, lease)
        .await
        .expect("fetch")
        .pop()
        .expect("a");
    let jc = b
        .fetch("default", 1, lease)
        .await
        .expect("fetch")
        .pop()
        .expect("c");
    assert_eq!((&ja.id, &jc.id), (&a, &c));

    clock.advance(8_000);
    assert_eq!(
        b.heartbeat(&[ja.lease(), jc.lease()], lease)
            .await
            .expect("heartbeat"),
        vec![LeaseStatus::Held, LeaseStatus::Held]
    );
    assert_eq!(get(&b, &a).await.lease_until, Some(clock.now_ms() + 10_000));
    clock.advance(8_000);
    assert!(
        b.rescue(3).await.expect("rescue").is_empty(),
        "an extended lease has not expired"
    );

    b.cancel(&c).await.expect("cancel");
    let unknown = Lease {
        job_id: JobId::generate(),
        queue: "default".into(),
        token: 1,
    };
    assert_eq!(
        b.heartbeat(&[ja.lease(), jc.lease(), unknown], lease)
            .await
            .expect("heartbeat"),
        vec![LeaseStatus::Held, LeaseStatus::Cancelled, LeaseStatus::Lost]
    );
    assert!(b.heartbeat(&[], lease).await.expect("empty").is_empty());
}

/// An expired lease goes back to `queued`: an interruption, not an attempt.
pub async fn rescue_counts_interruption_not_attempt(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    assert!(b.rescue(3).await.expect("rescue nothing").is_empty());
    let short = enqueue(&b, job("test.short")).await;
    let long = enqueue(&b, job("test.long")).await;
    b.fetch("default", 1, Duration::from_secs(1))
        .await
        .expect("fetch");
    b.fetch("default", 1, Duration::from_secs(60))
        .await
        .expect("fetch");

    clock.advance(1_001);
    assert_eq!(b.rescue(3).await.expect("rescue"), vec![short.clone()]);
    let j = get(&b, &short).await;
    assert_eq!(j.state, JobState::Queued);
    assert_eq!(j.attempt, 0, "the interrupted attempt is not counted");
    assert_eq!(j.interruptions, 1);
    assert_eq!(j.interruption_streak, 1);
    assert_eq!(
        last_event(&b, &short).await.kind_of_event,
        EventType::Interrupted
    );
    assert_eq!(get(&b, &long).await.state, JobState::Running);
    assert!(b.rescue(3).await.expect("rescue again").is_empty());

    let again = fetch_expect(&b, "default", &short).await;
    assert_eq!(again.attempt, 1);
}

/// A job interrupted `max_interruptions` times in a row is dead; a normal end resets the count.
pub async fn poison_pill_after_max_interruptions(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let lease = Duration::from_secs(1);
    let id = enqueue(&b, job("test.poison").max_retries(5)).await;
    let interrupt = |expect_state: JobState| {
        let b = b.clone();
        let clock = clock.clone();
        let id = id.clone();
        async move {
            let j = b
                .fetch("default", 1, lease)
                .await
                .expect("fetch")
                .pop()
                .expect("due");
            assert_eq!(j.id, id);
            clock.advance(1_001);
            assert_eq!(b.rescue(3).await.expect("rescue"), vec![id.clone()]);
            let after = get(&b, &id).await;
            assert_eq!(after.state, expect_state);
            after
        }
    };

    interrupt(JobState::Queued).await;
    interrupt(JobState::Queued).await;
    // An attempt that ends normally (here: a retry) breaks the streak.
    let j = fetch_expect(&b, "default", &id).await;
    finish(
        &b,
        j.lease(),
        Outcome::Retry {
            at: clock.now_ms(),
            error: "flaky".into(),
        },
    )
    .await
    .expect("retry");
    assert_eq!(get(&b, &id).await.interruption_streak, 0);

    interrupt(JobState::Queued).await;
    interrupt(JobState::Queued).await;
    let dead = interrupt(JobState::Dead).await;
    assert_eq!(dead.interruptions, 5);
    assert_eq!(dead.interruption_streak, 3);
    assert_eq!(dead.attempt, 1, "interrupted attempts are not counted");
    assert!(
        dead.last_error
            .as_deref()
            .is_some_and(|e| e.contains("poison pill")),
        "last_error names the poison pill: {:?}",
        dead.last_error
    );
    assert!(dead.finished_at.is_some());
    let history = history_types(&b, &id).await;
    assert_eq!(history.last(), Some(&EventType::Dead));
    assert!(fetch_one(&b, "default").await.is_none());
}

/// Progress is recorded with its event, and refused once the lease is stale or the job done.
pub async fn progress_recorded_and_fenced(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let id = enqueue(&b, job("test.p")).await;
    let first = b
        .fetch("default", 1, Duration::from_secs(5))
        .await
        .expect("fetch")
        .pop()
        .expect("a job");
    b.progress(&first.lease(), 40, Some("reading".into()))
        .await
        .expect("progress");
    let j = get(&b, &id).await;
    assert_eq!(j.progress, 40);
    assert_eq!(j.progress_message.as_deref(), Some("reading"));
    let e = last_event(&b, &id).await;
    assert_eq!(e.kind_of_event, EventType::Progress);
    assert_eq!(e.progress, Some(40));
    assert_eq!(e.message.as_deref(), Some("reading"));

    clock.advance(5_001);
    b.rescue(3).await.expect("rescue");
    let second = fetch_expect(&b, "default", &id).await;
    assert_lease_lost(
        b.progress(&first.lease(), 90, None).await,
        "progress with a stale token",
    );
    assert_ne!(get(&b, &id).await.progress, 90);
    finish(&b, second.lease(), ok()).await.expect("finish");
    assert_lease_lost(
        b.progress(&second.lease(), 10, None).await,
        "progress after finishing",
    );
    assert_eq!(get(&b, &id).await.progress, 100);
}
