//! Leases: the heartbeat extends every running job's lease in one call and stops handlers
//! whose lease is lost or whose job was cancelled; the rescuer returns expired leases (of any
//! node) to their queue.

use super::*;

/// Extends the leases of every running job, and stops handlers whose job was cancelled or
/// whose lease was lost.
pub(super) async fn heartbeat(
    broker: Arc<dyn Broker>,
    handle: PoolHandle,
    lease: Duration,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let leases = handle.leases();
        if leases.is_empty() {
            continue;
        }
        match broker.heartbeat(&leases, lease).await {
            Ok(statuses) => {
                for (l, st) in leases.iter().zip(statuses) {
                    match st {
                        LeaseStatus::Held => {}
                        // A handler that ended since the leases were read has nothing to stop;
                        // its completion meets the same fence and is refused there.
                        LeaseStatus::Cancelled => {
                            if handle.stop(l, StopReason::Cancelled) {
                                info!(job = %l.job_id, "job cancelled: stopped its handler");
                            }
                        }
                        LeaseStatus::Lost => {
                            if handle.stop(l, StopReason::LeaseLost) {
                                warn!(job = %l.job_id, "lease lost: stopped its handler");
                            }
                        }
                    }
                }
            }
            Err(e) => warn!(error = %e, "heartbeat failed"),
        }
    }
}

/// Returns expired leases (of any node) to their queue.
pub(super) async fn rescue(
    broker: Arc<dyn Broker>,
    max_interruptions: u32,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        match broker.rescue(max_interruptions).await {
            Ok(ids) if !ids.is_empty() => {
                info!(jobs = ids.len(), "rescued jobs whose lease expired");
            }
            Ok(_) => {}
            Err(e) => debug!(error = %e, "rescue failed"),
        }
    }
}
