//! Typed job kinds, River's `JobArgs` and `Worker[T]` in one trait: a kind is a struct, an
//! [`Args`](Kind::Args) type and one [`run`](Kind::run). This module owns the [`Kind`] trait,
//! payload parsing that names the bad field ([`parse_payload`]), and the one adapter that
//! turns any kind into the object-safe [`Handler`] the [`Registry`](crate::Registry) stores.
//! The adapter parses the payload once per run (and once per validation), runs the kind's
//! semantic [`check`](Kind::check), then hands the typed arguments to `run`; a payload that
//! does not parse or check at run time is a permanent failure, since it never will.
//!
//! It does not own the handler API itself (`crate::handler`: [`JobContext`], [`JobError`])
//! nor the name-to-handler map (`crate::registry`).

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::field::FieldError;
use crate::handler::{Handler, JobContext, JobError, JobResult};

/// The code for one job kind, with a typed payload.
///
/// `Args` usually derives `Deserialize` with `deny_unknown_fields`, so that a misspelt field
/// is refused before enqueue rather than ignored. A kind that takes its chain predecessor's
/// result declares it as the field `input` ([`INPUT_KEY`](crate::handler::INPUT_KEY)) of its
/// `Args`, typed as the part of that result it reads; one that accepts a predecessor without
/// reading it declares `#[serde(default, rename = "input")] _input:
/// Option<serde::de::IgnoredAny>`.
///
/// ```
/// use hopper_workers::{JobContext, JobResult, Kind, Registry};
/// use serde_json::json;
///
/// #[derive(serde::Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct GreetArgs {
///     name: String,
/// }
///
/// struct Greet;
///
/// impl Kind for Greet {
///     const NAME: &'static str = "demo.greet";
///     type Args = GreetArgs;
///
///     async fn run(&self, cx: JobContext, args: GreetArgs) -> JobResult {
///         cx.progress(50, None);
///         Ok(json!({ "greeting": format!("hello, {}", args.name) }))
///     }
/// }
///
/// let mut registry = Registry::new();
/// registry.add(Greet)?;
/// let handler = registry.get("demo.greet").expect("registered");
/// assert_eq!(
///     handler.validate(&json!({"name": 3})).unwrap_err().field,
///     "payload.name"
/// );
/// # Ok::<(), hopper_workers::registry::RegistryError>(())
/// ```
pub trait Kind: Send + Sync + 'static {
    /// The kind's stable name, e.g. `email.send`. Written by hand, never derived from the
    /// type's name: jobs already enqueued under it must still run after a rename.
    const NAME: &'static str;

    /// The payload, parsed.
    type Args: DeserializeOwned + Send;

    /// Runs one attempt with the payload parsed and checked.
    fn run(&self, cx: JobContext, args: Self::Args) -> impl Future<Output = JobResult> + Send;

    /// The rules serde cannot express (an address that must parse, a path that must stay
    /// under the files directory), naming the field. Runs before enqueue and before every
    /// attempt. Defaults to accepting whatever parsed.
    fn check(&self, _args: &Self::Args) -> Result<(), FieldError> {
        Ok(())
    }

    /// This kind's per-attempt time limit, when it differs from the pool's default.
    fn timeout(&self) -> Option<Duration> {
        None
    }
}

/// Parses a payload into `T`, naming the first field that does not fit
/// (`payload.sizes[0].width`, and a missing one too: `payload.body`), so that the API's 400
/// and a dead job's `last_error` both point at it.
pub fn parse_payload<T: DeserializeOwned>(payload: &Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(payload).map_err(|e| {
        let path = e.path().to_string();
        let mut field = if path == "." || path.is_empty() {
            "payload".to_owned()
        } else {
            format!("payload.{path}")
        };
        let message = e.into_inner().to_string();
        // The path of a missing field is its parent's; serde names the field in its message
        // alone ("missing field `body`").
        if let Some(name) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(name, _)| name)
        {
            field = format!("{field}.{name}");
        }
        FieldError::new(field, message)
    })
}

/// A [`Kind`] as the object-safe [`Handler`] the registry stores.
pub(crate) struct KindHandler<K>(K);

impl<K: Kind> KindHandler<K> {
    pub(crate) fn new(kind: K) -> Self {
        Self(kind)
    }

    /// The payload parsed and checked: the one way into [`Kind::run`].
    fn args(&self, payload: &Value) -> Result<K::Args, FieldError> {
        let args = parse_payload(payload)?;
        self.0.check(&args)?;
        Ok(args)
    }
}

#[async_trait]
impl<K: Kind> Handler for KindHandler<K> {
    async fn run(&self, cx: JobContext) -> JobResult {
        // Validation before enqueue makes this rare (a payload enqueued before a rule existed,
        // or a chain input of an unexpected shape), and it will fail the same way every time.
        let args = self
            .args(cx.payload())
            .map_err(|e| JobError::permanent(format!("invalid payload: {e}")))?;
        self.0.run(cx, args).await
    }

    fn validate(&self, payload: &Value) -> Result<(), FieldError> {
        self.args(payload).map(drop)
    }

    fn timeout(&self) -> Option<Duration> {
        self.0.timeout()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::job::{Job, JobId, JobState};
    use serde::Deserialize;
    use serde_json::json;
    use tokio_util::sync::CancellationToken;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Args {
        sizes: Vec<Size>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Size {
        width: u32,
    }

    #[test]
    fn names_the_nested_field() {
        let e = parse_payload::<Args>(&json!({"sizes": [{"width": "x"}]})).expect_err("bad");
        assert_eq!(e.field, "payload.sizes[0].width");
        let e = parse_payload::<Args>(&json!({})).expect_err("missing");
        assert_eq!(e.field, "payload.sizes");
        assert!(e.message.contains("sizes"), "{e}");
        let e = parse_payload::<Args>(&json!({"sizes": [{}]})).expect_err("missing");
        assert_eq!(e.field, "payload.sizes[0].width");
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct DoubleArgs {
        n: u32,
        input: Option<Prev>,
    }

    #[derive(Debug, Deserialize)]
    struct Prev {
        n: u32,
    }

    struct Double;

    impl Kind for Double {
        const NAME: &'static str = "test.double";
        type Args = DoubleArgs;

        async fn run(&self, _cx: JobContext, args: DoubleArgs) -> JobResult {
            let n = args.input.map_or(args.n, |p| args.n + p.n);
            Ok(json!({ "n": n * 2 }))
        }

        fn check(&self, args: &DoubleArgs) -> Result<(), FieldError> {
            if args.n == 0 {
                return Err(FieldError::new("payload.n", "must not be zero"));
            }
            Ok(())
        }
    }

    fn cx(payload: Value) -> JobContext {
        let job: Job = serde_json::from_value(json!({
            "id": JobId::generate(), "queue": "default", "kind": Double::NAME,
            "payload": payload, "priority": 5, "state": JobState::Running, "run_at": 0,
            "attempt": 1, "max_retries": 3, "interruptions": 0, "interruption_streak": 0,
            "lease_token": 1, "progress": 0, "created_at": 0,
        }))
        .expect("a job");
        JobContext::new(Arc::new(job), CancellationToken::new(), None)
    }

    #[tokio::test]
    async fn the_adapter_parses_checks_and_hands_the_input_over() {
        let h = KindHandler::new(Double);
        assert_eq!(
            h.validate(&json!({"n": 0})).expect_err("zero").field,
            "payload.n"
        );
        assert_eq!(
            h.validate(&json!({"n": "x"})).expect_err("text").field,
            "payload.n"
        );
        assert!(
            h.validate(&json!({"n": 1, "input": {"n": 2, "other": true}}))
                .is_ok()
        );

        let out = h.run(cx(json!({"n": 1, "input": {"n": 2}}))).await;
        assert_eq!(out.expect("ran"), json!({"n": 6}));
        match h.run(cx(json!({"n": 0}))).await {
            Err(JobError::Permanent { message }) => {
                assert_eq!(message, "invalid payload: payload.n: must not be zero");
            }
            other => panic!("expected a permanent failure, got {other:?}"),
        }
        match h.run(cx(json!({"n": 1, "extra": 1}))).await {
            Err(JobError::Permanent { message }) => {
                assert!(
                    message.starts_with("invalid payload: payload.extra: unknown field"),
                    "{message}"
                );
            }
            other => panic!("expected a permanent failure, got {other:?}"),
        }
    }
}
