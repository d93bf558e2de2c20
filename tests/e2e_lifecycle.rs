//! Priorities, delays, retries with backoff, the dead set and retrying it: through the real
//! daemon over HTTP, on a real SQLite file.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{Value, json};

use crate::util::{Api, Scratch, events, ms, step_ids};

const T: Duration = Duration::from_secs(20);

/// With one slot, 20 jobs of priority 9 enqueued before 20 of priority 0 all start after the
/// priority-0 ones, except the one already running when the urgent ones arrived.
#[tokio::test]
async fn strict_priority_with_one_slot() {
    let s = Scratch::new();
    s.write_config("[worker]\nconcurrency = 1\n");
    let d = s.start(&["serve"]);
    let api = Api::new(d.wait_addr());

    let mut low = Vec::new();
    for _ in 0..20 {
        low.push(
            api.enqueue_ok(json!({"kind": "sys.sleep", "payload": {"ms": 10}, "priority": 9}))
                .await,
        );
    }
    let mut high = Vec::new();
    for _ in 0..20 {
        high.push(
            api.enqueue_ok(json!({"kind": "sys.sleep", "payload": {"ms": 10}, "priority": 0}))
                .await,
        );
    }
    let mut started = Vec::new();
    for id in low.iter().chain(&high) {
        let job = api.wait_state(id, "succeeded", T).await;
        started.push((
            ms(&job["started_at"]),
            job["priority"].as_u64().unwrap(),
            id.clone(),
        ));
    }
    started.sort();
    let order: Vec<u64> = started.iter().map(|(_, p, _)| *p).collect();
    // Some low-priority jobs may have run before the urgent ones were enqueued; after the
    // first urgent one starts, at most one low one (the one already running) may follow it
    // before all urgent ones are done.
    let first_high = order.iter().position(|p| *p == 0).unwrap();
    let last_high = order.iter().rposition(|p| *p == 0).unwrap();
    let lows_between = order[first_high..=last_high]
        .iter()
        .filter(|p| **p == 9)
        .count();
    assert_eq!(lows_between, 0, "order of priorities: {order:?}");
    assert!(first_high <= 20, "order: {order:?}");
    // The priority-0 jobs ran in FIFO order.
    let high_order: Vec<&String> = started
        .iter()
        .filter(|(_, p, _)| *p == 0)
        .map(|(_, _, id)| id)
        .collect();
    assert_eq!(high_order, high.iter().collect::<Vec<_>>());
}

/// A job with `"delay": "2s"` does not start before 2 s and starts within 2.5 s.
#[tokio::test]
async fn delayed_job_starts_on_time() {
    let s = Scratch::new();
    s.write_config("");
    let d = s.start(&["serve"]);
    let api = Api::new(d.wait_addr());
    let (status, job) = api
        .enqueue(json!({"kind": "sys.noop", "payload": {}, "delay": "2s"}))
        .await;
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["state"], "scheduled");
    let id = job["id"].as_str().unwrap();
    let done = api.wait_state(id, "succeeded", T).await;
    let waited = ms(&done["started_at"]) - ms(&done["created_at"]);
    assert!(
        (2000..=2500).contains(&waited),
        "started {waited} ms after enqueue"
    );
}

/// `sys.fail {"times": 2}` with `max_retries: 3` succeeds on attempt 3, and each wait between
/// attempts is within the backoff policy's bound (full jitter: 0..=base*2^(n-1)).
#[tokio::test]
async fn retries_follow_backoff_then_succeed() {
    let s = Scratch::new();
    s.write_config("[retry]\nbackoff_base = \"200ms\"\nbackoff_max = \"10s\"\n");
    let d = s.start(&["serve"]);
    let api = Api::new(d.wait_addr());
    let id = api
        .enqueue_ok(json!({"kind": "sys.fail", "payload": {"times": 2}, "max_retries": 3}))
        .await;
    let job = api.wait_state(&id, "succeeded", T).await;
    assert_eq!(job["attempt"], 3, "{job:#}");
    let retrying = events(&job, "job.retrying");
    let started = events(&job, "job.started");
    assert_eq!(retrying.len(), 2, "{job:#}");
    assert_eq!(started.len(), 3, "{job:#}");
    for (n, (r, next)) in retrying.iter().zip(&started[1..]).enumerate() {
        let wait = ms(&next["at"]) - ms(&r["at"]);
        let bound = 200 * (1 << n); // attempt n+1 failed: bound = base * 2^n
        // The pool fetches within ~100 ms of the due time (SQLite's cross-process fallback poll).
        assert!(
            wait >= 0 && wait <= bound + 250,
            "wait {n} was {wait} ms, bound {bound} ms"
        );
    }
}

/// `sys.fail {"times": 99}` with `max_retries: 2` runs exactly 3 times and lands in `dead` with
/// the last error; `hopper retry ID` puts it back in `queued`; `--all-dead` counts.
#[tokio::test]
async fn exhausted_retries_go_dead_and_retry_revives() {
    let s = Scratch::new();
    s.write_config("[retry]\nbackoff_base = \"10ms\"\n");
    let d = s.start(&["serve", "--no-workers"]);
    let api = Api::new(d.wait_addr());
    let id = api
        .enqueue_ok(json!({"kind": "sys.fail", "payload": {"times": 99}, "max_retries": 2}))
        .await;
    let other = api
        .enqueue_ok(json!({"kind": "sys.fail", "payload": {"permanent": true}}))
        .await;
    // Run the jobs with a separate worker process, the way a worker node would.
    let mut w = s.start(&["worker"]);
    let job = api.wait_state(&id, "dead", T).await;
    assert_eq!(job["attempt"], 3, "{job:#}");
    assert_eq!(events(&job, "job.started").len(), 3);
    assert!(
        job["last_error"].as_str().unwrap().contains("attempt 3"),
        "{job:#}"
    );
    // A permanent failure spends no retries.
    let perm = api.wait_state(&other, "dead", T).await;
    assert_eq!(perm["attempt"], 1, "{perm:#}");
    w.signal("TERM");
    w.wait_exit(Duration::from_secs(10));

    let out = s.cli_ok(&["retry", &id]);
    assert!(out.contains('1'), "{out}");
    assert_eq!(api.job(&id).await["state"], "queued");

    let out = s.cli_ok(&["retry", "--all-dead"]);
    assert_eq!(
        out.split_whitespace().find_map(|w| w.parse::<u64>().ok()),
        Some(1),
        "{out}"
    );
    assert_eq!(api.job(&other).await["state"], "queued");
    let dead: Value = s.cli_json(&["jobs", "--state", "dead"]);
    assert_eq!(
        dead.as_array()
            .map(Vec::len)
            .unwrap_or_else(|| dead["jobs"].as_array().unwrap().len()),
        0
    );
}

/// A chain through the daemon: each step runs after the one before it, receiving its result
/// as `input`; cancelling a step cancels the rest with a reason; retrying it resumes the chain.
#[tokio::test]
async fn chain_runs_in_order_and_resumes_after_retry() {
    let s = Scratch::new();
    s.write_config("");
    let d = s.start(&["serve"]);
    let api = Api::new(d.wait_addr());
    let (status, first) = api
        .enqueue(json!({
            "kind": "sys.sleep", "payload": {"ms": 400},
            "then": [{"kind": "sys.sleep", "payload": {"ms": 1}}, {"kind": "sys.noop"}]
        }))
        .await;
    assert_eq!(status, 201, "{first}");
    let ids = step_ids(&first);
    assert_eq!(ids.len(), 3);

    api.wait_state(&ids[0], "running", T).await;
    let (st, _) = api.post(&format!("/v1/jobs/{}/cancel", ids[0])).await;
    assert_eq!(st, 200);
    for id in &ids[1..] {
        let rest = api.wait_state(id, "cancelled", T).await;
        assert!(
            rest["last_error"].as_str().unwrap().contains("chain"),
            "{rest:#}"
        );
    }

    s.cli_ok(&["retry", &ids[0]]);
    let last = api.wait_state(&ids[2], "succeeded", T).await;
    let second = api.job(&ids[1]).await;
    assert_eq!(
        second["payload"]["input"],
        json!({"slept_ms": 400}),
        "{second:#}"
    );
    assert_eq!(last["payload"]["input"], json!({"slept_ms": 1}), "{last:#}");
    assert!(ms(&second["started_at"]) >= ms(&api.job(&ids[0]).await["finished_at"]));
    let shown = s.cli_ok(&["job", &ids[2]]);
    assert!(shown.contains("chain:"), "{shown}");
}

/// Two processes on one broker with an every-second schedule enqueue one job per tick
/// between them (5 in 5 s, give or take the tick at each edge), not one per process.
#[tokio::test]
async fn schedule_fires_once_per_tick_across_processes() {
    let s = Scratch::new();
    s.write_config("[[schedule]]\nname = \"tick\"\ncron = \"* * * * * *\"\nkind = \"sys.noop\"\n");
    let mut a = s.start(&["worker"]);
    let mut b = s.start(&["worker"]);
    a.wait_log("scheduler started", T);
    b.wait_log("scheduler started", T);
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let from = now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let to = now();
    a.signal("TERM");
    b.signal("TERM");
    a.wait_exit(T);
    b.wait_exit(T);
    let jobs = s.cli_json(&["jobs", "--kind", "sys.noop", "--limit", "1000"]);
    let jobs = jobs
        .as_array()
        .unwrap_or_else(|| jobs["jobs"].as_array().unwrap());
    let mut ticks: Vec<i64> = jobs
        .iter()
        .map(|j| {
            let key = j["unique_key"].as_str().unwrap();
            key.rsplit(':').next().unwrap().parse().unwrap()
        })
        .collect();
    let all = ticks.len();
    ticks.sort_unstable();
    ticks.dedup();
    assert_eq!(ticks.len(), all, "one job per tick, whatever the processes");
    let inside = ticks.iter().filter(|t| (from..=to).contains(*t)).count();
    assert!(
        (4..=6).contains(&inside),
        "{inside} ticks enqueued in 5 s: {ticks:?}"
    );
}

/// Retention runs as a `cleanup.purge {"records": true}` job on the maintenance queue: a
/// succeeded job past `[retention] succeeded` is deleted, history and all.
#[tokio::test]
async fn retention_job_purges_old_jobs() {
    let s = Scratch::new();
    s.write_config("[retention]\nsucceeded = \"1s\"\ncron = \"* * * * * *\"\n");
    let d = s.start(&["serve"]);
    let api = Api::new(d.wait_addr());
    let id = api
        .enqueue_ok(json!({"kind": "sys.noop", "payload": {}}))
        .await;
    api.wait_state(&id, "succeeded", T).await;
    let deadline = std::time::Instant::now() + T;
    loop {
        let r = api
            .http
            .get(format!("{}/v1/jobs/{id}", api.base))
            .send()
            .await
            .unwrap();
        if r.status().as_u16() == 404 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never purged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let purges = s.cli_json(&[
        "jobs",
        "--queue",
        "hopper.maintenance",
        "--state",
        "succeeded",
    ]);
    let purges = purges
        .as_array()
        .unwrap_or_else(|| purges["jobs"].as_array().unwrap());
    assert!(
        purges
            .iter()
            .any(|j| j["kind"] == "cleanup.purge"
                && j["result"]["succeeded_purged"].as_u64() >= Some(1)),
        "{purges:#?}"
    );
}
