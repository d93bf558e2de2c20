//! Redis replies -> Hopper types: a job from its hash (as `HGETALL` or list.lua hand it over,
//! or packed into one string by fetch.lua), the answers of the one-job scripts, and the typed
//! error for data the broker did not write.
//!
//! It owns the reading of the stored fields, including the packed field `d` (see `keys.rs` for
//! what the hash holds and why). It sends nothing: the callers run the commands and pass their
//! replies in. Stream entries are read into events by `events.rs`, which shares the small
//! readers here ([`text`], [`string`], [`parse_num`]).

use redis::Value;

use crate::error::{BrokerError, BrokerResult};
use crate::job::{ChainLink, Job, JobId, JobState};
use crate::time::Timestamp;

/// Redis returned something the broker did not write: a corrupt or foreign key.
#[derive(Debug, thiserror::Error)]
#[error("unexpected data in Redis: {0}")]
struct Corrupt(String);

pub(super) fn corrupt(message: impl Into<String>) -> BrokerError {
    BrokerError::Backend(Box::new(Corrupt(message.into())))
}

pub(super) fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

pub(super) fn string(v: &Value) -> BrokerResult<String> {
    text(v)
        .map(str::to_owned)
        .ok_or_else(|| corrupt(format!("expected a string, got {v:?}")))
}

pub(super) fn int(v: &Value) -> BrokerResult<i64> {
    match v {
        Value::Int(i) => Ok(*i),
        other => text(other)
            .and_then(parse_num)
            .ok_or_else(|| corrupt(format!("expected an integer, got {other:?}"))),
    }
}

/// Integers written by Lua are plain digits; accept a float form too, should one appear.
pub(super) fn parse_num(s: &str) -> Option<i64> {
    s.parse::<i64>().ok().or_else(|| {
        s.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(|f| f as i64)
    })
}

fn array(v: Value) -> BrokerResult<Vec<Value>> {
    match v {
        Value::Array(a) => Ok(a),
        Value::Nil => Ok(Vec::new()),
        other => Err(corrupt(format!("expected an array, got {other:?}"))),
    }
}

/// A job from its hash as a flat field/value array; `None` for an empty hash (no such job).
/// The hash does not store the id and the queue (its key names them), nor zero counters.
pub(super) fn job_from_fields(v: &Value, id: &str, queue: &str) -> BrokerResult<Option<Job>> {
    let Value::Array(items) = v else {
        return Err(corrupt(format!("expected a job hash, got {v:?}")));
    };
    if items.is_empty() {
        return Ok(None);
    }
    job_from_pairs(items, id, queue).map(Some)
}

/// The fields fixed at enqueue, packed in `d` after the job's first event id (see
/// common.lua): `<ev0>|<priority>|<max_retries>|<timeout_ms>|<created_at>|<payload>`.
const PACKED: [&str; 5] = [
    "priority",
    "max_retries",
    "timeout_ms",
    "created_at",
    "payload",
];

/// A job from the field/value pairs of its hash as Redis values (a value that is not text is
/// passed over).
fn job_from_pairs(items: &[Value], id: &str, queue: &str) -> BrokerResult<Job> {
    let pairs = items
        .chunks_exact(2)
        .filter_map(|pair| Some((text(&pair[0])?, text(&pair[1])?)));
    job_from_texts(pairs, id, queue)
}

/// A job from the field/value pairs of its hash.
fn job_from_texts<'a>(
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
    id: &str,
    queue: &str,
) -> BrokerResult<Job> {
    let mut m = Fields::default();
    for (k, val) in pairs {
        m.set(k, Some(val));
    }
    // The packed fields are read from `d` alone: a hash field of the same name is not ours.
    for name in PACKED {
        m.set(name, None);
    }
    if let Some(d) = m.get("d") {
        let mut parts = d.splitn(PACKED.len() + 1, '|').skip(1);
        for name in PACKED {
            let Some(part) = parts.next() else {
                return Err(corrupt(format!("job {id}: bad field d")));
            };
            m.set(name, Some(part));
        }
    }
    decode(&m, id, queue)
}

/// The names of the stored fields [`decode`] reads, `d` and the names of its parts included;
/// a hash field of another name is ignored.
const FIELDS: [&str; 26] = [
    "d",
    "state",
    "kind",
    "payload",
    "input",
    "priority",
    "run_at",
    "attempt",
    "max_retries",
    "timeout_ms",
    "interruptions",
    "interruption_streak",
    "lease_token",
    "lease_until",
    "progress",
    "progress_message",
    "result",
    "last_error",
    "unique_key",
    "created_at",
    "started_at",
    "finished_at",
    "chain_id",
    "chain_index",
    "chain_next",
    "checkpoint",
];

/// A job's stored fields as text, by name, in a fixed table of [`FIELDS`]: this runs for
/// every fetched job, and filling and reading a table costs a fraction of a `HashMap` of the
/// same (no hashing, no allocation).
#[derive(Default)]
struct Fields<'a>([Option<&'a str>; FIELDS.len()]);

impl<'a> Fields<'a> {
    fn slot(name: &str) -> Option<usize> {
        FIELDS.iter().position(|f| *f == name)
    }

    /// Sets (or with `None` clears) a field; a name not in [`FIELDS`] is dropped.
    fn set(&mut self, name: &str, value: Option<&'a str>) {
        if let Some(i) = Self::slot(name) {
            self.0[i] = value;
        }
    }

    fn get(&self, name: &str) -> Option<&'a str> {
        Self::slot(name).and_then(|i| self.0[i])
    }
}

/// The byte fetch.lua joins a job's parts with (its `JOINER`): no UTF-8 text holds it.
const JOINER: u8 = 0xFF;

/// A job leased by fetch.lua: its hash's fields and values as they were before the lease,
/// then its id, joined by [`JOINER`] into one string. Every part must be UTF-8 and the parts
/// must pair up: a value holding the joiner (only a value Hopper did not write can) makes the
/// job corrupt, never a job with shifted fields.
pub(super) fn job_from_fetch(v: &Value, queue: &str) -> BrokerResult<Job> {
    let Value::BulkString(packed) = v else {
        return Err(corrupt(format!("expected a fetched job, got {v:?}")));
    };
    let parts = packed
        .split(|b| *b == JOINER)
        .map(std::str::from_utf8)
        .collect::<Result<Vec<&str>, _>>()
        .map_err(|_| corrupt("fetch.lua answered a job that is not UTF-8"))?;
    let Some((id, fields)) = parts.split_last() else {
        return Err(corrupt("fetch.lua answered an empty job"));
    };
    if fields.len() % 2 != 0 {
        return Err(corrupt(format!(
            "job {id}: fetch.lua answered fields that do not pair up"
        )));
    }
    let pairs = fields.chunks_exact(2).map(|pair| (pair[0], pair[1]));
    job_from_texts(pairs, id, queue)
}

/// The id of a job fetch.lua leased and the lease token the script wrote (the one before, + 1),
/// read leniently from the packed parts: enough to end the lease of a job [`job_from_fetch`]
/// cannot read. `None` when not even the id is text.
///
/// A value holding the byte [`JOINER`] (data Hopper did not write) splits into more parts and
/// shifts the field/value pairs after it, so the `lease_token` field is looked for at every
/// part, not only at the even ones: an even one first, then any followed by a number.
pub(super) fn fetched_lease(v: &Value) -> Option<(String, u64)> {
    let Value::BulkString(packed) = v else {
        return None;
    };
    let parts: Vec<&[u8]> = packed.split(|b| *b == JOINER).collect();
    let (id, fields) = parts.split_last()?;
    let id = std::str::from_utf8(id).ok()?;
    let number = |part: &[u8]| std::str::from_utf8(part).ok()?.parse::<u64>().ok();
    let token_after = |even: bool| {
        fields
            .windows(2)
            .enumerate()
            .filter(|(i, _)| !even || i % 2 == 0)
            .find(|(_, pair)| pair[0] == b"lease_token" && number(pair[1]).is_some())
            .and_then(|(_, pair)| number(pair[1]))
    };
    let before = token_after(true)
        .or_else(|| token_after(false))
        .unwrap_or(0);
    Some((id.to_owned(), before + 1))
}

/// `None` for an absent or empty field ('' is how scripts clear a field in place).
fn nonempty(v: Option<&str>) -> Option<&str> {
    v.filter(|s| !s.is_empty())
}

/// A job from its stored fields as text, under their own names and the names of `d`'s parts.
fn decode(fields: &Fields<'_>, id: &str, queue: &str) -> BrokerResult<Job> {
    let get = |f: &str| fields.get(f);
    let req = |f: &str| -> BrokerResult<String> {
        get(f)
            .map(str::to_owned)
            .ok_or_else(|| corrupt(format!("job {id} has no field {f}")))
    };
    let opt_num = |f: &str| -> BrokerResult<Option<i64>> {
        get(f)
            .filter(|s| !s.is_empty())
            .map(|s| {
                parse_num(s).ok_or_else(|| corrupt(format!("job {id}: field {f} is not a number")))
            })
            .transpose()
    };
    let num = |f: &str| -> BrokerResult<i64> {
        opt_num(f)?.ok_or_else(|| corrupt(format!("job {id} has no field {f}")))
    };
    // Times are stored as integer milliseconds (the scripts compare and score them).
    let time = |f: &str| num(f).map(Timestamp::from_millis);
    let opt_time = |f: &str| opt_num(f).map(|t| t.map(Timestamp::from_millis));
    // Counters are not stored while 0.
    let count = |f: &str| -> BrokerResult<u32> {
        u32::try_from(opt_num(f)?.unwrap_or(0))
            .map_err(|_| corrupt(format!("job {id}: field {f} out of range")))
    };
    let json = |f: &str, s: &str| -> BrokerResult<serde_json::Value> {
        serde_json::from_str(s).map_err(|e| corrupt(format!("job {id}: field {f}: {e}")))
    };
    // A chain step's input: its predecessor's result, as the JSON text it was stored as.
    let input = nonempty(get("input"))
        .map(|s| json("input", s))
        .transpose()?;
    let state_s = req("state")?;
    let state = JobState::parse(&state_s)
        .ok_or_else(|| corrupt(format!("job {id}: unknown state {state_s}")))?;
    // A succeeded job's progress is 100, whatever it was before: finish.lua does not
    // write it.
    let progress = if state == JobState::Succeeded {
        100
    } else {
        u8::try_from(opt_num("progress")?.unwrap_or(0).clamp(0, 100)).unwrap_or(0)
    };
    Ok(Job {
        id: JobId(id.to_owned()),
        queue: queue.to_owned(),
        kind: req("kind")?,
        payload: with_input(json("payload", &req("payload")?)?, input),
        priority: u8::try_from(num("priority")?)
            .map_err(|_| corrupt(format!("job {id}: bad priority")))?,
        state,
        run_at: time("run_at")?,
        attempt: count("attempt")?,
        max_retries: count("max_retries")?,
        timeout_ms: opt_num("timeout_ms")?.and_then(|t| u64::try_from(t).ok()),
        interruptions: count("interruptions")?,
        interruption_streak: count("interruption_streak")?,
        lease_token: u64::try_from(opt_num("lease_token")?.unwrap_or(0))
            .map_err(|_| corrupt(format!("job {id}: bad lease_token")))?,
        // Only a running job has a lease; finish.lua leaves the last deadline behind.
        lease_until: if state == JobState::Running {
            opt_time("lease_until")?
        } else {
            None
        },
        progress,
        progress_message: nonempty(get("progress_message")).map(str::to_owned),
        result: nonempty(get("result"))
            .map(|s| json("result", s))
            .transpose()?,
        last_error: nonempty(get("last_error")).map(str::to_owned),
        unique_key: nonempty(get("unique_key")).map(str::to_owned),
        created_at: time("created_at")?,
        started_at: opt_time("started_at")?,
        finished_at: opt_time("finished_at")?,
        chain: match nonempty(get("chain_id")) {
            Some(chain_id) => Some(ChainLink {
                id: JobId(chain_id.to_owned()),
                index: opt_num("chain_index")?
                    .and_then(|i| u32::try_from(i).ok())
                    .unwrap_or(0),
                next: nonempty(get("chain_next")).map(|n| JobId(n.to_owned())),
            }),
            None => None,
        },
        checkpoint: nonempty(get("checkpoint"))
            .map(|s| json("checkpoint", s))
            .transpose()?,
    })
}

/// The payload with its top-level `input` set to a chain step's `input`, if it has one; a
/// payload that is not an object is left as it is (as SQLite's `json_set` leaves it).
fn with_input(
    mut payload: serde_json::Value,
    input: Option<serde_json::Value>,
) -> serde_json::Value {
    if let (Some(input), Some(map)) = (input, payload.as_object_mut()) {
        map.insert("input".to_owned(), input);
    }
    payload
}

/// What cancel.lua and retry.lua answer.
pub(super) enum Answer {
    Ok(Box<Job>),
    NotFound,
    State(JobState),
}

pub(super) fn answer(v: Value, id: &JobId, queue: &str) -> BrokerResult<Answer> {
    let items = array(v)?;
    match items.first().and_then(text) {
        Some("ok") => items
            .get(1)
            .map(|h| job_from_fields(h, id.as_str(), queue))
            .transpose()?
            .flatten()
            .map(|j| Answer::Ok(Box::new(j)))
            .ok_or_else(|| corrupt("script answered ok without a job")),
        Some("nf") => Ok(Answer::NotFound),
        Some("final" | "state") => {
            let s = items.get(1).and_then(text).unwrap_or("");
            JobState::parse(s)
                .map(Answer::State)
                .ok_or_else(|| corrupt(format!("unknown state {s}")))
        }
        _ => Err(corrupt("unexpected script answer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fetched job as fetch.lua answers it: `parts` joined by 0xFF.
    fn packed(parts: &[&[u8]]) -> Value {
        Value::BulkString(parts.join(&JOINER))
    }

    const FRESH: [&[u8]; 10] = [
        b"kind",
        b"test.k",
        b"d",
        b"1-0|5|3||1700000000000|{\"a\":\"x|y\"}",
        b"state",
        b"queued",
        b"run_at",
        b"1700000000000",
        b"seq",
        b"7",
    ];

    #[test]
    fn a_fetched_job_is_read_from_its_packed_parts() {
        let mut parts = FRESH.to_vec();
        parts.extend([&b"unique_key"[..], "nul\0 ÿ|".as_bytes(), b"job-1"]);
        let job = job_from_fetch(&packed(&parts), "q").expect("a job");
        assert_eq!(job.id.as_str(), "job-1");
        assert_eq!(job.queue, "q");
        assert_eq!(job.kind, "test.k");
        assert_eq!(job.payload, serde_json::json!({"a": "x|y"}));
        assert_eq!(job.priority, 5);
        assert_eq!(job.state, JobState::Queued);
        assert_eq!(job.unique_key.as_deref(), Some("nul\0 ÿ|"));
    }

    #[test]
    fn a_value_holding_the_joiner_makes_the_job_corrupt_not_shifted() {
        let mut parts = FRESH.to_vec();
        // A value someone else wrote, holding 0xFF once: the parts no longer pair up.
        parts.extend([&b"last_error"[..], b"a\xffb", b"job-1"]);
        let err = job_from_fetch(&packed(&parts), "q").expect_err("corrupt");
        assert!(err.to_string().contains("unexpected data"), "{err}");
    }

    #[test]
    fn the_lease_of_an_unreadable_job_is_read_leniently() {
        let mut parts = FRESH.to_vec();
        parts.extend([&b"last_error"[..], b"\xc3", b"job-1"]);
        assert_eq!(fetched_lease(&packed(&parts)), Some(("job-1".into(), 1)));
        let mut parts = FRESH.to_vec();
        parts.extend([&b"lease_token"[..], b"4", b"job-2"]);
        assert_eq!(fetched_lease(&packed(&parts)), Some(("job-2".into(), 5)));
        assert_eq!(fetched_lease(&packed(&[b"\xc3"])), None);
        // A value holding the joiner shifts the pairs after it.
        let mut parts = vec![&b"kind"[..], b"k", b"", b"state", b"queued"];
        parts.extend([&b"lease_token"[..], b"1", b"job-3"]);
        assert_eq!(fetched_lease(&packed(&parts)), Some(("job-3".into(), 2)));
    }

    #[test]
    fn a_fetched_job_that_is_not_utf8_is_corrupt() {
        let mut parts = FRESH.to_vec();
        parts.extend([&b"last_error"[..], b"\xc3", b"job-1"]);
        assert!(job_from_fetch(&packed(&parts), "q").is_err());
        assert!(job_from_fetch(&Value::Array(Vec::new()), "q").is_err());
    }
}
