//! The source side of `etl.sync`: where the items come from. This module owns the `source`
//! payload and its checks, fetching one page (with in-job retries of network errors,
//! timeouts, 429 and 5xx, per `Retry-After` or a doubling backoff; at most
//! `[files] max_download_bytes` of body), finding the items in a
//! response, and the position that fetches the next page (a cursor or a page number). It
//! does not own what becomes of the items (`super::mapping`, `super::target`).

use std::collections::BTreeMap;
use std::time::Duration;

use hopper_workers::{FieldError, JobContext, JobError};
use serde::Deserialize;
use serde_json::Value;

use super::mapping::json_path;
use crate::config::EtlToken;
use crate::http::{
    HttpClient, is_retryable_status, parse_url, read_body, retry_after, status_error,
};

/// Tries of one page request before the job gives the attempt up.
const PAGE_TRIES: u32 = 4;
/// First wait between tries; doubles after each.
const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// Longest wait spent inside the job; a longer `Retry-After` goes back to the queue instead.
const MAX_INLINE_WAIT: Duration = Duration::from_secs(10);

/// Where the items come from (`source` in the payload).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Source {
    pub(super) url: String,
    pagination: Option<Pagination>,
    #[serde(default)]
    items: String,
    pub(super) token: Option<String>,
}

/// How the next page is asked for.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
enum Pagination {
    Cursor { param: String, next: String },
    Page { param: String, start: Option<u64> },
}

impl Source {
    /// The rules serde cannot express: an http(s) URL, a token named in `tokens` whose
    /// `url_prefix` covers that URL, a pagination parameter.
    pub(super) fn check(&self, tokens: &BTreeMap<String, EtlToken>) -> Result<(), FieldError> {
        let s = self;
        let Some(url) = parse_url(&s.url) else {
            return Err(FieldError::new(
                "payload.source.url",
                "must be an http:// or https:// URL with a host (and no credentials)",
            ));
        };
        if let Some(name) = &s.token {
            let Some(token) = tokens.get(name) else {
                return Err(FieldError::new(
                    "payload.source.token",
                    format!("no token named {name:?} in [etl] tokens"),
                ));
            };
            if !token.covers(&url) {
                return Err(FieldError::new(
                    "payload.source.url",
                    format!(
                        "must start with {:?}, the url_prefix of token {name:?}: the token is \
                         not sent anywhere else",
                        token.prefix().unwrap_or_default()
                    ),
                ));
            }
        }
        match &s.pagination {
            Some(Pagination::Cursor { param, .. } | Pagination::Page { param, .. })
                if param.is_empty() =>
            {
                return Err(FieldError::new(
                    "payload.source.pagination.param",
                    "must not be empty",
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// The position that fetches the first page of this run: the one stored by the last, or
    /// for page numbers the `start`.
    pub(super) fn first_position(&self, stored: Option<String>) -> Option<String> {
        match &self.pagination {
            Some(Pagination::Page { start, .. }) => {
                Some(stored.unwrap_or_else(|| start.unwrap_or(1).to_string()))
            }
            _ => stored,
        }
    }

    /// The items of a response.
    pub(super) fn items<'a>(&self, body: &'a Value) -> Result<&'a Vec<Value>, JobError> {
        json_path(body, &self.items)
            .and_then(Value::as_array)
            .ok_or_else(|| {
                JobError::permanent(format!(
                    "source.items: {:?} is not an array in the response",
                    self.items
                ))
            })
    }

    /// The position that fetches the page after `body`, fetched at `position`; `None` when
    /// there is none (no pagination, or a cursor that is missing or did not move).
    pub(super) fn next_position(&self, body: &Value, position: Option<&str>) -> Option<String> {
        match self.pagination.as_ref()? {
            Pagination::Cursor { next, .. } => json_path(body, next)
                .and_then(cursor_string)
                .filter(|n| Some(n.as_str()) != position),
            Pagination::Page { .. } => {
                let current: u64 = position.and_then(|p| p.parse().ok()).unwrap_or(1);
                Some((current + 1).to_string())
            }
        }
    }
}

/// Fetches one page, retrying transient failures inside the job. A body over `max_bytes`
/// (`[files] max_download_bytes`) is refused as it streams in, permanently.
pub(super) async fn fetch(
    http: &HttpClient,
    max_bytes: u64,
    token: Option<&EtlToken>,
    cx: &JobContext,
    source: &Source,
    position: Option<&str>,
) -> Result<Value, JobError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut url = parse_url(&source.url).ok_or_else(|| {
            JobError::permanent(format!("source.url {:?} is not an http(s) URL", source.url))
        })?;
        if let (Some(p), Some(pos)) = (&source.pagination, position) {
            let param = match p {
                Pagination::Cursor { param, .. } | Pagination::Page { param, .. } => param,
            };
            url.query_pairs_mut().append_pair(param, pos);
        }
        let what = format!("GET {}", source.url);
        let outcome = match http.get(url, token).await {
            Ok(resp) if resp.status().is_success() => {
                let body = read_body(resp, &what, max_bytes).await?;
                return serde_json::from_slice(&body).map_err(|e| {
                    JobError::permanent(format!("{what}: response is not JSON: {e}"))
                });
            }
            Ok(resp) if is_retryable_status(resp.status()) => {
                let wait = retry_after(resp.headers());
                (status_error(&what, resp.status(), resp.headers()), wait)
            }
            Ok(resp) => return Err(status_error(&what, resp.status(), resp.headers())),
            Err(permanent @ JobError::Permanent { .. }) => return Err(permanent),
            Err(other) => (other, None),
        };
        let (error, asked) = outcome;
        let wait = asked.unwrap_or(BACKOFF_BASE * 2u32.pow(attempt - 1));
        if attempt >= PAGE_TRIES || wait > MAX_INLINE_WAIT {
            return Err(match (error, asked) {
                (JobError::Retryable { message, .. }, Some(after)) => {
                    JobError::retry_after(message, after)
                }
                (e, _) => e,
            });
        }
        tracing::debug!(url = %source.url, attempt, ?wait, "etl page request failed, retrying");
        tokio::select! {
            () = cx.cancelled() => return Err(JobError::retryable("cancelled while waiting to retry")),
            () = tokio::time::sleep(wait) => {}
        }
    }
}

fn cursor_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_null_cursor_ends_the_sync() {
        assert_eq!(cursor_string(&json!(null)), None);
        assert_eq!(cursor_string(&json!("")), None);
        assert_eq!(cursor_string(&json!(7)), Some("7".to_owned()));
    }
}
