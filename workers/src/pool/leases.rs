//! Leases: the heartbeat extends every running job's lease in one call and stops handlers
//! whose lease is lost or whose job was cancelled; the expiry watch stops handlers whose lease
//! ran out without a successful heartbeat (the broker was unreachable); the rescuer returns
//! expired leases (of any node) to their queue and counts those attempts `interrupted`.

use super::*;
use crate::broker::Rescued;

/// Extends the leases of every running job, and stops handlers whose job was cancelled or
/// whose lease was lost. A failed heartbeat only logs: [`expire`] stops what it left unrenewed.
pub(super) async fn heartbeat(
    broker: Arc<dyn Broker>,
    handle: PoolHandle,
    clock: Arc<dyn Clock>,
    lease: Duration,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = ticker(every);
    tick.tick().await;
    while ticked(&mut tick, &stop).await {
        let leases = handle.leases();
        if leases.is_empty() {
            continue;
        }
        // The broker extends from its own reading of the time, later than this one, so the
        // deadline recorded here is never later than the real one.
        let sent = clock.now();
        match broker.heartbeat(&leases, lease).await {
            Ok(statuses) => {
                for (l, st) in leases.iter().zip(statuses) {
                    match st {
                        LeaseStatus::Held => handle.extended(l, sent + lease),
                        // A handler that ended since the leases were read has nothing to stop;
                        // its completion meets the same fence and is refused there.
                        LeaseStatus::Cancelled => {
                            if handle.stop(l, StopReason::Cancelled) {
                                info!(job = %l.job_id, "job cancelled: stopped its handler");
                            }
                        }
                        LeaseStatus::Lost => {
                            if handle.stop(l, StopReason::LeaseLost) {
                                meter::leases_lost(1);
                                warn!(job = %l.job_id, "lease lost: stopped its handler");
                            }
                        }
                    }
                }
            }
            Err(e) => {
                meter::heartbeat_failed();
                warn!(error = %e, "heartbeat failed");
            }
        }
    }
}

/// The longest the expiry watch sleeps: deadlines only move later, but a clock may be moved
/// (tests) or jump.
const EXPIRY_CHECK: Duration = Duration::from_millis(250);

/// Stops each handler once its lease's deadline passes with no successful heartbeat since:
/// from then on the broker may give the job to another node (its rescuer runs the moment the
/// deadline passes), and this attempt could not write its result anyway. The handler is
/// cancelled and nothing is written for it; the job runs again after a rescue. A heartbeat
/// that hangs (a stalled connection) cannot delay this: the watch runs on its own.
pub(super) async fn expire(handle: PoolHandle, clock: Arc<dyn Clock>, stop: CancellationToken) {
    loop {
        let now = clock.now();
        for job in handle.expire(now) {
            meter::leases_lost(1);
            warn!(
                %job,
                "lease ran out without a successful heartbeat (broker unreachable?): \
                 stopped its handler; the job will run again after a rescue"
            );
        }
        let wait = handle
            .next_deadline()
            .map_or(EXPIRY_CHECK, |d| d.since(now).min(EXPIRY_CHECK))
            .max(Duration::from_millis(1));
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Returns expired leases (of any node) to their queue, and counts each attempt it ends in
/// `meters`.
pub(super) async fn rescue(
    broker: Arc<dyn Broker>,
    meters: Arc<meter::JobMetrics>,
    max_interruptions: u32,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = ticker(every);
    while ticked(&mut tick, &stop).await {
        match broker.rescue(max_interruptions).await {
            Ok(rescued) if !rescued.is_empty() => {
                info!(jobs = rescued.len(), "rescued jobs whose lease expired");
                count_rescued(&meters, &rescued);
            }
            Ok(_) => {}
            Err(e) => debug!(error = %e, "rescue failed"),
        }
    }
}

/// Counts the attempts a rescue ended: each is counted here and only here, since the node
/// that ran it may be dead (SIGKILL, a crash) and, if it lives on, counts nothing for a lease
/// it lost. `interrupted`, or `dead` for a job the rescue buried as a poison pill. The rescue
/// answers each job's queue, kind and new state: nothing is read back (which cost a round trip
/// per job on Redis, and could see a job that had since run again).
fn count_rescued(meters: &meter::JobMetrics, rescued: &[Rescued]) {
    for r in rescued {
        let outcome = if r.state == crate::job::JobState::Dead {
            meter::Outcome::Dead
        } else {
            meter::Outcome::Interrupted
        };
        meters.of(&r.queue, &r.kind).finished(outcome);
    }
}

/// The timer of a periodic task: every `every` (at least every 10 ms), its first tick at once;
/// a tick missed while the task was busy is taken late, not made up in a burst.
fn ticker(every: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Waits for the next tick: `true` when it came, `false` once `stop` is cancelled first.
async fn ticked(tick: &mut tokio::time::Interval, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = stop.cancelled() => false,
        _ = tick.tick() => true,
    }
}
