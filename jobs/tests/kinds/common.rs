//! Building a job and running one handler on it.

use std::path::Path;
use std::sync::Arc;

use hopper_jobs::JobsConfig;
use hopper_workers::FieldError;
use hopper_workers::handler::ProgressUpdate;
use hopper_workers::{Job, JobContext, JobId, JobResult, JobState, Registry};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A running job of `kind` with `payload`, first attempt. Built through serde rather than a
/// struct literal so that fields the engine adds later (with defaults) do not break it.
pub fn job(kind: &str, payload: Value) -> Job {
    serde_json::from_value(serde_json::json!({
        "id": JobId::generate(),
        "queue": "default",
        "kind": kind,
        "payload": payload,
        "priority": 5,
        "state": JobState::Running,
        "run_at": 0,
        "attempt": 1,
        "max_retries": 3,
        "interruptions": 0,
        "interruption_streak": 0,
        "lease_token": 1,
        "progress": 0,
        "created_at": 0,
    }))
    .expect("a job from its required fields")
}

/// A config whose files and outbox live in `dir`, and whose outgoing requests may reach the
/// tests' peers on 127.0.0.1 (`[http] allow_hosts`; loopback is refused by default).
pub fn config(dir: &Path) -> JobsConfig {
    let mut config = JobsConfig::default();
    config.files.dir = dir.join("files");
    config.files.outbox = dir.join("outbox");
    config.http.allow_hosts = vec!["127.0.0.1".to_owned()];
    config
}

/// Serves `app` on `ip`, port 0, until the test ends; returns `http://ip:port`.
#[allow(dead_code)]
pub async fn serve(ip: &str, app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// The message of a failed run.
pub fn error_message(r: &JobResult) -> String {
    match r {
        Ok(v) => panic!("expected a failure, got {v}"),
        Err(
            hopper_workers::JobError::Permanent { message }
            | hopper_workers::JobError::Retryable { message, .. },
        ) => message.clone(),
        Err(e) => format!("{e:?}"),
    }
}

/// Every kind registered with `config`.
pub fn registry(config: &JobsConfig) -> Registry {
    let mut registry = Registry::new();
    hopper_jobs::register_all(&mut registry, config).expect("register_all");
    registry
}

/// The outcome of one run and the progress it reported.
pub struct Ran {
    pub result: JobResult,
    pub progress: Vec<u8>,
}

/// Runs the handler of `kind` once on a fresh job.
pub async fn run(registry: &Registry, kind: &str, payload: Value) -> Ran {
    let handler = registry.get(kind).expect("kind registered");
    let (tx, mut rx) = mpsc::unbounded_channel::<ProgressUpdate>();
    let cx = JobContext::new(
        Arc::new(job(kind, payload)),
        CancellationToken::new(),
        Some(tx),
    );
    let result = handler.run(cx).await;
    let mut progress = Vec::new();
    while let Ok(p) = rx.try_recv() {
        progress.push(p.percent);
    }
    Ran { result, progress }
}

/// What `validate` says about `payload`.
pub fn validate(registry: &Registry, kind: &str, payload: &Value) -> Result<(), FieldError> {
    registry
        .get(kind)
        .expect("kind registered")
        .validate(payload)
}

/// The field `validate` names for a bad payload.
pub fn bad_field(registry: &Registry, kind: &str, payload: Value) -> String {
    validate(registry, kind, &payload)
        .expect_err("payload should be refused")
        .field
}

/// Asserts that `validate` accepts `payload`.
pub fn assert_valid(registry: &Registry, kind: &str, payload: &Value) {
    let answer = validate(registry, kind, payload);
    assert!(answer.is_ok(), "{kind}: {payload} refused: {answer:?}");
}

/// Asserts that `validate` refuses each payload of `cases`, naming the field given with it.
pub fn assert_refused<F: AsRef<str>>(registry: &Registry, kind: &str, cases: Vec<(Value, F)>) {
    for (payload, field) in cases {
        let what = payload.to_string();
        assert_eq!(
            bad_field(registry, kind, payload),
            field.as_ref(),
            "{kind}: {what}"
        );
    }
}

/// Every kind registered with [`config`] over a fresh temporary directory, and the directory
/// (removed when the guard drops).
pub fn temp_registry() -> (tempfile::TempDir, Registry) {
    let tmp = tempfile::tempdir().expect("tmp");
    let registry = registry(&config(tmp.path()));
    (tmp, registry)
}

pub fn ok(ran: Ran) -> Value {
    match ran.result {
        Ok(v) => v,
        Err(e) => panic!("handler failed: {e:?}"),
    }
}

pub fn is_permanent(r: &JobResult) -> bool {
    matches!(r, Err(hopper_workers::JobError::Permanent { .. }))
}

pub fn is_retryable(r: &JobResult) -> bool {
    matches!(r, Err(hopper_workers::JobError::Retryable { .. }))
}
