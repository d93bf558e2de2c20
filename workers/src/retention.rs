//! Retention: Hopper's own clean-up, as a job like any other. `hopper.retention` deletes
//! finished jobs past their age and trims the event log; a schedule enqueues it on the
//! maintenance queue once per tick across every node, so its runs show in the history and
//! retry like any job.
//!
//! It lives in the engine beside the diagnostics because it needs nothing but the broker: a
//! node registers it with its broker ([`Retention::new`]), and [`Retention::schedule`] is its
//! schedule. What a kind does with user files (`cleanup.purge`) is `hopper-jobs`' business.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::broker::Broker;
use crate::clock::Clock;
use crate::handler::{JobContext, JobError, JobResult};
use crate::job::{JobState, MAX_PRIORITY};
use crate::kind::Kind;
use crate::schedule::ScheduleSpec;

/// The queue of Hopper's own maintenance jobs; every pool serves it, one job at a time,
/// besides the queues it is configured for.
pub const MAINTENANCE_QUEUE: &str = "hopper.maintenance";

/// Whether a job of `kind` that a client names (a request, a `[[subscription]]`, a
/// `[[schedule]]`) may go on `queue`: Hopper's own kinds (`hopper.*`: an operator running
/// `hopper.retention` now) on [`MAINTENANCE_QUEUE`] only, which every pool serves one job at a
/// time (anywhere else any number of purges could run at once, off their schedule), and no
/// other kind there, as it would hold retention back for as long as it runs.
pub fn client_may_use(queue: &str, kind: &str) -> bool {
    (queue == MAINTENANCE_QUEUE) == is_hoppers_own(kind)
}

/// Whether `kind` is one of Hopper's own (`hopper.*`).
pub fn is_hoppers_own(kind: &str) -> bool {
    kind.starts_with("hopper.")
}

/// The queue of a client's job of `kind` that names none: [`MAINTENANCE_QUEUE`] for Hopper's
/// own kinds, the default queue for the rest.
pub fn queue_for(kind: &str) -> &'static str {
    if is_hoppers_own(kind) {
        MAINTENANCE_QUEUE
    } else {
        crate::job::DEFAULT_QUEUE
    }
}

/// Why [`client_may_use`] refused, for the field `queue`.
pub fn maintenance_refusal(kind: &str) -> String {
    if is_hoppers_own(kind) {
        format!(
            "{kind} is Hopper's own kind: it runs on {MAINTENANCE_QUEUE} only, one job at a time \
             on every node (leave the queue out)"
        )
    } else {
        format!(
            "{MAINTENANCE_QUEUE} is Hopper's own queue (retention runs there, one job at a time \
             on every node): put {kind} on another queue"
        )
    }
}

/// How long finished jobs and events are kept (`[retention]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Succeeded jobs are deleted this long after they finish.
    pub succeeded: Duration,
    /// Dead and cancelled jobs are deleted this long after they finish.
    pub dead: Duration,
    /// The event log keeps this many newest events: in all on SQLite, per queue on Redis.
    pub events: u64,
}

/// `hopper.retention`: applies a [`RetentionPolicy`] to a broker.
#[derive(Debug)]
pub struct Retention {
    broker: Arc<dyn Broker>,
    policy: RetentionPolicy,
    clock: Arc<dyn Clock>,
}

/// The payload of `hopper.retention`: nothing (the policy is the node's config).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionArgs {}

impl Retention {
    pub fn new(broker: Arc<dyn Broker>, policy: RetentionPolicy, clock: Arc<dyn Clock>) -> Self {
        Self {
            broker,
            policy,
            clock,
        }
    }

    /// The schedule that runs it: on `cron` (with seconds), on [`MAINTENANCE_QUEUE`], at the
    /// lowest priority.
    pub fn schedule(cron: &str, max_retries: u32) -> ScheduleSpec {
        ScheduleSpec {
            name: "hopper.retention".to_owned(),
            cron: cron.to_owned(),
            kind: Self::NAME.to_owned(),
            payload: json!({}),
            queue: MAINTENANCE_QUEUE.to_owned(),
            priority: MAX_PRIORITY,
            max_retries,
        }
    }
}

impl Kind for Retention {
    const NAME: &'static str = "hopper.retention";
    type Args = RetentionArgs;

    async fn run(&self, _cx: JobContext, _args: RetentionArgs) -> JobResult {
        let p = &self.policy;
        let now = self.clock.now();
        let succeeded = self
            .broker
            .purge(&[JobState::Succeeded], now - p.succeeded, p.events)
            .await
            .map_err(JobError::retryable)?;
        let dead = self
            .broker
            .purge(
                &[JobState::Dead, JobState::Cancelled],
                now - p.dead,
                p.events,
            )
            .await
            .map_err(JobError::retryable)?;
        if succeeded + dead > 0 {
            tracing::info!(succeeded, dead, "retention purged old jobs");
        }
        Ok(json!({ "succeeded_purged": succeeded, "dead_purged": dead }))
    }
}
