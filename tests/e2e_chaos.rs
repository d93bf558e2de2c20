//! `hopper chaos`: a tiny campaign on SQLite prints a consistent ledger as its last line,
//! loses nothing and leaves nothing behind; its ledger kind is not offered in normal use.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

use crate::util::Scratch;

/// The fields of the ledger line, in the order printed (issue 13).
const FIELDS: [&str; 12] = [
    "broker",
    "jobs",
    "acknowledged",
    "lost",
    "completed_twice",
    "starts",
    "interruptions",
    "stale_writes_refused",
    "redis_restarts",
    "kills",
    "stops",
    "seconds",
];

#[test]
fn a_small_sqlite_campaign_prints_a_consistent_ledger_and_cleans_up() {
    let out = Command::new(env!("CARGO_BIN_EXE_hopper"))
        .args([
            "chaos",
            "--broker",
            "sqlite",
            "--jobs",
            "200",
            "--workers",
            "2",
        ])
        .args(["--duration", "240s", "--seed", "7"])
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "chaos failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let last = stdout.lines().last().unwrap();
    let report: Value = serde_json::from_str(last).unwrap();
    let keys: Vec<&str> = report
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = FIELDS.to_vec();
    expected.sort_unstable();
    let mut got = keys.clone();
    got.sort_unstable();
    assert_eq!(got, expected, "{report}");

    let n = |k: &str| {
        report[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in {report}"))
    };
    assert_eq!(report["broker"], "sqlite");
    assert_eq!(n("jobs"), 200);
    assert_eq!(n("acknowledged"), 200);
    assert_eq!(n("lost"), 0, "{stderr}");
    // Every acknowledged job started at least once; every start beyond one per job is an
    // interruption, and a job completes twice only after one.
    assert_eq!(
        n("starts"),
        n("acknowledged") + n("interruptions"),
        "{report}"
    );
    assert!(n("completed_twice") <= n("interruptions"), "{report}");
    assert_eq!(n("redis_restarts"), 0);
    assert_eq!(n("stops"), 1, "{report}");
    assert!(n("kills") >= 1, "{report}");
    assert!(report["seconds"].as_f64().unwrap() > 0.0, "{report}");

    // Its directory (config, ledger, logs, database) is gone, and so are its processes.
    let dir = stderr
        .lines()
        .find_map(|l| l.split("chaos: working in ").nth(1))
        .map(|d| PathBuf::from(d.trim()))
        .unwrap_or_else(|| panic!("no working directory in:\n{stderr}"));
    assert!(!dir.exists(), "{} was left behind", dir.display());
    let leftover = Command::new("pgrep")
        .args(["-f", &dir.display().to_string()])
        .output()
        .unwrap();
    assert!(
        leftover.stdout.is_empty(),
        "processes left running: {}",
        String::from_utf8_lossy(&leftover.stdout)
    );
}

#[test]
fn bad_chaos_flags_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_hopper"))
        .args(["chaos", "--broker", "sqlite", "--workers", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--workers"), "{stderr}");
    // More worker processes than one machine holds (100,000 once froze it) is refused.
    let out = Command::new(env!("CARGO_BIN_EXE_hopper"))
        .args(["chaos", "--broker", "sqlite", "--workers", "65"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--workers must be at most 64"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_hopper"))
        .args(["chaos", "--broker", "postgres"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `chaos.ledger` writes files wherever it is told: a normal server does not offer it.
#[tokio::test]
async fn the_ledger_kind_is_not_offered_in_normal_use() {
    let s = Scratch::with_config("");
    let (_d, api) = s.serve(&["--no-workers"]);
    let (status, body) = api
        .enqueue(json!({"kind": "chaos.ledger", "payload": {"ms": 5}}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "kind", "{body}");
}
