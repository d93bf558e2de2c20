//! "Why is my job not running": the one field (`waiting`) that `GET /v1/jobs/{id}` and
//! `hopper job ID` show for a job that is not running yet, with a stable reason code and a
//! sentence for people.
//!
//! Every reason lives here, in [`Reason`] (its code, written out by hand: clients match on
//! it) and in [`explain`], which checks them in order and stops at the first that holds.
//! Adding a reason is a variant, its arm in [`Reason::code`] and its check in [`explain`].
//! The facts come from the broker: the job, its chain, the queue's pause, the registry of
//! worker nodes (`hopper_workers::nodes`), the queue's rate state
//! ([`Broker::rate_held_until`]) and a count of ready jobs. This module does not decide anything
//! about the job; it only reads.

use hopper_workers::job::{Job, JobId, JobState};
use hopper_workers::nodes::WorkerNode;
use hopper_workers::time::Timestamp;
use hopper_workers::{Broker, BrokerError};
use serde::Serialize;

/// Why a job is not running, as a stable code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Reason {
    /// Scheduled or retrying: its `run_at` (a delay, or a retry's backoff) is still ahead.
    RunAt,
    /// A chain step waiting for the step before it to succeed.
    ChainPredecessor,
    /// Its queue is paused: by an operator in the broker (`hopper pause`), or in the config of
    /// every worker node serving it (`[[queue]] paused`).
    QueuePaused,
    /// No worker node has served its queue and kind within the last minute.
    NoWorker,
    /// Every node serving its queue is at that queue's `[[queue]] concurrency` or has no free
    /// slot.
    QueueConcurrency,
    /// Its queue's `[[queue]] rate_limit` allows no further start until `until`.
    QueueRate,
    /// Ready, behind `ahead` ready jobs of its queue of a higher or equal priority.
    Behind,
}

impl Reason {
    /// The code clients match on. Written out, never derived: it outlives deploys.
    pub fn code(self) -> &'static str {
        match self {
            Reason::RunAt => "run_at",
            Reason::ChainPredecessor => "chain_predecessor",
            Reason::QueuePaused => "queue_paused",
            Reason::NoWorker => "no_worker",
            Reason::QueueConcurrency => "queue_concurrency",
            Reason::QueueRate => "queue_rate",
            Reason::Behind => "behind",
        }
    }
}

/// The `waiting` field: why a job that is not running yet waits.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Waiting {
    /// One of the [`Reason`] codes.
    pub reason: &'static str,
    /// The same for people, naming the queue, the time, the step or the count.
    pub message: String,
    /// `run_at`: when it is due; `queue_rate`: when the queue's rate next allows a start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<Timestamp>,
    /// `chain_predecessor`: the step it waits for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predecessor: Option<JobId>,
    /// `behind`: the ready jobs ahead of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ahead: Option<u64>,
}

impl Waiting {
    fn new(reason: Reason, message: String) -> Self {
        Self {
            reason: reason.code(),
            message,
            until: None,
            predecessor: None,
            ahead: None,
        }
    }
}

/// What the asking process's config says of the job's queue.
#[derive(Clone, Copy, Debug, Default)]
pub struct QueueConfig<'a> {
    /// `[[queue]] paused`.
    pub paused: bool,
    /// `[[queue]] rate_limit` as written (`"10/s"`), when set: named in the `queue_rate`
    /// message.
    pub rate: Option<&'a str>,
}

/// Why `job` (with its chain's `steps`, empty for a single job) is not running at `now`, or
/// `None` when it runs or is finished. `here`: what the asking process's config says of the
/// job's queue.
pub async fn explain(
    broker: &dyn Broker,
    job: &Job,
    steps: &[Job],
    here: QueueConfig<'_>,
    now: Timestamp,
) -> Result<Option<Waiting>, BrokerError> {
    let q = &job.queue;
    match job.state {
        JobState::Running | JobState::Succeeded | JobState::Dead | JobState::Cancelled => {
            return Ok(None);
        }
        JobState::Waiting => {
            let index = job.chain.as_ref().map_or(0, |c| c.index);
            let before = steps
                .iter()
                .find(|s| s.chain.as_ref().is_some_and(|c| c.index + 1 == index));
            let mut w = Waiting::new(
                Reason::ChainPredecessor,
                match before {
                    Some(s) => format!(
                        "waiting for step {} of its chain ({}, {}) to succeed; it is {}",
                        s.chain.as_ref().map_or(0, |c| c.index),
                        s.id,
                        s.kind,
                        s.state
                    ),
                    None => "waiting for the step before it in its chain to succeed".into(),
                },
            );
            w.predecessor = before.map(|s| s.id.clone());
            return Ok(Some(w));
        }
        JobState::Scheduled | JobState::Retrying if job.run_at > now => {
            // Put off for want of a handler (`hopper_workers::pool::unserved_since`): its
            // `run_at` is only the next look, a few seconds ahead; what it waits for is a
            // worker that serves its kind.
            if job.state == JobState::Scheduled
                && let Some(since) = hopper_workers::pool::unserved_since(job)
            {
                let nodes = broker.nodes().await?;
                if let Some(mut w) = no_worker(&nodes, job) {
                    w.message = format!(
                        "{}; put off for want of one since {since}, it goes to dead once the \
                         worker's [worker] unknown_kind_grace has passed",
                        w.message
                    );
                    return Ok(Some(w));
                }
            }
            let why = if job.state == JobState::Retrying {
                format!(
                    "retrying after attempt {} failed: due again at {} (backoff)",
                    job.attempt, job.run_at
                )
            } else {
                format!("scheduled: due at {}", job.run_at)
            };
            let mut w = Waiting::new(Reason::RunAt, why);
            w.until = Some(job.run_at);
            return Ok(Some(w));
        }
        // Queued, or due and about to be promoted by the next fetch: ready.
        JobState::Queued | JobState::Scheduled | JobState::Retrying => {}
    }

    if broker.is_paused(q).await? {
        return Ok(Some(Waiting::new(
            Reason::QueuePaused,
            format!("queue {q} is paused (hopper resume {q} lifts it)"),
        )));
    }
    if here.paused {
        return Ok(Some(Waiting::new(
            Reason::QueuePaused,
            format!("queue {q} is paused in this node's config ([[queue]] paused)"),
        )));
    }

    let nodes = broker.nodes().await?;
    if let Some(w) = no_worker(&nodes, job) {
        return Ok(Some(w));
    }
    let serving: Vec<&WorkerNode> = nodes.iter().filter(|n| n.serves(q, &job.kind)).collect();
    if serving.iter().all(|n| n.queue(q).is_some_and(|l| l.paused)) {
        return Ok(Some(Waiting::new(
            Reason::QueuePaused,
            format!(
                "queue {q} is paused in the config ([[queue]] paused) of every worker serving it"
            ),
        )));
    }
    if serving.iter().all(|n| n.full_for(q)) {
        let busy: u64 = serving
            .iter()
            .filter_map(|n| n.queue(q))
            .map(|l| l.busy)
            .sum();
        return Ok(Some(Waiting::new(
            Reason::QueueConcurrency,
            format!(
                "every worker serving queue {q} ({}) is at its concurrency limit for it or has \
                 no free slot; {busy} of its jobs are running",
                serving.len()
            ),
        )));
    }
    // The rate state is the one the last rated fetch stored (any node's): held means the
    // workers are idle for this queue until then, whatever this process's config says.
    if let Some(until) = broker.rate_held_until(q).await? {
        let rate = match here.rate {
            Some(r) => format!(" ({r})"),
            None => String::new(),
        };
        let mut w = Waiting::new(
            Reason::QueueRate,
            format!("queue {q} is at its rate limit{rate}: the next start is allowed at {until}"),
        );
        w.until = Some(until);
        return Ok(Some(w));
    }

    let mut ahead = broker.ready_ahead(q, job.priority).await?;
    if job.state == JobState::Queued {
        // The count includes the job itself.
        ahead = ahead.saturating_sub(1);
    }
    let mut w = Waiting::new(
        Reason::Behind,
        format!(
            "ready: behind {ahead} ready {} of priority {} or more urgent on queue {q}",
            if ahead == 1 { "job" } else { "jobs" },
            job.priority
        ),
    );
    w.ahead = Some(ahead);
    Ok(Some(w))
}

/// `no_worker` when none of `nodes` serves `job`'s queue and kind, naming which is missing.
fn no_worker(nodes: &[WorkerNode], job: &Job) -> Option<Waiting> {
    let q = &job.queue;
    if nodes.iter().any(|n| n.serves(q, &job.kind)) {
        return None;
    }
    let on_queue = nodes.iter().filter(|n| n.queue(q).is_some()).count();
    let message = if on_queue == 0 {
        format!("no worker has served queue {q} in the last minute")
    } else {
        format!(
            "no worker has served kind {} on queue {q} in the last minute ({on_queue} \
             serving the queue lack the kind)",
            job.kind
        )
    };
    Some(Waiting::new(Reason::NoWorker, message))
}
