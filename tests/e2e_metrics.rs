//! `GET /metrics`: a known mix of jobs run by a real `hopper serve` on a SQLite file, then
//! scraped and read with a Prometheus text parser (`prometheus-parse`): outcome counters,
//! queue gauges, histograms, route templates; the token rule; `hopper worker`'s
//! `[worker] metrics_listen`.

#![allow(clippy::unwrap_used)]

use openmetrics_parser::prometheus::parse_prometheus;
use openmetrics_parser::{MetricsExposition, PrometheusType, PrometheusValue};
use serde_json::json;

use crate::util::{Scratch, noop, sleep, wait};

type Scrape = MetricsExposition<PrometheusType, PrometheusValue>;

/// GETs `url` (with `token` as a bearer token if given) and parses the text; panics unless
/// it is a 200 that the Prometheus text grammar accepts whole.
async fn scrape(url: &str, token: Option<&str>) -> Scrape {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = resp.text().await.unwrap();
    parse_prometheus(&text).unwrap_or_else(|e| panic!("not Prometheus text ({e}):\n{text}"))
}

/// The values of family `metric` whose labels include `labels`.
fn samples<'a>(
    s: &'a Scrape,
    metric: &str,
    labels: &'a [(&str, &str)],
) -> impl Iterator<Item = (Vec<(String, String)>, &'a PrometheusValue)> {
    s.families
        .get(metric)
        .into_iter()
        .flat_map(|f| f.iter_samples())
        .filter_map(move |x| {
            let set = x.get_labelset().unwrap();
            let pairs: Vec<(String, String)> =
                set.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let has = |k: &str, v: &str| pairs.iter().any(|(pk, pv)| pk == k && pv == v);
            labels
                .iter()
                .all(|(k, v)| has(k, v))
                .then_some((pairs, &x.value))
        })
}

/// The sum of the counter or gauge values of `metric` with `labels` (0 when there is none).
fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    samples(s, metric, labels)
        .map(|(_, v)| match v {
            PrometheusValue::Counter(c) => c.value.as_f64(),
            PrometheusValue::Gauge(g) | PrometheusValue::Unknown(g) => g.as_f64(),
            other => panic!("{metric} is not a single value: {other:?}"),
        })
        .sum()
}

/// The number of observations of histogram `metric` with `labels`.
fn observed(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    samples(s, metric, labels)
        .map(|(_, v)| match v {
            PrometheusValue::Histogram(h) => h.count.unwrap_or(0) as f64,
            other => panic!("{metric} is not a histogram: {other:?}"),
        })
        .sum()
}

fn finished(s: &Scrape, kind: &str, outcome: &str) -> f64 {
    value(
        s,
        "hopper_jobs_finished_total",
        &[("queue", "default"), ("kind", kind), ("outcome", outcome)],
    )
}

/// 5 `sys.noop`; 2 `sys.fail` failing once (2 retrying, 2 succeeded); 1 failing for ever with
/// one retry (1 retrying, 1 dead); 1 failing permanently (1 dead); 1 long `sys.sleep`
/// cancelled. The scrape shows exactly those outcomes, the queue's counts by state, run and
/// pickup histograms, busy and idle slots, broker call times, and HTTP requests under their
/// route templates only.
#[tokio::test]
async fn metrics_count_a_known_mix_of_jobs() {
    let s = Scratch::with_config("[retry]\nbackoff_base = \"10ms\"\nbackoff_max = \"50ms\"\n");
    let (_d, api) = s.serve(&[]);
    let url = format!("{}/metrics", api.base);
    let mut ids = api.enqueue_n(5, &noop()).await;
    for _ in 0..2 {
        ids.push(
            api.enqueue_ok(json!({"kind": "sys.fail", "payload": {"times": 1}, "max_retries": 3}))
                .await,
        );
    }
    let forever = api
        .enqueue_ok(json!({"kind": "sys.fail", "payload": {"times": 99}, "max_retries": 1}))
        .await;
    let permanent = api
        .enqueue_ok(json!({"kind": "sys.fail", "payload": {"permanent": true}}))
        .await;
    let long = api.enqueue_ok(sleep(600_000)).await;
    api.wait_all(&ids, "succeeded").await;
    api.wait_state(&forever, "dead").await;
    api.wait_state(&permanent, "dead").await;
    api.wait_state(&long, "running").await;
    let (status, body) = api.post(&format!("/v1/jobs/{long}/cancel")).await;
    assert_eq!(status, 200, "{body}");

    // Every outcome above was counted before its state was written, but the queue gauges come
    // from a cache up to a second old: wait for them to show the cancel.
    // The cancel is counted from the event log, as the hub reads it.
    let m = wait::until("the queue gauges to show the cancelled job", async || {
        let m = scrape(&url, None).await;
        let cancelled = value(
            &m,
            "hopper_queue_jobs",
            &[("queue", "default"), ("state", "cancelled")],
        );
        if cancelled == 1.0 && finished(&m, "sys.sleep", "cancelled") == 1.0 {
            Ok(m)
        } else {
            Err(format!("cancelled = {cancelled}"))
        }
    })
    .await;

    assert_eq!(finished(&m, "sys.noop", "succeeded"), 5.0);
    assert_eq!(finished(&m, "sys.fail", "succeeded"), 2.0);
    assert_eq!(finished(&m, "sys.fail", "retrying"), 3.0);
    assert_eq!(finished(&m, "sys.fail", "dead"), 2.0);
    assert_eq!(finished(&m, "sys.sleep", "cancelled"), 1.0);
    assert_eq!(finished(&m, "sys.sleep", "interrupted"), 0.0);
    for (state, n) in [
        ("succeeded", 7.0),
        ("dead", 2.0),
        ("cancelled", 1.0),
        ("queued", 0.0),
        ("running", 0.0),
        ("retrying", 0.0),
    ] {
        let got = value(
            &m,
            "hopper_queue_jobs",
            &[("queue", "default"), ("state", state)],
        );
        assert_eq!(got, n, "hopper_queue_jobs state={state}");
    }

    // Attempts started: 5 noop, 2 * 2 failing once, 2 failing for ever, 1 permanent, 1 sleep.
    // Each has a run time once its handler returned, the cancelled sleep's once it stopped.
    let runs = observed(&m, "hopper_job_run_seconds", &[("queue", "default")]);
    assert!(runs >= 12.0, "hopper_job_run_seconds count {runs}");
    let noop_runs = observed(
        &m,
        "hopper_job_run_seconds",
        &[("queue", "default"), ("kind", "sys.noop")],
    );
    assert_eq!(noop_runs, 5.0);
    let pickups = observed(&m, "hopper_job_pickup_seconds", &[("queue", "default")]);
    assert_eq!(pickups, 13.0, "one pickup per attempt started");

    let busy = value(&m, "hopper_worker_slots", &[("state", "busy")]);
    let idle = value(&m, "hopper_worker_slots", &[("state", "idle")]);
    assert_eq!(busy + idle, 16.0, "busy {busy} idle {idle}");
    assert!(observed(&m, "hopper_broker_call_seconds", &[("op", "fetch")]) > 0.0);
    assert!(observed(&m, "hopper_broker_call_seconds", &[("op", "finish")]) > 0.0);

    let job_gets = value(
        &m,
        "hopper_http_requests_total",
        &[("route", "/v1/jobs/{id}"), ("status", "200")],
    );
    let routes: Vec<String> = samples(&m, "hopper_http_requests_total", &[])
        .flat_map(|(labels, _)| labels.into_iter().filter(|(k, _)| k == "route"))
        .map(|(_, v)| v)
        .collect();
    assert!(
        job_gets >= 1.0,
        "GET /v1/jobs/{{id}} counted under its template: {routes:?}"
    );
    assert_eq!(
        value(
            &m,
            "hopper_http_requests_total",
            &[("route", "/v1/jobs/{id}/cancel"), ("status", "200")],
        ),
        1.0
    );
    let raw: Vec<_> = routes
        .iter()
        .filter(|r| r.contains(long.as_str()))
        .collect();
    assert!(raw.is_empty(), "a raw path became a label: {raw:?}");
    assert!(
        value(
            &m,
            "hopper_events_published_total",
            &[("type", "job.succeeded")]
        ) >= 7.0
    );
}

/// A cancel is counted wherever it happens: `hopper cancel` in another process (which no
/// scrape reaches) as well as `POST /v1/jobs/{id}/cancel`, each once, read from the event log
/// by the server's hub.
#[tokio::test]
async fn cancels_from_the_cli_and_the_api_are_counted_once() {
    let s = Scratch::with_config("");
    let (_d, api) = s.serve(&[]);
    let url = format!("{}/metrics", api.base);
    let later = json!({"kind": "sys.noop", "delay": "1h"});
    let by_cli = api.enqueue_ok(later.clone()).await;
    let by_api = api.enqueue_ok(later).await;
    let cancelled = async |n: f64| {
        wait::until(&format!("{n} cancels counted"), async || {
            let m = scrape(&url, None).await;
            let counted = finished(&m, "sys.noop", "cancelled");
            if counted == n {
                Ok(())
            } else {
                Err(format!("{counted}"))
            }
        })
        .await;
    };
    let out = s.cli_ok(&["cancel", &by_cli]);
    assert!(out.contains("1 job cancelled"), "{out}");
    cancelled(1.0).await;
    let (status, body) = api.post(&format!("/v1/jobs/{by_api}/cancel")).await;
    assert_eq!(status, 200, "{body}");
    cancelled(2.0).await;
    // Once each: the hub has read past both events; nothing counts them again.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let m = scrape(&url, None).await;
    assert_eq!(finished(&m, "sys.noop", "cancelled"), 2.0);
}

/// With `[auth] tokens`, `/metrics` asks for one like `/v1` does; `/healthz` does not.
#[tokio::test]
async fn metrics_need_the_token_when_tokens_are_set() {
    let s = Scratch::with_config("[auth]\ntokens = [\"s3cret\"]\n");
    let (_d, api) = s.serve(&["--no-workers"]);
    let url = format!("{}/metrics", api.base);
    let refused = reqwest::get(&url).await.unwrap();
    assert_eq!(refused.status(), 401);
    let wrong = reqwest::Client::new()
        .get(&url)
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    scrape(&url, Some("s3cret")).await;
    let health = reqwest::get(format!("{}/healthz", api.base)).await.unwrap();
    assert_eq!(health.status(), 200);
}

/// `hopper worker` with `[worker] metrics_listen` serves `/metrics` there, counting the jobs
/// it ran.
#[tokio::test]
async fn worker_serves_metrics_on_metrics_listen() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = Scratch::with_config(&format!(
        "[worker]\nmetrics_listen = \"127.0.0.1:{port}\"\n"
    ));
    let (_d, api) = s.serve(&["--no-workers"]);
    let w = s.start(&["worker"]);
    w.wait_log("serving /metrics on");
    let ids = api.enqueue_n(3, &noop()).await;
    api.wait_all(&ids, "succeeded").await;
    let m = scrape(&format!("http://127.0.0.1:{port}/metrics"), None).await;
    assert_eq!(finished(&m, "sys.noop", "succeeded"), 3.0);
    assert_eq!(
        value(&m, "hopper_worker_slots", &[("state", "busy")])
            + value(&m, "hopper_worker_slots", &[("state", "idle")]),
        16.0
    );
}

/// A worker killed (SIGKILL) mid-job counts nothing itself: the node whose rescuer returns
/// the job to its queue once the lease expires counts that attempt `interrupted`, then the
/// next attempt's `succeeded`, so the sum across nodes tells every attempt, a crashed node's
/// included.
#[tokio::test]
async fn an_attempt_of_a_killed_worker_is_counted_interrupted_by_its_rescuer() {
    let s = Scratch::with_config("[worker]\nlease = \"2s\"\nheartbeat = \"500ms\"\n");
    let mut w = s.start(&["worker"]);
    w.wait_log("worker pool started");
    let out = s.cli_ok(&["enqueue", "sys.sleep", "--payload", "{\"ms\": 3000}"]);
    let id = out.trim().to_owned();
    wait::until_blocking("the job never ran on the worker", || {
        let job = s.cli_job(&id);
        if job["state"] == "running" {
            Ok(())
        } else {
            Err(format!("{job:#}"))
        }
    });
    w.stop("KILL");

    let (_d, api) = s.serve(&[]);
    let done = api.wait_state(&id, "succeeded").await;
    assert_eq!(done["interruptions"], 1, "{done:#}");
    let m = scrape(&format!("{}/metrics", api.base), None).await;
    assert_eq!(finished(&m, "sys.sleep", "interrupted"), 1.0);
    assert_eq!(finished(&m, "sys.sleep", "succeeded"), 1.0);
}

/// The `queue` label values of `metric`.
fn queue_labels(s: &Scrape, metric: &str) -> std::collections::BTreeSet<String> {
    samples(s, metric, &[])
        .flat_map(|(labels, _)| labels.into_iter().filter(|(k, _)| k == "queue"))
        .map(|(_, v)| v)
        .collect()
}

/// Queue names come from clients: a client posting to more distinct queues than the default
/// cap (1,000) does not grow `/metrics` by a series per name. The first queues keep their
/// label, the rest are summed under `queue="_other"`, and no job goes uncounted.
#[tokio::test]
async fn queue_labels_are_capped_by_default() {
    let s = Scratch::with_config("");
    let (_d, api) = s.serve(&["--no-workers"]);
    let queues: Vec<String> = (0..1100).map(|i| format!("tenant-{i:04}")).collect();
    api.one_job_per_queue(&queues).await;
    let m = scrape(&format!("{}/metrics", api.base), None).await;
    let labels = queue_labels(&m, "hopper_queue_jobs");
    // 1,000 values and `_other` (the configured queues count among the 1,000 when seen).
    assert!(labels.len() <= 1001, "{} queue label values", labels.len());
    assert!(
        labels.contains("_other"),
        "no _other among {} labels",
        labels.len()
    );
    // Besides the tenants' jobs, the retention job of `hopper.maintenance` (a configured queue).
    let queued = value(&m, "hopper_queue_jobs", &[("state", "queued")])
        - value(
            &m,
            "hopper_queue_jobs",
            &[("queue", "hopper.maintenance"), ("state", "queued")],
        );
    assert_eq!(
        queued, 1100.0,
        "every queued job counted once, folded or not"
    );
}

/// `[worker] metrics_max_label_values` sets the cap: a configured queue keeps its label,
/// queues past the cap read `_other` (their jobs summed) in the queue gauges and in the job
/// families (here the cancels the event hub counts, whatever their queue), and the fold is
/// logged once.
#[tokio::test]
async fn metrics_max_label_values_folds_queues_past_it() {
    let s = Scratch::with_config(
        "[worker]\nqueues = [\"default\", \"zz-late\"]\nmetrics_max_label_values = 3\n",
    );
    let (d, api) = s.serve(&["--no-workers"]);
    let mut ids = Vec::new();
    for i in 0..20 {
        let job = json!({"kind": "sys.noop", "queue": format!("q{i:02}"), "delay": "1h"});
        ids.push(api.enqueue_ok(job).await);
    }
    api.enqueue_ok(json!({"kind": "sys.noop", "queue": "zz-late", "delay": "1h"}))
        .await;
    for id in &ids {
        let (status, body) = api.post(&format!("/v1/jobs/{id}/cancel")).await;
        assert_eq!(status, 200, "{body}");
    }
    let url = format!("{}/metrics", api.base);
    let m = wait::until("the 20 cancels counted", async || {
        let m = scrape(&url, None).await;
        let cancelled = value(
            &m,
            "hopper_jobs_finished_total",
            &[("outcome", "cancelled")],
        );
        if cancelled == 20.0 {
            Ok(m)
        } else {
            Err(format!("{cancelled}"))
        }
    })
    .await;
    let gauges = queue_labels(&m, "hopper_queue_jobs");
    assert!(gauges.len() <= 4, "{gauges:?}");
    assert!(gauges.contains("_other"), "{gauges:?}");
    assert!(
        gauges.contains("zz-late"),
        "a configured queue keeps its label: {gauges:?}"
    );
    assert_eq!(
        value(&m, "hopper_queue_jobs", &[("state", "cancelled")]),
        20.0
    );
    assert_eq!(
        value(
            &m,
            "hopper_queue_jobs",
            &[("queue", "zz-late"), ("state", "scheduled")]
        ),
        1.0
    );
    let finished = queue_labels(&m, "hopper_jobs_finished_total");
    assert!(finished.len() <= 4, "{finished:?}");
    assert!(finished.contains("_other"), "{finished:?}");
    d.wait_log("metrics_max_label_values");
    let warned = d.log_text().matches("metrics_max_label_values").count();
    assert_eq!(warned, 1, "warned once:\n{}", d.log_text());
}

/// The sum of the observations of histogram `metric` with `labels`, in its unit.
fn observed_sum(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    samples(s, metric, labels)
        .map(|(_, v)| match v {
            PrometheusValue::Histogram(h) => h.sum.as_ref().map_or(0.0, |n| n.as_f64()),
            other => panic!("{metric} is not a histogram: {other:?}"),
        })
        .sum()
}

/// Pickup is how long a job waited while it could run. A job rescued after its worker was
/// killed keeps its first due time (its place in line), so "now - due" at its next start
/// would be the dead attempt's run and the lease's expiry, seconds no job waited: that
/// attempt records no pickup, while an ordinary job's pickup is still recorded.
#[tokio::test]
async fn a_rescued_attempt_records_no_bogus_pickup() {
    let s = Scratch::with_config("[worker]\nlease = \"2s\"\nheartbeat = \"500ms\"\n");
    let mut w = s.start(&["worker"]);
    w.wait_log("worker pool started");
    // Long enough to be still running when it is killed a second after it was seen running,
    // however slow the polling CLI (a process per look) is on a loaded machine.
    let out = s.cli_ok(&["enqueue", "sys.sleep", "--payload", "{\"ms\": 5000}"]);
    let id = out.trim().to_owned();
    wait::until_blocking("the job never ran on the worker", || {
        let job = s.cli_job(&id);
        if job["state"] == "running" {
            Ok(())
        } else {
            Err(format!("{job:#}"))
        }
    });
    // Let the attempt run a while, as a real one would, before its worker dies.
    std::thread::sleep(std::time::Duration::from_millis(1000));
    w.stop("KILL");

    let (_d, api) = s.serve(&[]);
    let done = api.wait_state(&id, "succeeded").await;
    assert_eq!(done["interruptions"], 1, "{done:#}");
    let fresh = api.enqueue_n(1, &noop()).await;
    api.wait_all(&fresh, "succeeded").await;
    let m = scrape(&format!("{}/metrics", api.base), None).await;
    let labels = [("queue", "default")];
    let count = observed(&m, "hopper_job_pickup_seconds", &labels);
    let sum = observed_sum(&m, "hopper_job_pickup_seconds", &labels);
    assert_eq!(count, 1.0, "only the fresh job's pickup (sum {sum} s)");
    // The one pickup is the fresh job's: short, though a loaded machine may take a second or
    // two; the rescued attempt's would hold its dead run and the lease's expiry.
    assert!(sum < 5.0, "a pickup of {sum} s recorded");
    let help = &m.families["hopper_job_pickup_seconds"].help;
    assert!(
        help.contains("rescue"),
        "the help says what is left out: {help}"
    );
}

/// A queue served with a weight (`[worker] queues = ["zz-late:3"]`) is a configured queue
/// like any other: it keeps its own label past `metrics_max_label_values`, under its name,
/// not under the entry as written ("zz-late:3", a label no job ever has).
#[tokio::test]
async fn a_weighted_configured_queue_keeps_its_label_past_the_cap() {
    let s = Scratch::with_config(
        "[worker]\nqueues = [\"default\", \"zz-late:3\"]\nmetrics_max_label_values = 1\n",
    );
    let (_d, api) = s.serve(&["--no-workers"]);
    for i in 0..3 {
        api.enqueue_ok(json!({"kind": "sys.noop", "queue": format!("q{i}"), "delay": "1h"}))
            .await;
    }
    api.enqueue_ok(json!({"kind": "sys.noop", "queue": "zz-late", "delay": "1h"}))
        .await;
    let m = scrape(&format!("{}/metrics", api.base), None).await;
    let gauges = queue_labels(&m, "hopper_queue_jobs");
    assert!(gauges.contains("_other"), "{gauges:?}");
    assert_eq!(
        value(
            &m,
            "hopper_queue_jobs",
            &[("queue", "zz-late"), ("state", "scheduled")]
        ),
        1.0,
        "a configured queue keeps its label: {gauges:?}"
    );
}

/// A fresh node's first scrape has every family without labels at 0: an alert on
/// `increase(hopper_leases_lost_total[5m]) > 0` or a dashboard of open streams needs the series
/// before the first event, not from it on (an absent series reads as "no data", not 0).
#[tokio::test]
async fn families_without_labels_are_scraped_at_zero_from_the_start() {
    let s = Scratch::with_config("");
    let (_d, api) = s.serve(&[]);
    let m = scrape(&format!("{}/metrics", api.base), None).await;
    for family in [
        "hopper_heartbeat_failures_total",
        "hopper_leases_lost_total",
        "hopper_ws_connections",
        "hopper_notification_connections",
    ] {
        assert!(
            m.families.contains_key(family),
            "{family} is missing from a fresh scrape"
        );
        assert_eq!(value(&m, family, &[]), 0.0, "{family}");
    }
}
