//! The Redis broker against a real Redis on 127.0.0.1:6379 (or `HOPPER_TEST_REDIS_URL`).
//!
//! Every test works under its own key prefix (`test-<uuid>`) and deletes its keys when it ends,
//! even when it fails. Without a reachable Redis the tests fail, naming the URL: CI starts one.
//! The lifecycle cases shared with SQLite live in the conformance suite
//! (`hopper_workers::testing`); the tests here cover only what Redis has and SQLite has not:
//! hash-tagged keys and their slots, the hash layout, blocking wake-ups, per-queue event
//! streams, connection handling. A generic case belongs in the suite, so SQLite runs it too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hopper_workers::broker::redis::RedisBroker;
use hopper_workers::broker::{Broker, Finish, Outcome};
use hopper_workers::clock::{Clock, ManualClock};
use hopper_workers::event::EventType;
use hopper_workers::testing::{drain, enqueue_ids, ms, succeed_all};
use hopper_workers::time::Timestamp;
use hopper_workers::{BrokerError, JobState, NewJob};
use serde_json::json;

const T0: Timestamp = Timestamp::from_millis(1_800_000_000_000);

fn redis_url() -> String {
    std::env::var("HOPPER_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// Deletes every key of a prefix when dropped, so a failing test cleans up too.
struct Cleanup {
    prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(redis_url()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection() else {
            return;
        };
        // Keys are `{<prefix>:<queue>}:...`, `{<prefix>}:...` (the registry of nodes) and
        // `<prefix>:...`.
        for pattern in [
            format!("{{{}[:}}]*", self.prefix),
            format!("{}:*", self.prefix),
        ] {
            let keys: Vec<String> = match redis::cmd("SCAN")
                .cursor_arg(0)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .clone()
                .iter(&mut conn)
            {
                Ok(it) => it.filter_map(Result::ok).collect(),
                Err(_) => continue,
            };
            for chunk in keys.chunks(500) {
                let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query(&mut conn);
            }
        }
    }
}

/// A Redis broker under `prefix`, or a panic that says how to get one.
async fn connect(prefix: &str, clock: Arc<dyn Clock>) -> RedisBroker {
    let url = redis_url();
    RedisBroker::connect(&url, prefix, clock)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "these tests need a Redis at {url} (set HOPPER_TEST_REDIS_URL; CI starts one): {e}"
            )
        })
}

fn unique_prefix() -> String {
    format!("test-{}", uuid::Uuid::now_v7().simple())
}

// What grows or drifts on a real deployment: clocks that disagree, many queues, long streams.
#[path = "conformance_redis/time_and_scale.rs"]
mod time_and_scale;

// Jobs an older Hopper stored, rewritten in today's storage layout.
#[path = "conformance_redis/layout.rs"]
mod layout;

// How the Lua code reaches Redis: a function library, or scripts.
#[path = "conformance_redis/code.rs"]
mod code;

#[path = "support/private_redis.rs"]
mod private_redis;

hopper_workers::conformance_suite!(|clock: Arc<dyn Clock>| async move {
    let prefix = unique_prefix();
    // The suite moves a manual clock: the broker decides by it instead of by Redis' TIME.
    let broker = connect(&prefix, clock).await.with_clock_time();
    (Arc::new(broker) as Arc<dyn Broker>, Cleanup { prefix })
});

/// A Redis broker on a manual clock, for the tests that also look at its keys.
struct Fixture {
    broker: Arc<RedisBroker>,
    clock: Arc<ManualClock>,
    prefix: String,
    _cleanup: Cleanup,
}

async fn fixture() -> Fixture {
    let prefix = unique_prefix();
    let clock = ManualClock::new(T0);
    let broker = connect(&prefix, clock.clone()).await.with_clock_time();
    Fixture {
        broker: Arc::new(broker),
        clock,
        _cleanup: Cleanup {
            prefix: prefix.clone(),
        },
        prefix,
    }
}

fn raw_conn() -> redis::Connection {
    redis::Client::open(redis_url())
        .and_then(|c| c.get_connection())
        .expect("raw Redis connection")
}

/// The ids of the clients blocked in `BLPOP` right now (any test's: Redis is shared).
fn blocked_clients() -> std::collections::BTreeSet<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut raw_conn())
        .expect("client list");
    list.lines()
        .filter(|l| {
            l.split(' ')
                .any(|f| f.strip_prefix("flags=").is_some_and(|v| v.contains('b')))
                && l.contains(" cmd=blpop")
        })
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_owned)
        .collect()
}

fn keys_of(prefix: &str) -> Vec<String> {
    let mut conn = raw_conn();
    let mut keys = Vec::new();
    for pattern in [format!("{{{prefix}:*"), format!("{prefix}:*")] {
        let it: redis::Iter<String> = redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(&pattern)
            .clone()
            .iter(&mut conn)
            .expect("scan");
        keys.extend(it.filter_map(Result::ok));
    }
    keys
}

/// The part of a key Redis Cluster hashes: the first non-empty `{...}`, else the whole key.
fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// CRC16/XMODEM mod 16384: Redis Cluster's key slot.
fn slot(key: &str) -> u16 {
    let mut crc: u16 = 0;
    for &b in hash_tag(key).as_bytes() {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

fn job(kind: &str) -> NewJob {
    NewJob::new(kind, json!({}))
}

fn finish(lease: hopper_workers::Lease, outcome: Outcome) -> Finish {
    Finish { lease, outcome }
}

const LEASE: Duration = Duration::from_secs(30);

#[test]
fn slot_function_matches_redis_examples() {
    // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
    assert_eq!(slot("123456789"), 0x31C3);
    assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
    assert_eq!(slot("foo"), 12182);
}

/// A job reporting progress for hours keeps a record of a bounded size (every call on it reads
/// and writes the whole record back): past 64 entries its history keeps the latest progress
/// of a run, not each one, while the stream keeps them all for live readers.
#[tokio::test]
async fn a_long_run_of_progress_keeps_the_record_bounded() {
    let f = fixture().await;
    let b = &f.broker;
    b.enqueue(vec![job("p").queue("prog")])
        .await
        .expect("enqueue");
    let got = b.fetch("prog", 1, LEASE).await.expect("fetch");
    let lease = got[0].lease();
    let record = format!("{{{}:prog}}:job:{}", f.prefix, got[0].id);
    let strlen = || -> usize {
        redis::cmd("STRLEN")
            .arg(&record)
            .query(&mut raw_conn())
            .expect("STRLEN")
    };
    for i in 0..100u8 {
        b.progress(&lease, i, None).await.expect("progress");
    }
    let after_100 = strlen();
    for i in 0..200u32 {
        b.progress(&lease, u8::try_from(i % 100).expect("percent"), None)
            .await
            .expect("progress");
    }
    b.progress(&lease, 99, Some("almost".into()))
        .await
        .expect("progress");
    // A message and longer stream ids may add a few bytes; 200 more ids would add 3,000.
    assert!(
        strlen() <= after_100 + 100,
        "the record grew from {after_100} to {} bytes",
        strlen()
    );
    b.finish(vec![finish(
        lease,
        Outcome::Succeeded {
            result: json!({"ok": true}),
        },
    )])
    .await
    .expect("finish");
    let history = b.history(&got[0].id).await.expect("history");
    let types: Vec<EventType> = history.iter().map(|e| e.kind_of_event).collect();
    assert_eq!(types[..2], [EventType::Enqueued, EventType::Started]);
    assert_eq!(types.last(), Some(&EventType::Succeeded));
    let progress: Vec<&hopper_workers::event::Event> = history
        .iter()
        .filter(|e| e.kind_of_event == EventType::Progress)
        .collect();
    assert!(progress.len() < 70, "{} progress events", progress.len());
    assert_eq!(progress[0].progress, Some(0), "the first ones are kept");
    let last = progress.last().expect("progress");
    assert_eq!(
        (last.progress, last.message.as_deref()),
        (Some(99), Some("almost")),
        "the latest is kept"
    );
    // Every update is in the log for the live stream.
    let all = b.events(None, 1000).await.expect("events");
    let logged = all
        .iter()
        .filter(|e| e.kind_of_event == EventType::Progress)
        .count();
    assert_eq!(logged, 301);
}

/// A dead-set entry whose record is gone (`drop_queue` deletes the records first, the sets
/// last) is let go by `retry --all-dead`, which re-queues the others and does not fail half-way.
#[tokio::test]
async fn retry_all_dead_lets_go_of_an_entry_without_its_record() {
    let f = fixture().await;
    let b = &f.broker;
    b.enqueue(vec![job("a").queue("rad"), job("b").queue("rad")])
        .await
        .expect("enqueue");
    let got = b.fetch("rad", 2, LEASE).await.expect("fetch");
    let dead = |l| {
        finish(
            l,
            Outcome::Dead {
                error: "boom".into(),
            },
        )
    };
    b.finish(vec![dead(got[0].lease()), dead(got[1].lease())])
        .await
        .expect("finish");
    let _: () = redis::cmd("DEL")
        .arg(format!("{{{}:rad}}:job:{}", f.prefix, got[0].id))
        .query(&mut raw_conn())
        .expect("DEL");
    assert_eq!(
        b.retry_all_dead(Some("rad")).await.expect("retry all dead"),
        1
    );
    let back = b.get(&got[1].id).await.expect("get").expect("the job");
    assert_eq!(back.state, JobState::Queued);
    let dead_left: u64 = redis::cmd("ZCARD")
        .arg(format!("{{{}:rad}}:dead", f.prefix))
        .query(&mut raw_conn())
        .expect("ZCARD");
    assert_eq!(dead_left, 0);
}

#[tokio::test]
async fn every_key_of_a_queue_shares_one_slot() {
    let f = fixture().await;
    let b = &f.broker;
    let mut jobs = vec![
        job("a").queue("mail"),
        job("b").queue("mail").unique_key("k1"),
        job("c").queue("mail").run_at(T0 + ms(60_000)),
    ];
    jobs.push(job("d").queue("img"));
    b.enqueue(jobs).await.expect("enqueue");
    let got = b.fetch("mail", 2, LEASE).await.expect("fetch");
    b.finish(vec![
        finish(
            got[0].lease(),
            Outcome::Succeeded {
                result: json!({"ok": 1}),
            },
        ),
        finish(
            got[1].lease(),
            Outcome::Dead {
                error: "boom".into(),
            },
        ),
    ])
    .await
    .expect("finish");

    let keys = keys_of(&f.prefix);
    let mail: Vec<&String> = keys
        .iter()
        .filter(|k| k.starts_with(&format!("{{{}:mail}}:", f.prefix)))
        .collect();
    assert!(mail.len() >= 8, "expected the queue's keys, got {keys:?}");
    let slots: std::collections::BTreeSet<u16> = mail.iter().map(|k| slot(k)).collect();
    assert_eq!(
        slots.len(),
        1,
        "keys of one queue in several slots: {mail:?}"
    );
    for k in &mail {
        assert_eq!(hash_tag(k), format!("{}:mail", f.prefix));
    }
    // Everything else is either another queue's tagged key or one of the global keys.
    for k in &keys {
        assert!(
            k.starts_with(&format!("{{{}:", f.prefix))
                || *k == format!("{}:jobq", f.prefix)
                || *k == format!("{}:queues", f.prefix)
                || *k == format!("{}:leased", f.prefix)
                || *k == format!("{}:layout", f.prefix)
                || *k == format!("{}:newq", f.prefix)
                || *k == format!("{}:evclock", f.prefix),
            "unexpected key {k}"
        );
    }
}

#[tokio::test]
async fn an_idle_waiter_wakes_on_enqueue_without_polling() {
    let f = fixture().await;
    let b = f.broker.clone();
    let queues = vec!["wake".to_string()];
    // Nothing to do: the wait lasts its timeout.
    let t = Instant::now();
    b.wait_for_work(&queues, Duration::from_millis(300))
        .await
        .expect("wait");
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "returned after {:?}",
        t.elapsed()
    );

    let before = blocked_clients();
    let waiter = {
        let b = b.clone();
        let queues = queues.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            b.wait_for_work(&queues, Duration::from_secs(20))
                .await
                .expect("wait");
            t.elapsed()
        })
    };
    // Enqueue only once the waiter is blocked in `BLPOP` (a client blocked now that was not
    // before), so that what wakes it is the enqueue's signal, not a token already there.
    let deadline = Instant::now() + Duration::from_secs(10);
    while blocked_clients().is_subset(&before) {
        assert!(
            Instant::now() < deadline,
            "the waiter never blocked in BLPOP"
        );
        assert!(!waiter.is_finished(), "the waiter returned with no work");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sent = Instant::now();
    b.enqueue(vec![job("k").queue("wake")])
        .await
        .expect("enqueue");
    let waited = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter woke up")
        .expect("join");
    assert!(waited < Duration::from_secs(5));
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "wake-up took {:?}",
        sent.elapsed()
    );
}

/// A queue created while a follower of the event log waits wakes it: on Redis a follower
/// waits seconds at a time (every new entry of a queue it knows wakes it), so a new queue's
/// first events must wake it too rather than wait for the wait to end.
#[tokio::test]
async fn an_event_waiter_wakes_for_a_queue_created_while_it_waits() {
    let f = fixture().await;
    let b = f.broker.clone();
    b.enqueue(vec![job("k").queue("known")])
        .await
        .expect("enqueue");
    // Let the current millisecond settle, then read everything.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let seen = b.events(None, 100).await.expect("events");
    assert_eq!(seen.len(), 1, "{seen:?}");
    let last = seen.last().map(|e| e.id.clone());
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            b.wait_for_events(last.as_deref(), Duration::from_secs(60))
                .await
                .expect("wait");
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "the waiter returned with no event");
    b.enqueue(vec![job("k").queue("brand-new")])
        .await
        .expect("enqueue");
    tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the waiter woke up for the new queue")
        .expect("join");
    let after = b
        .events(seen.last().map(|e| e.id.as_str()), 100)
        .await
        .expect("events");
    assert!(
        after.iter().any(|e| e.queue == "brand-new"),
        "the new queue's events: {after:?}"
    );
}

/// On one Redis the log's end is its newest event at once, as `events` hands it out (the
/// event clock orders the queues' streams; nothing of the current millisecond is held
/// back), so a follower starting from the end replays nothing written before it.
#[tokio::test]
async fn the_logs_end_is_its_newest_event_at_once() {
    let f = fixture().await;
    let b = &f.broker;
    for q in ["m", "a", "z", "m"] {
        b.enqueue(vec![job("k").queue(q), job("k").queue(q)])
            .await
            .expect("enqueue");
        let all = b.events(None, 100).await.expect("events");
        let end = b.events_end().await.expect("events_end");
        assert_eq!(
            end.as_deref(),
            all.last().map(|e| e.id.as_str()),
            "after an enqueue to {q}"
        );
    }
}

#[tokio::test]
async fn a_due_job_caps_the_wait() {
    let f = fixture().await;
    let b = &f.broker;
    b.enqueue(vec![job("k").run_at(T0 + ms(150))])
        .await
        .expect("enqueue");
    let queues = vec!["default".to_string()];
    // The enqueue left a wake-up token: the first wait returns at once.
    b.wait_for_work(&queues, Duration::from_secs(10))
        .await
        .expect("wait");
    let t = Instant::now();
    b.wait_for_work(&queues, Duration::from_secs(10))
        .await
        .expect("wait");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "waited {:?} for a job due in 150 ms",
        t.elapsed()
    );
    f.clock.advance(150);
    let t = Instant::now();
    b.wait_for_work(&queues, Duration::from_secs(10))
        .await
        .expect("wait");
    assert!(t.elapsed() < Duration::from_millis(100));
}

/// A job is its record, `h` and kind, then only the optional fields it has, so a fresh job
/// stores no field it does not need, and its `d` (payload last), a string of its own. That they come back
/// exactly, separators and all, is the suite's `fields_round_trip_exactly`.
#[tokio::test]
async fn a_fresh_job_record_holds_only_what_it_needs() {
    let f = fixture().await;
    let b = &f.broker;
    let packed = NewJob::new("k.packed", json!({"a|b": "x|y||"}))
        .priority(7)
        .timeout(Duration::from_millis(1234))
        .unique_key("u|1");
    let plain = NewJob::new("k.plain", json!({}));
    let (packed_id, plain_id) = (packed.id.clone(), plain.id.clone());
    b.enqueue(vec![packed, plain]).await.expect("enqueue");
    let mut conn = raw_conn();
    let plain = raw_record(
        &mut conn,
        &format!("{{{}:default}}:job:{plain_id}", f.prefix),
    );
    assert_eq!(
        plain.iter().filter(|b| **b == 0xFF).count(),
        1,
        "h and kind: {plain:?}"
    );
    let d = raw_record(
        &mut conn,
        &format!("{{{}:default}}:jd:{packed_id}", f.prefix),
    );
    assert!(
        d.ends_with(br#"|{"a|b":"x|y||"}"#),
        "d, the payload last: {d:?}"
    );
    assert!(!plain.contains(&0xFE), "no optional field: {plain:?}");
    assert!(plain.starts_with(b"queued|0|0|||"), "{plain:?}");
    let unique = raw_record(
        &mut conn,
        &format!("{{{}:default}}:job:{packed_id}", f.prefix),
    );
    assert!(
        unique.ends_with(b"\xFEunique_key\xFFu|1"),
        "the one optional field: {unique:?}"
    );
}

/// A job's record as stored.
fn raw_record(conn: &mut redis::Connection, key: &str) -> Vec<u8> {
    redis::cmd("GET").arg(key).query(conn).expect("get")
}

/// A job's state, the first part of its stored record.
fn raw_state(conn: &mut redis::Connection, key: &str) -> String {
    let rec = raw_record(conn, key);
    let end = rec.iter().position(|b| *b == b'|').unwrap_or(rec.len());
    String::from_utf8_lossy(&rec[..end]).into_owned()
}

/// An optional field of a job's stored record, as bytes.
fn raw_field(conn: &mut redis::Connection, key: &str, name: &str) -> Option<Vec<u8>> {
    let rec = raw_record(conn, key);
    let mut marker = vec![0xFE];
    marker.extend_from_slice(name.as_bytes());
    marker.push(0xFF);
    let at = rec.windows(marker.len()).position(|w| w == marker)? + marker.len();
    let end = rec[at..]
        .iter()
        .position(|b| *b == 0xFE)
        .map_or(rec.len(), |e| at + e);
    Some(rec[at..end].to_vec())
}

/// The ids one fetch of at most `max` jobs of `default` leased, in order.
async fn fetch_ids(b: &RedisBroker, max: usize) -> Vec<hopper_workers::job::JobId> {
    let got = b.fetch("default", max, LEASE).await.expect("fetch");
    got.into_iter().map(|j| j.id).collect()
}

/// Jobs enqueued `queued` wait in a list per priority (see common.lua), and a cancel leaves the
/// job's entry there: a fetch skips it and still leases as many jobs as it was asked for, and a
/// cancelled job that is retried runs once, in its new place in line.
#[tokio::test]
async fn a_cancelled_job_left_in_its_lane_is_skipped_and_its_retry_runs_once() {
    let f = fixture().await;
    let b = &f.broker;
    let ids = enqueue_ids(&**b, (0..4).map(|_| job("k")).collect()).await;
    b.cancel(&ids[0]).await.expect("cancel");
    b.cancel(&ids[2]).await.expect("cancel");
    b.retry(&ids[2]).await.expect("retry");
    assert_eq!(
        fetch_ids(b, 1).await,
        vec![ids[1].clone()],
        "the cancelled head is skipped"
    );
    assert_eq!(
        fetch_ids(b, 10).await,
        vec![ids[3].clone(), ids[2].clone()],
        "the retried job runs once, behind the jobs queued before its retry"
    );
    assert!(fetch_ids(b, 10).await.is_empty(), "nothing is leased twice");
}

/// Many cancelled jobs left in their lane do not stall a job behind them: a fetch skips a
/// bounded number of their entries a call, and one that stops early leaves a wake-up, so the
/// worker's wait returns at once and the next fetch goes on skipping, instead of the worker
/// idling out its wait (about 20 s behind 1,000 cancelled jobs before).
#[tokio::test]
async fn cancelled_entries_ahead_do_not_stall_the_job_behind_them() {
    let f = fixture().await;
    let b = &f.broker;
    let ids = enqueue_ids(&**b, (0..300).map(|_| job("k")).collect()).await;
    for id in &ids {
        b.cancel(id).await.expect("cancel");
    }
    let behind = enqueue_ids(&**b, vec![job("k")]).await;
    let queues = vec!["default".to_owned()];
    let got = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let got = fetch_ids(b, 1).await;
            if !got.is_empty() {
                return got;
            }
            b.wait_for_work(&queues, Duration::from_secs(120))
                .await
                .expect("wait");
        }
    })
    .await
    .expect("the job behind the cancelled entries is leased, not left waiting");
    assert_eq!(got, behind);
}

/// A lane stays in queue order when the clock goes back between two enqueues: the later
/// enqueue, due earlier, is fetched first, as its due time says.
#[tokio::test]
async fn a_clock_set_back_keeps_queue_order() {
    let f = fixture().await;
    let b = &f.broker;
    f.clock.set(T0 + ms(1000));
    let late = enqueue_ids(&**b, vec![job("k"), job("k")]).await;
    f.clock.set(T0);
    let early = enqueue_ids(&**b, vec![job("k")]).await;
    let higher = enqueue_ids(&**b, vec![job("k").priority(0)]).await;
    let want: Vec<_> = higher.iter().chain(&early).chain(&late).cloned().collect();
    assert_eq!(fetch_ids(b, 10).await, want);
}

/// Purge trims each queue's event stream by entries, and dropping every queue leaves only the
/// statistics keys behind. What purge deletes and counts, and the unique key it frees, is the
/// suite's `purge_frees_unique_keys_and_drop_queue_counts`.
#[tokio::test]
async fn purge_trims_streams_by_entry_and_drop_queue_leaves_no_keys() {
    let f = fixture().await;
    let b = &f.broker;
    let ids = enqueue_ids(
        &**b,
        (0..450)
            .map(|i| job("k").unique_key(format!("u{i}")))
            .collect(),
    )
    .await;
    let got = b.fetch("default", 450, LEASE).await.expect("fetch");
    b.finish(succeed_all(&got)).await.expect("finish");
    b.enqueue(vec![job("k").queue("other")])
        .await
        .expect("enqueue");
    f.clock.advance(10);
    b.purge(&[JobState::Succeeded], T0 + ms(10), 2)
        .await
        .expect("purge");
    b.enqueue(vec![job("k").unique_key("u0")])
        .await
        .expect("enqueue");
    let events = b.events(None, 5000).await.expect("events");
    // Brokers disagree: `keep_events` keeps the newest entries of each queue's stream on
    // Redis, where an entry holds the events of one script call, but the newest events of the
    // whole log on SQLite (issue 8).
    // Here `default` keeps the fetch (450 started) and the finish (450 succeeded) but not the
    // enqueue; one enqueue entry was added since; `other` has its one.
    assert_eq!(events.len(), 902);
    assert!(events.iter().all(|e| e.queue == "other"
        || e.kind_of_event != EventType::Enqueued
        || e.job_id != ids[1]));

    b.drop_queue("default").await.expect("drop");
    b.drop_queue("other").await.expect("drop");
    let left = keys_of(&f.prefix);
    assert!(
        left.iter().all(|k| k.contains(":stat:")
            || k.ends_with(":jobq")
            || k.ends_with(":layout")
            || k.ends_with(":newq")
            || k.ends_with(":evclock")),
        "left behind: {left:?}"
    );
}

#[tokio::test]
async fn refuses_bad_prefixes_and_unreachable_servers_clearly() {
    let clock: Arc<dyn Clock> = ManualClock::new(T0);
    let err = RedisBroker::connect("redis://127.0.0.1:6379/0", "a{b}", clock.clone())
        .await
        .expect_err("bad prefix");
    assert!(matches!(err, BrokerError::Config(_)));
    let err = RedisBroker::connect("redis://user:secret@127.0.0.1:1/0", "t", clock)
        .await
        .expect_err("nothing listens on port 1");
    assert!(matches!(err, BrokerError::Unavailable(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("127.0.0.1:1") && !msg.contains("secret"),
        "{msg}"
    );
}

/// A rough drain benchmark of the broker alone (no pool): `cargo test --release -p
/// hopper-workers --test conformance_redis -- --ignored --nocapture drain_throughput`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark, run by hand"]
async fn drain_throughput() {
    const N: usize = 100_000;
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let fetchers = env("FETCHERS", 4);
    let slots = env("SLOTS", 16);
    let f = fixture().await;
    let clock: Arc<dyn Clock> = Arc::new(hopper_workers::clock::SystemClock);
    let b = Arc::new(
        RedisBroker::connect(&redis_url(), &f.prefix, clock)
            .await
            .expect("connect"),
    );
    // Per command: (calls, microseconds).
    let stats = |conn: &mut redis::Connection| -> std::collections::BTreeMap<String, (u64, u64)> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(conn)
            .expect("info");
        let field = |l: &str, name: &str| -> u64 {
            l.split(name)
                .nth(1)
                .and_then(|r| r.split(',').next()?.parse().ok())
                .unwrap_or(0)
        };
        info.lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                Some((
                    name.to_owned(),
                    (field(rest, "calls="), field(rest, "usec=")),
                ))
            })
            .collect()
    };
    let mut conn = raw_conn();
    let used_memory = |conn: &mut redis::Connection| -> u64 {
        let info: String = redis::cmd("INFO").arg("memory").query(conn).expect("info");
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let memory_before = used_memory(&mut conn);
    let t = Instant::now();
    for chunk in 0..N / 1000 {
        let jobs = (0..1000).map(|_| job("sys.noop").queue("bench")).collect();
        b.enqueue(jobs)
            .await
            .unwrap_or_else(|e| panic!("enqueue chunk {chunk}: {e}"));
    }
    let enqueue_s = t.elapsed().as_secs_f64();
    eprintln!(
        "  memory per queued job: {:.0} bytes (INFO memory used_memory delta / N)",
        used_memory(&mut conn).saturating_sub(memory_before) as f64 / N as f64
    );
    let before = stats(&mut conn);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..fetchers {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            drain(&*b, "bench", slots).await.len()
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await.expect("task");
    }
    let drain_s = t.elapsed().as_secs_f64();
    let after = stats(&mut conn);
    let mut commands = 0;
    let mut busy_us = 0;
    for (name, (calls, us)) in &after {
        let (c0, u0) = before.get(name).copied().unwrap_or((0, 0));
        if *calls > c0 {
            eprintln!(
                "  {name}: {:.2} calls/job, {:.2} us/call",
                (calls - c0) as f64 / N as f64,
                (us - u0) as f64 / (calls - c0) as f64
            );
            if name == "evalsha" || name == "fcall" {
                busy_us += us - u0;
            } else {
                commands += calls - c0;
            }
        }
    }
    eprintln!(
        "  Redis busy in scripts: {:.2} s of {drain_s:.2} s",
        busy_us as f64 / 1e6
    );
    assert_eq!(done, N);
    eprintln!(
        "enqueue {:.0} jobs/s, drain {:.0} jobs/s, {:.1} Redis commands per job while draining (scripts' inner calls included)",
        N as f64 / enqueue_s,
        N as f64 / drain_s,
        commands as f64 / N as f64
    );
    b.drop_queue("bench").await.expect("drop");
}

/// A pause is stored in Redis, in the queue's hash tag: another node's broker handle (a new
/// connection under the same prefix) leases nothing from the paused queue at once, sees it
/// paused, and its worker blocked on the queue is woken by the resume.
#[tokio::test]
async fn pause_is_honoured_by_another_node_and_resume_wakes_it() {
    let prefix = unique_prefix();
    let _cleanup = Cleanup {
        prefix: prefix.clone(),
    };
    let one: Arc<dyn Broker> = Arc::new(connect(&prefix, hopper_workers::clock::system()).await);
    let two: Arc<dyn Broker> = Arc::new(connect(&prefix, hopper_workers::clock::system()).await);
    one.pause("held").await.expect("pause");
    assert_eq!(
        redis::cmd("EXISTS")
            .arg(format!("{{{prefix}:held}}:paused"))
            .query::<i64>(&mut raw_conn())
            .expect("exists"),
        1,
        "the pause is a key in the queue's slot"
    );
    one.enqueue(vec![NewJob::new("test.held", json!({})).queue("held")])
        .await
        .expect("enqueue");
    assert!(
        two.fetch("held", 10, ms(30_000))
            .await
            .expect("fetch")
            .is_empty()
    );
    let stats = two.queues().await.expect("queues");
    assert!(stats.iter().any(|s| s.queue == "held" && s.paused));

    let waiter = {
        let two = two.clone();
        tokio::spawn(async move {
            let began = Instant::now();
            two.wait_for_work(&["held".to_owned()], Duration::from_secs(30))
                .await
                .expect("wait");
            began.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    one.resume("held").await.expect("resume");
    let waited = tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .expect("the waiter returns")
        .expect("the waiter did not panic");
    assert!(
        waited < Duration::from_secs(30),
        "woken by the resume, not the timeout"
    );
    assert_eq!(
        two.fetch("held", 10, ms(30_000))
            .await
            .expect("fetch")
            .len(),
        1
    );
}

/// A job whose hash holds data Hopper did not write (here a field that is not UTF-8) cannot be
/// read. A fetch that leases it with others hands out the others, and the unreadable one is
/// buried saying why, instead of failing the whole fetch after leasing every job in it (the
/// others then waited for their leases to run out, and the same fetch failed again).
#[tokio::test]
async fn an_unreadable_job_is_buried_and_the_rest_of_its_fetch_runs() {
    let f = fixture().await;
    let b = &f.broker;
    let ids = enqueue_ids(&**b, (0..3).map(|_| job("k")).collect()).await;
    let mut conn = raw_conn();
    let key = format!("{{{}:default}}:job:{}", f.prefix, ids[1]);
    let () = redis::cmd("APPEND")
        .arg(&key)
        .arg(&b"\xFElast_error\xFFnot \xc3\x28 UTF-8"[..])
        .query(&mut conn)
        .expect("append");
    assert_eq!(fetch_ids(b, 3).await, vec![ids[0].clone(), ids[2].clone()]);
    assert_eq!(
        raw_state(&mut conn, &key),
        "dead",
        "the unreadable job is buried"
    );
    let error = raw_field(&mut conn, &key, "last_error").expect("a last error");
    let error = String::from_utf8(error).expect("the new last error is text");
    assert!(error.contains("unreadable"), "{error}");
    let history: Vec<_> = b
        .history(&ids[1])
        .await
        .expect("its history reads")
        .into_iter()
        .map(|e| e.kind_of_event)
        .collect();
    assert_eq!(
        history,
        [EventType::Enqueued, EventType::Started, EventType::Dead],
        "its history, as on SQLite"
    );
    assert!(fetch_ids(b, 3).await.is_empty(), "nothing is leased again");
}

/// A job leased before (its lease token 1) whose kind, stored before the token in its hash,
/// holds the byte 0xFF (the byte fetch.lua joins a job's parts with): the parts after it are
/// shifted by one, yet the bury must use the token this fetch wrote (2), or it is refused and
/// the job stays `running` until its lease runs out, then comes back to fail the same way.
#[tokio::test]
async fn an_unreadable_job_leased_before_is_buried_with_this_fetchs_token() {
    let f = fixture().await;
    let b = &f.broker;
    let ids = enqueue_ids(&**b, vec![job("k")]).await;
    let got = b.fetch("default", 1, LEASE).await.expect("fetch");
    let lease = got[0].lease();
    let released = b
        .finish(vec![finish(
            lease,
            Outcome::Released {
                reason: "back".into(),
            },
        )])
        .await
        .expect("release");
    assert!(released[0].is_ok(), "{released:?}");
    let key = format!("{{{}:default}}:job:{}", f.prefix, ids[0]);
    let mut conn = raw_conn();
    // The kind "k", the record's last part, becomes "k" 0xFF: a part too many.
    let rec = raw_record(&mut conn, &key);
    assert!(
        rec.ends_with(b"\xFFk"),
        "the kind is k, the last part: {rec:?}"
    );
    let mut spoilt = rec.clone();
    spoilt.push(0xFF);
    let () = redis::cmd("SET")
        .arg(&key)
        .arg(spoilt)
        .query(&mut conn)
        .expect("set");
    assert!(
        fetch_ids(b, 1).await.is_empty(),
        "the unreadable job is not handed out"
    );
    let state = raw_state(&mut conn, &key);
    assert_eq!(
        state, "dead",
        "the unreadable job is buried, not left leased"
    );
    let stats = b.queues().await.expect("queues");
    let q = stats
        .iter()
        .find(|q| q.queue == "default")
        .expect("the queue");
    assert_eq!((q.counts.running, q.counts.dead), (0, 1), "{q:?}");
}

/// `0-0@QUEUE`, the smallest id (never issued), is a cursor before every event: it missed
/// nothing while no stream was trimmed, and is told so once one was (rather than being taken
/// for a cursor from wiped data, as an issued id before a never-trimmed stream's start is).
#[tokio::test]
async fn the_smallest_cursor_missed_nothing_until_the_log_is_trimmed() {
    let f = fixture().await;
    let b: Arc<dyn Broker> = f.broker.clone();
    for _ in 0..5 {
        b.enqueue(vec![NewJob::new("test.gap", json!({}))])
            .await
            .expect("enqueue");
    }
    // Whatever queue it names, one with events or one never used.
    for start in ["0-0@default", "0-0@never-used"] {
        assert_eq!(
            b.trimmed_after(start).await.expect("trimmed"),
            Some(false),
            "{start}"
        );
    }
    b.purge(&[], T0, 2).await.expect("trim");
    for start in ["0-0@default", "0-0@never-used"] {
        assert_eq!(
            b.trimmed_after(start).await.expect("trimmed"),
            Some(true),
            "{start}"
        );
    }
}
