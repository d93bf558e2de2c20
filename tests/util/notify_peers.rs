//! The peers `notify.send` delivers to, run inside a test on loopback, shared by the kind's
//! own tests (`jobs/tests/kinds/notify.rs`, which include this file by path) and the
//! end-to-end ones through the `hopper` binary (`tests/e2e_notify_send.rs`):
//!
//! - a webhook receiver ([`Hooks`], [`hook_app`]) that checks `Hopper-Signature` (the
//!   HMAC-SHA256 of `"T.body"` with [`WEBHOOK_SECRET`]) and keeps the bodies it verified;
//! - a Web Push service ([`PushService`], [`push_in`]) that checks the VAPID JWT (ES256, for
//!   its origin and [`VAPID_SUBJECT`]) and decrypts the payload with the [`Browser`]'s
//!   private key (RFC 8291 and RFC 8188, written independently of the kind's code).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aes_gcm::aead::Aead;
use aes_gcm::{Aes128Gcm, Nonce};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use hopper_jobs::notify::ports::{PushKeys, PushSubscription};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::elliptic_curve::sec1::ToSec1Point;
use p256::{PublicKey, SecretKey};
use serde_json::Value;
use sha2::Sha256;

/// The `[notify] webhook_secret` the receiver checks signatures with.
pub const WEBHOOK_SECRET: &str = "whsec_test_secret";
/// The `[notify] vapid_subject` the push service expects in the VAPID JWT.
pub const VAPID_SUBJECT: &str = "mailto:ops@example.com";

// ---- The webhook receiver ---------------------------------------------------------------------

/// What the receiver saw: bodies whose signature checked, and every request.
#[derive(Default)]
pub struct Hooks {
    pub hits: AtomicUsize,
    /// The first this many requests are answered 500.
    pub fail_first: AtomicUsize,
    pub verified: Mutex<Vec<(String, Value)>>,
}

/// Checks `Hopper-Signature: t=T,v1=HEX` against HMAC-SHA256(secret, "T.body").
pub fn verify_signature(headers: &HeaderMap, body: &[u8]) -> bool {
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
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(WEBHOOK_SECRET.as_bytes()).expect("key");
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

pub fn hook_app(h: Arc<Hooks>) -> axum::Router {
    axum::Router::new().route("/hook", post(hook)).with_state(h)
}

// ---- The Web Push service ---------------------------------------------------------------------

/// A browser's subscription: its keys, private half included.
pub struct Browser {
    secret: SecretKey,
    auth: [u8; 16],
}

impl Browser {
    pub fn new() -> Self {
        Self {
            secret: random_key(),
            auth: rand::random(),
        }
    }

    pub fn subscription(&self, endpoint: String) -> PushSubscription {
        PushSubscription {
            endpoint,
            keys: PushKeys {
                p256dh: B64.encode(self.secret.public_key().to_sec1_point(false).as_bytes()),
                auth: B64.encode(self.auth),
            },
        }
    }

    /// RFC 8291 section 3.4 and RFC 8188, the receiving side.
    pub fn decrypt(&self, body: &[u8]) -> Option<Vec<u8>> {
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

pub fn random_key() -> SecretKey {
    loop {
        if let Ok(k) = SecretKey::from_slice(&rand::random::<[u8; 32]>()) {
            return k;
        }
    }
}

/// The push service: checks the VAPID token and the encoding, decrypts with the browser's
/// key. `/gone` answers 410.
pub struct PushService {
    pub browser: Browser,
    pub vapid_public: String,
    pub origin: Mutex<String>,
    pub decrypted: Mutex<Vec<Value>>,
    pub problems: Mutex<Vec<String>>,
}

/// Checks `Authorization: vapid t=JWT, k=KEY`: the key is the server's, the JWT is signed by
/// it (ES256) for this origin and subject, and not expired.
pub fn check_vapid(headers: &HeaderMap, vapid_public: &str, origin: &str) -> Result<(), String> {
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
    if claims["aud"] != origin || claims["sub"] != VAPID_SUBJECT {
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

pub async fn push_in(
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

impl PushService {
    /// A push service for `vapid` (the server's VAPID key) and a new browser; its origin is
    /// set once it listens.
    pub fn new(vapid: &SecretKey) -> Self {
        Self {
            browser: Browser::new(),
            vapid_public: B64.encode(vapid.public_key().to_sec1_point(false).as_bytes()),
            origin: Mutex::new(String::new()),
            decrypted: Mutex::new(Vec::new()),
            problems: Mutex::new(Vec::new()),
        }
    }

    /// The router: `POST /push/{name}` (`/push/gone` answers 410).
    pub fn app(self: &Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/push/{name}", post(push_in))
            .with_state(self.clone())
    }
}

/// The server's VAPID private key as `[notify] vapid_private_key` reads it (base64url of the
/// scalar).
pub fn vapid_key_file_text(vapid: &SecretKey) -> String {
    B64.encode(vapid.to_bytes())
}
