//! Bad input gets a clear error naming the problem, and nothing is enqueued: HTTP requests
//! refused with a 4xx naming the field, unknown config keys, bad CLI flags.

#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};

use crate::util::Scratch;

/// Each bad request gets its status and a JSON error naming the field; the queue stays empty.
#[tokio::test]
async fn bad_requests_are_refused_with_the_field_named() {
    let s = Scratch::new();
    s.write_config_with_server("body_limit = 4096\n", "");
    let (_d, api) = s.serve(&["--no-workers"]);

    let (st, body) = api
        .post_raw("/v1/jobs", "application/json", "{not json")
        .await;
    assert_eq!(st, 400, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");

    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"payload": {}}), 400, "kind"),
        (json!({"kind": "no.such.kind", "payload": {}}), 422, "kind"),
        (
            json!({"kind": "sys.noop", "payload": {}, "priority": 12}),
            400,
            "priority",
        ),
        (
            json!({"kind": "sys.noop", "payload": {}, "delay": "-5s"}),
            400,
            "delay",
        ),
        (
            json!({"kind": "sys.noop", "payload": {}, "run_at": "tomorrow"}),
            400,
            "run_at",
        ),
        (
            json!({"kind": "sys.noop", "payload": [1, 2]}),
            400,
            "payload",
        ),
        (
            json!({"kind": "sys.sleep", "payload": {"ms": "long"}}),
            400,
            "payload.ms",
        ),
    ];
    for (body, status, field) in cases {
        let (st, resp) = api.enqueue(body.clone()).await;
        assert_eq!(st, status, "{body} -> {resp}");
        assert_eq!(resp["error"]["field"], field, "{body} -> {resp}");
        assert!(resp["error"]["code"].is_string(), "{resp}");
    }

    let big = json!({"kind": "sys.noop", "payload": {"blob": "x".repeat(10_000)}});
    let (st, resp) = api.enqueue(big).await;
    assert_eq!(st, 413, "{resp}");
    assert!(resp["error"]["message"].is_string(), "{resp}");

    let (st, _) = api.post("/v1/jobs/no-such-id/cancel").await;
    assert_eq!(st, 404);

    // Nothing was enqueued.
    let page = api.get_json("/v1/jobs", &[("queue", "default")]).await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 0, "{page}");
}

/// An unknown config key is refused with the key named and exit code 2, by `serve` and by
/// `check-config`.
#[test]
fn unknown_config_key_is_named() {
    let s = Scratch::with_config("[worker]\nconcurency = 4\n");
    for args in [&["check-config"][..], &["queues"][..]] {
        let out = s.cli(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("concurency"), "{args:?}: {err}");
    }
}

/// A bad CLI flag exits 2 with a usage message; a bad value names the flag.
#[test]
fn bad_cli_flags_exit_2() {
    let s = Scratch::with_config("");
    let out = s.cli(&["jobs", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
    let out = s.cli(&["enqueue", "sys.noop", "--priority", "12"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("priority"));
    let out = s.cli(&["job", "does-not-exist"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    // Nothing was enqueued by the refused command.
    let jobs = s.cli_jobs(&[]);
    assert_eq!(jobs.len(), 0, "{jobs:#?}");
}
