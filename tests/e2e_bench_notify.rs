//! `hopper bench --workload notify`, run small against the real binary: WebSocket users in a
//! process of their own, authenticated by JWTs the bench signs, receive every notification
//! appended to their inboxes, and the report says so, with latency, rate and memory.

#![allow(clippy::unwrap_used)]

use crate::util::Scratch;

#[test]
fn the_notify_bench_delivers_every_notification_to_its_user() {
    let s = Scratch::new();
    let r = s.cli_json(&[
        "bench",
        "--workload",
        "notify",
        "--clients",
        "5",
        "--rate",
        "100",
        "--duration",
        "1s",
    ]);
    assert_eq!(r["workload"], "notify", "{r}");
    assert_eq!(r["clients"], 5, "{r}");
    // 100 a second for 1 s, spread evenly: 20 per user.
    assert_eq!(r["events"], 100, "{r}");
    assert_eq!(r["delivered"], 100, "every user got all of their own: {r}");
    assert_eq!(r["lagged_clients"], 0, "{r}");
    assert_eq!(r["incomplete_clients"], 0, "{r}");
    assert!(
        r["delivered_per_s"].as_f64().is_some_and(|v| v > 0.0),
        "{r}"
    );
    for field in ["delivery_p50_ms", "delivery_p99_ms"] {
        assert!(r[field].as_f64().is_some(), "{field}: {r}");
    }
    assert!(
        r["delivery_p50_ms"].as_f64() <= r["delivery_p99_ms"].as_f64(),
        "{r}"
    );
    assert!(r["rss_mb"].as_f64().is_some_and(|m| m > 0.0), "{r}");
    assert!(
        r["clients_peak_rss_mb"].as_f64().is_some_and(|m| m > 0.0),
        "{r}"
    );
    let text = r.to_string();
    assert!(!text.contains("eyJ"), "no JWT in the report: {r}");
}
