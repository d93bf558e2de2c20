//! The HTTP side: a small client for the daemon's `/v1` API, the bodies of the diagnostic
//! jobs, and readers of what the API answers (histories, timestamps, queue counts).
//!
//! Every request goes over real HTTP on loopback to a daemon started by `super::daemon`.

use reqwest::Method;
use serde_json::{Value, json};

use super::wait;

/// The body of a `sys.noop` job.
pub fn noop() -> Value {
    json!({"kind": "sys.noop", "payload": {}})
}

/// The body of a `sys.sleep` job of `ms` milliseconds.
pub fn sleep(ms: u64) -> Value {
    json!({"kind": "sys.sleep", "payload": {"ms": ms}})
}

/// A small HTTP client for the API.
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: String) -> Self {
        Self {
            base,
            http: reqwest::Client::new(),
        }
    }

    /// `METHOD path` with an optional JSON body; returns (status, body or null).
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.json(body);
        }
        answer(req).await
    }

    /// `method path` with `token` as a bearer token (none when empty) and `body` as JSON;
    /// returns (status, body).
    pub async fn call_as(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut req = reqwest::Client::new().request(method, format!("{}{path}", self.base));
        if !token.is_empty() {
            req = req.bearer_auth(token);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        answer(req).await
    }

    /// `POST path` with `body` sent as is, under `content_type`; returns (status, body).
    pub async fn post_raw(&self, path: &str, content_type: &str, body: &str) -> (u16, Value) {
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body.to_owned());
        answer(req).await
    }

    /// POST /v1/jobs; returns (status, body).
    pub async fn enqueue(&self, body: Value) -> (u16, Value) {
        self.call(Method::POST, "/v1/jobs", Some(&body)).await
    }

    /// POST /v1/jobs expecting 201; returns the job id.
    pub async fn enqueue_ok(&self, body: Value) -> String {
        let (status, job) = self.enqueue(body).await;
        assert_eq!(status, 201, "enqueue failed: {job}");
        job["id"].as_str().unwrap().to_owned()
    }

    /// Enqueues `n` jobs of `body`, one after the other; returns their ids in order.
    pub async fn enqueue_n(&self, n: usize, body: &Value) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            ids.push(self.enqueue_ok(body.clone()).await);
        }
        ids
    }

    /// POST `path` with no body; returns (status, body).
    pub async fn post(&self, path: &str) -> (u16, Value) {
        self.call(Method::POST, path, None).await
    }

    /// GET `path` with `query`, expecting 200 and JSON.
    pub async fn get_json(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let req = self.http.get(format!("{}{path}", self.base)).query(query);
        let (status, body) = answer(req).await;
        assert_eq!(status, 200, "GET {path} {query:?}: {body}");
        body
    }

    /// GET /v1/jobs/{id}: the job with its history.
    pub async fn job(&self, id: &str) -> Value {
        self.get_json(&format!("/v1/jobs/{id}"), &[]).await
    }

    /// Polls the job until `pred` holds; returns it.
    pub async fn wait_job(&self, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait::until(&format!("job {id} never matched"), async || {
            let job = self.job(id).await;
            if pred(&job) {
                Ok(job)
            } else {
                Err(format!("{job:#}"))
            }
        })
        .await
    }

    /// Polls until the job is in `state`; returns it.
    pub async fn wait_state(&self, id: &str, state: &str) -> Value {
        self.wait_job(id, |j| j["state"] == state).await
    }

    /// Polls until every job of `ids` is in `state`.
    pub async fn wait_all(&self, ids: &[String], state: &str) {
        for id in ids {
            self.wait_state(id, state).await;
        }
    }

    /// The state counts of `queue` from `GET /v1/queues` (`{}` before the queue exists).
    pub async fn counts(&self, queue: &str) -> Value {
        let q = self.get_json("/v1/queues", &[]).await;
        q["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["queue"] == queue)
            .map_or(json!({}), |q| q["counts"].clone())
    }

    /// Enqueues one `sys.noop` on each of `queues`, in batches of the default `max_batch`.
    pub async fn one_job_per_queue(&self, queues: &[String]) {
        for chunk in queues.chunks(1000) {
            let jobs: Vec<_> = chunk
                .iter()
                .map(|q| json!({"kind": "sys.noop", "queue": q}))
                .collect();
            let (status, body) = self
                .call(
                    Method::POST,
                    "/v1/jobs/batch",
                    Some(&json!({ "jobs": jobs })),
                )
                .await;
            assert_eq!(status, 201, "{body}");
        }
    }

    /// Every job of `queue` in `state`, through every page of `GET /v1/jobs`.
    pub async fn all_jobs(&self, queue: &str, state: &str) -> Vec<Value> {
        let mut jobs = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut query = vec![("queue", queue), ("state", state), ("limit", "1000")];
            if let Some(c) = &cursor {
                query.push(("cursor", c));
            }
            let page = self.get_json("/v1/jobs", &query).await;
            jobs.extend(page["jobs"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return jobs,
            }
        }
    }
}

/// Sends `req`; returns its status and JSON body (null when it has none).
async fn answer(req: reqwest::RequestBuilder) -> (u16, Value) {
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The count of `state` in a queue's counts (0 when absent).
pub fn count(counts: &Value, state: &str) -> u64 {
    counts[state].as_u64().unwrap_or(0)
}

/// The events of a job's history of one type.
pub fn events<'a>(job: &'a Value, ty: &str) -> Vec<&'a Value> {
    job["history"]
        .as_array()
        .map(|h| h.iter().filter(|e| e["type"] == ty).collect())
        .unwrap_or_default()
}

/// Parses an RFC 3339 timestamp of the API into milliseconds since the epoch.
pub fn ms(v: &Value) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap(),
        Value::String(s) => {
            let t = humantime::parse_rfc3339_weak(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
        }
        other => panic!("not a timestamp: {other}"),
    }
}

/// The ids of a chain's steps, in order, from the answer to `POST /v1/jobs` with `then`.
pub fn step_ids(enqueued: &Value) -> Vec<String> {
    enqueued["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps in {enqueued}"))
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}
