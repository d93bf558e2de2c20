//! One attempt: finds the handler (a kind without one is `unserved`'s), runs it under its
//! timeout with panics caught, and turns what it returned into the [`Outcome`] the broker
//! records (retry policy included). Each attempt's end is counted here (the pool's kept
//! [`crate::metrics::JobMeters`] of the job's queue and kind), with its run and pickup times: this is where the
//! outcome is decided and the job's queue and kind are still at hand (the acknowledger sees
//! only leases). Cancels are counted by whoever cancels (the API), not here, so that a cancel
//! is counted once whether or not a handler was running.

use super::*;
use crate::job::{MAX_PAYLOAD_DEPTH, nests_deeper_than};

/// Runs one attempt and decides its outcome. `None` when there is nothing to write (the job
/// was cancelled or its lease lost meanwhile).
pub(super) async fn run_job(shared: &Shared, job: Job) -> Option<Finish> {
    let meters = shared.meters.of(&job.queue, &job.kind);
    let Some(handler) = shared.registry.get(&job.kind).cloned() else {
        let outcome = unserved(&shared.config, &job, shared.clock.now());
        if matches!(outcome, Outcome::Dead { .. }) {
            meters.finished(meter::Outcome::Dead);
        }
        return Some(Finish {
            lease: job.lease(),
            outcome,
        });
    };
    let token = CancellationToken::new();
    let reason = Arc::new(AtomicU8::new(StopReason::None as u8));
    let lease = job.lease();
    // On this node's clock (the fetch set it from the time the fetch was sent).
    let lease_until = job
        .lease_until
        .unwrap_or_else(|| shared.clock.now() + shared.config.lease);
    shared.handle.insert(Running {
        lease: lease.clone(),
        lease_until,
        token: token.clone(),
        reason: reason.clone(),
        finishing: false,
    });
    // Pickup is how long the job waited while it could run, from its `run_at`: when it became
    // due for its first attempt, a retry, a snooze's end or a `retry` of the dead. A rescued
    // job keeps the `run_at` of before (its place in line), so the time since would add the
    // dead attempt's run and the lease's expiry, seconds no job waited: its attempts are not
    // recorded until one ends normally (which ends the streak).
    if job.interruption_streak == 0 {
        meters.picked_up(shared.clock.now().since(job.run_at));
    }
    let job = Arc::new(job);
    let started = Instant::now();
    let result = execute(shared, handler, job.clone(), token).await;
    meters.ran(started.elapsed());
    // Until the acknowledger has written the outcome, the lease stays heartbeated.
    shared.handle.finishing(&lease);

    let now = shared.clock.now();
    let outcome = match result {
        Execution::Stopped => match StopReason::from_u8(reason.load(Ordering::SeqCst)) {
            // Counted as interrupted below, with the other outcomes.
            StopReason::Shutdown => Outcome::Released {
                reason: "worker shutting down".into(),
            },
            // Cancelled: the broker already says so. Lease lost: another attempt owns it.
            // Lease expired: another node may rescue and run the job from now on, so this
            // attempt ends nothing; the job runs again after a rescue. Neither is counted
            // here: the rescue that ends such an attempt counts it (`leases::rescue`), the
            // same whether this node lives on or was killed.
            _ => {
                debug!(job = %job.id, "attempt stopped");
                shared.handle.remove(&lease);
                return None;
            }
        },
        // A result a broker could not read back would make the job unreadable: dead instead
        // (a next run would answer the same), saying why.
        Execution::Done(Ok(result)) if nests_deeper_than(&result, MAX_PAYLOAD_DEPTH) => {
            Outcome::Dead {
                error: format!(
                    "the handler's result nests more than {MAX_PAYLOAD_DEPTH} levels of objects \
                     and arrays, more than can be stored and read back"
                ),
            }
        }
        Execution::Done(Ok(result)) => Outcome::Succeeded { result },
        Execution::Done(Err(JobError::Permanent { message })) => Outcome::Dead { error: message },
        Execution::Done(Err(JobError::Snooze(d))) => Outcome::Snooze {
            at: now + d,
            reason: None,
        },
        Execution::Done(Err(JobError::Retryable {
            message,
            retry_after,
        })) => failed(shared, &job, now, message, retry_after),
    };
    match &outcome {
        Outcome::Retry { at, error } => info!(%error, retry_at = %at, "attempt failed; retrying"),
        Outcome::Dead { error } => warn!(%error, "attempt failed; the job is dead"),
        _ => {}
    }
    let counted = match &outcome {
        Outcome::Succeeded { .. } => Some(meter::Outcome::Succeeded),
        Outcome::Retry { .. } => Some(meter::Outcome::Retrying),
        Outcome::Dead { .. } => Some(meter::Outcome::Dead),
        Outcome::Released { .. } => Some(meter::Outcome::Interrupted),
        Outcome::Snooze { .. } => None,
    };
    if let Some(o) = counted {
        meters.finished(o);
    }
    Some(Finish { lease, outcome })
}

/// A failed attempt: retry after the backoff while retries are left, else dead.
pub(super) fn failed(
    shared: &Shared,
    job: &Job,
    now: Timestamp,
    error: String,
    retry_after: Option<Duration>,
) -> Outcome {
    if job.attempt > job.max_retries {
        return Outcome::Dead { error };
    }
    let wait = shared.config.retry.wait(job.attempt, retry_after);
    Outcome::Retry {
        at: now + wait,
        error,
    }
}

/// How running a handler ended.
pub(super) enum Execution {
    Done(Result<Value, JobError>),
    /// Told to stop (cancel, lost lease, hard shutdown) before it finished.
    Stopped,
}

/// Runs the handler under its timeout, catching panics, until it returns or is told to stop.
pub(super) async fn execute(
    shared: &Shared,
    handler: Arc<dyn Handler>,
    job: Arc<Job>,
    token: CancellationToken,
) -> Execution {
    let timeout = job
        .timeout_ms
        .map(Duration::from_millis)
        .or_else(|| handler.timeout())
        .unwrap_or(shared.config.job_timeout);
    let cx = JobContext::new(job, token.clone(), Some(shared.progress_tx.clone()))
        .counting_reports(shared.unwritten.clone())
        .saving_checkpoints(shared.broker.clone());
    let run = AssertUnwindSafe(handler.run(cx)).catch_unwind();
    tokio::select! {
        // A handler that honours the token returns promptly by itself; one that does not is
        // dropped here, which ends it at its next await point.
        () = token.cancelled() => Execution::Stopped,
        r = tokio::time::timeout(timeout, run) => match r {
            Err(_) => Execution::Done(Err(JobError::retryable(format!(
                "timed out after {}",
                humantime::format_duration(timeout)
            )))),
            Ok(Err(panic)) => Execution::Done(Err(JobError::retryable(format!(
                "handler panicked: {}",
                panic_message(panic.as_ref())
            )))),
            Ok(Ok(result)) => {
                if token.is_cancelled() {
                    Execution::Stopped
                } else {
                    Execution::Done(result)
                }
            }
        },
    }
}

pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}
