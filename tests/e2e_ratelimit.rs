//! `[server] rate_limit`: a real `hopper serve` on a temp SQLite file, over real HTTP.
//!
//! Each test uses 5 requests a second with a burst of 5, so a quick burst of 20 always
//! overflows it, and one Retry-After (1 s) is the longest wait.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::Value;

use crate::util::Scratch;

const LIMITED: &str = "rate_limit = \"5/s\"\nrate_limit_burst = 5\n";

/// One answer of a burst: status, `Retry-After`, JSON body.
struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    body: Value,
}

async fn get(http: &reqwest::Client, url: &str, token: Option<&str>) -> Answer {
    let mut req = http.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = r.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        retry_after,
        body,
    }
}

/// `n` requests of `GET url` at once.
async fn burst(http: &reqwest::Client, url: &str, token: Option<&str>, n: usize) -> Vec<Answer> {
    join_all((0..n).map(|_| get(http, url, token))).await
}

/// Checks every 429 of `answers` is the documented one and returns how many there were.
fn limited(answers: &[Answer]) -> usize {
    let mut n = 0;
    for a in answers {
        if a.status == StatusCode::OK {
            continue;
        }
        assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.body);
        assert_eq!(a.body["error"]["code"], "rate_limited", "{}", a.body);
        assert!(a.body["error"]["message"].is_string(), "{}", a.body);
        let secs: u64 = a
            .retry_after
            .as_deref()
            .expect("a 429 carries Retry-After")
            .parse()
            .expect("Retry-After is whole seconds");
        assert!(secs >= 1, "Retry-After {secs}");
        n += 1;
    }
    n
}

/// A burst past the limit gets 429s with `Retry-After` and the JSON error; after waiting that
/// long the next request passes. Health, readiness and the dashboard are never limited; the
/// events route is.
#[tokio::test]
async fn a_burst_past_the_limit_is_told_when_to_come_back() {
    let s = Scratch::new();
    s.write_config_with_server(LIMITED, "");
    let (_d, api) = s.serve(&[]);
    let jobs = format!("{}/v1/jobs?queue=default", api.base);

    let answers = burst(&api.http, &jobs, None, 20).await;
    let n = limited(&answers);
    assert!(n > 0, "20 requests at 5/s with a burst of 5: none limited");
    assert!(n < 20, "no request of the burst passed");

    for path in ["/healthz", "/readyz", "/"] {
        let answers = burst(&api.http, &format!("{}{path}", api.base), None, 10).await;
        assert!(
            answers.iter().all(|a| a.status == StatusCode::OK),
            "{path} was limited"
        );
    }
    // A burst of its own, not one request: the allowance gains one every 200 ms, and the
    // requests above may well have taken that long on a loaded machine.
    let events = burst(&api.http, &format!("{}/v1/events", api.base), None, 20).await;
    assert!(
        limited(&events) > 0,
        "20 requests to the events route: none limited"
    );

    let wait: u64 = events
        .iter()
        .find_map(|a| a.retry_after.as_deref())
        .unwrap()
        .parse()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let after = get(&api.http, &jobs, None).await;
    assert_eq!(after.status, StatusCode::OK, "{}", after.body);
}

/// With auth on, each token has its own allowance: one client's flood leaves the other's
/// requests alone.
#[tokio::test]
async fn one_tokens_flood_does_not_limit_another() {
    let s = Scratch::new();
    s.write_config_with_server(
        LIMITED,
        "[auth]\ntokens = [\"alpha-token\", \"beta-token\"]\n",
    );
    let (d, api) = s.serve(&[]);
    let jobs = format!("{}/v1/jobs?queue=default", api.base);

    let flood = burst(&api.http, &jobs, Some("alpha-token"), 20).await;
    assert!(limited(&flood) > 0, "alpha's flood was not limited");

    for _ in 0..5 {
        let a = get(&api.http, &jobs, Some("beta-token")).await;
        assert_eq!(a.status, StatusCode::OK, "beta was limited: {}", a.body);
    }
    // A wrong token is still answered 401 (limited by address, not by a token).
    let wrong = get(&api.http, &jobs, Some("nope")).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{}", wrong.body);
    // The token is a secret: it never reaches the log.
    let log = d.log_text();
    assert!(!log.contains("alpha-token"), "{log}");
}

/// With auth off, requests are limited per client address (one address here: it limits).
#[tokio::test]
async fn without_auth_the_address_is_limited() {
    let s = Scratch::new();
    s.write_config_with_server(LIMITED, "");
    let (_d, api) = s.serve(&[]);
    let answers = burst(&api.http, &format!("{}/v1/queues", api.base), None, 20).await;
    assert!(limited(&answers) > 0, "20 requests at 5/s: none limited");
}

/// A rate that is not one is refused at startup, naming the key.
#[test]
fn a_bad_rate_is_refused_naming_the_key() {
    for bad in ["fast", "0/s", "10/fortnight"] {
        let s = Scratch::new();
        s.write_config_with_server(&format!("rate_limit = \"{bad}\"\n"), "");
        let out = s.cli(&["check-config"]);
        assert_ne!(out.status.code(), Some(0), "{bad}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("rate_limit"), "{bad}: {err}");
        assert!(err.contains(bad), "{bad}: {err}");
    }
    let s = Scratch::new();
    s.write_config_with_server("rate_limit = \"5/s\"\nrate_limit_burst = 0\n", "");
    let out = s.cli(&["check-config"]);
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.rate_limit_burst"));
}

/// A burst without a rate limits nothing: refused, naming both keys, rather than taken quietly
/// by someone who believes the API is limited.
#[test]
fn a_burst_without_a_rate_is_refused() {
    for rate in ["", "rate_limit = \"off\"\n"] {
        let s = Scratch::new();
        s.write_config_with_server(&format!("{rate}rate_limit_burst = 50\n"), "");
        let out = s.cli(&["check-config"]);
        assert_eq!(out.status.code(), Some(2), "{rate}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("server.rate_limit_burst") && err.contains("server.rate_limit"),
            "{rate}: {err}"
        );
    }
}
