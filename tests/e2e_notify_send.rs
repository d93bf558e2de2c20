//! `notify.send` end to end through the real `hopper serve` (Hopper issue 12's acceptance):
//! one job to all four channels for user 42 reaches a WebSocket client on
//! `GET /v1/notifications` authenticated as 42 (and not one authenticated as 43, connected at
//! the same time), an in-test SMTP server (text and HTML parts), a Web Push service that
//! checks the VAPID JWT and decrypts the payload with the keys of the subscription registered
//! through `POST /v1/users/42/push-subscriptions`, and a webhook receiver that verifies
//! `Hopper-Signature`; on SQLite and on Redis. Then the outage: with the webhook receiver
//! down the job retries, and once it is back the webhook is delivered, the email sent once.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use mail_parser::MessageParser;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::util::inbox_client::{AUTH, connect_as, expect_notification};
use crate::util::notify_peers::{
    Hooks, PushService, VAPID_SUBJECT, WEBHOOK_SECRET, hook_app, random_key, vapid_key_file_text,
};
use crate::util::peers::{serve_http, smtp_server};
use crate::util::redis::{RedisKeys, SHARED_URL};
use crate::util::stream::{close, next_json};
use crate::util::{Api, Scratch, wait};

/// The config sections of a node delivering to these peers: the SMTP port, the webhook URL,
/// the VAPID key file; loopback allowed for the jobs' requests, short retry backoffs.
fn notify_config(smtp_port: u16, webhook: &str, vapid_file: &std::path::Path) -> String {
    format!(
        "{AUTH}\n[smtp]\nurl = \"smtp://127.0.0.1:{smtp_port}\"\n\
         from = \"Hopper <hopper@example.com>\"\n\n\
         [http]\nallow_hosts = [\"127.0.0.1\"]\n\n\
         [notify]\nwebhooks = [\"{webhook}\"]\nwebhook_secret = \"{WEBHOOK_SECRET}\"\n\
         vapid_private_key = \"{}\"\nvapid_subject = \"{VAPID_SUBJECT}\"\n\
         breaker_failures = 1000\n\n\
         [retry]\nbackoff_base = \"200ms\"\nbackoff_max = \"1s\"\n",
        vapid_file.display()
    )
}

/// Where the scratch directory's daemon keeps its jobs.
enum On {
    Sqlite,
    Redis(RedisKeys),
}

/// Writes the config for `on` with `extra`.
fn write_config(s: &Scratch, on: &On, extra: &str) {
    match on {
        On::Sqlite => s.write_config(extra),
        On::Redis(keys) => s.write_config_with_broker(SHARED_URL, &keys.prefix, extra),
    };
}

/// The next email the SMTP server receives, parsed: (subject, text, html).
async fn next_mail(mails: &mut mpsc::UnboundedReceiver<Vec<u8>>) -> (String, String, String) {
    let data = wait::within("an email", mails.recv()).await.unwrap();
    let parsed = MessageParser::default().parse(&data).unwrap();
    (
        parsed.subject().unwrap_or_default().to_owned(),
        parsed.body_text(0).unwrap_or_default().into_owned(),
        parsed.body_html(0).unwrap_or_default().into_owned(),
    )
}

/// Waits until the job is finished (succeeded or dead) and returns it.
async fn finished(api: &Api, id: &str) -> Value {
    api.wait_job(id, |j| j["state"] == "succeeded" || j["state"] == "dead")
        .await
}

async fn all_four_channels(on: On) {
    let (smtp_port, mut mails) = smtp_server().await;
    let hooks = Arc::new(Hooks::default());
    let hook_addr = serve_http(hook_app(hooks.clone())).await;
    let vapid = random_key();
    let push = Arc::new(PushService::new(&vapid));
    let push_addr = serve_http(push.app()).await;
    *push.origin.lock().unwrap() = format!("http://{push_addr}");

    let s = Scratch::new();
    let vapid_file = s.path().join("vapid.key");
    std::fs::write(&vapid_file, vapid_key_file_text(&vapid)).unwrap();
    let webhook = format!("http://{hook_addr}/hook");
    write_config(&s, &on, &notify_config(smtp_port, &webhook, &vapid_file));
    let (_d, api) = s.serve(&[]);

    // The browser registers itself (its own JWT) with the push service's endpoint.
    let subscription = push
        .browser
        .subscription(format!("http://{push_addr}/push/dev1"));
    let (status, body) = api
        .call_as(
            Method::POST,
            "/v1/users/42/push-subscriptions",
            &crate::util::inbox_client::jwt("42"),
            Some(&serde_json::to_value(&subscription).unwrap()),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    let mut ws42 = connect_as(&api, "42", "").await;
    let mut ws43 = connect_as(&api, "43", "").await;
    let id = api
        .enqueue_ok(json!({
            "kind": "notify.send",
            "payload": {
                "user": "42", "title": "Welcome <Ada>", "body": "Glad & here",
                "data": {"plan": "pro"}, "email": "ada@example.com",
                "channels": ["websocket", "email", "push", "webhook"],
            },
        }))
        .await;

    let job = finished(&api, &id).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    for ch in ["websocket", "email", "push", "webhook"] {
        assert_eq!(
            job["result"]["channels"][ch]["state"], "delivered",
            "{ch}: {job:#}"
        );
    }

    // websocket: 42 gets it, with the job id as its id.
    let f = expect_notification(&mut ws42, &id).await;
    assert_eq!(f["user"], "42", "{f}");
    assert_eq!(f["title"], "Welcome <Ada>", "{f}");
    assert_eq!(f["data"]["plan"], "pro", "{f}");

    // email: a text and an HTML part (escaped).
    let (subject, text, html) = next_mail(&mut mails).await;
    assert_eq!(subject, "Welcome <Ada>");
    assert!(text.contains("Glad & here"), "{text}");
    assert!(html.contains("Welcome &lt;Ada&gt;"), "{html}");

    // push: the VAPID JWT checked and the payload decrypted with the subscription's keys.
    assert!(
        push.problems.lock().unwrap().is_empty(),
        "{:?}",
        push.problems.lock().unwrap()
    );
    let pushed = push.decrypted.lock().unwrap().clone();
    assert_eq!(pushed.len(), 1, "{pushed:?}");
    assert_eq!(pushed[0]["id"], id.as_str());
    assert_eq!(pushed[0]["title"], "Welcome <Ada>");

    // webhook: the signature verified, the channel's idempotency key sent.
    let verified = hooks.verified.lock().unwrap().clone();
    assert_eq!(verified.len(), 1, "{verified:?}");
    assert_eq!(verified[0].0, format!("{id}.webhook"));
    assert_eq!(verified[0].1["user"], "42");

    // 43 got nothing of 42's: its first frame is a notification of its own, sent afterwards.
    let own = api
        .enqueue_ok(json!({
            "kind": "notify.send",
            "payload": {"user": "43", "title": "T", "body": "B", "channels": ["websocket"]},
        }))
        .await;
    let f = next_json(&mut ws43).await;
    assert_eq!(f["id"], own.as_str(), "43 received another user's: {f}");
    close(ws42).await;
    close(ws43).await;
}

#[tokio::test]
async fn notify_send_reaches_all_four_channels_on_sqlite() {
    all_four_channels(On::Sqlite).await;
}

#[tokio::test]
async fn notify_send_reaches_all_four_channels_on_redis() {
    all_four_channels(On::Redis(RedisKeys::claim())).await;
}

/// The webhook receiver is down: the job retries (the email already delivered, recorded in
/// its checkpoint); once the receiver is back on its port, the webhook is delivered and the
/// job succeeds, with exactly one email sent.
#[tokio::test]
async fn a_down_webhook_is_retried_until_it_is_back_and_the_email_is_sent_once() {
    let (smtp_port, mut mails) = smtp_server().await;
    // A port with nothing listening on it (yet).
    let port = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let s = Scratch::new();
    let vapid_file = s.path().join("vapid.key");
    std::fs::write(&vapid_file, vapid_key_file_text(&random_key())).unwrap();
    let webhook = format!("http://127.0.0.1:{port}/hook");
    write_config(
        &s,
        &On::Sqlite,
        &notify_config(smtp_port, &webhook, &vapid_file),
    );
    let (_d, api) = s.serve(&[]);
    let id = api
        .enqueue_ok(json!({
            "kind": "notify.send",
            "max_retries": 100,
            "payload": {"user": "7", "title": "T", "body": "B", "email": "u7@example.com",
                        "channels": ["email", "webhook"]},
        }))
        .await;
    let failing = api
        .wait_job(&id, |j| j["attempt"].as_u64().unwrap_or(0) >= 3)
        .await;
    assert_ne!(failing["state"], "succeeded", "{failing:#}");
    assert!(
        failing["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("webhook")),
        "{failing:#}"
    );
    assert_eq!(
        failing["checkpoint"]["channels"]["email"]["state"], "delivered",
        "{failing:#}"
    );

    let hooks = Arc::new(Hooks::default());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the receiver comes back on its port");
    let app = hook_app(hooks.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let job = finished(&api, &id).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(job["result"]["channels"]["webhook"]["state"], "delivered");
    assert_eq!(hooks.verified.lock().unwrap().len(), 1);
    // Exactly one email, however many attempts.
    next_mail(&mut mails).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(mails.try_recv().is_err(), "the email was sent twice");
}

/// The webhooks of one notification go out side by side: with the first URL's receiver taking
/// the request and never answering (the client's timeout is far past this test's deadline),
/// the second one gets its delivery all the same while the first still hangs.
#[tokio::test]
async fn a_webhook_that_never_answers_holds_back_no_other() {
    // The first receiver: accepts, reads nothing, answers nothing, keeps the connections.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = silent.accept().await {
            keep.lock().unwrap().push(conn);
        }
    });
    let hooks = Arc::new(Hooks::default());
    let good = serve_http(hook_app(hooks.clone())).await;
    let s = Scratch::new();
    s.write_config(&format!(
        "{AUTH}\n[http]\nallow_hosts = [\"127.0.0.1\"]\ntimeout = \"600s\"\n\n\
         [notify]\nwebhooks = [\"http://127.0.0.1:{silent_port}/hook\", \"http://{good}/hook\"]\n\
         webhook_secret = \"{WEBHOOK_SECRET}\"\nbreaker_failures = 1000\n"
    ));
    let (_d, api) = s.serve(&[]);
    let id = api
        .enqueue_ok(json!({
            "kind": "notify.send",
            "payload": {"user": "7", "title": "T", "body": "B", "channels": ["webhook"]},
        }))
        .await;
    wait::until(
        "the second webhook never got the notification",
        async || match hooks.verified.lock().unwrap().first() {
            Some((hopper_id, _)) if hopper_id == &format!("{id}.webhook") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    wait::until("the first webhook was not tried", async || {
        match held.lock().unwrap().len() {
            0 => Err("no connection".to_owned()),
            _ => Ok(()),
        }
    })
    .await;
    let job = api.job(&id).await;
    assert_eq!(
        job["state"], "running",
        "the first webhook still hangs: {job:#}"
    );
}

/// A delivery that failed for good is not sent again while the job waits on another endpoint's
/// open circuit: the job snoozes (its attempt given back, so it runs as attempt 1 again), and
/// only `hopper retry` of a dead notification tries its failed deliveries anew. Here webhook
/// A refuses (400, final) and B's circuit is open (one failure opens it, a job to B alone
/// failed first), so the job wakes every second on B's probe: A is POSTed once.
#[tokio::test]
async fn a_delivery_failed_for_good_is_not_resent_while_the_job_waits_on_a_circuit() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    let posts = Arc::new(AtomicUsize::new(0));
    let counted = posts.clone();
    // Counts the POSTs of the second job's notification (titled T2).
    let refusing = axum::Router::new().fallback(move |body: String| {
        let counted = counted.clone();
        async move {
            if body.contains("\"T2\"") {
                counted.fetch_add(1, Ordering::SeqCst);
            }
            (axum::http::StatusCode::BAD_REQUEST, "no")
        }
    });
    let refusing_addr = serve_http(refusing).await;
    // A port with nothing listening on it.
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let a = format!("http://{refusing_addr}/a");
    let b = format!("http://127.0.0.1:{closed}/b");
    let s = Scratch::with_config(&format!(
        "[http]\nallow_hosts = [\"127.0.0.1\"]\n\n\
         [notify]\nwebhooks = [\"{a}\", \"{b}\"]\n\
         webhook_secret = \"{WEBHOOK_SECRET}\"\nbreaker_failures = 1\nbreaker_cooldown = \"1s\"\n\n\
         [retry]\nbackoff_base = \"100ms\"\nbackoff_max = \"200ms\"\n"
    ));
    let (_d, api) = s.serve(&[]);
    let job = |n: u32| {
        json!({
            "kind": "notify.send",
            "max_retries": 100,
            "payload": {"user": "7", "title": format!("T{n}"), "body": "B", "channels": ["webhook"]},
        })
    };
    // The first job's failures open B's circuit (and A refuses it, once).
    let first = api.enqueue_ok(job(1)).await;
    api.wait_job(&first, |j| j["attempt"].as_u64().unwrap_or(0) >= 2)
        .await;
    let second = api.enqueue_ok(job(2)).await;
    // B's circuit holds the second job back: it snoozes and wakes at each probe.
    let waiting = api
        .wait_job(&second, |j| {
            j["checkpoint"]["channels"]["webhook"]["endpoints"]
                .as_object()
                .is_some_and(|e| e.len() == 2)
                && j["state"] == "scheduled"
        })
        .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let job_now = api.get_json(&format!("/v1/jobs/{second}"), &[]).await;
    assert_ne!(job_now["state"], "succeeded", "{job_now:#}");
    let wakes = job_now["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "job.started")
        .count();
    assert!(
        wakes >= 2,
        "the job did not wake on B's probes: {job_now:#}\n{waiting:#}"
    );
    assert_eq!(
        posts.load(Ordering::SeqCst),
        1,
        "A was POSTed the second notification again in its {wakes} runs"
    );
}

/// A webhook URL's path and query are often its secret (Slack's `/services/…`, `?token=`):
/// the job's record, its errors, its history and the log name each URL as `GET /v1/circuits`
/// does (`http://host:port/…#HASH`), also when the connection fails (reqwest's own message
/// carries the URL). And a 429 with `Retry-After` is retried after it, not within the job's
/// sub-second backoff (it used to be hammered until the job was dead).
#[tokio::test]
async fn webhook_urls_stay_out_of_the_job_and_a_429_is_retried_after_its_retry_after() {
    let busy = axum::Router::new().fallback(|| async {
        (
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "600")],
            "slow down",
        )
    });
    let busy_addr = serve_http(busy).await;
    // A port with nothing listening on it.
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let secrets = ["PATHSECRET1", "QUERYSECRET1", "PATHSECRET2", "QUERYSECRET2"];
    let refused = format!("http://127.0.0.1:{closed}/services/PATHSECRET1?token=QUERYSECRET1");
    let limited = format!("http://{busy_addr}/in/PATHSECRET2?sig=QUERYSECRET2");
    let s = Scratch::with_config(&format!(
        "[http]\nallow_hosts = [\"127.0.0.1\"]\n\n\
         [notify]\nwebhooks = [\"{refused}\", \"{limited}\"]\n\
         webhook_secret = \"{WEBHOOK_SECRET}\"\nbreaker_failures = 1000\n\n\
         [retry]\nbackoff_base = \"100ms\"\nbackoff_max = \"1h\"\n"
    ));
    let (d, api) = s.serve(&[]);
    let id = api
        .enqueue_ok(json!({
            "kind": "notify.send",
            "payload": {"user": "7", "title": "T", "body": "B", "channels": ["webhook"]},
        }))
        .await;
    let job = api.wait_job(&id, |j| j["state"] == "retrying").await;

    let endpoints = job["checkpoint"]["channels"]["webhook"]["endpoints"]
        .as_object()
        .unwrap();
    assert_eq!(endpoints.len(), 2, "{job:#}");
    for (name, outcome) in endpoints {
        assert!(name.starts_with("http://127.0.0.1:"), "{name}");
        assert!(name.contains("/…#"), "{name}");
        assert_eq!(outcome["state"], "failed", "{job:#}");
        assert_eq!(outcome["retryable"], true, "{job:#}");
    }
    let errors: Vec<&str> = endpoints
        .values()
        .map(|o| o["error"].as_str().unwrap())
        .collect();
    assert!(errors.iter().any(|e| e.contains("HTTP 429")), "{errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("error sending request")),
        "{errors:?}"
    );
    let text = job.to_string();
    let log = d.log_text();
    for secret in secrets {
        assert!(!text.contains(secret), "{secret} in the job: {job:#}");
        assert!(!log.contains(secret), "{secret} in the log: {log}");
    }

    // The next attempt waits the 600 s asked for, not the 100 ms backoff.
    let failed_at = job["history"]
        .as_array()
        .unwrap()
        .iter()
        .rfind(|e| e["type"] == "job.retrying")
        .map(|e| e["at"].clone())
        .unwrap();
    let at = |v: &Value| serde_json::from_value::<hopper_workers::time::Timestamp>(v.clone());
    let wait = at(&job["run_at"]).unwrap().since(at(&failed_at).unwrap());
    assert!(
        wait >= Duration::from_secs(590),
        "retried after {wait:?}: {job:#}"
    );
}

/// A push service takes at most a 4096-byte record (RFC 8291, RFC 8030), 3,993 bytes of
/// message once encrypted: a notification whose push message is exactly that is delivered
/// (decrypted by the push service here), and one a byte over, which no push could ever
/// carry, is refused at enqueue with a 400 naming the field that made it large, instead of
/// being accepted and failing at delivery.
#[tokio::test]
async fn a_notification_too_large_for_web_push_is_refused_at_enqueue() {
    let vapid = random_key();
    let push = Arc::new(PushService::new(&vapid));
    let push_addr = serve_http(push.app()).await;
    *push.origin.lock().unwrap() = format!("http://{push_addr}");
    let s = Scratch::new();
    let vapid_file = s.path().join("vapid.key");
    std::fs::write(&vapid_file, vapid_key_file_text(&vapid)).unwrap();
    s.write_config(&notify_config(1, "http://127.0.0.1:1/hook", &vapid_file));
    let (_d, api) = s.serve(&[]);
    let subscription = push
        .browser
        .subscription(format!("http://{push_addr}/push/dev1"));
    let (status, body) = api
        .call_as(
            Method::POST,
            "/v1/users/42/push-subscriptions",
            &crate::util::inbox_client::jwt("42"),
            Some(&serde_json::to_value(&subscription).unwrap()),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    // The push message is the notification as JSON, its id a 36-byte job id.
    let shell = r#"{"id":"","user":"42","type":"default","title":"T","body":"","data":null}"#;
    let room = 3993 - shell.len() - 36;
    let job = |body: String| {
        json!({
            "kind": "notify.send",
            "payload": {"user": "42", "title": "T", "body": body, "channels": ["push"]},
        })
    };
    let fits = api.enqueue_ok(job("b".repeat(room))).await;
    let done = finished(&api, &fits).await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let pushed = push.decrypted.lock().unwrap().clone();
    assert_eq!(pushed.len(), 1, "{pushed:?}");
    assert_eq!(pushed[0]["body"].as_str().map(str::len), Some(room));

    // One byte more: a two-byte 'é' in place of a 'b'.
    let (status, answer) = api.enqueue(job(format!("é{}", "b".repeat(room - 1)))).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["field"], "payload.body", "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("3994") && message.contains("3993"),
        "{answer}"
    );

    // Large data names `payload.data`; without the push channel the same payload is fine.
    let big = json!({"kind": "notify.send", "payload": {
        "user": "42", "title": "T", "body": "B", "data": {"blob": "x".repeat(5000)},
        "channels": ["push"]}});
    let (status, answer) = api.enqueue(big.clone()).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["field"], "payload.data", "{answer}");
    let mut inbox_only = big;
    inbox_only["payload"]["channels"] = json!(["websocket"]);
    api.enqueue_ok(inbox_only).await;
}
