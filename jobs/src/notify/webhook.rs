//! The `webhook` channel: the notification POSTed as JSON to each URL of `[notify] webhooks`,
//! signed the Stripe/Svix way:
//!
//! ```text
//! Hopper-Id: <job id>.webhook            (the same on every retry: receivers drop duplicates)
//! Hopper-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(webhook_secret, "<t>.<body>")>
//! ```
//!
//! A receiver recomputes the HMAC over the timestamp, a dot and the raw body, compares it in
//! constant time, and refuses timestamps too far from its clock (replays).
//!
//! 2xx is delivered; 408, 429, 5xx, timeouts and network errors are retryable (and count
//! against the URL's circuit breaker), not before the answer's `Retry-After` (in seconds) when
//! it gives one; any other answer is a permanent failure of that URL.
//! Requests go through the shared client, so `[http] allow_hosts` applies.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use hopper_workers::JobError;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use sha2::Sha256;

use super::record::Outcome;
use crate::http::{HttpClient, is_retryable_status, retry_after};

/// The signature header.
pub const SIGNATURE_HEADER: &str = "Hopper-Signature";
/// The idempotency key header.
pub const ID_HEADER: &str = "Hopper-Id";

/// `t=UNIX,v1=HEX` for `body` sent at `t`.
pub fn signature(secret: &[u8], t: u64, body: &[u8]) -> String {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={t},v1={hex}")
}

/// Sends to the webhooks; cheap to share.
pub(super) struct Webhooks {
    pub(super) client: HttpClient,
    pub(super) secret: String,
}

/// Whether an answer or error may pass on a later try (and counts against the breaker).
pub(super) struct Sent {
    pub(super) outcome: Outcome,
    /// True when the endpoint itself failed (5xx, timeout, unreachable).
    pub(super) endpoint_failed: bool,
    /// How long the endpoint asked to be left alone (`Retry-After` of a 429 or 503), when it
    /// failed and said.
    pub(super) retry_after: Option<Duration>,
}

impl Sent {
    pub(super) fn delivered() -> Self {
        Self {
            outcome: Outcome::Delivered,
            endpoint_failed: false,
            retry_after: None,
        }
    }

    /// A failure no later try gets past; the endpoint itself is fine.
    pub(super) fn permanent(error: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::permanent(error),
            endpoint_failed: false,
            retry_after: None,
        }
    }

    /// The endpoint could not be reached (timeout, refused connection): retryable.
    pub(super) fn unreachable(error: &JobError) -> Self {
        Self {
            outcome: Outcome::retryable(describe(error)),
            endpoint_failed: true,
            retry_after: None,
        }
    }

    /// An unsuccessful answer: 408, 429 and 5xx retryable (after its `Retry-After`, when it
    /// gives one in seconds), any other permanent.
    pub(super) fn status(status: StatusCode, headers: &HeaderMap) -> Self {
        let error = format!("HTTP {status}");
        if !is_retryable_status(status) {
            return Self::permanent(error);
        }
        let retry_after = retry_after(headers);
        Self {
            outcome: Outcome::retryable(match retry_after {
                Some(d) => format!("{error} (Retry-After: {}s)", d.as_secs()),
                None => error,
            }),
            endpoint_failed: true,
            retry_after,
        }
    }
}

impl Webhooks {
    /// POSTs `body` to `url` with `id` as its idempotency key; errors name the URL as
    /// `shown` (its [`label`](super::breaker::label)).
    pub(super) async fn send(&self, url: &str, shown: &str, id: &str, body: &[u8]) -> Sent {
        let Ok(parsed) = Url::parse(url) else {
            return Sent::permanent("not a URL");
        };
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Ok(v) = HeaderValue::from_str(id) {
            headers.insert(ID_HEADER, v);
        }
        if let Ok(v) = HeaderValue::from_str(&signature(self.secret.as_bytes(), t, body)) {
            headers.insert(SIGNATURE_HEADER, v);
        }
        match self
            .client
            .post(&parsed, shown, headers, body.to_vec())
            .await
        {
            Ok(resp) if resp.status().is_success() => Sent::delivered(),
            Ok(resp) => Sent::status(resp.status(), resp.headers()),
            Err(JobError::Permanent { message }) => Sent::permanent(message),
            Err(e) => Sent::unreachable(&e),
        }
    }
}

/// A retryable error's message.
pub(super) fn describe(e: &JobError) -> String {
    match e {
        JobError::Retryable { message, .. } | JobError::Permanent { message } => message.clone(),
        JobError::Snooze(d) => format!("put off for {}", humantime::format_duration(*d)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_timestamp_dot_body() {
        // Reference value: HMAC-SHA256("whsec", "1700000000.{}") computed independently
        // (python3 -c 'import hmac,hashlib;print(hmac.new(b"whsec",b"1700000000.{}",hashlib.sha256).hexdigest())').
        let s = signature(b"whsec", 1_700_000_000, b"{}");
        assert_eq!(
            s,
            "t=1700000000,v1=7d44587dddbaf4c7f70fef20f48cd594834ffea1641e3ac227b84408298738af"
        );
    }
}
