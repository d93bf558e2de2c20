//! `GET /v1/events` against the real binary (Hopper issue 9): a real WebSocket client
//! (tokio-tungstenite) sees a job's events in order, resumes with `since` without a gap or a
//! duplicate (a cursor older than retention or past the end of the log is told `gap`; one
//! another process just issued is not), follows jobs run by another process on Redis, is told `lagged` when it stops
//! reading (while the server's memory stays bounded), and is closed with 4001 without a
//! token; SSE resumes from `Last-Event-ID`; bad filters are 400s naming the parameter.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;

use hopper_workers::NewJob;
use hopper_workers::broker::{Broker, OpenOptions};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Error as WsError;

use crate::util::redis::{CLUSTER_URL, ClusterKeys, RedisKeys, SHARED_URL};
use crate::util::stream::{self, Next, Sse, close, connect, connect_with, read_until, ws_url};
use crate::util::{Scratch, noop, sleep, wait};

fn types(frames: &[Value]) -> Vec<&str> {
    frames.iter().map(|f| f["type"].as_str().unwrap()).collect()
}

fn ids(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_owned())
        .collect()
}

fn succeeded(f: &Value) -> bool {
    f["type"] == "job.succeeded"
}

/// A config whose retention job runs once a year, not at the next minute: the tests that
/// compare whole logs then see only their own events (and the job's one `job.enqueued`).
const QUIET: &str = "[retention]\ncron = \"0 0 0 1 1 *\"\n";

#[tokio::test]
async fn a_sleep_job_streams_enqueued_started_progress_succeeded_in_order() {
    let s = Scratch::with_config("");
    let (_d, api) = s.serve(&[]);
    let mut ws = connect(&ws_url(&api.base, "queue=default&kind=sys.sleep")).await;
    let id = api.enqueue_ok(sleep(1500)).await;
    let frames = read_until(&mut ws, succeeded).await;
    assert!(
        frames.iter().all(|f| f["job_id"] == id.as_str()),
        "{frames:?}"
    );
    let t = types(&frames);
    assert_eq!(t.first(), Some(&"job.enqueued"), "{t:?}");
    assert_eq!(t.get(1), Some(&"job.started"), "{t:?}");
    assert_eq!(t.last(), Some(&"job.succeeded"), "{t:?}");
    let progress = &frames[2..frames.len() - 1];
    assert!(progress.len() >= 3, "several progress events: {t:?}");
    assert!(
        progress.iter().all(|f| f["type"] == "job.progress"),
        "{t:?}"
    );
    let pcts: Vec<u64> = progress
        .iter()
        .map(|f| f["progress"].as_u64().unwrap())
        .collect();
    assert!(
        pcts.windows(2).all(|w| w[0] <= w[1]),
        "progress only grows: {pcts:?}"
    );
    // The frames are the history's events, ids and all.
    let history = api.job(&id).await["history"].as_array().unwrap().clone();
    assert_eq!(ids(&frames), ids(&history));
    close(ws).await;
}

#[tokio::test]
async fn reconnecting_with_since_yields_exactly_the_missed_events() {
    let s = Scratch::with_config("");
    let (_d, api) = s.serve(&[]);
    let mut ws = connect(&ws_url(&api.base, "")).await;
    let id = api.enqueue_ok(sleep(2000)).await;
    let seen = read_until(&mut ws, |f| f["type"] == "job.progress").await;
    let cursor = seen.last().unwrap()["id"].as_str().unwrap().to_owned();
    close(ws).await;
    api.wait_state(&id, "succeeded").await;
    // Other traffic in between, that the filter leaves out.
    api.enqueue_ok(sleep(1)).await;

    let mut ws = connect(&ws_url(&api.base, &format!("since={cursor}&job={id}"))).await;
    let missed = read_until(&mut ws, succeeded).await;
    let history = api.job(&id).await["history"].as_array().unwrap().clone();
    let all = ids(&history);
    let at = all.iter().position(|i| *i == cursor).unwrap();
    assert_eq!(
        ids(&missed),
        all[at + 1..],
        "exactly the events after the cursor"
    );
    assert_eq!(ids(&seen).last(), all.get(at));

    // Live after the replay, with no duplicate at the seam: a new job's events arrive once.
    let mut ws2 = connect(&ws_url(&api.base, &format!("since={cursor}"))).await;
    let id2 = api.enqueue_ok(sleep(1)).await;
    let frames = read_until(&mut ws2, |f| f["job_id"] == id2.as_str() && succeeded(f)).await;
    let unique: HashSet<String> = ids(&frames).into_iter().collect();
    assert_eq!(unique.len(), frames.len(), "no event twice: {frames:?}");
    close(ws).await;
    close(ws2).await;
}

#[tokio::test]
async fn the_json_page_and_sse_resume_from_a_cursor() {
    let s = Scratch::with_config("");
    let (_d, api) = s.serve(&[]);
    let id = api.enqueue_ok(sleep(1)).await;
    api.wait_state(&id, "succeeded").await;
    let page = api.get_json("/v1/events", &[("job", &id)]).await;
    let events = page["events"].as_array().unwrap().clone();
    assert_eq!(types(&events).last(), Some(&"job.succeeded"));
    let first = events[0]["id"].as_str().unwrap().to_owned();
    let rest = api
        .get_json("/v1/events", &[("job", &id), ("since", &first)])
        .await;
    assert_eq!(ids(rest["events"].as_array().unwrap()), ids(&events)[1..]);

    let url = format!("{}/v1/events?job={id}", api.base);
    let mut sse = Sse::open(&url, &[("last-event-id", &first)]).await;
    for want in &ids(&events)[1..] {
        let f = sse.next().await;
        assert_eq!(f.id.as_deref(), Some(want.as_str()));
        assert_eq!(f.data["id"], want.as_str());
    }
    // An EventSource opened with `since` reconnects to the same URL with the last id it
    // received as `Last-Event-ID`: the header, the newer position, wins (`since` replayed
    // what it had already).
    let second = ids(&events)[1].clone();
    let url = format!("{}/v1/events?job={id}&since={first}", api.base);
    let mut sse = Sse::open(&url, &[("last-event-id", &second)]).await;
    for want in &ids(&events)[2..] {
        let f = sse.next().await;
        assert_eq!(f.id.as_deref(), Some(want.as_str()), "after Last-Event-ID");
    }
    // Then live: a stream opened without a cursor gets what happens after it opened, so it
    // opens before the job it waits for is enqueued (by kind, as the job's id is not known yet).
    let url = format!("{}/v1/events?kind=sys.sleep", api.base);
    let mut live = Sse::open(&url, &[]).await;
    let id2 = api.enqueue_ok(sleep(1)).await;
    let mut seen = Vec::new();
    while seen.last().is_none_or(|t: &String| t != "job.succeeded") {
        let f = live.next().await;
        if f.data["job_id"] == id2.as_str() {
            seen.push(f.data["type"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(seen.first().map(String::as_str), Some("job.enqueued"));
}

#[tokio::test]
async fn bad_filters_are_400_naming_the_parameter_before_the_upgrade() {
    let s = Scratch::with_config("");
    let (_d, api) = s.serve(&[]);
    for (query, field) in [
        ("type=job.exploded", "type"),
        ("queue=no%20spaces", "queue"),
        ("since=garbage", "since"),
        ("colour=red", "colour"),
    ] {
        let (status, body) = api
            .call(reqwest::Method::GET, &format!("/v1/events?{query}"), None)
            .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
        match connect_with(&ws_url(&api.base, query), &[]).await {
            Err(WsError::Http(res)) => assert_eq!(res.status(), 400, "{query}"),
            other => panic!("{query}: the upgrade was not refused: {other:?}"),
        }
    }
}

/// A client that closes gets the server's Close frame back (RFC 6455 5.5.1), on the events
/// and the notifications stream: a browser whose closing handshake goes unanswered reports
/// code 1006, an abnormal closure, for a close it asked for itself.
#[tokio::test]
async fn a_close_from_the_client_is_answered_with_a_close() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let s = Scratch::with_config(crate::util::inbox_client::AUTH);
    let (_d, api) = s.serve(&["--no-workers"]);
    let mut sockets = vec![connect(&ws_url(&api.base, "")).await];
    sockets.push(crate::util::inbox_client::connect_as(&api, "u1", "").await);
    for mut ws in sockets {
        ws.send(Message::Close(None)).await.unwrap();
        let answer = tokio::time::timeout(wait::DEADLINE, async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(_))) => return Ok(()),
                    Some(Ok(_)) => {}
                    other => return Err(format!("{other:?}")),
                }
            }
        })
        .await
        .expect("an answer before the deadline");
        assert!(
            answer.is_ok(),
            "no Close frame came back: {}",
            answer.unwrap_err()
        );
    }
}

#[tokio::test]
async fn without_a_valid_token_the_socket_closes_with_4001() {
    let s = Scratch::with_config("[auth]\ntokens = [\"s3cret\"]\n");
    let (_d, api) = s.serve(&[]);
    for (query, headers) in [
        ("", vec![]),
        ("token=wrong", vec![]),
        ("", vec![("authorization", "Bearer wrong")]),
    ] {
        let mut ws = connect_with(&ws_url(&api.base, query), &headers)
            .await
            .unwrap();
        match stream::next(&mut ws).await {
            Next::Closed(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 4001, "{query} {headers:?}");
                // Missing or wrong alike, the reason says no valid token came (a client that
                // sent a wrong one is not just told to pass one).
                assert!(
                    frame.reason.starts_with("unauthorized: no valid token"),
                    "{}",
                    frame.reason
                );
                assert!(
                    frame.reason.len() <= 123,
                    "a close reason fits in 123 bytes"
                );
            }
            other => panic!("{query} {headers:?}: not closed with 4001: {other:?}"),
        }
    }
    // A good token in each of the three places streams events.
    let url = ws_url(&api.base, "");
    let url_q = ws_url(&api.base, "token=s3cret");
    let mut sockets = vec![
        connect_with(&url, &[("authorization", "Bearer s3cret")])
            .await
            .unwrap(),
        connect_with(&url_q, &[]).await.unwrap(),
        connect_with(&url, &[("sec-websocket-protocol", "hopper, token.s3cret")])
            .await
            .unwrap(),
    ];
    let res = api
        .http
        .post(format!("{}/v1/jobs", api.base))
        .bearer_auth("s3cret")
        .json(&sleep(1))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for ws in &mut sockets {
        let frames = read_until(ws, |f| f["job_id"] == id.as_str() && succeeded(f)).await;
        let mine: Vec<&Value> = frames
            .iter()
            .filter(|f| f["job_id"] == id.as_str())
            .collect();
        assert_eq!(mine[0]["type"], "job.enqueued", "{frames:?}");
    }
    // SSE and the page answer 401 without a token, like the rest of /v1.
    let (status, _) = api.call(reqwest::Method::GET, "/v1/events", None).await;
    assert_eq!(status, 401);
    let (status, _) = api
        .call(reqwest::Method::GET, "/v1/events?token=s3cret", None)
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn api_nodes_on_one_redis_stream_a_job_run_by_a_worker_process() {
    let keys = RedisKeys::claim();
    let s = Scratch::new();
    s.write_config_with_broker(SHARED_URL, &keys.prefix, "");
    let (_a, api_a) = s.serve(&["--no-workers"]);
    let (_b, api_b) = s.serve(&["--no-workers"]);
    let mut ws_a = connect(&ws_url(&api_a.base, "")).await;
    let mut ws_b = connect(&ws_url(&api_b.base, "")).await;
    let id = api_a.enqueue_ok(sleep(500)).await;
    let _worker = s.start(&["worker"]);
    let done = |f: &Value| f["job_id"] == id.as_str() && succeeded(f);
    let a = read_until(&mut ws_a, done).await;
    let b = read_until(&mut ws_b, done).await;
    assert_eq!(ids(&a), ids(&b), "both nodes deliver the same events");
    assert!(types(&a).contains(&"job.started"), "{a:?}");
    let history = api_b.job(&id).await["history"].as_array().unwrap().clone();
    let mine: Vec<Value> = a
        .iter()
        .filter(|f| f["job_id"] == id.as_str())
        .cloned()
        .collect();
    assert_eq!(ids(&mine), ids(&history), "{a:?}");
}

/// The server's resident memory, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The scratch config's broker, opened directly: another process writing to the same log.
async fn open_broker(s: &Scratch) -> Arc<dyn Broker> {
    hopper_workers::broker::open_with(
        &s.broker_url(),
        &OpenOptions::new("hopper"),
        hopper_workers::clock::system(),
    )
    .await
    .unwrap()
}

/// Enqueues `n` `sys.noop` jobs in one batch.
async fn enqueue_noops(broker: &dyn Broker, n: usize) {
    let batch = (0..n).map(|_| NewJob::new("sys.noop", json!({}))).collect();
    broker.enqueue(batch).await.unwrap();
}

/// The liveness checks (a send blocked for two ping intervals, two pongs missed) are put out
/// of reach: this client reads nothing while the events are written, which takes longer than
/// the default 40 s on a loaded machine, and it is the lag that must end its stream here.
#[tokio::test]
async fn a_client_that_stops_reading_gets_lagged_and_memory_stays_bounded() {
    let s = Scratch::new();
    s.write_config_with_server("ws_ping_interval = \"1h\"\n", "");
    let (d, api) = s.serve(&["--no-workers"]);
    let mut idle = connect(&ws_url(&api.base, "")).await;
    // Another process writes 100,000 events to the same file; this client reads none of them.
    let broker = open_broker(&s).await;
    let mut peak = 0;
    for _ in 0..100 {
        enqueue_noops(&*broker, 1000).await;
        peak = peak.max(rss_kib(d.pid()));
    }
    let last = broker.events(None, 1).await.unwrap();
    assert!(!last.is_empty());
    // Reading again: what the socket buffered, then `lagged` with a cursor, then the close.
    let mut frames = 0u64;
    let lagged = loop {
        match stream::next(&mut idle).await {
            Next::Json(v) if v["type"] == "lagged" => break v,
            Next::Json(_) => frames += 1,
            Next::Closed(f) => panic!("closed without lagged after {frames} frames: {f:?}"),
        }
        peak = peak.max(rss_kib(d.pid()));
    };
    assert!(frames < 100_000, "the client was cut off before the end");
    let resume = lagged["resume"].as_str().unwrap().to_owned();
    assert!(matches!(stream::next(&mut idle).await, Next::Closed(_)));
    // The cursor resumes where the client left off.
    let rest = api
        .get_json("/v1/events", &[("since", &resume), ("limit", "1")])
        .await;
    assert_eq!(rest["events"].as_array().unwrap().len(), 1);
    peak = peak.max(rss_kib(d.pid()));
    eprintln!("slow consumer: {frames} frames before lagged; server peak VmRSS {peak} KiB");
    assert!(peak < 300 * 1024, "server RSS {peak} KiB");
    wait::until("the server still answers", async || {
        Ok::<_, String>(api.get_json("/readyz", &[]).await)
    })
    .await;
}

#[tokio::test]
async fn a_replay_longer_than_one_write_burst_loses_no_event() {
    let s = Scratch::with_config("");
    let (_d, api) = s.serve(&["--no-workers"]);
    let broker = open_broker(&s).await;
    // Far more events than one write of the socket gathers (256 frames): the replay has them
    // all ready at once.
    enqueue_noops(&*broker, 700).await;
    let first = broker.events(None, 1).await.unwrap()[0].id.clone();
    let want = ids(&api
        .get_json("/v1/events", &[("since", &first), ("limit", "1000")])
        .await["events"]
        .as_array()
        .unwrap()
        .clone());
    assert!(want.len() >= 699, "{} events", want.len());
    let last = want.last().unwrap().clone();
    let mut ws = connect(&ws_url(&api.base, &format!("since={first}"))).await;
    let got = read_until(&mut ws, |f| f["id"] == last.as_str()).await;
    assert_eq!(
        ids(&got),
        want,
        "every event after the cursor, once, in order"
    );
    close(ws).await;
}

/// A replay is read a page at a time while the client talks and the server pings: a frame
/// from the client (its own keep-alive ping here) or the server's ping timer while a page was
/// being read cut the replay short, with no gap frame, and the stream went live; a client
/// replaying many events lost most of them.
#[tokio::test]
async fn a_replay_interrupted_by_pings_loses_no_event() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let s = Scratch::new();
    s.write_config_with_server("ws_ping_interval = \"1s\"\n", "");
    let (_d, api) = s.serve(&["--no-workers"]);
    let broker = open_broker(&s).await;
    for _ in 0..5 {
        enqueue_noops(&*broker, 1000).await;
    }
    let first = broker.events(None, 1).await.unwrap()[0].id.clone();
    let mut want = Vec::new();
    let mut after = first.clone();
    loop {
        let page = api
            .get_json("/v1/events", &[("since", &after), ("limit", "1000")])
            .await;
        let page = ids(page["events"].as_array().unwrap());
        let Some(last) = page.last() else { break };
        after = last.clone();
        want.extend(page);
    }
    assert_eq!(want.len(), 4999);
    let last = want.last().unwrap().clone();
    let mut ws = connect(&ws_url(&api.base, &format!("since={first}"))).await;
    let mut got = Vec::new();
    let mut ping = tokio::time::interval(std::time::Duration::from_millis(2));
    // Read until the last event, or until nothing came for a long while (a replay cut short
    // goes live, and nothing more comes).
    let quiet = std::time::Duration::from_secs(15);
    let mut idle = tokio::time::Instant::now() + quiet;
    loop {
        tokio::select! {
            _ = ping.tick() => ws.send(Message::Ping(Vec::new().into())).await.unwrap(),
            () = tokio::time::sleep_until(idle) => break,
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    idle = tokio::time::Instant::now() + quiet;
                    let v: Value = serde_json::from_str(&t).unwrap();
                    let done = v["id"] == last.as_str();
                    got.push(v);
                    if done {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("the stream ended after {} frames: {other:?}", got.len()),
            },
        }
    }
    let got = ids(&got);
    assert_eq!(got.len(), want.len(), "frames received of the replay");
    assert_eq!(got, want, "every event after the cursor, once, in order");
    close(ws).await;
}

#[tokio::test]
async fn a_cursor_older_than_retention_gets_a_gap_frame_then_the_oldest_events() {
    let s = Scratch::with_config(QUIET);
    let (_d, api) = s.serve(&["--no-workers"]);
    let broker = open_broker(&s).await;
    enqueue_noops(&*broker, 10).await;
    let old = broker.events(None, 1).await.unwrap()[0].id.clone();
    // Retention trims the log to its newest 3 events.
    broker
        .purge(&[], hopper_workers::time::Timestamp::EPOCH, 3)
        .await
        .unwrap();
    let kept = ids(api.get_json("/v1/events", &[]).await["events"]
        .as_array()
        .unwrap());
    assert_eq!(kept.len(), 3);
    let page = api.get_json("/v1/events", &[("since", &old)]).await;
    assert_eq!(page["gap"], true);

    let mut ws = connect(&ws_url(&api.base, &format!("since={old}"))).await;
    assert_eq!(stream::next_json(&mut ws).await, json!({"type": "gap"}));
    let mut replayed = Vec::new();
    for _ in 0..3 {
        replayed.push(stream::next_json(&mut ws).await);
    }
    assert_eq!(ids(&replayed), kept);
    // A cursor still in the log is no gap.
    let mut ws = connect(&ws_url(&api.base, &format!("since={}", kept[0]))).await;
    assert_eq!(stream::next_json(&mut ws).await["id"], kept[1].as_str());
}

/// On Redis each queue's stream is trimmed apart: a cursor whose later events retention
/// trimmed gets its gap although another queue still holds older events (it got none, and
/// the trimmed events were skipped without a word).
#[tokio::test]
async fn on_redis_a_cursor_trimmed_in_its_queue_is_a_gap_whatever_other_queues_hold() {
    let keys = RedisKeys::claim();
    let s = Scratch::new();
    s.write_config_with_broker(SHARED_URL, &keys.prefix, QUIET);
    let (_d, api) = s.serve(&["--no-workers"]);
    let broker = hopper_workers::broker::open_with(
        SHARED_URL,
        &OpenOptions::new(&keys.prefix),
        hopper_workers::clock::system(),
    )
    .await
    .unwrap();
    for _ in 0..3 {
        api.enqueue_ok(json!({"kind": "sys.noop", "queue": "old"}))
            .await;
    }
    let mut cursor = None;
    for i in 0..10 {
        let id = api
            .enqueue_ok(json!({"kind": "sys.noop", "queue": "busy"}))
            .await;
        if i == 1 {
            cursor = Some(api.job(&id).await["history"][0]["id"].clone());
        }
    }
    let cursor = cursor.unwrap().as_str().unwrap().to_owned();
    // Each stream keeps its newest 5: `old` all 3, `busy` its last 5.
    broker
        .purge(&[], hopper_workers::time::Timestamp::EPOCH, 5)
        .await
        .unwrap();
    let page = api.get_json("/v1/events", &[("since", &cursor)]).await;
    assert_eq!(page["gap"], true, "{page:#}");
    let mut ws = connect(&ws_url(&api.base, &format!("since={cursor}"))).await;
    assert_eq!(stream::next_json(&mut ws).await, json!({"type": "gap"}));
    close(ws).await;
}

#[tokio::test]
async fn streams_past_max_connections_are_503() {
    let s = Scratch::new();
    s.write_config_with_server("max_connections = 1", "");
    let (d, api) = s.serve(&["--no-workers"]);
    let first = connect(&ws_url(&api.base, "")).await;
    match connect_with(&ws_url(&api.base, ""), &[]).await {
        Err(WsError::Http(res)) => assert_eq!(res.status(), 503),
        other => panic!("a second stream was not refused: {other:?}"),
    }
    let res = reqwest::Client::new()
        .get(format!("{}/v1/events", api.base))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_connections");
    // The JSON page is not a stream: it is served.
    api.get_json("/v1/events", &[]).await;
    // A refusal on purpose is a warning in the log, not an error.
    d.wait_log("request refused: unavailable");
    assert!(!d.log_text().contains("ERROR"), "{}", d.log_text());
    close(first).await;
    wait::until("the closed stream's slot was never freed", async || {
        connect_with(&ws_url(&api.base, ""), &[])
            .await
            .map_err(|e| e.to_string())
    })
    .await;
}

/// An SSE client that stops reading is dropped once a frame has waited two ping intervals to
/// be taken, as a WebSocket is: it does not keep its place under `max_connections` (nor the
/// task feeding it, nor its connection) for as long as its TCP peer acknowledges zero-window
/// probes.
#[tokio::test]
async fn an_sse_client_that_stops_reading_frees_its_connection_slot() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let s = Scratch::new();
    s.write_config_with_server("max_connections = 1\nws_ping_interval = \"1s\"", "");
    let (_d, api) = s.serve(&["--no-workers"]);
    // A small receive window, so that a few MB of frames fill what the kernels hold.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr = api.base.trim_start_matches("http://").to_owned();
    let mut stalled = socket.connect(addr.parse().unwrap()).await.unwrap();
    stalled
        .write_all(
            format!("GET /v1/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    // Its answer's head, then nothing more.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = wait::within("the stream's answer", stalled.read(&mut byte))
            .await
            .unwrap();
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let second = async || {
        reqwest::Client::new()
            .get(format!("{}/v1/events", api.base))
            .header("accept", "text/event-stream")
            .send()
            .await
            .map_err(|e| e.to_string())
    };
    wait::until(
        "the stalled stream to hold the one slot",
        async || match second().await?.status().as_u16() {
            503 => Ok(()),
            other => Err(format!("a second stream got {other}")),
        },
    )
    .await;
    // Another process writes 14,000 events of ~450 bytes (the longest kind and queue names),
    // paced so that the stream keeps up with the log until the kernels' buffers are full, and
    // fewer than the hub's ring holds after that, so the stream is never `lagged` (which would
    // end it anyway): it waits on a client that reads nothing.
    let broker = open_broker(&s).await;
    let (kind, queue) = ("k".repeat(128), "q".repeat(64));
    for _ in 0..140 {
        let batch = (0..100)
            .map(|_| NewJob::new(kind.as_str(), json!({})).queue(queue.as_str()))
            .collect();
        broker.enqueue(batch).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let res = wait::until("the stalled stream's slot to be freed", async || {
        let res = second().await?;
        match res.status().as_u16() {
            200 => Ok(res),
            other => Err(format!("a second stream got {other}")),
        }
    })
    .await;
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    // And its connection is closed, not left holding what was buffered for it: reading
    // again, the client gets that, then the end.
    let mut buf = vec![0u8; 1 << 16];
    wait::within("the stalled connection to be closed", async {
        loop {
            match stalled.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// Liveness: with `[server] ws_ping_interval = "1s"`, a client that never answers pings (no
/// WebSocket library on its side, so no pong) is dropped after missing two pongs, while a
/// normal client connected all along still streams. The default (20 s) would take a minute.
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_misses_two_pongs_is_dropped_and_a_live_one_stays() {
    use crate::util::silent_ws::SilentWs;

    let s = Scratch::new();
    s.write_config_with_server("ws_ping_interval = \"1s\"", "");
    let (_d, api) = s.serve(&[]);
    // The live client reads all the time (tungstenite answers each ping as it reads).
    let mut live = connect(&ws_url(&api.base, "")).await;
    let (tx, mut frames) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        loop {
            match stream::next(&mut live).await {
                Next::Json(v) => {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
                Next::Closed(f) => panic!("the live client was closed: {f:?}"),
            }
        }
    });

    let mut silent = SilentWs::connect(&api.base).await;
    let (closed, read) = silent.wait_closed(wait::DEADLINE).await;
    let took = closed.expect("the silent client was never dropped");
    // Two unanswered pings came (2 bytes each, empty), then the third tick dropped it.
    assert!(read >= 4, "only {read} bytes came before the close");
    assert!(
        took < std::time::Duration::from_secs(30),
        "dropped after {took:?}: not by the 1 s ping"
    );

    let id = api.enqueue_ok(sleep(10)).await;
    wait::within("the live client sees the new job", async {
        while let Some(v) = frames.recv().await {
            if v["job_id"] == id.as_str() && v["type"] == "job.enqueued" {
                return;
            }
        }
        panic!("the live client's reader ended");
    })
    .await;
    assert!(!reader.is_finished());
    reader.abort();
}

/// An SSE client connected (and reading) does not hold `serve` up: on SIGTERM its stream ends
/// and the process exits promptly and cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn serve_exits_promptly_on_sigterm_with_an_sse_client_connected() {
    let s = Scratch::new();
    s.write_config("");
    let (mut d, api) = s.serve(&[]);
    let mut sse = Sse::open(&format!("{}/v1/events", api.base), &[]).await;
    let id = api.enqueue_ok(sleep(10)).await;
    // The stream is live (its task runs) before the signal.
    loop {
        if sse.next().await.data["job_id"] == id.as_str() {
            break;
        }
    }
    let asked = std::time::Instant::now();
    let status = tokio::task::block_in_place(|| d.stop("TERM"));
    let took = asked.elapsed();
    assert!(status.success(), "{status}\n{}", d.log_text());
    assert!(
        took < std::time::Duration::from_secs(10),
        "serve took {took:?} to stop:\n{}",
        d.log_text()
    );
}

/// `hopper bench --workload events`: clients in a process of their own receive every progress
/// event of every job, and the report says so, with the memory of both processes.
#[test]
fn the_events_bench_delivers_every_progress_event_to_every_client() {
    let s = Scratch::new();
    let r = s.cli_json(&[
        "bench",
        "--workload",
        "events",
        "--clients",
        "3",
        "--rate",
        "400",
        "--duration",
        "1s",
    ]);
    let jobs = r["jobs"].as_u64().unwrap();
    assert!(jobs > 0, "{r}");
    assert_eq!(r["delivered"].as_u64(), Some(jobs * 3 * 3), "{r}");
    assert_eq!(r["lagged_clients"], 0, "{r}");
    assert_eq!(r["incomplete_clients"], 0, "{r}");
    assert!(r["delivery_p99_ms"].as_f64().is_some(), "{r}");
    assert!(r["rss_mb"].as_f64().is_some_and(|m| m > 0.0), "{r}");
    assert!(
        r["clients_peak_rss_mb"].as_f64().is_some_and(|m| m > 0.0),
        "{r}"
    );
}

/// Every id of the log, oldest first, read by another process than the server's.
async fn log_ids(broker: &dyn Broker) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    loop {
        let page = broker
            .events(out.last().map(String::as_str), 1000)
            .await
            .unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page.into_iter().map(|e| e.id));
    }
}

/// Frames until the one with id `last`: none of them a gap nor an event of `known` (the log up
/// to the client's cursor, which the client has).
async fn read_on_after(ws: &mut stream::Socket, last: &str, known: &[String], round: usize) {
    let frames = read_until(ws, |f| f["id"] == last).await;
    for f in &frames {
        let id = f["id"].as_str();
        assert!(
            id.is_some_and(|id| !known.iter().any(|k| k == id)),
            "round {round}: not a gap nor an event up to the cursor again: {f} in {frames:?}"
        );
    }
}

/// A cursor kept from before the database file was replaced (`rm hopper.db`, a restore) is
/// past the end of the new log: one gap, then the new log from its start, then live.
#[tokio::test]
async fn a_cursor_from_before_the_database_was_wiped_gets_a_gap_then_the_new_log() {
    let s = Scratch::with_config(QUIET);
    let (mut d, api) = s.serve(&[]);
    let before = api.enqueue_n(5, &noop()).await;
    api.wait_all(&before, "succeeded").await;
    let old = api.get_json("/v1/events", &[("limit", "1000")]).await["next"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(d.stop("TERM").success());
    for file in ["hopper.db", "hopper.db-wal", "hopper.db-shm"] {
        let _ = std::fs::remove_file(s.path().join(file));
    }
    let (_d, api) = s.serve(&[]);
    let id = api.enqueue_ok(noop()).await;
    api.wait_state(&id, "succeeded").await;
    let log = ids(
        api.get_json("/v1/events", &[("limit", "1000")]).await["events"]
            .as_array()
            .unwrap(),
    );
    let history = ids(api.job(&id).await["history"].as_array().unwrap());
    assert!(
        history.len() >= 3 && history.iter().all(|h| log.contains(h)),
        "{log:?}"
    );
    assert!(
        !log.contains(&old),
        "the new log is shorter than the old: {old} {log:?}"
    );

    let page = api.get_json("/v1/events", &[("since", &old)]).await;
    assert_eq!(page["gap"], true, "{page}");
    assert_eq!(ids(page["events"].as_array().unwrap()), log);
    assert_eq!(page["next"], log.last().unwrap().as_str());

    let mut ws = connect(&ws_url(&api.base, &format!("since={old}"))).await;
    assert_eq!(stream::next_json(&mut ws).await, json!({"type": "gap"}));
    let last = log.last().unwrap().clone();
    let replayed = read_until(&mut ws, |f| f["id"] == last.as_str()).await;
    assert_eq!(ids(&replayed), log);
    // Then live, with nothing twice at the seam.
    let id2 = api.enqueue_ok(noop()).await;
    let live = read_until(&mut ws, |f| f["job_id"] == id2.as_str() && succeeded(f)).await;
    assert_eq!(types(&live).first(), Some(&"job.enqueued"), "{live:?}");
    assert!(live.iter().all(|f| f["job_id"] == id2.as_str()), "{live:?}");
    close(ws).await;

    let url = format!("{}/v1/events", api.base);
    let mut sse = Sse::open(&url, &[("last-event-id", &old)]).await;
    let gap = sse.next().await;
    assert_eq!(gap.event.as_deref(), Some("gap"));
    assert_eq!(gap.data, json!({"type": "gap"}));
    assert_eq!(
        sse.next().await.id.as_deref(),
        log.first().map(String::as_str)
    );
}

/// A cursor another process issued a moment ago may be ahead of what this server's hub has
/// read yet (on SQLite it sees another process's writes within a poll): it is no gap, and the
/// stream goes on after it, without the events up to it again.
#[tokio::test]
async fn a_cursor_another_process_just_issued_is_no_gap() {
    let s = Scratch::with_config(QUIET);
    let (_d, api) = s.serve(&["--no-workers"]);
    let broker = open_broker(&s).await;
    enqueue_noops(&*broker, 1).await;
    for round in 0..5 {
        enqueue_noops(&*broker, 1).await;
        let known = log_ids(&*broker).await;
        let fresh = known.last().unwrap().clone();
        let mut ws = connect(&ws_url(&api.base, &format!("since={fresh}"))).await;
        let page = api.get_json("/v1/events", &[("since", &fresh)]).await;
        assert_eq!(page["gap"], false, "round {round}: {page}");
        assert!(
            !ids(page["events"].as_array().unwrap())
                .iter()
                .any(|id| known.contains(id)),
            "round {round}: {page}"
        );
        enqueue_noops(&*broker, 1).await;
        let next = log_ids(&*broker).await.last().unwrap().clone();
        read_on_after(&mut ws, &next, &known, round).await;
        close(ws).await;
    }
}

/// On Redis: an event id of the broker's form from far in the future (a wrong clock, another
/// Redis) is a gap; one another API node just issued is not.
#[tokio::test]
async fn on_redis_a_cursor_from_the_future_is_a_gap_and_one_just_issued_is_not() {
    let keys = RedisKeys::claim();
    future_and_fresh_cursors(SHARED_URL, &keys.prefix).await;
}

/// The same on a Redis Cluster, where the log merges streams on several shards.
#[tokio::test]
async fn on_a_redis_cluster_a_cursor_from_the_future_is_a_gap_and_one_just_issued_is_not() {
    let keys = ClusterKeys::claim();
    future_and_fresh_cursors(CLUSTER_URL, &keys.prefix).await;
}

async fn future_and_fresh_cursors(url: &str, prefix: &str) {
    let s = Scratch::new();
    s.write_config_with_broker(url, prefix, QUIET);
    let (_a, api_a) = s.serve(&["--no-workers"]);
    let (_b, api_b) = s.serve(&["--no-workers"]);
    let id = api_b.enqueue_ok(noop()).await;
    let log = wait::until("the enqueued event in the log", async || {
        let page = api_a.get_json("/v1/events", &[]).await;
        let log = ids(page["events"].as_array().unwrap());
        if log.is_empty() {
            Err(page.to_string())
        } else {
            Ok(log)
        }
    })
    .await;

    let future = "99999999999999-0@default";
    let page = api_a.get_json("/v1/events", &[("since", future)]).await;
    assert_eq!(page["gap"], true, "{page}");
    assert_eq!(ids(page["events"].as_array().unwrap()), log);
    let mut ws = connect(&ws_url(&api_a.base, &format!("since={future}"))).await;
    assert_eq!(stream::next_json(&mut ws).await, json!({"type": "gap"}));
    let last = log.last().unwrap().clone();
    let replayed = read_until(&mut ws, |f| f["id"] == last.as_str()).await;
    assert_eq!(ids(&replayed), log);
    assert!(replayed.iter().any(|f| f["job_id"] == id.as_str()));
    close(ws).await;

    for round in 0..3 {
        let id = api_b.enqueue_ok(noop()).await;
        let all = ids(
            api_b.get_json("/v1/events", &[("limit", "1000")]).await["events"]
                .as_array()
                .unwrap(),
        );
        let page = api_b.get_json("/v1/events", &[("job", &id)]).await;
        let fresh = page["events"][0]["id"].as_str().unwrap().to_owned();
        let at = all.iter().position(|i| *i == fresh).unwrap();
        let known = &all[..=at];
        let mut ws = connect(&ws_url(&api_a.base, &format!("since={fresh}"))).await;
        let page = api_a.get_json("/v1/events", &[("since", &fresh)]).await;
        assert_eq!(page["gap"], false, "round {round}: {page}");
        let id2 = api_b.enqueue_ok(noop()).await;
        let page = api_b.get_json("/v1/events", &[("job", &id2)]).await;
        let next = page["events"][0]["id"].as_str().unwrap().to_owned();
        read_on_after(&mut ws, &next, known, round).await;
        close(ws).await;
    }
}
