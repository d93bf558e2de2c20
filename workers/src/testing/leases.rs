//! Leases: heartbeats extend them, a stale token is fenced off from every write (finish,
//! progress, heartbeat), and `rescue` turns an expired lease into an interruption, then into
//! a poison pill.

use std::sync::Arc;
use std::time::Duration;

use super::support::retry_at;
use super::{
    LEASE, ManualClock, assert_conflict, assert_lease_lost, assert_not_found, enqueue, enqueue_ids,
    fetch_expect, fetch_leased, fetch_one, finish, get, job, last_event, ms, ok,
};
use crate::broker::{Broker, LeaseStatus, Rescued};
use crate::clock::Clock;
use crate::error::BrokerError;
use crate::event::EventType;
use crate::job::{JobId, JobState, Lease};

/// After a rescue and a new fetch, the first attempt's writes are all refused.
pub async fn stale_token_refused_after_rescue(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let id = enqueue(&b, job("test.stale")).await;
    let first = fetch_leased(&b, "default", Duration::from_secs(10)).await;
    clock.advance(10_001);
    assert_eq!(
        b.rescue(3).await.expect("rescue"),
        vec![rescued(&id, "test.stale", JobState::Queued)],
        "the rescue answers each job's queue, kind and new state"
    );
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
    let ja = fetch_leased(&b, "default", lease).await;
    let jc = fetch_leased(&b, "default", lease).await;
    assert_eq!((&ja.id, &jc.id), (&a, &c));

    clock.advance(8_000);
    assert_eq!(
        b.heartbeat(&[ja.lease(), jc.lease()], lease)
            .await
            .expect("heartbeat"),
        vec![LeaseStatus::Held, LeaseStatus::Held]
    );
    assert_eq!(
        get(&b, &a).await.lease_until,
        Some(clock.now() + ms(10_000))
    );
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
    assert_eq!(rescued_ids(&b).await, vec![short.clone()]);
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
            let j = fetch_leased(&b, "default", lease).await;
            assert_eq!(j.id, id);
            clock.advance(1_001);
            assert_eq!(
                b.rescue(3).await.expect("rescue"),
                vec![rescued(&id, "test.poison", expect_state)],
                "queued when interrupted, dead when a poison pill"
            );
            let after = get(&b, &id).await;
            assert_eq!(after.state, expect_state);
            after
        }
    };

    interrupt(JobState::Queued).await;
    interrupt(JobState::Queued).await;
    // An attempt that ends normally (here: a retry) breaks the streak.
    let j = fetch_expect(&b, "default", &id).await;
    retry_at(&b, &j, clock.now()).await;
    assert_eq!(get(&b, &id).await.interruption_streak, 0);

    interrupt(JobState::Queued).await;
    interrupt(JobState::Queued).await;
    let dead = interrupt(JobState::Dead).await;
    assert_eq!(dead.interruptions, 5);
    assert_eq!(dead.interruption_streak, 3);
    assert_eq!(dead.attempt, 1, "interrupted attempts are not counted");
    assert_eq!(
        dead.last_error.as_deref(),
        Some("poison pill: interrupted 3 times in a row (its lease expired each time)"),
        "last_error names the poison pill, in the same words on every broker"
    );
    assert!(dead.finished_at.is_some());
    // One `job.interrupted` per interruption counted, the last one too, then `job.dead`
    // naming the attempt as the job now stores it (the interrupted one is not counted).
    let history = b.history(&id).await.expect("history");
    let interrupted = history
        .iter()
        .filter(|e| e.kind_of_event == EventType::Interrupted)
        .count();
    assert_eq!(interrupted, 5, "one event per interruption");
    let tail: Vec<(EventType, u32)> = history[history.len() - 2..]
        .iter()
        .map(|e| (e.kind_of_event, e.attempt))
        .collect();
    assert_eq!(
        tail,
        vec![(EventType::Interrupted, 2), (EventType::Dead, 1)],
        "the attempt cut short, then the job's"
    );
    assert!(fetch_one(&b, "default").await.is_none());
}

/// Progress is recorded with its event, reset when the job is fetched again, and refused once
/// the lease is stale or the job done.
pub async fn progress_recorded_and_fenced(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let id = enqueue(&b, job("test.p")).await;
    let first = fetch_leased(&b, "default", Duration::from_secs(5)).await;
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
    // A new attempt starts from nothing: neither its handler nor a reader sees the last one's.
    assert_eq!(
        (second.progress, second.progress_message.as_deref()),
        (0, None)
    );
    let j = get(&b, &id).await;
    assert_eq!((j.progress, j.progress_message.as_deref()), (0, None));
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

/// One job's whole lease story on a small queue: a heartbeat extends a held lease and reports a
/// cancelled and a stale one, progress is fenced, cancel and retry refuse final, running and
/// unknown jobs; the extended lease then runs out three times (a poison pill), and retrying
/// brings back the cancelled and the dead jobs.
pub async fn heartbeat_cancel_retry_and_rescue(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    let t0 = clock.now();
    let ids = enqueue_ids(
        &*b,
        vec![job("k"), job("k"), job("k").run_at(t0 + ms(10_000))],
    )
    .await;
    let got = b.fetch("default", 2, LEASE).await.expect("fetch");
    clock.advance(20_000);
    let cancelled = b.cancel(&ids[1]).await.expect("cancel");
    assert_eq!(cancelled.state, JobState::Cancelled);
    let mut stale = got[0].lease();
    stale.token = 0;
    let hb = b
        .heartbeat(&[got[0].lease(), got[1].lease(), stale], LEASE)
        .await
        .expect("heartbeat");
    assert_eq!(
        hb,
        vec![LeaseStatus::Held, LeaseStatus::Cancelled, LeaseStatus::Lost]
    );
    assert_eq!(get(&b, &ids[0]).await.lease_until, Some(t0 + ms(50_000)));
    assert_lease_lost(
        b.progress(&got[1].lease(), 50, None).await,
        "progress on a cancelled job",
    );
    b.progress(&got[0].lease(), 40, Some("reading".into()))
        .await
        .expect("progress");
    let j = get(&b, &ids[0]).await;
    assert_eq!(
        (j.progress, j.progress_message.as_deref()),
        (40, Some("reading"))
    );

    // Cancel a scheduled job; a final job cannot be cancelled; an unknown one is not found.
    assert_eq!(
        b.cancel(&ids[2]).await.expect("cancel").state,
        JobState::Cancelled
    );
    assert_conflict(b.cancel(&ids[2]).await, JobState::Cancelled);
    assert_not_found(b.cancel(&JobId::from("nope")).await);
    assert_not_found(b.retry(&JobId::from("nope")).await);
    assert_conflict(b.retry(&ids[0]).await, JobState::Running);
    // Every broker says it in the same words (the API's 409 carries them).
    for (r, says) in [
        (
            b.cancel(&ids[2]).await,
            "only a job that has not finished can be cancelled",
        ),
        (
            b.retry(&ids[0]).await,
            "only a dead or cancelled job can be retried",
        ),
    ] {
        assert!(
            matches!(&r, Err(BrokerError::Conflict { message, .. }) if *message == says),
            "{r:?}"
        );
    }

    // The lease of job 0 (extended to t0 + 50 s) runs out: interrupted, queued, then a poison
    // pill.
    clock.advance(29_000);
    assert!(b.rescue(3).await.expect("rescue").is_empty());
    for round in 1..=3u32 {
        clock.advance(30_000);
        assert_eq!(rescued_ids(&b).await, vec![ids[0].clone()], "round {round}");
        let j = get(&b, &ids[0]).await;
        assert_eq!(
            (j.interruptions, j.interruption_streak, j.attempt),
            (round, round, 0)
        );
        if round < 3 {
            assert_eq!(j.state, JobState::Queued);
            let again = b.fetch("default", 1, LEASE).await.expect("fetch");
            assert_eq!(again[0].id, ids[0]);
            clock.advance(1);
        } else {
            assert_eq!(j.state, JobState::Dead);
            assert!(
                j.last_error
                    .unwrap_or_default()
                    .contains("interrupted 3 times")
            );
        }
    }

    // Retry one cancelled job, then every dead one.
    let j = b.retry(&ids[1]).await.expect("retry");
    assert_eq!(
        (j.state, j.attempt, j.finished_at),
        (JobState::Queued, 0, None)
    );
    assert_eq!(b.retry_all_dead(None).await.expect("retry all"), 1);
    assert_eq!(get(&b, &ids[0]).await.state, JobState::Queued);
    let counts = &b.queues().await.expect("queues")[0].counts;
    assert_eq!(
        (counts.queued, counts.cancelled, counts.dead, counts.running),
        (2, 1, 0, 0)
    );
}

/// What a rescue answers for a job of the default queue.
fn rescued(id: &JobId, kind: &str, state: JobState) -> Rescued {
    Rescued {
        id: id.clone(),
        queue: "default".to_owned(),
        kind: kind.to_owned(),
        state,
    }
}

/// The ids a rescue (3 interruptions in a row at most) answers.
async fn rescued_ids(b: &Arc<dyn Broker>) -> Vec<JobId> {
    let rescued = b.rescue(3).await.expect("rescue");
    rescued.into_iter().map(|r| r.id).collect()
}
