//! The campaign's HTTP client of its own `hopper serve`: enqueues the ledger jobs through
//! `POST /v1/jobs/batch` and reads what the broker says about them (`GET /v1/queues`,
//! `GET /v1/jobs`).
//!
//! Each job carries a `unique_key`, so a batch whose answer was lost (the API timed out
//! while Redis restarted) is sent again safely: the jobs already stored answer 200 with the
//! job, the missing ones 201. A job counts as acknowledged once an answer named it.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Value, json};

use super::kind;
use super::procs::QUEUE;

/// Jobs per `POST /v1/jobs/batch` (under the default `[server] max_batch`).
const BATCH: usize = 500;
/// Tries of one batch before the campaign gives up on it.
const TRIES: u32 = 10;

/// A client of the campaign's API.
pub(super) struct Api {
    http: reqwest::Client,
    base: String,
}

/// What the broker says about one job at the end.
#[derive(Debug)]
pub(super) struct Final {
    pub state: String,
    pub interruptions: u64,
    /// The lease token of the completion the broker accepted (its result's `token`), once
    /// succeeded.
    pub accepted_token: Option<u64>,
}

impl Api {
    pub(super) fn new(base: &str) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            base: base.to_owned(),
        })
    }

    /// Enqueues `jobs` ledger jobs, each sleeping 5 to 50 ms (drawn from `rng`); returns the
    /// ids of those acknowledged, in order. `campaign` makes the unique keys unique.
    pub(super) async fn enqueue(
        &self,
        jobs: u64,
        campaign: &str,
        rng: &mut StdRng,
    ) -> Result<Vec<String>> {
        let mut acknowledged = Vec::with_capacity(usize::try_from(jobs).unwrap_or(0));
        let mut next = 0u64;
        while next < jobs {
            let end = (next + BATCH as u64).min(jobs);
            let batch: Vec<Value> = (next..end)
                .map(|i| {
                    json!({
                        "kind": kind::NAME,
                        "queue": QUEUE,
                        "payload": {"ms": rng.random_range(5..=50u64)},
                        "unique_key": format!("{campaign}-{i}"),
                    })
                })
                .collect();
            acknowledged.extend(self.send_batch(&json!({ "jobs": batch })).await?);
            next = end;
        }
        Ok(acknowledged)
    }

    /// Posts one batch until it is answered; the ids of its jobs.
    async fn send_batch(&self, body: &Value) -> Result<Vec<String>> {
        let url = format!("{}/v1/jobs/batch", self.base);
        let mut last = String::new();
        for attempt in 0..TRIES {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            let answer = match self.http.post(&url).json(body).send().await {
                Ok(a) => a,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            let status = answer.status();
            let text = answer.text().await.unwrap_or_default();
            if status.is_server_error() {
                last = format!("{status}: {text}");
                continue;
            }
            if !status.is_success() {
                bail!("POST /v1/jobs/batch answered {status}: {text}");
            }
            let v: Value = serde_json::from_str(&text).context("reading a batch's answer")?;
            let ids = v["jobs"]
                .as_array()
                .context("a batch's answer without jobs")?
                .iter()
                .filter(|a| matches!(a["status"].as_u64(), Some(200 | 201)))
                .filter_map(|a| a["job"]["id"].as_str().map(str::to_owned))
                .collect();
            return Ok(ids);
        }
        bail!("POST /v1/jobs/batch kept failing: {last}")
    }

    /// The chaos queue's job counts by state; `None` while the API or broker does not answer.
    pub(super) async fn counts(&self) -> Option<HashMap<String, u64>> {
        let url = format!("{}/v1/queues", self.base);
        let v: Value = self.http.get(url).send().await.ok()?.json().await.ok()?;
        let q = v["queues"]
            .as_array()?
            .iter()
            .find(|q| q["queue"] == QUEUE)?;
        let counts = q["counts"].as_object()?;
        Some(
            counts
                .iter()
                .filter_map(|(k, n)| Some((k.clone(), n.as_u64()?)))
                .collect(),
        )
    }

    /// Every job of the chaos queue, as the broker has it at the end.
    pub(super) async fn jobs(&self) -> Result<HashMap<String, Final>> {
        let url = format!("{}/v1/jobs", self.base);
        let mut all = HashMap::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut query = vec![("queue", QUEUE.to_owned()), ("limit", "1000".to_owned())];
            if let Some(c) = cursor.take() {
                query.push(("cursor", c));
            }
            let page: Value = self
                .http
                .get(&url)
                .query(&query)
                .send()
                .await
                .context("listing the campaign's jobs")?
                .error_for_status()
                .context("listing the campaign's jobs")?
                .json()
                .await
                .context("reading a page of jobs")?;
            for job in page["jobs"].as_array().context("a page without jobs")? {
                let Some(id) = job["id"].as_str() else {
                    continue;
                };
                all.insert(
                    id.to_owned(),
                    Final {
                        state: job["state"].as_str().unwrap_or_default().to_owned(),
                        interruptions: job["interruptions"].as_u64().unwrap_or(0),
                        accepted_token: job["result"]["token"].as_u64(),
                    },
                );
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return Ok(all),
            }
        }
    }
}
