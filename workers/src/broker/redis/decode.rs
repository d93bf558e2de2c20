//! Redis replies -> Hopper types: a job from its record (as `GET`, list.lua, cancel.lua and
//! retry.lua hand it over, or after its id as fetch.lua does), the answers of the one-job
//! scripts, and the typed error for data the broker did not write.
//!
//! It owns the reading of the stored record, including its packed parts `h` and `d` (see
//! common.lua for the layout and `keys.rs` for why). It sends nothing: the callers run the commands and pass their
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

/// A job from its record and its `d` as get.lua (or list.lua, cancel.lua, retry.lua) read
/// them; `None` for no record (no such job). Neither stores the id and the queue (their keys
/// name them).
pub(super) fn job_from_record(
    rec: &Value,
    d: &Value,
    id: &str,
    queue: &str,
) -> BrokerResult<Option<Job>> {
    match rec {
        Value::Nil => Ok(None),
        Value::BulkString(rec) => job_from_bytes(rec, d_bytes(d, id)?, id, queue).map(Some),
        other => Err(corrupt(format!("expected a job record, got {other:?}"))),
    }
}

/// get.lua's answer: the job's record and `d`, `None` for no such job.
pub(super) fn got(v: &Value) -> BrokerResult<Option<(&Value, &Value)>> {
    match v {
        Value::Nil => Ok(None),
        Value::Array(a) if a.len() == 2 => Ok(Some((&a[0], &a[1]))),
        other => Err(corrupt(format!("expected a job and its d, got {other:?}"))),
    }
}

/// A job's `d` as a script read it (none is corrupt: every job has one).
fn d_bytes<'a>(d: &'a Value, id: &str) -> BrokerResult<&'a [u8]> {
    match d {
        Value::BulkString(d) => Ok(d),
        Value::Nil => Err(corrupt(format!("job {id} has no field d"))),
        other => Err(corrupt(format!("job {id}: expected its d, got {other:?}"))),
    }
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

/// The fields that change as a job moves, packed in `h`, its record's first part (see
/// common.lua), in their order there.
const HOT: [&str; 10] = [
    "state",
    "attempt",
    "lease_token",
    "lease_until",
    "started_at",
    "run_at",
    "seq",
    "finished_at",
    "interruption_streak",
    "evs",
];

/// The byte ending a record's `h`, kind and `d`, and each optional field's name.
const PART: u8 = 0xFF;
/// The byte starting each optional field of a record.
const OPTIONAL: u8 = 0xFE;

/// A job record's fields by name (see common.lua): `h <PART> kind`, then
/// `<OPTIONAL> name <PART> value` per optional field; and those of its `d`, a key of its own. The separators are bytes no UTF-8 text
/// holds, so the record is cut at them first and each part must be UTF-8: a value holding
/// one (only data Hopper did not write can) makes the record corrupt or unreadable, never a
/// job with shifted fields read as valid.
fn record_fields<'a>(rec: &'a [u8], d: &'a [u8], id: &str) -> BrokerResult<Fields<'a>> {
    let utf8 = |part: &'a [u8]| {
        std::str::from_utf8(part).map_err(|_| corrupt(format!("job {id}: a field is not UTF-8")))
    };
    let bad = || corrupt(format!("job {id}: not a job record"));
    let mut m = Fields::default();
    let mut pieces = rec.split(|b| *b == OPTIONAL);
    let head = pieces.next().ok_or_else(bad)?;
    let mut parts = head.split(|b| *b == PART);
    let (Some(h), Some(kind), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    for piece in pieces {
        let mut pair = piece.splitn(2, |b| *b == PART);
        let (Some(name), Some(value)) = (pair.next(), pair.next()) else {
            return Err(bad());
        };
        let name = utf8(name)?;
        // Only optional fields: a pair may not stand in for a packed or hot one.
        if !PACKED.contains(&name) && !HOT.contains(&name) && !matches!(name, "d" | "kind") {
            m.set(name, Some(utf8(value)?));
        }
    }
    let h = utf8(h)?;
    let mut hot = h.split('|');
    for name in HOT {
        m.set(name, Some(hot.next().ok_or_else(bad)?));
    }
    if hot.next().is_some() {
        return Err(bad());
    }
    m.set("kind", Some(utf8(kind)?));
    let d = utf8(d)?;
    m.set("d", Some(d));
    let mut packed = d.splitn(PACKED.len() + 1, '|').skip(1);
    for name in PACKED {
        let Some(part) = packed.next() else {
            return Err(corrupt(format!("job {id}: bad field d")));
        };
        m.set(name, Some(part));
    }
    Ok(m)
}

/// A job from its record's and its `d`'s bytes.
fn job_from_bytes(rec: &[u8], d: &[u8], id: &str, queue: &str) -> BrokerResult<Job> {
    decode(&record_fields(rec, d, id)?, id, queue)
}

/// What a job's history needs of its record: the id of its first stream entry (leading `d`),
/// the ids of its later ones (`evs`) and, for a job stored before `evs` existed, `evn`.
pub(super) struct EventIds {
    pub(super) first: String,
    pub(super) later: Vec<String>,
    pub(super) evn: Option<String>,
}

/// [`EventIds`] of a record and its `d`, `None` for no record. Only the parts the history
/// needs are read, so that an optional field another program spoilt does not hide a job's
/// history.
pub(super) fn event_ids(rec: &Value, d: &Value, id: &str) -> BrokerResult<Option<EventIds>> {
    let rec = match rec {
        Value::Nil => return Ok(None),
        Value::BulkString(rec) => rec,
        other => return Err(corrupt(format!("expected a job record, got {other:?}"))),
    };
    fn text(b: &[u8]) -> Option<&str> {
        std::str::from_utf8(b).ok()
    }
    let mut pieces = rec.split(|b| *b == OPTIONAL);
    let h = pieces
        .next()
        .unwrap_or_default()
        .split(|b| *b == PART)
        .next();
    let Some((first, _)) = text(d_bytes(d, id)?).and_then(|d| d.split_once('|')) else {
        return Err(corrupt(format!("job {id}: bad field d")));
    };
    let evs = h
        .and_then(text)
        .and_then(|h| h.rsplit('|').next())
        .unwrap_or("");
    let evn = pieces
        .find_map(|p| p.strip_prefix(b"evn\xFF".as_slice()))
        .and_then(text)
        .filter(|e| !e.is_empty());
    Ok(Some(EventIds {
        first: first.to_owned(),
        later: evs
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        evn: evn.map(str::to_owned),
    }))
}

/// The names of the stored fields [`decode`] reads, `d` and the names of its parts included;
/// a field of another name is ignored.
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

/// A job leased by fetch.lua, which answers its id, its record as it was before the lease and
/// its `d`.
pub(super) fn job_from_fetch(id: &Value, rec: &Value, d: &Value, queue: &str) -> BrokerResult<Job> {
    let Value::BulkString(id) = id else {
        return Err(corrupt(format!("expected a fetched job's id, got {id:?}")));
    };
    let Value::BulkString(rec) = rec else {
        return Err(corrupt(format!("expected a fetched job, got {rec:?}")));
    };
    let id = std::str::from_utf8(id)
        .map_err(|_| corrupt("fetch.lua answered an id that is not UTF-8"))?;
    job_from_bytes(rec, d_bytes(d, id)?, id, queue)
}

/// The id of a job fetch.lua leased and the lease token the script wrote (the one before, + 1),
/// read leniently: enough to end the lease of a job [`job_from_fetch`] cannot read. The token
/// is the third part of the record's `h`, which comes before any field another program could
/// have spoilt. `None` when not even the id is text.
pub(super) fn fetched_lease(id: &Value, rec: &Value) -> Option<(String, u64)> {
    let Value::BulkString(id) = id else {
        return None;
    };
    let id = std::str::from_utf8(id).ok()?;
    let before = match rec {
        Value::BulkString(rec) => rec
            .split(|b| *b == PART || *b == OPTIONAL)
            .next()
            .and_then(|h| h.split(|b| *b == b'|').nth(2))
            .and_then(|t| std::str::from_utf8(t).ok()?.parse::<u64>().ok()),
        _ => None,
    }
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
            .map(|rec| {
                job_from_record(rec, items.get(2).unwrap_or(&Value::Nil), id.as_str(), queue)
            })
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

    /// A record as the scripts write it: `h`, kind, then the optional pairs.
    fn record(h: &str, kind: &str, pairs: &[(&str, &[u8])]) -> Vec<u8> {
        let mut rec = [h.as_bytes(), kind.as_bytes()].join(&PART);
        for (name, value) in pairs {
            rec.push(OPTIONAL);
            rec.extend_from_slice(name.as_bytes());
            rec.push(PART);
            rec.extend_from_slice(value);
        }
        rec
    }

    fn bulk(b: &[u8]) -> Value {
        Value::BulkString(b.to_vec())
    }

    const H: &str = "queued|0|0|||1700000000000|0000000000000007||0|";
    const D: &[u8] = b"1-0|5|3||1700000000000|{\"a\":\"x|y\"}";

    /// A fetched job as fetch.lua answers it: its id, its record, its d.
    fn from_fetch(id: &[u8], rec: &[u8], d: &[u8]) -> BrokerResult<Job> {
        job_from_fetch(&bulk(id), &bulk(rec), &bulk(d), "q")
    }

    fn lease(id: &[u8], rec: &[u8]) -> Option<(String, u64)> {
        fetched_lease(&bulk(id), &bulk(rec))
    }

    #[test]
    fn a_fetched_job_is_read_from_its_record_and_d() {
        let rec = record(H, "test.k", &[("unique_key", "nul\0 ÿ|".as_bytes())]);
        let job = from_fetch(b"job-1", &rec, D).expect("a job");
        assert_eq!(job.id.as_str(), "job-1");
        assert_eq!(job.queue, "q");
        assert_eq!(job.kind, "test.k");
        assert_eq!(job.payload, serde_json::json!({"a": "x|y"}));
        assert_eq!(job.priority, 5);
        assert_eq!(job.max_retries, 3);
        assert_eq!(job.state, JobState::Queued);
        assert_eq!(job.run_at, Timestamp::from_millis(1_700_000_000_000));
        assert_eq!(job.unique_key.as_deref(), Some("nul\0 ÿ|"));
        assert_eq!(job.attempt, 0);
        assert_eq!(job.last_error, None);
        assert!(
            from_fetch(b"job-1", &rec, b"").is_err(),
            "a d without its parts"
        );
        assert!(job_from_fetch(&bulk(b"job-1"), &bulk(&rec), &Value::Nil, "q").is_err());
    }

    #[test]
    fn every_field_of_a_record_is_read() {
        let h = "running|2|9|1700000030000|1700000000100|1700000000000|7|1700000000200|1|2-0 3-0";
        let rec = record(
            h,
            "test.k",
            &[
                ("chain_id", b"c-1"),
                ("chain_index", b"1"),
                ("chain_next", b"c-3"),
                ("input", b"[1,2]"),
                ("interruptions", b"4"),
                ("progress", b"40"),
                ("progress_message", "h\u{e9}lf|way".as_bytes()),
                ("last_error", b"boom"),
                ("checkpoint", b"{\"at\":3}"),
            ],
        );
        let job = job_from_record(&bulk(&rec), &bulk(D), "job-2", "q")
            .expect("reads")
            .expect("a job");
        assert_eq!(job.state, JobState::Running);
        assert_eq!((job.attempt, job.lease_token), (2, 9));
        assert_eq!(
            job.lease_until,
            Some(Timestamp::from_millis(1_700_000_030_000))
        );
        assert_eq!(
            job.started_at,
            Some(Timestamp::from_millis(1_700_000_000_100))
        );
        assert_eq!(
            job.finished_at,
            Some(Timestamp::from_millis(1_700_000_000_200))
        );
        assert_eq!((job.interruptions, job.interruption_streak), (4, 1));
        assert_eq!(job.progress, 40);
        assert_eq!(job.progress_message.as_deref(), Some("h\u{e9}lf|way"));
        assert_eq!(job.last_error.as_deref(), Some("boom"));
        assert_eq!(
            job.payload,
            serde_json::json!({"a": "x|y", "input": [1, 2]})
        );
        assert_eq!(job.checkpoint, Some(serde_json::json!({"at": 3})));
        let chain = job.chain.expect("a chain step");
        assert_eq!((chain.id.as_str(), chain.index), ("c-1", 1));
        assert_eq!(chain.next.as_ref().map(JobId::as_str), Some("c-3"));
    }

    #[test]
    fn no_record_is_no_job_and_a_pair_cannot_stand_in_for_a_packed_field() {
        assert!(
            job_from_record(&Value::Nil, &Value::Nil, "j", "q")
                .expect("reads")
                .is_none()
        );
        let rec = record(H, "test.k", &[("priority", b"0"), ("state", b"dead")]);
        let job = job_from_record(&bulk(&rec), &bulk(D), "j", "q")
            .expect("reads")
            .expect("a job");
        assert_eq!((job.priority, job.state), (5, JobState::Queued));
        assert!(got(&Value::Nil).expect("reads").is_none());
        assert!(got(&bulk(b"x")).is_err());
    }

    #[test]
    fn a_value_holding_a_separator_makes_the_job_corrupt_not_shifted() {
        // A value someone else wrote, holding 0xFF once: its pair no longer reads.
        let rec = record(H, "test.k", &[("last_error", b"a\xffb")]);
        let err = from_fetch(b"job-1", &rec, D).expect_err("corrupt");
        assert!(err.to_string().contains("unexpected data"), "{err}");
        // A record with a part too many or too few.
        let rec = [H.as_bytes(), b"k", D].join(&PART);
        assert!(from_fetch(b"job-1", &rec, D).is_err());
        assert!(from_fetch(b"job-1", H.as_bytes(), D).is_err());
    }

    #[test]
    fn the_lease_of_an_unreadable_job_is_read_leniently() {
        let rec = record(H, "test.k", &[("last_error", b"\xc3")]);
        assert_eq!(lease(b"job-1", &rec), Some(("job-1".into(), 1)));
        // A kind that is not UTF-8.
        let rec = b"running|3|4|1|1|1|7||0|\xffk\xc3".to_vec();
        assert!(from_fetch(b"job-2", &rec, D).is_err());
        assert_eq!(lease(b"job-2", &rec), Some(("job-2".into(), 5)));
        // A kind holding the joiner, after the token's part: the token is still found.
        let rec = b"queued|0|1|||1|7||0|\xffk\xffk2".to_vec();
        assert_eq!(lease(b"job-3", &rec), Some(("job-3".into(), 2)));
        assert_eq!(lease(b"\xc3", b""), None);
    }

    #[test]
    fn a_history_reads_its_event_ids_past_a_spoilt_field() {
        let h = "succeeded|1|1|||1|0000000000000007|2|0|2-0 3-0";
        let rec = record(h, "k", &[("last_error", b"\xc3"), ("evn", b"4-0")]);
        let ids = event_ids(&bulk(&rec), &bulk(D), "j")
            .expect("reads")
            .expect("a record");
        assert_eq!(ids.first, "1-0");
        assert_eq!(ids.later, ["2-0", "3-0"]);
        assert_eq!(ids.evn.as_deref(), Some("4-0"));
        assert!(
            event_ids(&Value::Nil, &Value::Nil, "j")
                .expect("reads")
                .is_none()
        );
        assert!(event_ids(&bulk(&rec), &bulk(b"no bar"), "j").is_err());
    }

    #[test]
    fn a_fetched_job_that_is_not_utf8_is_corrupt() {
        let rec = record(H, "test.k", &[("last_error", b"\xc3")]);
        assert!(from_fetch(b"job-1", &rec, D).is_err());
        assert!(job_from_fetch(&Value::Array(Vec::new()), &Value::Nil, &Value::Nil, "q").is_err());
        assert!(from_fetch(b"job-1", b"not a record", D).is_err());
    }
}
