//! The event bus against the real binary: `POST /v1/publish` and `hopper publish` fanning an
//! event out to `[[subscription]]` jobs in one batch, its idempotency key, refusals naming
//! the field, and job events as topics (`job.dead`) relayed exactly once by several `serve`
//! processes on one Redis, across a restart, without loops.

#![allow(clippy::unwrap_used)]

use axum::http::Method;
use serde_json::{Value, json};

use crate::util::redis::{RedisKeys, SHARED_URL};
use crate::util::wait;
use crate::util::{Api, Scratch, count};

/// Two subscriptions on `user.created` (a templated number and a templated string), one on
/// `order.*` that the publishes below never match.
const SUBSCRIPTIONS: &str = r#"
[[subscription]]
topic = "user.created"
kind = "sys.sleep"
queue = "mail"
payload = { ms = "{{ data.ms }}" }

[[subscription]]
topic = "user.*"
kind = "sys.noop"
queue = "crm"
priority = 1
payload = { who = "{{ data.name }} <{{ data.email }}>", topic = "{{ topic }}", source = "signup" }

[[subscription]]
topic = "order.*"
kind = "sys.noop"
"#;

const WORKER: &str = "[worker]\nqueues = [\"default\", \"mail\", \"crm\"]\n";

async fn publish(api: &Api, body: Value) -> (u16, Value) {
    api.call(Method::POST, "/v1/publish", Some(&body)).await
}

fn ids(answer: &Value) -> Vec<String> {
    answer["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The acceptance case: publishing `user.created` with two matching subscriptions creates two
/// jobs together, they run and their results show; the replay with the same key creates none
/// and answers the first jobs; an unmatched topic is accepted with zero jobs and counted.
async fn publish_fans_out_runs_and_replays(s: &Scratch, api: &Api) {
    let event = json!({"topic": "user.created", "key": "signup-42",
        "data": {"ms": 5, "name": "Ann", "email": "ann@example.com"}});
    let (status, first) = publish(api, event.clone()).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["matched"], 2, "{first}");
    assert_eq!(first["duplicate"], false);
    let jobs = first["jobs"].as_array().unwrap();
    assert_eq!(
        jobs.iter()
            .map(|j| (
                j["subscription"].clone(),
                j["kind"].clone(),
                j["queue"].clone(),
                j["created"].clone()
            ))
            .collect::<Vec<_>>(),
        vec![
            (json!(0), json!("sys.sleep"), json!("mail"), json!(true)),
            (json!(1), json!("sys.noop"), json!("crm"), json!(true)),
        ]
    );
    let ids = ids(&first);
    let sleep_job = api.wait_state(&ids[0], "succeeded").await;
    assert_eq!(
        sleep_job["payload"],
        json!({"ms": 5}),
        "a lone expression keeps its type"
    );
    assert!(sleep_job["result"].is_object(), "{sleep_job:#}");
    let noop = api.wait_state(&ids[1], "succeeded").await;
    assert_eq!(
        noop["payload"],
        json!({"who": "Ann <ann@example.com>", "topic": "user.created", "source": "signup"})
    );
    assert_eq!(noop["priority"], 1);

    let (status, replay) = publish(api, event).await;
    assert_eq!(status, 200, "{replay}");
    assert_eq!(replay["duplicate"], true, "{replay}");
    assert_eq!(self::ids(&replay), ids, "the replay answers the first jobs");
    for q in ["mail", "crm"] {
        assert_eq!(
            count(&api.counts(q).await, "succeeded"),
            1,
            "{q}: nothing new"
        );
    }

    let (status, none) = publish(api, json!({"topic": "nobody.listens", "data": {}})).await;
    assert_eq!(
        (status, none["matched"].clone(), none["jobs"].clone()),
        (200, json!(0), json!([]))
    );

    // The CLI, through the broker: the same fan-out, the same key rule.
    let out = s.cli_json(&[
        "publish",
        "user.created",
        "--data",
        r#"{"ms":1,"name":"B","email":"b@x"}"#,
        "--key",
        "cli-1",
    ]);
    assert_eq!(
        (out["matched"].clone(), out["duplicate"].clone()),
        (json!(2), json!(false)),
        "{out}"
    );
    let again = s.cli_json(&[
        "publish",
        "user.created",
        "--data",
        r#"{"ms":1,"name":"B","email":"b@x"}"#,
        "--key",
        "cli-1",
    ]);
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(self::ids(&again), self::ids(&out));
    let out = s.cli(&["publish", "user.created", "--data", "[1]"]);
    assert_eq!(out.status.code(), Some(2), "--data must be an object");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--data"));
}

/// Bad input is a 400 naming the field, with nothing stored: a template whose data lacks a
/// field refuses the whole publish, not just its job.
async fn bad_publishes_name_the_field_and_store_nothing(api: &Api) {
    // Jobs of the earlier publishes may still move between states meanwhile: count them all.
    let stored = async || {
        (
            total(&api.counts("mail").await),
            total(&api.counts("crm").await),
        )
    };
    let before = stored().await;
    for (body, field) in [
        (json!({"data": {}}), "topic"),
        (json!({"topic": 7}), "topic"),
        (json!({"topic": "user.*"}), "topic"),
        (json!({"topic": "job.dead"}), "topic"),
        (json!({"topic": "user.created", "data": "x"}), "data"),
        (json!({"topic": "user.created", "key": ""}), "key"),
        (json!({"topic": "user.created", "extra": 1}), "extra"),
        // The `crm` subscription's template needs data.email: nothing is stored, not even the
        // `mail` job whose template was fine.
        (
            json!({"topic": "user.created", "data": {"ms": 1, "name": "C"}}),
            "data",
        ),
    ] {
        let (status, answer) = publish(api, body.clone()).await;
        assert_eq!(status, 400, "{body} -> {answer}");
        assert_eq!(answer["error"]["field"], field, "{body} -> {answer}");
    }
    // The refusal quotes the template that failed, not minijinja's `<string>`.
    let (_, answer) = publish(
        api,
        json!({"topic": "user.created", "data": {"ms": 1, "name": "C"}}),
    )
    .await;
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("undefined value")
            && message.contains("in \"{{ data.name }} <{{ data.email }}>\"")
            && !message.contains("<string>"),
        "{answer}"
    );
    assert_eq!(stored().await, before);
}

/// What `/metrics` shows now.
async fn metrics_text(api: &Api) -> String {
    reqwest::get(format!("{}/metrics", api_base(api)))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Every job of a queue, whatever its state, from its counts.
fn total(counts: &serde_json::Value) -> u64 {
    counts.as_object().map_or(0, |c| {
        c.values().filter_map(serde_json::Value::as_u64).sum()
    })
}

#[tokio::test]
async fn publish_on_sqlite() {
    let s = Scratch::with_config(&format!("{WORKER}{SUBSCRIPTIONS}"));
    let (_d, api) = s.serve(&[]);
    publish_fans_out_runs_and_replays(&s, &api).await;
    bad_publishes_name_the_field_and_store_nothing(&api).await;
    let text = metrics_text(&api).await;
    assert!(
        text.lines().any(|l| l.starts_with("hopper_publish_total")
            && l.contains(r#"topic="(unmatched)""#)
            && l.contains(r#"matched="false""#)),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("hopper_publish_total")
            && l.contains(r#"topic="user.created""#)
            && l.contains(r#"matched="true""#)),
        "{text}"
    );
}

#[tokio::test]
async fn publish_on_redis() {
    let keys = RedisKeys::claim();
    let s = Scratch::new();
    s.write_config_with_broker(
        SHARED_URL,
        &keys.prefix,
        &format!("{WORKER}{SUBSCRIPTIONS}"),
    );
    let (_d, api) = s.serve(&[]);
    publish_fans_out_runs_and_replays(&s, &api).await;
    bad_publishes_name_the_field_and_store_nothing(&api).await;
}

/// `{"x": {"x": ... 1}}` with `levels` objects.
fn nested(levels: usize) -> Value {
    (0..levels).fold(json!(1), |v, _| json!({ "x": v }))
}

/// A template that nests `data` deeper than it came (here two levels) cannot make a job that
/// the broker stores but cannot read back: such a job failed every fetch of its queue, so no
/// job of `default` ran again, and listing or reading it answered 500. The publish is a 400
/// naming `data`; nothing is stored; the queue keeps running.
#[tokio::test]
async fn a_publish_nested_too_deep_for_its_job_is_refused_and_the_queue_runs_on() {
    let s = Scratch::with_config(
        "[[subscription]]\ntopic = \"deep.*\"\nkind = \"sys.noop\"\n\
         payload = { a = { b = \"{{ data }}\" } }\n",
    );
    let (_d, api) = s.serve(&[]);
    // The body nests 127 levels (the most JSON parsing takes), its job's payload 128.
    let (status, answer) = publish(&api, json!({"topic": "deep.a", "data": nested(126)})).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["field"], "data", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nests more than"),
        "{answer}"
    );
    let (status, listed) = api.call(Method::GET, "/v1/jobs?queue=default", None).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["jobs"], json!([]), "nothing stored");

    let (status, ok) = publish(&api, json!({"topic": "deep.a", "data": nested(3)})).await;
    assert_eq!(status, 201, "{ok}");
    let job = api.wait_state(&ids(&ok)[0], "succeeded").await;
    assert_eq!(job["payload"]["a"]["b"], nested(3));
    let id = api.enqueue_ok(json!({"kind": "sys.noop"})).await;
    api.wait_state(&id, "succeeded").await;
}

/// A publish is rendered while its request waits: a subscription template looping over
/// `data`'s lists within each other held the request (and a thread of the API) for as long
/// as it ran, and one repeating a long string filled the memory. Both are bounded now: a 400
/// naming `data`, quickly, and nothing stored.
#[tokio::test]
async fn a_runaway_subscription_template_is_a_400_not_a_hung_request() {
    let s = Scratch::with_config(
        "[[subscription]]\ntopic = \"grid.made\"\nkind = \"sys.noop\"\n\
         payload = { n = \"{% for r in data.rows %}{% for c in data.rows %}{% if r == c %}={% endif %}{% endfor %}{% endfor %}\" }\n\n\
         [[subscription]]\ntopic = \"wide.made\"\nkind = \"sys.noop\"\n\
         payload = { text = \"{% for r in data.rows %}{{ data.text }}{% endfor %}\" }\n",
    );
    let (_d, api) = s.serve(&["--no-workers"]);
    let rows: Vec<u32> = (0..3000).collect();
    let started = std::time::Instant::now();
    for (body, says) in [
        (
            json!({"topic": "grid.made", "data": {"rows": rows}}),
            "fuel",
        ),
        (
            json!({"topic": "wide.made",
                   "data": {"rows": &rows[..1000], "text": "x".repeat(100_000)}}),
            "bytes",
        ),
    ] {
        let (status, answer) = publish(&api, body).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["field"], "data", "{answer}");
        assert!(
            answer["error"]["message"].as_str().unwrap().contains(says),
            "{answer}"
        );
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let (status, listed) = api.call(Method::GET, "/v1/jobs?queue=default", None).await;
    assert_eq!(
        (status, listed["jobs"].clone()),
        (200, json!([])),
        "nothing stored"
    );
    // Nor counted as published (`hopper_publish_total` counted refused publishes).
    let text = metrics_text(&api).await;
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("hopper_publish_total") && l.contains("made")),
        "{text}"
    );
    // An ordinary publish of the same subscriptions goes through.
    let (status, ok) = publish(
        &api,
        json!({"topic": "grid.made", "data": {"rows": [1, 2]}}),
    )
    .await;
    assert_eq!(status, 201, "{ok}");
}

fn api_base(api: &Api) -> String {
    api.base.clone()
}

/// `job.dead` subscriptions: `alerts` records which job died (its payload names it); `doomed`
/// is an alert job that itself dies, whose death must trigger nothing (no loops).
const ALERTS: &str = r#"
[worker]
queues = ["work", "alerts", "doomed"]

[retry]
backoff_base = "10ms"
backoff_max = "10ms"

[[subscription]]
topic = "job.dead"
filter = { queue = "work" }
kind = "sys.noop"
queue = "alerts"
payload = { job = "{{ data.job_id }}", error = "{{ data.error }}", attempt = "{{ data.attempt }}" }

[[subscription]]
topic = "job.dead"
kind = "sys.fail"
queue = "doomed"
payload = { permanent = true }
filter = { kind = "sys.fail" }
"#;

/// The alerts (their payloads) and doomed alert jobs now stored.
async fn alerts(api: &Api) -> (Vec<Value>, usize) {
    let mut payloads = Vec::new();
    for state in ["queued", "running", "succeeded"] {
        payloads.extend(
            api.all_jobs("alerts", state)
                .await
                .into_iter()
                .map(|j| j["payload"].clone()),
        );
    }
    let mut doomed = 0;
    for state in ["queued", "running", "retrying", "dead"] {
        doomed += api.all_jobs("doomed", state).await.len();
    }
    (payloads, doomed)
}

/// A job that dies, with two `serve` processes relaying on one Redis, makes exactly one alert
/// (and one doomed job, whose own death makes nothing); after both restart, a second death
/// makes exactly one more, and the first is not relayed again.
#[tokio::test]
async fn a_dead_job_makes_exactly_one_alert_across_nodes_and_restarts() {
    let keys = RedisKeys::claim();
    let s = Scratch::new();
    s.write_config_with_broker(SHARED_URL, &keys.prefix, ALERTS);
    let (mut a, api) = s.serve(&[]);
    let (mut b, api_b) = s.serve(&[]);

    let dies =
        json!({"kind": "sys.fail", "queue": "work", "max_retries": 1, "payload": {"times": 99}});
    let first = api.enqueue_ok(dies.clone()).await;
    api.wait_state(&first, "dead").await;
    let (payloads, _) = wait::until("one alert for the dead job", async || {
        let (payloads, doomed) = alerts(&api_b).await;
        if payloads.len() == 1 && doomed == 1 {
            Ok((payloads, doomed))
        } else {
            Err(format!("{payloads:?}, {doomed} doomed"))
        }
    })
    .await;
    assert_eq!(payloads[0]["job"], json!(first));
    assert_eq!(
        payloads[0]["attempt"],
        json!(2),
        "the event's fields are the data"
    );
    // The doomed alert job dies; its death (and everything else) triggers nothing more.
    wait::until("the doomed job dies", async || {
        let dead = api.all_jobs("doomed", "dead").await.len();
        if dead == 1 {
            Ok(())
        } else {
            Err(format!("{dead} dead"))
        }
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(alerts(&api).await.0.len(), 1, "exactly one alert, no loop");
    assert_eq!(alerts(&api).await.1, 1, "exactly one doomed job, no loop");

    a.stop("TERM");
    b.stop("TERM");
    let (_b, api) = s.serve(&[]);
    let second = api.enqueue_ok(dies).await;
    api.wait_state(&second, "dead").await;
    let payloads = wait::until("a second alert", async || {
        let (payloads, doomed) = alerts(&api).await;
        if payloads.len() >= 2 && doomed >= 2 {
            Ok(payloads)
        } else {
            Err(format!("{payloads:?}, {doomed} doomed"))
        }
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let (payloads_now, doomed) = alerts(&api).await;
    assert_eq!(payloads_now.len(), 2, "{payloads:?}");
    assert_eq!(doomed, 2);
    let mut jobs: Vec<&Value> = payloads_now.iter().map(|p| &p["job"]).collect();
    jobs.sort_by_key(|v| v.to_string());
    let mut want = [json!(first), json!(second)];
    want.sort_by_key(|v| v.to_string());
    assert_eq!(jobs, want.iter().collect::<Vec<_>>());
}

/// A subscription to a kind this build does not have is a config error naming it (exit 2),
/// from `check-config` and from `serve` before it listens.
#[test]
fn an_unknown_subscription_kind_is_a_config_error() {
    let s =
        Scratch::with_config("[[subscription]]\ntopic = \"user.created\"\nkind = \"no.such\"\n");
    for args in [&["check-config"][..], &["serve"][..]] {
        let out = s.cli(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("subscription[0].kind"), "{args:?}: {err}");
    }
}

/// `hopper bench --workload publish`, run small: every publish made 3 jobs, the rates agree
/// with that, and the bench queue is gone afterwards.
#[test]
fn the_publish_bench_reports_consistent_figures() {
    let s = Scratch::with_config("");
    let r = s.cli_json(&[
        "bench",
        "--workload",
        "publish",
        "--jobs",
        "40",
        "--clients",
        "2",
    ]);
    assert_eq!(r["workload"], "publish", "{r}");
    assert_eq!(r["broker"], "sqlite", "{r}");
    assert_eq!(
        (r["publishes"].as_u64(), r["jobs"].as_u64()),
        (Some(40), Some(120)),
        "{r}"
    );
    assert_eq!(r["concurrency"], 2, "{r}");
    let publishes = r["publishes_per_s"].as_f64().unwrap();
    let jobs = r["enqueue_jobs_per_s"].as_f64().unwrap();
    assert!(publishes > 0.0, "{r}");
    // Both rounded to 0.1 from one elapsed time.
    assert!((jobs - 3.0 * publishes).abs() <= 0.5, "{r}");
    assert!(r["processed_jobs_per_s"].is_null(), "{r}");
    let queues = s.cli_json(&["queues"]);
    assert!(
        !queues["queues"]
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["queue"].as_str().unwrap().starts_with("bench-")),
        "{queues}"
    );
}

/// The key's limit is 200 bytes of UTF-8 (its jobs' unique keys are bounded in bytes), and
/// the refusal says so in the unit it counts: a key of 100 `é` (200 bytes) is taken, one of
/// 101 `é` (101 characters, 202 bytes) is refused naming `key`, its size and the unit.
#[tokio::test]
async fn publish_key_limit_is_counted_and_told_in_bytes() {
    let s = Scratch::with_config(&format!("{WORKER}{SUBSCRIPTIONS}"));
    let (_d, api) = s.serve(&["--no-workers"]);
    let at_limit = "é".repeat(100);
    let (status, answer) = publish(
        &api,
        json!({"topic": "order.paid", "key": at_limit, "data": {}}),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let over = "é".repeat(101);
    let (status, answer) = publish(&api, json!({"topic": "order.paid", "key": over})).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["field"], "key", "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("200 bytes") && message.contains("202") && !message.contains("character"),
        "{answer}"
    );
    let out = s.cli(&["publish", "order.paid", "--key", &"é".repeat(101)]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("200 bytes"), "{stderr}");
}
