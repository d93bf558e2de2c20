//! Bulk enqueue against the real binary, on SQLite and on Redis: `POST /v1/jobs/batch` (every
//! job answered in order as `POST /v1/jobs` would answer it, all or none, a taken
//! `unique_key` answered with the existing job and only its stored steps, the size limit) and
//! `hopper enqueue --file` (a few thousand lines in batches, a bad line named with what stayed
//! enqueued).
//!
//! The daemons run with `--no-workers`, so what a batch stored stays `queued` to be counted.

#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::util::redis::{RedisKeys, SHARED_URL};
use crate::util::{Api, Scratch, noop};

/// POST /v1/jobs/batch; returns (status, body).
async fn batch(api: &Api, jobs: Vec<Value>) -> (u16, Value) {
    api.call(
        reqwest::Method::POST,
        "/v1/jobs/batch",
        Some(&json!({ "jobs": jobs })),
    )
    .await
}

/// The `queued` count of `queue` (0 before the queue exists).
async fn queued(api: &Api, queue: &str) -> u64 {
    api.counts(queue).await["queued"].as_u64().unwrap_or(0)
}

fn on(queue: &str) -> Value {
    let mut job = noop();
    job["queue"] = json!(queue);
    job
}

/// A batch stores every job and answers each in order, in the shape `POST /v1/jobs` answers
/// it (a chain with its steps); a taken `unique_key`, before the batch or earlier in it, is
/// answered 200 with the existing job and creates nothing.
async fn answers_each_in_order(s: &Scratch) {
    let (_d, api) = s.serve(&["--no-workers"]);
    let mut delayed = on("b1");
    delayed["delay"] = json!("1h");
    delayed["priority"] = json!(2);
    let mut chain = on("b2");
    chain["then"] = json!([noop(), noop()]);
    let (status, body) = batch(&api, vec![on("b1"), delayed, chain, on("b2")]).await;
    assert_eq!(status, 201, "{body}");
    let answers = body["jobs"].as_array().unwrap();
    assert_eq!(answers.len(), 4, "{body:#}");
    assert!(answers.iter().all(|a| a["status"] == 201), "{body:#}");
    let states: Vec<&Value> = answers.iter().map(|a| &a["job"]["state"]).collect();
    assert_eq!(
        states,
        ["queued", "scheduled", "queued", "queued"],
        "{body:#}"
    );
    assert_eq!(answers[1]["job"]["priority"], 2);
    assert_eq!(answers[2]["job"]["steps"].as_array().unwrap().len(), 3);
    for a in answers {
        let id = a["job"]["id"].as_str().unwrap();
        let stored = api.job(id).await;
        assert_eq!(stored["queue"], a["job"]["queue"], "{stored:#}");
        assert_eq!(stored["state"], a["job"]["state"], "{stored:#}");
    }
    assert_eq!(queued(&api, "b1").await, 1);
    assert_eq!(api.counts("b2").await["waiting"], 2);

    let mut keyed = on("u");
    keyed["unique_key"] = json!("k1");
    let first = api.enqueue_ok(keyed.clone()).await;
    let mut other = on("u");
    other["unique_key"] = json!("k2");
    let (status, body) = batch(&api, vec![on("u"), keyed, other.clone(), other]).await;
    assert_eq!(status, 201, "{body}");
    let got: Vec<(u64, String)> = body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let id = a["job"]["id"].as_str().unwrap().to_owned();
            (a["status"].as_u64().unwrap(), id)
        })
        .collect();
    assert_eq!(got[0].0, 201);
    assert_eq!(got[1], (200, first), "the existing job: {body:#}");
    assert_eq!(got[2].0, 201);
    assert_eq!(
        got[3],
        (200, got[2].1.clone()),
        "the job of k2 in the same batch"
    );
    assert_eq!(queued(&api, "u").await, 3, "k1, k2 and the plain job");

    // Nothing new at all: 200, like POST /v1/jobs with a taken key.
    let mut again = on("u");
    again["unique_key"] = json!("k1");
    let (status, body) = batch(&api, vec![again]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["jobs"][0]["status"], 200);
}

/// One bad job anywhere stores nothing of the batch and is named `jobs[i].field`, whether the
/// request's shape, the kind's payload check, a chain step or the engine's rules refuse it;
/// more than `[server] max_batch` jobs is a 413 naming `jobs`.
async fn all_or_none(s: &Scratch) {
    let (_d, api) = s.serve(&["--no-workers"]);
    let mut bad_queue = on("n");
    bad_queue["queue"] = json!("a b");
    let mut bad_priority = on("n");
    bad_priority["priority"] = json!(12);
    let mut bad_step = on("n");
    bad_step["then"] = json!([{"kind": "no.such"}]);
    let mut bad_payload = on("n");
    bad_payload["kind"] = json!("sys.sleep");
    bad_payload["payload"] = json!({"ms": "x"});
    let mut bad_type = on("n");
    bad_type["max_retries"] = json!(-1);
    for (bad, status, field) in [
        (bad_queue, 400, "jobs[2].queue"),
        (bad_priority, 400, "jobs[2].priority"),
        (bad_step, 422, "jobs[2].then[0].kind"),
        (bad_payload, 400, "jobs[2].payload.ms"),
        (bad_type, 400, "jobs[2].max_retries"),
        (json!("sys.noop"), 400, "jobs[2]"),
    ] {
        let (got, body) = batch(&api, vec![on("n"), on("n"), bad, on("n")]).await;
        assert_eq!(got, status, "{body}");
        assert_eq!(body["error"]["field"], field, "{body}");
    }
    assert_eq!(queued(&api, "n").await, 0, "nothing of a refused batch");

    let (status, body) = batch(&api, vec![on("n"); 1001]).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["field"], "jobs", "{body}");
    let (status, body) = batch(&api, Vec::new()).await;
    assert_eq!((status, &body["error"]["field"]), (400, &json!("jobs")));
    let (status, body) = api
        .call(
            reqwest::Method::POST,
            "/v1/jobs/batch",
            Some(&json!({"job": []})),
        )
        .await;
    assert_eq!((status, &body["error"]["field"]), (400, &json!("job")));
    let (status, body) = api
        .call(reqwest::Method::POST, "/v1/jobs/batch", Some(&json!([])))
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid_json"))
    );
    assert_eq!(queued(&api, "n").await, 0);

    let (status, body) = batch(&api, vec![on("n"); 1000]).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(queued(&api, "n").await, 1000);
}

/// `hopper enqueue --file`: 3,000 lines (a blank one among them) go in batches of
/// `[server] max_batch`; a bad line stops the run, exit 2, naming the line and the field and
/// saying which lines stayed enqueued: the batches before the bad line's own.
fn enqueue_file(s: &Scratch) {
    let mut text = String::new();
    for i in 0..3000 {
        if i == 1500 {
            text.push('\n');
        }
        writeln!(text, "{}", on(&format!("f{}", i % 3))).unwrap();
    }
    std::fs::write(s.path().join("ok.ndjson"), &text).unwrap();
    let out = s.cli_ok(&["enqueue", "--file", "ok.ndjson"]);
    assert!(out.contains("enqueued 3000 jobs"), "{out}");
    for q in ["f0", "f1", "f2"] {
        assert_eq!(s.cli_counts(q)["queued"], 1000, "{q}");
    }

    // A file some editor began with a byte order mark: its first line is a job like the rest.
    let bom = format!("\u{feff}{}\n{}\n", on("bom"), on("bom"));
    std::fs::write(s.path().join("bom.ndjson"), bom).unwrap();
    let out = s.cli_ok(&["enqueue", "--file", "bom.ndjson"]);
    assert!(out.contains("enqueued 2 jobs"), "{out}");

    // Line 2,345 of 3,000 is bad: lines 1 to 2,000 (two batches of 1,000) stay.
    let mut text = String::new();
    for i in 1..=3000 {
        let job = if i == 2345 {
            json!({"kind": "sys.noop", "queue": "g", "priority": "high"})
        } else {
            on("g")
        };
        writeln!(text, "{job}").unwrap();
    }
    std::fs::write(s.path().join("bad.ndjson"), &text).unwrap();
    let out = s.cli(&["enqueue", "--file", "bad.ndjson"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("line 2345: priority:"), "{err}");
    assert!(err.contains("lines 1 to 2000"), "{err}");
    assert_eq!(s.cli_counts("g")["queued"], 2000);

    // The same with unique keys, run twice: the second time the jobs of lines 1 to 2,000
    // existed already, and what stayed says so instead of counting them enqueued.
    let mut text = String::new();
    for i in 1..=3000 {
        let job = if i == 2345 {
            json!({"kind": "sys.noop", "queue": "h", "priority": "high"})
        } else {
            json!({"kind": "sys.noop", "queue": "h", "unique_key": format!("u{i}")})
        };
        writeln!(text, "{job}").unwrap();
    }
    std::fs::write(s.path().join("keyed.ndjson"), &text).unwrap();
    let first = s.cli(&["enqueue", "--file", "keyed.ndjson"]);
    let err = String::from_utf8_lossy(&first.stderr);
    assert!(err.contains("the 2000 jobs of lines 1 to 2000"), "{err}");
    let again = s.cli(&["enqueue", "--file", "keyed.ndjson"]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(2), "{err}");
    assert!(
        err.contains("lines 1 to 2000 were enqueued and stay (0 new jobs; 2000 existed already"),
        "{err}"
    );
    assert_eq!(s.cli_counts("h")["queued"], 2000);
    // A run that ends well counts new jobs as enqueued, and the rest apart.
    let mut text = String::new();
    for i in 1999..=2003 {
        let job = json!({"kind": "sys.noop", "queue": "h", "unique_key": format!("u{i}")});
        writeln!(text, "{job}").unwrap();
    }
    std::fs::write(s.path().join("overlap.ndjson"), &text).unwrap();
    let out = s.cli_ok(&["enqueue", "--file", "overlap.ndjson"]);
    assert!(
        out.contains("enqueued 3 jobs; 2 more lines named jobs that existed already"),
        "{out}"
    );
    assert_eq!(s.cli_counts("h")["queued"], 2003);

    // A file that cannot be read is the caller's to fix: exit 2, as `--payload @FILE`.
    let out = s.cli(&["enqueue", "--file", "missing.ndjson"]);
    assert_eq!(out.status.code(), Some(2));

    // `-` reads stdin.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hopper"))
        .current_dir(s.path())
        .env_remove("HOPPER_BROKER")
        .args(["--config", "config.toml", "enqueue", "--file", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        for _ in 0..10 {
            writeln!(stdin, "{}", on("stdin")).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("enqueued 10 jobs"), "{said}");
    assert_eq!(s.cli_counts("stdin")["queued"], 10);
}

/// A chain whose unique key is taken is the existing chain, every step of it, wherever it
/// falls in a large batch: here across the 500th job, where the Redis broker splits its
/// script calls.
async fn taken_chain_across_a_large_batch(s: &Scratch) {
    let (_d, api) = s.serve(&["--no-workers"]);
    let mut chain = on("c");
    chain["unique_key"] = json!("ck");
    chain["then"] = json!([noop(), noop(), noop()]);
    let (status, first) = batch(&api, vec![chain.clone()]).await;
    assert_eq!(status, 201, "{first}");
    let steps = &first["jobs"][0]["job"]["steps"];
    let mut jobs = vec![on("c"); 498];
    jobs.push(chain);
    let (status, body) = batch(&api, jobs).await;
    assert_eq!(status, 201, "{body}");
    let again = &body["jobs"][498];
    assert_eq!(again["status"], 200, "{again:#}");
    assert_eq!(&again["job"]["steps"], steps, "the existing chain's steps");
    assert_eq!(api.counts("c").await["waiting"], 3, "no step created again");
    assert_eq!(queued(&api, "c").await, 499);
}

/// The ids an answer of `POST /v1/jobs` or the batch route gives (its chain's `steps`, the
/// job first, or the job alone), each checked to name a stored job.
async fn answered_ids_exist(api: &Api, answer: &Value) -> Vec<String> {
    let id = answer["id"].as_str().unwrap().to_owned();
    let ids = match answer["steps"].as_array() {
        Some(steps) => steps
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect(),
        None => vec![id.clone()],
    };
    assert_eq!(ids[0], id, "the job is its chain's first step: {answer:#}");
    for id in &ids {
        let (status, body) = api
            .call(reqwest::Method::GET, &format!("/v1/jobs/{id}"), None)
            .await;
        assert_eq!(
            status, 200,
            "answered {id}, which is not stored: {answer:#} {body}"
        );
    }
    ids
}

/// A replay (a taken `unique_key`) answers the stored job and its stored chain, whatever
/// chain the replay asks for: never a step that was not stored (a longer chain, a chain over
/// a single job, the same chain twice in one batch).
async fn a_replay_answers_only_stored_steps(s: &Scratch) {
    let (_d, api) = s.serve(&["--no-workers"]);
    let mut short = on("r1");
    short["unique_key"] = json!("k");
    short["then"] = json!([noop()]);
    let (status, first) = api.enqueue(short.clone()).await;
    assert_eq!(status, 201, "{first}");
    let stored = answered_ids_exist(&api, &first).await;
    assert_eq!(stored.len(), 2, "{first:#}");
    let mut long = short;
    long["then"] = json!([noop(), noop()]);
    let (status, again) = api.enqueue(long).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        answered_ids_exist(&api, &again).await,
        stored,
        "the stored chain"
    );
    assert_eq!(
        api.counts("r1").await["waiting"],
        1,
        "no step created again"
    );
    // A replay without `then` (the client lost the first answer and sends the key alone):
    // the stored chain still, alone and in a batch.
    let mut bare = on("r1");
    bare["unique_key"] = json!("k");
    let (status, again) = api.enqueue(bare.clone()).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(answered_ids_exist(&api, &again).await, stored, "{again:#}");
    let (status, body) = batch(&api, vec![bare]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        answered_ids_exist(&api, &body["jobs"][0]["job"]).await,
        stored,
        "{body:#}"
    );

    let mut single = on("r2");
    single["unique_key"] = json!("s");
    let (status, one) = api.enqueue(single.clone()).await;
    assert_eq!(status, 201, "{one}");
    single["then"] = json!([noop()]);
    let (status, again) = api.enqueue(single).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        answered_ids_exist(&api, &again).await,
        [one["id"].as_str().unwrap()],
        "the single job, without steps: {again:#}"
    );

    let mut chain = on("r3");
    chain["unique_key"] = json!("twice");
    chain["then"] = json!([noop()]);
    let (status, body) = batch(&api, vec![chain.clone(), chain]).await;
    assert_eq!(status, 201, "{body}");
    let made = answered_ids_exist(&api, &body["jobs"][0]["job"]).await;
    assert_eq!(body["jobs"][1]["status"], 200, "{body:#}");
    assert_eq!(
        answered_ids_exist(&api, &body["jobs"][1]["job"]).await,
        made,
        "the chain the same batch stored"
    );
    assert_eq!(api.counts("r3").await["waiting"], 1, "{body:#}");
}

#[tokio::test]
async fn a_replay_answers_only_stored_steps_sqlite() {
    a_replay_answers_only_stored_steps(&Scratch::with_config("")).await;
}

#[tokio::test]
async fn a_replay_answers_only_stored_steps_redis() {
    let keys = RedisKeys::claim();
    let s = Scratch::new();
    s.write_config_with_broker(SHARED_URL, &keys.prefix, "");
    a_replay_answers_only_stored_steps(&s).await;
}

#[tokio::test]
async fn taken_chain_across_a_large_batch_sqlite() {
    taken_chain_across_a_large_batch(&Scratch::with_config("")).await;
}

#[tokio::test]
async fn taken_chain_across_a_large_batch_redis() {
    let keys = RedisKeys::claim();
    let s = Scratch::new();
    s.write_config_with_broker(SHARED_URL, &keys.prefix, "");
    taken_chain_across_a_large_batch(&s).await;
}

#[tokio::test]
async fn batch_answers_each_in_order_sqlite() {
    answers_each_in_order(&Scratch::with_config("")).await;
}

#[tokio::test]
async fn batch_answers_each_in_order_redis() {
    let keys = RedisKeys::claim();
    let s = Scratch::new();
    s.write_config_with_broker(SHARED_URL, &keys.prefix, "");
    answers_each_in_order(&s).await;
}

#[tokio::test]
async fn batch_is_all_or_none_sqlite() {
    all_or_none(&Scratch::with_config("")).await;
}

#[tokio::test]
async fn batch_is_all_or_none_redis() {
    let keys = RedisKeys::claim();
    let s = Scratch::new();
    s.write_config_with_broker(SHARED_URL, &keys.prefix, "");
    all_or_none(&s).await;
}

#[test]
fn enqueue_file_sqlite() {
    enqueue_file(&Scratch::with_config(""));
}

#[test]
fn enqueue_file_redis() {
    let keys = RedisKeys::claim();
    let s = Scratch::new();
    s.write_config_with_broker(SHARED_URL, &keys.prefix, "");
    enqueue_file(&s);
}

/// The batch route is behind the same token check as every `/v1` route.
#[tokio::test]
async fn batch_needs_the_token() {
    let s = Scratch::with_config("[auth]\ntokens = [\"s3cret\"]\n");
    let (_d, api) = s.serve(&["--no-workers"]);
    let (status, body) = batch(&api, vec![noop()]).await;
    assert_eq!(status, 401, "{body}");
    let res = api
        .http
        .post(format!("{}/v1/jobs/batch", api.base))
        .bearer_auth("s3cret")
        .json(&json!({"jobs": [noop()]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
}
