//! The Redis broker against a real Redis on 127.0.0.1:6379 (or `HOPPER_TEST_REDIS_URL`).
//!
//! Every test works under its own key prefix (`test-<uuid>`) and deletes its keys when it ends,
//! even when it fails. Without a reachable Redis the tests fail, naming the URL: CI starts one.
//! The lifecycle cases shared with SQLite live in the conformance suite; the tests here cover
//! what only Redis has: hash-tagged keys, blocking wake-up, batching, the event-id merge.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hopper_workers::broker::redis::RedisBroker;
use hopper_workers::broker::{Broker, Finish, JobFilter, LeaseStatus, Outcome};
use hopper_workers::clock::{Clock, ManualClock};
use hopper_workers::event::EventType;
use hopper_workers::{BrokerError, JobId, JobState, NewJob};
use serde_json::json;

const T0: i64 = 1_800_000_000_000;

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
        // Keys are `{<prefix>:<queue>}:...` and `<prefix>:...`.
        for pattern in [format!("{{{}:*", self.prefix), format!("{}:*", self.prefix)] {
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

hopper_workers::conformance_suite!(|clock: Arc<dyn Clock>| async move {
    let prefix = format!("test-{}", uuid::Uuid::now_v7().simple());
    let url = redis_url();
    let broker = RedisBroker::connect(&url, &prefix, clock)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "these tests need a Redis at {url} (set HOPPER_TEST_REDIS_URL; CI starts one): {e}"
            )
        });
    (Arc::new(broker) as Arc<dyn Broker>, Cleanup { prefix })
});

struct Fixture {
    broker: Arc<RedisBroker>,
    clock: Arc<ManualClock>,
    prefix: String,
    _cleanup: Cleanup,
}

async fn fixture() -> Fixture {
    let prefix = format!("test-{}", uuid::Uuid::now_v7().simple());
    let clock = ManualClock::new(T0);
    let url = redis_url();
    let broker = RedisBroker::connect(&url, &prefix, clock.clone())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "these tests need a Redis at {url} (set HOPPER_TEST_REDIS_URL; CI starts one): {e}"
            )
        });
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

#[tokio::test]
async fn every_key_of_a_queue_shares_one_slot() {
    let f = fixture().await;
    let b = &f.broker;
    let mut jobs = vec![
        job("a").queue("mail"),
        job("b").queue("mail").unique_key("k1"),
        job("c").queue("mail").run_at(T0 + 60_000),
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
    // Everything else is either another queue's tagged key or one of the two global keys.
    for k in &keys {
        assert!(
            k.starts_with(&format!("{{{}:", f.prefix))
                || *k == format!("{}:jobq", f.prefix)
                || *k == format!("{}:queues", f.prefix),
            "unexpected key {k}"
        );
    }
}

#[tokio::test]
async fn batch_fetch_takes_priority_then_due_time_then_fifo() {
    let f = fixture().await;
    let b = &f.broker;
    let mut jobs = Vec::new();
    for (i, p) in [5u8, 9, 0, 5, 0, 9, 5, 1].into_iter().enumerate() {
        jobs.push(job("k").priority(p).unique_key(format!("u{i}")));
    }
    // A run time in the past is simply now: it does not jump the line.
    jobs.push(job("k").priority(5).run_at(T0 - 10));
    let ids: Vec<JobId> = b
        .enqueue(jobs.clone())
        .await
        .expect("enqueue")
        .into_iter()
        .map(|e| e.id)
        .collect();
    let first = b.fetch("default", 4, LEASE).await.expect("fetch");
    let rest = b.fetch("default", 100, LEASE).await.expect("fetch");
    let order: Vec<&JobId> = first.iter().chain(&rest).map(|j| &j.id).collect();
    let want: Vec<&JobId> = [2, 4, 7, 0, 3, 6, 8, 1, 5]
        .iter()
        .map(|&i| &ids[i])
        .collect();
    assert_eq!(order, want);
    assert_eq!(first.len(), 4);
    for j in first.iter().chain(&rest) {
        assert_eq!(j.state, JobState::Running);
        assert_eq!(j.attempt, 1);
        assert_eq!(j.lease_token, 1);
        assert_eq!(j.lease_until, Some(T0 + 30_000));
        assert_eq!(j.started_at, Some(T0));
    }
    assert!(
        b.fetch("default", 10, LEASE)
            .await
            .expect("fetch")
            .is_empty()
    );
    let stored = b.get(&ids[0]).await.expect("get").expect("exists");
    assert_eq!(stored.state, JobState::Running);
}

#[tokio::test]
async fn a_large_due_backlog_is_promoted_in_bounded_steps() {
    let f = fixture().await;
    let b = &f.broker;
    let jobs: Vec<NewJob> = (0..2500).map(|_| job("k").run_at(T0 + 1000)).collect();
    let res = b.enqueue(jobs).await.expect("enqueue");
    assert!(res.iter().all(|e| e.created));
    assert!(
        b.fetch("default", 10, LEASE)
            .await
            .expect("fetch")
            .is_empty()
    );
    f.clock.advance(1000);
    let mut fetched = 0;
    for _ in 0..100 {
        let got = b.fetch("default", 64, LEASE).await.expect("fetch");
        if got.is_empty() {
            break;
        }
        fetched += got.len();
        let batch = got
            .iter()
            .map(|j| {
                finish(
                    j.lease(),
                    Outcome::Succeeded {
                        result: json!(null),
                    },
                )
            })
            .collect();
        assert!(
            b.finish(batch)
                .await
                .expect("finish")
                .iter()
                .all(Result::is_ok)
        );
    }
    assert_eq!(fetched, 2500);
    let stats = b.queues().await.expect("queues");
    assert_eq!(stats[0].counts.succeeded, 2500);
    assert_eq!(stats[0].counts.scheduled, 0);
    assert_eq!(stats[0].processed_last_minute, 2500);
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
    tokio::time::sleep(Duration::from_millis(200)).await;
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

#[tokio::test]
async fn a_due_job_caps_the_wait() {
    let f = fixture().await;
    let b = &f.broker;
    b.enqueue(vec![job("k").run_at(T0 + 150)])
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

#[tokio::test]
async fn stale_tokens_are_refused_and_outcomes_recorded() {
    let f = fixture().await;
    let b = &f.broker;
    let ids: Vec<JobId> = b
        .enqueue((0..5).map(|_| job("k")).collect())
        .await
        .expect("enqueue")
        .into_iter()
        .map(|e| e.id)
        .collect();
    let got = b.fetch("default", 5, LEASE).await.expect("fetch");
    let mut stale = got[0].lease();
    stale.token += 1;
    let res = b
        .finish(vec![
            finish(stale, Outcome::Succeeded { result: json!(1) }),
            finish(
                got[0].lease(),
                Outcome::Succeeded {
                    result: json!({"n": 1}),
                },
            ),
            finish(
                got[1].lease(),
                Outcome::Retry {
                    at: T0 + 5000,
                    error: "flaky".into(),
                },
            ),
            finish(
                got[2].lease(),
                Outcome::Dead {
                    error: "bad".into(),
                },
            ),
            finish(got[3].lease(), Outcome::Snooze { at: T0 + 1000 }),
            finish(
                got[4].lease(),
                Outcome::Released {
                    reason: "shutdown".into(),
                },
            ),
        ])
        .await
        .expect("finish");
    assert!(matches!(res[0], Err(BrokerError::LeaseLost(_))));
    assert!(res[1..].iter().all(Result::is_ok), "{res:?}");
    // Same lease twice: the second is refused.
    let again = b
        .finish(vec![finish(
            got[0].lease(),
            Outcome::Dead { error: "x".into() },
        )])
        .await
        .expect("finish");
    assert!(matches!(again[0], Err(BrokerError::LeaseLost(_))));

    let get = |i: usize| {
        let id = ids[i].clone();
        async move { b.get(&id).await.expect("get").expect("exists") }
    };
    let j = get(0).await;
    assert_eq!(
        (j.state, j.result.clone(), j.finished_at),
        (JobState::Succeeded, Some(json!({"n": 1})), Some(T0))
    );
    assert_eq!(j.lease_until, None);
    let j = get(1).await;
    assert_eq!(
        (j.state, j.run_at, j.attempt),
        (JobState::Retrying, T0 + 5000, 1)
    );
    assert_eq!(j.last_error.as_deref(), Some("flaky"));
    let j = get(2).await;
    assert_eq!(j.state, JobState::Dead);
    let j = get(3).await;
    assert_eq!(
        (j.state, j.attempt, j.run_at),
        (JobState::Scheduled, 0, T0 + 1000)
    );
    let j = get(4).await;
    assert_eq!(
        (j.state, j.attempt, j.interruptions),
        (JobState::Queued, 0, 0)
    );

    // The released job is first in line again; then the snoozed and retried ones as they fall due.
    let next = b.fetch("default", 10, LEASE).await.expect("fetch");
    assert_eq!(
        next.iter().map(|j| &j.id).collect::<Vec<_>>(),
        vec![&ids[4]]
    );
    assert_eq!((next[0].attempt, next[0].lease_token), (1, 2));
    f.clock.advance(5000);
    let next = b.fetch("default", 10, LEASE).await.expect("fetch");
    assert_eq!(
        next.iter().map(|j| &j.id).collect::<Vec<_>>(),
        vec![&ids[3], &ids[1]]
    );
    assert_eq!(next[1].attempt, 2);

    let stats = b.queues().await.expect("queues");
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].counts.running, 3);
    assert_eq!(stats[0].counts.succeeded, 1);
    assert_eq!(stats[0].counts.dead, 1);
    assert_eq!(stats[0].processed_last_minute, 1);
    assert_eq!(stats[0].failed_last_minute, 2);
    f.clock.advance(61_000);
    let stats = b.queues().await.expect("queues");
    assert_eq!(
        (stats[0].processed_last_minute, stats[0].failed_last_minute),
        (0, 0)
    );
}

#[tokio::test]
async fn heartbeat_cancel_retry_and_rescue() {
    let f = fixture().await;
    let b = &f.broker;
    let ids: Vec<JobId> = b
        .enqueue(vec![job("k"), job("k"), job("k").run_at(T0 + 10_000)])
        .await
        .expect("enqueue")
        .into_iter()
        .map(|e| e.id)
        .collect();
    let got = b.fetch("default", 2, LEASE).await.expect("fetch");
    f.clock.advance(20_000);
    let cancelled = b.cancel(&ids[1]).await.expect("cancel");
    assert_eq!(cancelled.state, JobState::Cancelled);
    let mut stale = got[0].lease();
    stale.token = 0;
    let hb = b
        .heartbeat(&[got[0].lease(), got[1].lease(), stale], LEASE)
        .await
        .expect("heartbeat");
    assert_eq!(
        hb,
        vec![LeaseStatus::Held, LeaseStatus::Cancelled, LeaseStatus::Lost]
    );
    assert_eq!(
        b.get(&ids[0]).await.expect("get").expect("job").lease_until,
        Some(T0 + 50_000)
    );
    assert!(matches!(
        b.progress(&got[1].lease(), 50, None).await,
        Err(BrokerError::LeaseLost(_))
    ));
    b.progress(&got[0].lease(), 40, Some("reading".into()))
        .await
        .expect("progress");
    let j = b.get(&ids[0]).await.expect("get").expect("job");
    assert_eq!(
        (j.progress, j.progress_message.as_deref()),
        (40, Some("reading"))
    );

    // Cancel a scheduled job; a final job cannot be cancelled; an unknown one is not found.
    assert_eq!(
        b.cancel(&ids[2]).await.expect("cancel").state,
        JobState::Cancelled
    );
    assert!(matches!(
        b.cancel(&ids[2]).await,
        Err(BrokerError::Conflict {
            state: JobState::Cancelled,
            ..
        })
    ));
    assert!(matches!(
        b.cancel(&JobId::from("nope")).await,
        Err(BrokerError::NotFound(_))
    ));
    assert!(matches!(
        b.retry(&JobId::from("nope")).await,
        Err(BrokerError::NotFound(_))
    ));
    assert!(matches!(
        b.retry(&ids[0]).await,
        Err(BrokerError::Conflict {
            state: JobState::Running,
            ..
        })
    ));

    // The lease of job 0 (extended to T0+50s) runs out: interrupted, queued, then a poison pill.
    f.clock.advance(29_000);
    assert!(b.rescue(3).await.expect("rescue").is_empty());
    for round in 1..=3u32 {
        f.clock.advance(30_000);
        let rescued = b.rescue(3).await.expect("rescue");
        assert_eq!(rescued, vec![ids[0].clone()], "round {round}");
        let j = b.get(&ids[0]).await.expect("get").expect("job");
        assert_eq!(
            (j.interruptions, j.interruption_streak, j.attempt),
            (round, round, 0)
        );
        if round < 3 {
            assert_eq!(j.state, JobState::Queued);
            let again = b.fetch("default", 1, LEASE).await.expect("fetch");
            assert_eq!(again[0].id, ids[0]);
            f.clock.advance(1);
        } else {
            assert_eq!(j.state, JobState::Dead);
            assert!(
                j.last_error
                    .unwrap_or_default()
                    .contains("interrupted 3 times")
            );
        }
    }

    // Retry one cancelled job, then every dead one.
    let j = b.retry(&ids[1]).await.expect("retry");
    assert_eq!(
        (j.state, j.attempt, j.finished_at),
        (JobState::Queued, 0, None)
    );
    assert_eq!(b.retry_all_dead(None).await.expect("retry all"), 1);
    assert_eq!(
        b.get(&ids[0]).await.expect("get").expect("job").state,
        JobState::Queued
    );
    let counts = &b.queues().await.expect("queues")[0].counts;
    assert_eq!(
        (counts.queued, counts.cancelled, counts.dead, counts.running),
        (2, 1, 0, 0)
    );
}

/// What the shared chain cases do not see: counts under `waiting`, a payload that keeps its
/// numbers and empty arrays (and an existing `input` replaced), and a poison-pill step that
/// cancels the rest, which `retry_all_dead` resumes.
#[tokio::test]
async fn chains_count_waiting_splice_input_and_survive_poison() {
    let f = fixture().await;
    let b = &f.broker;
    let steps = hopper_workers::job::link_chain(vec![
        job("a").queue("c"),
        NewJob::new("b", json!({"big": 12_345_678_901_234_567_i64, "tags": []})),
        NewJob::new("c", json!({"input": "old", "n": 1})),
    ]);
    let ids: Vec<JobId> = steps.iter().map(|s| s.id.clone()).collect();
    b.enqueue(steps).await.expect("enqueue");
    let counts = b.queues().await.expect("queues")[0].counts.clone();
    assert_eq!((counts.queued, counts.waiting), (1, 2));

    let got = b.fetch("c", 10, LEASE).await.expect("fetch");
    assert_eq!(got.len(), 1, "waiting steps are not fetched");
    b.finish(vec![finish(
        got[0].lease(),
        Outcome::Succeeded {
            result: json!({"rows": [1, 2]}),
        },
    )])
    .await
    .expect("finish");
    let second = b.fetch("c", 10, LEASE).await.expect("fetch");
    assert_eq!(
        second[0].payload,
        json!({"input": {"rows": [1, 2]}, "big": 12_345_678_901_234_567_i64, "tags": []})
    );
    let events = b.history(&ids[1]).await.expect("history");
    assert_eq!(
        events[1].message.as_deref(),
        Some("chain: step 0 succeeded")
    );

    // The second step's lease runs out three times: a poison pill, and the third is cancelled.
    for round in 0..3 {
        if round > 0 {
            b.fetch("c", 10, LEASE).await.expect("fetch");
        }
        f.clock.advance(31_000);
        b.rescue(3).await.expect("rescue");
    }
    let third = b.get(&ids[2]).await.expect("get").expect("job");
    assert_eq!(third.state, JobState::Cancelled);
    assert_eq!(
        third.last_error.as_deref(),
        Some(format!("chain: step 1 ({}) is dead", ids[1]).as_str())
    );
    let counts = b.queues().await.expect("queues")[0].counts.clone();
    assert_eq!((counts.dead, counts.cancelled, counts.waiting), (1, 1, 0));

    assert_eq!(b.retry_all_dead(Some("c")).await.expect("retry"), 1);
    let third = b.get(&ids[2]).await.expect("get").expect("job");
    assert_eq!(
        (third.state, third.finished_at, third.last_error),
        (JobState::Waiting, None, None)
    );
    let counts = b.queues().await.expect("queues")[0].counts.clone();
    assert_eq!((counts.queued, counts.cancelled, counts.waiting), (1, 0, 1));
    let second = b.fetch("c", 10, LEASE).await.expect("fetch");
    b.finish(vec![finish(
        second[0].lease(),
        Outcome::Succeeded { result: json!(7) },
    )])
    .await
    .expect("finish");
    let third = b.fetch("c", 10, LEASE).await.expect("fetch");
    assert_eq!(third[0].payload, json!({"input": 7, "n": 1}));
}

/// The fields fixed at enqueue are packed into one hash field `d` (payload last): a payload
/// holding the separator, a timeout and a priority come back exactly, from `get`, `fetch` and
/// `history`, and a fresh job's hash stays small.
#[tokio::test]
async fn packed_fields_round_trip() {
    let f = fixture().await;
    let b = &f.broker;
    let payload = json!({"a|b": "x|y||", "n": [1, 2.5, -3], "e": []});
    let j = NewJob::new("k.packed", payload.clone())
        .priority(7)
        .max_retries(4)
        .timeout(Duration::from_millis(1234))
        .unique_key("u|1");
    let plain = NewJob::new("k.plain", json!({}));
    b.enqueue(vec![j.clone(), plain.clone()])
        .await
        .expect("enqueue");
    let mut conn = raw_conn();
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(format!("{{{}:default}}:job:{}", f.prefix, plain.id))
        .query(&mut conn)
        .expect("hkeys");
    assert_eq!(fields.len(), 6, "fresh job hash: {fields:?}");
    let got = b.get(&j.id).await.expect("get").expect("job");
    assert_eq!(got.payload, payload);
    assert_eq!(got.priority, 7);
    assert_eq!(got.max_retries, 4);
    assert_eq!(got.timeout_ms, Some(1234));
    assert_eq!(got.unique_key.as_deref(), Some("u|1"));
    assert_eq!(got.created_at, T0);
    let leased = b.fetch("default", 10, LEASE).await.expect("fetch");
    assert_eq!(leased.len(), 2);
    let got = leased.iter().find(|l| l.id == j.id).expect("leased");
    assert_eq!(got.payload, payload);
    assert_eq!(got.timeout_ms, Some(1234));
    let plain_got = leased.iter().find(|l| l.id == plain.id).expect("leased");
    assert_eq!(plain_got.timeout_ms, None);
    assert_eq!(plain_got.priority, plain.priority);
    let events = b.history(&j.id).await.expect("history");
    assert_eq!(events.len(), 2, "{events:?}");
}

#[tokio::test]
async fn unique_keys_and_duplicate_ids() {
    let f = fixture().await;
    let b = &f.broker;
    let a = job("k").unique_key("report-7");
    let dup = job("k").unique_key("report-7");
    let res = b
        .enqueue(vec![a.clone(), dup.clone()])
        .await
        .expect("enqueue");
    assert!(res[0].created && !res[1].created);
    assert_eq!(res[1].id, a.id);
    assert!(b.get(&dup.id).await.expect("get").is_none());
    let res = b.enqueue(vec![a.clone()]).await.expect("enqueue");
    assert!(!res[0].created);
    assert_eq!(b.queues().await.expect("queues")[0].counts.queued, 1);
}

#[tokio::test]
async fn lists_page_newest_first_across_queues_with_filters() {
    let f = fixture().await;
    let b = &f.broker;
    let mut all = Vec::new();
    for i in 0..7 {
        let q = if i % 2 == 0 { "even" } else { "odd" };
        let kind = if i < 4 { "early" } else { "late" };
        all.push(job(kind).queue(q));
    }
    let ids: Vec<JobId> = b
        .enqueue(all)
        .await
        .expect("enqueue")
        .into_iter()
        .map(|e| e.id)
        .collect();
    let mut newest_first = ids.clone();
    newest_first.reverse();

    let mut seen = Vec::new();
    let mut cursor = None;
    for _ in 0..10 {
        let page = b
            .list(&JobFilter {
                limit: 3,
                cursor: cursor.clone(),
                ..Default::default()
            })
            .await
            .expect("list");
        assert!(page.jobs.len() <= 3);
        seen.extend(page.jobs.into_iter().map(|j| j.id));
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(seen, newest_first);

    let page = b
        .list(&JobFilter {
            queue: Some("odd".into()),
            kind: Some("late".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(
        page.jobs.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
        vec![ids[5].clone()]
    );
    assert_eq!(page.next_cursor, None);

    b.cancel(&ids[2]).await.expect("cancel");
    let page = b
        .list(&JobFilter {
            state: Some(JobState::Cancelled),
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(page.jobs.len(), 1);
    assert_eq!(page.jobs[0].id, ids[2]);
}

#[tokio::test]
async fn events_merge_queues_and_resume_after_an_id() {
    let f = fixture().await;
    let b = &f.broker;
    let ids: Vec<JobId> = b
        .enqueue(vec![job("k").queue("a"), job("k").queue("b")])
        .await
        .expect("enqueue")
        .into_iter()
        .map(|e| e.id)
        .collect();
    let got = b.fetch("a", 1, LEASE).await.expect("fetch");
    b.progress(&got[0].lease(), 10, Some("step".into()))
        .await
        .expect("progress");
    b.finish(vec![finish(
        got[0].lease(),
        Outcome::Succeeded {
            result: json!({"x": 1}),
        },
    )])
    .await
    .expect("finish");

    let all = b.events(None, 100).await.expect("events");
    assert_eq!(all.len(), 5, "{all:?}");
    let types: Vec<EventType> = all
        .iter()
        .filter(|e| e.job_id == ids[0])
        .map(|e| e.kind_of_event)
        .collect();
    assert_eq!(
        types,
        vec![
            EventType::Enqueued,
            EventType::Started,
            EventType::Progress,
            EventType::Succeeded
        ]
    );
    // Paging one at a time gives the same sequence.
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = b.events(after.as_deref(), 1).await.expect("events");
        let Some(e) = page.into_iter().next() else {
            break;
        };
        after = Some(e.id.clone());
        paged.push(e);
    }
    assert_eq!(paged, all);

    let history = b.history(&ids[0]).await.expect("history");
    assert_eq!(history.len(), 4);
    assert_eq!(history[2].progress, Some(10));
    assert_eq!(history[2].message.as_deref(), Some("step"));
    assert_eq!(history[3].result, Some(json!({"x": 1})));
    assert_eq!(history[3].attempt, 1);
    assert!(matches!(
        b.events(Some("garbage"), 10).await,
        Err(BrokerError::Invalid(_))
    ));
}

/// A batch's events share one stream entry: they still page one by one, in order, each with
/// its own id, and a job's history holds only its own.
#[tokio::test]
async fn batched_events_page_one_by_one() {
    let f = fixture().await;
    let b = &f.broker;
    let ids: Vec<JobId> = b
        .enqueue(vec![job("k"), job("k"), job("k"), job("k").queue("z")])
        .await
        .expect("enqueue")
        .into_iter()
        .map(|e| e.id)
        .collect();
    let got = b.fetch("default", 3, LEASE).await.expect("fetch");
    b.finish(
        got.iter()
            .map(|j| finish(j.lease(), Outcome::Succeeded { result: json!({}) }))
            .collect(),
    )
    .await
    .expect("finish");
    let all = b.events(None, 100).await.expect("events");
    assert_eq!(all.len(), 10, "{all:?}");
    let distinct: std::collections::HashSet<&str> = all.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(distinct.len(), 10, "every event has its own id");
    for limit in [1, 2, 3] {
        let mut paged = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = b.events(after.as_deref(), limit).await.expect("events");
            let Some(last) = page.last() else {
                break;
            };
            after = Some(last.id.clone());
            paged.extend(page);
        }
        assert_eq!(paged, all, "limit {limit}");
    }
    let history = b.history(&ids[1]).await.expect("history");
    assert_eq!(
        history.iter().map(|e| e.kind_of_event).collect::<Vec<_>>(),
        vec![
            EventType::Enqueued,
            EventType::Started,
            EventType::Succeeded
        ]
    );
    assert!(history.iter().all(|e| e.job_id == ids[1] && e.kind == "k"));
    assert_eq!(history[1].attempt, 1);
    assert_eq!(history[2].result, Some(json!({})));
}

#[tokio::test]
async fn purge_and_drop_queue_remove_everything() {
    let f = fixture().await;
    let b = &f.broker;
    let ids: Vec<JobId> = b
        .enqueue(
            (0..450)
                .map(|i| job("k").unique_key(format!("u{i}")))
                .collect(),
        )
        .await
        .expect("enqueue")
        .into_iter()
        .map(|e| e.id)
        .collect();
    let got = b.fetch("default", 450, LEASE).await.expect("fetch");
    b.finish(
        got.iter()
            .map(|j| {
                finish(
                    j.lease(),
                    Outcome::Succeeded {
                        result: json!(null),
                    },
                )
            })
            .collect(),
    )
    .await
    .expect("finish");
    b.enqueue(vec![job("k").queue("other")])
        .await
        .expect("enqueue");
    f.clock.advance(10);
    assert_eq!(
        b.purge(&[JobState::Dead], T0 + 10, 1000)
            .await
            .expect("purge"),
        0
    );
    assert_eq!(
        b.purge(&[JobState::Succeeded], T0 + 10, 2)
            .await
            .expect("purge"),
        450
    );
    assert!(b.get(&ids[0]).await.expect("get").is_none());
    // The unique key is free again once its job is gone.
    assert!(
        b.enqueue(vec![job("k").unique_key("u0")])
            .await
            .expect("enqueue")[0]
            .created
    );
    let events = b.events(None, 5000).await.expect("events");
    // Each queue's stream keeps its newest 2 entries, and an entry holds the events of one
    // script call: `default` keeps the fetch (450 started) and the finish (450 succeeded) but
    // not the enqueue; one enqueue entry was added since; `other` has its one.
    assert_eq!(events.len(), 902);
    assert!(events.iter().all(|e| e.queue == "other"
        || e.kind_of_event != EventType::Enqueued
        || e.job_id != ids[1]));

    assert_eq!(b.drop_queue("default").await.expect("drop"), 1);
    assert_eq!(b.drop_queue("other").await.expect("drop"), 1);
    assert!(b.queues().await.expect("queues").is_empty());
    let left = keys_of(&f.prefix);
    assert!(
        left.iter()
            .all(|k| k.contains(":stat:") || k.ends_with(":jobq")),
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
            let mut done = 0;
            loop {
                let jobs = b.fetch("bench", slots, LEASE).await.expect("fetch");
                if jobs.is_empty() {
                    return done;
                }
                done += jobs.len();
                let batch = jobs
                    .iter()
                    .map(|j| {
                        finish(
                            j.lease(),
                            Outcome::Succeeded {
                                result: json!(null),
                            },
                        )
                    })
                    .collect();
                b.finish(batch).await.expect("finish");
            }
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
            if name == "evalsha" {
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
