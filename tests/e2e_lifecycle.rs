//! Priorities, delays, retries with backoff, the dead set and retrying it, chains, schedules
//! across processes and retention: through the real daemon over HTTP, on a real SQLite file.
//!
//! Timing is checked against what the daemon recorded (a job's `run_at`, its events' `at`),
//! never against how fast this machine happens to be.

#![allow(clippy::unwrap_used)]

use reqwest::Method;
use serde_json::json;

use crate::util::{Scratch, events, ms, noop, now_ms, step_ids, wait};

/// With one slot, 20 jobs of priority 9 enqueued before 20 of priority 0 all start after the
/// priority-0 ones, except the one already running when the urgent ones arrived.
///
/// The urgent ones arrive in one batch (`POST /v1/jobs/batch`, all or none): one at a time, a
/// loaded machine could take longer to send the next than the slot takes to run the last,
/// and the free slot would rightly take a low one in between.
#[tokio::test]
async fn strict_priority_with_one_slot() {
    let s = Scratch::with_config("[worker]\nconcurrency = 1\n");
    let (_d, api) = s.serve(&[]);

    let low = json!({"kind": "sys.sleep", "payload": {"ms": 10}, "priority": 9});
    let low = api.enqueue_n(20, &low).await;
    let high = json!({"kind": "sys.sleep", "payload": {"ms": 10}, "priority": 0});
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/jobs/batch",
            Some(&json!({ "jobs": vec![high; 20] })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let high: Vec<String> = body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["job"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(high.len(), 20, "{body:#}");
    let mut started = Vec::new();
    for id in low.iter().chain(&high) {
        let job = api.wait_state(id, "succeeded").await;
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

/// A job with `"delay": "2s"` is `scheduled`, does not start before 2 s, and then runs.
#[tokio::test]
async fn delayed_job_starts_on_time() {
    let s = Scratch::with_config("");
    let (_d, api) = s.serve(&[]);
    let (status, job) = api
        .enqueue(json!({"kind": "sys.noop", "payload": {}, "delay": "2s"}))
        .await;
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["state"], "scheduled");
    let id = job["id"].as_str().unwrap();
    let done = api.wait_state(id, "succeeded").await;
    let waited = ms(&done["started_at"]) - ms(&done["created_at"]);
    assert!(waited >= 2000, "started {waited} ms after enqueue");
    assert!(ms(&done["started_at"]) >= ms(&done["run_at"]), "{done:#}");
}

/// `sys.fail {"times": N}` with `max_retries: 3` succeeds on attempt N + 1. Each retry starts
/// no earlier than it failed; its due time (the `run_at` a job keeps) is within the backoff
/// policy's bound after its failure (full jitter: 0..=base*2^(n-1)), and it does not start
/// before it is due. One job per retry number, since a job keeps only its last due time.
#[tokio::test]
async fn retries_follow_backoff_then_succeed() {
    let s = Scratch::with_config("[retry]\nbackoff_base = \"200ms\"\nbackoff_max = \"10s\"\n");
    let (_d, api) = s.serve(&[]);
    for times in [1_usize, 2] {
        let id = api
            .enqueue_ok(json!({"kind": "sys.fail", "payload": {"times": times}, "max_retries": 3}))
            .await;
        let job = api.wait_state(&id, "succeeded").await;
        assert_eq!(job["attempt"], times + 1, "{job:#}");
        let retrying = events(&job, "job.retrying");
        let started = events(&job, "job.started");
        assert_eq!(retrying.len(), times, "{job:#}");
        assert_eq!(started.len(), times + 1, "{job:#}");
        for (n, (r, next)) in retrying.iter().zip(&started[1..]).enumerate() {
            let wait = ms(&next["at"]) - ms(&r["at"]);
            assert!(wait >= 0, "wait {n} was {wait} ms: {job:#}");
        }
        let (failed, due) = (ms(&retrying[times - 1]["at"]), ms(&job["run_at"]));
        let bound = 200 << (times - 1); // attempt `times` failed: bound = base * 2^(times-1)
        assert!(
            due - failed <= bound,
            "retry {times} was due {} ms after its failure, bound {bound} ms: {job:#}",
            due - failed
        );
        assert!(
            ms(&started[times]["at"]) >= due,
            "started before due: {job:#}"
        );
    }
}

/// `sys.fail {"times": 99}` with `max_retries: 2` runs exactly 3 times and lands in `dead` with
/// the last error; `hopper retry ID` puts it back in `queued`; `--all-dead` counts.
#[tokio::test]
async fn exhausted_retries_go_dead_and_retry_revives() {
    let s = Scratch::with_config("[retry]\nbackoff_base = \"10ms\"\n");
    let (_d, api) = s.serve(&["--no-workers"]);
    let id = api
        .enqueue_ok(json!({"kind": "sys.fail", "payload": {"times": 99}, "max_retries": 2}))
        .await;
    let other = api
        .enqueue_ok(json!({"kind": "sys.fail", "payload": {"permanent": true}}))
        .await;
    // Run the jobs with a separate worker process, the way a worker node would.
    let mut w = s.start(&["worker"]);
    let job = api.wait_state(&id, "dead").await;
    assert_eq!(job["attempt"], 3, "{job:#}");
    assert_eq!(events(&job, "job.started").len(), 3);
    assert!(
        job["last_error"].as_str().unwrap().contains("attempt 3"),
        "{job:#}"
    );
    // A permanent failure spends no retries.
    let perm = api.wait_state(&other, "dead").await;
    assert_eq!(perm["attempt"], 1, "{perm:#}");
    w.stop("TERM");

    // An id given twice is one job: retried once, no failure for the second mention.
    let out = s.cli_ok(&["retry", &id, &id]);
    assert!(out.contains("1 job retried"), "{out}");
    assert_eq!(api.job(&id).await["state"], "queued");

    let out = s.cli_ok(&["retry", "--all-dead"]);
    assert_eq!(
        out.split_whitespace().find_map(|w| w.parse::<u64>().ok()),
        Some(1),
        "{out}"
    );
    assert_eq!(api.job(&other).await["state"], "queued");
    let dead = s.cli_jobs(&["--state", "dead"]);
    assert_eq!(dead.len(), 0, "{dead:#?}");
}

/// A chain through the daemon: each step runs after the one before it, receiving its result
/// as `input`; cancelling a step cancels the rest with a reason; retrying it resumes the chain.
///
/// The first step is cancelled while its queue is paused, so that it is surely not done yet:
/// a cancel sent once it was seen running could come after its end on a loaded machine
/// (`e2e_failures` cancels running handlers).
#[tokio::test]
async fn chain_runs_in_order_and_resumes_after_retry() {
    let s = Scratch::with_config("");
    let (_d, api) = s.serve(&[]);
    let (status, body) = api.post("/v1/queues/default/pause").await;
    assert_eq!(status, 200, "{body}");
    let (status, first) = api
        .enqueue(json!({
            "kind": "sys.sleep", "payload": {"ms": 400},
            "then": [{"kind": "sys.sleep", "payload": {"ms": 1}}, {"kind": "sys.noop"}]
        }))
        .await;
    assert_eq!(status, 201, "{first}");
    let ids = step_ids(&first);
    assert_eq!(ids.len(), 3);

    assert_eq!(api.job(&ids[0]).await["state"], "queued");
    let (st, body) = api.post(&format!("/v1/jobs/{}/cancel", ids[0])).await;
    assert_eq!(st, 200, "{body}");
    for id in &ids[1..] {
        let rest = api.wait_state(id, "cancelled").await;
        assert!(
            rest["last_error"].as_str().unwrap().contains("chain"),
            "{rest:#}"
        );
    }

    let (status, body) = api.post("/v1/queues/default/resume").await;
    assert_eq!(status, 200, "{body}");
    s.cli_ok(&["retry", &ids[0]]);
    let last = api.wait_state(&ids[2], "succeeded").await;
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
/// between them, not one per process: once five ticks have come, no tick has two jobs, and
/// every tick is a whole second, at most one per second.
#[tokio::test]
async fn schedule_fires_once_per_tick_across_processes() {
    let s = Scratch::with_config(
        "[[schedule]]\nname = \"tick\"\ncron = \"* * * * * *\"\nkind = \"sys.noop\"\n",
    );
    let mut a = s.start(&["worker"]);
    let mut b = s.start(&["worker"]);
    a.wait_log("scheduler started");
    b.wait_log("scheduler started");
    let from = now_ms();
    let ticks = || -> Vec<i64> {
        s.cli_jobs(&["--kind", "sys.noop", "--limit", "1000"])
            .iter()
            .map(|j| {
                let key = j["unique_key"].as_str().unwrap();
                key.rsplit(':').next().unwrap().parse().unwrap()
            })
            .collect()
    };
    wait::until("fewer than 5 ticks enqueued", async || {
        let ticks = ticks();
        let after = ticks.iter().filter(|t| **t >= from).count();
        if after >= 5 {
            Ok(())
        } else {
            Err(format!("{ticks:?}"))
        }
    })
    .await;
    let to = now_ms();
    a.stop("TERM");
    b.stop("TERM");
    let mut ticks = ticks();
    let all = ticks.len();
    ticks.sort_unstable();
    ticks.dedup();
    assert_eq!(ticks.len(), all, "one job per tick, whatever the processes");
    assert!(ticks.iter().all(|t| t % 1000 == 0), "{ticks:?}");
    let inside = ticks.iter().filter(|t| (from..=to).contains(*t)).count();
    let seconds = (to - from) / 1000 + 1;
    assert!(
        (5..=seconds).contains(&(inside as i64)),
        "{inside} ticks enqueued in {seconds} s: {ticks:?}"
    );
}

/// Retention runs as a `hopper.retention` job on the maintenance queue: a
/// succeeded job past `[retention] succeeded` is deleted, history and all.
#[tokio::test]
async fn retention_job_purges_old_jobs() {
    let s = Scratch::with_config("[retention]\nsucceeded = \"1s\"\ncron = \"* * * * * *\"\n");
    let (_d, api) = s.serve(&[]);
    let id = api.enqueue_ok(noop()).await;
    api.wait_state(&id, "succeeded").await;
    let path = format!("/v1/jobs/{id}");
    wait::until("never purged", async || {
        let (status, body) = api.call(Method::GET, &path, None).await;
        if status == 404 {
            Ok(())
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await;
    // The retention jobs are succeeded jobs too, purged a second after they end by the next
    // one: at a given instant the only one left may be running still, so this waits for one
    // that succeeded and says it purged.
    wait::until("no retention job said it purged", async || {
        let purges = s.cli_jobs(&["--queue", "hopper.maintenance", "--state", "succeeded"]);
        if purges.iter().any(|j| {
            j["kind"] == "hopper.retention" && j["result"]["succeeded_purged"].as_u64() >= Some(1)
        }) {
            Ok(())
        } else {
            Err(format!("{purges:#?}"))
        }
    })
    .await;
}
