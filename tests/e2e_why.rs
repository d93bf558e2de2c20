//! "Why is my job not running" and the registry of worker nodes, against the real binary:
//! the `waiting` field of `GET /v1/jobs/{id}` and `hopper job ID` for each reason (SQLite),
//! and `GET /v1/workers` / `hopper workers` listing `hopper worker` processes on Redis, gone
//! once they stop.
//!
//! A worker that must look alive but take nothing is stopped with SIGSTOP: its entry stays in
//! the registry for a minute, as a hung node's would.

#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};

use crate::util::redis::RedisKeys;
use crate::util::{Api, Daemon, Scratch, noop, sleep, wait};

/// `reason` of the job's `waiting` field.
fn reason(job: &Value) -> &str {
    job["waiting"]["reason"].as_str().unwrap_or("")
}

/// Polls `GET /v1/workers` until it lists `n` nodes; returns them.
async fn wait_workers(api: &Api, n: usize) -> Vec<Value> {
    wait::until(&format!("{n} workers never listed"), async || {
        let list = api.get_json("/v1/workers", &[]).await;
        let nodes = list["workers"].as_array().unwrap().clone();
        if nodes.len() == n {
            Ok(nodes)
        } else {
            Err(format!("{list:#}"))
        }
    })
    .await
}

/// Delayed, retrying after a failure, a chain step behind its predecessor, a queue paused in
/// the broker or in the config, a queue no worker serves: each says so in `waiting`, over
/// HTTP and in `hopper job`; a finished job has none.
#[tokio::test]
async fn waiting_says_run_at_chain_paused_and_no_worker() {
    let s = Scratch::with_config(
        "[worker]\nqueues = [\"default\", \"cfg\"]\n\
         [retry]\nbackoff_base = \"1h\"\nbackoff_max = \"2h\"\n\
         [[queue]]\nname = \"cfg\"\npaused = true\n",
    );
    let (_d, api) = s.serve(&[]);
    wait_workers(&api, 1).await;

    let delayed = api
        .enqueue_ok(json!({"kind": "sys.noop", "delay": "1h"}))
        .await;
    let job = api.job(&delayed).await;
    assert_eq!(reason(&job), "run_at", "{job:#}");
    assert_eq!(job["waiting"]["until"], job["run_at"], "{job:#}");

    let failing = api
        .enqueue_ok(json!({"kind": "sys.fail", "payload": {"times": 99}, "max_retries": 3}))
        .await;
    let job = api
        .wait_job(&failing, |j| {
            j["state"] == "retrying" && reason(j) == "run_at"
        })
        .await;
    let message = job["waiting"]["message"].as_str().unwrap();
    assert!(message.contains("retrying"), "{message}");

    let (status, chain) = api
        .enqueue(json!({"kind": "sys.noop", "delay": "1h", "then": [{"kind": "sys.noop"}]}))
        .await;
    assert_eq!(status, 201, "{chain}");
    let first = chain["steps"][0]["id"].as_str().unwrap().to_owned();
    let second = chain["steps"][1]["id"].as_str().unwrap().to_owned();
    let job = api.job(&second).await;
    assert_eq!(reason(&job), "chain_predecessor", "{job:#}");
    assert_eq!(job["waiting"]["predecessor"], json!(first));

    let (status, body) = api.post("/v1/queues/default/pause").await;
    assert_eq!(status, 200, "{body}");
    let held = api.enqueue_ok(noop()).await;
    let job = api.job(&held).await;
    assert_eq!(reason(&job), "queue_paused", "{job:#}");
    let cli = s.cli_job(&held);
    assert_eq!(cli["waiting"]["reason"], "queue_paused", "{cli:#}");
    let text = s.cli_ok(&["job", &held]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("waiting") && l.contains("paused")),
        "{text}"
    );
    let (status, body) = api.post("/v1/queues/default/resume").await;
    assert_eq!(status, 200, "{body}");
    let done = api.wait_state(&held, "succeeded").await;
    assert_eq!(done["waiting"], Value::Null, "{done:#}");

    let mut cfg = noop();
    cfg["queue"] = json!("cfg");
    let by_config = api.enqueue_ok(cfg).await;
    let job = api.job(&by_config).await;
    assert_eq!(reason(&job), "queue_paused", "{job:#}");
    let message = job["waiting"]["message"].as_str().unwrap();
    assert!(message.contains("config"), "{message}");

    let mut nobody = noop();
    nobody["queue"] = json!("nobody");
    let unserved = api.enqueue_ok(nobody).await;
    let job = api.job(&unserved).await;
    assert_eq!(reason(&job), "no_worker", "{job:#}");
    let message = job["waiting"]["message"].as_str().unwrap();
    assert!(message.contains("nobody"), "{message}");
}

/// A job whose queue is at its `[[queue]] concurrency` on every node serving it says so.
#[tokio::test]
async fn waiting_says_queue_concurrency_when_every_node_is_at_its_limit() {
    let s = Scratch::with_config(
        "[worker]\nqueues = [\"default\", \"narrow\"]\nshutdown_grace = \"1s\"\n\
         [[queue]]\nname = \"narrow\"\nconcurrency = 1\n",
    );
    let (_d, api) = s.serve(&[]);
    let mut job = sleep(120_000);
    job["queue"] = json!("narrow");
    let running = api.enqueue_ok(job.clone()).await;
    let next = api.enqueue_ok(job).await;
    api.wait_state(&running, "running").await;
    let job = api
        .wait_job(&next, |j| reason(j) == "queue_concurrency")
        .await;
    assert_eq!(job["state"], "queued", "{job:#}");
    let nodes = wait_workers(&api, 1).await;
    let narrow = nodes[0]["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "narrow")
        .cloned()
        .unwrap();
    assert_eq!(narrow["limit"], 1, "{narrow:#}");
    assert_eq!(narrow["busy"], 1, "{narrow:#}");
}

/// A ready job of a queue whose `[[queue]] rate_limit` allows no further start yet (one a
/// minute; the worker idle) says the queue is at its rate, naming the rate and when the next
/// start is allowed, over HTTP and in `hopper job`.
#[tokio::test]
async fn waiting_says_queue_rate_while_the_rate_holds_jobs_back() {
    let s = Scratch::with_config(
        "[worker]\nqueues = [\"rated\"]\nconcurrency = 4\n\n\
         [[queue]]\nname = \"rated\"\nrate_limit = \"1/m\"\n",
    );
    let (_d, api) = s.serve(&[]);
    let mut job = noop();
    job["queue"] = json!("rated");
    let first = api.enqueue_ok(job.clone()).await;
    api.wait_state(&first, "succeeded").await;
    let held = api.enqueue_ok(job).await;
    let waiting = api.wait_job(&held, |j| reason(j) == "queue_rate").await;
    assert_eq!(waiting["state"], "queued", "{waiting:#}");
    assert_eq!(waiting["attempt"], 0, "{waiting:#}");
    let message = waiting["waiting"]["message"].as_str().unwrap();
    assert!(message.contains("rate limit (1/m)"), "{waiting:#}");
    let until = crate::util::ms(&waiting["waiting"]["until"]);
    let started = crate::util::ms(&api.job(&first).await["started_at"]);
    assert!(until > started, "{waiting:#}");
    let cli = s.cli_json(&["job", &held]);
    assert_eq!(cli["waiting"]["reason"], "queue_rate", "{cli:#}");
}

/// Stops `worker` (SIGSTOP) while it holds no write of the SQLite file, which `probe` (a
/// write) proves: stopped in the middle of one, it would hold every other writer off.
fn stop_idle(s: &Scratch, worker: &Daemon, probe: &[&str]) {
    wait::until_blocking("the worker never stopped between two writes", || {
        worker.signal("STOP");
        let out = s.cli(probe);
        if out.status.success() {
            Ok(())
        } else {
            worker.signal("CONT");
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
}

/// A ready job served by a live node with free slots (here, one that hangs) is behind the
/// ready jobs of its queue of a higher or equal priority, and says how many.
#[tokio::test]
async fn waiting_says_behind_n_ready_jobs() {
    let s = Scratch::with_config("[worker]\nqueues = [\"lane\"]\nconcurrency = 4\n");
    let (_api_d, api) = s.serve(&["--no-workers"]);
    let worker = s.start(&["worker"]);
    wait_workers(&api, 1).await;
    // Held while they are enqueued, so that the worker takes none before it hangs.
    s.cli_ok(&["pause", "lane"]);
    let mut ids = Vec::new();
    for p in [0, 5, 5, 9] {
        ids.push(
            api.enqueue_ok(json!({"kind": "sys.noop", "queue": "lane", "priority": p}))
                .await,
        );
    }
    stop_idle(&s, &worker, &["resume", "lane"]);
    for (id, ahead) in [(&ids[0], 0), (&ids[2], 2), (&ids[3], 3)] {
        let job = api.job(id).await;
        assert_eq!(reason(&job), "behind", "{job:#}");
        assert_eq!(job["waiting"]["ahead"], ahead, "{job:#}");
    }
    let text = s.cli_ok(&["job", &ids[3]]);
    assert!(text.contains("behind 3 ready jobs"), "{text}");
    worker.signal("CONT");
    api.wait_all(&ids, "succeeded").await;
}

/// `hopper worker` processes on Redis are listed by `GET /v1/workers` and `hopper workers`
/// (table and JSON) with host, pid, queues, kinds and slots; once one stops it is gone, and
/// a job of a queue only it served then says no worker serves it.
#[tokio::test]
async fn workers_are_listed_on_redis_and_gone_once_stopped() {
    let keys = RedisKeys::claim();
    let s = Scratch::new();
    s.write_config_with_broker(
        crate::util::redis::SHARED_URL,
        &keys.prefix,
        "[worker]\nqueues = [\"alpha\", \"beta\"]\nconcurrency = 3\n\
         [[queue]]\nname = \"beta\"\nconcurrency = 2\n",
    );
    let (_api_d, api) = s.serve(&["--no-workers"]);
    let mut w1 = s.start(&["worker"]);
    let w2 = s.start(&["worker", "--queues", "beta"]);
    let nodes = wait_workers(&api, 2).await;
    let pids: Vec<u64> = nodes.iter().map(|n| n["pid"].as_u64().unwrap()).collect();
    for w in [&w1, &w2] {
        assert!(pids.contains(&u64::from(w.pid())), "{nodes:#?}");
    }
    let first = nodes.iter().find(|n| n["pid"] == w1.pid()).unwrap().clone();
    assert!(!first["host"].as_str().unwrap().is_empty(), "{first:#}");
    assert_eq!(first["slots_total"], 3);
    assert_eq!(first["slots_busy"], 0);
    let queues: Vec<&str> = first["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["queue"].as_str().unwrap())
        .collect();
    // Then the engine's own `hopper.maintenance`.
    assert_eq!(queues[..2], ["alpha", "beta"]);
    assert_eq!(first["queues"][1]["limit"], 2);
    assert!(
        first["kinds"]
            .as_array()
            .unwrap()
            .contains(&json!("sys.noop")),
        "{first:#}"
    );

    let listed = s.cli_json(&["workers"]);
    assert_eq!(listed["workers"].as_array().unwrap().len(), 2, "{listed:#}");
    let table = s.cli_ok(&["workers"]);
    assert!(table.contains(&w1.pid().to_string()), "{table}");
    assert!(table.contains("0/3"), "{table}");

    w1.stop("TERM");
    let nodes = wait_workers(&api, 1).await;
    assert_eq!(nodes[0]["pid"], w2.pid(), "{nodes:#?}");
    let mut job = noop();
    job["queue"] = json!("alpha");
    let id = api.enqueue_ok(job).await;
    let job = api.job(&id).await;
    assert_eq!(reason(&job), "no_worker", "{job:#}");
}

/// A job whose kind no running worker serves (here, the only worker leaves out the diagnostic
/// kinds the API accepts) is put off every few seconds, `scheduled` in between: it says
/// `no_worker`, naming the kind, not `run_at` (a delay the user never asked for). Once a
/// worker serving the kind joins, it runs.
#[tokio::test]
async fn waiting_says_no_worker_for_a_kind_put_off_for_want_of_a_handler() {
    let s = Scratch::with_config("");
    let (_api_d, api) = s.serve(&["--no-workers"]);
    let lacking = Scratch::new();
    lacking.write_config_with_broker(&s.broker_url(), "unused", "[worker]\ndiagnostics = false\n");
    let _w1 = lacking.start(&["worker"]);
    wait_workers(&api, 1).await;

    let id = api.enqueue_ok(noop()).await;
    let job = api
        .wait_job(&id, |j| {
            j["state"] == "scheduled"
                && j["last_error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("no worker serves kind"))
        })
        .await;
    assert_eq!(reason(&job), "no_worker", "{job:#}");
    let message = job["waiting"]["message"].as_str().unwrap();
    assert!(message.contains("sys.noop"), "{message}");
    let cli = s.cli_job(&id);
    assert_eq!(cli["waiting"]["reason"], "no_worker", "{cli:#}");

    let _w2 = s.start(&["worker"]);
    api.wait_state(&id, "succeeded").await;
}
