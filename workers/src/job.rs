//! The job model: what a job is, the states it moves through, and the requests that create it.
//!
//! This module owns the data only. Moving a job between states is the broker's job
//! (`crate::broker`), deciding *which* move to make is the pool's (`crate::pool`).
//! Every name here that reaches the wire (state names, JSON fields) is written out by hand so
//! that renaming a Rust item never changes what users and stored jobs see.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::field::FieldError;
use crate::time::Timestamp;

/// Highest (least urgent) priority. 0 is the most urgent.
pub const MAX_PRIORITY: u8 = 9;
/// How a refused priority is explained, wherever it is refused.
pub const PRIORITY_RULE: &str = "must be an integer from 0 (most urgent) to 9";
/// Priority of a job that does not say.
pub const DEFAULT_PRIORITY: u8 = 5;
/// Queue of a job that does not say.
pub const DEFAULT_QUEUE: &str = "default";
/// How deep a payload may nest (objects and arrays within one another). Every broker reads a
/// stored payload back with serde_json, which refuses more than 128 levels: a deeper payload
/// would be stored, then be unreadable, and every fetch of its queue would fail on it. The
/// margin leaves room for what is nested around a payload later (a chain step's `input`).
pub const MAX_PAYLOAD_DEPTH: usize = 100;

/// The longest per-attempt timeout a job may have, in ms: 100 years of 366 days, as far ahead
/// as a job may be delayed. A longer one (`"500000000y"`) overflowed what a record holds, and
/// the job was answered with one timeout and stored with another.
pub const MAX_TIMEOUT_MS: u64 = 100 * 366 * 86_400 * 1000;

/// A job's id: a UUIDv7 string, so ids sort by creation time.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub String);

impl JobId {
    /// A fresh, time-sortable id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for JobId {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

/// Where a job is in its life. See the state diagram in `README.md` and `shared/DESIGN.md` §2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobState {
    /// A chain step waiting for its predecessor to succeed.
    #[serde(rename = "waiting")]
    Waiting,
    /// Enqueued with a run time in the future (a delay, or a snooze).
    #[serde(rename = "scheduled")]
    Scheduled,
    /// Ready to run; fetched by priority, then first in, first out.
    #[serde(rename = "queued")]
    Queued,
    /// Held by a worker under a lease.
    #[serde(rename = "running")]
    Running,
    /// Failed, waiting out its backoff before it is queued again.
    #[serde(rename = "retrying")]
    Retrying,
    /// Finished: the handler returned a result.
    #[serde(rename = "succeeded")]
    Succeeded,
    /// Finished: retries ran out, the failure was permanent, or it was a poison pill.
    #[serde(rename = "dead")]
    Dead,
    /// Finished: cancelled by a user (or because an earlier chain step failed).
    #[serde(rename = "cancelled")]
    Cancelled,
}

impl JobState {
    /// Every state, in the order tables show them.
    pub const ALL: [JobState; 8] = [
        JobState::Queued,
        JobState::Scheduled,
        JobState::Running,
        JobState::Retrying,
        JobState::Dead,
        JobState::Succeeded,
        JobState::Cancelled,
        JobState::Waiting,
    ];

    /// The stable wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Waiting => "waiting",
            JobState::Scheduled => "scheduled",
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Retrying => "retrying",
            JobState::Succeeded => "succeeded",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Parses a wire name; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Final states never change again unless a user retries the job.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Dead | JobState::Cancelled
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request to create a job, already validated (see [`NewJob::validate`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewJob {
    /// Chosen by the caller so a bulk enqueue can return ids without a round-trip.
    pub id: JobId,
    pub queue: String,
    pub kind: String,
    pub payload: Value,
    pub priority: u8,
    /// When the job may first run; `None` means now.
    pub run_at: Option<Timestamp>,
    pub max_retries: u32,
    /// Per-attempt time limit in milliseconds; `None` uses the pool's default.
    pub timeout_ms: Option<u64>,
    /// At most one job with this key exists in its queue; enqueueing a duplicate returns the
    /// first one.
    pub unique_key: Option<String>,
    /// This job's place in a chain, if it is a step of one. Steps after the first are
    /// enqueued `waiting`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<ChainLink>,
}

/// A job's place in a chain: steps run one after the other, each receiving the previous
/// step's result as its `input` (see [`crate::handler::JobContext::input`]).
///
/// A step that ends `dead` or `cancelled` cancels the waiting steps after it; retrying that
/// step puts them back to `waiting`, so the chain resumes. Every step of a chain runs on the
/// chain's queue, which keeps a chain's Redis keys in one Cluster slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainLink {
    /// The chain's id: the id of its first step.
    pub id: JobId,
    /// This step's position, from 0.
    pub index: u32,
    /// The step after this one, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<JobId>,
}

/// Builds the jobs of a chain from its steps, in order: links each to the next and puts every
/// step on the first step's queue. Returns the steps unchanged when there is only one.
pub fn link_chain(mut steps: Vec<NewJob>) -> Vec<NewJob> {
    if steps.len() < 2 {
        return steps;
    }
    let chain_id = steps[0].id.clone();
    let queue = steps[0].queue.clone();
    let nexts: Vec<Option<JobId>> = steps
        .iter()
        .skip(1)
        .map(|s| Some(s.id.clone()))
        .chain(std::iter::once(None))
        .collect();
    for (index, (step, next)) in steps.iter_mut().zip(nexts).enumerate() {
        step.queue.clone_from(&queue);
        step.chain = Some(ChainLink {
            id: chain_id.clone(),
            index: u32::try_from(index).unwrap_or(u32::MAX),
            next,
        });
    }
    steps
}

impl NewJob {
    /// A job of `kind` with `payload` and every other field at its default.
    pub fn new(kind: impl Into<String>, payload: Value) -> Self {
        Self {
            id: JobId::generate(),
            queue: DEFAULT_QUEUE.to_owned(),
            kind: kind.into(),
            payload,
            priority: DEFAULT_PRIORITY,
            run_at: None,
            max_retries: 3,
            timeout_ms: None,
            unique_key: None,
            chain: None,
        }
    }

    /// Sets the queue.
    #[must_use]
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    /// Sets the priority (0 most urgent ..= 9).
    #[must_use]
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the first run time.
    #[must_use]
    pub fn run_at(mut self, at: Timestamp) -> Self {
        self.run_at = Some(at);
        self
    }

    /// Sets how many retries follow a failed first attempt.
    #[must_use]
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Sets the per-attempt timeout.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout_ms = Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// Sets the uniqueness key.
    #[must_use]
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    /// The job as a broker first stores it at `now`: `waiting` when it is a later step of a
    /// chain (it runs when the step before it succeeds), `scheduled` when `run_at` is in the
    /// future, else `queued` (a run time in the past is simply now: it does not jump the
    /// line). This is the one statement of that rule; brokers store what it returns.
    pub fn stored(self, now: Timestamp) -> Job {
        let (state, run_at) = match self.run_at {
            _ if self.chain.as_ref().is_some_and(|c| c.index > 0) => (JobState::Waiting, now),
            Some(at) if at > now => (JobState::Scheduled, at),
            _ => (JobState::Queued, now),
        };
        Job {
            id: self.id,
            queue: self.queue,
            kind: self.kind,
            payload: self.payload,
            priority: self.priority,
            state,
            run_at,
            attempt: 0,
            max_retries: self.max_retries,
            timeout_ms: self.timeout_ms,
            interruptions: 0,
            interruption_streak: 0,
            lease_token: 0,
            progress: 0,
            progress_message: None,
            result: None,
            last_error: None,
            unique_key: self.unique_key,
            lease_until: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            chain: self.chain,
            checkpoint: None,
        }
    }

    /// Checks the fields every broker relies on. Returns the first bad field and why.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_kind(&self.kind)?;
        check_queue(&self.queue)?;
        check_new_queue(&self.queue)?;
        if self.priority > MAX_PRIORITY {
            return Err(FieldError::new("priority", PRIORITY_RULE));
        }
        if !self.payload.is_object() {
            return Err(FieldError::new("payload", "must be a JSON object"));
        }
        if nests_deeper_than(&self.payload, MAX_PAYLOAD_DEPTH) {
            return Err(FieldError::new(
                "payload",
                format!("nests more than {MAX_PAYLOAD_DEPTH} levels of objects and arrays"),
            ));
        }
        if self.max_retries > 1000 {
            return Err(FieldError::new("max_retries", "must be at most 1000"));
        }
        if self.timeout_ms == Some(0) {
            // "500us" is greater than zero, and still no timeout a handler can be given.
            return Err(FieldError::new("timeout", "must be at least 1ms"));
        }
        if self.timeout_ms.is_some_and(|t| t > MAX_TIMEOUT_MS) {
            return Err(FieldError::new("timeout", "must be at most 100 years"));
        }
        if let Some(key) = &self.unique_key
            && (key.is_empty() || key.len() > 256)
        {
            return Err(FieldError::new(
                "unique_key",
                "must be 1 to 256 bytes of UTF-8",
            ));
        }
        Ok(())
    }
}

/// True when `value` has more than `limit` levels of objects and arrays one within another
/// (a scalar has none, `{}` one). It runs for every job enqueued, so it allocates nothing; it
/// recurses at most `limit + 1` calls deep, whatever the value's own depth.
pub fn nests_deeper_than(value: &Value, limit: usize) -> bool {
    /// Whether `v` needs more than `room` levels.
    fn deeper(v: &Value, room: usize) -> bool {
        match v {
            Value::Array(items) => room == 0 || items.iter().any(|c| deeper(c, room - 1)),
            Value::Object(map) => room == 0 || map.values().any(|c| deeper(c, room - 1)),
            _ => false,
        }
    }
    deeper(value, limit)
}

/// The longest job kind, in bytes of UTF-8 (fewer characters when they are not ASCII).
pub const MAX_KIND_BYTES: usize = 128;

/// A job kind, checked for its length: `Err` names the field `kind` and says the rule in bytes.
pub fn check_kind(kind: &str) -> Result<(), FieldError> {
    if kind.is_empty() || kind.len() > MAX_KIND_BYTES {
        return Err(FieldError::byte_length("kind", MAX_KIND_BYTES, kind.len()));
    }
    Ok(())
}

/// A queue name, checked: `Err` names the field `queue` and says the rule.
pub fn check_queue(queue: &str) -> Result<(), FieldError> {
    if valid_name(queue) {
        Ok(())
    } else {
        Err(FieldError::new(
            "queue",
            "must be 1 to 64 characters of letters, digits, '-', '_' or '.'",
        ))
    }
}

/// [`check_queue`], and not only dots: what a queue a job or a pause names anew must be.
/// `/v1/queues/../pause` is `/v1/pause` to most HTTP clients (dot segments are removed from a
/// path): a queue named so could never be paused, resumed or retried over the API, and no job
/// can be in one. Refused for new jobs and pauses only; a queue that has such jobs already
/// is still served, and a pause stored before is still resumed.
pub fn check_new_queue(queue: &str) -> Result<(), FieldError> {
    check_queue(queue)?;
    if queue.bytes().all(|b| b == b'.') {
        return Err(FieldError::new(
            "queue",
            "must not be only dots: `.` and `..` cannot be named in a URL path",
        ));
    }
    Ok(())
}

/// Queue names end up in Redis keys and URLs: keep them to a safe alphabet.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A job as stored, with everything that happened to it so far.
///
/// Its JSON is what the HTTP API and `hopper ... --json` show, so field names and their order
/// are a stable wire shape and times are RFC 3339 ([`Timestamp`]). Two fields are the engine's
/// bookkeeping and have never been shown: `interruption_streak` (the rescue's poison-pill
/// counter) and `lease_token` (the fence of the current attempt, which only the worker holding
/// the lease uses). They are not serialized, and read as 0 when absent; a job read back from
/// its JSON is therefore not fenced to any attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub queue: String,
    pub kind: String,
    pub payload: Value,
    pub priority: u8,
    pub state: JobState,
    /// When the job is (or was) due to run.
    pub run_at: Timestamp,
    /// Handler runs started so far, not counting interrupted ones.
    pub attempt: u32,
    pub max_retries: u32,
    pub timeout_ms: Option<u64>,
    /// Attempts cut short because the worker died (lease expired), in total.
    pub interruptions: u32,
    /// Interruptions since the last attempt that ended normally; drives the poison-pill cut-off.
    #[serde(skip_serializing, default)]
    pub interruption_streak: u32,
    /// Epoch of the current (or last) lease; every write of an attempt must carry it.
    #[serde(skip_serializing, default)]
    pub lease_token: u64,
    /// The last progress reported by the running attempt, 0 to 100 (100 once succeeded).
    pub progress: u8,
    /// The message of that report, if it had one.
    pub progress_message: Option<String>,
    /// What the handler returned, once succeeded.
    pub result: Option<Value>,
    /// Why the last attempt failed (or why the job was cancelled or went dead).
    pub last_error: Option<String>,
    /// At most one job of its queue has this key; a duplicate enqueue returns this job.
    pub unique_key: Option<String>,
    /// When the current lease runs out, while running.
    pub lease_until: Option<Timestamp>,
    /// When the job was enqueued.
    pub created_at: Timestamp,
    /// When its first attempt started.
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    /// This job's place in a chain, if it is a step of one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<ChainLink>,
    /// What an earlier attempt saved with
    /// [`JobContext::save_checkpoint`](crate::JobContext::save_checkpoint) (e.g. which
    /// channels of a notification were delivered), kept across retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Value>,
}

impl Job {
    /// The job as a lease starts its next attempt at `now`: running, attempt + 1, a new lease
    /// token, the lease running until `lease_until`, progress cleared, `started_at` set on its
    /// first start only. This is the rule every broker stores (SQLite's fetch statement,
    /// Redis' fetch.lua); a broker that reads a job back as it was before its lease applies
    /// it here, with the time its store used.
    pub fn begin_attempt(&mut self, now: Timestamp, lease_until: Timestamp) {
        self.state = JobState::Running;
        self.attempt += 1;
        self.lease_token += 1;
        self.lease_until = Some(lease_until);
        self.started_at.get_or_insert(now);
        self.progress = 0;
        self.progress_message = None;
    }

    /// The lease of the current attempt.
    pub fn lease(&self) -> Lease {
        Lease {
            job_id: self.id.clone(),
            queue: self.queue.clone(),
            token: self.lease_token,
        }
    }
}

/// Proof that a worker holds a running job: the job, its queue and the epoch of its attempt.
///
/// The queue travels with the lease so that every write of the attempt (heartbeat, progress,
/// finish) knows where the job lives without a lookup: a Redis broker addresses a job's keys
/// by its queue.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lease {
    pub job_id: JobId,
    pub queue: String,
    pub token: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages say the rule broken: a timeout under a millisecond is not "zero", and
    /// too many retries are told the bound.
    #[test]
    fn limits_are_named_in_their_messages() {
        let job = NewJob::new("k.k", serde_json::json!({})).timeout(Duration::from_micros(500));
        assert_eq!(
            job.validate().expect_err("500us").message,
            "must be at least 1ms"
        );
        let job = NewJob::new("k.k", serde_json::json!({})).max_retries(1001);
        assert_eq!(
            job.validate().expect_err("1001").message,
            "must be at most 1000"
        );
    }

    #[test]
    fn state_names_round_trip() {
        for st in JobState::ALL {
            assert_eq!(JobState::parse(st.as_str()), Some(st));
            let json = serde_json::to_string(&st).expect("serialize");
            assert_eq!(json, format!("\"{}\"", st.as_str()));
        }
        assert_eq!(JobState::parse("nope"), None);
    }

    #[test]
    fn validate_names_the_bad_field() {
        let ok = NewJob::new("sys.noop", serde_json::json!({}));
        assert!(ok.validate().is_ok());
        let bad = ok.clone().priority(12);
        assert_eq!(bad.validate().map_err(|e| e.field), Err("priority".into()));
        for name in ["a b", ".", ".."] {
            let bad = ok.clone().queue(name);
            assert_eq!(
                bad.validate().map_err(|e| e.field),
                Err("queue".into()),
                "{name}"
            );
        }
        assert!(ok.clone().queue("...a").validate().is_ok());
        let bad = ok
            .clone()
            .timeout(Duration::from_millis(MAX_TIMEOUT_MS + 1));
        assert_eq!(bad.validate().map_err(|e| e.field), Err("timeout".into()));
        let longest = ok.clone().timeout(Duration::from_millis(MAX_TIMEOUT_MS));
        assert!(longest.validate().is_ok());
        let mut bad = ok;
        bad.payload = serde_json::json!([1]);
        assert_eq!(bad.validate().map_err(|e| e.field), Err("payload".into()));
    }

    /// A kind is limited in bytes of UTF-8, and its refusal says so: 100 `é` are 100
    /// characters but 200 bytes. Before, the message said "1 to 128 characters".
    #[test]
    fn a_kind_too_long_in_bytes_is_refused_saying_bytes() {
        let long = NewJob::new("é".repeat(100), serde_json::json!({}));
        let err = long.validate().expect_err("200 bytes are refused");
        assert_eq!(err.field, "kind");
        assert!(
            err.message.contains("128 bytes") && err.message.contains("200 bytes"),
            "{err}"
        );
        assert!(!err.message.contains("character"), "{err}");
        let filter = crate::broker::JobFilter {
            kind: Some("é".repeat(100)),
            ..crate::broker::JobFilter::default()
        };
        let err = filter.check().expect_err("the list filter too");
        assert!(err.message.contains("128 bytes"), "{err}");
        for (err, limit) in [
            (
                crate::broker::check_cursor_name(&"é".repeat(65)),
                "128 bytes",
            ),
            (crate::broker::check_node_id(&"é".repeat(101)), "200 bytes"),
        ] {
            let err = err.expect_err("too long in bytes");
            assert!(err.message.contains(limit), "{err}");
        }
        let at_limit = NewJob::new("é".repeat(64), serde_json::json!({}));
        assert!(at_limit.validate().is_ok());
    }

    /// `{"x": {"x": ... 1}}` with `levels` objects.
    fn nested(levels: usize) -> Value {
        (0..levels).fold(serde_json::json!(1), |v, _| serde_json::json!({ "x": v }))
    }

    #[test]
    fn payloads_nest_no_deeper_than_a_broker_reads_back() {
        assert!(!nests_deeper_than(&serde_json::json!(1), 0));
        assert!(nests_deeper_than(&serde_json::json!([]), 0));
        assert!(!nests_deeper_than(&serde_json::json!({"a": [1, {}]}), 3));
        assert!(nests_deeper_than(
            &serde_json::json!({"a": [1, {"b": []}]}),
            3
        ));
        let ok = NewJob::new("sys.noop", nested(MAX_PAYLOAD_DEPTH));
        assert!(ok.validate().is_ok());
        let deep = NewJob::new("sys.noop", nested(MAX_PAYLOAD_DEPTH + 1));
        assert_eq!(deep.validate().map_err(|e| e.field), Err("payload".into()));
        // The limit keeps what is stored readable, a chain step's `input` around it included.
        let text = serde_json::json!({ "input": nested(MAX_PAYLOAD_DEPTH) }).to_string();
        assert!(serde_json::from_str::<Value>(&text).is_ok());
        // A value built in memory past any parser's limit is judged too.
        assert!(nests_deeper_than(&nested(1000), MAX_PAYLOAD_DEPTH));
    }

    #[test]
    fn chains_link_in_order_on_the_first_queue() {
        let steps = vec![
            NewJob::new("a", serde_json::json!({})).queue("etl"),
            NewJob::new("b", serde_json::json!({})).queue("other"),
            NewJob::new("c", serde_json::json!({})),
        ];
        let ids: Vec<JobId> = steps.iter().map(|s| s.id.clone()).collect();
        let linked = link_chain(steps);
        for (i, s) in linked.iter().enumerate() {
            let link = s.chain.as_ref().expect("linked");
            assert_eq!(link.id, ids[0]);
            assert_eq!(link.index as usize, i);
            assert_eq!(link.next.as_ref(), ids.get(i + 1));
            assert_eq!(s.queue, "etl");
        }
        let single = link_chain(vec![NewJob::new("a", serde_json::json!({}))]);
        assert!(single[0].chain.is_none());
    }

    #[test]
    fn ids_sort_by_creation() {
        let a = JobId::generate();
        let b = JobId::generate();
        assert!(a < b);
    }
}
