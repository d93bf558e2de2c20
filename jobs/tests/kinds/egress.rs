//! Outgoing requests (`image.resize` downloads, `etl.sync` pages) against peers on loopback:
//! non-public addresses are refused unless `[http] allow_hosts` lists them, after DNS and on
//! every redirect; a named token only goes to the URLs its `url_prefix` covers; sources that
//! are not http(s) URLs or paths under the files directory are refused at enqueue.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hopper_jobs::{EtlToken, JobsConfig};
use hopper_workers::Registry;
use serde_json::{Value, json};

use crate::common::{self, bad_field, error_message, is_permanent, ok, run};

/// A tiny JPEG, enough for image.resize to succeed.
fn jpeg() -> Vec<u8> {
    let img = image::RgbImage::from_pixel(8, 6, image::Rgb([10, 200, 30]));
    let mut out = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut out),
        image::ImageFormat::Jpeg,
    )
    .expect("encode");
    out
}

fn redirect(to: String) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
}

/// A peer on `ip` counting the requests it gets, serving `/cat.jpg`.
async fn counting_peer(ip: &str) -> (String, Arc<AtomicU32>) {
    let hits = Arc::new(AtomicU32::new(0));
    let h = Arc::clone(&hits);
    let body = jpeg();
    let app = Router::new().route(
        "/cat.jpg",
        get(move || {
            h.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            async move { body }
        }),
    );
    (common::serve(ip, app).await, hits)
}

fn resize(source: &str) -> Value {
    json!({"source": source, "sizes": [{"width": 4}]})
}

fn no_allow_list(dir: &std::path::Path) -> JobsConfig {
    let mut config = common::config(dir);
    config.http.allow_hosts.clear();
    config
}

#[tokio::test]
async fn loopback_is_refused_unless_allowed() {
    let (base, hits) = counting_peer("127.0.0.1").await;
    let tmp = tempfile::tempdir().expect("tmp");
    let source = format!("{base}/cat.jpg");

    let allowed = common::registry(&common::config(tmp.path()));
    ok(run(&allowed, "image.resize", resize(&source)).await);
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    let refused = common::registry(&no_allow_list(tmp.path()));
    let ran = run(&refused, "image.resize", resize(&source)).await;
    assert!(is_permanent(&ran.result), "{:?}", ran.result);
    let message = error_message(&ran.result);
    assert!(message.contains("127.0.0.1"), "names the host: {message}");
    assert!(
        message.contains("allow_hosts"),
        "says the way out: {message}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1, "no request was sent");

    // etl.sync's pages go through the same check.
    let mut p = json!({
        "source": {"url": format!("{base}/items")},
        "target": {"database": "sqlite:etl/x.db", "table": "x", "key": "id",
                   "columns": {"id": "id"}},
    });
    let ran = run(&refused, "etl.sync", p.clone()).await;
    assert!(is_permanent(&ran.result), "{:?}", ran.result);
    assert!(error_message(&ran.result).contains("127.0.0.1"));
    // The metadata address, literally.
    p["source"]["url"] = json!("http://169.254.169.254/latest/meta-data/");
    let ran = run(&refused, "etl.sync", p).await;
    assert!(is_permanent(&ran.result), "{:?}", ran.result);
    assert!(error_message(&ran.result).contains("169.254.169.254"));
}

/// Runs `image.resize` on the picture at `url`, asserts the run failed for good, and answers
/// its error message.
async fn resize_refused(registry: &Registry, url: &str) -> String {
    let ran = run(registry, "image.resize", resize(url)).await;
    assert!(is_permanent(&ran.result), "{url}: {:?}", ran.result);
    error_message(&ran.result)
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused() {
    let (base, hits) = counting_peer("127.0.0.1").await;
    let port = base.rsplit(':').next().expect("port");
    let tmp = tempfile::tempdir().expect("tmp");
    // Allowing 127.0.0.1 allows that address whatever name leads to it; without it, the
    // name `localhost` is checked after resolution like any other.
    let registry = common::registry(&no_allow_list(tmp.path()));
    let message = resize_refused(&registry, &format!("http://localhost:{port}/cat.jpg")).await;
    assert!(message.contains("localhost"), "names the host: {message}");
    assert_eq!(hits.load(Ordering::SeqCst), 0, "no request was sent");

    // A host name in the allow-list is allowed whatever it resolves to.
    let mut config = no_allow_list(tmp.path());
    config.http.allow_hosts = vec!["localhost".to_owned()];
    let registry = common::registry(&config);
    ok(run(
        &registry,
        "image.resize",
        resize(&format!("http://localhost:{port}/cat.jpg")),
    )
    .await);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn redirects_are_checked_on_every_hop() {
    // A peer on 127.0.0.2, which the allow-list does not name: it must never be reached.
    let (other, other_hits) = counting_peer("127.0.0.2").await;
    let (base, _) = counting_peer("127.0.0.1").await;
    let to_other = format!("{other}/cat.jpg");
    let app = Router::new()
        .route(
            "/to-other",
            get(move || {
                let to = to_other.clone();
                async move { redirect(to) }
            }),
        )
        .route(
            "/to-metadata",
            get(|| async { redirect("http://169.254.169.254/latest/meta-data/".to_owned()) }),
        )
        .route(
            "/to-file",
            get(|| async { redirect("file:///etc/passwd".to_owned()) }),
        )
        .route(
            "/to-allowed",
            get(move || {
                let to = format!("{base}/cat.jpg");
                async move { redirect(to) }
            }),
        );
    let redirector = common::serve("127.0.0.1", app).await;
    let tmp = tempfile::tempdir().expect("tmp");
    let registry = common::registry(&common::config(tmp.path()));

    ok(run(
        &registry,
        "image.resize",
        resize(&format!("{redirector}/to-allowed")),
    )
    .await);
    for (path, host) in [
        ("to-other", "127.0.0.2"),
        ("to-metadata", "169.254.169.254"),
        ("to-file", "file"),
    ] {
        let message = resize_refused(&registry, &format!("{redirector}/{path}")).await;
        assert!(message.contains(host), "{path}: names {host}: {message}");
    }
    assert_eq!(other_hits.load(Ordering::SeqCst), 0, "127.0.0.2 reached");
}

fn token(secret: &str, url_prefix: &str) -> EtlToken {
    EtlToken {
        token: secret.to_owned(),
        url_prefix: url_prefix.to_owned(),
    }
}

fn sync(url: &str) -> Value {
    json!({
        "source": {"url": url, "items": "items", "token": "crm"},
        "target": {"database": "sqlite:etl/crm.db", "table": "crm", "key": "id",
                   "columns": {"id": "id"}},
    })
}

#[tokio::test]
async fn a_token_only_goes_where_its_prefix_says() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut config = common::config(tmp.path());
    config
        .etl
        .tokens
        .insert("crm".into(), token("s3cret", "https://api.crm.example/v1/"));
    let registry = common::registry(&config);
    let k = "etl.sync";
    assert!(common::validate(&registry, k, &sync("https://api.crm.example/v1/contacts")).is_ok());
    for url in [
        "https://evil.example/v1/contacts",
        "https://api.crm.example.evil.example/v1/",
        "https://api.crm.example/v2/contacts",
        "https://api.crm.example/v1/../admin",
        "http://api.crm.example/v1/contacts",
        "https://user@api.crm.example/v1/contacts",
    ] {
        assert_eq!(
            bad_field(&registry, k, sync(url)),
            "payload.source.url",
            "{url}"
        );
    }
}

#[tokio::test]
async fn a_token_is_not_sent_past_its_prefix_on_a_redirect() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::<Option<String>>::new()));
    let s = Arc::clone(&seen);
    let app = Router::new()
        .route(
            "/api/items",
            get(|| async { redirect("/public/items".to_owned()) }),
        )
        .route(
            "/public/items",
            get(move |headers: HeaderMap| {
                let auth = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                s.lock().expect("lock").push(auth);
                async { axum::Json(json!({"items": [{"id": 1}]})) }
            }),
        );
    let base = common::serve("127.0.0.1", app).await;
    let tmp = tempfile::tempdir().expect("tmp");
    let mut config = common::config(tmp.path());
    config
        .etl
        .tokens
        .insert("crm".into(), token("s3cret", &format!("{base}/api/")));
    let registry = common::registry(&config);
    ok(run(&registry, "etl.sync", sync(&format!("{base}/api/items"))).await);
    assert_eq!(*seen.lock().expect("lock"), vec![None], "the token leaked");
}

#[tokio::test]
async fn sources_are_http_urls_or_paths_under_the_files_dir() {
    let tmp = tempfile::tempdir().expect("tmp");
    let registry = common::registry(&common::config(tmp.path()));
    for source in [
        "file:///etc/passwd",
        "file:etc/passwd",
        "gopher://127.0.0.1:6379/_FLUSHALL",
        "ftp://example.com/cat.jpg",
        "https://",
        "https://user:pw@/x.jpg",
    ] {
        assert_eq!(
            bad_field(&registry, "image.resize", resize(source)),
            "payload.source",
            "{source}"
        );
    }
    for source in [
        "uploads/cat.jpg",
        "https://example.com/cat.jpg",
        "HTTPS://example.com/a.png",
    ] {
        assert!(
            common::validate(&registry, "image.resize", &resize(source)).is_ok(),
            "{source}"
        );
    }
}

#[test]
fn the_config_is_checked() {
    let mut config = JobsConfig::default();
    config.http.allow_hosts = vec![
        "127.0.0.1".into(),
        "10.0.0.0/8".into(),
        "fd00::/8".into(),
        "::1".into(),
        "internal.example".into(),
    ];
    config
        .etl
        .tokens
        .insert("crm".into(), token("t", "https://api.crm.example/"));
    assert_eq!(config.problems(), Vec::<String>::new());

    config.http.allow_hosts = vec!["10.0.0.0/33".into(), "http://x".into(), "".into()];
    config
        .etl
        .tokens
        .insert("bad".into(), token("t", "ftp://x.example/"));
    let problems = config.problems();
    assert_eq!(problems.len(), 4, "{problems:?}");
    assert!(
        problems[..3]
            .iter()
            .all(|p| p.starts_with("http.allow_hosts"))
    );
    assert!(
        problems[3].starts_with("etl.tokens.bad.url_prefix"),
        "{problems:?}"
    );

    // A bare token (the old form) is refused with a way forward, never echoing the secret.
    let err = serde_json::from_value::<JobsConfig>(json!({"etl": {"tokens": {"crm": "s3cr3t"}}}))
        .expect_err("a bare token");
    let err = err.to_string();
    assert!(err.contains("url_prefix"), "{err}");
    assert!(!err.contains("s3cr3t"), "{err}");
}
