//! `notify.send` through a real worker pool over an SQLite broker (so that retries, snoozes
//! and the checkpoint are the engine's own), against real peers on loopback: the SMTP server
//! of the email tests, an axum webhook receiver that checks the HMAC signature, and an axum
//! Web Push service that checks the VAPID JWT and decrypts the payload with the
//! subscription's private key (RFC 8291, written here independently of the kind's code).
//! The inbox and the push subscriptions are in-test implementations of the ports.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::http::StatusCode;
use axum::routing::post;
use hopper_jobs::notify::ports::{Inbox, Notification, PushSubscription, PushSubscriptions};
use hopper_jobs::notify::register_notify;
use hopper_jobs::{JobsConfig, SmtpConfig};
use hopper_workers::broker::sqlite::SqliteBroker;
use hopper_workers::clock::{Clock, SystemClock};
use hopper_workers::pool::{Pool, PoolConfig};
use hopper_workers::retry::RetryPolicy;
use hopper_workers::{Broker, Job, JobId, JobState, NewJob, Registry};
use mail_parser::MessageParser;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::common;
use crate::email::smtp_server;

use crate::notify_peers::{
    Hooks, PushService, VAPID_SUBJECT as SUBJECT, WEBHOOK_SECRET as SECRET, hook_app, random_key,
    vapid_key_file_text,
};

// ---- The ports --------------------------------------------------------------------------------

/// Records every notification delivered, by user.
#[derive(Default)]
struct RecordingInbox {
    got: Mutex<Vec<Notification>>,
}

#[async_trait]
impl Inbox for RecordingInbox {
    async fn deliver(&self, n: &Notification) -> Result<(), String> {
        self.got.lock().expect("lock").push(n.clone());
        Ok(())
    }
}

/// Subscriptions by user, in memory.
#[derive(Default)]
struct MemorySubscriptions {
    subs: Mutex<HashMap<String, Vec<PushSubscription>>>,
}

#[async_trait]
impl PushSubscriptions for MemorySubscriptions {
    async fn list(&self, user: &str) -> Result<Vec<PushSubscription>, String> {
        Ok(self
            .subs
            .lock()
            .expect("lock")
            .get(user)
            .cloned()
            .unwrap_or_default())
    }
    async fn remove(&self, user: &str, endpoint: &str) -> Result<(), String> {
        if let Some(list) = self.subs.lock().expect("lock").get_mut(user) {
            list.retain(|s| s.endpoint != endpoint);
        }
        Ok(())
    }
}

// ---- The harness ------------------------------------------------------------------------------

/// A pool serving `notify.send` over an SQLite file, until dropped.
struct Harness {
    broker: Arc<dyn Broker>,
    shutdown: CancellationToken,
    _tmp: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Harness {
    async fn start(
        tmp: tempfile::TempDir,
        config: &JobsConfig,
        inbox: Arc<dyn Inbox>,
        subs: Arc<dyn PushSubscriptions>,
    ) -> Self {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let broker: Arc<dyn Broker> = Arc::new(
            SqliteBroker::open(tmp.path().join("hopper.db"), clock.clone())
                .await
                .expect("open the broker"),
        );
        let mut registry = Registry::new();
        register_notify(&mut registry, config, inbox, subs).expect("register notify.send");
        let pool_config = PoolConfig {
            concurrency: 4,
            heartbeat: Duration::from_secs(1),
            retry: RetryPolicy {
                base: Duration::from_millis(100),
                max: Duration::from_millis(300),
                jitter: false,
            },
            idle_wait: Duration::from_millis(50),
            rescue_interval: Duration::from_secs(1),
            ..PoolConfig::default()
        };
        let pool = Pool::new(broker.clone(), Arc::new(registry), pool_config, clock);
        let shutdown = CancellationToken::new();
        tokio::spawn(pool.run(shutdown.clone()));
        Self {
            broker,
            shutdown,
            _tmp: tmp,
        }
    }

    async fn enqueue(&self, payload: Value, max_retries: u32) -> JobId {
        let job = NewJob::new("notify.send", payload).max_retries(max_retries);
        self.broker.enqueue(vec![job]).await.expect("enqueue")[0]
            .job
            .id
            .clone()
    }

    /// Waits (generously) until the job satisfies `cond`.
    async fn until(&self, id: &JobId, what: &str, cond: impl Fn(&Job) -> bool) -> Job {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let job = self.broker.get(id).await.expect("get").expect("the job");
            if cond(&job) {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {job:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Waits until `cond` holds.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn base_config(tmp: &std::path::Path) -> JobsConfig {
    let mut c = common::config(tmp);
    c.notify.webhook_secret = SECRET.into();
    c
}

fn smtp(config: &mut JobsConfig, port: u16) {
    config.smtp = SmtpConfig {
        url: format!("smtp://127.0.0.1:{port}"),
        from: "Hopper <hopper@example.com>".into(),
    };
}

// ---- The tests --------------------------------------------------------------------------------

#[test]
fn check_refuses_bad_payloads_naming_the_field() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut registry = Registry::new();
    register_notify(
        &mut registry,
        &base_config(tmp.path()),
        Arc::new(RecordingInbox::default()),
        Arc::new(MemorySubscriptions::default()),
    )
    .expect("register");
    let good = json!({"user": "42", "title": "Hi", "body": "b", "channels": ["websocket"]});
    common::assert_valid(&registry, "notify.send", &good);
    let with = |k: &str, v: Value| {
        let mut p = good.clone();
        p[k] = v;
        p
    };
    common::assert_refused(
        &registry,
        "notify.send",
        vec![
            (
                json!({"user": "42", "body": "b", "channels": ["email"]}),
                "payload.title",
            ),
            (with("channels", json!(["sms"])), "payload.channels[0]"),
            (
                with("channels", json!(["email", "email"])),
                "payload.channels[1]",
            ),
            (with("channels", json!([])), "payload.channels"),
            (with("email", json!("not an address")), "payload.email"),
            (with("type", json!("../etc/passwd")), "payload.type"),
            (with("user", json!("")), "payload.user"),
            (with("title", json!("two\nlines")), "payload.title"),
            (with("extra", json!(1)), "payload.extra"),
        ],
    );
}

/// All four channels: the inbox gets it, the email has the type's text part and the default
/// HTML part, the webhook's signature checks, the push service decrypts it; the result
/// records each channel as delivered.
#[tokio::test]
async fn delivers_to_all_four_channels_and_records_each() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut config = base_config(tmp.path());
    let (smtp_port, mut mails) = smtp_server().await;
    smtp(&mut config, smtp_port);
    let templates = tmp.path().join("templates");
    std::fs::create_dir_all(&templates).expect("mkdir");
    std::fs::write(
        templates.join("welcome.txt.j2"),
        "Hi user {{ user }}: {{ title }} / {{ body }} / plan {{ data.plan }}",
    )
    .expect("write");
    std::fs::write(
        templates.join("default.html.j2"),
        "<p>{{ title }}</p><p>{{ body }}</p>",
    )
    .expect("write");
    config.notify.templates = templates;

    let hooks = Arc::new(Hooks::default());
    let hook_base = common::serve("127.0.0.1", hook_app(hooks.clone())).await;
    config.notify.webhooks = vec![format!("{hook_base}/hook")];

    let vapid = random_key();
    let vapid_file = tmp.path().join("vapid.key");
    std::fs::write(&vapid_file, vapid_key_file_text(&vapid)).expect("write key");
    config.notify.vapid_private_key = vapid_file;
    config.notify.vapid_subject = SUBJECT.into();
    let service = Arc::new(PushService::new(&vapid));
    let push_base = common::serve("127.0.0.1", service.app()).await;
    *service.origin.lock().expect("lock") = push_base.clone();
    let subs = Arc::new(MemorySubscriptions::default());
    subs.subs.lock().expect("lock").insert(
        "42".into(),
        vec![
            service
                .browser
                .subscription(format!("{push_base}/push/dev1")),
        ],
    );

    let inbox = Arc::new(RecordingInbox::default());
    let h = Harness::start(tmp, &config, inbox.clone(), subs.clone()).await;
    let id = h
        .enqueue(
            json!({
                "user": "42", "type": "welcome", "title": "Welcome <Ada>", "body": "Glad & here",
                "data": {"plan": "pro"}, "email": "ada@example.com",
                "channels": ["websocket", "email", "push", "webhook"],
            }),
            3,
        )
        .await;
    let job = h
        .until(&id, "the notification to succeed", |j| {
            matches!(j.state, JobState::Succeeded | JobState::Dead)
        })
        .await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    let result = job.result.expect("a result");
    for ch in ["websocket", "email", "push", "webhook"] {
        assert_eq!(
            result["channels"][ch]["state"], "delivered",
            "{ch}: {result}"
        );
    }
    assert_eq!(
        job.checkpoint,
        Some(result.clone()),
        "the record is the checkpoint"
    );

    // websocket: the inbox, with the job id as the notification's id.
    let got = inbox.got.lock().expect("lock").clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, id.to_string());
    assert_eq!(
        (got[0].user.as_str(), got[0].kind.as_str()),
        ("42", "welcome")
    );

    // email: both parts, from the type's text template and the default HTML one (escaped).
    let mail = mails.recv().await.expect("an email");
    assert_eq!(mail.recipients, vec!["ada@example.com".to_owned()]);
    let parsed = MessageParser::default().parse(&mail.data).expect("parse");
    assert_eq!(parsed.subject(), Some("Welcome <Ada>"));
    let text = parsed.body_text(0).expect("text part");
    assert!(
        text.contains("Hi user 42: Welcome <Ada> / Glad & here / plan pro"),
        "{text}"
    );
    let html = parsed.body_html(0).expect("html part");
    assert!(html.contains("<p>Welcome &lt;Ada&gt;</p>"), "{html}");
    assert!(
        parsed
            .message_id()
            .is_some_and(|m| m.starts_with(&format!("{id}.email@"))),
        "{:?}",
        parsed.message_id()
    );

    // webhook: signed, with the channel's idempotency key.
    let verified = hooks.verified.lock().expect("lock").clone();
    assert_eq!(verified.len(), 1, "one verified webhook");
    assert_eq!(verified[0].0, format!("{id}.webhook"));
    assert_eq!(verified[0].1["title"], "Welcome <Ada>");
    assert_eq!(verified[0].1["data"]["plan"], "pro");

    // push: VAPID checked, payload decrypted.
    assert!(
        service.problems.lock().expect("lock").is_empty(),
        "{:?}",
        service.problems.lock().expect("lock")
    );
    let pushed = service.decrypted.lock().expect("lock").clone();
    assert_eq!(pushed.len(), 1);
    assert_eq!(pushed[0]["title"], "Welcome <Ada>");
    assert_eq!(pushed[0]["id"], id.to_string());
}

/// The webhook receiver is down: the job retries the webhook with its backoff, without
/// sending the email again, and delivers it once the receiver is back.
#[tokio::test]
async fn a_down_webhook_is_retried_without_resending_the_email() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut config = base_config(tmp.path());
    let (smtp_port, mut mails) = smtp_server().await;
    smtp(&mut config, smtp_port);
    // A port with nothing listening on it (yet).
    let port = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        l.local_addr().expect("addr").port()
    };
    config.notify.webhooks = vec![format!("http://127.0.0.1:{port}/hook")];
    config.notify.breaker_failures = 1000;
    let h = Harness::start(
        tmp,
        &config,
        Arc::new(RecordingInbox::default()),
        Arc::new(MemorySubscriptions::default()),
    )
    .await;
    let id = h
        .enqueue(
            json!({"user": "7", "title": "T", "body": "B", "email": "u7@example.com",
                   "channels": ["email", "webhook"]}),
            100,
        )
        .await;
    let failing = h
        .until(&id, "a few failed attempts", |j| j.attempt >= 3)
        .await;
    assert!(
        failing
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("webhook")),
        "{failing:?}"
    );
    assert_eq!(
        failing
            .checkpoint
            .as_ref()
            .map(|c| c["channels"]["email"]["state"].clone()),
        Some(json!("delivered"))
    );

    let hooks = Arc::new(Hooks::default());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the receiver comes back on its port");
    let app = hook_app(hooks.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let job = h
        .until(&id, "the job to succeed", |j| {
            j.state == JobState::Succeeded
        })
        .await;
    assert_eq!(
        job.result.expect("result")["channels"]["webhook"]["state"],
        "delivered"
    );
    assert_eq!(hooks.verified.lock().expect("lock").len(), 1);
    // Exactly one email, however many attempts.
    mails.recv().await.expect("the email");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(mails.try_recv().is_err(), "the email was sent twice");
}

/// A receiver answering 500 five times opens its circuit: the next deliveries wait (the job
/// snoozes, attempts not spent) and are delivered once the receiver recovers and the probe
/// after the cool-down succeeds.
#[tokio::test]
async fn an_open_circuit_waits_without_spending_attempts_then_probes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut config = base_config(tmp.path());
    let hooks = Arc::new(Hooks::default());
    hooks.fail_first.store(5, Ordering::SeqCst);
    let base = common::serve("127.0.0.1", hook_app(hooks.clone())).await;
    config.notify.webhooks = vec![format!("{base}/hook")];
    config.notify.breaker_failures = 5;
    config.notify.breaker_cooldown = Duration::from_secs(2);
    let h = Harness::start(
        tmp,
        &config,
        Arc::new(RecordingInbox::default()),
        Arc::new(MemorySubscriptions::default()),
    )
    .await;
    let payload = json!({"user": "9", "title": "T", "body": "B", "channels": ["webhook"]});
    let first = h.enqueue(payload.clone(), 10).await;
    eventually("five failed deliveries", || {
        hooks.hits.load(Ordering::SeqCst) >= 5
    })
    .await;
    // The circuit is open now: a second notification waits too, reaching nobody.
    let second = h.enqueue(payload, 10).await;
    let done_first = h
        .until(&first, "the first to succeed", |j| {
            j.state == JobState::Succeeded
        })
        .await;
    let done_second = h
        .until(&second, "the second to succeed", |j| {
            j.state == JobState::Succeeded
        })
        .await;
    assert_eq!(
        hooks.hits.load(Ordering::SeqCst),
        7,
        "5 failures, then one probe and one more delivery: nothing sent while open"
    );
    assert_eq!(
        done_first.attempt, 6,
        "5 failed attempts and the delivery; waits not counted"
    );
    assert_eq!(done_second.attempt, 1, "the second only waited");
    let history = h.broker.history(&second).await.expect("history");
    assert!(
        history
            .iter()
            .any(|e| e.message.as_deref() == Some("snoozed")),
        "{history:?}"
    );
}

/// A push service answering 410 removes that subscription; the other is delivered.
#[tokio::test]
async fn a_gone_push_subscription_is_removed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut config = base_config(tmp.path());
    let vapid = random_key();
    let vapid_file = tmp.path().join("vapid.key");
    std::fs::write(&vapid_file, vapid_key_file_text(&vapid)).expect("write key");
    config.notify.vapid_private_key = vapid_file;
    config.notify.vapid_subject = SUBJECT.into();
    let service = Arc::new(PushService::new(&vapid));
    let base = common::serve("127.0.0.1", service.app()).await;
    *service.origin.lock().expect("lock") = base.clone();
    let subs = Arc::new(MemorySubscriptions::default());
    let gone = format!("{base}/push/gone");
    subs.subs.lock().expect("lock").insert(
        "5".into(),
        vec![
            service.browser.subscription(format!("{base}/push/ok")),
            service.browser.subscription(gone.clone()),
        ],
    );
    let h = Harness::start(
        tmp,
        &config,
        Arc::new(RecordingInbox::default()),
        subs.clone(),
    )
    .await;
    let id = h
        .enqueue(
            json!({"user": "5", "title": "T", "body": "B", "channels": ["push", "email"]}),
            3,
        )
        .await;
    let job = h
        .until(&id, "the job to succeed", |j| {
            j.state == JobState::Succeeded
        })
        .await;
    let result = job.result.expect("result");
    assert_eq!(result["channels"]["push"]["state"], "delivered", "{result}");
    // The record names an endpoint by its label, never whole (a capability URL).
    assert!(!result.to_string().contains(&gone), "{result}");
    assert_eq!(
        result["channels"]["push"]["endpoints"][&hopper_jobs::notify::breaker::label(&gone)]["state"],
        "skipped"
    );
    assert_eq!(result["channels"]["email"]["state"], "skipped");
    assert!(
        result["channels"]["email"]["why"]
            .as_str()
            .is_some_and(|w| w.contains("no email address"))
    );
    assert_eq!(service.decrypted.lock().expect("lock").len(), 1);
    let left = subs.list("5").await.expect("list");
    assert_eq!(left.len(), 1);
    assert!(left[0].endpoint.ends_with("/push/ok"));
}

/// A webhook answering 400 fails that channel for good: the job goes dead without spending
/// its retries, its checkpoint saying which channel failed and which was delivered. Retried
/// by hand once the receiver is fixed, it delivers the webhook and nothing else again.
#[tokio::test]
async fn a_refused_webhook_is_a_permanent_failure_recorded_in_the_checkpoint() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut config = base_config(tmp.path());
    let refuse = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = refuse.clone();
    let refusing = axum::Router::new().route(
        "/hook",
        post(move || {
            let flag = flag.clone();
            async move {
                if flag.load(Ordering::SeqCst) {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let base = common::serve("127.0.0.1", refusing).await;
    config.notify.webhooks = vec![format!("{base}/hook")];
    let inbox = Arc::new(RecordingInbox::default());
    let h = Harness::start(
        tmp,
        &config,
        inbox.clone(),
        Arc::new(MemorySubscriptions::default()),
    )
    .await;
    let id = h
        .enqueue(
            json!({"user": "3", "title": "T", "body": "B", "channels": ["webhook", "websocket"]}),
            5,
        )
        .await;
    let job = h
        .until(&id, "the job to be dead", |j| j.state == JobState::Dead)
        .await;
    assert_eq!(job.attempt, 1, "no retries spent on a permanent failure");
    assert!(
        job.last_error
            .as_deref()
            .is_some_and(|e| e.contains("webhook") && e.contains("400")),
        "{job:?}"
    );
    let record = job.checkpoint.expect("the record");
    assert_eq!(record["channels"]["webhook"]["state"], "failed");
    assert_eq!(record["channels"]["webhook"]["retryable"], false);
    assert_eq!(record["channels"]["websocket"]["state"], "delivered");
    assert_eq!(inbox.got.lock().expect("lock").len(), 1);

    refuse.store(false, Ordering::SeqCst);
    h.broker.retry(&id).await.expect("retry the dead job");
    let job = h
        .until(&id, "the retried job to succeed", |j| {
            j.state == JobState::Succeeded
        })
        .await;
    assert_eq!(
        job.result.expect("result")["channels"]["webhook"]["state"],
        "delivered"
    );
    assert_eq!(
        inbox.got.lock().expect("lock").len(),
        1,
        "the inbox is not delivered twice"
    );
}

/// Webhooks obey `[http] allow_hosts` like every outgoing request of a job: a loopback URL
/// that is not listed is refused, for good, and nothing is sent.
#[tokio::test]
async fn webhooks_obey_allow_hosts() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut config = base_config(tmp.path());
    config.http.allow_hosts.clear();
    let hooks = Arc::new(Hooks::default());
    let base = common::serve("127.0.0.1", hook_app(hooks.clone())).await;
    config.notify.webhooks = vec![format!("{base}/hook")];
    let h = Harness::start(
        tmp,
        &config,
        Arc::new(RecordingInbox::default()),
        Arc::new(MemorySubscriptions::default()),
    )
    .await;
    let id = h
        .enqueue(
            json!({"user": "1", "title": "T", "body": "B", "channels": ["webhook"]}),
            5,
        )
        .await;
    let job = h
        .until(&id, "the job to be dead", |j| j.state == JobState::Dead)
        .await;
    assert!(
        job.last_error
            .as_deref()
            .is_some_and(|e| e.contains("allow_hosts")),
        "{job:?}"
    );
    assert_eq!(hooks.hits.load(Ordering::SeqCst), 0);
}

/// A template that loops over the payload's lists within each other (a table: rows × columns)
/// ran for hours, its output filling the memory, past the job's timeout (which cannot stop a
/// render) and through shutdown. A render is bounded: out of fuel, or a part over
/// `MAX_RENDERED` bytes, and the email fails for good, quickly, the other channels delivered.
#[tokio::test]
async fn a_runaway_email_template_fails_for_good_instead_of_running_for_hours() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut config = base_config(tmp.path());
    let templates = tmp.path().join("templates");
    std::fs::create_dir_all(&templates).expect("mkdir");
    std::fs::write(
        templates.join("table.txt.j2"),
        "{% for r in data.rows %}{% for c in data.cols %}{% if r == c %}={% endif %}{% endfor %}{% endfor %}",
    )
    .expect("write");
    std::fs::write(
        templates.join("wide.txt.j2"),
        "{% for r in data.rows %}{{ data.text }}{% endfor %}",
    )
    .expect("write");
    config.notify.templates = templates;
    let inbox = Arc::new(RecordingInbox::default());
    let h = Harness::start(
        tmp,
        &config,
        inbox.clone(),
        Arc::new(MemorySubscriptions::default()),
    )
    .await;
    let many: Vec<u32> = (0..20_000).collect();
    let started = Instant::now();
    let table = h
        .enqueue(
            json!({"user": "3", "type": "table", "title": "T", "body": "B",
                   "email": "u3@example.com", "channels": ["email", "websocket"],
                   "data": {"rows": many, "cols": many}}),
            5,
        )
        .await;
    // 1,000 copies of 100 kB: 100 MB of text from a few thousand instructions.
    let wide = h
        .enqueue(
            json!({"user": "3", "type": "wide", "title": "T", "body": "B",
                   "email": "u3@example.com", "channels": ["email"],
                   "data": {"rows": &many[..1000], "text": "x".repeat(100_000)}}),
            5,
        )
        .await;
    for (id, says) in [(&table, "fuel"), (&wide, "bytes")] {
        let job = h
            .until(id, "the job to be dead", |j| j.state == JobState::Dead)
            .await;
        assert_eq!(job.attempt, 1, "a render that cannot end is not retried");
        let record = job.checkpoint.expect("the record");
        let email = &record["channels"]["email"];
        assert_eq!(email["state"], "failed", "{record}");
        assert_eq!(email["retryable"], false, "{record}");
        assert!(
            email["error"].as_str().is_some_and(|e| e.contains(says)),
            "{record}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        inbox.got.lock().expect("lock").len(),
        1,
        "the websocket one"
    );
}

/// A notification retrying across the upgrade that named endpoints by their label: the
/// record its earlier attempt saved names the webhook by its whole URL, with a retryable
/// failure. The retry delivers the webhook once and succeeds, the old entry taken over by
/// the label: the result says the webhook was delivered, and the URL's secret path is not in
/// it. (Kept under the whole URL beside the label's entry, the old failure stayed in the
/// succeeded job's result: the webhook channel `failed`, its error quoting the URL.)
#[tokio::test]
async fn a_record_naming_a_webhook_by_its_whole_url_is_taken_over_by_its_label() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut config = base_config(tmp.path());
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    let receiver = axum::Router::new().route(
        "/hooks/s3cret",
        post(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { StatusCode::OK }
        }),
    );
    let base = common::serve("127.0.0.1", receiver).await;
    let url = format!("{base}/hooks/s3cret");
    config.notify.webhooks = vec![url.clone()];

    // The job's first attempt, as the version before labels recorded it.
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let id = {
        let old = SqliteBroker::open(tmp.path().join("hopper.db"), clock.clone())
            .await
            .expect("open the broker");
        let job = NewJob::new(
            "notify.send",
            json!({"user": "9", "title": "T", "body": "B", "channels": ["webhook"]}),
        )
        .max_retries(3);
        let id = old.enqueue(vec![job]).await.expect("enqueue")[0]
            .job
            .id
            .clone();
        let fetched = old
            .fetch("default", 1, Duration::from_secs(30))
            .await
            .expect("fetch");
        let lease = fetched[0].lease();
        let error = format!("POST {url}: connection refused");
        let failed = json!({"state": "failed", "error": error, "retryable": true});
        let mut channel = failed.clone();
        channel["endpoints"] = json!({ url.clone(): failed });
        old.checkpoint(&lease, &json!({"channels": {"webhook": channel}}))
            .await
            .expect("checkpoint");
        let answers = old
            .finish(vec![hopper_workers::broker::Finish {
                lease,
                outcome: hopper_workers::broker::Outcome::Retry {
                    at: clock.now(),
                    error,
                },
            }])
            .await
            .expect("finish");
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        id
    };

    let h = Harness::start(
        tmp,
        &config,
        Arc::new(RecordingInbox::default()),
        Arc::new(MemorySubscriptions::default()),
    )
    .await;
    let job = h
        .until(&id, "the job to end", |j| {
            matches!(j.state, JobState::Succeeded | JobState::Dead)
        })
        .await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "delivered once");
    let result = job.result.expect("the record");
    assert_eq!(
        result["channels"]["webhook"]["state"], "delivered",
        "{result}"
    );
    assert!(!result.to_string().contains("s3cret"), "{result}");
}
