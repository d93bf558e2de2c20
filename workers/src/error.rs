//! Errors of the engine. No broker library type appears here: SQLite and Redis errors are
//! boxed into [`BrokerError::Backend`] inside their implementations.

use crate::field::FieldError;
use crate::job::{JobId, JobState};

/// A boxed error from a broker's storage library.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a broker operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No job has this id.
    #[error("job {0} not found")]
    NotFound(JobId),
    /// The job is in a state that does not allow the operation (e.g. retrying a running job).
    #[error("job {id} is {state}: {message}")]
    Conflict {
        id: JobId,
        state: JobState,
        message: &'static str,
    },
    /// The lease token is stale: another attempt owns the job now, or it was cancelled.
    #[error("lease of job {0} is no longer held (stale token)")]
    LeaseLost(JobId),
    /// The request itself is bad.
    #[error("invalid {0}")]
    Invalid(#[from] FieldError),
    /// The broker cannot be reached right now; the operation may be retried.
    #[error("broker unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// The broker failed.
    #[error("broker error: {0}")]
    Backend(#[source] BoxError),
    /// The broker URL or its settings are not usable.
    #[error("broker configuration: {0}")]
    Config(String),
}

impl BrokerError {
    /// Wraps any storage error as a backend failure.
    pub fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        BrokerError::Backend(Box::new(e))
    }
}

/// Shorthand for broker results.
pub type BrokerResult<T> = Result<T, BrokerError>;
