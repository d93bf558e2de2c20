//! The README tour on the embedded default: no config file, `data/hopper.db`, 127.0.0.1:8080.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;

use crate::util::{Api, Scratch};

/// A fresh directory: `hopper serve` with no config starts on 127.0.0.1:8080 with
/// `data/hopper.db`; a `sys.noop` posted with curl's body succeeds and the CLI shows it.
#[tokio::test]
async fn fresh_serve_runs_a_noop_job() {
    let s = Scratch::new();
    // No config.toml in the scratch dir: built-in defaults apply.
    let daemon = s.start(&["serve"]);
    let base = daemon.wait_addr();
    assert_eq!(base, "http://127.0.0.1:8080");
    assert!(s.path().join("data/hopper.db").exists());

    let api = Api::new(base);
    let resp = api
        .http
        .post(format!("{}/v1/jobs", api.base))
        .header("content-type", "application/x-www-form-urlencoded") // what plain `curl -d` sends
        .body(r#"{"kind":"sys.noop","payload":{}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let job: serde_json::Value = resp.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    api.wait_state(&id, "succeeded", Duration::from_secs(10))
        .await;

    let shown = s.cli_ok(&["job", &id]);
    assert!(shown.contains("succeeded"), "{shown}");
    let queues = s.cli_json(&["queues"]);
    let default = queues
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "default")
        .unwrap_or_else(|| panic!("no default queue in {queues}"));
    assert_eq!(default["counts"]["succeeded"], json!(1));
}
