//! `notify.send` through a real worker pool over an SQLite broker (so that retries, snoozes
//! and the checkpoint are the engine's own), against real peers on loopback: the SMTP server
//! of the email tests, an axum webhook receiver that checks the HMAC signature, and an axum
//! Web Push service that checks the VAPID JWT and decrypts the payload with the
//! subscription's private key (RFC 8291, written here independently of the kind's code).
//! The inbox and the push subscriptions are in-test implementations of the ports.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aes_gcm::aead::Aead;
use aes_gcm::{Aes128Gcm, Nonce};
use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use hopper_jobs::notify::ports::{
    Inbox, Notification, PushKeys, PushSubscription, PushSubscriptions,
};
use hopper_jobs::notify::register_notify;
use hopper_jobs::{JobsConfig, SmtpConfig};
use hopper_workers::broker::sqlite::SqliteBroker;
use hopper_workers::clock::{Clock, SystemClock};
use hopper_workers::pool::{Pool, PoolConfig};
use hopper_workers::retry::RetryPolicy;
use hopper_workers::{Broker, Job, JobId, JobState, NewJob, Registry};
use mail_parser::MessageParser;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::elliptic_curve::sec1::ToSec1Point;
use p256::{PublicKey, SecretKey};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::common;
use crate::email::smtp_server;

const SECRET: &str = "whsec_test_secret";
const SUBJECT: &str = "mailto:ops@example.com";

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

// ---- The webhook receiver ---------------------------------------------------------------------

/// What the receiver saw: bodies whose signature checked, and every request.
#[derive(Default)]
struct Hooks {
    hits: AtomicUsize,
    /// The first this many requests are answered 500.
    fail_first: AtomicUsize,
    verified: Mutex<Vec<(String, Value)>>,
}

/// Checks `Hopper-Signature: t=T,v1=HEX` against HMAC-SHA256(secret, "T.body").
fn verify_signature(headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(sig) = headers
        .get("hopper-signature")
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mut t = None;
    let mut v1 = None;
    for part in sig.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => v1 = Some(v.to_owned()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    if now.abs_diff(t) > 300 {
        return false;
    }
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    expected == v1
}

async fn hook(State(h): State<Arc<Hooks>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let n = h.hits.fetch_add(1, Ordering::SeqCst);
    if n < h.fail_first.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    if !verify_signature(&headers, &body) {
        return StatusCode::UNAUTHORIZED;
    }
    let id = headers
        .get("hopper-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    h.verified.lock().expect("lock").push((id, json));
    StatusCode::NO_CONTENT
}

fn hook_app(h: Arc<Hooks>) -> axum::Router {
    axum::Router::new().route("/hook", post(hook)).with_state(h)
}

// ---- The Web Push service ---------------------------------------------------------------------

/// A browser's subscription: its keys, private half included.
struct Browser {
    secret: SecretKey,
    auth: [u8; 16],
}

impl Browser {
    fn new() -> Self {
        Self {
            secret: random_key(),
            auth: rand::random(),
        }
    }

    fn subscription(&self, endpoint: String) -> PushSubscription {
        PushSubscription {
            endpoint,
            keys: PushKeys {
                p256dh: B64.encode(self.secret.public_key().to_sec1_point(false).as_bytes()),
                auth: B64.encode(self.auth),
            },
        }
    }

    /// RFC 8291 section 3.4 and RFC 8188, the receiving side.
    fn decrypt(&self, body: &[u8]) -> Option<Vec<u8>> {
        let salt = body.get(..16)?;
        let idlen = usize::from(*body.get(20)?);
        let as_public_bytes = body.get(21..21 + idlen)?;
        let sealed = body.get(21 + idlen..)?;
        let as_public = PublicKey::from_sec1_bytes(as_public_bytes).ok()?;
        let shared =
            p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), as_public.as_affine());
        let mut info = b"WebPush: info\0".to_vec();
        info.extend_from_slice(self.secret.public_key().to_sec1_point(false).as_bytes());
        info.extend_from_slice(as_public_bytes);
        let mut ikm = [0u8; 32];
        Hkdf::<Sha256>::new(Some(&self.auth), shared.raw_secret_bytes())
            .expand(&info, &mut ikm)
            .ok()?;
        let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
        let mut cek = [0u8; 16];
        let mut nonce = [0u8; 12];
        prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
            .ok()?;
        prk.expand(b"Content-Encoding: nonce\0", &mut nonce).ok()?;
        let mut plain = Aes128Gcm::new_from_slice(&cek)
            .ok()?
            .decrypt(&Nonce::from(nonce), sealed)
            .ok()?;
        while plain.last() == Some(&0) {
            plain.pop();
        }
        (plain.pop() == Some(2)).then_some(plain)
    }
}

fn random_key() -> SecretKey {
    loop {
        if let Ok(k) = SecretKey::from_slice(&rand::random::<[u8; 32]>()) {
            return k;
        }
    }
}

/// The push service: checks the VAPID token and the encoding, decrypts with the browser's
/// key. `/gone` answers 410.
struct PushService {
    browser: Browser,
    vapid_public: String,
    origin: Mutex<String>,
    decrypted: Mutex<Vec<Value>>,
    problems: Mutex<Vec<String>>,
}

/// Checks `Authorization: vapid t=JWT, k=KEY`: the key is the server's, the JWT is signed by
/// it (ES256) for this origin and subject, and not expired.
fn check_vapid(headers: &HeaderMap, vapid_public: &str, origin: &str) -> Result<(), String> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or("no Authorization")?;
    let rest = auth.strip_prefix("vapid ").ok_or("not vapid")?;
    let mut t = None;
    let mut k = None;
    for part in rest.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.to_owned()),
            Some(("k", v)) => k = Some(v.to_owned()),
            _ => {}
        }
    }
    let (t, k) = (t.ok_or("no t=")?, k.ok_or("no k=")?);
    if k != vapid_public {
        return Err(format!("k={k} is not the server's key"));
    }
    let key = VerifyingKey::from_sec1_bytes(&B64.decode(&k).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let (signing_input, sig) = t.rsplit_once('.').ok_or("JWT without signature")?;
    let sig = Signature::from_slice(&B64.decode(sig).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    key.verify(signing_input.as_bytes(), &sig)
        .map_err(|e| format!("bad JWT signature: {e}"))?;
    let (header, claims) = signing_input.split_once('.').ok_or("JWT shape")?;
    let header: Value = serde_json::from_slice(&B64.decode(header).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let claims: Value = serde_json::from_slice(&B64.decode(claims).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    if header["alg"] != "ES256" {
        return Err(format!("alg {}", header["alg"]));
    }
    if claims["aud"] != origin || claims["sub"] != SUBJECT {
        return Err(format!("claims {claims}"));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let exp = claims["exp"].as_u64().ok_or("no exp")?;
    if exp <= now || exp > now + 24 * 3600 {
        return Err(format!("exp {exp}"));
    }
    Ok(())
}

async fn push_in(
    State(s): State<Arc<PushService>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    if name == "gone" {
        return StatusCode::GONE;
    }
    let origin = s.origin.lock().expect("lock").clone();
    let checked = check_vapid(&headers, &s.vapid_public, &origin).and_then(|()| {
        (headers
            .get("content-encoding")
            .and_then(|v| v.to_str().ok())
            == Some("aes128gcm")
            && headers.contains_key("ttl"))
        .then_some(())
        .ok_or_else(|| "missing Content-Encoding or TTL".to_owned())
    });
    if let Err(e) = checked {
        s.problems.lock().expect("lock").push(e);
        return StatusCode::FORBIDDEN;
    }
    match s.browser.decrypt(&body) {
        Some(plain) => {
            let v: Value = serde_json::from_slice(&plain).unwrap_or(Value::Null);
            s.decrypted.lock().expect("lock").push(v);
            StatusCode::CREATED
        }
        None => {
            s.problems
                .lock()
                .expect("lock")
                .push("undecryptable".into());
            StatusCode::BAD_REQUEST
        }
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
                "payload",
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
    std::fs::write(&vapid_file, B64.encode(vapid.to_bytes())).expect("write key");
    config.notify.vapid_private_key = vapid_file;
    config.notify.vapid_subject = SUBJECT.into();
    let service = Arc::new(PushService {
        browser: Browser::new(),
        vapid_public: B64.encode(vapid.public_key().to_sec1_point(false).as_bytes()),
        origin: Mutex::new(String::new()),
        decrypted: Mutex::new(Vec::new()),
        problems: Mutex::new(Vec::new()),
    });
    let push_base = common::serve(
        "127.0.0.1",
        axum::Router::new()
            .route("/push/{name}", post(push_in))
            .with_state(service.clone()),
    )
    .await;
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
    std::fs::write(&vapid_file, B64.encode(vapid.to_bytes())).expect("write key");
    config.notify.vapid_private_key = vapid_file;
    config.notify.vapid_subject = SUBJECT.into();
    let service = Arc::new(PushService {
        browser: Browser::new(),
        vapid_public: B64.encode(vapid.public_key().to_sec1_point(false).as_bytes()),
        origin: Mutex::new(String::new()),
        decrypted: Mutex::new(Vec::new()),
        problems: Mutex::new(Vec::new()),
    });
    let base = common::serve(
        "127.0.0.1",
        axum::Router::new()
            .route("/push/{name}", post(push_in))
            .with_state(service.clone()),
    )
    .await;
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
    assert_eq!(
        result["channels"]["push"]["endpoints"][&gone]["state"],
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
