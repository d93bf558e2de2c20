//! The HTTP client shared by the kinds that fetch (`image.resize`, `etl.sync`), built once in
//! [`crate::register_all`], and the rule that sorts HTTP failures: network errors, timeouts,
//! 408, 429 and 5xx are worth retrying; other 4xx, an oversized or undecodable body, and a
//! request [`guard`] refused are not. Bodies are read through [`read_body`], which holds at
//! most `[files] max_download_bytes` of one in memory.
//!
//! Every request goes through [`HttpClient::get`], which follows redirects itself so that
//! each hop is checked like the first (scheme, address, and whether a bearer token may go
//! there); the underlying client follows none, uses no proxy (the address check must see the
//! real peer) and resolves names through [`guard::Resolver`].

use std::sync::Arc;
use std::time::Duration;

use hopper_workers::JobError;
use reqwest::header::{HeaderMap, LOCATION, RETRY_AFTER};
use reqwest::{Client, Response, StatusCode, Url, redirect};

use crate::config::EtlToken;
use crate::{JobsConfig, JobsError};

mod guard;

/// Redirects followed before a request is given up (reqwest's own default).
const MAX_REDIRECTS: usize = 10;

/// The shared client of the kinds that fetch: per-request timeout from `[http] timeout`,
/// rustls, and only the addresses `[http] allow_hosts` permits (see the module docs). Cheap
/// to clone.
#[derive(Clone, Debug)]
pub struct HttpClient {
    client: Client,
    guard: Arc<guard::Guard>,
}

impl HttpClient {
    /// The client for `config` (its `[http]` section).
    pub fn new(config: &JobsConfig) -> Result<Self, JobsError> {
        let guard = Arc::new(guard::Guard::new(&config.http.allow_hosts));
        let client = Client::builder()
            .timeout(config.http.timeout)
            .connect_timeout(config.http.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("hopper/", env!("CARGO_PKG_VERSION")))
            .redirect(redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(guard::Resolver {
                guard: Arc::clone(&guard),
            }))
            .build()
            .map_err(|e| JobsError::Client {
                what: "HTTP client",
                message: e.to_string(),
            })?;
        Ok(Self { client, guard })
    }

    /// `GET url`, following up to 10 redirects, each hop checked by the guard; `bearer` is
    /// sent to the hops it [covers](EtlToken::covers) and to no other. A refused hop is a
    /// permanent failure naming its host; other errors are sorted by [`request_error`].
    pub(crate) async fn get(
        &self,
        url: Url,
        bearer: Option<&EtlToken>,
    ) -> Result<Response, JobError> {
        let mut url = url;
        for _ in 0..=MAX_REDIRECTS {
            let what = format!("GET {url}");
            self.guard
                .check_url(&url)
                .map_err(|e| JobError::permanent(format!("{what}: {e}")))?;
            let mut req = self.client.get(url.clone());
            if let Some(b) = bearer.filter(|b| b.covers(&url)) {
                req = req.bearer_auth(&b.token);
            }
            let resp = req.send().await.map_err(|e| request_error(&what, &e))?;
            let next = match resp.headers().get(LOCATION) {
                Some(location) if resp.status().is_redirection() => location
                    .to_str()
                    .ok()
                    .and_then(|l| url.join(l).ok())
                    .ok_or_else(|| {
                        JobError::permanent(format!("{what}: redirect to an invalid location"))
                    })?,
                _ => return Ok(resp),
            };
            tracing::debug!(from = %url, to = %next, "following a redirect");
            url = next;
        }
        Err(JobError::permanent(format!(
            "GET {url}: more than {MAX_REDIRECTS} redirects"
        )))
    }
}

impl HttpClient {
    /// `POST url` with `headers` and `body`, the URL checked by the guard first; redirects are
    /// not followed (a POST is not replayed elsewhere): a 3xx answer is returned as it is.
    /// A refused URL is a permanent failure; other errors are sorted by [`request_error`].
    /// Errors name the URL as `shown` says, never whole: the URLs posted to (webhooks, push
    /// endpoints) may carry a secret in their path or query.
    pub(crate) async fn post(
        &self,
        url: &Url,
        shown: &str,
        headers: HeaderMap,
        body: Vec<u8>,
    ) -> Result<Response, JobError> {
        let what = format!("POST {shown}");
        self.guard
            .check_url(url)
            .map_err(|e| JobError::permanent(format!("{what}: {e}")))?;
        self.client
            .post(url.clone())
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|e| request_error(&what, &e.without_url()))
    }
}

/// A payload's URL, parsed (and so normalized) as requests and token prefixes see it; `None`
/// when it is not an absolute http(s) URL with a host and no credentials.
pub(crate) fn parse_url(s: &str) -> Option<Url> {
    let url = Url::parse(s).ok()?;
    (matches!(url.scheme(), "http" | "https")
        && url.host().is_some()
        && url.username().is_empty()
        && url.password().is_none())
    .then_some(url)
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
    if e.is_builder() || e.is_decode() || e.is_redirect() || refused(e) {
        JobError::permanent(message)
    } else {
        JobError::retryable(message)
    }
}

/// True when the guard's resolver refused every address of the host: the same request
/// would be refused again.
fn refused(e: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<guard::Refused>() {
            return true;
        }
        source = s.source();
    }
    false
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
    client: &HttpClient,
    url: Url,
    max_bytes: u64,
) -> Result<Vec<u8>, JobError> {
    let what = format!("GET {url}");
    let response = client.get(url, None).await?;
    let status = response.status();
    if !status.is_success() {
        return Err(status_error(&what, status, response.headers()));
    }
    read_body(response, &what, max_bytes).await
}

/// The body of `response`, refused (permanently) as soon as it is known to be over
/// `max_bytes`: from its `Content-Length`, else as it streams in, so an endless body costs at
/// most `max_bytes` of memory. Errors while reading (a timeout, a reset) are sorted by
/// [`request_error`].
#[cfg(any(feature = "image", feature = "etl"))]
pub(crate) async fn read_body(
    mut response: Response,
    what: &str,
    max_bytes: u64,
) -> Result<Vec<u8>, JobError> {
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
        .map_err(|e| request_error(what, &e))?
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
