//! `hopper tail --server URL`: follows a node's `GET /v1/events` WebSocket. Frames are JSON
//! events (their `id` a cursor), plus `{"type":"gap"}` (the log no longer holds the cursor:
//! retention trimmed it, or the broker's data was replaced) and
//! `{"type":"lagged","resume":CURSOR}` (this client fell behind and is dropped: reconnect from
//! CURSOR). A close with code 4001 is a refused token (exit 2).
//!
//! With `--job` it first asks `GET /v1/jobs/{id}`: a job already final (or whose history
//! already ends it) shows its history and ends at once with its exit code (a missing one
//! exits 3, a refused token 2, a 404 that is not a Hopper API's answer 2); otherwise the
//! stream starts right after the last event of that history, so nothing is missed between the
//! two requests, and after a `gap` (the job's end may have been trimmed) it asks again. A 429
//! (`[server] rate_limit`) is waited out, for its `Retry-After`. `https://` servers are
//! reached over TLS (rustls), the stream as `wss://`.
//!
//! When the server goes away, it reconnects with the last cursor it showed, so the stream
//! resumes with nothing skipped or repeated, and says so on stderr. It does not show events
//! (`super`) nor serve them (`crate::api`).

use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use hopper_workers::event::Event;
use hopper_workers::job::JobState;
use serde::Deserialize;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::{CliError, Printer, TailArgs, ended, ending};

/// The close code of a refused token (the stream's contract).
const BAD_TOKEN: u16 = 4001;
/// First and longest pause between two connection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Why a connection ended.
enum Ended {
    /// Gone (closed, reset, refused): try again from the cursor.
    Lost(String),
    /// The server told us to resume from this cursor.
    Lagged(String),
}

pub(super) async fn run(printer: Printer, args: &TailArgs) -> Result<()> {
    let server = args.server.as_deref().unwrap_or_default();
    // What messages name: the address without its credentials, if it has any.
    let shown = hopper_workers::broker::shown_url(server);
    let base = shown.as_str();
    check_server(server, base)?;
    let authorization = bearer(args.token.as_deref())?;
    let endpoint = ws_base(server)?;
    let mut cursor = args.since.clone();
    if let Some(job) = &args.job {
        let found = lookup(&printer, server, base, job, args.token.as_deref()).await?;
        let final_now = final_code(&found.state).is_some();
        if args.since.is_none() || final_now {
            for e in &found.history {
                printer.show(e)?;
            }
            if let Some(last) = found.history.last() {
                // Ended between the API's read of the job and its read of the history: no
                // later event of the job would come.
                if let Some((code, state)) = ending(last.kind_of_event) {
                    return ended(&printer, job, code, state, last.error.as_deref());
                }
                cursor = Some(last.id.clone());
            }
        }
        if let Some((code, state)) = final_code(&found.state) {
            return ended(&printer, job, code, state, found.last_error.as_deref());
        }
    }
    let mut lost: Option<String> = None;
    let mut backoff = BACKOFF_MIN;
    loop {
        let url = events_url(&endpoint, args, cursor.as_deref());
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| CliError::Usage(format!("--server {base}: {e}")))?;
        if let Some(value) = &authorization {
            request.headers_mut().insert("authorization", value.clone());
        }
        let ws = match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => ws,
            Err(WsError::Http(resp)) if resp.status().as_u16() == TOO_MANY_REQUESTS => {
                wait_out(&printer, base, resp.headers().get("retry-after"), backoff).await;
                continue;
            }
            Err(WsError::Http(resp)) if resp.status().is_client_error() => {
                let body = resp
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default()
                    .into_owned();
                return Err(CliError::Usage(format!(
                    "{base} refused the stream ({}): {}",
                    resp.status(),
                    crate::out::shown(&body)
                ))
                .into());
            }
            // The address or a header cannot make a request: no retry can fix that.
            Err(e @ (WsError::Url(_) | WsError::HttpFormat(_))) => {
                return Err(CliError::Usage(format!("--server {base}: {e}")).into());
            }
            Err(e) => {
                if lost.is_none() {
                    printer.note(&format!("cannot reach {base} ({e}); reconnecting…"));
                    lost = Some(e.to_string());
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        match (&lost, &cursor) {
            (Some(_), Some(c)) => printer.note(&format!("resumed after {c}")),
            // Nothing shown yet, so no cursor: what happened while disconnected is not
            // replayed (a stream gives no position before its first event), and it says so.
            (Some(_), None) => printer.note(
                "reconnected; no event was shown before, so events while disconnected are not \
                 replayed (give --since to resume from a cursor)",
            ),
            (None, _) => printer.note(&format!("following {base}")),
        }
        let (_, mut frames) = ws.split();
        let why = loop {
            let Some(frame) = frames.next().await else {
                break Ended::Lost("the connection closed".into());
            };
            let text = match frame {
                Ok(Message::Text(t)) => t,
                Ok(Message::Close(close)) => {
                    if let Some(c) = &close
                        && c.code == CloseCode::from(BAD_TOKEN)
                    {
                        return Err(CliError::Usage(format!(
                            "{base} refused the token: {}",
                            crate::out::shown(&c.reason)
                        ))
                        .into());
                    }
                    break Ended::Lost(match close {
                        Some(c) => {
                            format!("closed ({}): {}", c.code, crate::out::shown(&c.reason))
                        }
                        None => "closed".into(),
                    });
                }
                // Pings are answered by the library; nothing else is part of the contract.
                Ok(_) => continue,
                Err(e) => break Ended::Lost(e.to_string()),
            };
            let value: Value = serde_json::from_str(&text)
                .with_context(|| format!("{base} sent a frame that is not JSON"))?;
            match value.get("type").and_then(Value::as_str) {
                Some("gap") => {
                    printer.note(
                        "gap: the log no longer holds the cursor (trimmed by retention, or the \
                         broker's data was replaced); continuing from the oldest event kept",
                    );
                    // The job's end may be among what was trimmed: the job itself says.
                    if let Some(job) = &args.job {
                        let found =
                            lookup(&printer, server, base, job, args.token.as_deref()).await?;
                        if let Some((code, state)) = final_code(&found.state) {
                            return ended(&printer, job, code, state, found.last_error.as_deref());
                        }
                    }
                }
                Some("lagged") => {
                    let resume = value.get("resume").and_then(Value::as_str);
                    break Ended::Lagged(resume.unwrap_or_default().to_owned());
                }
                _ => {
                    let e: Event = serde_json::from_value(value)
                        .with_context(|| format!("{base} sent a frame that is not an event"))?;
                    cursor = Some(e.id.clone());
                    printer.show(&e)?;
                    if let (Some(job), Some((code, state))) = (&args.job, ending(e.kind_of_event))
                        && e.job_id.0 == *job
                    {
                        return ended(&printer, job, code, state, e.error.as_deref());
                    }
                }
            }
        };
        match why {
            Ended::Lagged(resume) => {
                printer.note(&format!(
                    "fell behind the server; reconnecting from {resume}…"
                ));
                if !resume.is_empty() {
                    cursor = Some(resume);
                }
                lost = Some("lagged".into());
            }
            Ended::Lost(why) => {
                printer.note(&format!("{why}; reconnecting…"));
                lost = Some(why);
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

/// The exit code and name of a final state as the API spells it; `None` while the job can
/// still move.
fn final_code(state: &str) -> Option<(u8, &'static str)> {
    match JobState::parse(state)? {
        JobState::Succeeded => Some((0, "succeeded")),
        JobState::Dead => Some((1, "dead")),
        s if s.is_final() => Some((4, "cancelled")),
        _ => None,
    }
}

/// What `GET /v1/jobs/{id}` says of the followed job (the fields `tail` needs).
#[derive(Deserialize)]
struct Found {
    state: String,
    #[serde(default)]
    last_error: Option<String>,
    #[serde(default)]
    history: Vec<Event>,
}

/// Refuses, naming the flag, a `--server` that is not a URL (a space in the host, a port past
/// 65535, an unclosed `[`): it would fail every attempt, and the retries for a server that is
/// down would have gone on forever. `shown` is the address as messages name it.
fn check_server(server: &str, shown: &str) -> Result<(), CliError> {
    let http = http_base(server).map_err(|e| CliError::Usage(format!("{e:#}")))?;
    reqwest::Url::parse(&http).map_err(|e| CliError::Usage(format!("--server {shown}: {e}")))?;
    Ok(())
}

/// The `Authorization` header of `--token`, refused (naming the flag) when no header can carry
/// it (a CR read from a file with CRLF endings), for the same reason as [`check_server`].
fn bearer(token: Option<&str>) -> Result<Option<HeaderValue>, CliError> {
    token
        .map(|t| {
            HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                CliError::Usage(
                    "--token: not a valid header value (a stray CR or newline from a file?)".into(),
                )
            })
        })
        .transpose()
}

/// Asks `server` (named `base` in messages) for `job`, waiting for a server that cannot be
/// reached (or answers 5xx) as the stream does; a 404 is exit 3, any other refusal (401: the
/// token) exit 2.
async fn lookup(
    printer: &Printer,
    server: &str,
    base: &str,
    job: &str,
    token: Option<&str>,
) -> Result<Found> {
    let url = format!("{}/v1/jobs/{}", http_base(server)?, encode(job));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    let mut backoff = BACKOFF_MIN;
    let mut said = false;
    loop {
        let mut request = http.get(&url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let failed = match request.send().await {
            Ok(resp) if resp.status().is_success() => {
                return resp
                    .json::<Found>()
                    .await
                    .with_context(|| format!("{base} answered GET /v1/jobs/{job} with no job"));
            }
            Ok(resp) if resp.status().as_u16() == TOO_MANY_REQUESTS => {
                wait_out(printer, base, resp.headers().get("retry-after"), backoff).await;
                continue;
            }
            Ok(resp) if resp.status() == reqwest::StatusCode::NOT_FOUND => {
                let body = error_body(resp).await;
                return Err(not_found(base, job, &body));
            }
            Ok(resp) if resp.status().is_client_error() => {
                let status = resp.status();
                let body = error_body(resp).await;
                return Err(CliError::Usage(format!(
                    "{base} refused GET /v1/jobs/{job} ({status}): {}",
                    crate::out::shown(body.trim())
                ))
                .into());
            }
            Ok(resp) => format!("it answered {}", resp.status()),
            // A request that cannot be made is not a server that is down.
            Err(e) if e.is_builder() => {
                return Err(CliError::Usage(format!("--server {base}: {e}")).into());
            }
            Err(e) => e.without_url().to_string(),
        };
        if !said {
            printer.note(&format!("cannot reach {base} ({failed}); retrying…"));
            said = true;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// A rate limiter's refusal (`[server] rate_limit`): waited out, not a mistake in the
/// command.
const TOO_MANY_REQUESTS: u16 = 429;
/// The longest `Retry-After` obeyed as given; a longer one is cut to this and asked again.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(60);

/// Waits out a 429 from `base`, saying so: its `Retry-After` in seconds (at most
/// [`RETRY_AFTER_MAX`]), or `backoff` when it gives none that can be read.
async fn wait_out<V: AsRef<[u8]>>(
    printer: &Printer,
    base: &str,
    retry_after: Option<&V>,
    backoff: Duration,
) {
    let wait = retry_after
        .and_then(|v| std::str::from_utf8(v.as_ref()).ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(backoff, |secs| {
            Duration::from_secs(secs.max(1)).min(RETRY_AFTER_MAX)
        });
    printer.note(&format!(
        "rate limited by {base}; retrying in {}s…",
        wait.as_secs_f64().ceil()
    ));
    tokio::time::sleep(wait).await;
}

/// The most of an error answer's body read: the API's error bodies are far smaller, and the
/// address may be another server's, whose body could be anything.
const ERROR_BODY_LIMIT: usize = 16 * 1024;

/// The start of an error answer's body (up to [`ERROR_BODY_LIMIT`] bytes, as text); what
/// cannot be read is left out.
async fn error_body(mut resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_LIMIT {
        match resp.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(ERROR_BODY_LIMIT);
    String::from_utf8_lossy(&body).into_owned()
}

/// The message of a Hopper API's 404 for a path it does not route (`crate::api::error`).
const NO_SUCH_ROUTE: &str = "no such route";

/// A 404 to `GET /v1/jobs/{job}`. In the API's error shape (code `not_found`) there is no such
/// job (exit 3), unless the API says it has no such route (`--server` with a path such as
/// `/v1`, exit 2); any other 404, say an empty one, comes from something that is not a Hopper
/// API (another server at that address), which is a mistake in `--server` (exit 2), not a
/// missing job.
fn not_found(base: &str, job: &str, body: &str) -> anyhow::Error {
    let error = serde_json::from_str::<Value>(body).map(|v| v["error"].clone());
    if let Ok(error) = &error
        && error["code"].as_str() == Some("not_found")
    {
        if error["message"].as_str() == Some(NO_SUCH_ROUTE) {
            return CliError::Usage(format!(
                "{base} has no route /v1/jobs/{{id}}: give --server as the API's address \
                 alone (http://HOST:PORT), without /v1"
            ))
            .into();
        }
        return CliError::NotFound(format!("job {job} not found")).into();
    }
    let body: String = body.trim().chars().take(200).collect();
    let body = if body.is_empty() {
        "(no body)".to_owned()
    } else {
        crate::out::shown(&body).into_owned()
    };
    CliError::Usage(format!(
        "{base} answered GET /v1/jobs/{job} with 404 Not Found, not in a Hopper API's error \
         shape: is --server the address of a Hopper API? {body}"
    ))
    .into()
}

/// The WebSocket base of `--server`: `http` becomes `ws`, `https` `wss`; a trailing `/` goes.
fn ws_base(server: &str) -> Result<String> {
    rebase(server, &[("http://", "ws://"), ("https://", "wss://")])
}

/// The HTTP base of `--server` (for the job lookup): `ws` becomes `http`, `wss` `https`.
fn http_base(server: &str) -> Result<String> {
    rebase(server, &[("ws://", "http://"), ("wss://", "https://")])
}

/// `server` without its trailing `/`, its scheme changed by `map` (other known schemes kept).
fn rebase(server: &str, map: &[(&str, &str)]) -> Result<String> {
    let server = server.trim_end_matches('/');
    let known = ["http://", "https://", "ws://", "wss://"];
    if !known.iter().any(|k| server.starts_with(k)) {
        return Err(CliError::Usage(format!(
            "--server {}: expected http://HOST:PORT or https://HOST",
            hopper_workers::broker::shown_url(server)
        ))
        .into());
    }
    // The routes are appended to it: a query or fragment would end up inside their paths
    // (`?token=t/v1/jobs/ID`), and a token belongs in --token anyway. Not echoed: it may be
    // one.
    if server.contains(['?', '#']) {
        return Err(CliError::Usage(
            "--server: expected http://HOST:PORT or https://HOST without a query or fragment \
             (give a token with --token or HOPPER_TOKEN)"
                .to_owned(),
        )
        .into());
    }
    Ok(map
        .iter()
        .find_map(|(from, to)| server.strip_prefix(from).map(|r| format!("{to}{r}")))
        .unwrap_or_else(|| server.to_owned()))
}

/// `BASE/v1/events?…` with the filters and the cursor.
fn events_url(base: &str, args: &TailArgs, since: Option<&str>) -> String {
    let params = [
        ("job", args.job.as_deref()),
        ("queue", args.queue.as_deref()),
        ("kind", args.kind.as_deref()),
        ("since", since),
    ];
    let query: Vec<String> = params
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", encode(v))))
        .collect();
    format!("{base}/v1/events?{}", query.join("&"))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn urls_carry_filters_and_the_cursor_encoded() {
        assert_eq!(ws_base("http://h:8080/").unwrap(), "ws://h:8080");
        assert!(ws_base("h:8080").is_err());
        assert_eq!(encode("17-3@mail q"), "17-3%40mail%20q");
    }

    /// What no retry can fix is a usage error at once, naming the flag, with no password in
    /// it: before, these retried forever ("cannot reach … (builder error)").
    #[test]
    fn unusable_servers_and_tokens_are_refused_at_once() {
        for server in [
            "http://bad host:8080",
            "http://[::1",
            "http://127.0.0.1:99999",
            "http://u:pw-SECRET@127.0.0.1:99999",
            "h:8080",
        ] {
            let shown = hopper_workers::broker::shown_url(server);
            let err = check_server(server, &shown).expect_err(server).to_string();
            assert!(err.contains("--server"), "{server}: {err}");
            assert!(!err.contains("SECRET"), "{server}: {err}");
        }
        let err = bearer(Some("tok\r"))
            .expect_err("a CR in the token")
            .to_string();
        assert!(err.contains("--token"), "{err}");
        assert!(check_server("https://h.example/hopper", "https://h.example/hopper").is_ok());
        assert!(bearer(Some("t")).is_ok());
    }

    /// A Hopper API's 404 for a route it lacks (`--server …/v1`) is a mistake in `--server`,
    /// not a missing job; its 404 for a job is.
    #[test]
    fn a_route_404_is_not_a_missing_job() {
        let route = r#"{"error":{"code":"not_found","message":"no such route"}}"#;
        let err = not_found("http://h:1/v1", "j1", route);
        assert!(
            matches!(err.downcast_ref::<CliError>(), Some(CliError::Usage(_))),
            "{err}"
        );
        let job = r#"{"error":{"code":"not_found","message":"no job j1"}}"#;
        let err = not_found("http://h:1", "j1", job);
        assert!(
            matches!(err.downcast_ref::<CliError>(), Some(CliError::NotFound(_))),
            "{err}"
        );
    }

    #[test]
    fn https_servers_are_followed_over_wss_and_looked_up_over_https() {
        assert_eq!(ws_base("https://h.example/").unwrap(), "wss://h.example");
        assert_eq!(ws_base("wss://h.example").unwrap(), "wss://h.example");
        assert_eq!(
            http_base("https://h.example/").unwrap(),
            "https://h.example"
        );
        assert_eq!(http_base("wss://h.example").unwrap(), "https://h.example");
        assert_eq!(http_base("ws://h:1").unwrap(), "http://h:1");
        assert!(http_base("ftp://h").is_err());
        for bad in ["http://h:1?token=t1", "http://h:1/#x"] {
            let e = http_base(bad).unwrap_err().to_string();
            assert!(e.contains("without a query"), "{bad}: {e}");
            assert!(!e.contains("t1"), "{e}");
        }
        assert_eq!(encode("17-3@mail q"), "17-3%40mail%20q");
    }
}
