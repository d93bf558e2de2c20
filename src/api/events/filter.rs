//! The query of `GET /v1/events`: which events a client wants (`job`, `queue`, `kind`, `type`,
//! comma lists), where it resumes (`since`), the page size (`limit`) and the `token` a browser
//! passes where it cannot set a header.
//!
//! Parsing refuses anything it does not know, naming the parameter, so that a typo is a 400
//! before a WebSocket upgrade instead of a stream that silently matches nothing. Whether a
//! `since` cursor is one the broker issued is the broker's to say (`super::check_since`).

use std::collections::HashSet;

use hopper_workers::event::{Event, EventType};
use hopper_workers::job::{MAX_KIND_BYTES, valid_name};

use crate::api::ApiError;

/// What one client follows. An empty set matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub jobs: HashSet<String>,
    pub queues: HashSet<String>,
    pub kinds: HashSet<String>,
    pub types: HashSet<EventType>,
}

impl EventFilter {
    /// Whether `e` is one the client asked for.
    pub fn matches(&self, e: &Event) -> bool {
        wanted(&self.jobs, e.job_id.as_str())
            && wanted(&self.queues, &e.queue)
            && wanted(&self.kinds, &e.kind)
            && (self.types.is_empty() || self.types.contains(&e.kind_of_event))
    }
}

/// Sets up to this size are searched by comparing each item rather than by hashing.
const SCAN: usize = 4;

/// Whether `value` is in `set`, an empty set holding everything. Every stream tests every
/// event, so a thousand streams of one queue test it a thousand times: a filter of a few
/// items compares them (a length and a few bytes each), which is cheaper than hashing the
/// value with SipHash each time.
fn wanted(set: &HashSet<String>, value: &str) -> bool {
    match set.len() {
        0 => true,
        n if n <= SCAN => set.iter().any(|item| item == value),
        _ => set.contains(value),
    }
}

/// The parsed query string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventQuery {
    pub filter: EventFilter,
    /// The cursor to resume after (`since`, or the `Last-Event-ID` header for SSE).
    pub since: Option<String>,
    /// Page size of the JSON page; ignored by the streams.
    pub limit: Option<usize>,
    /// A token passed as `?token=` (EventSource and browsers' WebSocket cannot set headers).
    pub token: Option<String>,
}

/// The largest JSON page.
pub const MAX_LIMIT: usize = 1000;
/// The JSON page size when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;

impl EventQuery {
    /// Parses `pairs` (the decoded query string), refusing unknown parameters and bad values
    /// with a 400 naming the parameter.
    pub fn parse(pairs: &[(String, String)]) -> Result<Self, ApiError> {
        let mut q = EventQuery::default();
        for (i, (key, value)) in pairs.iter().enumerate() {
            // `job`, `queue`, `kind` and `type` are lists and may be repeated; the others hold
            // one value, which a repeat would silently replace.
            if matches!(key.as_str(), "since" | "limit" | "token")
                && pairs[..i].iter().any(|(k, _)| k == key)
            {
                return Err(bad(key, "given more than once; it takes one value"));
            }
            match key.as_str() {
                "job" => q.filter.jobs.extend(checked_items(key, value, &JOB_ID)?),
                "queue" => q.filter.queues.extend(checked_items(key, value, &QUEUE)?),
                "kind" => q.filter.kinds.extend(checked_items(key, value, &KIND)?),
                "type" => {
                    for name in items(key, value)? {
                        let t = EventType::parse(name).ok_or_else(|| {
                            let known: Vec<_> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                            bad(
                                key,
                                format!("unknown event type {name:?}; known: {}", known.join(", ")),
                            )
                        })?;
                        q.filter.types.insert(t);
                    }
                }
                "since" => {
                    if value.is_empty() {
                        return Err(bad(key, "must be an event id"));
                    }
                    q.since = Some(value.clone());
                }
                "limit" => {
                    let n = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| bad(key, format!("must be 1 to {MAX_LIMIT}")))?;
                    q.limit = Some(n);
                }
                "token" => q.token = Some(value.clone()),
                _ => {
                    return Err(bad(
                        key,
                        "unknown parameter; known: job, queue, kind, type, since, limit, token",
                    ));
                }
            }
        }
        Ok(q)
    }
}

/// The non-empty items of a comma list.
fn items<'a>(key: &str, value: &'a str) -> Result<Vec<&'a str>, ApiError> {
    let list: Vec<&str> = value.split(',').map(str::trim).collect();
    if list.iter().any(|s| s.is_empty()) {
        return Err(bad(key, "must be a comma list without empty items"));
    }
    Ok(list)
}

/// What each item of a `job`, `queue` or `kind` list must be: a test, and the 400's message
/// when an item fails it.
struct Rule(fn(&str) -> bool, &'static str);

// Lengths are counted in bytes of UTF-8, and said so: text that is not ASCII reaches them in
// fewer characters. Queue names are ASCII only.
const JOB_ID: Rule = Rule(|id| id.len() <= 64, "job ids are at most 64 bytes of UTF-8");
const QUEUE: Rule = Rule(
    valid_name,
    "queue names are 1 to 64 characters of letters, digits, '-', '_' or '.'",
);
const KIND: Rule = Rule(
    |kind| kind.len() <= MAX_KIND_BYTES,
    "kinds are 1 to 128 bytes of UTF-8",
);

/// The items of a comma list, each owned; one that breaks `rule` is a 400 saying so.
fn checked_items(key: &str, value: &str, rule: &Rule) -> Result<Vec<String>, ApiError> {
    let Rule(ok, message) = rule;
    items(key, value)?
        .into_iter()
        .map(|item| {
            if ok(item) {
                Ok(item.to_owned())
            } else {
                Err(bad(key, *message))
            }
        })
        .collect()
}

fn bad(key: &str, message: impl Into<String>) -> ApiError {
    ApiError::field(
        "invalid_parameter",
        key,
        format!("{key}: {}", message.into()),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(q: &[(&str, &str)]) -> Result<EventQuery, ApiError> {
        let pairs: Vec<(String, String)> = q
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        EventQuery::parse(&pairs)
    }

    #[test]
    fn bad_values_name_their_parameter() {
        for (k, v) in [
            ("type", "job.exploded"),
            ("queue", "no spaces"),
            ("queue", "a,,b"),
            ("limit", "0"),
            ("limit", "x"),
            ("since", ""),
            ("colour", "red"),
        ] {
            let e = parse(&[(k, v)]).expect_err(k);
            assert_eq!(e.field.as_deref(), Some(k));
        }
    }

    #[test]
    fn a_single_valued_parameter_given_twice_is_refused() {
        for k in ["since", "limit", "token"] {
            let e = parse(&[(k, "5"), ("queue", "a"), (k, "6")]).expect_err(k);
            assert_eq!(e.field.as_deref(), Some(k));
        }
        let q = parse(&[("queue", "a"), ("queue", "b"), ("type", "job.dead")]).unwrap();
        assert_eq!(q.filter.queues.len(), 2);
    }

    #[test]
    fn comma_lists_fill_the_filter() {
        let q = parse(&[("type", "job.progress,job.succeeded"), ("queue", "a,b")]).unwrap();
        assert_eq!(q.filter.types.len(), 2);
        assert_eq!(q.filter.queues.len(), 2);
    }
}
