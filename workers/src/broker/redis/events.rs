//! The event streams: event ids, stream entries -> events, a job's history and the merged log.
//!
//! Each queue has its own stream. Every state change appends its event, but the hot scripts
//! (enqueue, fetch, finish) put all the events of one call in *one* stream entry (one `XADD`
//! per call rather than per job; see `common.lua` for the entry format). An event id is
//! `<stream id>@<queue>` for the first event of an entry and `<stream id>.<n>@<queue>` for the
//! n-th after it; [`Broker::events`] merges the streams ordered by (stream id, queue, place in
//! the entry), so that an event appended later to another queue's stream never sorts before
//! one already handed out: on one Redis because every stream's ids come from one clock (the
//! event clock, `keys.rs`) and the streams are read in one transaction; on a cluster, whose
//! streams number their entries each on its own, by holding back the current millisecond. A job's history is read
//! from the stream entries that hold its events, which its record lists (the first as the head of
//! `d`, the others in `evs`), so it costs the job's own entries, not the queue's traffic in
//! between; each entry is filtered by job id, as it may hold other jobs' events too. A job
//! stored before `evs` existed has only its last entry's id (`evn`): its history is the part
//! of the stream between its first and last entries, filtered the same way.
//!
//! An event in an entry starts either with `t <type>` (its job id, kind and attempt in fields
//! `j`, `k`, `a` of their own) or, as the hot scripts write it since the stream's share of a
//! job's Redis work was cut, with one field `v "<type> <attempt> <id> <kind>"`. Both are read,
//! so streams written before the packed form still read the same; there is no production data
//! to migrate yet, and none needed.
//!
//! The scripts write the events, in the same call as the change they record; this file only
//! reads them. Trimming the streams is `purge`'s (`read.rs`) and the scripts' (the event cap).
//!
//! [`Broker::events`]: crate::broker::Broker::events

use std::time::Duration;

use redis::{FromRedisValue, Value};

use super::RedisBroker;
use super::conn::Pipe;
use super::decode::{corrupt, event_ids, got, parse_num, string, text};
use super::keys::Listing;
use super::scripts::SCRIPTS;
use crate::error::{BrokerError, BrokerResult};
use crate::event::{Event, EventType};
use crate::job::{FieldError, JobId};
use crate::time::Timestamp;

/// Stream entries read per round-trip by `history` and `events`.
const STREAM_CHUNK: usize = 1000;

/// A stream entry id, `<ms>-<seq>`, ordered numerically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct StreamId {
    ms: u64,
    seq: u64,
}

impl StreamId {
    /// `ms-seq` as Redis writes it (see [`crate::broker::canonical_number`]).
    fn parse(s: &str) -> Option<Self> {
        let (ms, seq) = s.split_once('-')?;
        Some(Self {
            ms: crate::broker::canonical_number(ms)?,
            seq: crate::broker::canonical_number(seq)?,
        })
    }

    /// The smallest stream id there is (`0-0`, never issued: `XADD` refuses it).
    const MIN: Self = Self { ms: 0, seq: 0 };

    /// The largest stream id there is.
    const MAX: Self = Self {
        ms: u64::MAX,
        seq: u64::MAX,
    };

    /// XRANGE's start for the entries strictly after this id: `(id`, but for the largest id
    /// there is, which Redis refuses there ("invalid start ID for the interval"): nothing can
    /// follow it, and the id itself reads nothing (Redis never makes it: an `XADD *` after it
    /// would have no id left), so it is the start instead. A client's cursor may name it.
    fn start_after(self) -> String {
        if self == Self::MAX {
            self.to_string()
        } else {
            format!("({self}")
        }
    }
}

/// The id of the entry an `XREVRANGE <newq> + - COUNT 1` answered (`0-0` for none).
fn last_announcement(reply: &Value) -> BrokerResult<String> {
    let id = match reply {
        Value::Array(entries) => match entries.first() {
            Some(Value::Array(entry)) => entry.first().map(string).transpose()?,
            _ => None,
        },
        _ => None,
    };
    Ok(id.unwrap_or_else(|| "0-0".to_owned()))
}

/// [`StreamId::start_after`] for the id `id` (`ms-seq`, checked by the caller).
pub(super) fn xrange_after(id: &str) -> String {
    StreamId::parse(id).map_or_else(|| format!("({id}"), StreamId::start_after)
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Where an event is in its queue's stream: the entry, and its place in that entry (an
/// entry holds the events of one script call).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pos {
    sid: StreamId,
    sub: u32,
}

/// An event id: `<stream id>@<queue>` for an entry's first event, `<stream id>.<n>@<queue>`
/// for its n-th after that.
fn event_id(pos: Pos, queue: &str) -> String {
    if pos.sub == 0 {
        format!("{}@{queue}", pos.sid)
    } else {
        format!("{}.{}@{queue}", pos.sid, pos.sub)
    }
}

/// Where a client is in the merged event log (see [`event_id`]); `None` for what no broker
/// issues (a queue part that is no queue name, say, is no cursor, not a trimmed one).
fn parse_event_id(s: &str) -> Option<(Pos, &str)> {
    let (pos, queue) = s.split_once('@')?;
    if !crate::job::valid_name(queue) {
        return None;
    }
    // The first event of an entry has no `.0` (see `event_id`).
    let (sid, sub) = match pos.split_once('.') {
        Some((sid, sub)) => (
            sid,
            u32::try_from(crate::broker::canonical_number(sub)?)
                .ok()
                .filter(|n| *n > 0)?,
        ),
        None => (pos, 0),
    };
    Some((
        Pos {
            sid: StreamId::parse(sid)?,
            sub,
        },
        queue,
    ))
}

/// The events of stream entries (see `common.lua`: `at <ms>`, then events each starting with
/// `t <type>`, or with `v "<type> <attempt> <id> <kind>"` where the hot scripts wrote them),
/// with their positions; and how many entries there were.
fn parse_entries(v: &Value, queue: &str) -> BrokerResult<(Vec<(Pos, Event)>, usize)> {
    let Value::Array(entries) = v else {
        return Ok((Vec::new(), 0));
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(parts) = entry else {
            return Err(corrupt("stream entry is not an array"));
        };
        let [sid, Value::Array(fields)] = parts.as_slice() else {
            return Err(corrupt("stream entry without fields"));
        };
        let sid_s = string(sid)?;
        let sid = StreamId::parse(&sid_s).ok_or_else(|| corrupt(format!("stream id {sid_s}")))?;
        let bad = |what: &str| corrupt(format!("event {sid}: {what}"));
        let mut at = Timestamp::EPOCH;
        let mut sub = 0u32;
        let mut current: Option<Event> = None;
        for pair in fields.chunks_exact(2) {
            let (Some(k), Some(val)) = (text(&pair[0]), text(&pair[1])) else {
                continue;
            };
            if k == "t" || k == "v" {
                if let Some(e) = current.take() {
                    out.push((Pos { sid, sub }, e));
                    sub += 1;
                }
                // `t <type>` starts an event whose other parts follow in fields of their own;
                // `v "<type> <attempt> <id> <kind>"` holds all four (see common.lua).
                let (typ, packed) = if k == "v" {
                    let mut parts = val.splitn(4, ' ');
                    let (Some(typ), Some(attempt), Some(job), Some(kind)) =
                        (parts.next(), parts.next(), parts.next(), parts.next())
                    else {
                        return Err(bad("packed event"));
                    };
                    (typ, Some((attempt, job, kind)))
                } else {
                    (val, None)
                };
                let mut e = Event {
                    id: String::new(),
                    kind_of_event: EventType::parse(typ)
                        .ok_or_else(|| bad(&format!("unknown type {typ}")))?,
                    job_id: JobId(String::new()),
                    queue: queue.to_owned(),
                    kind: String::new(),
                    at,
                    attempt: 0,
                    progress: None,
                    message: None,
                    result: None,
                    error: None,
                };
                if let Some((attempt, job, kind)) = packed {
                    e.attempt =
                        u32::try_from(parse_num(attempt).ok_or_else(|| bad("a"))?).unwrap_or(0);
                    e.job_id = JobId(job.to_owned());
                    kind.clone_into(&mut e.kind);
                }
                e.id = event_id(Pos { sid, sub }, queue);
                current = Some(e);
                continue;
            }
            if k == "at" {
                at = Timestamp::from_millis(parse_num(val).ok_or_else(|| bad("at"))?);
                if let Some(e) = current.as_mut() {
                    e.at = at;
                }
                continue;
            }
            let Some(e) = current.as_mut() else {
                continue;
            };
            match k {
                "j" => e.job_id = JobId(val.to_owned()),
                "k" => val.clone_into(&mut e.kind),
                "a" => {
                    e.attempt = u32::try_from(parse_num(val).ok_or_else(|| bad("a"))?).unwrap_or(0);
                }
                "p" => e.progress = parse_num(val).and_then(|p| u8::try_from(p).ok()),
                "m" => e.message = Some(val.to_owned()),
                "r" => {
                    e.result =
                        Some(serde_json::from_str(val).map_err(|e| bad(&format!("result: {e}")))?);
                }
                "e" => e.error = Some(val.to_owned()),
                _ => {}
            }
        }
        if let Some(e) = current {
            out.push((Pos { sid, sub }, e));
        }
    }
    Ok((out, entries.len()))
}

/// A job's events, oldest first; none for an unknown job.
pub(super) async fn history(broker: &RedisBroker, id: &JobId) -> BrokerResult<Vec<Event>> {
    let Some(queue) = broker.queue_of(id).await? else {
        return Ok(Vec::new());
    };
    // The job's first entry leads its packed field `d`; `evs` lists the others.
    let mut cmd = broker.eval(&SCRIPTS.get, &queue);
    cmd.arg(id.as_str());
    let v: Value = broker.query(&cmd).await?;
    let Some((rec, d)) = got(&v)? else {
        return Ok(Vec::new());
    };
    let Some(ids) = event_ids(rec, d, id.as_str())? else {
        return Ok(Vec::new());
    };
    let first = ids.first.as_str();
    let later = ids.later.iter().map(String::as_str);
    match ids.evn.as_deref() {
        // Stored before `evs`: read the range up to its last entry.
        Some(evn) => {
            let last = later.chain([evn]).fold(first, |last, e| {
                match (StreamId::parse(last), StreamId::parse(e)) {
                    (Some(a), Some(b)) if b > a => e,
                    _ => last,
                }
            });
            history_range(broker, &queue, id, first, last).await
        }
        None => {
            let entries: Vec<&str> = std::iter::once(first).chain(later).collect();
            history_entries(broker, &queue, id, &entries).await
        }
    }
}

/// A job's events from the stream entries `entries` (an entry trimmed away reads as none).
async fn history_entries(
    broker: &RedisBroker,
    queue: &str,
    id: &JobId,
    entries: &[&str],
) -> BrokerResult<Vec<Event>> {
    let mut out = Vec::new();
    for chunk in entries.chunks(STREAM_CHUNK) {
        let mut pipe = Pipe::new();
        for e in chunk {
            pipe.cmd("XRANGE")
                .arg(broker.events_key(queue))
                .arg(*e)
                .arg(*e);
        }
        let replies: Vec<Value> = broker.query_pipe(&pipe).await?;
        for v in &replies {
            out.extend(
                parse_entries(v, queue)?
                    .0
                    .into_iter()
                    .map(|(_, e)| e)
                    .filter(|e| &e.job_id == id),
            );
        }
    }
    Ok(out)
}

/// A job's events from the part of the stream between its first and last entries.
async fn history_range(
    broker: &RedisBroker,
    queue: &str,
    id: &JobId,
    first: &str,
    last: &str,
) -> BrokerResult<Vec<Event>> {
    let mut out = Vec::new();
    let mut start = first.to_owned();
    loop {
        let (chunk, n) = read_stream(broker, queue, &start, last, STREAM_CHUNK).await?;
        let Some((tail, _)) = chunk.last() else {
            break;
        };
        start = tail.sid.start_after();
        out.extend(
            chunk
                .into_iter()
                .map(|(_, e)| e)
                .filter(|e| &e.job_id == id),
        );
        if n < STREAM_CHUNK {
            break;
        }
    }
    Ok(out)
}

/// Up to `limit` events of every queue after the event id `after`, oldest first.
///
/// On one Redis the streams' ids follow the order the scripts ran (the event clock, see
/// `common.lua`), so one transaction reading every stream ([`ordered_events`]) has all there
/// is up to what it hands out; on a cluster the streams number their entries each on its own,
/// and what is handed out is held back to the finished milliseconds ([`settled_events`]).
pub(super) async fn events(
    broker: &RedisBroker,
    after: Option<&str>,
    limit: usize,
) -> BrokerResult<Vec<Event>> {
    // Checked before anything else, as SQLite does: a bad position is refused whatever the
    // limit.
    let after = match after {
        None => None,
        Some(s) => Some(parse_event_id(s).ok_or_else(|| {
            BrokerError::Invalid(FieldError::new(
                "since",
                "not an event id this broker issued",
            ))
        })?),
    };
    if limit == 0 {
        return Ok(Vec::new());
    }
    if broker.is_cluster() {
        settled_events(broker, after, limit).await
    } else {
        ordered_events(broker, after, limit).await
    }
}

/// A read of each queue's stream after the cursor `after`, `limit` entries at most each:
/// XRANGE's (start, count) for queue `q` (events are ordered by stream id, queue, place in
/// the entry).
fn xrange_from(q: &str, after: Option<(Pos, &str)>, limit: usize) -> (String, usize) {
    match after {
        None => ("-".to_owned(), limit),
        // Same stream id in a queue sorting after the cursor's: not yet seen.
        Some((pos, cq)) if q > cq => (pos.sid.to_string(), limit),
        // The cursor's own entry may hold events not yet seen; it may also hold none, so
        // read one entry more.
        Some((pos, cq)) if q == cq => (pos.sid.to_string(), limit + 1),
        Some((pos, _)) => (pos.sid.start_after(), limit),
    }
}

/// Adds to `pipe` a read of each queue's stream of `names` after `after` ([`xrange_from`]).
fn read_streams(
    pipe: &mut Pipe,
    broker: &RedisBroker,
    names: &[String],
    after: Option<(Pos, &str)>,
    limit: usize,
) {
    for q in names {
        let (start, count) = xrange_from(q, after, limit);
        pipe.cmd("XRANGE")
            .arg(broker.events_key(q))
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(count);
    }
}

/// The queues a pipeline's last reply (`SMEMBERS` of the queues) lists, sorted, and the
/// replies before it.
fn split_listing(replies: &[Value]) -> BrokerResult<(Vec<String>, &[Value])> {
    let (listed, rest) = replies
        .split_last()
        .ok_or_else(|| corrupt("no reply to SMEMBERS"))?;
    let listed =
        Vec::from_redis_value_ref(listed).map_err(|e| corrupt(format!("the queues: {e}")))?;
    Ok((sorted(listed), rest))
}

/// The events of the streams of `names` (the replies of [`xrange_from`]'s reads, in the same
/// order) after the cursor `after`, merged in the log's order.
fn merge(
    names: &[String],
    streams: &[Value],
    after: Option<(Pos, &str)>,
) -> BrokerResult<Vec<(Pos, String, Event)>> {
    let mut merged = Vec::new();
    for (q, v) in names.iter().zip(streams) {
        let seen = |pos: &Pos| match after {
            Some((cursor, cq)) => q.as_str() == cq && *pos <= cursor,
            None => false,
        };
        merged.extend(
            parse_entries(v, q)?
                .0
                .into_iter()
                .filter(|(pos, _)| !seen(pos))
                .map(|(pos, e)| (pos, q.clone(), e)),
        );
    }
    merged.sort_by(|a, b| (a.0.sid, &a.1, a.0.sub).cmp(&(b.0.sid, &b.1, b.0.sub)));
    Ok(merged)
}

/// [`events`] on one Redis: the queues' streams and the queues themselves read in one
/// `MULTI`. Every entry written before it is in what it read (the queue listed after the
/// reads is the one it read, or it reads again with the new listing), and every entry written
/// after it has a greater id than all of them (the event clock), so nothing can later appear
/// before what is handed out: no millisecond to wait for. The listing is the last call's, so
/// a steady log costs one round trip.
async fn ordered_events(
    broker: &RedisBroker,
    after: Option<(Pos, &str)>,
    limit: usize,
) -> BrokerResult<Vec<Event>> {
    let read = in_one_transaction(
        broker,
        |pipe, names| read_streams(pipe, broker, names, after, limit),
        |names, streams| {
            let mut merged = merge(names, streams, after)?;
            merged.truncate(limit);
            Ok(merged.into_iter().map(|(_, _, e)| e).collect())
        },
    )
    .await?;
    match read {
        Some(events) => Ok(events),
        // Queues created or dropped at every try: the read that holds back a millisecond
        // does not need the listing to stand still.
        None => settled_events(broker, after, limit).await,
    }
}

/// Reads, in one `MULTI`, what `read` adds to the pipeline for the queues and then the
/// queues themselves, and answers what `answer` makes of the replies; again while the queues
/// listed differ from those read (a queue came or went: its stream may hold entries that
/// sort among those read), [`ORDERED_TRIES`] times at most (`None` then).
async fn in_one_transaction<T>(
    broker: &RedisBroker,
    read: impl Fn(&mut Pipe, &[String]),
    answer: impl Fn(&[String], &[Value]) -> BrokerResult<T>,
) -> BrokerResult<Option<T>> {
    let mut names = listed_names(broker).await?;
    for _ in 0..ORDERED_TRIES {
        let mut pipe = Pipe::new();
        pipe.atomic();
        read(&mut pipe, &names);
        // The last announcement of a new queue, with the listing: a follower's next wait
        // starts from both (`wait_for_events`).
        pipe.cmd("XREVRANGE")
            .arg(broker.new_queues_key())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
        pipe.cmd("SMEMBERS").arg(broker.queues_key());
        let replies: Vec<Value> = broker.query_pipe(&pipe).await?;
        let (listed, rest) = split_listing(&replies)?;
        let (announced, streams) = rest
            .split_last()
            .ok_or_else(|| corrupt("no reply to XREVRANGE"))?;
        let read_all = listed == names;
        names.clone_from(&listed);
        broker.set_listing(Listing {
            announced: Some(last_announcement(announced)?),
            names: listed,
        })?;
        if read_all {
            return answer(&names, streams).map(Some);
        }
    }
    Ok(None)
}

/// How many times a read in one `MULTI` is tried while the queues change under it.
const ORDERED_TRIES: usize = 3;

/// The queues the last read of the log listed, or, before any, the queues now.
async fn listed_names(broker: &RedisBroker) -> BrokerResult<Vec<String>> {
    let names = broker.listing()?.names;
    if !names.is_empty() {
        return Ok(names);
    }
    let names = broker.queue_names().await?;
    broker.set_listing(Listing {
        names: names.clone(),
        announced: None,
    })?;
    Ok(names)
}

/// [`events`] on a cluster, whose streams number their entries each on its own: an entry
/// appended later to another queue's stream may sort before one read now, within the same
/// millisecond of Redis' clock. So only the entries of finished milliseconds are handed out
/// (a read that has some of the current one waits for its end and reads again).
async fn settled_events(
    broker: &RedisBroker,
    after: Option<(Pos, &str)>,
    limit: usize,
) -> BrokerResult<Vec<Event>> {
    // The queues, and Redis' time just before they were listed.
    let (mut listed_at, mut names) = time_then_queues(broker).await?;
    let mut again = false;
    loop {
        // TIME in a round trip of its own, before the reads: a cluster runs a pipeline's
        // commands of different nodes at once, so a TIME sent with the reads could be
        // answered after one shard's read, and an entry that shard got in between, older
        // than the cut-off, be passed by for good (a live stream lost events of other
        // shards' queues a few milliseconds before those it handed out).
        let time: Vec<u64> = broker.query(&redis::cmd("TIME")).await?;
        let mut pipe = Pipe::new();
        read_streams(&mut pipe, broker, &names, after, limit);
        // The queues again, after TIME: one created since `names` were listed may hold an
        // entry older than one read here, which, handed out, would move the cursor past it
        // for good (a live stream missed a fifth of new queues' first events). One created
        // after this listing has every entry after TIME.
        pipe.cmd("SMEMBERS").arg(broker.queues_key());
        let replies: Vec<Value> = broker.query_pipe(&pipe).await?;
        let (listed, streams) = split_listing(&replies)?;
        let now_ms = server_ms(&time);
        let mut merged = merge(&names, streams, after)?;
        merged.truncate(limit);
        // What is handed out: entries of finished milliseconds (another stream may still get
        // an entry in the current one with a lower sequence than one read), and, when a queue
        // was created since `names` were listed, only those older than that listing.
        let complete = listed == names;
        let cutoff = if complete {
            now_ms
        } else {
            now_ms.min(listed_at)
        };
        let settled = merged
            .iter()
            .take_while(|(pos, _, _)| pos.sid.ms < cutoff)
            .count();
        if settled == merged.len() || again {
            merged.truncate(settled);
            return Ok(merged.into_iter().map(|(_, _, e)| e).collect());
        }
        if complete {
            let into_ms = time.get(1).copied().unwrap_or(0) % 1000;
            sleep_exactly(Duration::from_micros(1000 - into_ms + SETTLE_SLACK_US)).await;
        } else {
            (names, listed_at) = (listed, now_ms);
        }
        again = true;
    }
}

/// The newest event [`events`] would hand out now: Redis' time and the queues first, then each
/// queue's last entry before that millisecond (one `XREVRANGE … COUNT 1` each, in one
/// pipeline), the greatest in the merged order (stream id, queue, place in the entry). An
/// entry of that millisecond or later is left for `events` after the answer to hand out: it is
/// not settled (another stream may still get one that sorts before it), and a queue created
/// after the listing has only entries from its millisecond on.
pub(super) async fn events_end(broker: &RedisBroker) -> BrokerResult<Option<String>> {
    if !broker.is_cluster()
        && let Some(end) = ordered_end(broker).await?
    {
        return Ok(end);
    }
    settled_end(broker).await
}

/// [`events_end`] on one Redis, where [`events`] hands out every entry there is: each queue's
/// last entry and the queues, read in one `MULTI` as [`ordered_events`] reads (`None` when
/// the queues kept changing under it).
async fn ordered_end(broker: &RedisBroker) -> BrokerResult<Option<Option<String>>> {
    in_one_transaction(
        broker,
        |pipe, names| last_entries(pipe, broker, names, "+"),
        newest,
    )
    .await
}

/// Redis' time in ms, then the queues, sorted: every queue with an entry older than that time
/// is among them (a queue is listed before its first event is written, `lifecycle.rs`). Two
/// round trips, in that order: a cluster runs a pipeline's commands of different nodes at
/// once, so the time sent with the listing could be answered after it.
async fn time_then_queues(broker: &RedisBroker) -> BrokerResult<(u64, Vec<String>)> {
    let time: Vec<u64> = broker.query(&redis::cmd("TIME")).await?;
    Ok((server_ms(&time), broker.queue_names().await?))
}

/// [`events_end`] on a cluster (see [`settled_events`]): the newest entry of a finished
/// millisecond.
async fn settled_end(broker: &RedisBroker) -> BrokerResult<Option<String>> {
    let (cutoff, names) = time_then_queues(broker).await?;
    let Some(before) = cutoff.checked_sub(1) else {
        return Ok(None);
    };
    if names.is_empty() {
        return Ok(None);
    }
    let mut pipe = Pipe::new();
    // An incomplete id as XREVRANGE's end means that millisecond's last sequence.
    last_entries(&mut pipe, broker, &names, &before.to_string());
    let replies: Vec<Value> = broker.query_pipe(&pipe).await?;
    newest(&names, &replies)
}

/// Adds to `pipe` a read of the last entry up to `end` (`+` for the very last) of each
/// queue's stream of `names`.
fn last_entries(pipe: &mut Pipe, broker: &RedisBroker, names: &[String], end: &str) {
    for q in names {
        pipe.cmd("XREVRANGE")
            .arg(broker.events_key(q))
            .arg(end)
            .arg("-")
            .arg("COUNT")
            .arg(1);
    }
}

/// The id of the newest event in the log's order among the last entries of the streams of
/// `names` (each reply an `XREVRANGE … COUNT 1`, in the same order).
fn newest(names: &[String], replies: &[Value]) -> BrokerResult<Option<String>> {
    let mut end: Option<(Pos, &str)> = None;
    for (q, v) in names.iter().zip(replies) {
        let Some((pos, _)) = parse_entries(v, q)?.0.pop() else {
            continue;
        };
        let later = end.is_none_or(|(e, eq)| (pos.sid, q.as_str(), pos.sub) > (e.sid, eq, e.sub));
        if later {
            end = Some((pos, q));
        }
    }
    Ok(end.map(|(pos, q)| event_id(pos, q)))
}

/// The greatest entry id (`<ms>-<seq>`) of any queue's stream: what the event clock starts
/// from when a Redis moves to layout 4 (`layout.rs`).
pub(super) async fn newest_entry_id(broker: &RedisBroker) -> BrokerResult<Option<String>> {
    let names = broker.queue_names().await?;
    if names.is_empty() {
        return Ok(None);
    }
    let mut pipe = Pipe::new();
    last_entries(&mut pipe, broker, &names, "+");
    let replies: Vec<Value> = broker.query_pipe(&pipe).await?;
    let mut max: Option<StreamId> = None;
    for (q, v) in names.iter().zip(&replies) {
        if let Some((pos, _)) = parse_entries(v, q)?.0.pop() {
            max = max.max(Some(pos.sid));
        }
    }
    Ok(max.map(|sid| sid.to_string()))
}

/// Whether trimming dropped an entry after the event id `after` from any queue's stream (see
/// the trait's doc): a stream that lost entries (it had more than it holds) and whose first
/// held entry comes after the cursor's may have lost some after it, and is taken as having
/// done so (it did, unless exactly its held entries came after the cursor); a stream emptied
/// by trimming lost some after the cursor when its last entry came after it. `None` (the
/// caller's rule) when the cursor's own queue has no stream, or one never trimmed that starts
/// after the cursor: the cursor is from data gone otherwise (a wipe, a replaced data set);
/// but `0-0@QUEUE`, before every event, is told whatever its queue: lost entries or not. A
/// queue's drop deletes its stream and leaves no record, so a cursor is not told of events
/// a drop removed (SQLite, which keeps the newest removed id, tells them).
pub(super) async fn trimmed_after(broker: &RedisBroker, after: &str) -> BrokerResult<Option<bool>> {
    let (pos, cursor_queue) = parse_event_id(after).ok_or_else(|| {
        BrokerError::Invalid(FieldError::new(
            "since",
            "not an event id this broker issued",
        ))
    })?;
    // The smallest id, which Redis never issues: a cursor before every event of every
    // queue, whatever queue it names, that missed something only if a stream lost entries.
    let from_start = pos.sid == StreamId::MIN;
    let names = broker.queue_names().await?;
    if names.is_empty() {
        return Ok(Some(false));
    }
    let mut pipe = Pipe::new();
    for q in &names {
        pipe.add_command(broker.eval(&SCRIPTS.trimmed, q));
    }
    let replies: Vec<Vec<String>> = broker.query_pipe(&pipe).await?;
    for (q, reply) in names.iter().zip(replies) {
        let [added, length, first, last] = reply.as_slice() else {
            // No stream: a cursor into it is from before its queue's events were dropped
            // (the queue dropped, or the data wiped): left to the caller.
            if q == cursor_queue && !from_start {
                return Ok(None);
            }
            continue;
        };
        let (Ok(added), Ok(length)) = (added.parse::<u64>(), length.parse::<u64>()) else {
            return Ok(None);
        };
        let held_from = if length == 0 { last } else { first };
        let after_cursor = StreamId::parse(held_from).is_some_and(|id| id > pos.sid);
        if added > length && after_cursor {
            return Ok(Some(true));
        }
        // Never trimmed, yet it starts after the cursor into it: the cursor is from data that
        // is gone otherwise (a wipe, a replaced data set): left to the caller.
        if q == cursor_queue && added == length && after_cursor && !from_start {
            return Ok(None);
        }
    }
    if !from_start && !names.iter().any(|q| q == cursor_queue) {
        return Ok(None);
    }
    Ok(Some(false))
}

/// `names` in order.
fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

/// Redis' `TIME` answer (seconds, microseconds) in ms.
fn server_ms(time: &[u64]) -> u64 {
    time.first().copied().unwrap_or(0) * 1000 + time.get(1).copied().unwrap_or(0) / 1000
}

/// Past the end of the server's current millisecond, the time [`events`] waits for it to
/// settle: beyond the millisecond itself, what the clocks of this process and Redis may
/// disagree on within one machine's scheduling.
const SETTLE_SLACK_US: u64 = 100;

/// Sleeps `d` with the precision of the OS rather than of tokio's timer, whose millisecond
/// ticks would double the wait for a millisecond to end (a thread of the blocking pool
/// sleeps instead).
async fn sleep_exactly(d: Duration) {
    if tokio::task::spawn_blocking(move || std::thread::sleep(d))
        .await
        .is_err()
    {
        tokio::time::sleep(d).await;
    }
}

/// How long an idle follower of the log waits on Redis (see [`wait_for_events`]): what is
/// left to bound is a wait whose connection was lost without an error.
const IDLE_WAIT: Duration = Duration::from_secs(2);

/// See [`crate::broker::Broker::events_idle_wait`]: every new event wakes a Redis wait.
pub(super) fn events_idle_wait(_: &RedisBroker, short: Duration) -> Duration {
    short.max(IDLE_WAIT)
}

/// Waits, with one `XREAD BLOCK` over every queue's stream (one per slot on a cluster), for an
/// entry after the event id `after`, or for `timeout`. The same `XREAD` waits on `newq` (see
/// `announce.rs`), so a queue created meanwhile wakes it too. Not waited on: the rest of the
/// entry `after` points into (its events were written together, so a reader that stopped
/// inside it had a page full, and reads again before waiting).
///
/// Every new event wakes it, whichever process wrote it, so a follower may wait long
/// ([`IDLE_WAIT`]): each wait and the read after it cost Redis a
/// command per queue, and an API node waiting 20 ms at a time on 4,000 idle queues kept Redis
/// at ~90,000 `XRANGE`s a second.
pub(super) async fn wait_for_events(
    broker: &RedisBroker,
    after: Option<&str>,
    timeout: Duration,
) -> BrokerResult<()> {
    let after = match after {
        None => None,
        Some(s) => Some(parse_event_id(s).ok_or_else(|| {
            BrokerError::Invalid(FieldError::new(
                "since",
                "not an event id this broker issued",
            ))
        })?),
    };
    // The queues and the last announcement as one snapshot (the last read of the log in one
    // `MULTI` took both, see `in_one_transaction`), or else the announcement and then the
    // queues, in that order. Either way a queue missing from the listing was added to the
    // set after it, so announced after this id, which the wait then sees (a queue is added
    // before its first enqueue, announced after it); any snapshot will do, an older one at
    // worst wakes the wait at once.
    let (names, announced) = match broker.listing()? {
        Listing {
            names,
            announced: Some(announced),
        } if !broker.is_cluster() => (names, announced),
        _ => {
            let announced: Value = broker
                .query(
                    redis::cmd("XREVRANGE")
                        .arg(broker.new_queues_key())
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(1),
                )
                .await?;
            let announced = last_announcement(&announced)?;
            (broker.queue_names().await?, announced)
        }
    };
    let block_ms = u64::try_from(timeout.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    // (stream, the id to read after) per queue; XREAD answers entries strictly after it.
    let streams: Vec<(String, String)> = names
        .iter()
        .map(|q| {
            let from = match &after {
                None => "0-0".to_owned(),
                // The cursor's stream id in a queue sorting after the cursor's is not yet seen.
                Some((pos, cq)) if q.as_str() > *cq => match (pos.sid.ms, pos.sid.seq) {
                    (ms, seq) if seq > 0 => format!("{ms}-{}", seq - 1),
                    (0, _) => "0-0".to_owned(),
                    (ms, _) => format!("{}-{}", ms - 1, u64::MAX),
                },
                Some((pos, _)) => pos.sid.to_string(),
            };
            (broker.events_key(q), from)
        })
        .chain(std::iter::once((broker.new_queues_key(), announced)))
        .collect();
    broker
        .block_by_slot(
            &streams,
            |(key, _)| key,
            |group| {
                let mut cmd = redis::cmd("XREAD");
                cmd.arg("COUNT")
                    .arg(1)
                    .arg("BLOCK")
                    .arg(block_ms)
                    .arg("STREAMS");
                for (key, _) in group {
                    cmd.arg(key);
                }
                for (_, from) in group {
                    cmd.arg(from);
                }
                cmd
            },
            Duration::from_millis(block_ms),
        )
        .await
}

/// The events of stream entries `start..=end` (either may be exclusive with `(`) of one
/// queue, and how many entries they came from.
async fn read_stream(
    broker: &RedisBroker,
    queue: &str,
    start: &str,
    end: &str,
    count: usize,
) -> BrokerResult<(Vec<(Pos, Event)>, usize)> {
    let v: Value = broker
        .query(
            redis::cmd("XRANGE")
                .arg(broker.events_key(queue))
                .arg(start)
                .arg(end)
                .arg("COUNT")
                .arg(count),
        )
        .await?;
    parse_entries(&v, queue)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    /// One stream entry as XRANGE answers it: its id, then its fields and values.
    fn entry(sid: &str, fields: &[&str]) -> Value {
        Value::Array(vec![
            bulk(sid),
            Value::Array(fields.iter().map(|f| bulk(f)).collect()),
        ])
    }

    #[test]
    fn packed_and_spelled_out_events_read_alike() -> BrokerResult<()> {
        let entries = Value::Array(vec![entry(
            "5-0",
            &[
                "at",
                "1000",
                "v",
                "job.started 2 j1 send mail",
                "v",
                "job.succeeded 1 j2 k",
                "r",
                "[1]",
                "t",
                "job.dead",
                "j",
                "j3",
                "k",
                "x y",
                "a",
                "3",
                "e",
                "boom",
            ],
        )]);
        let (events, n) = parse_entries(&entries, "q")?;
        assert_eq!(n, 1);
        let got: Vec<_> = events
            .iter()
            .map(|(_, e)| {
                (
                    e.job_id.as_str(),
                    e.kind.as_str(),
                    e.attempt,
                    e.at.as_millis(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("j1", "send mail", 2, 1000),
                ("j2", "k", 1, 1000),
                ("j3", "x y", 3, 1000)
            ]
        );
        assert_eq!(events[1].1.result, Some(serde_json::json!([1])));
        assert_eq!(events[2].1.error.as_deref(), Some("boom"));
        assert_eq!(events[1].1.id, "5-0.1@q");
        Ok(())
    }

    #[test]
    fn a_packed_event_missing_parts_is_refused() {
        let entries = Value::Array(vec![entry("5-0", &["at", "1", "v", "job.started 2"])]);
        assert!(parse_entries(&entries, "q").is_err());
    }
}
