//! The JSON shapes the HTTP API and the CLI's `--json` output add around jobs and events.
//!
//! A [`Job`] and an [`Event`] serialize as clients see them already (stable field names, RFC
//! 3339 times through `hopper_workers::time::Timestamp`, the engine's bookkeeping left out),
//! so they go on the wire as they are, and so does a page of them
//! (`hopper_workers::broker::JobPage`). This module owns only what is shown *with* a job: its
//! chain's steps and its history; a brief page (a list without payloads and results); and the
//! queue listing.

use hopper_workers::broker::{JobPage, QueueStats};
use hopper_workers::event::Event;
use hopper_workers::job::{Job, JobId, JobState};
use serde::Serialize;
use serde_json::Value;

use crate::service::JobDetail;
use crate::service::waiting::Waiting;

/// `page` without its jobs' `payload` and `result`: what a screen listing jobs needs (the
/// dashboard's table), without downloading what a job carries, which may be a megabyte a job.
pub fn brief(page: &JobPage) -> serde_json::Result<Value> {
    let mut out = serde_json::to_value(page)?;
    if let Some(jobs) = out.get_mut("jobs").and_then(Value::as_array_mut) {
        for job in jobs.iter_mut().filter_map(Value::as_object_mut) {
            job.remove("payload");
            job.remove("result");
        }
    }
    Ok(out)
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
    pub job: Job,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepView>,
}

impl JobWithSteps {
    pub fn new(job: Job, steps: &[Job]) -> Self {
        Self {
            job,
            steps: steps_of(steps),
        }
    }
}

/// A job with its history (and its chain's steps), as `GET /v1/jobs/{id}` and
/// `hopper job ID --json` show it.
#[derive(Clone, Debug, Serialize)]
pub struct JobWithHistory {
    #[serde(flatten)]
    pub job: Job,
    pub history: Vec<Event>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepView>,
    /// Why the job is not running yet; null when it runs or is finished.
    pub waiting: Option<Waiting>,
}

impl From<JobDetail> for JobWithHistory {
    fn from(d: JobDetail) -> Self {
        Self {
            job: d.job,
            history: d.history,
            steps: steps_of(&d.steps),
            waiting: d.waiting,
        }
    }
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
        .queue_names()
        .chain(config.queues.iter().map(|q| q.name.as_str()));
    for name in configured {
        if !stats.iter().any(|s| s.queue == name) {
            stats.push(QueueStats {
                queue: name.to_owned(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use hopper_workers::broker::JobPage;
    use hopper_workers::event::EventType;
    use hopper_workers::job::ChainLink;
    use serde_json::json;

    /// As the `JobView` and `EventView` mirrors this module had before jobs and events carried
    /// `Timestamp`s printed them.
    const DETAIL: &str = concat!(
        r#"{"id":"j1","queue":"q","kind":"k","payload":{"a":1},"priority":5,"#,
        r#""state":"succeeded","run_at":"2030-01-01T00:00:00.000Z","attempt":2,"max_retries":3,"#,
        r#""timeout_ms":5000,"interruptions":1,"progress":100,"progress_message":"done","#,
        r#""result":{"ok":true},"last_error":"boom","unique_key":"u","#,
        r#""lease_until":"2030-01-01T00:00:00.250Z","created_at":"2029-12-31T23:59:59.000Z","#,
        r#""started_at":"2030-01-01T00:00:00.001Z","finished_at":"2030-01-01T00:00:00.999Z","#,
        r#""chain":{"id":"j1","index":0,"next":"j2"},"history":[{"id":"e1","#,
        r#""type":"job.progress","job_id":"j1","queue":"q","kind":"k","#,
        r#""at":"2030-01-01T00:00:00.000Z","attempt":2,"progress":50,"message":"half"}],"#,
        r#""steps":[{"id":"j1","index":0,"kind":"k","state":"succeeded","last_error":"boom"},"#,
        r#"{"id":"j2","index":0,"kind":"k","state":"succeeded","last_error":"boom"}],"#,
        r#""waiting":null}"#,
    );
    const PAGE: &str = concat!(
        r#"{"jobs":[{"id":"j2","queue":"q","kind":"k","payload":{"a":1},"priority":5,"#,
        r#""state":"succeeded","run_at":"2030-01-01T00:00:00.000Z","attempt":2,"max_retries":3,"#,
        r#""timeout_ms":null,"interruptions":1,"progress":100,"progress_message":"done","#,
        r#""result":null,"last_error":"boom","unique_key":"u","lease_until":null,"#,
        r#""created_at":"2029-12-31T23:59:59.000Z","started_at":null,"finished_at":null}],"#,
        r#""next_cursor":null}"#,
    );

    fn job(id: &str) -> Job {
        serde_json::from_value(json!({
            "id": id, "queue": "q", "kind": "k", "payload": {"a": 1}, "priority": 5,
            "state": "succeeded", "run_at": 1_893_456_000_000_i64, "attempt": 2,
            "max_retries": 3, "timeout_ms": 5000, "interruptions": 1,
            "interruption_streak": 1, "lease_token": 7, "lease_until": 1_893_456_000_250_i64,
            "progress": 100, "progress_message": "done", "result": {"ok": true},
            "last_error": "boom", "unique_key": "u", "created_at": 1_893_455_999_000_i64,
            "started_at": 1_893_456_000_001_i64, "finished_at": 1_893_456_000_999_i64,
        }))
        .expect("a job")
    }

    /// What clients see is pinned here, byte for byte: field names, order, RFC 3339 with
    /// milliseconds, and which fields are left out.
    #[test]
    fn the_wire_shape_of_jobs_and_events_is_stable() {
        let mut first = job("j1");
        first.chain = Some(ChainLink {
            id: JobId::from("j1"),
            index: 0,
            next: Some(JobId::from("j2")),
        });
        let mut bare = job("j2");
        bare.lease_until = None;
        bare.started_at = None;
        bare.finished_at = None;
        bare.timeout_ms = None;
        bare.result = None;
        let event = Event {
            id: "e1".into(),
            kind_of_event: EventType::Progress,
            job_id: JobId::from("j1"),
            queue: "q".into(),
            kind: "k".into(),
            at: first.run_at,
            attempt: 2,
            progress: Some(50),
            message: Some("half".into()),
            result: None,
            error: None,
        };
        let detail = JobDetail {
            job: first.clone(),
            history: vec![event],
            steps: vec![first, bare.clone()],
            waiting: None,
        };
        let shown = serde_json::to_string(&JobWithHistory::from(detail)).expect("json");
        assert_eq!(shown, DETAIL);
        let page = JobPage {
            jobs: vec![bare],
            next_cursor: None,
        };
        assert_eq!(serde_json::to_string(&page).expect("json"), PAGE);
    }
}
