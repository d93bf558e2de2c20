//! The JSON shape of one job, as `POST /v1/jobs` takes it, read into a
//! [`Submission`]: the body of `POST /v1/jobs`, each element of `POST /v1/jobs/batch`, and each
//! line of `hopper enqueue --file` all go through [`read`], so they accept and refuse alike.
//!
//! The object is read field by field rather than through one serde struct, so that every
//! refusal (wrong type, out of range, unknown key) names its field. Only types are checked
//! here; the rules a job must follow are `crate::service::submit`'s. Not here: what to do with
//! a non-object (each caller words that its own way), headers, answers.

use serde_json::{Map, Value, json};

use crate::service::submit::Start;
use crate::service::{EnqueueRequest, FieldError, Submission};
use hopper_workers::job::PRIORITY_RULE;
use hopper_workers::time::Timestamp;

/// Reads one job's object, and the steps of its `then` (a chain). A step's refusals name it:
/// `then[0].kind`.
pub fn read(mut m: Map<String, Value>) -> Result<Submission, FieldError> {
    let mut then = Vec::new();
    if let Some(steps) = take(&mut m, "then") {
        let Value::Array(steps) = steps else {
            return Err(FieldError::invalid("then", "must be an array of steps"));
        };
        for (i, step) in steps.into_iter().enumerate() {
            let at = |e: FieldError| e.under(&format!("then[{i}]"));
            let Value::Object(mut sm) = step else {
                return Err(FieldError::invalid(
                    format!("then[{i}]"),
                    "must be an object",
                ));
            };
            if sm.contains_key("then") {
                return Err(at(FieldError::invalid(
                    "then",
                    "a step cannot have its own then",
                )));
            }
            then.push(fields(&mut sm).map_err(at)?);
        }
    }
    Ok(Submission {
        first: fields(&mut m)?,
        then,
    })
}

/// Reads one job's fields (the object, or a step of `then`) into their types.
fn fields(m: &mut Map<String, Value>) -> Result<EnqueueRequest, FieldError> {
    let kind = match take(m, "kind") {
        None => {
            return Err(FieldError::with_code(
                "missing_field",
                "kind",
                "is required",
            ));
        }
        Some(v) => string(v, "kind")?,
    };
    let mut req = EnqueueRequest::new(kind, take(m, "payload").unwrap_or_else(|| json!({})));
    if let Some(v) = take(m, "queue") {
        req.queue = Some(string(v, "queue")?);
    }
    if let Some(v) = take(m, "priority") {
        // The range is the engine's rule (`NewJob::validate`); here only the type.
        req.priority = Some(int(v, "priority", PRIORITY_RULE)?);
    }
    match (take(m, "delay"), take(m, "run_at")) {
        (Some(_), Some(_)) => {
            return Err(FieldError::invalid(
                "delay",
                "give delay or run_at, not both",
            ));
        }
        (Some(v), None) => req.start = Some(Start::After(duration(v, "delay")?)),
        (None, Some(v)) => {
            let s = string(v, "run_at")?;
            let at =
                Timestamp::parse(&s).map_err(|e| FieldError::invalid("run_at", e.to_string()))?;
            req.start = Some(Start::At(at));
        }
        (None, None) => {}
    }
    if let Some(v) = take(m, "max_retries") {
        req.max_retries = Some(int(
            v,
            "max_retries",
            "must be a whole number from 0 to 1000",
        )?);
    }
    if let Some(v) = take(m, "timeout") {
        req.timeout = Some(duration(v, "timeout")?);
    }
    if let Some(v) = take(m, "unique_key") {
        let key = string(v, "unique_key")?;
        crate::service::submit::check_client_unique_key(&key)?;
        req.unique_key = Some(key);
    }
    if let Some(key) = m.keys().next() {
        return Err(FieldError::with_code(
            "unknown_field",
            key.clone(),
            "unknown field; known: kind, payload, queue, priority, delay, run_at, max_retries, \
             timeout, unique_key, then",
        ));
    }
    Ok(req)
}

/// Removes `key`; `null` counts as absent.
fn take(m: &mut Map<String, Value>, key: &str) -> Option<Value> {
    m.remove(key).filter(|v| !v.is_null())
}

/// A non-negative integer that fits `T`.
fn int<T: TryFrom<u64>>(v: Value, field: &str, rule: &str) -> Result<T, FieldError> {
    v.as_u64()
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| FieldError::invalid(field, rule))
}

fn string(v: Value, field: &str) -> Result<String, FieldError> {
    match v {
        Value::String(s) => Ok(s),
        _ => Err(FieldError::invalid(field, "must be a string")),
    }
}

fn duration(v: Value, field: &str) -> Result<std::time::Duration, FieldError> {
    let s = string(v, field)
        .map_err(|_| FieldError::invalid(field, "must be a duration string such as \"30s\""))?;
    // Said as the CLI says it: humantime's own words for "-5s" name a character position.
    if s.trim_start().starts_with('-') {
        return Err(FieldError::invalid(field, "must not be negative"));
    }
    humantime::parse_duration(s.trim()).map_err(|e| {
        FieldError::invalid(
            field,
            format!("{s:?} is not a duration ({e}); write e.g. \"500ms\", \"30s\", \"5m\""),
        )
    })
}
