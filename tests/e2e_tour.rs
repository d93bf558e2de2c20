//! The README tour on the embedded default: no config file, so built-in defaults apply
//! (`data/hopper.db`, 127.0.0.1:8080). The tour's daemon listens on a free port, so a
//! `hopper serve` already running on 8080 does not get in the way.

#![allow(clippy::unwrap_used)]

use crate::util::{Api, Scratch};

/// A fresh directory: `hopper serve` with no config goes for 127.0.0.1:8080; on a free port
/// it starts with `data/hopper.db`; a `sys.noop` posted with curl's body succeeds and the CLI
/// shows it.
#[tokio::test]
async fn fresh_serve_runs_a_noop_job() {
    let s = Scratch::new();
    // No config.toml in the scratch dir: built-in defaults apply. With 8080 held (by this
    // test, or by whatever listens there already), the default address shows in the error.
    let _held = std::net::TcpListener::bind("127.0.0.1:8080");
    let mut on_default = s.start(&["serve"]);
    on_default.wait_log("cannot listen on 127.0.0.1:8080");
    assert!(!on_default.wait_exit().success());

    let daemon = s.start(&["serve", "--listen", "127.0.0.1:0"]);
    let api = Api::new(daemon.wait_addr());
    assert!(s.path().join("data/hopper.db").exists());

    // What plain `curl -d` sends.
    let (status, job) = api
        .post_raw(
            "/v1/jobs",
            "application/x-www-form-urlencoded",
            r#"{"kind":"sys.noop","payload":{}}"#,
        )
        .await;
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    api.wait_state(&id, "succeeded").await;

    let shown = s.cli_ok(&["job", &id]);
    assert!(shown.contains("succeeded"), "{shown}");
    assert_eq!(s.cli_counts("default")["succeeded"], 1);
}
