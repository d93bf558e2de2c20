//! The daemon's log as a collector reads it: `[log] format = "json"` makes every stderr line
//! one JSON object, and every line a job's attempt causes carries the job's id, queue, kind
//! and attempt; the default text format carries them too, as a `job{…}:` prefix.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::util::Scratch;

/// Fails twice (one retry, 10 ms apart), so the job causes two log lines.
const FAST_RETRY: &str = "[retry]\nbackoff_base = \"10ms\"\nbackoff_max = \"10ms\"\n";

fn failing() -> Value {
    json!({"kind": "sys.fail", "payload": {}, "max_retries": 1})
}

#[tokio::test]
async fn json_lines_carry_the_jobs_fields() {
    let s = Scratch::with_config(&format!("[log]\nformat = \"json\"\n{FAST_RETRY}"));
    let (d, api) = s.serve(&[]);
    let id = api.enqueue_ok(failing()).await;
    d.wait_log("the job is dead");

    let log = d.log_text();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for l in &lines {
        assert!(l["timestamp"].is_string() && l["level"].is_string(), "{l}");
        assert!(l["message"].is_string(), "{l}");
    }
    // The job's fields are top-level fields of every line its attempts cause, where a log
    // shipper filters on them, not nested under a span.
    let mine: Vec<&Value> = lines.iter().filter(|l| l["job_id"] == id).collect();
    assert_eq!(mine.len(), 2, "{log}");
    for l in &mine {
        assert!(l.get("span").is_none(), "{l}");
        assert_eq!(l["queue"], "default", "{l}");
        assert_eq!(l["kind"], "sys.fail", "{l}");
        assert_eq!(l["target"], "hopper_workers::pool::execute", "{l}");
        assert!(
            l["error"].as_str().unwrap().contains("failed on purpose"),
            "{l}"
        );
    }
    let attempts: BTreeSet<u64> = mine
        .iter()
        .map(|l| l["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, BTreeSet::from([1, 2]), "{log}");
    assert_eq!(mine[1]["level"], "WARN", "{log}");
}

#[tokio::test]
async fn text_lines_carry_the_jobs_fields_by_default() {
    let s = Scratch::with_config(FAST_RETRY);
    let (d, api) = s.serve(&[]);
    let id = api.enqueue_ok(failing()).await;
    d.wait_log("the job is dead");

    let log = d.log_text();
    let dead = log.lines().find(|l| l.contains("the job is dead")).unwrap();
    let prefix = format!("job{{job_id={id} queue=default kind=sys.fail attempt=2}}");
    assert!(dead.contains(&prefix), "{dead}");
    assert!(!dead.trim_start().starts_with('{'), "{dead}");
}
