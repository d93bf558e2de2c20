//! The `push` channel: Web Push (RFC 8030) of the notification to each subscription a user
//! registered, the payload encrypted for the subscription's keys (RFC 8291, `aes128gcm` of
//! RFC 8188) and the request signed with the server's VAPID key (RFC 8292,
//! `Authorization: vapid t=JWT, k=PUBLIC KEY`).
//!
//! Written over RustCrypto (`p256`, `hkdf`, `aes-gcm`) rather than the `web-push` crate,
//! whose encryption needs OpenSSL (`ece`'s backend) and whose clients are not the shared
//! reqwest one: this way every push request goes through [`HttpClient`], so `[http]
//! allow_hosts` applies to subscription endpoints (which users supply) like to any URL.
//!
//! Answers: 2xx delivered; 404 or 410 means the subscription is gone: it is removed and the
//! delivery skipped; 408, 429, 5xx, timeouts and network errors are retryable (not before the
//! answer's `Retry-After`, when it gives one) and count against the push service's circuit
//! breaker; any other answer is a permanent failure.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use aes_gcm::aead::Aead;
use aes_gcm::{Aes128Gcm, KeyInit, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hkdf::Hkdf;
use hopper_workers::JobError;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::sec1::ToSec1Point;
use p256::pkcs8::DecodePrivateKey;
use p256::{PublicKey, SecretKey};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use sha2::Sha256;

use super::ports::PushSubscription;
use super::record::Outcome;
use super::webhook::Sent;
use crate::JobsError;
use crate::http::HttpClient;

/// The record size announced in the header: one record holds the whole payload.
const RECORD_SIZE: u32 = 4096;
/// The largest payload (before encryption) one record carries: the record size less the tag
/// (16), the delimiter (1) and the header (86), within the 4 KiB push services accept.
pub const MAX_PAYLOAD: usize = 4096 - 16 - 1 - 86;
/// How long a push service keeps a message for an offline device (`TTL`, seconds).
const TTL_SECONDS: u64 = 24 * 3600;
/// How long a VAPID token is valid (at most 24 h by RFC 8292).
const JWT_SECONDS: u64 = 12 * 3600;

/// The VAPID signer and the client; built once when `[notify] vapid_private_key` is set.
pub(super) struct Pusher {
    client: HttpClient,
    key: SigningKey,
    /// The public key, uncompressed, base64url: the `k=` of the `Authorization` header.
    public: String,
    subject: String,
}

/// One push's answer, and whether the subscription is gone.
pub(super) struct Pushed {
    pub(super) sent: Sent,
    pub(super) gone: bool,
}

impl Pusher {
    /// The pusher of `[notify]`: the key read from `path` (PEM, SEC1 or PKCS#8, or the raw
    /// 32-byte key in base64url).
    pub(super) fn load(client: HttpClient, path: &Path, subject: &str) -> Result<Self, JobsError> {
        let bad = |message: String| JobsError::Config {
            key: "notify.vapid_private_key".into(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(unreadable(path, &e)))?;
        let secret = parse_key(text.trim())
            .ok_or_else(|| bad(format!("{} holds no P-256 private key", path.display())))?;
        let public = B64.encode(secret.public_key().to_sec1_point(false).as_bytes());
        Ok(Self {
            client,
            key: SigningKey::from(&secret),
            public,
            subject: subject.to_owned(),
        })
    }

    /// The VAPID token for the push service at `origin`.
    fn jwt(&self, origin: &str) -> String {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + JWT_SECONDS;
        let header = B64.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims = B64.encode(
            serde_json::json!({"aud": origin, "exp": exp, "sub": self.subject}).to_string(),
        );
        let signing_input = format!("{header}.{claims}");
        let sig: Signature = self.key.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", B64.encode(sig.to_bytes()))
    }

    /// Encrypts `payload` for `sub` and POSTs it to its endpoint; errors name the endpoint as
    /// `shown` (its [`label`](super::breaker::label)).
    pub(super) async fn send(&self, sub: &PushSubscription, shown: &str, payload: &[u8]) -> Pushed {
        let fail = |why: String| Pushed {
            sent: Sent::permanent(why),
            gone: false,
        };
        let Ok(url) = Url::parse(&sub.endpoint) else {
            return fail("the endpoint is not a URL".to_owned());
        };
        let body = match encrypt(&sub.keys.p256dh, &sub.keys.auth, payload) {
            Ok(b) => b,
            Err(why) => return fail(why),
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert("Content-Encoding", HeaderValue::from_static("aes128gcm"));
        headers.insert("TTL", HeaderValue::from(TTL_SECONDS));
        headers.insert("Urgency", HeaderValue::from_static("normal"));
        let auth = format!("vapid t={}, k={}", self.jwt(&origin(&url)), self.public);
        if let Ok(v) = HeaderValue::from_str(&auth) {
            headers.insert(AUTHORIZATION, v);
        }
        let sent = match self.client.post(&url, shown, headers, body).await {
            Ok(resp) if resp.status().is_success() => Sent::delivered(),
            Ok(resp) if matches!(resp.status(), StatusCode::NOT_FOUND | StatusCode::GONE) => {
                return Pushed {
                    sent: Sent {
                        outcome: Outcome::skipped(format!(
                            "the subscription is gone (HTTP {}): removed",
                            resp.status()
                        )),
                        endpoint_failed: false,
                        retry_after: None,
                    },
                    gone: true,
                };
            }
            Ok(resp) => Sent::status(resp.status(), resp.headers()),
            Err(JobError::Permanent { message }) => Sent::permanent(message),
            Err(e) => Sent::unreachable(&e),
        };
        Pushed { sent, gone: false }
    }
}

/// `scheme://host[:port]` of `url`: the VAPID audience and the circuit breaker's endpoint.
pub(super) fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// Why the key file `path` could not be read, naming it, unless the value looks like key
/// material pasted where a path belongs: the message reaches the terminal and the journal, and
/// a private key must not.
fn unreadable(path: &Path, e: &std::io::Error) -> String {
    let value = path.to_string_lossy();
    let value = value.trim();
    let key_like = value.contains("BEGIN")
        || parse_key(value).is_some()
        || (value.len() >= 32
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+' | b'='))
            && !value.starts_with('/'));
    if key_like {
        format!(
            "cannot read the file it names ({}); the value looks like a key rather than a \
             path, so it is not shown: write the key to a file and set this to that file's path",
            e.kind()
        )
    } else {
        format!("cannot read {}: {e}", path.display())
    }
}

/// A P-256 private key from PEM (SEC1 or PKCS#8) or raw base64url.
fn parse_key(text: &str) -> Option<SecretKey> {
    if text.contains("BEGIN EC PRIVATE KEY") {
        return SecretKey::from_sec1_pem(text).ok();
    }
    if text.contains("BEGIN PRIVATE KEY") {
        return SecretKey::from_pkcs8_pem(text).ok();
    }
    let raw = B64
        .decode(text.trim_end_matches('='))
        .ok()
        .or_else(|| base64::engine::general_purpose::STANDARD.decode(text).ok())?;
    // The 32 bytes of a P-256 scalar, or 31 from a generator that dropped a leading zero byte
    // (one key in 256; `from_slice` pads it back on the left, the same scalar). Fewer is a
    // key cut short, which `from_slice` also padded: another key, signing every push.
    if !(31..=32).contains(&raw.len()) {
        return None;
    }
    SecretKey::from_slice(&raw).ok()
}

/// Encrypts `plaintext` for a subscription (RFC 8291 section 3.4): one `aes128gcm` record
/// under a fresh ephemeral key and salt.
pub fn encrypt(p256dh: &str, auth: &str, plaintext: &[u8]) -> Result<Vec<u8>, String> {
    if plaintext.len() > MAX_PAYLOAD {
        return Err(format!(
            "the notification is {} bytes, over the {MAX_PAYLOAD}-byte Web Push limit",
            plaintext.len()
        ));
    }
    let ua_public_bytes = B64
        .decode(p256dh.trim_end_matches('='))
        .map_err(|_| "keys.p256dh is not base64url".to_owned())?;
    let ua_public = PublicKey::from_sec1_bytes(&ua_public_bytes)
        .map_err(|_| "keys.p256dh is not a P-256 public key".to_owned())?;
    let auth_secret = B64
        .decode(auth.trim_end_matches('='))
        .map_err(|_| "keys.auth is not base64url".to_owned())?;
    let as_secret = loop {
        if let Ok(k) = SecretKey::from_slice(&rand::random::<[u8; 32]>()) {
            break k;
        }
    };
    let as_public = as_secret.public_key().to_sec1_point(false);
    let ua_public_point = ua_public.to_sec1_point(false);
    let shared = p256::ecdh::diffie_hellman(as_secret.to_nonzero_scalar(), ua_public.as_affine());

    let mut key_info = b"WebPush: info\0".to_vec();
    key_info.extend_from_slice(ua_public_point.as_bytes());
    key_info.extend_from_slice(as_public.as_bytes());
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(&auth_secret), shared.raw_secret_bytes())
        .expand(&key_info, &mut ikm)
        .map_err(|_| "key derivation failed".to_owned())?;

    let salt: [u8; 16] = rand::random();
    let prk = Hkdf::<Sha256>::new(Some(&salt), &ikm);
    let mut cek = [0u8; 16];
    let mut nonce = [0u8; 12];
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .and_then(|()| prk.expand(b"Content-Encoding: nonce\0", &mut nonce))
        .map_err(|_| "key derivation failed".to_owned())?;

    let mut record = plaintext.to_vec();
    record.push(2); // the last (and only) record's delimiter, no padding
    let cipher = Aes128Gcm::new_from_slice(&cek).map_err(|_| "bad content key".to_owned())?;
    let sealed = cipher
        .encrypt(&Nonce::from(nonce), record.as_slice())
        .map_err(|_| "encryption failed".to_owned())?;

    let keyid = as_public.as_bytes();
    let mut out = Vec::with_capacity(16 + 4 + 1 + keyid.len() + sealed.len());
    out.extend_from_slice(&salt);
    out.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    // 65 bytes: an uncompressed point always fits the one-byte length.
    out.push(u8::try_from(keyid.len()).unwrap_or(65));
    out.extend_from_slice(keyid);
    out.extend_from_slice(&sealed);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::pkcs8::EncodePrivateKey;

    #[test]
    fn reads_pem_and_raw_keys() {
        let key = SecretKey::from_slice(&[7u8; 32]).expect("a key");
        let sec1 = key.to_sec1_pem(Default::default()).expect("sec1");
        let pkcs8 = key.to_pkcs8_pem(Default::default()).expect("pkcs8");
        let raw = B64.encode(key.to_bytes());
        for text in [sec1.as_str(), pkcs8.as_str(), raw.as_str()] {
            assert_eq!(
                parse_key(text.trim()).map(|k| k.to_bytes()),
                Some(key.to_bytes())
            );
        }
        assert!(parse_key("not a key").is_none());
        // A raw key cut short is no key, not the short bytes padded to 32.
        for len in [24, 30, 33] {
            assert!(
                parse_key(&B64.encode(vec![1u8; len])).is_none(),
                "{len} bytes"
            );
        }
        // 31 bytes: a key whose leading zero byte was dropped, read as that key.
        let mut short = [0u8; 32];
        short[1..].fill(7);
        let key = SecretKey::from_slice(&short).expect("a key");
        assert_eq!(
            parse_key(&B64.encode(&short[1..])).map(|k| k.to_bytes()),
            Some(key.to_bytes())
        );
    }

    #[test]
    fn a_key_given_where_its_file_belongs_is_not_echoed() {
        let key = SecretKey::from_slice(&[7u8; 32]).expect("a key");
        let raw = B64.encode(key.to_bytes());
        let pem = key.to_sec1_pem(Default::default()).expect("sec1");
        let client = HttpClient::new(&crate::JobsConfig::default()).expect("a client");
        for value in [
            raw.as_str(),
            pem.as_str(),
            "MHcCAQEEIBvZ3bTruncatedKeyMaterialXyZ09",
        ] {
            let err = Pusher::load(client.clone(), Path::new(value), "mailto:a@b.c")
                .err()
                .expect("no such file")
                .to_string();
            assert!(err.contains("notify.vapid_private_key"), "{err}");
            assert!(!err.contains(value.trim()), "{err}");
        }
        let err = Pusher::load(client, Path::new("/etc/hopper/vapid.pem"), "mailto:a@b.c")
            .err()
            .expect("no such file")
            .to_string();
        assert!(err.contains("/etc/hopper/vapid.pem"), "{err}");
    }

    #[test]
    fn refuses_oversized_payloads_and_bad_keys() {
        let ua = SecretKey::from_slice(&[9u8; 32]).expect("a key");
        let p256dh = B64.encode(ua.public_key().to_sec1_point(false).as_bytes());
        let auth = B64.encode([1u8; 16]);
        let body = encrypt(&p256dh, &auth, b"hi").expect("encrypts");
        // salt, record size, key id length, key id, then "hi" + delimiter + tag.
        assert_eq!(body.len(), 16 + 4 + 1 + 65 + 2 + 1 + 16);
        assert!(encrypt(&p256dh, &auth, &vec![b'x'; MAX_PAYLOAD + 1]).is_err());
        assert!(encrypt("AAAA", &auth, b"hi").is_err());
    }
}
