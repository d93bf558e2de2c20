//! Jobs of a kind this pool has no handler for: put off for another node that may serve the
//! kind (a rolling deploy, a feature left out of this build), saying so in the job's
//! `last_error`, and dead once none has served it for `unknown_kind_grace`.
//!
//! The time a job was first put off travels in that `last_error`
//! (`no worker serves kind K (since T)`), so the grace needs no column of its own and
//! outlives restarts, and an operator reading the job sees how long it has waited. Any other
//! `last_error` (a retried job's old failure, the dead message below) starts the count anew.
//! This module does not run handlers (`execute`) nor write outcomes (`writes`).

use rand::Rng;

use super::*;

/// How long a job of a kind this worker does not know waits before it is offered again, at
/// least; [`NO_HANDLER_SPREAD`] more at most.
pub(super) const NO_HANDLER_SNOOZE: Duration = Duration::from_secs(5);
/// The random part of a put-off. Without it the job fell due exactly one put-off after the
/// fetch of the node lacking the kind, so on the beat of that node's polling: it took the job
/// back every time, ahead of a node serving the kind that polls on a beat of its own, and the
/// job could wait out the whole `unknown_kind_grace` beside a worker able to run it.
pub(super) const NO_HANDLER_SPREAD: Duration = Duration::from_millis(2500);

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
        at: now + NO_HANDLER_SNOOZE + rand::rng().random_range(Duration::ZERO..=NO_HANDLER_SPREAD),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::NewJob;

    /// A put-off falls anywhere in its spread, not on the beat of the node that made it.
    #[test]
    fn a_put_off_is_spread_so_another_node_gets_its_turn() {
        let config = PoolConfig::default();
        let now = Timestamp::from_millis(1_800_000_000_000);
        let job = NewJob::new("test.unserved", serde_json::json!({})).stored(now);
        let delays: std::collections::BTreeSet<u64> = (0..50)
            .map(|_| match unserved(&config, &job, now) {
                Outcome::Snooze { at, .. } => {
                    let d = at.since(now);
                    assert!(
                        (NO_HANDLER_SNOOZE..=NO_HANDLER_SNOOZE + NO_HANDLER_SPREAD).contains(&d),
                        "{d:?}"
                    );
                    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
                }
                other => panic!("not a put-off: {other:?}"),
            })
            .collect();
        assert!(delays.len() > 10, "put-offs not spread: {delays:?}");
    }
}
