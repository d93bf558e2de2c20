//! The HTTP client shared by the kinds that fetch (`image.resize`, `etl.sync`), built once in
//! [`crate::register_all`], and the rule that sorts HTTP failures: network errors, timeouts,
//! 408, 429 and 5xx are worth retrying; other 4xx, an oversized or undecodable body are not.

use std::time::Duration;

use hopper_workers::JobError;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Client, StatusCode};

use crate::{JobsConfig, JobsError};

/// The shared client: per-request timeout from the config, rustls, redirects followed.
pub(crate) fn client(config: &JobsConfig) -> Result<Client, JobsError> {
    Client::builder()
        .timeout(config.http.timeout)
        .connect_timeout(config.http.timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("hopper/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| JobsError::Client {
            what: "HTTP client",
            message: e.to_string(),
        })
}

/// True for statuses a later try may get past.
pub(crate) fn is_retryable_status(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

/// The failure an unsuccessful status means.
pub(crate) fn status_error(what: &str, status: StatusCode, headers: &HeaderMap) -> JobError {
    let message = format!("{what}: HTTP {status}");
    if is_retryable_status(status) {
        match retry_after(headers) {
            Some(after) => JobError::retry_after(message, after),
            None => JobError::retryable(message),
        }
    } else {
        JobError::permanent(message)
    }
}

/// The failure a request error means: the network and timeouts may recover, a malformed
/// URL or body will not.
pub(crate) fn request_error(what: &str, e: &reqwest::Error) -> JobError {
    let mut message = format!("{what}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    if e.is_builder() || e.is_decode() || e.is_redirect() {
        JobError::permanent(message)
    } else {
        JobError::retryable(message)
    }
}

/// `Retry-After` in seconds (the HTTP-date form is ignored: the retry policy's backoff
/// applies instead).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Downloads `url` into memory, refusing bodies over `max_bytes` (announced or actual).
#[cfg(feature = "image")]
pub(crate) async fn download(
    client: &Client,
    url: &str,
    max_bytes: u64,
) -> Result<Vec<u8>, JobError> {
    let what = format!("GET {url}");
    let mut response = client
        .get(url)
        .send()
        .await
        .map_err(|e| request_error(&what, &e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(status_error(&what, status, response.headers()));
    }
    if let Some(len) = response.content_length()
        && len > max_bytes
    {
        return Err(JobError::permanent(format!(
            "{what}: {len} bytes is over the {max_bytes}-byte download limit"
        )));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| request_error(&what, &e))?
    {
        if body.len() as u64 + chunk.len() as u64 > max_bytes {
            return Err(JobError::permanent(format!(
                "{what}: body is over the {max_bytes}-byte download limit"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
