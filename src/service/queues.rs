//! What a queue control (`hopper pause|resume`, `POST /v1/queues/{name}/pause|resume`) tells
//! the operator about the queue it names: how many jobs the broker holds for it and how many
//! worker nodes serve it, and a warning when both are none.
//!
//! A queue may be paused ahead of its first job, so a pause (or resume) of a queue nobody knows
//! is not refused; but it is most often a typo, which would leave the queue the operator meant
//! running while they believe it paused (or paused while they believe it resumed), so the
//! answer says so. Pausing and resuming are the broker's (`Broker::pause`); rendering the
//! answer is each front door's.

use hopper_workers::{Broker, BrokerResult};

/// Who knows a queue: jobs held by the broker, in any state, and live worker nodes serving it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueReach {
    pub jobs: u64,
    pub workers: u64,
}

impl QueueReach {
    /// Reads both from the broker: its queue counts and its registry of worker nodes (those
    /// heard from in the last minute).
    pub async fn of(broker: &dyn Broker, queue: &str) -> BrokerResult<Self> {
        let jobs = broker
            .queues()
            .await?
            .iter()
            .find(|s| s.queue == queue)
            .map_or(0, |s| s.counts.total());
        let workers = broker
            .nodes()
            .await?
            .iter()
            .filter(|n| n.queue(queue).is_some())
            .count();
        Ok(Self {
            jobs,
            workers: u64::try_from(workers).unwrap_or(u64::MAX),
        })
    }

    /// The warning a pause or resume (`done`: "paused", "resumed") answers when who knows the
    /// queue cannot be counted: the change is stored all the same, so the request succeeded.
    pub fn uncounted_warning(queue: &str, done: &str) -> String {
        format!(
            "queue {queue:?} {done}, but its jobs and workers cannot be counted now to check the \
             name (see the log)"
        )
    }

    /// The warning a pause of `queue` answers when no job and no worker knows the queue.
    pub fn pause_warning(&self, queue: &str) -> Option<String> {
        self.unknown(
            queue,
            "paused all the same (a queue may be paused ahead of its first job)",
        )
    }

    /// The warning a resume of `queue` answers when no job and no worker knows the queue: the
    /// queue the operator meant, if they mistyped it, stays paused.
    pub fn resume_warning(&self, queue: &str) -> Option<String> {
        self.unknown(queue, "resumed all the same")
    }

    fn unknown(&self, queue: &str, done: &str) -> Option<String> {
        (self.jobs == 0 && self.workers == 0).then(|| {
            format!(
                "queue {queue:?} holds no job and no worker serves it: {done}, but check the name"
            )
        })
    }
}
