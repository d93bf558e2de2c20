//! The queue controls against the real binary: pause, resume and retry every dead job of a
//! queue, over HTTP (`POST /v1/queues/{name}/pause|resume|retry-dead`) and from the CLI
//! (`hopper pause|resume QUEUE`), on one node and across processes sharing one broker.
//!
//! "Stays queued" can only be seen by waiting a while and looking: those waits are short and
//! assert nothing about speed; every wait for something to happen has the fixtures' deadline.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{Value, json};

use crate::util::redis::{RedisKeys, SHARED_URL};
use crate::util::{Api, Scratch, events, sleep};

/// How long a paused queue is watched for a job that should not start.
const WATCH: Duration = Duration::from_millis(1500);

/// `paused` of `queue` in `GET /v1/queues`.
async fn api_paused(api: &Api, queue: &str) -> Value {
    let q = api.get_json("/v1/queues", &[]).await;
    q["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == queue)
        .map_or(Value::Null, |q| q["paused"].clone())
}

/// Pauses `queue` through `api`, checks its answer, enqueues a job on it and sees it stay
/// queued for a while; returns the job's id.
async fn pause_and_hold(api: &Api, queue: &str) -> String {
    let (status, body) = api.post(&format!("/v1/queues/{queue}/pause")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["queue"], &body["paused"]),
        (&json!(queue), &json!(true)),
        "{body}"
    );
    let mut job = sleep(10);
    job["queue"] = json!(queue);
    let id = api.enqueue_ok(job).await;
    tokio::time::sleep(WATCH).await;
    let job = api.job(&id).await;
    assert_eq!(
        job["state"], "queued",
        "a paused queue's job waits: {job:#}"
    );
    id
}

/// A pause through the API holds new jobs (which are still accepted) and shows in
/// `GET /v1/queues` and `hopper queues`; `hopper resume` runs them; retry-dead answers how many
/// it retried; a bad queue name is a 400 naming `name`.
#[tokio::test]
async fn pause_holds_jobs_resume_runs_them_and_retry_dead_counts() {
    let s = Scratch::with_config("");
    let (_d, api) = s.serve(&[]);

    let id = pause_and_hold(&api, "default").await;
    assert_eq!(api_paused(&api, "default").await, json!(true));
    assert_eq!(s.cli_queue("default").unwrap()["paused"], json!(true));

    let out = s.cli_ok(&["resume", "default"]);
    assert!(out.contains("resumed"), "{out}");
    api.wait_state(&id, "succeeded").await;
    assert_eq!(api_paused(&api, "default").await, json!(false));

    let out = s.cli_ok(&["pause", "default"]);
    assert!(out.contains("paused"), "{out}");
    assert_eq!(api_paused(&api, "default").await, json!(true));
    let (status, body) = api.post("/v1/queues/default/resume").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["paused"], json!(false), "{body}");

    let dead = api
        .enqueue_ok(json!({"kind": "sys.fail", "payload": {"times": 1, "permanent": true}}))
        .await;
    api.wait_state(&dead, "dead").await;
    let (status, body) = api.post("/v1/queues/default/retry-dead").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"queue": "default", "retried": 1}));
    // It runs again (and fails again: a retried job starts its attempts over).
    api.wait_job(&dead, |j| {
        events(j, "job.started").len() == 2 && j["state"] == "dead"
    })
    .await;

    for route in ["pause", "resume", "retry-dead"] {
        let (status, body) = api.post(&format!("/v1/queues/no%20spaces/{route}")).await;
        assert_eq!(status, 400, "{route}: {body}");
        assert_eq!(body["error"]["field"], "name", "{route}: {body}");
    }
    let out = s.cli(&["pause", "no spaces"]);
    assert!(!out.status.success(), "an invalid queue name fails the CLI");

    // A queue of dots only can hold no job: pausing one stored a phantom paused queue.
    // (`%2e%2e` would reach the route from curl, not from reqwest, which resolves it as `..`.)
    for name in ["...", "...."] {
        let (status, body) = api.post(&format!("/v1/queues/{name}/pause")).await;
        assert_eq!(status, 400, "{name}: {body}");
        assert_eq!(body["error"]["field"], "name", "{name}: {body}");
    }
    let out = s.cli(&["pause", ".."]);
    assert_eq!(out.status.code(), Some(2), "pause ..: {out:?}");
    let queues = api.get_json("/v1/queues", &[]).await;
    assert!(
        !queues.to_string().contains("\"..\""),
        "no queue of dots is listed: {queues}"
    );
}

/// Pausing or resuming a queue that holds no job and that no worker serves (an operator's
/// typo, most likely) still does it, since a queue may be paused ahead of its first job, but
/// says so: the API answers `"jobs": 0, "workers": 0` and a `warning` naming the queue, the CLI
/// prints that warning on stderr and exits 0. A queue with jobs answers no warning. Before,
/// both answered as for a real queue, and the operator believed the queue they meant was paused
/// (or running again).
#[tokio::test]
async fn pausing_or_resuming_a_queue_no_job_or_worker_knows_warns() {
    let s = Scratch::with_config("");
    let (_d, api) = s.serve(&[]);
    let id = api.enqueue_ok(json!({"kind": "sys.noop"})).await;
    api.wait_state(&id, "succeeded").await;

    let (status, body) = api.post("/v1/queues/default/pause").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["paused"], json!(true), "{body}");
    assert_eq!(body["jobs"], json!(1), "{body}");
    assert!(body.get("warning").is_none(), "a known queue: {body}");
    let out = s.cli(&["pause", "default"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "no warning");

    let (status, body) = api.post("/v1/queues/typo-queue/pause").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["paused"], json!(true), "paused all the same: {body}");
    assert_eq!(
        (&body["jobs"], &body["workers"]),
        (&json!(0), &json!(0)),
        "{body}"
    );
    let warning = body["warning"].as_str().unwrap_or_default();
    assert!(warning.contains("\"typo-queue\""), "{body}");

    let out = s.cli(&["pause", "other-typo"]);
    assert!(out.status.success(), "a warning, not a failure");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("warning:")
            && stderr.contains("\"other-typo\"")
            && stderr.contains("no job"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("paused"));

    let (status, body) = api.post("/v1/queues/default/resume").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["paused"], &body["jobs"]),
        (&json!(false), &json!(1)),
        "{body}"
    );
    assert!(body.get("warning").is_none(), "a known queue: {body}");
    let out = s.cli(&["resume", "default"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "no warning");

    let (status, body) = api.post("/v1/queues/typo-queue/resume").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["paused"], json!(false), "resumed all the same: {body}");
    assert_eq!(
        (&body["jobs"], &body["workers"]),
        (&json!(0), &json!(0)),
        "{body}"
    );
    let warning = body["warning"].as_str().unwrap_or_default();
    assert!(
        warning.contains("\"typo-queue\"") && warning.contains("resumed"),
        "{body}"
    );

    let out = s.cli(&["resume", "resume-typo"]);
    assert!(out.status.success(), "a warning, not a failure");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("warning:")
            && stderr.contains("\"resume-typo\"")
            && stderr.contains("no job"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("resumed"));
}

/// Two processes on one broker: an API node (`serve --no-workers`) pauses a queue and a
/// separate `hopper worker` honours it; resumed through the CLI, the worker runs the job.
async fn honoured_across_processes(s: &Scratch) {
    let (_api_d, api) = s.serve(&["--no-workers"]);
    let _w = s.start(&["worker"]);
    let id = pause_and_hold(&api, "default").await;
    s.cli_ok(&["resume", "default"]);
    api.wait_state(&id, "succeeded").await;
}

#[tokio::test]
async fn pause_is_honoured_by_another_process_on_sqlite() {
    let s = Scratch::with_config("");
    honoured_across_processes(&s).await;
}

#[tokio::test]
async fn pause_is_honoured_by_another_process_on_redis() {
    let keys = RedisKeys::claim();
    let s = Scratch::new();
    s.write_config_with_broker(SHARED_URL, &keys.prefix, "");
    honoured_across_processes(&s).await;
}

/// Weighted queues (`[worker] queues = ["heavy:3", "light", "idle:5"]`, `hopper worker
/// --queues light:2,heavy:3`): `hopper queues` lists them by name, weights aside, and a worker given
/// weights takes the jobs of each queue. Before, a weight was part of the name: refused.
#[test]
fn weighted_queues_are_listed_and_served_by_name() {
    let s = Scratch::with_config("[worker]\nqueues = [\"heavy:3\", \"light\", \"idle:5\"]\n");
    s.cli_ok(&["check-config"]);
    let ids: Vec<String> = ["heavy", "light"]
        .iter()
        .map(|q| {
            s.cli_ok(&["enqueue", "sys.noop", "--queue", q])
                .trim()
                .to_owned()
        })
        .collect();
    // A served queue with no job yet is listed from the config, by its name.
    assert!(s.cli_queue("idle").is_some(), "idle is not listed");
    assert!(
        s.cli_queue("idle:5").is_none(),
        "a weight listed as a queue"
    );
    let w = s.start(&["worker", "--queues", "light:2,heavy:3"]);
    w.wait_log("worker pool started");
    for id in &ids {
        crate::util::wait::until_blocking("a weighted queue's job never ran", || {
            let job = s.cli_job(id);
            if job["state"] == "succeeded" {
                Ok(())
            } else {
                Err(format!("{job:#}"))
            }
        });
    }
}

/// A pause is stored before the answer counts who knows the queue: when that count cannot be
/// read (here the broker's registry of live nodes holds a value of the wrong type, as a
/// hand-made key would), the pause still succeeds, over the CLI and HTTP, and says the count is unknown,
/// rather than failing a request whose effect happened (exit 1, or a 5xx).
#[tokio::test]
async fn a_pause_whose_reach_cannot_be_read_still_succeeds() {
    let keys = RedisKeys::claim();
    let s = Scratch::new();
    s.write_config_with_broker(SHARED_URL, &keys.prefix, "");
    crate::util::redis::redis_cli(
        6379,
        &[
            "SET",
            &format!("{{{}}}:seen", keys.prefix),
            "not a sorted set",
        ],
    );
    let out = s.cli(&["pause", "q1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {}: {stderr}", out.status);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("queue q1 paused"),
        "{out:?}"
    );
    assert!(stderr.contains("cannot be counted"), "{stderr}");

    let (_d, api) = s.serve(&["--no-workers"]);
    let r = api
        .http
        .post(format!("{}/v1/queues/q2/pause", api.base))
        .send()
        .await
        .expect("pause");
    let status = r.status();
    let body: Value = r.json().await.expect("json");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["paused"], true, "{body}");
    assert!(
        body["jobs"].is_null() && body["workers"].is_null(),
        "{body}"
    );
    assert!(body["warning"].is_string(), "{body}");
}
