//! The acknowledger: completions and progress reports go to the broker in batches, one
//! call for whatever has accumulated, retried while the broker is unreachable.

use super::*;

/// Writes completions in batches: whatever has accumulated since the last write goes in one
/// call. A broker that is down is retried with backoff, never dropping a completion: a
/// completion lost here would make the job run again after its lease expires. A batch that
/// keeps failing for another reason is written one completion at a time, so one bad entry
/// cannot hold back the others.
pub(super) async fn acknowledge(
    broker: Arc<dyn Broker>,
    mut rx: mpsc::UnboundedReceiver<Finish>,
    handle: PoolHandle,
) {
    const MAX_BATCH: usize = 512;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        if !write_completions(&*broker, &batch).await {
            for one in batch.chunks(1) {
                if !write_completions(&*broker, one).await {
                    error!(
                        job = %one[0].lease.job_id,
                        "completion could not be written; the job will run again after its lease"
                    );
                }
            }
        }
        for f in &batch {
            handle.remove(&f.lease);
        }
    }
}

/// Writes one batch of completions, retrying while the broker is unavailable (for as long as
/// it takes) and up to three times on other errors. False when it gave up.
pub(super) async fn write_completions(broker: &dyn Broker, batch: &[Finish]) -> bool {
    let mut backoff = Duration::from_millis(50);
    let mut failures = 0;
    loop {
        match broker.finish(batch.to_vec()).await {
            Ok(results) => {
                for (f, r) in batch.iter().zip(results) {
                    match r {
                        Ok(()) => {}
                        Err(BrokerError::LeaseLost(_)) => warn!(
                            job = %f.lease.job_id,
                            token = f.lease.token,
                            "completion refused: stale lease token (another attempt owns the job)"
                        ),
                        Err(other) => {
                            warn!(job = %f.lease.job_id, error = %other, "completion failed");
                        }
                    }
                }
                return true;
            }
            Err(e) => {
                if !matches!(e, BrokerError::Unavailable(_)) {
                    failures += 1;
                    if failures >= 3 {
                        warn!(error = %e, jobs = batch.len(), "writing completions keeps failing");
                        return false;
                    }
                }
                warn!(error = %e, jobs = batch.len(), "writing completions failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Writes progress reports, keeping only the latest per job and writing at most ten times a
/// second, so a chatty handler cannot flood the broker.
pub(super) async fn write_progress(
    broker: Arc<dyn Broker>,
    mut rx: mpsc::UnboundedReceiver<ProgressUpdate>,
    stop: CancellationToken,
) {
    let mut pending: HashMap<JobId, ProgressUpdate> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            u = rx.recv() => match u {
                Some(u) => { pending.insert(u.lease.job_id.clone(), u); }
                None => break,
            },
            _ = tick.tick(), if !pending.is_empty() => {
                for (_, u) in pending.drain() {
                    if let Err(e) = broker.progress(&u.lease, u.percent, u.message).await {
                        debug!(job = %u.lease.job_id, error = %e, "progress not written");
                    }
                }
            }
        }
    }
}
