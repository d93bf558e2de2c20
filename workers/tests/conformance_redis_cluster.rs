//! The Redis broker against a real Redis Cluster: by default the 3-master cluster `.ci/run`
//! starts on 127.0.0.1:7101-7103 (or `HOPPER_TEST_REDIS_CLUSTER_URL`,
//! `redis-cluster://HOST:PORT,...`).
//!
//! The whole conformance suite runs here as against a standalone Redis, each test under its
//! own key prefix (`test-<uuid>`) whose keys are deleted from every node when it ends. The
//! tests below cover what a cluster adds: queues spread over the shards, wake-ups and event
//! waits that span slots (one blocking call per slot), pipelines that span slots, scripts
//! lost by the nodes, and the URL's checks; and, on a private cluster of the test's own, a
//! shard lost. Without a reachable cluster the tests fail, naming the URL: CI starts one.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hopper_workers::broker::redis::RedisBroker;
use hopper_workers::broker::{Broker, Finish, Outcome};
use hopper_workers::clock::{Clock, ManualClock, system};
use hopper_workers::time::Timestamp;
use hopper_workers::{BrokerError, JobState, NewJob};
use serde_json::json;

const T0: Timestamp = Timestamp::from_millis(1_800_000_000_000);

fn cluster_url() -> String {
    std::env::var("HOPPER_TEST_REDIS_CLUSTER_URL")
        .unwrap_or_else(|_| "redis-cluster://127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103".into())
}

/// `host:port` of every primary of the cluster, asked of its first seed.
fn primaries() -> Vec<String> {
    let url = cluster_url();
    let seeds = url.split_once("://").map_or("", |(_, rest)| rest);
    let seed = seeds.split(',').next().unwrap_or_default();
    let Ok(client) = redis::Client::open(format!("redis://{seed}")) else {
        return Vec::new();
    };
    let Ok(mut conn) = client.get_connection() else {
        return Vec::new();
    };
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query(&mut conn)
        .unwrap_or_default();
    nodes
        .lines()
        .filter_map(|line| {
            let mut parts = line.split(' ');
            let addr = parts.nth(1)?;
            let flags = parts.next()?;
            flags
                .contains("master")
                .then(|| addr.split('@').next().unwrap_or(addr).to_owned())
        })
        .collect()
}

fn node_conn(node: &str) -> redis::Connection {
    redis::Client::open(format!("redis://{node}"))
        .and_then(|c| c.get_connection())
        .unwrap_or_else(|e| panic!("cluster node {node}: {e}"))
}

/// The keys of `prefix` on `node`.
fn keys_on(conn: &mut redis::Connection, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for pattern in [format!("{{{prefix}[:}}]*"), format!("{prefix}:*")] {
        if let Ok(it) = redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .clone()
            .iter::<String>(conn)
        {
            out.extend(it.filter_map(Result::ok));
        }
    }
    out
}

/// Deletes every key of a prefix on every primary when dropped, so a failing test cleans up
/// too.
struct Cleanup {
    prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for node in primaries() {
            let Ok(client) = redis::Client::open(format!("redis://{node}")) else {
                continue;
            };
            let Ok(mut conn) = client.get_connection() else {
                continue;
            };
            let keys = keys_on(&mut conn, &self.prefix);
            // One key per command: a node refuses a multi-key DEL across slots.
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.cmd("UNLINK").arg(k).ignore();
            }
            let _: Result<(), _> = pipe.query(&mut conn);
        }
    }
}

/// A broker on the cluster under `prefix`, or a panic that says how to get one.
async fn connect(prefix: &str, clock: Arc<dyn Clock>) -> RedisBroker {
    let url = cluster_url();
    RedisBroker::connect(&url, prefix, clock)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "these tests need a Redis Cluster at {url} (set HOPPER_TEST_REDIS_CLUSTER_URL; \
                 .ci/run starts one on 7101-7103): {e}"
            )
        })
}

fn unique_prefix() -> String {
    format!("test-{}", uuid::Uuid::now_v7().simple())
}

hopper_workers::conformance_suite!(|clock: Arc<dyn Clock>| async move {
    let prefix = unique_prefix();
    // The suite moves a manual clock: the broker decides by it instead of by Redis' TIME.
    let broker = connect(&prefix, clock).await.with_clock_time();
    (Arc::new(broker) as Arc<dyn Broker>, Cleanup { prefix })
});

fn job(kind: &str) -> NewJob {
    NewJob::new(kind, json!({}))
}

/// Queue names whose slots are on different primaries than `default`'s: `n` of them.
fn queues_on_other_shards(prefix: &str, n: usize) -> Vec<String> {
    let mut conn = node_conn(&primaries()[0]);
    let mut slot = |q: &str| -> i64 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(format!("{{{prefix}:{q}}}:signal"))
            .query(&mut conn)
            .expect("keyslot")
    };
    let first = slot("q0");
    // A third of the slots per primary: slots far apart are on different primaries.
    (1..200)
        .map(|i| format!("q{i}"))
        .filter(|q| (slot(q) - first).abs() > 8000)
        .take(n)
        .collect()
}

#[tokio::test]
async fn queues_spread_over_the_shards() {
    let prefix = unique_prefix();
    let _cleanup = Cleanup {
        prefix: prefix.clone(),
    };
    let b = connect(&prefix, system()).await;
    let queues: Vec<String> = (0..12).map(|i| format!("spread{i}")).collect();
    // One batch over every queue: the pipeline spans slots and nodes.
    let jobs: Vec<NewJob> = queues.iter().map(|q| job("k").queue(q)).collect();
    let stored = b.enqueue(jobs).await.expect("enqueue");
    assert!(stored.iter().all(|e| e.created));
    let nodes = primaries();
    assert!(nodes.len() >= 2, "a cluster of {} primaries", nodes.len());
    let holding: BTreeSet<&String> = nodes
        .iter()
        .filter(|n| !keys_on(&mut node_conn(n), &prefix).is_empty())
        .collect();
    assert!(
        holding.len() >= 2,
        "12 queues all on one node of {nodes:?}: {holding:?}"
    );
    // Every job is found, fetched and finished wherever its queue lives.
    for e in &stored {
        let got = b.get(&e.job.id).await.expect("get").expect("found");
        assert_eq!(got.state, JobState::Queued);
    }
    let mut leased = Vec::new();
    for q in &queues {
        leased.extend(
            b.fetch(q, 10, Duration::from_secs(30))
                .await
                .expect("fetch"),
        );
    }
    assert_eq!(leased.len(), 12);
    let done = b
        .finish(
            leased
                .iter()
                .map(|j| Finish {
                    lease: j.lease(),
                    outcome: Outcome::Succeeded { result: json!(1) },
                })
                .collect(),
        )
        .await
        .expect("finish");
    assert!(done.iter().all(Result::is_ok));
    let stats = b.queues().await.expect("queues");
    assert_eq!(stats.len(), 12);
    assert!(stats.iter().all(|s| s.counts.get(JobState::Succeeded) == 1));
    // The merged event log reads every shard's streams.
    let events = b.events(None, 1000).await.expect("events");
    assert_eq!(events.len(), 12 * 3, "enqueued, started, succeeded per job");
}

#[tokio::test]
async fn a_waiter_on_queues_of_several_slots_wakes_on_any() {
    let prefix = unique_prefix();
    let _cleanup = Cleanup {
        prefix: prefix.clone(),
    };
    let b = Arc::new(connect(&prefix, system()).await);
    let mut queues = vec!["q0".to_string()];
    queues.extend(queues_on_other_shards(&prefix, 2));
    assert_eq!(queues.len(), 3);
    // Nothing to do: the wait lasts its timeout.
    let t = Instant::now();
    b.wait_for_work(&queues, Duration::from_millis(300))
        .await
        .expect("wait");
    assert!(t.elapsed() >= Duration::from_millis(250));
    for target in [queues[2].clone(), queues[0].clone()] {
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
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiter.is_finished(), "the waiter returned with no work");
        b.enqueue(vec![job("k").queue(&target)])
            .await
            .expect("enqueue");
        let waited = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter woke up")
            .expect("join");
        assert!(waited < Duration::from_secs(5), "{target}: {waited:?}");
        // Take the job, so that the next round starts from nothing to do.
        let got = b
            .fetch(&target, 10, Duration::from_secs(30))
            .await
            .expect("fetch");
        assert_eq!(got.len(), 1);
    }
}

#[tokio::test]
async fn an_event_waiter_wakes_for_a_queue_on_another_shard() {
    let prefix = unique_prefix();
    let _cleanup = Cleanup {
        prefix: prefix.clone(),
    };
    let b = Arc::new(connect(&prefix, system()).await);
    let other = queues_on_other_shards(&prefix, 1).remove(0);
    // Both queues exist, so that both streams are waited on.
    b.enqueue(vec![job("k").queue("q0"), job("k").queue(&other)])
        .await
        .expect("enqueue");
    // Let the current millisecond settle, then read everything.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let seen = b.events(None, 100).await.expect("events");
    assert_eq!(seen.len(), 2);
    let last = seen.last().map(|e| e.id.clone());
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            b.wait_for_events(last.as_deref(), Duration::from_secs(20))
                .await
                .expect("wait");
            t.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "the waiter returned with no event");
    b.enqueue(vec![job("k").queue(&other)])
        .await
        .expect("enqueue");
    let waited = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter woke up")
        .expect("join");
    assert!(waited < Duration::from_secs(5));
}

#[tokio::test]
async fn code_lost_by_every_node_is_loaded_again() {
    let prefix = unique_prefix();
    let _cleanup = Cleanup {
        prefix: prefix.clone(),
    };
    let clock = ManualClock::new(T0);
    let b = connect(&prefix, clock.clone()).await.with_clock_time();
    let queues = {
        let mut q = vec!["q0".to_string()];
        q.extend(queues_on_other_shards(&prefix, 1));
        q
    };
    // As after a failover to replicas that never loaded them: the function library (how the
    // broker calls its code) and the scripts (where Redis refuses functions) both gone.
    for node in primaries() {
        for what in ["SCRIPT", "FUNCTION"] {
            let _: () = redis::cmd(what)
                .arg("FLUSH")
                .query(&mut node_conn(&node))
                .expect("flush");
        }
    }
    // A pipeline over two slots finds the code missing on both nodes; each job is stored once.
    let stored = b
        .enqueue(queues.iter().map(|q| job("k").queue(q)).collect())
        .await
        .expect("enqueue");
    assert_eq!(stored.len(), 2);
    for q in &queues {
        let got = b
            .fetch(q, 10, Duration::from_secs(30))
            .await
            .expect("fetch");
        assert_eq!(got.len(), 1, "{q}");
    }
    let counts: u64 = b
        .queues()
        .await
        .expect("queues")
        .iter()
        .map(|s| s.counts.get(JobState::Running))
        .sum();
    assert_eq!(counts, 2);
}

/// A node of the cluster named by a plain `redis://` URL is refused at connect, naming the
/// URL to use: its scripts and log reads would span slots.
#[tokio::test]
async fn a_cluster_node_named_as_one_redis_is_refused() {
    let url = cluster_url();
    let seeds = url.split_once("://").map_or("", |(_, rest)| rest);
    let seed = seeds.split(',').next().unwrap_or_default();
    let err = RedisBroker::connect(&format!("redis://{seed}"), "p", system())
        .await
        .expect_err("a cluster node as one Redis");
    match err {
        BrokerError::Config(msg) => assert!(msg.contains("redis-cluster://"), "{msg}"),
        other => panic!("not a config error: {other}"),
    }
}

#[tokio::test]
async fn refuses_malformed_cluster_urls_clearly() {
    for url in [
        "redis-cluster://",
        "redis-cluster://127.0.0.1",
        "redis-cluster://127.0.0.1:notaport",
        "redis-cluster://127.0.0.1:7101,",
        "redis-cluster://127.0.0.1:7101/2",
    ] {
        let err = RedisBroker::connect(url, "p", system())
            .await
            .expect_err(url);
        match err {
            BrokerError::Config(msg) => assert!(msg.contains("Redis Cluster URL"), "{url}: {msg}"),
            other => panic!("{url}: not a config error: {other}"),
        }
    }
    // A password is not shown in the message.
    let err = RedisBroker::connect("redis-cluster://u:s3cret@h:1/9", "p", system())
        .await
        .expect_err("db 9");
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

/// `n` queue names (`bench0`, `bench1`, ...), each on a different primary when the cluster
/// has that many; any names on a standalone Redis (for the same run without shards).
fn queues_on_distinct_primaries(prefix: &str, n: usize) -> Vec<String> {
    let nodes = primaries();
    if nodes.is_empty() {
        return (0..n).map(|i| format!("bench{i}")).collect();
    }
    let mut conn = node_conn(&nodes[0]);
    // (first slot, last slot, primary's port) of every range.
    let ranges: Vec<(i64, i64, i64)> = {
        let v: Vec<redis::Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut conn)
            .expect("slots");
        v.into_iter()
            .filter_map(|r| match r {
                redis::Value::Array(p) => match (p.first(), p.get(1), p.get(2)) {
                    (
                        Some(redis::Value::Int(a)),
                        Some(redis::Value::Int(b)),
                        Some(redis::Value::Array(node)),
                    ) => match node.get(1) {
                        Some(redis::Value::Int(port)) => Some((*a, *b, *port)),
                        _ => None,
                    },
                    _ => None,
                },
                _ => None,
            })
            .collect()
    };
    let mut taken = BTreeSet::new();
    let mut out = Vec::new();
    for i in 0..1000 {
        let q = format!("bench{i}");
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(format!("{{{prefix}:{q}}}:"))
            .query(&mut conn)
            .expect("keyslot");
        let port = ranges
            .iter()
            .find(|(a, b, _)| (*a..=*b).contains(&slot))
            .map(|r| r.2);
        if let Some(port) = port
            && (taken.len() >= nodes.len() || taken.insert(port))
        {
            out.push(q);
            if out.len() == n {
                break;
            }
        }
    }
    out
}

/// How drain throughput grows with shards: `QUEUES` queues (default 3), each on its own
/// primary, `JOBS` no-op jobs (default 60,000) spread over them, drained by `FETCHERS`
/// fetch/finish loops per queue (default 4) of up to `SLOTS` jobs (default 16), the broker
/// alone (no pool). `cargo test --release -p hopper-workers --features test-util --test
/// conformance_redis_cluster -- --ignored --nocapture drain_by_shards`; the cluster is
/// `HOPPER_TEST_REDIS_CLUSTER_URL` (a `redis://` URL runs the same queues on one Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark, run by hand"]
async fn drain_by_shards() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (n_queues, jobs, fetchers, slots) = (
        env("QUEUES", 3),
        env("JOBS", 60_000),
        env("FETCHERS", 4),
        env("SLOTS", 16),
    );
    let prefix = unique_prefix();
    let _cleanup = Cleanup {
        prefix: prefix.clone(),
    };
    let b = Arc::new(connect(&prefix, system()).await);
    let queues = queues_on_distinct_primaries(&prefix, n_queues);
    let t = Instant::now();
    for chunk in 0..jobs / 1000 {
        let batch = (0..1000)
            .map(|i| job("sys.noop").queue(&queues[(chunk * 1000 + i) % queues.len()]))
            .collect();
        b.enqueue(batch).await.expect("enqueue");
    }
    let enqueue_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for q in &queues {
        for _ in 0..fetchers {
            let (b, q) = (b.clone(), q.clone());
            tasks.push(tokio::spawn(async move {
                hopper_workers::testing::drain(&*b, &q, slots).await.len()
            }));
        }
    }
    let mut done = 0;
    for t in tasks {
        done += t.await.expect("task");
    }
    let drain_s = t.elapsed().as_secs_f64();
    assert_eq!(done, jobs / 1000 * 1000);
    eprintln!(
        "{} queues {queues:?}: enqueue {:.0} jobs/s, drain {:.0} jobs/s",
        queues.len(),
        done as f64 / enqueue_s,
        done as f64 / drain_s
    );
    for q in &queues {
        b.drop_queue(q).await.expect("drop");
    }
}

#[path = "support/private_redis.rs"]
mod private_redis;

/// A cluster that lost a shard refuses every keyed command (`CLUSTERDOWN`) although each node
/// left answers `PING`: readiness says so, so that a load balancer stops sending requests
/// that would all answer 503, and says it again once the shard is back.
#[tokio::test]
async fn a_cluster_that_lost_a_shard_is_not_ready() {
    let mut cluster = private_redis::Cluster::start();
    let broker = RedisBroker::connect(&cluster.url(), &unique_prefix(), system())
        .await
        .expect("connect to the private cluster");
    broker.ready().await.expect("a whole cluster is ready");

    // Killed, not stopped: the client then drops the node, and a PING of the nodes left would
    // say all is well.
    cluster.nodes[2].kill();
    cluster.wait_state(0, "fail");
    let deadline = Instant::now() + Duration::from_secs(60);
    let refused = loop {
        match broker.ready().await {
            Err(e) => break e,
            Ok(()) => {
                assert!(
                    Instant::now() < deadline,
                    "a cluster without a shard is still said to be ready"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(
        matches!(refused, BrokerError::Unavailable(_)),
        "not unavailable: {refused:?}"
    );

    cluster.nodes[2].restart();
    cluster.wait_state(0, "ok");
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(e) = broker.ready().await {
        assert!(
            Instant::now() < deadline,
            "the cluster is whole again but not ready: {e}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
