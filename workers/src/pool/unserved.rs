//! Jobs of a kind this pool has no handler for: put off for another node that may serve the
//! kind (a rolling deploy, a feature left out of this build), saying so in the job's
//! `last_error`, and dead once none has served it for `unknown_kind_grace`.
//!
//! The time a job was first put off travels in that `last_error`
//! (`no worker serves kind K (since T)`), so the grace needs no column of its own and
//! outlives restarts, and an operator reading the job sees how long it has waited. Any other
//! `last_error` (a retried job's old failure, the dead message below) starts the count anew.
//! This module does not run handlers (`execute`) nor write outcomes (`writes`).

use super::*;

/// How long a job of a kind this worker does not know waits before it is offered again.
pub(super) const NO_HANDLER_SNOOZE: Duration = Duration::from_secs(5);

const SERVES: &str = "no worker serves kind ";

/// What to do with a fetched job whose kind this pool does not serve, at `now`: snooze it
/// (not an attempt) with the reason, or, past the grace, bury it with the reason.
pub(super) fn unserved(config: &PoolConfig, job: &Job, now: Timestamp) -> Outcome {
    let first = unserved_since(job);
    let since = first.unwrap_or(now);
    let grace = config.unknown_kind_grace;
    if now.since(since) >= grace {
        let error = format!(
            "no worker served kind {} from {since} to {now} (unknown_kind_grace {})",
            job.kind,
            humantime::format_duration(grace)
        );
        warn!(job = %job.id, kind = %job.kind, "{error}: the job is dead");
        return Outcome::Dead { error };
    }
    if first.is_none() {
        warn!(
            job = %job.id,
            kind = %job.kind,
            "no handler for this kind here; snoozing the job until a worker serves it"
        );
    }
    Outcome::Snooze {
        at: now + NO_HANDLER_SNOOZE,
        reason: Some(format!("{SERVES}{} (since {since})", job.kind)),
    }
}

/// When the job was first put off for want of a handler, as its `last_error` says; `None`
/// for a job that was not (or whose later failure replaced that `last_error`). "Why is my job
/// not running" reads it too, to say such a job waits for a worker, not for its `run_at`.
pub fn unserved_since(job: &Job) -> Option<Timestamp> {
    let since = job
        .last_error
        .as_deref()?
        .strip_prefix(SERVES)?
        .strip_prefix(job.kind.as_str())?
        .strip_prefix(" (since ")?
        .strip_suffix(')')?;
    Timestamp::parse(since).ok()
}
