//! The acknowledger: completions and progress reports go to the broker in batches, one
//! call for whatever has accumulated, retried while the broker is unreachable.
//!
//! Progress is coalesced: a handler may report as often as it likes (a send on a channel,
//! never a wait), but each job's reports reach the broker at most once per
//! [`PROGRESS_EVERY`] (so at most ten `job.progress` events a second per job), each time the
//! latest one. The last report before a job's state changes is never dropped: before the
//! acknowledger writes a batch of completions, it asks the progress writer to flush those
//! jobs' pending reports and waits for it, so the final report lands in the history right
//! before the job's end, not after it (where the broker would refuse it as a stale lease).

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
    flush: mpsc::UnboundedSender<Flush>,
    unwritten: Arc<AtomicUsize>,
) {
    const MAX_BATCH: usize = 512;
    let live = handle.liveness();
    loop {
        live.acknowledger_beat();
        // Bounded, so an idle acknowledger still goes round (and a watchdog sees it alive).
        let first = match tokio::time::timeout(BEAT, rx.recv()).await {
            Err(_idle) => continue,
            Ok(None) => break,
            Ok(Some(f)) => f,
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        // The jobs' last progress first. A handler sends its reports before its completion,
        // so with none unwritten there is nothing to wait for: most jobs report nothing, and
        // their completions do not pay the round trip. A progress writer that is gone has
        // nothing to flush.
        if unwritten.load(Ordering::SeqCst) > 0 {
            let (done, flushed) = oneshot::channel();
            let jobs = batch.iter().map(|f| f.lease.job_id.clone()).collect();
            if flush.send(Flush { jobs, done }).is_ok() {
                let _ = flushed.await;
            }
        }
        if !write_completions(&*broker, &batch, live).await {
            for one in batch.chunks(1) {
                if !write_completions(&*broker, one, live).await {
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
        live.finished(batch.len());
    }
}

/// Writes one batch of completions, retrying while the broker is unavailable (for as long as
/// it takes) and up to three times on other errors. False when it gave up. Each try counts
/// as a round of the acknowledger: retrying against a broker that is down is not a stall.
pub(super) async fn write_completions(
    broker: &dyn Broker,
    batch: &[Finish],
    live: &Liveness,
) -> bool {
    let mut backoff = Duration::from_millis(50);
    let mut failures = 0;
    loop {
        live.acknowledger_beat();
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

/// How often each job's latest progress report is written, at most.
pub(super) const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// The acknowledger's request to write the pending progress of `jobs` now, answered on
/// `done` once written.
#[derive(Debug)]
pub(super) struct Flush {
    jobs: Vec<JobId>,
    done: oneshot::Sender<()>,
}

/// Writes progress reports, keeping only the latest per job and writing each job's at most
/// once per [`PROGRESS_EVERY`], so a chatty handler cannot flood the broker or the event log;
/// flushes a job's pending report when the acknowledger is about to end its attempt.
///
/// It runs until the acknowledger has gone (the flush channel closed), not until a stop
/// token: the acknowledger is the last to need it, for the completions it still writes
/// during shutdown.
pub(super) async fn write_progress(
    broker: Arc<dyn Broker>,
    mut rx: mpsc::UnboundedReceiver<ProgressUpdate>,
    mut flushes: mpsc::UnboundedReceiver<Flush>,
    unwritten: Arc<AtomicUsize>,
) {
    // A report leaves the count when it is written or superseded by a later one.
    let done_with = |n: usize| {
        unwritten.fetch_sub(n, Ordering::SeqCst);
    };
    let mut pending: HashMap<JobId, ProgressUpdate> = HashMap::new();
    let mut reports_open = true;
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // Flushes first: a completion waits on each.
            biased;
            f = flushes.recv() => {
                let Some(Flush { jobs, done }) = f else { break };
                // Every report a handler made before returning was sent before its
                // completion, hence before this flush: take them all in first.
                while let Ok(u) = rx.try_recv() {
                    if pending.insert(u.lease.job_id.clone(), u).is_some() {
                        done_with(1);
                    }
                }
                for id in &jobs {
                    if let Some(u) = pending.remove(id) {
                        write_one(&*broker, u).await;
                        done_with(1);
                    }
                }
                let _ = done.send(());
            }
            u = rx.recv(), if reports_open => match u {
                Some(u) => {
                    if pending.insert(u.lease.job_id.clone(), u).is_some() {
                        done_with(1);
                    }
                }
                None => reports_open = false,
            },
            _ = tick.tick(), if !pending.is_empty() => {
                for (_, u) in pending.drain() {
                    write_one(&*broker, u).await;
                    done_with(1);
                }
            }
        }
    }
}

async fn write_one(broker: &dyn Broker, u: ProgressUpdate) {
    if let Err(e) = broker.progress(&u.lease, u.percent, u.message).await {
        debug!(job = %u.lease.job_id, error = %e, "progress not written");
    }
}
