//! The dashboard at `GET /`: served from the binary without a token, and driven in a real
//! headless Chromium (Debian's `chromium`, through playwright-core from `tests/browser/`)
//! against a real `hopper serve` on a temp SQLite file.
//!
//! The browser halves live in `tests/browser/` (`dashboard.mjs`: the tour of the page;
//! `busy.mjs`: the page while jobs stream through the server; `client.mjs`: the API calls and
//! step lines both use); this side starts the daemon,
//! runs node, and fails (never skips) when node, chromium or playwright-core are missing:
//! `.ci/run` installs them.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{Api, Daemon, Scratch};

/// The token the dashboard is asked for: the daemons of these tests require one.
const TOKEN: &str = "dash-test-token";

fn with_token() -> Scratch {
    Scratch::with_config(&format!(
        "[worker]\nconcurrency = 4\n[auth]\ntokens = [\"{TOKEN}\"]\n"
    ))
}

/// `GET path` on the daemon, with `token` as the bearer when given: the raw response.
async fn get(api: &Api, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = api.http.get(format!("{}{path}", api.base));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.unwrap()
}

/// The page and its assets need no token (the API calls they make carry it), and say what
/// they are; the API behind them still does.
#[tokio::test]
async fn dashboard_is_served_without_a_token() {
    let s = with_token();
    let (_d, api) = s.serve(&[]);
    for (path, kind, needle) in [
        ("/", "text/html", "<title>Hopper</title>"),
        ("/dashboard/app.js", "text/javascript", "/v1/jobs"),
        ("/dashboard/stream.js", "text/javascript", "/v1/events"),
        (
            "/dashboard/util.js",
            "text/javascript",
            "export function h(",
        ),
        ("/dashboard/app.css", "text/css", "prefers-color-scheme"),
    ] {
        let resp = get(&api, path, None).await;
        assert_eq!(resp.status(), 200, "GET {path}");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with(kind), "GET {path}: content-type {ct}");
        let body = resp.text().await.unwrap();
        assert!(body.contains(needle), "GET {path} lacks {needle:?}");
    }
    let (status, body) = api
        .call(reqwest::Method::GET, "/dashboard/nope.js", None)
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let resp = get(&api, "/v1/queues", None).await;
    assert_eq!(
        resp.status(),
        401,
        "the API behind the page still needs the token"
    );
    // The page enables its queue buttons when a GET on a POST-only queue route answers
    // anything but 404 (405 here, changing nothing); a route that is not there answers 404.
    for (path, status) in [
        ("/v1/queues/default/pause", 405),
        ("/v1/queues/default/resume", 405),
        ("/v1/queues/default/retry-dead", 405),
        ("/v1/queues/default/nope", 404),
    ] {
        let resp = get(&api, path, Some(TOKEN)).await;
        assert_eq!(resp.status(), status, "GET {path} (the page's probe)");
    }
}

/// The acceptance test in a real browser against the real server: the token prompt and the
/// live stream, a `sys.sleep` job's bar moved by real progress frames to succeeded, Retry on a
/// dead job running it again, an open circuit of a notification endpoint, Cancel on a running one, Pause / Resume and Retry all dead on a
/// queue card, a wrong token closed with 4001, `lagged` (a stand-in), the job page.
/// Screenshots land in `target/dashboard*.png`.
#[test]
fn dashboard_in_headless_chromium() {
    let s = with_token();
    let (daemon, api) = s.serve(&[]);
    open_a_circuit(&s.broker_url());
    run_browser_script("dashboard.mjs", &s, &api, &daemon);
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    assert!(shots.join("dashboard.png").is_file());
}

/// The page on a server that jobs stream through without a pause: the list keeps up with the
/// events (a job shows within seconds, not at the next safety refresh), and redraws keep a
/// focused button's focus and a scrolled payload's scroll; the queue cards' counts and buttons
/// work from the keyboard.
#[test]
fn dashboard_keeps_up_with_a_busy_server() {
    let s = with_token();
    let (daemon, api) = s.serve(&[]);
    run_browser_script("busy.mjs", &s, &api, &daemon);
}

/// Runs `tests/browser/SCRIPT` in node against the daemon at `api`, with Debian's chromium and
/// a fresh profile under the scratch directory; fails with its output and the daemon's log.
fn run_browser_script(script: &str, s: &Scratch, api: &Api, daemon: &Daemon) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = which("chromium").unwrap_or_else(|| {
        panic!("chromium is not installed: `apt-get install -y chromium` (.ci/run does it)")
    });
    let node = which("node")
        .unwrap_or_else(|| panic!("node is not installed: `apt-get install -y nodejs npm`"));
    assert!(
        root.join("tests/browser/node_modules/playwright-core")
            .is_dir(),
        "playwright-core is missing: run `npm ci` in tests/browser (.ci/run does it)"
    );
    let shots = root.join("target");
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new(node)
        .arg(root.join("tests/browser").join(script))
        .arg(&api.base)
        .arg(TOKEN)
        .arg(&shots)
        .env("CHROMIUM", &chromium)
        .env("BROWSER_PROFILE", s.path().join("chromium-profile"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser test {script} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- daemon\n{}",
        out.status,
        daemon.log_text()
    );
}

/// Stores an open circuit of a webhook URL with a secret in its query in the broker at
/// `url`, as a worker node's breaker would.
fn open_a_circuit(url: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let broker = hopper_workers::broker::open_with(
            url,
            &hopper_workers::broker::OpenOptions::new("hopper"),
            hopper_workers::clock::system(),
        )
        .await
        .unwrap();
        broker
            .save_circuit(&hopper_workers::broker::Circuit {
                endpoint: "https://hooks.example/in?token=s3cret".into(),
                failures: 5,
                open_for: Some(std::time::Duration::from_secs(3600)),
                cooldown: std::time::Duration::from_secs(3600),
                probing: false,
            })
            .await
            .unwrap();
    });
}

/// The first `name` on `PATH`.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}
