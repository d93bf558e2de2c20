//! The Redis broker end to end (Hopper issue 3): several nodes on one Redis (and on a Redis
//! Cluster) with a worker killed and another frozen past its lease, a Redis restart under load, the README tour
//! with `HOPPER_BROKER`, and a broker reached over TLS.
//!
//! The shared Redis is the one CI starts on 127.0.0.1:6379 (db 0); a test that cannot reach it
//! fails saying so. Every test there uses its own key prefix and deletes its keys when it
//! ends, passed or failed ([`RedisKeys`]). The restart and TLS tests run a `redis-server` of
//! their own ([`RedisServer`]). The fixtures are `util::redis`; this file holds the scenarios.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::util::redis::{
    CLUSTER_URL, ClusterKeys, RedisKeys, RedisServer, SHARED_URL, redis_cli, unique_prefix,
};
use crate::util::{Api, Daemon, Follow, Scratch, count, events, ms, noop, now_ms, sleep, wait};

/// The two load tests take this, so they do not compete for the CPU with each other: on a
/// small machine that alone could stretch a heartbeat past a 2 s lease.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The time from which a worker just killed (and reaped) or frozen holds no lease it did not
/// hold before. The signal alone does not say: `kill` takes a while to run on a loaded machine,
/// the worker fetches and heartbeats meanwhile, and Redis may run a command it sent just
/// before it halted a little later. A read of the queue's running jobs through `api` sent
/// now comes back only after Redis has run every command already in its socket from the
/// halted worker, so none of that worker's leases runs past the time returned plus the lease.
async fn halted_at(api: &Api) -> i64 {
    api.all_jobs("default", "running").await;
    now_ms()
}

/// Waits until `lease_ms` after `since` (from [`halted_at`]) has passed and no running job
/// holds an expired lease any more: every lease a frozen or dead worker held has been rescued.
async fn wait_expired_leases_rescued(api: &Api, since: i64, lease_ms: i64) {
    tokio::time::sleep(Duration::from_millis(
        u64::try_from(since + lease_ms - now_ms()).unwrap_or(0),
    ))
    .await;
    wait::until("expired leases were never rescued", async || {
        let now = now_ms();
        let stale: Vec<Value> = api
            .all_jobs("default", "running")
            .await
            .into_iter()
            .filter(|j| j["lease_until"].is_null() || ms(&j["lease_until"]) < now)
            .collect();
        if stale.is_empty() {
            Ok(())
        } else {
            Err(format!("{stale:#?}"))
        }
    })
    .await;
}

/// Waits until the `default` queue's counts satisfy `done`; `what` names the wait.
async fn wait_counts(api: &Api, what: &str, done: impl Fn(&Value) -> bool) {
    wait::until(what, async || {
        let c = api.counts("default").await;
        if done(&c) { Ok(()) } else { Err(c.to_string()) }
    })
    .await;
}

/// Waits until `jobs` jobs of the `default` queue succeeded, for as long as more keep
/// succeeding: how fast thousands of jobs drain depends on the CPU the workers get, so the
/// deadline ([`wait::DEADLINE`]) runs from the last job seen to succeed, and catches a stall
/// rather than a slow machine.
async fn wait_drained(api: &Api, jobs: u64) {
    let mut succeeded = 0;
    let mut deadline = std::time::Instant::now() + wait::DEADLINE;
    loop {
        let c = api.counts("default").await;
        let now = count(&c, "succeeded");
        if now == jobs {
            return;
        }
        if now > succeeded {
            succeeded = now;
            deadline = std::time::Instant::now() + wait::DEADLINE;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not all jobs succeeded, none for {:?}; last seen: {c}",
            wait::DEADLINE
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const REFUSED: &str = "completion refused: stale lease token";
const LOST: &str = "lease lost: stopped its handler";
const EXPIRED: &str = "lease ran out without a successful heartbeat";

/// One `serve --no-workers` takes 5,000 `sys.sleep` jobs of 1-20 ms over HTTP, then three
/// `worker`s on the same Redis (lease 2 s, heartbeat 500 ms) run them. Midway one worker is
/// killed with SIGKILL and, once its jobs are rescued, another is frozen with SIGSTOP for 4 s
/// (twice its lease) while it holds jobs, then resumed.
///
/// Afterwards every job succeeded on its first attempt; the only jobs started more than once
/// are those interrupted, with one extra start per interruption; and every job interrupted
/// while the worker was frozen had its stale attempt refused by the lease token or stopped:
/// its late completion refused ("completion refused: stale lease token"), or, when the
/// resumed worker's heartbeat got there first, the heartbeat refused ("lease lost: stopped
/// its handler"), which stops the handler before it completes, or, when the resumed worker's
/// lease watch woke first, the handler stopped because its lease had run out unrenewed
/// ("lease ran out without a successful heartbeat"), before it wrote anything. Which wins is a race inside the resumed process (more
/// than one is logged when the handler finished just as the heartbeat found the lease lost),
/// so the test counts them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_survive_a_kill_and_a_freeze() {
    let keys = RedisKeys::claim();
    kill_and_freeze(SHARED_URL, &keys.prefix).await;
}

/// [`three_workers_survive_a_kill_and_a_freeze`] on the 3-master Redis Cluster of CI: the
/// queue's keys on one shard, the global indexes (jobs by id, queues, leased queues) on
/// others, and every pipeline that spans them split by slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_on_a_redis_cluster_survive_a_kill_and_a_freeze() {
    let keys = ClusterKeys::claim();
    kill_and_freeze(CLUSTER_URL, &keys.prefix).await;
}

async fn kill_and_freeze(url: &str, prefix: &str) {
    const JOBS: usize = 5000;
    const ENQUEUERS: usize = 8;
    const CONCURRENCY: u64 = 16;
    const LEASE_MS: i64 = 2000;
    let _heavy = HEAVY.lock().await;
    let s = Scratch::new();
    s.write_config_with_broker(
        url,
        prefix,
        &format!("[worker]\nlease = \"2s\"\nheartbeat = \"500ms\"\nconcurrency = {CONCURRENCY}\n"),
    );
    let (_api_d, api) = s.serve(&["--no-workers"]);
    let api = Arc::new(api);

    // The whole backlog first, so the workers hold jobs whenever they are hit, however fast
    // this machine enqueues compared to how fast they run.
    let enqueuers: Vec<_> = (0..ENQUEUERS)
        .map(|t| {
            let api = api.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in (t..JOBS).step_by(ENQUEUERS) {
                    ids.push(api.enqueue_ok(sleep(1 + i as u64 % 20)).await);
                }
                ids
            })
        })
        .collect();
    let mut ids = BTreeSet::new();
    for e in enqueuers {
        ids.extend(e.await.unwrap());
    }
    assert_eq!(ids.len(), JOBS, "job ids are not unique");

    let mut workers: Vec<Daemon> = (0..3).map(|_| s.start(&["worker"])).collect();
    for w in &workers {
        w.wait_log("worker started");
    }
    // A tenth of the jobs done, and more jobs running than two workers have slots: all three
    // are busy (the one about to be killed included), most of the backlog still queued.
    wait_counts(&api, "stuck before midway", |c| {
        count(c, "succeeded") >= JOBS as u64 / 10 && count(c, "running") > 2 * CONCURRENCY
    })
    .await;
    workers[0].stop("KILL");
    let killed_at = halted_at(&api).await;
    wait_expired_leases_rescued(&api, killed_at, LEASE_MS).await;

    // Freeze workers[1] while it surely holds jobs: with more jobs running than the other
    // live worker has slots, some are its own.
    wait_counts(&api, "cannot freeze a worker holding jobs", |c| {
        let holding = count(c, "running") > CONCURRENCY;
        assert!(
            holding || count(c, "queued") > 0,
            "cannot freeze a worker holding jobs: {c}"
        );
        holding
    })
    .await;
    // Every job the killed worker held was rescued before this: a job interrupted from now on
    // was interrupted by the freeze.
    let stopped_at = now_ms();
    workers[1].freeze();
    wait_expired_leases_rescued(&api, halted_at(&api).await, LEASE_MS).await;
    // The freeze itself: twice the lease, whatever the rescue took.
    tokio::time::sleep(Duration::from_millis(
        u64::try_from(stopped_at + 2 * LEASE_MS - now_ms()).unwrap_or(0),
    ))
    .await;
    workers[1].signal("CONT");

    wait_drained(&api, JOBS as u64).await;

    // The CLI agrees, straight from Redis: every job succeeded, nothing else left.
    let counts = s.cli_counts("default");
    for (state, n) in counts.as_object().unwrap() {
        let want = if state == "succeeded" { JOBS as u64 } else { 0 };
        assert_eq!(n.as_u64(), Some(want), "{state} in {counts}");
    }

    // The ledger: every job once, on its first attempt, plus one start per interruption.
    let succeeded = api.all_jobs("default", "succeeded").await;
    let listed: BTreeSet<String> = succeeded
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        listed, ids,
        "the succeeded listing is not the jobs enqueued"
    );
    // Full histories for every interrupted job and a sample of the rest, a few at a time: a
    // history read scans the queue's event stream between the job's first and last event.
    let mut to_check = Vec::new();
    for (n, j) in succeeded.iter().enumerate() {
        assert_eq!(j["attempt"], 1, "a failed attempt: {j:#}");
        let interruptions = j["interruptions"].as_u64().unwrap();
        if interruptions > 0 || n % 1000 == 0 {
            to_check.push((j["id"].as_str().unwrap().to_owned(), interruptions));
        }
    }
    let histories: Vec<(String, u64, Value)> = futures::stream::iter(to_check)
        .map(|(id, interruptions)| {
            let api = api.clone();
            async move {
                let job = api.job(&id).await;
                (id, interruptions, job)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut interrupted_at: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (id, interruptions, job) in histories {
        let starts = events(&job, "job.started").len() as u64;
        let lost = events(&job, "job.interrupted");
        assert_eq!(lost.len() as u64, interruptions, "{job:#}");
        assert_eq!(starts, 1 + interruptions, "started twice: {job:#}");
        assert_eq!(events(&job, "job.succeeded").len(), 1, "{job:#}");
        if interruptions > 0 {
            interrupted_at.insert(id, lost.iter().map(|e| ms(&e["at"])).collect());
        }
    }
    let by_kill = interrupted_at
        .values()
        .filter(|at| at.iter().any(|&t| t < stopped_at))
        .count();
    let by_stop: BTreeSet<String> = interrupted_at
        .iter()
        .filter(|(_, at)| at.iter().any(|&t| t >= stopped_at))
        .map(|(id, _)| id.clone())
        .collect();
    assert!(by_kill > 0, "the killed worker held no job");
    assert!(!by_stop.is_empty(), "the frozen worker held no job");

    // The stale attempts: each job interrupted while the worker was frozen had its completion
    // or its heartbeat refused by the lease token, or its handler stopped for a lease run out,
    // in that worker's log (or, should the live
    // worker have been starved past its own lease, in that one's), and no other job did.
    // Log lines may trail the last success a little.
    let (frozen, live) = (&workers[1], &workers[2]);
    let refused_writes = || {
        let refused: BTreeSet<String> = frozen.logged_jobs(REFUSED).into_iter().collect();
        let stopped: BTreeSet<String> = frozen
            .logged_jobs(LOST)
            .into_iter()
            .chain(frozen.logged_jobs(EXPIRED))
            .collect();
        let live_lost: BTreeSet<String> = live
            .logged_jobs(REFUSED)
            .into_iter()
            .chain(live.logged_jobs(LOST))
            .chain(live.logged_jobs(EXPIRED))
            .collect();
        (refused, stopped, live_lost)
    };
    wait::until(
        "jobs with a write refused by the lease token vs jobs interrupted while a worker was \
         frozen",
        async || {
            let (refused, stopped, live_lost) = refused_writes();
            let seen: BTreeSet<&String> =
                refused.iter().chain(&stopped).chain(&live_lost).collect();
            if seen == by_stop.iter().collect() {
                Ok(())
            } else {
                Err(format!("{seen:?} vs {by_stop:?}"))
            }
        },
    )
    .await;
    let refusals = frozen.logged_jobs(REFUSED);
    let refused: BTreeSet<&String> = refusals.iter().collect();
    assert!(
        !refused.is_empty()
            || !frozen.logged_jobs(LOST).is_empty()
            || !frozen.logged_jobs(EXPIRED).is_empty(),
        "the frozen worker had no write refused"
    );
    assert_eq!(
        refusals.len(),
        refused.len(),
        "a completion was refused twice"
    );
}

/// A Redis of its own (AOF, fsync every second) is shut down while jobs are being enqueued
/// every 50 ms, and started again 2 s later on the same directory. Enqueues during the outage
/// may fail; every one that was acknowledged (201) reaches `succeeded`, and the same `serve`
/// process, never restarted, reconnects by itself and acknowledges enqueues sent after the
/// restart, whose jobs run too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restart_loses_no_acknowledged_job() {
    let _heavy = HEAVY.lock().await;
    let mut redis = RedisServer::start();
    let s = Scratch::new();
    s.write_config_with_broker(&redis.url(), &unique_prefix(), "");
    let (mut d, api) = s.serve(&[]);
    let api = Arc::new(api);

    // Enqueue every 50 ms, each request on its own task so a slow answer during the outage
    // does not hold back the next ones. `last_acked` is when the latest acknowledged enqueue
    // was sent.
    let stop = Arc::new(AtomicBool::new(false));
    let last_acked = Arc::new(AtomicI64::new(0));
    let ticker = {
        let (api, stop, last_acked) = (api.clone(), stop.clone(), last_acked.clone());
        tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let body = if n.is_multiple_of(2) {
                    noop()
                } else {
                    sleep(50)
                };
                n += 1;
                let (api, last_acked) = (api.clone(), last_acked.clone());
                let at = now_ms();
                sent.push((
                    at,
                    tokio::spawn(async move {
                        let r = api
                            .http
                            .post(format!("{}/v1/jobs", api.base))
                            .json(&body)
                            .timeout(Duration::from_secs(40))
                            .send()
                            .await;
                        let Ok(r) = r else { return (0, None) };
                        let status = r.status().as_u16();
                        let job: Value = r.json().await.unwrap_or(Value::Null);
                        if status == 201 {
                            last_acked.fetch_max(at, Ordering::Relaxed);
                        }
                        (status, job["id"].as_str().map(str::to_owned))
                    }),
                ));
            }
            sent
        })
    };
    let acked_since = |since: i64| {
        let last_acked = last_acked.clone();
        async move || {
            let last = last_acked.load(Ordering::Relaxed);
            if last >= since {
                Ok(())
            } else {
                Err(format!("latest sent at {last}"))
            }
        }
    };

    wait::until(
        "no enqueue was acknowledged before the outage",
        acked_since(1),
    )
    .await;
    tokio::task::block_in_place(|| redis.shutdown());
    // The outage.
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| redis.launch());
    let up_at = now_ms();
    wait::until(
        "no enqueue was acknowledged after the restart",
        acked_since(up_at),
    )
    .await;
    stop.store(true, Ordering::Relaxed);

    let mut acked = Vec::new();
    let mut refused: BTreeMap<u16, usize> = BTreeMap::new();
    for (at, req) in ticker.await.unwrap() {
        match req.await.unwrap() {
            (201, Some(id)) => acked.push((at, id)),
            (status, _) => *refused.entry(status).or_default() += 1,
        }
    }
    assert!(
        refused.keys().all(|&s| s == 0 || s >= 500),
        "an enqueue was refused with a 4xx: {refused:?}"
    );
    let after = acked.iter().filter(|(at, _)| *at >= up_at).count();
    assert!(after > 0, "no enqueue was acknowledged after the restart");

    for (_, id) in &acked {
        api.wait_state(id, "succeeded").await;
    }
    d.assert_running();
}

/// The README tour with `HOPPER_BROKER=redis://127.0.0.1:6379/0` overriding the config's
/// SQLite URL (the config sets only the key prefix that matters): a `sys.noop` succeeds; a
/// `sys.fail {"times": 99}` with `max_retries: 2` is dead after 3 runs; `hopper retry ID`
/// queues it with a fresh set of retries; `hopper queues --json` shows the counts. Everything
/// lives in Redis under the prefix, nothing in SQLite.
#[tokio::test]
async fn readme_tour_on_redis() {
    let keys = RedisKeys::claim();
    let s = Scratch::new().with_env("HOPPER_BROKER", SHARED_URL);
    let sqlite = s.broker_url();
    s.write_config_with_broker(&sqlite, &keys.prefix, "[retry]\nbackoff_base = \"100ms\"\n");
    let (_d, api) = s.serve(&[]);

    let ok = api.enqueue_ok(noop()).await;
    api.wait_state(&ok, "succeeded").await;

    let fail = api
        .enqueue_ok(json!({"kind": "sys.fail", "payload": {"times": 99}, "max_retries": 2}))
        .await;
    let dead = api.wait_state(&fail, "dead").await;
    assert_eq!(dead["attempt"], 3, "{dead:#}");
    assert_eq!(events(&dead, "job.started").len(), 3, "{dead:#}");
    assert_eq!(events(&dead, "job.retrying").len(), 2, "{dead:#}");
    assert_eq!(events(&dead, "job.dead").len(), 1, "{dead:#}");
    let listed = s.cli_jobs(&["--state", "dead"]);
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["id"], fail.as_str());

    let out = s.cli_ok(&["retry", &fail]);
    assert!(out.contains("1 job retried"), "{out}");
    // Queued again (the worker takes it at once), with a fresh set of retries: three more
    // runs, then dead again.
    let again = api
        .wait_job(&fail, |j| {
            j["state"] == "dead" && events(j, "job.started").len() == 6
        })
        .await;
    let history: Vec<&str> = again["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    let first_dead = history.iter().position(|t| *t == "job.dead").unwrap();
    assert_eq!(
        history.get(first_dead + 1),
        Some(&"job.enqueued"),
        "the retry was not recorded as queued: {history:?}"
    );
    assert_eq!(again["attempt"], 3, "{again:#}");

    let counts = s.cli_counts("default");
    assert_eq!(counts["succeeded"], 1, "{counts}");
    assert_eq!(counts["dead"], 1, "{counts}");
    assert_eq!(counts["queued"], 0, "{counts}");
    assert_eq!(api.counts("default").await, counts);

    // It all went to Redis under the prefix; the SQLite file of the config was never made.
    assert!(!s.path().join("hopper.db").exists(), "SQLite was used");
    // `default`, and the maintenance queue once the retention job ran (at the first whole
    // minute since the start: a first start does not run a tick from before it).
    let queues = keys.members("queues");
    assert!(
        queues == ["default"] || queues == ["default", "hopper.maintenance"],
        "{queues:?}"
    );
}

/// `rediss://`: a `redis-server` of the test's own speaking only TLS, with a self-signed
/// certificate the daemon is told to trust through `SSL_CERT_FILE`; a job runs through it.
/// Without that trust the connection is refused: the certificate is really checked.
#[tokio::test]
async fn tls_broker_runs_jobs() {
    let redis = RedisServer::start_tls();

    // Not trusted: refused.
    let untrusted = Scratch::new().with_env("SSL_CERT_FILE", "/nonexistent.pem");
    untrusted.write_config_with_broker(&redis.url(), "tls", "");
    let out = untrusted.cli(&["queues"]);
    assert!(
        !out.status.success(),
        "an untrusted certificate was accepted"
    );

    let s = Scratch::new().with_env("SSL_CERT_FILE", redis.ca().to_str().unwrap());
    s.write_config_with_broker(&redis.url(), "tls", "");
    let (_d, api) = s.serve(&[]);
    let id = api.enqueue_ok(noop()).await;
    api.wait_state(&id, "succeeded").await;
}

/// Calls of `command` on the Redis at `port` since its stats were last reset.
fn command_calls(port: u16, command: &str) -> u64 {
    let out = redis_cli(port, &["INFO", "commandstats"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("cmdstat_{command}:calls="))?
                .split(',')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// An API node follows the event log of every queue. With hundreds of queues (their names
/// come from clients) and nothing happening, that must not keep Redis busy: it waited 20 ms
/// at a time and read every queue's stream after each wait (4,000 idle queues cost Redis
/// ~90,000 `XRANGE`s a second); it waits on the streams, woken by any new entry, for seconds.
#[tokio::test]
async fn an_idle_api_node_leaves_a_redis_of_many_queues_alone() {
    const QUEUES: u64 = 200;
    let redis = RedisServer::start();
    let s = Scratch::new();
    s.write_config_with_broker(&redis.url(), &unique_prefix(), "");
    let (_d, api) = s.serve(&["--no-workers"]);
    let queues: Vec<String> = (0..QUEUES).map(|i| format!("q{i}")).collect();
    api.one_job_per_queue(&queues).await;
    // Time for the node to read them, then an idle stretch measured from a clean count.
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis_cli(redis.port(), &["CONFIG", "RESETSTAT"]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let xrange = command_calls(redis.port(), "xrange");
    // Every queue's stream read once per wait of the hub and of the bus relay, each waiting
    // seconds: a few times in 4 s (20 ms waits read them 200 times).
    assert!(
        xrange <= 10 * QUEUES,
        "{xrange} XRANGEs in 4 s of an idle node over {QUEUES} queues"
    );
}

/// `hopper tail --job` started while the broker is down waits for it, saying so on stderr, and
/// once Redis is back follows the job to its end: exit 0 for a job that succeeds, never the 1
/// that means "dead" (which a broker that is not answering used to give).
#[tokio::test(flavor = "multi_thread")]
async fn tail_job_waits_for_a_broker_that_is_down_at_its_start() {
    let mut redis = RedisServer::start();
    let s = Scratch::new();
    s.write_config_with_broker(&redis.url(), &unique_prefix(), "");
    let id = s.cli_ok(&["enqueue", "sys.noop"]).trim().to_owned();
    // AOF with an fsync at SHUTDOWN: the job is there when Redis comes back.
    tokio::task::block_in_place(|| redis.shutdown());

    let mut tail = Follow::start(&s, &["tail", "--job", &id]);
    tokio::task::block_in_place(|| tail.wait_stderr("waiting for it"));
    tokio::task::block_in_place(|| redis.launch());
    let mut worker = s.start(&["worker"]);
    let (status, lines) = tokio::task::block_in_place(|| tail.wait_exit());
    let stderr = tail.stderr();
    assert_eq!(status.code(), Some(0), "{lines:?}\n{stderr}");
    assert!(stderr.contains("the broker answers again"), "{stderr}");
    assert!(
        lines.iter().any(|l| l.contains("job.succeeded")),
        "{lines:?}\n{stderr}"
    );
    worker.assert_running();
}

/// A node started while its Redis is down (at boot, a Redis restarted in a rolling deploy)
/// waits for it, saying so, and starts once it answers: it exited 1 at once, and under the
/// systemd units (`StartLimitBurst=5` in 120 s) a Redis down for ten seconds stopped it for
/// good. The job enqueued before the outage then runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_started_while_its_redis_is_down_waits_for_it() {
    let mut redis = RedisServer::start();
    let s = Scratch::new();
    s.write_config_with_broker(&redis.url(), &unique_prefix(), "");
    let id = s.cli_ok(&["enqueue", "sys.noop"]).trim().to_owned();
    // AOF with an fsync at SHUTDOWN: the job is there when Redis comes back.
    tokio::task::block_in_place(|| redis.shutdown());
    let mut worker = s.start(&["worker"]);
    tokio::task::block_in_place(|| worker.wait_log("waiting for the broker"));
    worker.assert_running();
    // A second node asked to stop while it waits exits 0, a stop and not a failure.
    let mut stopped = s.start(&["worker"]);
    tokio::task::block_in_place(|| stopped.wait_log("waiting for the broker"));
    let status = tokio::task::block_in_place(|| stopped.stop("TERM"));
    assert_eq!(status.code(), Some(0), "{}", stopped.log_text());
    tokio::task::block_in_place(|| redis.launch());
    tokio::task::block_in_place(|| worker.wait_log("the broker answers; starting"));
    tokio::task::block_in_place(|| {
        wait::until_blocking("the job never ran", || {
            let out = s.cli_ok(&["job", &id, "--json"]);
            if out.contains("\"succeeded\"") {
                Ok(())
            } else {
                Err(out)
            }
        });
    });
    worker.assert_running();
}

/// While a server started with its Redis down waits for it, its port answers: the API a
/// 503 `starting` with `Retry-After` (a client, or a load balancer's probe, hung on a bound
/// port that answered nothing), the liveness probe 200; once Redis answers, the API takes the
/// port over.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_waiting_for_its_redis_answers_503_meanwhile() {
    let mut redis = RedisServer::start();
    let s = Scratch::new();
    s.write_config_with_broker(&redis.url(), &unique_prefix(), "");
    tokio::task::block_in_place(|| redis.shutdown());
    let port = crate::util::redis::free_port();
    let mut server = s.start(&["serve", "--listen", &format!("127.0.0.1:{port}")]);
    tokio::task::block_in_place(|| server.wait_log("answering 503"));
    let api = Api::new(format!("http://127.0.0.1:{port}"));
    let (status, body) = api
        .call(reqwest::Method::POST, "/v1/jobs", Some(&noop()))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "starting", "{body}");
    let ready = api
        .http
        .get(format!("{}/readyz", api.base))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status().as_u16(), 503);
    assert!(ready.headers().contains_key("retry-after"));
    let (status, _) = api.call(reqwest::Method::GET, "/healthz", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        ready.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "each answer closes its connection"
    );
    // A peer that sent half a request and holds its connection does not keep the API from
    // taking the port over.
    let mut half = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    std::io::Write::write_all(&mut half, b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\n")
        .expect("half a request");

    tokio::task::block_in_place(|| redis.launch());
    tokio::task::block_in_place(|| server.wait_log("listening on"));
    let (status, body) = api
        .call(reqwest::Method::POST, "/v1/jobs", Some(&noop()))
        .await;
    assert_eq!(status, 201, "{body}");
    server.assert_running();
    drop(half);
}

/// A Redis that refuses the password is a setting that cannot work, not a broker that is
/// down: `tail` (which waits for a broker that is down) and `jobs` exit 2 at once, naming the
/// refusal and never the password.
#[test]
fn a_refused_password_exits_2_at_once() {
    /// Kills the server however the test ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let port = crate::util::redis::free_port();
    let _server = Killed(
        std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                "right-pw",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server"),
    );
    wait::until_blocking("the private redis-server never answered", || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .map(drop)
            .map_err(|e| e.to_string())
    });
    let s = Scratch::new();
    s.write_config_with_broker(
        &format!("redis://:wrong-pw-42@127.0.0.1:{port}/0"),
        &unique_prefix(),
        "",
    );
    for args in [&["tail"][..], &["tail", "--job", "x"], &["jobs"]] {
        let out = s.cli_within(args, Duration::from_secs(30));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("AuthenticationFailed"), "{args:?}: {err}");
        assert!(!err.contains("wrong-pw-42"), "{args:?}: {err}");
    }
}
