//! What a `[[schedule]]` needs of a broker at start-up: a tick missed while every node was
//! down is enqueued once, and only then. The broker's named cursor remembers each schedule's
//! last tick, so neither a restart after retention purged the tick's job (its unique key gone
//! with it) nor a schedule added after its last tick enqueues a job nobody missed.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::ManualClock;
use crate::broker::{Broker, JobFilter};
use crate::clock::Clock;
use crate::job::{Job, JobState};
use crate::schedule::{self, Schedule, ScheduleSpec};
use crate::time::Timestamp;

const KIND: &str = "test.scheduled";
/// 2030-01-01T00:00:00Z: a midnight, so the hourly ticks below are whole hours after it.
const DAY: i64 = 1_893_456_000_000;
const HOUR: i64 = 3_600_000;
const MINUTE: i64 = 60_000;

fn hourly() -> Schedule {
    Schedule::new(ScheduleSpec {
        name: "hourly".into(),
        cron: "0 0 * * * *".into(),
        kind: KIND.into(),
        payload: serde_json::json!({}),
        queue: "sched".into(),
        priority: 5,
        max_retries: 0,
    })
    .expect("a valid cron")
}

/// The unique key of the tick at `hour`:00 of the day.
fn tick_key(hour: i64) -> String {
    format!("schedule:hourly:{}", DAY + hour * HOUR)
}

/// A node's start-up, as far as schedules go: the catch-up, then a stop before any tick.
async fn start_up(b: &Arc<dyn Broker>, clock: &Arc<ManualClock>) {
    let stopped = CancellationToken::new();
    stopped.cancel();
    let clock: Arc<dyn Clock> = clock.clone();
    schedule::run(b.clone(), vec![hourly()], clock, stopped).await;
}

async fn scheduled_jobs(b: &Arc<dyn Broker>) -> Vec<Job> {
    b.list(&JobFilter {
        kind: Some(KIND.into()),
        limit: JobFilter::MAX_LIMIT,
        ..JobFilter::default()
    })
    .await
    .expect("list")
    .jobs
}

/// Cancels and purges every job of the schedule, as retention does once they are old.
async fn purge_all(b: &Arc<dyn Broker>) {
    for j in scheduled_jobs(b).await {
        if !j.state.is_final() {
            b.cancel(&j.id).await.expect("cancel");
        }
    }
    let far = Timestamp::from_millis(DAY + 365 * 24 * HOUR);
    b.purge(
        &[JobState::Succeeded, JobState::Dead, JobState::Cancelled],
        far,
        1_000_000,
    )
    .await
    .expect("purge");
    assert!(scheduled_jobs(b).await.is_empty(), "purged");
}

/// Every node down over three ticks, then up: the last missed tick (12:00) is enqueued once.
/// Retention then purges its job; a restart at 12:40 enqueues nothing (the 12:00 tick ran),
/// and one at 13:10 enqueues the 13:00 tick it missed.
pub async fn schedule_start_up_never_repeats_a_purged_tick(
    b: Arc<dyn Broker>,
    clock: Arc<ManualClock>,
) {
    clock.set(Timestamp::from_millis(DAY + 9 * HOUR + 30 * MINUTE));
    start_up(&b, &clock).await;
    purge_all(&b).await;

    clock.set(Timestamp::from_millis(DAY + 12 * HOUR + 30 * MINUTE));
    start_up(&b, &clock).await;
    let jobs = scheduled_jobs(&b).await;
    assert_eq!(jobs.len(), 1, "the missed 12:00 tick, once: {jobs:?}");
    assert_eq!(jobs[0].unique_key, Some(tick_key(12)));
    purge_all(&b).await;

    clock.set(Timestamp::from_millis(DAY + 12 * HOUR + 40 * MINUTE));
    start_up(&b, &clock).await;
    let jobs = scheduled_jobs(&b).await;
    assert!(
        jobs.is_empty(),
        "the 12:00 tick ran already; its job being purged does not make it missed: {jobs:?}"
    );

    clock.set(Timestamp::from_millis(DAY + 13 * HOUR + 10 * MINUTE));
    start_up(&b, &clock).await;
    let jobs = scheduled_jobs(&b).await;
    assert_eq!(jobs.len(), 1, "the missed 13:00 tick: {jobs:?}");
    assert_eq!(jobs[0].unique_key, Some(tick_key(13)));
}

/// A schedule first seen at 10:30 (just added to the config, or a first deploy) missed
/// nothing: no job for its 10:00 tick, which happened before it existed. Its first job is
/// its next tick's.
pub async fn a_new_schedule_does_not_run_a_tick_from_before_it_existed(
    b: Arc<dyn Broker>,
    clock: Arc<ManualClock>,
) {
    clock.set(Timestamp::from_millis(DAY + 10 * HOUR + 30 * MINUTE));
    start_up(&b, &clock).await;
    let jobs = scheduled_jobs(&b).await;
    assert!(
        jobs.is_empty(),
        "a new hourly schedule started at 10:30 runs at 11:00, not at once: {jobs:?}"
    );
    // Down from 10:45 to 11:20: the 11:00 tick was missed, and is caught up.
    clock.set(Timestamp::from_millis(DAY + 11 * HOUR + 20 * MINUTE));
    start_up(&b, &clock).await;
    let jobs = scheduled_jobs(&b).await;
    assert_eq!(jobs.len(), 1, "the missed 11:00 tick: {jobs:?}");
    assert_eq!(jobs[0].unique_key, Some(tick_key(11)));
}

/// Every node runs the scheduler, so a tick is recorded by each node that enqueued it, and a
/// slow node (a long pause, a slow broker call) may record an older tick after a newer one:
/// node A catches up 12:00 at 12:10 while node B, stalled since before, records 11:00 only
/// then. The record must not go back to 11:00, or a restart after retention purged the 12:00
/// job would take 12:00 as missed and run it a second time.
pub async fn a_slow_nodes_older_tick_does_not_move_the_schedule_back(
    b: Arc<dyn Broker>,
    clock: Arc<ManualClock>,
) {
    clock.set(Timestamp::from_millis(DAY + 10 * HOUR + 30 * MINUTE));
    start_up(&b, &clock).await;
    clock.set(Timestamp::from_millis(DAY + 12 * HOUR + 10 * MINUTE));
    start_up(&b, &clock).await;
    let jobs = scheduled_jobs(&b).await;
    assert_eq!(jobs.len(), 1, "node A caught up the 12:00 tick: {jobs:?}");
    assert_eq!(jobs[0].unique_key, Some(tick_key(12)));

    // Node B, late: its record of the 11:00 tick lands now.
    schedule::record_tick(&*b, &hourly(), Timestamp::from_millis(DAY + 11 * HOUR)).await;
    purge_all(&b).await;

    clock.set(Timestamp::from_millis(DAY + 12 * HOUR + 30 * MINUTE));
    start_up(&b, &clock).await;
    let jobs = scheduled_jobs(&b).await;
    assert!(
        jobs.is_empty(),
        "the 12:00 tick ran already; a late record of 11:00 must not make it missed: {jobs:?}"
    );
}
