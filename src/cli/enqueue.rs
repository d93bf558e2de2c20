//! `hopper enqueue`: flags to an [`EnqueueRequest`], submitted through the same
//! `crate::service` as `POST /v1/jobs`; refusals name the flag they came from. `--file` is
//! `super::enqueue_file`'s.

use std::sync::Arc;

use anyhow::{Context, Result};
use hopper_workers::Broker;
use serde_json::Value;

use super::inspect::{eprint_line, service};
use super::{CliError, EnqueueArgs};
use crate::config::Settings;
use crate::out;
use crate::service::submit::{Start, check_client_unique_key};
use crate::service::{EnqueueRequest, SubmitError};

/// A JSON flag's value (`--payload`, `--then`'s, `publish --data`), given inline or as
/// @FILE (`{}` when the flag is absent). A file that cannot be read, like JSON that does not
/// parse, is the flag's fault: a usage error naming it (exit 2).
pub(super) fn read_payload(text: Option<&str>, flag: &str) -> Result<Value> {
    let Some(text) = text else {
        return Ok(serde_json::json!({}));
    };
    let (text, from) = match text.strip_prefix('@') {
        Some(file) => (
            std::fs::read_to_string(file)
                .map_err(|e| CliError::Usage(format!("{flag}: cannot read {file}: {e}")))?,
            format!(" in {file}"),
        ),
        None => (text.to_owned(), String::new()),
    };
    Ok(serde_json::from_str(&text)
        .map_err(|e| CliError::Usage(format!("{flag}: not valid JSON{from}: {e}")))?)
}

/// Enqueues the job (and the chain of `--then` steps) and prints the id of each, in order.
pub(super) async fn run(
    args: EnqueueArgs,
    settings: &Settings,
    broker: Arc<dyn Broker>,
) -> Result<()> {
    if let Some(path) = &args.file {
        return super::enqueue_file::run(path, settings, broker).await;
    }
    let Some(kind) = args.kind else {
        return Err(CliError::Usage("give a KIND, or --file PATH".into()).into());
    };
    let payload = read_payload(args.payload.as_deref(), "--payload")?;
    if let Some(key) = &args.unique_key
        && let Err(e) = check_client_unique_key(key)
    {
        return Err(CliError::Usage(format!("--unique-key: {}", e.message)).into());
    }
    let first = EnqueueRequest {
        queue: args.queue,
        priority: args.priority,
        start: args.delay.map(Start::After),
        max_retries: args.max_retries,
        timeout: args.timeout,
        unique_key: args.unique_key,
        ..EnqueueRequest::new(kind, payload)
    };
    let mut then = Vec::with_capacity(args.then.len());
    for step in &args.then {
        let (kind, payload) = match step.split_once('=') {
            Some((kind, json)) => (kind, read_payload(Some(json), "--then")?),
            None => (step.as_str(), serde_json::json!({})),
        };
        then.push(EnqueueRequest::new(kind, payload));
    }
    let done = match service(settings, broker)?.submit(first, then).await {
        Ok(done) => done,
        Err(SubmitError::Field(e)) if e.field.starts_with("then") => {
            return Err(CliError::Usage(format!("--then {}: {}", e.field, e.message)).into());
        }
        Err(SubmitError::Field(e)) => {
            return Err(CliError::Usage(format!("{}: {}", flag_of(&e.field), e.message)).into());
        }
        Err(SubmitError::Broker(e)) => return Err(e).context("enqueueing"),
    };
    if !done.created {
        eprint_line("a job with this unique key exists already; its id:");
    }
    if done.steps.is_empty() {
        out::line(done.job.id)?;
    }
    for step in done.steps {
        out::line(step.id)?;
    }
    Ok(())
}

/// The flag (or argument) a request field came from, for messages.
fn flag_of(field: &str) -> String {
    match field {
        "kind" => "KIND".into(),
        "payload" => "--payload".into(),
        f if f.starts_with("payload.") => format!("--payload ({f})"),
        f => format!("--{}", f.replace('_', "-")),
    }
}
