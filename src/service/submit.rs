//! Where a new job is checked: a request to enqueue (an HTTP body or `hopper enqueue` flags,
//! already typed) becomes a [`NewJob`] here, and nowhere else.
//!
//! Both front doors reach [`prepare`] through `Service::submit`, so they accept and refuse the
//! same things: the kind
//! must be registered, the payload must be an object the kind's
//! [`Handler::validate`](hopper_workers::Handler::validate) accepts, and the request's own
//! rules hold (a delay or a run time, not both; the rules of chains). The engine's rules of a
//! job (queue name, priority range, timeout, unique key, payload depth) are
//! [`NewJob::validate`]'s, checked
//! at the broker seam (`Broker::enqueue`) for every caller. Every refusal names the field it
//! is about. Parsing the HTTP body's
//! JSON is the API's business (`crate::api`), not this module's.

use std::time::Duration;

pub use hopper_workers::FieldError;
use hopper_workers::Registry;
use hopper_workers::handler::INPUT_KEY;
use hopper_workers::job::{JobId, NewJob};
use hopper_workers::retention::{client_may_use, is_hoppers_own, maintenance_refusal, queue_for};
use hopper_workers::schedule::SCHEDULE_KEY_PREFIX;
use hopper_workers::time::Timestamp;
use serde_json::Value;

/// A request to enqueue, fields already typed; `None` means "the default".
#[derive(Clone, Debug, PartialEq)]
pub struct EnqueueRequest {
    /// A registered kind.
    pub kind: String,
    /// A JSON object, checked by the kind.
    pub payload: Value,
    /// Default `"default"`.
    pub queue: Option<String>,
    /// 0 (most urgent) to 9; default 5.
    pub priority: Option<u8>,
    /// When the job may first run; default now.
    pub start: Option<Start>,
    /// Default `[retry] max_retries`.
    pub max_retries: Option<u32>,
    /// Per-attempt limit; default the kind's, else `[worker] job_timeout`.
    pub timeout: Option<Duration>,
    /// At most one job of the queue has this key.
    pub unique_key: Option<String>,
}

/// When a job may first run: after a delay, or at a time (the request's `delay` or `run_at`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    After(Duration),
    At(Timestamp),
}

/// How far ahead a job may be scheduled: far enough for any calendar, near enough that every
/// time shown stays an ordinary date.
pub const MAX_AHEAD: Duration = Duration::from_secs(100 * 366 * 86_400);

impl Start {
    /// The request field it came from.
    pub fn field(self) -> &'static str {
        match self {
            Start::After(_) => "delay",
            Start::At(_) => "run_at",
        }
    }

    /// The first run time, `None` for now (a time in the past is now: it does not jump the
    /// line). Refused beyond [`MAX_AHEAD`].
    pub fn resolve(self, now: Timestamp) -> Result<Option<Timestamp>, FieldError> {
        let at = match self {
            Start::After(d) if d > MAX_AHEAD => None,
            Start::After(d) => Some(now + d),
            Start::At(at) => Some(at).filter(|at| at.since(now) <= MAX_AHEAD),
        };
        match at {
            None => Err(FieldError::invalid(
                self.field(),
                "must be at most 100 years ahead",
            )),
            Some(at) => Ok((at > now).then_some(at)),
        }
    }
}

impl EnqueueRequest {
    /// A request for `kind` with `payload` and every other field at its default.
    pub fn new(kind: impl Into<String>, payload: Value) -> Self {
        Self {
            kind: kind.into(),
            payload,
            queue: None,
            priority: None,
            start: None,
            max_retries: None,
            timeout: None,
            unique_key: None,
        }
    }
}

/// Refuses a unique key a client may not give: the marks Hopper gives its own jobs. A
/// schedule's tick (`schedule:NAME:TICK`): a job holding one would make that tick's job never
/// be made. A publish's (`publish:KEY:ID`, see [`crate::bus::KEY_PREFIX`]): a job holding one
/// would answer that publish as a duplicate, and a job so marked that died would make no
/// `job.dead` alert. Called where a client's job comes in (`POST /v1/jobs`, its batch and
/// `enqueue --file` through `job_body`, `hopper enqueue`), not in [`prepare`], which the bus's
/// own jobs go through.
pub fn check_client_unique_key(key: &str) -> Result<(), FieldError> {
    let reserved = [
        (
            SCHEDULE_KEY_PREFIX,
            "the schedules' own (one a tick): a job holding one would make that tick's job \
             never be made",
        ),
        (
            crate::bus::KEY_PREFIX,
            "the event bus's own (one a publish and subscription)",
        ),
    ];
    match reserved.iter().find(|(prefix, _)| key.starts_with(prefix)) {
        Some((prefix, whose)) => Err(FieldError::invalid(
            "unique_key",
            format!("keys starting with {prefix:?} are {whose}"),
        )),
        None => Ok(()),
    }
}

/// Checks `req` against `registry` and the engine's rules, filling defaults (`max_retries`
/// from `[retry]`). `now` anchors a delay.
pub fn prepare(
    req: EnqueueRequest,
    registry: &Registry,
    default_max_retries: u32,
    now: Timestamp,
) -> Result<NewJob, FieldError> {
    prepare_checked(req, registry, default_max_retries, now, false)
}

fn prepare_checked(
    req: EnqueueRequest,
    registry: &Registry,
    default_max_retries: u32,
    now: Timestamp,
    chain_step: bool,
) -> Result<NewJob, FieldError> {
    let Some(handler) = registry.get(&req.kind) else {
        let known: Vec<&str> = registry.kinds().collect();
        return Err(FieldError::with_code(
            "unknown_kind",
            "kind",
            format!(
                "no job kind {:?} is registered here (known: {})",
                req.kind,
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        ));
    };
    if !req.payload.is_object() {
        return Err(FieldError::invalid("payload", "must be a JSON object"));
    }
    // A later chain step gets its `input` only when the step before it succeeds: check its
    // payload as it will be then, with an input present (its content is unknown until then).
    let mut checked = std::borrow::Cow::Borrowed(&req.payload);
    if chain_step && let Some(map) = checked.to_mut().as_object_mut() {
        map.entry(INPUT_KEY)
            .or_insert_with(|| serde_json::json!({}));
    }
    handler.validate(&checked)?;
    let run_at = match req.start {
        Some(start) => start.resolve(now)?,
        None => None,
    };
    // Every pool serves the maintenance queue one job at a time, and Hopper's own kinds run
    // there only (`client_may_use`).
    if let Some(q) = &req.queue
        && !client_may_use(q, &req.kind)
    {
        return Err(FieldError::invalid("queue", maintenance_refusal(&req.kind)));
    }
    let mut job = NewJob {
        id: JobId::generate(),
        queue: req.queue.unwrap_or_else(|| queue_for(&req.kind).to_owned()),
        kind: req.kind,
        payload: req.payload,
        priority: req
            .priority
            .unwrap_or(hopper_workers::job::DEFAULT_PRIORITY),
        run_at,
        max_retries: req.max_retries.unwrap_or(default_max_retries),
        timeout_ms: None,
        unique_key: req.unique_key,
        chain: None,
    };
    if let Some(timeout) = req.timeout.or_else(|| handler.timeout()) {
        job = job.timeout(timeout);
    }
    Ok(job)
}

/// Checks a later step of a chain (`then[i]`, named by `at`) like [`prepare`], and the rules
/// of chains: a step runs on the chain's `queue`, and when the step before it succeeds, so it
/// takes no delay of its own.
pub fn prepare_step(
    req: EnqueueRequest,
    at: &str,
    queue: &str,
    registry: &Registry,
    default_max_retries: u32,
    now: Timestamp,
) -> Result<NewJob, FieldError> {
    let named = |e: FieldError| e.under(at);
    if let Some(start) = req.start {
        return Err(named(FieldError::invalid(
            start.field(),
            "a chain step runs as soon as the step before it succeeds; only the first step \
             takes a delay",
        )));
    }
    if req.unique_key.is_some() {
        return Err(named(FieldError::invalid(
            "unique_key",
            "only the first step of a chain may have a unique key (it names the whole chain)",
        )));
    }
    if let Some(q) = &req.queue
        && q != queue
    {
        return Err(named(FieldError::invalid(
            "queue",
            format!("every step of a chain runs on the chain's queue ({queue:?})"),
        )));
    }
    if is_hoppers_own(&req.kind) {
        return Err(named(FieldError::invalid(
            "kind",
            "a chain step may not be of Hopper's own kinds (hopper.*): run it on its own",
        )));
    }
    // The chain's queue, checked as the first step's was.
    if !client_may_use(queue, &req.kind) {
        return Err(named(FieldError::invalid(
            "queue",
            maintenance_refusal(&req.kind),
        )));
    }
    prepare_checked(req, registry, default_max_retries, now, true).map_err(named)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use std::sync::Arc;

    use hopper_workers::clock;

    use super::*;
    use crate::service::{Service, SubmitError};

    fn registry() -> Registry {
        let mut r = Registry::new();
        hopper_workers::diagnostics::register(&mut r).unwrap();
        r
    }

    /// The field a submission is refused for, through the whole path: these checks, the
    /// kind's, and the engine's at the broker seam (a real SQLite file).
    async fn field(req: EnqueueRequest) -> (String, &'static str) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hopper.db");
        let broker = hopper_workers::broker::sqlite::open(path.to_str().unwrap(), clock::system())
            .await
            .unwrap();
        let service = Service::new(broker, Arc::new(registry()), clock::system(), 3);
        match service.submit(req, Vec::new()).await {
            Err(SubmitError::Field(e)) => (e.field, e.code),
            other => panic!("expected a refused field, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_delay() {
        let mut req = EnqueueRequest::new("sys.noop", json!({}));
        req.start = Some(Start::After(Duration::from_secs(2)));
        let job = prepare(req, &registry(), 7, Timestamp::from_millis(1_000)).unwrap();
        assert_eq!(job.queue, "default");
        assert_eq!(job.priority, 5);
        assert_eq!(job.max_retries, 7);
        assert_eq!(job.run_at, Some(Timestamp::from_millis(3_000)));
    }

    #[test]
    fn chain_steps_name_their_place() {
        let r = registry();
        let mut step = EnqueueRequest::new("sys.noop", json!({}));
        step.queue = Some("other".into());
        let e = prepare_step(step, "then[1]", "default", &r, 3, Timestamp::EPOCH).unwrap_err();
        assert_eq!(e.field, "then[1].queue");
        let mut step = EnqueueRequest::new("sys.noop", json!({}));
        step.start = Some(Start::After(Duration::from_secs(1)));
        let e = prepare_step(step, "then[0]", "default", &r, 3, Timestamp::EPOCH).unwrap_err();
        assert_eq!(e.field, "then[0].delay");
        let e = prepare_step(
            EnqueueRequest::new("nope", json!({})),
            "then[2]",
            "default",
            &r,
            3,
            Timestamp::EPOCH,
        )
        .unwrap_err();
        assert_eq!((e.field.as_str(), e.code), ("then[2].kind", "unknown_kind"));
        let ok = prepare_step(
            EnqueueRequest::new("sys.noop", json!({})),
            "then[0]",
            "q",
            &r,
            3,
            Timestamp::EPOCH,
        );
        assert!(ok.is_ok());
    }

    #[tokio::test]
    async fn refusals_name_the_field() {
        assert_eq!(
            field(EnqueueRequest::new("nope", json!({}))).await,
            ("kind".into(), "unknown_kind")
        );
        assert_eq!(
            field(EnqueueRequest::new("sys.noop", json!([]))).await.0,
            "payload"
        );
        assert_eq!(
            field(EnqueueRequest::new("sys.sleep", json!({"ms": "x"})))
                .await
                .0,
            "payload.ms"
        );
        let mut req = EnqueueRequest::new("sys.noop", json!({}));
        req.priority = Some(12);
        assert_eq!(field(req).await.0, "priority");
        let mut req = EnqueueRequest::new("sys.noop", json!({}));
        req.queue = Some("a b".into());
        assert_eq!(field(req).await.0, "queue");
        let mut req = EnqueueRequest::new("sys.noop", json!({}));
        req.start = Some(Start::After(Duration::from_secs(101 * 366 * 86_400)));
        assert_eq!(field(req).await.0, "delay");
        let mut req = EnqueueRequest::new("sys.noop", json!({}));
        req.start = Some(Start::At(Timestamp::parse("2999-01-01T00:00:00Z").unwrap()));
        assert_eq!(field(req).await.0, "run_at");
    }
}
