//! The built-in diagnostic kinds, used by tests, benchmarks and a newcomer's first try:
//!
//! - `sys.noop`: returns `{}` at once.
//! - `sys.sleep {"ms"}`: sleeps `ms` milliseconds, reporting progress, and stops at once when
//!   cancelled.
//! - `sys.fail {"times", "permanent"}`: fails the first `times` attempts (default: every
//!   attempt), permanently when `permanent` is true; then succeeds.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::field::FieldError;
use crate::handler::{Handler, JobContext, JobError, JobResult, Registry, RegistryError};

/// Registers the three `sys.*` kinds.
pub fn register(registry: &mut Registry) -> Result<(), RegistryError> {
    registry.register("sys.noop", Noop)?;
    registry.register("sys.sleep", Sleep)?;
    registry.register("sys.fail", Fail)?;
    Ok(())
}

/// `sys.noop`.
#[derive(Debug)]
pub struct Noop;

#[async_trait]
impl Handler for Noop {
    async fn run(&self, _cx: JobContext) -> JobResult {
        Ok(json!({}))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepArgs {
    ms: u64,
}

/// `sys.sleep`.
#[derive(Debug)]
pub struct Sleep;

/// Progress is reported in this many steps.
const SLEEP_STEPS: u64 = 10;

#[async_trait]
impl Handler for Sleep {
    async fn run(&self, cx: JobContext) -> JobResult {
        let args: SleepArgs = cx.parse()?;
        let step = Duration::from_millis(args.ms / SLEEP_STEPS);
        let rest = Duration::from_millis(args.ms % SLEEP_STEPS);
        for i in 1..=SLEEP_STEPS {
            tokio::select! {
                () = cx.cancelled() => return Err(JobError::retryable("cancelled while sleeping")),
                () = tokio::time::sleep(step) => {}
            }
            // Reporting every 10 % of a short sleep would be noise.
            if args.ms >= 1000 && i < SLEEP_STEPS {
                cx.progress(u8::try_from(i * 10).unwrap_or(100), None);
            }
        }
        tokio::select! {
            () = cx.cancelled() => return Err(JobError::retryable("cancelled while sleeping")),
            () = tokio::time::sleep(rest) => {}
        }
        Ok(json!({ "slept_ms": args.ms }))
    }

    fn validate(&self, payload: &Value) -> Result<(), FieldError> {
        match payload.get("ms") {
            Some(v) if v.is_u64() => Ok(()),
            _ => Err(FieldError::new(
                "payload.ms",
                "must be a non-negative integer (milliseconds)",
            )),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailArgs {
    times: Option<u32>,
    #[serde(default)]
    permanent: bool,
}

/// `sys.fail`.
#[derive(Debug)]
pub struct Fail;

#[async_trait]
impl Handler for Fail {
    async fn run(&self, cx: JobContext) -> JobResult {
        let args: FailArgs = cx.parse()?;
        let attempt = cx.attempt();
        let fails = args.times.is_none_or(|t| attempt <= t);
        if !fails {
            return Ok(json!({ "attempt": attempt }));
        }
        let message = format!("sys.fail: attempt {attempt} failed on purpose");
        if args.permanent {
            Err(JobError::permanent(message))
        } else {
            Err(JobError::retryable(message))
        }
    }

    fn validate(&self, payload: &Value) -> Result<(), FieldError> {
        if let Some(t) = payload.get("times")
            && !t.is_u64()
        {
            return Err(FieldError::new(
                "payload.times",
                "must be a non-negative integer",
            ));
        }
        if let Some(p) = payload.get("permanent")
            && !p.is_boolean()
        {
            return Err(FieldError::new(
                "payload.permanent",
                "must be true or false",
            ));
        }
        Ok(())
    }
}
