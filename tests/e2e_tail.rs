//! `hopper tail`: following the event log in the terminal, through the real binary. Against
//! the broker of the config (a real SQLite file with a real `serve` running the jobs), and
//! with `--server` against an in-test WebSocket peer speaking the `/v1/events` contract,
//! restarted mid-stream.

#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};

use crate::util::ws_peer::{WsPeer, event};
use crate::util::{Follow, Scratch, wait};

/// Parses a `--json` line as an event, failing the test with the line when it is not one.
fn parse_event(line: &str) -> Value {
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert!(v["id"].is_string() && v["type"].is_string(), "{line}");
    v
}

/// Runs `hopper ARGS` to its end off the async runtime.
async fn cli(s: &Scratch, args: &[&str]) -> std::process::Output {
    cli_with(s, args, &[]).await
}

/// [`cli`] with the environment variables `env` set.
async fn cli_with(s: &Scratch, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let dir = s.path().to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hopper"));
        cmd.current_dir(&dir)
            .env("NO_COLOR", "1")
            .env_remove("HOPPER_BROKER")
            .env_remove("HOPPER_TOKEN")
            .env_remove("RUST_LOG")
            .envs(env)
            .arg("--config")
            .arg(dir.join("config.toml"))
            .args(&args);
        cmd.output().unwrap()
    })
    .await
    .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `tail --job ID` to its end (within the test's deadline), checks its exit code, and
/// returns its stdout and stderr.
async fn tail_job_to_its_end(s: &Scratch, id: &str, code: i32) -> (String, String) {
    let out = wait::within("tail --job", cli(s, &["tail", "--job", id])).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(code), "{stdout}\n{stderr}");
    (stdout, stderr)
}

/// `tail --job` on a running `sys.sleep` job follows it to the end: its progress shows (plain
/// lines, stdout not being a terminal), then its success, and the exit code is 0.
#[tokio::test]
async fn tail_job_exits_0_when_it_succeeds_and_shows_progress() {
    let s = Scratch::with_config("");
    let (_d, api) = s.serve(&[]);
    let id = api
        .enqueue_ok(json!({"kind": "sys.sleep", "payload": {"ms": 1500}}))
        .await;
    let (stdout, _) = tail_job_to_its_end(&s, &id, 0).await;
    let progress: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("job.progress"))
        .collect();
    assert!(progress.len() >= 3, "too little progress shown:\n{stdout}");
    assert!(stdout.contains("50%"), "{stdout}");
    let last = stdout.lines().last().unwrap();
    assert!(
        last.contains("job.succeeded") && last.contains(&id),
        "{stdout}"
    );

    // Already final: its history at once, the same exit code.
    let again = cli(&s, &["tail", "--job", &id]).await;
    assert_eq!(again.status.code(), Some(0));
    assert!(text(&again.stdout).contains("job.succeeded"));
}

/// On a terminal, `tail --job` draws a bar; a job that succeeds leaves it full, whatever its
/// handler last reported (`sys.sleep` reports up to 90%), as `hopper job` shows 100%. Run
/// under `script`, so that stderr is a real terminal.
#[tokio::test]
async fn tail_job_bar_ends_full_when_the_job_succeeds() {
    let s = Scratch::with_config("");
    let (_d, api) = s.serve(&[]);
    let id = api
        .enqueue_ok(json!({"kind": "sys.sleep", "payload": {"ms": 1000}}))
        .await;
    let dir = s.path().to_owned();
    let command = format!(
        "{} --config {} tail --job {id}",
        env!("CARGO_BIN_EXE_hopper"),
        dir.join("config.toml").display()
    );
    let out = wait::within(
        "tail --job on a terminal",
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("script")
                .current_dir(&dir)
                .env("NO_COLOR", "1")
                .env_remove("HOPPER_BROKER")
                .env_remove("RUST_LOG")
                .args(["-qec", &command, "/dev/null"])
                .output()
                .unwrap()
        }),
    )
    .await
    .unwrap();
    let shown = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{shown}\n{}", text(&out.stderr));
    assert!(shown.contains("job.progress"), "no bar drawn:\n{shown}");
    // The bar's last drawing, after the job's lines.
    let last = shown
        .rsplit('\r')
        .find(|part| !part.trim().is_empty())
        .unwrap_or("");
    assert!(
        last.contains("100% succeeded"),
        "the bar ends short of full: {last:?}\n{shown}"
    );
}

/// A job that fails permanently ends `dead`: exit 1, with the error shown.
#[tokio::test]
async fn tail_job_exits_1_when_it_dies() {
    let s = Scratch::with_config("");
    let (_d, api) = s.serve(&[]);
    let id = api
        .enqueue_ok(json!({"kind": "sys.fail", "payload": {"times": 99, "permanent": true}}))
        .await;
    let (stdout, stderr) = tail_job_to_its_end(&s, &id, 1).await;
    assert!(stdout.contains("job.dead"), "{stdout}");
    assert!(stderr.contains("dead"), "{stderr}");
    // A token exported for the remote commands does not stop a local tail: it was a usage
    // error ("--server required") because clap counted the variable as the flag.
    for token in ["x", ""] {
        let out = cli_with(&s, &["tail", "--job", &id], &[("HOPPER_TOKEN", token)]).await;
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    }
}

/// A running job cancelled while `tail` follows it: exit 4. A job that does not exist: 3.
#[tokio::test(flavor = "multi_thread")]
async fn tail_job_exits_4_when_cancelled_and_3_when_missing() {
    let s = Scratch::with_config("");
    let (_d, api) = s.serve(&[]);
    let id = api
        .enqueue_ok(json!({"kind": "sys.sleep", "payload": {"ms": 60000}}))
        .await;
    api.wait_state(&id, "running").await;
    let mut tail = Follow::start(&s, &["tail", "--job", &id]);
    // It follows: the job's start is shown before the cancel.
    let started = wait::until_blocking("tail shows the start", || {
        let line = tail.next_line();
        if line.contains("job.started") {
            Ok(line)
        } else {
            Err(line)
        }
    });
    assert!(started.contains(&id));
    let (status, _) = api.post(&format!("/v1/jobs/{id}/cancel")).await;
    assert_eq!(status, 200);
    let (status, rest) = tokio::task::block_in_place(|| tail.wait_exit());
    assert_eq!(status.code(), Some(4), "{rest:?}\n{}", tail.stderr());
    assert!(rest.iter().any(|l| l.contains("job.cancelled")), "{rest:?}");

    let missing = cli(&s, &["tail", "--job", "nope"]).await;
    assert_eq!(missing.status.code(), Some(3));
    assert!(text(&missing.stderr).contains("not found"));
}

/// `--server --job` tells a missing job (the API's 404, exit 3) from a 404 of something that is
/// not a Hopper API at that address, say a proxy answering every path with an empty 404: that
/// is a wrong `--server` (exit 2, said so), not a missing job.
#[tokio::test(flavor = "multi_thread")]
async fn tail_server_job_tells_a_missing_job_from_a_server_that_is_not_hopper() {
    let s = Scratch::with_config("");
    let (_d, api) = s.serve(&[]);
    let missing = "01a22e08-83e9-762c-9c6e-25a90b984a64";
    let out = cli(&s, &["tail", "--server", &api.base, "--job", missing]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("not found"),
        "{}",
        text(&out.stderr)
    );

    // A real HTTP server that is not Hopper: every request gets an empty 404.
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = other.local_addr().unwrap();
    let serving = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut conn, _)) = other.accept().await else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
            let _ = conn
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
        }
    });
    let server = format!("http://{addr}");
    let out = cli(&s, &["tail", "--server", &server, "--job", missing]).await;
    serving.abort();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("is --server the address of a Hopper API?")
            && !stderr.contains("not found"),
        "{stderr}"
    );
}

/// `--json` prints each event as one JSON line, in the log's order (each job's events in its
/// history's order), and `--since CURSOR` starts exactly after that cursor.
#[tokio::test(flavor = "multi_thread")]
async fn tail_json_is_ordered_and_since_resumes_exactly_after_the_cursor() {
    let s = Scratch::with_config("[worker]\nconcurrency = 1\n");
    let (_d, api) = s.serve(&[]);
    let tail = Follow::start(&s, &["tail", "--json", "--queue", "default"]);
    // Started from the end of the log: give it a moment to reach it, then make events.
    tail.wait_stderr("following");
    let a = api
        .enqueue_ok(json!({"kind": "sys.sleep", "payload": {"ms": 1000}}))
        .await;
    let b = api
        .enqueue_ok(json!({"kind": "sys.noop", "payload": {}}))
        .await;
    api.wait_state(&a, "succeeded").await;
    api.wait_state(&b, "succeeded").await;
    let history = |id: &str| -> Vec<Value> { s.cli_job(id)["history"].as_array().unwrap().clone() };
    let (ha, hb) = (history(&a), history(&b));
    let total = ha.len() + hb.len();
    let seen: Vec<Value> = tokio::task::block_in_place(|| tail.lines(total))
        .iter()
        .map(|l| parse_event(l))
        .collect();
    let ids = |evs: &[Value], job: &str| -> Vec<String> {
        evs.iter()
            .filter(|e| e["job_id"] == job)
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&seen, &a), ids(&ha, &a));
    assert_eq!(ids(&seen, &b), ids(&hb, &b));
    assert!(seen.iter().any(|e| e["type"] == "job.progress"));
    drop(tail);

    // Resume after a's start: exactly what the first follower saw after it, in its order.
    let cursor = ha[1]["id"].as_str().unwrap().to_owned();
    assert_eq!(ha[1]["type"], "job.started");
    let at = seen
        .iter()
        .position(|e| e["id"] == cursor.as_str())
        .unwrap();
    let want: Vec<&Value> = seen[at + 1..].iter().collect();
    let resumed = Follow::start(
        &s,
        &["tail", "--json", "--queue", "default", "--since", &cursor],
    );
    let got: Vec<Value> = tokio::task::block_in_place(|| resumed.lines(want.len()))
        .iter()
        .map(|l| parse_event(l))
        .collect();
    assert_eq!(got.iter().collect::<Vec<_>>(), want);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(resumed.pending().is_empty(), "{:?}", resumed.pending());
}

/// A `--since` cursor past the end of the log (on SQLite a row id, kept from before the file
/// was replaced) is a gap, said on stderr, and following starts from the log's oldest event:
/// before, the tail stayed silent until the log's ids caught up with the cursor.
#[tokio::test(flavor = "multi_thread")]
async fn tail_since_past_the_end_of_the_log_is_a_gap_then_the_log_from_its_start() {
    let s = Scratch::with_config("[worker]\nconcurrency = 1\n");
    let (_d, api) = s.serve(&[]);
    let id = api
        .enqueue_ok(json!({"kind": "sys.noop", "payload": {}}))
        .await;
    api.wait_state(&id, "succeeded").await;
    let history = s.cli_job(&id)["history"].as_array().unwrap().clone();
    let tail = Follow::start(&s, &["tail", "--json", "--since", "999999999"]);
    tail.wait_stderr("gap");
    // The whole log up to the job's last event (SQLite's ids are its row numbers): the
    // retention job's events may come first.
    let upto: usize = history.last().unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let seen: Vec<Value> = tokio::task::block_in_place(|| tail.lines(upto))
        .iter()
        .map(|l| parse_event(l))
        .collect();
    let ids = |evs: &[Value]| -> Vec<String> {
        evs.iter()
            .filter(|e| e["job_id"] == id.as_str())
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&seen), ids(&history), "the log from its start");
}

/// `--job` with a `--since` past the end of the log follows the job from the log's oldest
/// event, as it says: it followed from the log's end, and the job's start was missing.
#[tokio::test]
async fn tail_job_since_past_the_end_follows_the_job_from_the_start() {
    let s = Scratch::with_config("");
    let (_d, api) = s.serve(&[]);
    let id = api
        .enqueue_ok(json!({"kind": "sys.sleep", "payload": {"ms": 1500}}))
        .await;
    api.wait_state(&id, "running").await;
    let out = wait::within(
        "tail --job --since",
        cli(
            &s,
            &["tail", "--json", "--job", &id, "--since", "999999999"],
        ),
    )
    .await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("gap"), "{stderr}");
    let types: Vec<String> = stdout
        .lines()
        .map(parse_event)
        .filter(|e| e["job_id"] == id.as_str())
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types.first().map(String::as_str),
        Some("job.enqueued"),
        "{types:?}"
    );
    assert!(types.iter().any(|t| t == "job.started"), "{types:?}");
    assert_eq!(
        types.last().map(String::as_str),
        Some("job.succeeded"),
        "{types:?}"
    );
}

/// `--server`: follows a remote node's WebSocket with the token as a bearer header, prints its
/// frames, and when the server goes away reconnects with the last cursor it printed, saying
/// so; the job's final event ends it with the job's exit code.
#[tokio::test(flavor = "multi_thread")]
async fn tail_server_reconnects_with_its_last_cursor_after_a_restart() {
    let s = Scratch::with_config("");
    let mut peer = WsPeer::start().await;
    let tail = Follow::start(
        &s,
        &[
            "tail",
            "--server",
            &peer.url(),
            "--token",
            "s3cret",
            "--job",
            "j1",
            "--json",
        ],
    );
    let mut conn = peer.accept().await;
    assert!(conn.uri.starts_with("/v1/events?"), "{}", conn.uri);
    assert_eq!(conn.query("job").as_deref(), Some("j1"));
    assert_eq!(conn.query("since"), None);
    assert_eq!(conn.authorization.as_deref(), Some("Bearer s3cret"));
    conn.send(&event("c1", "job.started", "j1", None)).await;
    conn.send(&event("c2", "job.progress", "j1", Some(40)))
        .await;
    let first = tokio::task::block_in_place(|| tail.lines(2));
    assert_eq!(parse_event(&first[1])["id"], "c2");

    // The server restarts: the connection drops and nobody listens for a while.
    drop(conn);
    let addr = peer.stop();
    tokio::task::block_in_place(|| tail.wait_stderr("reconnecting"));
    let mut peer = WsPeer::restart(addr).await;
    let mut conn = peer.accept().await;
    assert_eq!(conn.query("since").as_deref(), Some("c2"));
    assert_eq!(conn.query("job").as_deref(), Some("j1"));
    tokio::task::block_in_place(|| tail.wait_stderr("resumed after c2"));
    conn.send(&json!({"type": "gap"})).await;
    conn.send(&event("c3", "job.progress", "j1", Some(80)))
        .await;
    conn.send(&event("c4", "job.succeeded", "j1", None)).await;
    let mut tail = tail;
    let (status, rest) = tokio::task::block_in_place(|| tail.wait_exit());
    assert_eq!(status.code(), Some(0), "{rest:?}\n{}", tail.stderr());
    let ids: Vec<Value> = rest.iter().map(|l| parse_event(l)["id"].clone()).collect();
    assert_eq!(ids, vec![json!("c3"), json!("c4")]);
    assert!(tail.stderr().contains("gap"), "{}", tail.stderr());
}

/// A server that closes with 4001 refused the token: exit 2 with its reason. A `lagged`
/// frame makes the client resume from the cursor it names.
#[tokio::test(flavor = "multi_thread")]
async fn tail_server_bad_token_exits_2_and_lagged_resumes() {
    let s = Scratch::with_config("");
    let mut peer = WsPeer::start().await;
    let tail = Follow::start(&s, &["tail", "--server", &peer.url(), "--queue", "mail"]);
    let mut conn = peer.accept().await;
    assert_eq!(conn.query("queue").as_deref(), Some("mail"));
    assert_eq!(conn.authorization, None);
    conn.send(&event("c7", "job.enqueued", "j9", None)).await;
    tokio::task::block_in_place(|| tail.next_line());
    conn.send(&json!({"type": "lagged", "resume": "c8"})).await;
    let conn = peer.accept().await;
    assert_eq!(conn.query("since").as_deref(), Some("c8"));
    conn.close(4001, "invalid token").await;
    let mut tail = tail;
    let (status, _) = tokio::task::block_in_place(|| tail.wait_exit());
    assert_eq!(status.code(), Some(2), "{}", tail.stderr());
    assert!(tail.stderr().contains("invalid token"), "{}", tail.stderr());
}

/// A job that ends between the API's read of it and its read of the history answers
/// `running` with a history ending in `job.succeeded`: `tail --server --job` ends there with
/// the code of that end (no later event of the job would ever come on the stream).
#[tokio::test(flavor = "multi_thread")]
async fn tail_server_job_that_ended_during_the_lookup_exits_with_its_end() {
    let s = Scratch::with_config("");
    let peer = WsPeer::start().await;
    let history = json!([
        event("c1", "job.enqueued", "j1", None),
        event("c2", "job.started", "j1", None),
        event("c3", "job.dead", "j1", None),
    ]);
    peer.script(
        "200 OK",
        &[],
        &json!({"id": "j1", "state": "running", "history": history}),
    );
    let mut tail = Follow::start(
        &s,
        &["tail", "--server", &peer.url(), "--job", "j1", "--json"],
    );
    let (status, lines) = tokio::task::block_in_place(|| tail.wait_exit());
    assert_eq!(status.code(), Some(1), "{lines:?}\n{}", tail.stderr());
    let ids: Vec<Value> = lines.iter().map(|l| parse_event(l)["id"].clone()).collect();
    assert_eq!(ids, vec![json!("c1"), json!("c2"), json!("c3")]);
}

/// A rate-limited server (429 with `Retry-After`, `[server] rate_limit`) is waited for, on the
/// job lookup and on the stream alike, not taken for a refusal (exit 2).
#[tokio::test(flavor = "multi_thread")]
async fn tail_server_waits_out_a_429() {
    let s = Scratch::with_config("");
    let mut peer = WsPeer::start().await;
    let limited = json!({"error": {"code": "rate_limited", "message": "too many requests"}});
    // The lookup is refused once, then answered; the stream's first attempt is refused too.
    peer.script("429 Too Many Requests", &[("retry-after", "1")], &limited);
    peer.script(
        "200 OK",
        &[],
        &json!({"id": "j1", "state": "running", "history": []}),
    );
    peer.script("429 Too Many Requests", &[("retry-after", "1")], &limited);
    let tail = Follow::start(
        &s,
        &["tail", "--server", &peer.url(), "--job", "j1", "--json"],
    );
    let mut conn = peer.accept().await;
    assert_eq!(conn.query("job").as_deref(), Some("j1"));
    let said = tail.stderr();
    assert_eq!(
        said.matches("rate limited").count(),
        2,
        "the lookup's 429 and the stream's: {said}"
    );
    conn.send(&event("c1", "job.succeeded", "j1", None)).await;
    let mut tail = tail;
    let (status, rest) = tokio::task::block_in_place(|| tail.wait_exit());
    assert_eq!(status.code(), Some(0), "{rest:?}\n{}", tail.stderr());
}

/// `--server` against the real `serve`: `tail --job` first asks `GET /v1/jobs/{id}`, so a job
/// already final shows its history and exits at once with its code (0 succeeded, 1 dead), a
/// missing one exits 3, and a refused token exits 2 with the server's message.
#[tokio::test(flavor = "multi_thread")]
async fn tail_server_job_already_final_exits_at_once_and_missing_exits_3() {
    let s = Scratch::with_config("[auth]\ntokens = [\"s3cret\"]\n");
    let (d, api) = s.serve(&[]);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", "Bearer s3cret".parse().unwrap());
    let api = crate::util::Api {
        http: reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap(),
        ..api
    };
    let base = d.wait_addr();
    let ok = api
        .enqueue_ok(json!({"kind": "sys.noop", "payload": {}}))
        .await;
    let dead = api
        .enqueue_ok(json!({"kind": "sys.fail", "payload": {"times": 99, "permanent": true}}))
        .await;
    api.wait_state(&ok, "succeeded").await;
    api.wait_state(&dead, "dead").await;
    let tail = |job: &str, token: &str| {
        let args = [
            "tail", "--server", &base, "--token", token, "--job", job, "--json",
        ]
        .map(str::to_owned);
        let s = &s;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            wait::within("tail --server --job", cli(s, &args)).await
        }
    };

    let out = tail(&ok, "s3cret").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown: Vec<Value> = text(&out.stdout).lines().map(parse_event).collect();
    assert_eq!(shown.first().unwrap()["type"], "job.enqueued");
    assert_eq!(shown.last().unwrap()["type"], "job.succeeded");

    let out = tail(&dead, "s3cret").await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("job.dead"));

    let out = tail("nope", "s3cret").await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("not found"),
        "{}",
        text(&out.stderr)
    );

    let out = tail(&ok, "wrong").await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("401"), "{}", text(&out.stderr));
}
