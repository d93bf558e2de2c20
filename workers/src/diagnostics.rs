//! The built-in diagnostic kinds, used by tests, benchmarks and a newcomer's first try:
//!
//! - `sys.noop`: returns `{}` at once, whatever its payload.
//! - `sys.sleep {"ms"}`: sleeps `ms` milliseconds, reporting progress, and stops at once when
//!   cancelled.
//! - `sys.fail {"times", "permanent"}`: fails the first `times` attempts (default: every
//!   attempt), permanently when `permanent` is true; then succeeds.
//!
//! Each is a [`Kind`]; this module owns their payloads and behaviour, nothing else. All three
//! may be later steps of a chain: they accept an `input` and ignore it.

use std::time::Duration;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::json;

use crate::handler::{JobContext, JobError, JobResult};
use crate::kind::Kind;
use crate::registry::{Registry, RegistryError};

/// Registers the three `sys.*` kinds.
pub fn register(registry: &mut Registry) -> Result<(), RegistryError> {
    registry.add(Noop)?;
    registry.add(Sleep)?;
    registry.add(Fail)?;
    Ok(())
}

/// `sys.noop`.
#[derive(Debug)]
pub struct Noop;

impl Kind for Noop {
    const NAME: &'static str = "sys.noop";
    /// Any payload: `sys.noop` is also the kind to enqueue junk with.
    type Args = IgnoredAny;

    async fn run(&self, _cx: JobContext, _args: IgnoredAny) -> JobResult {
        Ok(json!({}))
    }
}

/// The payload of `sys.sleep`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepArgs {
    /// How long to sleep, in milliseconds.
    pub ms: u64,
    #[serde(default, rename = "input")]
    _input: Option<IgnoredAny>,
}

/// `sys.sleep`.
#[derive(Debug)]
pub struct Sleep;

/// Progress is reported in this many steps.
const SLEEP_STEPS: u64 = 10;

impl Kind for Sleep {
    const NAME: &'static str = "sys.sleep";
    type Args = SleepArgs;

    async fn run(&self, cx: JobContext, args: SleepArgs) -> JobResult {
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
}

/// The payload of `sys.fail`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailArgs {
    /// Fail this many attempts, then succeed; `None` fails every attempt.
    pub times: Option<u32>,
    /// Fail permanently rather than retryably.
    #[serde(default)]
    pub permanent: bool,
    #[serde(default, rename = "input")]
    _input: Option<IgnoredAny>,
}

/// `sys.fail`.
#[derive(Debug)]
pub struct Fail;

impl Kind for Fail {
    const NAME: &'static str = "sys.fail";
    type Args = FailArgs;

    async fn run(&self, cx: JobContext, args: FailArgs) -> JobResult {
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
}
