//! The wire shapes of jobs and events, shared by the HTTP API and the CLI's `--json` output.
//!
//! The engine stores times as milliseconds since the epoch; users read RFC 3339. These views
//! render every timestamp as an RFC 3339 string with milliseconds (`2030-01-01T00:00:00.000Z`)
//! and otherwise keep the engine's field names, which are stable wire names already.

use hopper_workers::broker::QueueStats;
use hopper_workers::event::{Event, EventType};
use hopper_workers::job::{ChainLink, Job, JobId, JobState, Millis};
use hopper_workers::time::Timestamp;
use serde::Serialize;

use crate::service::JobDetail;
use serde_json::Value;

/// A job as the API and `--json` show it.
#[derive(Clone, Debug, Serialize)]
pub struct JobView {
    pub id: JobId,
    pub queue: String,
    pub kind: String,
    pub payload: Value,
    pub priority: u8,
    pub state: JobState,
    pub run_at: String,
    pub attempt: u32,
    pub max_retries: u32,
    pub timeout_ms: Option<u64>,
    pub interruptions: u32,
    pub progress: u8,
    pub progress_message: Option<String>,
    pub result: Option<Value>,
    pub last_error: Option<String>,
    pub unique_key: Option<String>,
    pub lease_until: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// The job's place in its chain, if it is a step of one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain: Option<ChainLink>,
}

impl From<&Job> for JobView {
    fn from(j: &Job) -> Self {
        Self {
            id: j.id.clone(),
            queue: j.queue.clone(),
            kind: j.kind.clone(),
            payload: j.payload.clone(),
            priority: j.priority,
            state: j.state,
            run_at: rfc3339(j.run_at),
            attempt: j.attempt,
            max_retries: j.max_retries,
            timeout_ms: j.timeout_ms,
            interruptions: j.interruptions,
            progress: j.progress,
            progress_message: j.progress_message.clone(),
            result: j.result.clone(),
            last_error: j.last_error.clone(),
            unique_key: j.unique_key.clone(),
            lease_until: j.lease_until.map(rfc3339),
            created_at: rfc3339(j.created_at),
            started_at: j.started_at.map(rfc3339),
            finished_at: j.finished_at.map(rfc3339),
            chain: j.chain.clone(),
        }
    }
}

/// One step of a chain, as a job's `steps` list shows it.
#[derive(Clone, Debug, Serialize)]
pub struct StepView {
    pub id: JobId,
    pub index: u32,
    pub kind: String,
    pub state: JobState,
    pub last_error: Option<String>,
}

fn steps_of(steps: &[Job]) -> Vec<StepView> {
    steps
        .iter()
        .map(|j| StepView {
            id: j.id.clone(),
            index: j.chain.as_ref().map_or(0, |c| c.index),
            kind: j.kind.clone(),
            state: j.state,
            last_error: j.last_error.clone(),
        })
        .collect()
}

/// An enqueued job, with every step of its chain when it starts one (`POST /v1/jobs`).
#[derive(Clone, Debug, Serialize)]
pub struct JobWithSteps {
    #[serde(flatten)]
    pub job: JobView,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepView>,
}

impl JobWithSteps {
    pub fn new(job: &Job, steps: &[Job]) -> Self {
        Self {
            job: job.into(),
            steps: steps_of(steps),
        }
    }
}

/// A job with its history (and its chain's steps), as `GET /v1/jobs/{id}` and
/// `hopper job ID --json` show it.
#[derive(Clone, Debug, Serialize)]
pub struct JobWithHistory {
    #[serde(flatten)]
    pub job: JobView,
    pub history: Vec<EventView>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepView>,
}

impl From<&JobDetail> for JobWithHistory {
    fn from(d: &JobDetail) -> Self {
        Self {
            job: (&d.job).into(),
            history: d.history.iter().map(EventView::from).collect(),
            steps: steps_of(&d.steps),
        }
    }
}

/// An event as the API and `--json` show it (DESIGN §5).
#[derive(Clone, Debug, Serialize)]
pub struct EventView {
    pub id: String,
    #[serde(rename = "type")]
    pub kind_of_event: EventType,
    pub job_id: JobId,
    pub queue: String,
    pub kind: String,
    pub at: String,
    pub attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<&Event> for EventView {
    fn from(e: &Event) -> Self {
        Self {
            id: e.id.clone(),
            kind_of_event: e.kind_of_event,
            job_id: e.job_id.clone(),
            queue: e.queue.clone(),
            kind: e.kind.clone(),
            at: rfc3339(e.at),
            attempt: e.attempt,
            progress: e.progress,
            message: e.message.clone(),
            result: e.result.clone(),
            error: e.error.clone(),
        }
    }
}

/// A page of jobs.
#[derive(Clone, Debug, Serialize)]
pub struct JobPageView {
    pub jobs: Vec<JobView>,
    pub next_cursor: Option<String>,
}

/// Adds the queues the config names (served or declared) that hold no jobs yet, and takes
/// `paused` from the config, so a listing shows every queue an operator expects. Sorted by
/// name.
pub fn merge_configured_queues(
    mut stats: Vec<QueueStats>,
    config: &crate::config::Config,
) -> Vec<QueueStats> {
    let configured = config
        .worker
        .queues
        .iter()
        .chain(config.queues.iter().map(|q| &q.name));
    for name in configured {
        if !stats.iter().any(|s| &s.queue == name) {
            stats.push(QueueStats {
                queue: name.clone(),
                ..QueueStats::default()
            });
        }
    }
    for s in &mut stats {
        if let Some(q) = config.queue(&s.queue) {
            s.paused |= q.paused;
        }
    }
    stats.sort_by(|a, b| a.queue.cmp(&b.queue));
    stats
}

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: Millis) -> String {
    Timestamp::from_millis(ms).to_rfc3339()
}
