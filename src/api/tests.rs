//! API tests through `oneshot`, no socket.
//!
//! Bad-input cases run against [`Unreachable`], a broker that fails every call, which proves
//! the request is refused before the broker is asked. Cases that need stored jobs run on a
//! real SQLite broker in a temporary directory.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use hopper_workers::broker::{
    Appended, Enqueued, Finish, InboxEntry, JobFilter, JobPage, JobRate, LeaseStatus,
    NewInboxEntry, QueueStats, RatedFetch, Rescued, WebPush,
};
use hopper_workers::clock::{self, Clock};
use hopper_workers::error::{BrokerError, BrokerResult};
use hopper_workers::event::Event;
use hopper_workers::job::{Job, JobId, JobState, Lease, NewJob};
use hopper_workers::nodes::WorkerNode;
use hopper_workers::time::Timestamp;
use hopper_workers::{Broker, Registry};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use super::{AppState, router};

mod openapi;
use crate::config::Config;

/// A broker that is never reachable.
/// A broker that fails every call, in one of three ways.
#[derive(Debug, Default)]
struct Unreachable {
    fault: Fault,
}

#[derive(Debug, Default, Clone, Copy)]
enum Fault {
    /// The broker cannot be reached (503).
    #[default]
    Down,
    /// The broker answers with an internal failure whose text must not reach clients (500).
    Broken,
    /// A bug: the call panics (500, the connection kept).
    Panics,
}

/// What the faulty calls carry; a test checks it never reaches a client.
const SECRET_DETAIL: &str = "secret-detail-of-the-failure";

impl Unreachable {
    fn down<T>(&self) -> BrokerResult<T> {
        match self.fault {
            Fault::Down => Err(BrokerError::Unavailable(
                "test broker is unreachable".into(),
            )),
            Fault::Broken => Err(BrokerError::Config(SECRET_DETAIL.into())),
            Fault::Panics => panic!("{SECRET_DETAIL}"),
        }
    }
}

#[async_trait]
impl Broker for Unreachable {
    fn name(&self) -> &'static str {
        "unreachable"
    }
    async fn store(&self, _: Vec<NewJob>) -> BrokerResult<Vec<Enqueued>> {
        self.down()
    }
    async fn fetch(&self, _: &str, _: usize, _: Duration) -> BrokerResult<Vec<Job>> {
        self.down()
    }
    async fn fetch_rated(
        &self,
        _: &str,
        _: usize,
        _: Duration,
        _: JobRate,
    ) -> BrokerResult<RatedFetch> {
        self.down()
    }
    async fn rate_held_until(&self, _: &str) -> BrokerResult<Option<Timestamp>> {
        self.down()
    }
    async fn wait_for_work(&self, _: &[String], _: Duration) -> BrokerResult<()> {
        self.down()
    }
    async fn heartbeat(&self, _: &[Lease], _: Duration) -> BrokerResult<Vec<LeaseStatus>> {
        self.down()
    }
    async fn progress(&self, _: &Lease, _: u8, _: Option<String>) -> BrokerResult<()> {
        self.down()
    }
    async fn checkpoint(&self, _: &Lease, _: &serde_json::Value) -> BrokerResult<()> {
        self.down()
    }
    async fn finish(&self, _: Vec<Finish>) -> BrokerResult<Vec<BrokerResult<()>>> {
        self.down()
    }
    async fn cancel(&self, _: &JobId) -> BrokerResult<Job> {
        self.down()
    }
    async fn retry(&self, _: &JobId) -> BrokerResult<Job> {
        self.down()
    }
    async fn retry_all_dead(&self, _: Option<&str>) -> BrokerResult<u64> {
        self.down()
    }
    async fn pause(&self, _: &str) -> BrokerResult<()> {
        self.down()
    }
    async fn resume(&self, _: &str) -> BrokerResult<()> {
        self.down()
    }
    async fn cursor(&self, _: &str) -> BrokerResult<Option<String>> {
        self.down()
    }
    async fn save_cursor(&self, _: &str, _: &str) -> BrokerResult<()> {
        self.down()
    }
    async fn advance_cursor(&self, _: &str, _: i64) -> BrokerResult<()> {
        self.down()
    }
    async fn rescue(&self, _: u32) -> BrokerResult<Vec<Rescued>> {
        self.down()
    }
    async fn get(&self, _: &JobId) -> BrokerResult<Option<Job>> {
        self.down()
    }
    async fn history(&self, _: &JobId) -> BrokerResult<Vec<Event>> {
        self.down()
    }
    async fn list(&self, _: &JobFilter) -> BrokerResult<JobPage> {
        self.down()
    }
    async fn queues(&self) -> BrokerResult<Vec<QueueStats>> {
        self.down()
    }
    async fn events(&self, _: Option<&str>, _: usize) -> BrokerResult<Vec<Event>> {
        self.down()
    }
    async fn events_end(&self) -> BrokerResult<Option<String>> {
        self.down()
    }
    async fn trimmed_after(&self, _: &str) -> BrokerResult<Option<bool>> {
        self.down()
    }
    async fn wait_for_events(&self, _: Option<&str>, _: Duration) -> BrokerResult<()> {
        self.down()
    }
    async fn purge(&self, _: &[JobState], _: Timestamp, _: u64) -> BrokerResult<u64> {
        self.down()
    }
    async fn drop_queue(&self, _: &str) -> BrokerResult<u64> {
        self.down()
    }
    async fn ping(&self) -> BrokerResult<()> {
        self.down()
    }
    async fn ready_ahead(&self, _: &str, _: u8) -> BrokerResult<u64> {
        self.down()
    }
    async fn register_node(&self, _: &WorkerNode) -> BrokerResult<()> {
        self.down()
    }
    async fn deregister_node(&self, _: &str) -> BrokerResult<()> {
        self.down()
    }
    async fn nodes(&self) -> BrokerResult<Vec<WorkerNode>> {
        self.down()
    }

    async fn inbox_append(&self, _: &NewInboxEntry, _: Duration) -> BrokerResult<Appended> {
        self.down()
    }
    async fn inbox_read(
        &self,
        _: Option<&str>,
        _: Option<&str>,
        _: usize,
        _: Duration,
    ) -> BrokerResult<Vec<InboxEntry>> {
        self.down()
    }
    async fn inbox_wait(&self, _: Option<&str>, _: Duration) -> BrokerResult<()> {
        self.down()
    }
    async fn inbox_end(&self) -> BrokerResult<Option<String>> {
        self.down()
    }
    async fn push_subscribe(&self, _: &str, _: &WebPush) -> BrokerResult<bool> {
        self.down()
    }
    async fn push_subscriptions(&self, _: &str) -> BrokerResult<Vec<WebPush>> {
        self.down()
    }
    async fn push_unsubscribe(&self, _: &str, _: &str) -> BrokerResult<bool> {
        self.down()
    }

    async fn circuits(&self) -> BrokerResult<Vec<hopper_workers::broker::Circuit>> {
        self.down()
    }

    async fn circuit(&self, _: &str) -> BrokerResult<Option<hopper_workers::broker::Circuit>> {
        self.down()
    }

    async fn save_circuit(&self, _: &hopper_workers::broker::Circuit) -> BrokerResult<()> {
        self.down()
    }
}

fn registry() -> Arc<Registry> {
    let mut r = Registry::new();
    hopper_workers::diagnostics::register(&mut r).unwrap();
    Arc::new(r)
}

fn state_with(broker: Arc<dyn Broker>, config: Config) -> AppState {
    AppState::new(broker, registry(), clock::system(), Arc::new(config))
}

fn offline() -> AppState {
    state_with(Arc::new(Unreachable::default()), Config::default())
}

/// A real SQLite broker in a temporary directory (kept alive by the returned guard).
async fn sqlite() -> (AppState, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/h.db", dir.path().display());
    let clock: Arc<dyn Clock> = clock::system();
    let broker = hopper_workers::broker::open(&url, "hopper", clock)
        .await
        .expect("open the SQLite broker");
    (state_with(broker, Config::default()), dir)
}

async fn call(
    state: &AppState,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(body.map(Body::from).unwrap_or_else(Body::empty))
        .unwrap();
    let res = router(state.clone()).oneshot(req).await.unwrap();
    let status = res.status();
    let ct = res
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        ct.as_deref(),
        Some("application/json"),
        "{status}: {}",
        String::from_utf8_lossy(&bytes)
    );
    (status, serde_json::from_slice(&bytes).unwrap())
}

async fn post(state: &AppState, body: &str) -> (StatusCode, Value) {
    call(state, Method::POST, "/v1/jobs", &[], Some(body.to_owned())).await
}

/// Asserts a 4xx with `code` naming `field`.
#[track_caller]
fn refused(got: (StatusCode, Value), status: u16, code: &str, field: Option<&str>) {
    let (st, body) = got;
    assert_eq!(st.as_u16(), status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    match field {
        Some(f) => assert_eq!(body["error"]["field"], f, "{body}"),
        None => assert!(body["error"].get("field").is_none(), "{body}"),
    }
}

#[tokio::test]
async fn bad_enqueue_bodies_name_the_field() {
    let st = offline();
    refused(post(&st, "{not json").await, 400, "invalid_json", None);
    refused(post(&st, "").await, 400, "invalid_json", None);
    refused(post(&st, "[1]").await, 400, "invalid_json", None);
    refused(
        post(&st, r#"{"payload":{}}"#).await,
        400,
        "missing_field",
        Some("kind"),
    );
    refused(
        post(&st, r#"{"kind":7}"#).await,
        400,
        "invalid_field",
        Some("kind"),
    );
    refused(
        post(&st, r#"{"kind":"nope.never"}"#).await,
        422,
        "unknown_kind",
        Some("kind"),
    );
    let (_, negative) = post(&st, r#"{"kind":"sys.noop","delay":"-5s"}"#).await;
    assert_eq!(
        negative["error"]["message"], "must not be negative",
        "{negative}"
    );
    let cases = [
        (r#"{"kind":"sys.noop","priority":12}"#, "priority"),
        (r#"{"kind":"sys.noop","priority":-1}"#, "priority"),
        (r#"{"kind":"sys.noop","delay":"-5s"}"#, "delay"),
        (r#"{"kind":"sys.noop","delay":"soon"}"#, "delay"),
        (r#"{"kind":"sys.noop","delay":30}"#, "delay"),
        (
            r#"{"kind":"sys.noop","delay":"1s","run_at":"2030-01-01T00:00:00Z"}"#,
            "delay",
        ),
        (r#"{"kind":"sys.noop","run_at":"tomorrow"}"#, "run_at"),
        (r#"{"kind":"sys.noop","delay":"10000y"}"#, "delay"),
        (
            r#"{"kind":"sys.noop","run_at":"9999-12-31T00:00:00Z"}"#,
            "run_at",
        ),
        (
            r#"{"kind":"sys.noop","run_at":"1969-12-31T23:59:59Z"}"#,
            "run_at",
        ),
        (
            r#"{"kind":"sys.noop","run_at":"2030-01-01T00:00:00"}"#,
            "run_at",
        ),
        (r#"{"kind":"sys.noop","payload":[1]}"#, "payload"),
        (r#"{"kind":"sys.noop","payload":"x"}"#, "payload"),
        (
            r#"{"kind":"sys.sleep","payload":{"ms":"long"}}"#,
            "payload.ms",
        ),
        (r#"{"kind":"sys.noop","queue":"a b"}"#, "queue"),
        (r#"{"kind":"sys.noop","max_retries":-3}"#, "max_retries"),
        (r#"{"kind":"sys.noop","timeout":"0s"}"#, "timeout"),
    ];
    for (body, field) in cases {
        refused(post(&st, body).await, 400, "invalid_field", Some(field));
    }
    refused(
        post(&st, r#"{"kind":"sys.noop","then":{"kind":"sys.noop"}}"#).await,
        400,
        "invalid_field",
        Some("then"),
    );
    refused(
        post(
            &st,
            r#"{"kind":"sys.noop","then":[{"kind":"sys.noop"},{"payload":{}}]}"#,
        )
        .await,
        400,
        "missing_field",
        Some("then[1].kind"),
    );
    refused(
        post(&st, r#"{"kind":"sys.noop","then":[{"kind":"no.such"}]}"#).await,
        422,
        "unknown_kind",
        Some("then[0].kind"),
    );
    refused(
        post(
            &st,
            r#"{"kind":"sys.noop","then":[{"kind":"sys.noop","queue":"elsewhere"}]}"#,
        )
        .await,
        400,
        "invalid_field",
        Some("then[0].queue"),
    );
    refused(
        post(&st, r#"{"kind":"sys.noop","prio":1}"#).await,
        400,
        "unknown_field",
        Some("prio"),
    );
}

#[tokio::test]
async fn oversized_body_is_413_json() {
    let mut config = Config::default();
    config.server.body_limit = 64;
    let st = state_with(Arc::new(Unreachable::default()), config);
    let big = format!(
        r#"{{"kind":"sys.noop","payload":{{"pad":"{}"}}}}"#,
        "x".repeat(200)
    );
    refused(post(&st, &big).await, 413, "payload_too_large", None);
}

#[tokio::test]
async fn routes_and_methods_answer_json() {
    let st = offline();
    refused(
        call(&st, Method::GET, "/v1/nope", &[], None).await,
        404,
        "not_found",
        None,
    );
    refused(
        call(&st, Method::DELETE, "/v1/jobs", &[], None).await,
        405,
        "method_not_allowed",
        None,
    );
    let (s, body) = call(&st, Method::GET, "/healthz", &[], None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    refused(
        call(&st, Method::GET, "/readyz", &[], None).await,
        503,
        "broker_unavailable",
        None,
    );
    refused(
        call(&st, Method::GET, "/v1/jobs?state=sleeping", &[], None).await,
        400,
        "invalid_field",
        Some("state"),
    );
    refused(
        call(&st, Method::GET, "/v1/jobs?limit=0", &[], None).await,
        400,
        "invalid_field",
        Some("limit"),
    );
    refused(
        call(&st, Method::GET, "/v1/jobs?colour=red", &[], None).await,
        400,
        "unknown_field",
        Some("colour"),
    );
}

#[tokio::test]
async fn tokens_guard_v1_only() {
    let mut config = Config::default();
    config.auth.tokens = vec!["s3cret".into()];
    let st = state_with(Arc::new(Unreachable::default()), config);
    refused(
        call(&st, Method::GET, "/v1/queues", &[], None).await,
        401,
        "unauthorized",
        None,
    );
    refused(
        call(
            &st,
            Method::GET,
            "/v1/queues",
            &[("authorization", "Bearer wrong")],
            None,
        )
        .await,
        401,
        "unauthorized",
        None,
    );
    // The right token gets through to the (unreachable) broker.
    refused(
        call(
            &st,
            Method::GET,
            "/v1/queues",
            &[("authorization", "Bearer s3cret")],
            None,
        )
        .await,
        503,
        "broker_unavailable",
        None,
    );
    let (s, _) = call(&st, Method::GET, "/healthz", &[], None).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn enqueue_get_cancel_retry_on_sqlite() {
    let (st, _dir) = sqlite().await;
    // What plain `curl -d` sends: a form content type with a JSON body.
    let (s, job) = call(
        &st,
        Method::POST,
        "/v1/jobs",
        &[("content-type", "application/x-www-form-urlencoded")],
        Some(r#"{"kind":"sys.noop","payload":{"a":1},"priority":2,"delay":"1h"}"#.into()),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{job}");
    assert_eq!(job["state"], "scheduled");
    assert_eq!(job["priority"], 2);
    assert_eq!(job["max_retries"], 3);
    assert!(job["created_at"].as_str().unwrap().ends_with('Z'), "{job}");
    let id = job["id"].as_str().unwrap().to_owned();

    let (s, shown) = call(&st, Method::GET, &format!("/v1/jobs/{id}"), &[], None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(shown["history"][0]["type"], "job.enqueued", "{shown}");

    refused(
        call(
            &st,
            Method::POST,
            &format!("/v1/jobs/{id}/retry"),
            &[],
            None,
        )
        .await,
        409,
        "conflict",
        None,
    );
    let (s, c) = call(
        &st,
        Method::POST,
        &format!("/v1/jobs/{id}/cancel"),
        &[],
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{c}");
    assert_eq!(c["state"], "cancelled");
    refused(
        call(
            &st,
            Method::POST,
            &format!("/v1/jobs/{id}/cancel"),
            &[],
            None,
        )
        .await,
        409,
        "conflict",
        None,
    );
    let (s, r) = call(
        &st,
        Method::POST,
        &format!("/v1/jobs/{id}/retry"),
        &[],
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["state"], "queued");

    let (s, page) = call(
        &st,
        Method::GET,
        "/v1/jobs?queue=default&limit=10",
        &[],
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1);
    let (s, q) = call(&st, Method::GET, "/v1/queues", &[], None).await;
    assert_eq!(s, StatusCode::OK, "{q}");
    assert_eq!(q["queues"][0]["queue"], "default", "{q}");
    assert_eq!(q["queues"][0]["counts"]["queued"], 1, "{q}");

    let (s, _) = call(&st, Method::GET, "/readyz", &[], None).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn missing_jobs_are_404() {
    let (st, _dir) = sqlite().await;
    for (method, uri) in [
        (Method::GET, "/v1/jobs/0190-nope"),
        (Method::POST, "/v1/jobs/0190-nope/cancel"),
        (Method::POST, "/v1/jobs/0190-nope/retry"),
    ] {
        refused(
            call(&st, method, uri, &[], None).await,
            404,
            "not_found",
            None,
        );
    }
}

#[tokio::test]
async fn idempotency_key_replays_the_first_job() {
    let (st, _dir) = sqlite().await;
    let body = r#"{"kind":"sys.noop"}"#;
    let hdr = [("idempotency-key", "order-42")];
    let (s1, first) = call(&st, Method::POST, "/v1/jobs", &hdr, Some(body.into())).await;
    assert_eq!(s1, StatusCode::CREATED, "{first}");
    let (s2, again) = call(&st, Method::POST, "/v1/jobs", &hdr, Some(body.into())).await;
    assert_eq!(s2, StatusCode::OK, "{again}");
    assert_eq!(first["id"], again["id"]);
    assert_eq!(first["unique_key"], "idem:order-42");
    let (s3, other) = call(&st, Method::POST, "/v1/jobs", &[], Some(body.into())).await;
    assert_eq!(s3, StatusCode::CREATED);
    assert_ne!(other["id"], first["id"]);

    // Repeated with different keys, which one counts would be a guess: refused, naming the
    // header, nothing stored. The same key twice (a proxy repeating it) is that key.
    let differ = [("idempotency-key", "a"), ("idempotency-key", "b")];
    refused(
        call(&st, Method::POST, "/v1/jobs", &differ, Some(body.into())).await,
        400,
        "invalid_field",
        Some("Idempotency-Key"),
    );
    // A tab is not printable, though HTTP lets a header value hold one.
    refused(
        call(
            &st,
            Method::POST,
            "/v1/jobs",
            &[("idempotency-key", "a\tb")],
            Some(body.into()),
        )
        .await,
        400,
        "invalid_field",
        Some("Idempotency-Key"),
    );
    let same = [
        ("idempotency-key", "order-42"),
        ("idempotency-key", "order-42"),
    ];
    let (s4, repeated) = call(&st, Method::POST, "/v1/jobs", &same, Some(body.into())).await;
    assert_eq!(s4, StatusCode::OK, "{repeated}");
    assert_eq!(repeated["id"], first["id"]);
    // A body's unique_key wins over the header, as documented.
    let with_key = r#"{"kind":"sys.noop","unique_key":"zz"}"#;
    let (s5, keyed) = call(&st, Method::POST, "/v1/jobs", &hdr, Some(with_key.into())).await;
    assert_eq!(s5, StatusCode::CREATED, "{keyed}");
    assert_eq!(keyed["unique_key"], "zz");
    let (_, page) = call(&st, Method::GET, "/v1/jobs", &[], None).await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 3, "{page}");
}

/// `then` creates every step at once: the first queued, the rest waiting, all listed with
/// their ids; `GET` of any step shows the whole chain.
#[tokio::test]
async fn chain_enqueue_lists_every_step() {
    let (st, _dir) = sqlite().await;
    let (s, job) = post(
        &st,
        r#"{"kind":"sys.noop","queue":"etl","then":[
            {"kind":"sys.sleep","payload":{"ms":1}},
            {"kind":"sys.fail","payload":{"times":0}}]}"#,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{job}");
    let steps = job["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3, "{job}");
    let states: Vec<&str> = steps.iter().map(|s| s["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["queued", "waiting", "waiting"]);
    assert_eq!(steps[1]["kind"], "sys.sleep");
    let last = steps[2]["id"].as_str().unwrap();
    let (s, shown) = call(&st, Method::GET, &format!("/v1/jobs/{last}"), &[], None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        shown["queue"], "etl",
        "later steps run on the chain's queue"
    );
    assert_eq!(shown["chain"]["index"], 2);
    assert_eq!(shown["chain"]["id"], job["id"]);
    assert_eq!(shown["steps"].as_array().unwrap().len(), 3);
}

/// A failure inside the server is a 500 in the API's shape with a reference, never the
/// failure's own text, and never a dropped connection, even when a handler panics.
#[tokio::test]
async fn internal_failures_answer_500_without_their_detail() {
    for fault in [Fault::Broken, Fault::Panics] {
        let st = state_with(Arc::new(Unreachable { fault }), Config::default());
        for uri in ["/v1/queues", "/v1/jobs"] {
            let (status, body) = call(&st, Method::GET, uri, &[], None).await;
            assert_eq!(
                status,
                StatusCode::INTERNAL_SERVER_ERROR,
                "{fault:?} {uri}: {body}"
            );
            assert_eq!(body["error"]["code"], "internal", "{body}");
            let text = body.to_string();
            assert!(!text.contains(SECRET_DETAIL), "{fault:?} leaked: {text}");
            assert!(text.contains("error_id"), "{text}");
        }
    }
}

/// A path segment that is not UTF-8 is refused by axum's extractor before any handler: the
/// answer still says what was wrong, under a code of its own, not a bare "Bad Request".
#[tokio::test]
async fn a_path_that_is_not_utf8_is_refused_saying_so() {
    let st = offline();
    for uri in [
        "/v1/jobs/%FF/cancel",
        "/v1/queues/%FF/pause",
        "/v1/jobs/%C3%28",
    ] {
        let method = if uri.ends_with("%28") {
            Method::GET
        } else {
            Method::POST
        };
        let (status, body) = call(&st, method, uri, &[], None).await;
        refused((status, body.clone()), 400, "invalid_request", None);
        assert_ne!(body["error"]["message"], "Bad Request", "{uri}: {body}");
    }
}

/// A list page for a screen (the dashboard's table) need not carry every job's payload and
/// result: with `brief=true` they are left out, and the page is otherwise the same.
#[tokio::test]
async fn a_brief_page_leaves_payloads_and_results_out() {
    let (st, _dir) = sqlite().await;
    let big = "x".repeat(100_000);
    let (s, job) = post(
        &st,
        &format!(r#"{{"kind":"sys.noop","payload":{{"blob":"{big}"}},"delay":"1h"}}"#),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{job}");

    let (s, full) = call(&st, Method::GET, "/v1/jobs?limit=5", &[], None).await;
    assert_eq!(s, StatusCode::OK, "{full}");
    assert_eq!(full["jobs"][0]["payload"]["blob"], big.as_str());

    let (s, brief) = call(&st, Method::GET, "/v1/jobs?limit=5&brief=true", &[], None).await;
    assert_eq!(s, StatusCode::OK, "{brief}");
    let shown = &brief["jobs"][0];
    assert_eq!(shown["id"], job["id"], "{brief}");
    assert_eq!(shown["state"], "scheduled", "{brief}");
    assert!(shown.get("payload").is_none(), "{shown}");
    assert!(shown.get("result").is_none(), "{shown}");
    assert_eq!(brief["next_cursor"], full["next_cursor"]);

    let (s, same) = call(&st, Method::GET, "/v1/jobs?limit=5&brief=false", &[], None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(same, full);
    refused(
        call(&st, Method::GET, "/v1/jobs?brief=yes", &[], None).await,
        400,
        "invalid_field",
        Some("brief"),
    );
}

/// A scrape while the broker does not answer is still a 200: the process's own series are
/// what describe the outage (the queue gauges keep their last values).
#[tokio::test]
async fn metrics_answer_while_the_broker_is_down() {
    let st = state_with(
        Arc::new(Unreachable { fault: Fault::Down }),
        Config::default(),
    );
    let req = Request::builder()
        .uri("/metrics")
        .body(Body::empty())
        .unwrap();
    let res = router(st).oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}
