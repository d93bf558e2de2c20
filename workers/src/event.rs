//! Events: the stream of what happened to jobs (DESIGN §5).
//!
//! Brokers append an event in the same transaction (or script) as every state change and
//! progress update, to a bounded durable log; `hopper job ID` reads a job's history from it and
//! the WebSocket stream resumes from it. The job record is the truth; events are the story.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::job::JobId;
use crate::time::Timestamp;

/// What happened. The wire names are stable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "job.enqueued")]
    Enqueued,
    #[serde(rename = "job.started")]
    Started,
    #[serde(rename = "job.progress")]
    Progress,
    #[serde(rename = "job.succeeded")]
    Succeeded,
    #[serde(rename = "job.retrying")]
    Retrying,
    #[serde(rename = "job.dead")]
    Dead,
    #[serde(rename = "job.cancelled")]
    Cancelled,
    /// A running job whose lease expired (its worker died): counted in `interruptions`.
    #[serde(rename = "job.interrupted")]
    Interrupted,
    /// A running job its worker handed back at shutdown: queued again at once, neither an
    /// attempt nor an interruption.
    #[serde(rename = "job.released")]
    Released,
}

impl EventType {
    /// Every type.
    pub const ALL: [EventType; 9] = [
        EventType::Enqueued,
        EventType::Started,
        EventType::Progress,
        EventType::Succeeded,
        EventType::Retrying,
        EventType::Dead,
        EventType::Cancelled,
        EventType::Interrupted,
        EventType::Released,
    ];

    /// The stable wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Enqueued => "job.enqueued",
            EventType::Started => "job.started",
            EventType::Progress => "job.progress",
            EventType::Succeeded => "job.succeeded",
            EventType::Retrying => "job.retrying",
            EventType::Dead => "job.dead",
            EventType::Cancelled => "job.cancelled",
            EventType::Interrupted => "job.interrupted",
            EventType::Released => "job.released",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// One event as stored and as streamed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the log; opaque to clients, ordered within a broker.
    pub id: String,
    #[serde(rename = "type")]
    pub kind_of_event: EventType,
    pub job_id: JobId,
    pub queue: String,
    pub kind: String,
    /// When it happened; RFC 3339 on the wire.
    pub at: Timestamp,
    pub attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub progress: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

/// The event-specific fields of an event, before the broker gives it an id and a position.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventData {
    pub progress: Option<u8>,
    pub message: Option<String>,
    pub result: Option<Value>,
    pub error: Option<String>,
}
