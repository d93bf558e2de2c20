//! The Redis broker end to end (Hopper issue 3): several nodes on one Redis with a worker
//! killed and another frozen past its lease, a Redis restart under load, and the README tour
//! with `HOPPER_BROKER`.
//!
//! The shared Redis is the one CI starts on 127.0.0.1:6379 (db 0); a test that cannot reach it
//! fails saying so. Every test there uses its own key prefix and deletes its keys when it
//! ends, passed or failed ([`RedisKeys`]). The restart test runs a `redis-server` of its own
//! ([`RedisServer`]). Redis is driven with `redis-cli`, as an operator would.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use serde_json::{Value, json};

use crate::util::{Api, Daemon, Scratch, events, ms};

const T: Duration = Duration::from_secs(30);
/// The shared Redis of CI.
const REDIS_PORT: u16 = 6379;
const REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// The two load tests take this, so they do not compete for the CPU with each other: on a
/// small machine that alone could stretch a heartbeat past a 2 s lease.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Wall-clock milliseconds since the epoch: the clock the daemons stamp events with.
fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// Runs `redis-cli` against db 0 of the Redis on `port`.
fn redis_cli(port: u16, args: &[&str]) -> Output {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-n", "0"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli (is it installed?): {e}"))
}

fn pong(port: u16) -> bool {
    let out = redis_cli(port, &["PING"]);
    out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "PONG"
}

/// Fails the test at once, saying why, when the shared Redis does not answer.
fn require_redis() {
    let out = redis_cli(REDIS_PORT, &["PING"]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "PONG",
        "these tests need a Redis on 127.0.0.1:{REDIS_PORT} (CI starts one; locally run \
         `redis-server`), but PING answered: {} {}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A key prefix no other test (or earlier run) uses.
fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "t-{}-{:x}-{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A unique key prefix on the shared Redis; every key containing it is deleted on drop, so a
/// failed test leaves nothing behind either. Keys look like `{<prefix>:<queue>}:...`,
/// `<prefix>:queues` and `<prefix>:jobq`.
struct RedisKeys {
    prefix: String,
}

impl RedisKeys {
    fn claim() -> Self {
        require_redis();
        Self {
            prefix: unique_prefix(),
        }
    }

    fn list(&self) -> Vec<String> {
        let pattern = format!("*{}*", self.prefix);
        let out = redis_cli(REDIS_PORT, &["--scan", "--pattern", &pattern]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        let keys = self.list();
        for chunk in keys.chunks(500) {
            let mut args = vec!["DEL"];
            args.extend(chunk.iter().map(String::as_str));
            let _ = redis_cli(REDIS_PORT, &args);
        }
        let left = self.list();
        if !left.is_empty() && !std::thread::panicking() {
            panic!(
                "keys of prefix {} left after cleanup: {left:?}",
                self.prefix
            );
        }
    }
}

/// A `redis-server` of a test's own on a free loopback port, with AOF on in a temporary
/// directory. Killed when dropped.
struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    fn start() -> Self {
        // Binding port 0 and dropping the listener leaves a port the kernel just handed out.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        server.launch();
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Starts the server on its port and directory and waits until it answers PING.
    fn launch(&mut self) {
        assert!(self.child.is_none(), "redis-server already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server (is it installed?): {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pong(self.port) {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} never answered; its log:\n{}",
                self.port,
                std::fs::read_to_string(self.log()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `SHUTDOWN` (which, with AOF on, fsyncs the AOF first) and waits for the process to end.
    fn shutdown(&mut self) {
        let _ = redis_cli(self.port, &["SHUTDOWN"]);
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not exit after SHUTDOWN"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- redis-server log ----\n{}\n----",
                std::fs::read_to_string(self.log()).unwrap_or_default()
            );
        }
    }
}

/// GET `path` with `query`, expecting 200 and JSON.
async fn get_json(api: &Api, path: &str, query: &[(&str, &str)]) -> Value {
    let r = api
        .http
        .get(format!("{}{path}", api.base))
        .query(query)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "GET {path} {query:?}: {body}");
    body
}

/// The state counts of the `default` queue from `GET /v1/queues` (zeros before it exists).
async fn default_counts(api: &Api) -> Value {
    let q = get_json(api, "/v1/queues", &[]).await;
    q["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "default")
        .map(|q| q["counts"].clone())
        .unwrap_or(json!({}))
}

fn count(counts: &Value, state: &str) -> u64 {
    counts[state].as_u64().unwrap_or(0)
}

/// Every job of the `default` queue in `state`, through every page of `GET /v1/jobs`.
async fn all_jobs(api: &Api, state: &str) -> Vec<Value> {
    let mut jobs = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = vec![("queue", "default"), ("state", state), ("limit", "1000")];
        if let Some(c) = &cursor {
            query.push(("cursor", c));
        }
        let page = get_json(api, "/v1/jobs", &query).await;
        jobs.extend(page["jobs"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return jobs,
        }
    }
}

/// Waits until `lease_ms` after `since` has passed and no running job holds an expired lease
/// any more: every lease a frozen or dead worker held has been rescued. Returns when.
async fn wait_expired_leases_rescued(api: &Api, since: i64, lease_ms: i64) -> i64 {
    tokio::time::sleep(Duration::from_millis(
        u64::try_from(since + lease_ms - now_ms()).unwrap_or(0),
    ))
    .await;
    let deadline = Instant::now() + T;
    loop {
        let now = now_ms();
        let stale: Vec<Value> = all_jobs(api, "running")
            .await
            .into_iter()
            .filter(|j| j["lease_until"].is_null() || ms(&j["lease_until"]) < now)
            .collect();
        if stale.is_empty() {
            return now_ms();
        }
        assert!(
            Instant::now() < deadline,
            "expired leases were never rescued: {stale:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The ids in a daemon's log lines containing `needle` (the `job=` field).
fn logged_jobs(d: &Daemon, needle: &str) -> Vec<String> {
    d.log_text()
        .lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| {
            let rest = l.split(" job=").nth(1)?;
            Some(rest.split_whitespace().next()?.to_owned())
        })
        .collect()
}

const REFUSED: &str = "completion refused: stale lease token";
const LOST: &str = "lease lost: stopped its handler";

/// One `serve --no-workers` takes 5,000 `sys.sleep` jobs of 1-20 ms over HTTP, then three
/// `worker`s on the same Redis (lease 2 s, heartbeat 500 ms) run them. Midway one worker is
/// killed with SIGKILL and, once its jobs are rescued, another is frozen with SIGSTOP for 4 s
/// (twice its lease) while it holds jobs, then resumed.
///
/// Afterwards every job succeeded on its first attempt; the only jobs started more than once
/// are those interrupted, with one extra start per interruption; and every job interrupted
/// while the worker was frozen had a write of its stale attempt refused by the lease token:
/// its late completion ("completion refused: stale lease token"), or, when the resumed
/// worker's heartbeat got there first, the heartbeat ("lease lost: stopped its handler"),
/// which stops the handler before it completes. Which of the two wins is a race inside the
/// resumed process (both are logged when the handler finished just as the heartbeat found the
/// lease lost), so the test counts both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_survive_a_kill_and_a_freeze() {
    const JOBS: usize = 5000;
    const ENQUEUERS: usize = 8;
    const CONCURRENCY: u64 = 16;
    const LEASE_MS: i64 = 2000;
    let _heavy = HEAVY.lock().await;
    let keys = RedisKeys::claim();
    let started = Instant::now();
    let s = Scratch::new();
    s.write_config_with_broker(
        REDIS_URL,
        &keys.prefix,
        &format!("[worker]\nlease = \"2s\"\nheartbeat = \"500ms\"\nconcurrency = {CONCURRENCY}\n"),
    );
    let api_d = s.start(&["serve", "--no-workers"]);
    let api = Arc::new(Api::new(api_d.wait_addr()));

    // The whole backlog first, so the workers hold jobs whenever they are hit, however fast
    // this machine enqueues compared to how fast they run.
    let enqueuers: Vec<_> = (0..ENQUEUERS)
        .map(|t| {
            let api = api.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in (t..JOBS).step_by(ENQUEUERS) {
                    let body = json!({"kind": "sys.sleep", "payload": {"ms": 1 + i % 20}});
                    ids.push(api.enqueue_ok(body).await);
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
    let enqueued = started.elapsed();

    let mut workers: Vec<Daemon> = (0..3).map(|_| s.start(&["worker"])).collect();
    for w in &workers {
        w.wait_log("worker started", T);
    }
    // A tenth of the jobs done, and more jobs running than two workers have slots: all three
    // are busy (the one about to be killed included), most of the backlog still queued.
    let deadline = Instant::now() + T;
    loop {
        let c = default_counts(&api).await;
        if count(&c, "succeeded") >= JOBS as u64 / 10 && count(&c, "running") > 2 * CONCURRENCY {
            break;
        }
        assert!(Instant::now() < deadline, "stuck before midway: {c}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let midway = started.elapsed();
    let killed_at = now_ms();
    workers[0].signal("KILL");
    workers[0].wait_exit(Duration::from_secs(5));
    let kill_rescued_at = wait_expired_leases_rescued(&api, killed_at, LEASE_MS).await;

    // Freeze workers[1] while it surely holds jobs: with more jobs running than the other
    // live worker has slots, some are its own.
    let deadline = Instant::now() + T;
    loop {
        let c = default_counts(&api).await;
        if count(&c, "running") > CONCURRENCY {
            break;
        }
        assert!(
            Instant::now() < deadline && count(&c, "queued") > 0,
            "cannot freeze a worker holding jobs: {c}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stopped_at = now_ms();
    workers[1].signal("STOP");
    let stop_rescued_at = wait_expired_leases_rescued(&api, stopped_at, LEASE_MS).await;
    tokio::time::sleep(Duration::from_millis(
        u64::try_from(stopped_at + 2 * LEASE_MS - now_ms()).unwrap_or(0),
    ))
    .await;
    let resumed_at = now_ms();
    workers[1].signal("CONT");

    let deadline = Instant::now() + T;
    loop {
        let c = default_counts(&api).await;
        if count(&c, "succeeded") == JOBS as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "not all jobs succeeded: {c}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained_at = now_ms();
    let drained = started.elapsed();

    // The CLI agrees, straight from Redis: every job succeeded, nothing else left.
    let queues = s.cli_json(&["queues"]);
    let default = queues
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "default")
        .unwrap_or_else(|| panic!("no default queue in {queues}"));
    for (state, n) in default["counts"].as_object().unwrap() {
        let want = if state == "succeeded" { JOBS as u64 } else { 0 };
        assert_eq!(n.as_u64(), Some(want), "{state} in {default}");
    }

    // The ledger: every job once, on its first attempt, plus one start per interruption.
    let succeeded = all_jobs(&api, "succeeded").await;
    let listed: BTreeSet<String> = succeeded
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        listed, ids,
        "the succeeded listing is not the jobs enqueued"
    );
    let listed_at = started.elapsed();
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
    let checked = to_check.len();
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
    let histories_at = started.elapsed();
    let by_kill: BTreeSet<&String> = interrupted_at
        .iter()
        .filter(|(_, at)| at.iter().any(|&t| t < stopped_at))
        .map(|(id, _)| id)
        .collect();
    let by_stop: BTreeSet<String> = interrupted_at
        .iter()
        .filter(|(_, at)| at.iter().any(|&t| t >= stopped_at))
        .map(|(id, _)| id.clone())
        .collect();
    assert!(!by_kill.is_empty(), "the killed worker held no job");
    assert!(!by_stop.is_empty(), "the frozen worker held no job");
    let recovered_after_kill = interrupted_at
        .values()
        .flatten()
        .filter(|&&t| t < stopped_at)
        .map(|t| t - killed_at)
        .max()
        .unwrap();

    // The stale writes: each job interrupted while the worker was frozen had its completion
    // or its heartbeat refused by the lease token, in that worker's log (or, should the live
    // worker have been starved past its own lease, in that one's), and no other job did.
    // Log lines may trail the last success a little.
    let (frozen, live) = (&workers[1], &workers[2]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (refused, stopped, live_lost) = loop {
        let refused: BTreeSet<String> = logged_jobs(frozen, REFUSED).into_iter().collect();
        let stopped: BTreeSet<String> = logged_jobs(frozen, LOST).into_iter().collect();
        let live_lost: BTreeSet<String> = logged_jobs(live, REFUSED)
            .into_iter()
            .chain(logged_jobs(live, LOST))
            .collect();
        let seen: BTreeSet<String> = refused
            .iter()
            .chain(&stopped)
            .chain(&live_lost)
            .cloned()
            .collect();
        if seen == by_stop || Instant::now() >= deadline {
            assert_eq!(
                seen, by_stop,
                "jobs with a write refused by the lease token vs jobs interrupted while a \
                 worker was frozen"
            );
            break (refused, stopped, live_lost);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        !refused.is_empty() || !stopped.is_empty(),
        "the frozen worker had no write refused"
    );
    assert_eq!(
        logged_jobs(frozen, REFUSED).len(),
        refused.len(),
        "a completion was refused twice"
    );

    eprintln!(
        "multi-node: {JOBS} jobs; all enqueued at {enqueued:?}, SIGKILL at {midway:?}, all \
         succeeded at {drained:?} ({} ms after SIGKILL), listed at {listed_at:?}, histories \
         read at {histories_at:?}, done at {:?}; killed worker: {} \
         jobs interrupted, all rescued {} ms after SIGKILL (latest interruption {} ms); frozen \
         worker: {} jobs interrupted, rescued {} ms after SIGSTOP, resumed after {} ms, {} late \
         completions refused by lease token, {} heartbeats found the lease lost; live worker \
         lost {} leases; {} histories checked",
        drained_at - killed_at,
        started.elapsed(),
        by_kill.len(),
        kill_rescued_at - killed_at,
        recovered_after_kill,
        by_stop.len(),
        stop_rescued_at - stopped_at,
        resumed_at - stopped_at,
        refused.len(),
        stopped.len(),
        live_lost.len(),
        checked,
    );
}

/// A Redis of its own (AOF, fsync every second) is shut down while jobs are being enqueued
/// every 50 ms, and started again 2 s later on the same directory. Enqueues during the outage
/// may fail; every one that was acknowledged (201) reaches `succeeded`, and the same `serve`
/// process, never restarted, reconnects by itself and runs the jobs enqueued afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restart_loses_no_acknowledged_job() {
    let _heavy = HEAVY.lock().await;
    let mut redis = RedisServer::start();
    let s = Scratch::new();
    s.write_config_with_broker(&redis.url(), &unique_prefix(), "");
    let mut d = s.start(&["serve"]);
    let api = Arc::new(Api::new(d.wait_addr()));

    // Enqueue every 50 ms, each request on its own task so a slow answer during the outage
    // does not hold back the next ones.
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (api, stop) = (api.clone(), stop.clone());
        tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let body = if n.is_multiple_of(2) {
                    json!({"kind": "sys.noop", "payload": {}})
                } else {
                    json!({"kind": "sys.sleep", "payload": {"ms": 50}})
                };
                n += 1;
                let api = api.clone();
                let at = now_ms();
                sent.push((
                    at,
                    tokio::spawn(async move {
                        let sent = Instant::now();
                        let r = api
                            .http
                            .post(format!("{}/v1/jobs", api.base))
                            .json(&body)
                            .timeout(Duration::from_secs(40))
                            .send()
                            .await;
                        let (status, id) = match r {
                            Ok(r) => {
                                let status = r.status().as_u16();
                                let job: Value = r.json().await.unwrap_or(Value::Null);
                                (status, job["id"].as_str().map(str::to_owned))
                            }
                            Err(_) => (0, None),
                        };
                        (status, id, sent.elapsed())
                    }),
                ));
            }
            sent
        })
    };

    tokio::time::sleep(Duration::from_secs(1)).await;
    let down_at = now_ms();
    tokio::task::block_in_place(|| redis.shutdown());
    let stopped_at = now_ms();
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| redis.launch());
    let up_at = now_ms();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);

    let mut acked = Vec::new();
    let mut refused: BTreeMap<u16, usize> = BTreeMap::new();
    let mut slowest = Duration::ZERO;
    for (at, req) in ticker.await.unwrap() {
        let (status, id, took) = req.await.unwrap();
        slowest = slowest.max(took);
        match (status, id) {
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

    let mut first_after: Option<i64> = None;
    for (at, id) in &acked {
        let job = api.wait_state(id, "succeeded", T).await;
        if *at >= stopped_at {
            let finished = ms(&job["finished_at"]);
            first_after = Some(first_after.map_or(finished, |f| f.min(finished)));
        }
    }
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "hopper exited during the outage:\n{}",
        d.log_text()
    );
    let log = d.log_text();
    let said = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    eprintln!(
        "redis restart: down {} ms (SHUTDOWN took {} ms); {} enqueues acknowledged ({} after \
         the restart), refused by status {refused:?}, slowest answer {slowest:?}; first job \
         enqueued while Redis was down succeeded {} ms after Redis was back; log lines: \
         {} \"unreachable\", {} \"reachable again\", {} warnings",
        up_at - down_at,
        stopped_at - down_at,
        acked.len(),
        after,
        first_after.map_or(-1, |f| f - up_at),
        said("Redis is unreachable"),
        said("Redis is reachable again"),
        said(" WARN "),
    );
    for l in log.lines().filter(|l| l.contains(" WARN ")) {
        eprintln!("  {l}");
    }
}

/// The README tour with `HOPPER_BROKER=redis://127.0.0.1:6379/0` overriding the config's
/// SQLite URL (the config sets only the key prefix that matters): a `sys.noop` succeeds; a
/// `sys.fail {"times": 99}` with `max_retries: 2` is dead after 3 runs; `hopper retry ID`
/// queues it with a fresh set of retries; `hopper queues --json` shows the counts. Everything
/// lives in Redis under the prefix, nothing in SQLite.
#[tokio::test]
async fn readme_tour_on_redis() {
    let keys = RedisKeys::claim();
    let s = Scratch::new().with_env("HOPPER_BROKER", REDIS_URL);
    let sqlite = s.broker_url();
    s.write_config_with_broker(&sqlite, &keys.prefix, "[retry]\nbackoff_base = \"100ms\"\n");
    let d = s.start(&["serve"]);
    let api = Api::new(d.wait_addr());

    let noop = api
        .enqueue_ok(json!({"kind": "sys.noop", "payload": {}}))
        .await;
    api.wait_state(&noop, "succeeded", T).await;

    let fail = api
        .enqueue_ok(json!({"kind": "sys.fail", "payload": {"times": 99}, "max_retries": 2}))
        .await;
    let dead = api.wait_state(&fail, "dead", T).await;
    assert_eq!(dead["attempt"], 3, "{dead:#}");
    assert_eq!(events(&dead, "job.started").len(), 3, "{dead:#}");
    assert_eq!(events(&dead, "job.retrying").len(), 2, "{dead:#}");
    assert_eq!(events(&dead, "job.dead").len(), 1, "{dead:#}");
    let listed = s.cli_json(&["jobs", "--state", "dead"]);
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed["jobs"][0]["id"], fail.as_str());

    let out = s.cli_ok(&["retry", &fail]);
    assert!(out.contains("1 job retried"), "{out}");
    // Queued again (the worker takes it at once), with a fresh set of retries: three more
    // runs, then dead again.
    let again = api
        .wait_job(&fail, T, |j| {
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

    let queues = s.cli_json(&["queues"]);
    let default = queues
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "default")
        .unwrap_or_else(|| panic!("no default queue in {queues}"));
    assert_eq!(default["counts"]["succeeded"], 1, "{default}");
    assert_eq!(default["counts"]["dead"], 1, "{default}");
    assert_eq!(default["counts"]["queued"], 0, "{default}");
    assert_eq!(default_counts(&api).await, default["counts"]);

    // It all went to Redis under the prefix; the SQLite file of the config was never made.
    assert!(!s.path().join("hopper.db").exists(), "SQLite was used");
    let members = redis_cli(
        REDIS_PORT,
        &["SMEMBERS", &format!("{}:queues", keys.prefix)],
    );
    let mut queues: Vec<String> = String::from_utf8_lossy(&members.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    queues.sort();
    // `default`, and the maintenance queue of the retention job.
    assert_eq!(queues, ["default", "hopper.maintenance"]);
}

/// `rediss://`: a `redis-server` of the test's own speaking only TLS, with a self-signed
/// certificate the daemon is told to trust through `SSL_CERT_FILE`; a job runs through it.
/// Without that trust the connection is refused: the certificate is really checked.
#[tokio::test]
async fn tls_broker_runs_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let (ca, cert, key) = (p("ca.pem"), p("cert.pem"), p("key.pem"));
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    // A test CA, and a server certificate for 127.0.0.1 signed by it.
    let openssl = |args: &[&str]| {
        let st = Command::new("openssl")
            .current_dir(dir.path())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("cannot run openssl to make test certificates: {e}"));
        assert!(st.success(), "openssl {args:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=hopper-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "key.pem",
        "-out",
        "server.csr",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--tls-port",
            &port.to_string(),
        ])
        .arg("--tls-cert-file")
        .arg(&cert)
        .arg("--tls-key-file")
        .arg(&key)
        .arg("--tls-ca-cert-file")
        .arg(&ca)
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
    // Killed however the test ends.
    let _server = KillOnDrop(server);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "TLS redis-server never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("rediss://127.0.0.1:{port}/0");

    // Not trusted: refused.
    let untrusted = Scratch::new().with_env("SSL_CERT_FILE", "/nonexistent.pem");
    untrusted.write_config_with_broker(&url, "tls", "");
    let out = untrusted.cli(&["queues"]);
    assert!(
        !out.status.success(),
        "an untrusted certificate was accepted"
    );

    let s = Scratch::new().with_env("SSL_CERT_FILE", ca.to_str().unwrap());
    s.write_config_with_broker(&url, "tls", "");
    let d = s.start(&["serve"]);
    let api = Api::new(d.wait_addr());
    let id = api
        .enqueue_ok(json!({"kind": "sys.noop", "payload": {}}))
        .await;
    api.wait_state(&id, "succeeded", T).await;
}

/// A child process killed when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
