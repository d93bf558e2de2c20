//! The handler API: the object-safe [`Handler`] the pool runs, the [`JobContext`] it runs
//! with, and the [`JobError`] it may answer. Job kinds are written against the typed
//! [`Kind`](crate::Kind) (`crate::kind`), which an adapter turns into a `Handler`; a raw
//! `Handler` is for code that reads the payload itself (benchmarks, tests). This module
//! does not own the registry (`crate::registry`) nor payload parsing (`crate::kind`).
//!
//! A handler is small and boring: parse the payload, do the work, report progress, return a
//! result or a [`JobError`]. It never sees the broker: the pool turns its answer into a state
//! change (`crate::pool`). `?` on any error means "failed, retry per policy"; permanent
//! failures and snoozes are explicit.

use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::field::FieldError;
use crate::job::{Job, Lease};

// The registry lived here before `crate::registry`; the pool and older callers import it
// from this path.
pub use crate::registry::{Registry, RegistryError};

/// The payload key under which a chain step receives its predecessor's result.
pub const INPUT_KEY: &str = "input";

/// How an attempt failed (or asked to wait). Not a `std::error::Error`, so that any error
/// converts into it with `?` (the `anyhow` pattern).
#[derive(Debug)]
pub enum JobError {
    /// Worth trying again later, after the retry policy's backoff (or `retry_after`, e.g. from
    /// a `Retry-After` header).
    Retryable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Will fail the same way every time (bad payload, undecodable input, a 5xx SMTP reply):
    /// straight to `dead`, no retries spent.
    Permanent { message: String },
    /// Not now: run again after the duration without counting this attempt.
    Snooze(Duration),
}

impl JobError {
    /// A failure worth retrying.
    pub fn retryable(message: impl fmt::Display) -> Self {
        JobError::Retryable {
            message: message.to_string(),
            retry_after: None,
        }
    }

    /// A failure worth retrying, not before `after` (kept within the retry policy's maximum
    /// wait, `[retry] backoff_max`).
    pub fn retry_after(message: impl fmt::Display, after: Duration) -> Self {
        JobError::Retryable {
            message: message.to_string(),
            retry_after: Some(after),
        }
    }

    /// A failure that retrying cannot fix.
    pub fn permanent(message: impl fmt::Display) -> Self {
        JobError::Permanent {
            message: message.to_string(),
        }
    }

    /// Run again after `d`, this attempt not counted.
    pub fn snooze(d: Duration) -> Self {
        JobError::Snooze(d)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for JobError {
    fn from(e: E) -> Self {
        // The whole chain, so the stored `last_error` says what went wrong underneath.
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        JobError::Retryable {
            message,
            retry_after: None,
        }
    }
}

/// What a handler returns.
pub type JobResult = Result<Value, JobError>;

/// A progress report on its way from a handler to the broker.
#[derive(Clone, Debug)]
pub struct ProgressUpdate {
    pub lease: Lease,
    pub percent: u8,
    pub message: Option<String>,
}

/// What a running handler gets: the job, a cancellation signal, a progress reporter and the
/// job's checkpoint.
#[derive(Clone, Debug)]
pub struct JobContext {
    job: Arc<Job>,
    cancel: CancellationToken,
    progress: Option<mpsc::UnboundedSender<ProgressUpdate>>,
    /// The pool's count of reports sent and not yet written, if it keeps one.
    unwritten: Option<Arc<AtomicUsize>>,
    /// The checkpoint as this attempt last saw it: the job's, then each one saved.
    checkpoint: Arc<Mutex<Option<Value>>>,
    /// Where saved checkpoints go (the pool's broker); none for a handler run on its own,
    /// whose checkpoints then live only as long as the context.
    checkpoints: Option<Arc<dyn Broker>>,
}

impl JobContext {
    /// A context for `job`. The pool builds these; tests of a single handler can too.
    pub fn new(
        job: Arc<Job>,
        cancel: CancellationToken,
        progress: Option<mpsc::UnboundedSender<ProgressUpdate>>,
    ) -> Self {
        let checkpoint = Arc::new(Mutex::new(job.checkpoint.clone()));
        Self {
            job,
            cancel,
            progress,
            unwritten: None,
            checkpoint,
            checkpoints: None,
        }
    }

    /// The same context, saving checkpoints to `broker` under the job's lease (the pool's).
    #[must_use]
    pub fn saving_checkpoints(mut self, broker: Arc<dyn Broker>) -> Self {
        self.checkpoints = Some(broker);
        self
    }

    /// The job's checkpoint: what this attempt or an earlier one of the same job last saved
    /// with [`save_checkpoint`](Self::save_checkpoint), if anything.
    pub fn checkpoint(&self) -> Option<Value> {
        self.checkpoint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Saves `value` as the job's checkpoint, replacing the one before, and returns once the
    /// broker stored it: later attempts of the job (retries, snoozes, a rescue after a crash)
    /// read it with [`checkpoint`](Self::checkpoint), and `GET /v1/jobs/{id}` shows it. Use
    /// it to remember work done that must not be done twice (a message sent). A lost lease
    /// (another attempt owns the job) or an unreachable broker is a retryable error; a value
    /// nesting more than [`MAX_PAYLOAD_DEPTH`](crate::job::MAX_PAYLOAD_DEPTH) levels, which a
    /// broker could not read back (the job would be unreadable), is a permanent one, and
    /// nothing is saved.
    pub async fn save_checkpoint(&self, value: Value) -> Result<(), JobError> {
        if crate::job::nests_deeper_than(&value, crate::job::MAX_PAYLOAD_DEPTH) {
            return Err(JobError::permanent(format!(
                "the checkpoint nests more than {} levels of objects and arrays, more than can \
                 be stored and read back",
                crate::job::MAX_PAYLOAD_DEPTH
            )));
        }
        *self
            .checkpoint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(value.clone());
        if let Some(broker) = &self.checkpoints {
            broker
                .checkpoint(&self.job.lease(), &value)
                .await
                .map_err(|e| JobError::retryable(format!("saving the checkpoint: {e}")))?;
        }
        Ok(())
    }

    /// The same context, counting each report it sends in `unwritten` (the pool's count of
    /// reports not yet written, so that ending an attempt waits for the progress writer only
    /// when a report may still be on its way).
    #[must_use]
    pub fn counting_reports(mut self, unwritten: Arc<AtomicUsize>) -> Self {
        self.unwritten = Some(unwritten);
        self
    }

    /// The job being run.
    pub fn job(&self) -> &Job {
        &self.job
    }

    /// The job's payload.
    pub fn payload(&self) -> &Value {
        &self.job.payload
    }

    /// The result of the previous step of this job's chain, if it is a later step of one.
    ///
    /// When a step succeeds, the next step's payload receives its result under the reserved
    /// key `input`, so a step that was enqueued on its own can be given an input by hand too.
    /// A typed [`Kind`](crate::Kind) reads it as the `input` field of its `Args` instead.
    pub fn input(&self) -> Option<&Value> {
        self.job.payload.get(INPUT_KEY)
    }

    /// This attempt's number, from 1.
    pub fn attempt(&self) -> u32 {
        self.job.attempt
    }

    /// Resolves when the job is cancelled, times out or the worker shuts down hard: the
    /// handler should stop promptly. Use it in `tokio::select!` around long waits.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// True once the handler has been told to stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Reports progress (clamped to 0..=100). Never blocks; the pool coalesces and writes it.
    pub fn progress(&self, percent: u8, message: impl Into<Option<String>>) {
        if let Some(tx) = &self.progress {
            // Counted before it is sent, so the writer never uncounts it first.
            if let Some(n) = &self.unwritten {
                n.fetch_add(1, Ordering::SeqCst);
            }
            let sent = tx.send(ProgressUpdate {
                lease: self.job.lease(),
                percent: percent.min(100),
                message: message.into(),
            });
            // A closed channel means the pool is gone; the report has nowhere to go.
            if let (Err(_), Some(n)) = (sent, &self.unwritten) {
                n.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// The code for one job kind, as the pool runs it: the raw payload in, an outcome out.
/// A kind written as a [`Kind`](crate::Kind) gets this from [`Registry::add`].
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Runs one attempt.
    async fn run(&self, cx: JobContext) -> JobResult;

    /// Checks a payload before it is enqueued, naming the bad field. Defaults to accepting
    /// any JSON object.
    fn validate(&self, _payload: &Value) -> Result<(), FieldError> {
        Ok(())
    }

    /// This kind's per-attempt time limit, when it differs from the pool's default.
    fn timeout(&self) -> Option<Duration> {
        None
    }
}
