//! Failures a job queue must survive: a worker killed mid-job, a cancel, graceful and hard
//! shutdown, and the daemon killed with jobs still queued.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::json;

use crate::util::{Api, Scratch, events, ms};

const T: Duration = Duration::from_secs(30);

/// `kill -9` a worker while it runs `sys.sleep {"ms":5000}` with a 2 s lease: a second worker
/// picks the job up within lease + 2 s and finishes it; the job shows one interruption and no
/// failed attempt.
#[tokio::test]
async fn killed_worker_job_is_rescued_by_another() {
    let s = Scratch::new();
    s.write_config("[worker]\nlease = \"2s\"\nheartbeat = \"500ms\"\n");
    let api_d = s.start(&["serve", "--no-workers"]);
    let api = Api::new(api_d.wait_addr());
    let mut w1 = s.start(&["worker"]);
    let id = api
        .enqueue_ok(json!({"kind": "sys.sleep", "payload": {"ms": 5000}}))
        .await;
    api.wait_state(&id, "running", T).await;
    w1.signal("KILL");
    let killed_at = Instant::now();
    w1.wait_exit(Duration::from_secs(5));

    let _w2 = s.start(&["worker"]);
    api.wait_job(&id, T, |j| events(j, "job.started").len() == 2)
        .await;
    let picked_up = killed_at.elapsed();
    assert!(
        picked_up <= Duration::from_secs(4),
        "second attempt started {picked_up:?} after the kill"
    );
    let job = api.wait_state(&id, "succeeded", T).await;
    assert_eq!(job["interruptions"], 1, "{job:#}");
    assert_eq!(
        job["attempt"], 1,
        "an interruption is not a failed attempt: {job:#}"
    );
    assert!(events(&job, "job.retrying").is_empty(), "{job:#}");
    assert_eq!(events(&job, "job.interrupted").len(), 1, "{job:#}");
}

/// Cancelling a running `sys.sleep` stops its handler at once: with one slot, a job queued
/// behind it starts within 200 ms of the cancel. Retrying the cancelled job runs it again.
#[tokio::test]
async fn cancel_stops_a_running_handler() {
    let s = Scratch::new();
    s.write_config("[worker]\nconcurrency = 1\n");
    let d = s.start(&["serve"]);
    let api = Api::new(d.wait_addr());
    let long = api
        .enqueue_ok(json!({"kind": "sys.sleep", "payload": {"ms": 30000}}))
        .await;
    api.wait_state(&long, "running", T).await;
    let next = api
        .enqueue_ok(json!({"kind": "sys.noop", "payload": {}, "priority": 0}))
        .await;

    let (status, body) = api.post(&format!("/v1/jobs/{long}/cancel")).await;
    assert_eq!(status, 200, "{body}");
    let cancelled = api.job(&long).await;
    assert_eq!(cancelled["state"], "cancelled");
    let cancelled_at = ms(&cancelled["finished_at"]);
    let done = api.wait_state(&next, "succeeded", T).await;
    let freed_after = ms(&done["started_at"]) - cancelled_at;
    assert!(
        freed_after <= 200,
        "slot freed {freed_after} ms after cancel"
    );

    // A second cancel is a conflict: the job is final.
    let (status, _) = api.post(&format!("/v1/jobs/{long}/cancel")).await;
    assert_eq!(status, 409);

    let (status, body) = api.post(&format!("/v1/jobs/{long}/retry")).await;
    assert_eq!(status, 200, "{body}");
    api.wait_state(&long, "running", T).await;
}

/// SIGTERM with four running 1 s jobs: the process waits for them, they succeed, it exits 0.
#[tokio::test]
async fn sigterm_drains_running_jobs() {
    let s = Scratch::new();
    s.write_config("[worker]\nconcurrency = 4\nshutdown_grace = \"10s\"\n");
    let mut d = s.start(&["serve"]);
    let api = Api::new(d.wait_addr());
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(
            api.enqueue_ok(json!({"kind": "sys.sleep", "payload": {"ms": 1000}}))
                .await,
        );
    }
    for id in &ids {
        api.wait_state(id, "running", T).await;
    }
    d.signal("TERM");
    let (status, took) = d.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    for id in &ids {
        let job = s.cli_json(&["job", id]);
        let state = job["state"].as_str().or(job["job"]["state"].as_str());
        assert_eq!(state, Some("succeeded"), "{job:#}");
    }
}

/// With `shutdown_grace` shorter than the jobs, SIGTERM exits within grace + 1 s and the jobs
/// are back in `queued` at once, not after their lease, without a failed attempt.
#[tokio::test]
async fn sigterm_past_grace_releases_jobs() {
    let s = Scratch::new();
    s.write_config(
        "[worker]\nconcurrency = 4\nshutdown_grace = \"500ms\"\nlease = \"60s\"\nheartbeat = \"20s\"\n",
    );
    let mut d = s.start(&["serve"]);
    let api = Api::new(d.wait_addr());
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(
            api.enqueue_ok(json!({"kind": "sys.sleep", "payload": {"ms": 20000}}))
                .await,
        );
    }
    for id in &ids {
        api.wait_state(id, "running", T).await;
    }
    d.signal("TERM");
    let (_, took) = d.wait_exit(Duration::from_secs(10));
    assert!(took <= Duration::from_millis(1500), "took {took:?}");
    for id in &ids {
        let job = s.cli_json(&["job", id]);
        let j = if job["state"].is_string() {
            &job
        } else {
            &job["job"]
        };
        assert_eq!(j["state"], "queued", "{job:#}");
        assert_eq!(j["attempt"], 0, "{job:#}");
    }
}

/// 1,000 jobs enqueued with `serve --no-workers`, the process killed with SIGKILL: a new
/// `serve` runs each exactly once.
#[tokio::test]
async fn sigkill_loses_no_enqueued_job() {
    let s = Scratch::new();
    s.write_config("[worker]\nconcurrency = 32\n");
    let mut d = s.start(&["serve", "--no-workers"]);
    let api = Api::new(d.wait_addr());
    let mut ids = Vec::new();
    for _ in 0..1000 {
        ids.push(
            api.enqueue_ok(json!({"kind": "sys.noop", "payload": {}}))
                .await,
        );
    }
    d.signal("KILL");
    d.wait_exit(Duration::from_secs(5));

    let d2 = s.start(&["serve"]);
    let api = Api::new(d2.wait_addr());
    let deadline = Instant::now() + T;
    loop {
        let q = s.cli_json(&["queues"]);
        let succeeded = q
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["queue"] == "default")
            .map(|q| q["counts"]["succeeded"].as_u64().unwrap())
            .unwrap_or(0);
        if succeeded == 1000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {succeeded} of 1000 succeeded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Exactly once: every job started once and on its first attempt.
    for id in ids.iter().step_by(50) {
        let job = api.job(id).await;
        assert_eq!(job["attempt"], 1, "{job:#}");
        assert_eq!(events(&job, "job.started").len(), 1, "{job:#}");
    }
}
