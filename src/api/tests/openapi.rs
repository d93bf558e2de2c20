//! The OpenAPI document against the router it describes and the types it mirrors.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use hopper_workers::broker::{QueueStats, StateCounts};
use hopper_workers::event::{Event, EventType};
use hopper_workers::job::{ChainLink, Job, JobId, JobState};
use hopper_workers::nodes::{QueueLoad, WorkerNode};
use hopper_workers::time::Timestamp;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::super::openapi::properties;
use super::super::{document, router};
use super::{Unreachable, call, sqlite, state_with};
use crate::config::Config;

fn doc() -> Value {
    serde_json::to_value(document()).unwrap()
}

/// Every (method, path) the document lists.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            ops.push((method.clone(), path.clone(), op.clone()));
        }
    }
    ops
}

#[tokio::test]
async fn the_served_document_is_openapi_3_1_and_is_the_routers() {
    let mut config = Config::default();
    config.auth.tokens = vec!["s3cret".into()];
    let st = state_with(Arc::new(Unreachable::default()), config);
    // No token needed, like /healthz and the dashboard.
    let (status, served) = call(&st, Method::GET, "/openapi.json", &[], None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        served["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        served["openapi"]
    );
    assert_eq!(served, doc());
    // Every path of the API is there (a route added outside `api::routes` would be missing).
    let paths: BTreeSet<&str> = served["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for p in [
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/events",
        "/v1/queues",
        "/v1/circuits",
        "/healthz",
        "/readyz",
    ] {
        assert!(paths.contains(p), "{p} missing from {paths:?}");
    }
    assert!(
        paths
            .iter()
            .all(|p| p.starts_with("/v1/") || ["/healthz", "/readyz"].contains(p))
    );

    let res = router(st)
        .oneshot(Request::get("/docs/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let ct = res
        .headers()
        .get(header::CONTENT_TYPE)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(ct.starts_with("text/html"), "{ct}");
    let page = res.into_body().collect().await.unwrap().to_bytes();
    assert!(
        !String::from_utf8_lossy(&page).contains("https://"),
        "/docs loads nothing remote"
    );
}

/// OpenAPI requires each `operationId` once: code generators name a client's methods by them,
/// and validators refuse a document that repeats one.
#[test]
fn every_operation_id_is_unique() {
    let doc = doc();
    let mut seen = BTreeSet::new();
    for (method, path, op) in operations(&doc) {
        let id = op["operationId"].as_str().unwrap_or_default().to_owned();
        assert!(!id.is_empty(), "{method} {path} has no operationId");
        assert!(
            seen.insert(id.clone()),
            "{method} {path}: operationId {id:?} repeats"
        );
    }
}

/// Each documented operation reaches a handler: not the router's 404 or 405.
#[tokio::test]
async fn every_documented_operation_is_routed() {
    let (st, _dir) = sqlite().await;
    let ops = operations(&doc());
    assert!(ops.len() >= 11, "{ops:?}");
    for (method, path, _) in ops {
        let uri = path.replace("{id}", "nope").replace("{name}", "q1");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let body = (method == Method::POST).then(|| "{}".to_owned());
        let (status, body) = call(&st, method.clone(), &uri, &[], body).await;
        assert_ne!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri}: {body}"
        );
        assert_ne!(
            body["error"]["message"], "no such route",
            "{method} {uri}: {body}"
        );
    }
}

#[test]
fn every_operation_documents_its_error_responses() {
    let doc = doc();
    let schemas = &doc["components"]["schemas"];
    assert!(
        schemas["ErrorBody"]["properties"]["error"].is_object(),
        "{schemas}"
    );
    for (method, path, op) in operations(&doc) {
        let statuses: BTreeSet<&str> = op["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let at = format!("{method} {path}: {statuses:?}");
        // A WebSocket-only route succeeds with 101 Switching Protocols.
        assert!(
            statuses.iter().any(|s| s.starts_with('2') || *s == "101"),
            "{at}"
        );
        for s in ["500", "503"] {
            assert!(statuses.contains(s), "{at} lacks {s}");
        }
        if path.starts_with("/v1/") {
            assert!(statuses.contains("401"), "{at} lacks 401");
            assert!(op["security"].is_array(), "{at} has no security");
        }
        if op.get("requestBody").is_some() {
            assert!(statuses.contains("400") && statuses.contains("413"), "{at}");
        }
        if path.contains("{id}") {
            assert!(statuses.contains("404"), "{at}");
        }
        // A path parameter axum cannot decode (`%FF`) is a 400 before any handler runs.
        if path.contains('{')
            || op
                .get("parameters")
                .is_some_and(|p| p.as_array().unwrap().iter().any(|p| p["in"] == "query"))
        {
            assert!(statuses.contains("400"), "{at}");
        }
        // Every error response is the error shape.
        for (status, response) in op["responses"].as_object().unwrap() {
            if status.starts_with('2') || status == "101" {
                continue;
            }
            let response = match response.get("$ref").and_then(Value::as_str) {
                Some(r) => &doc["components"]["responses"][r.rsplit('/').next().unwrap()],
                None => response,
            };
            assert_eq!(
                response["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody",
                "{at}: {status}"
            );
        }
    }
}

fn keys(v: Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

/// The mirrored schemas name exactly the fields the real types serialize.
#[test]
fn schema_mirrors_match_the_wire_types() {
    let doc = doc();
    let mut job: Job = serde_json::from_value(json!({
        "id": "j", "queue": "q", "kind": "k", "payload": {}, "priority": 5, "state": "queued",
        "run_at": 0, "attempt": 0, "max_retries": 3, "timeout_ms": null, "interruptions": 0,
        "progress": 0, "progress_message": null, "result": null, "last_error": null,
        "unique_key": null, "lease_until": null, "created_at": 0, "started_at": null,
        "finished_at": null,
    }))
    .unwrap();
    job.chain = Some(ChainLink {
        id: JobId::from("j"),
        index: 0,
        next: Some(JobId::from("k")),
    });
    job.checkpoint = Some(json!({"email": "delivered"}));
    let chain = serde_json::to_value(&job.chain).unwrap();
    assert_eq!(
        properties(&doc, "Job"),
        keys(serde_json::to_value(&job).unwrap())
    );
    assert_eq!(properties(&doc, "ChainLink"), keys(chain));
    let event = Event {
        id: "e".into(),
        kind_of_event: EventType::Progress,
        job_id: JobId::from("j"),
        queue: "q".into(),
        kind: "k".into(),
        at: job.run_at,
        attempt: 1,
        progress: Some(1),
        message: Some("m".into()),
        result: Some(json!(1)),
        error: Some("e".into()),
    };
    assert_eq!(
        properties(&doc, "Event"),
        keys(serde_json::to_value(&event).unwrap())
    );
    let stats = QueueStats {
        queue: "q".into(),
        ..QueueStats::default()
    };
    assert_eq!(
        properties(&doc, "QueueStats"),
        keys(serde_json::to_value(&stats).unwrap())
    );
    assert_eq!(
        properties(&doc, "StateCounts"),
        keys(serde_json::to_value(StateCounts::default()).unwrap())
    );
    let circuit = crate::notify::circuits::CircuitView {
        endpoint: "https://hooks.example/in".into(),
        state: "open",
        failures: 5,
        probe_in_ms: 1,
        cooldown_ms: 2,
        probing: false,
    };
    assert_eq!(
        properties(&doc, "Circuit"),
        keys(serde_json::to_value(&circuit).unwrap())
    );
    let load = QueueLoad {
        queue: "q".into(),
        busy: 1,
        limit: Some(2),
        paused: false,
    };
    let node = WorkerNode {
        id: "h:1:x".into(),
        host: "h".into(),
        pid: 1,
        started_at: Timestamp::EPOCH,
        last_seen: Timestamp::EPOCH,
        queues: vec![load.clone()],
        kinds: vec!["k".into()],
        slots_total: 2,
        slots_busy: 1,
    };
    assert_eq!(
        properties(&doc, "WorkerNode"),
        keys(serde_json::to_value(&node).unwrap())
    );
    assert_eq!(
        properties(&doc, "QueueLoad"),
        keys(serde_json::to_value(&load).unwrap())
    );
    let waiting = crate::service::waiting::Waiting {
        reason: "behind",
        message: "m".into(),
        until: Some(Timestamp::EPOCH),
        predecessor: Some(JobId::from("p")),
        ahead: Some(1),
    };
    assert_eq!(
        properties(&doc, "Waiting"),
        keys(serde_json::to_value(&waiting).unwrap())
    );
    let names = |schema: &str| -> BTreeSet<String> {
        doc["components"]["schemas"][schema]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    let states: BTreeSet<String> = JobState::ALL
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect();
    assert_eq!(names("JobState"), states);
    let types: BTreeSet<String> = EventType::ALL
        .iter()
        .map(|t| t.as_str().to_owned())
        .collect();
    assert_eq!(names("EventType"), types);
}

/// `POST /v1/publish`'s answer schema names exactly the fields `Published` serializes.
#[test]
fn the_publish_answer_mirror_matches_its_wire_type() {
    use crate::bus::{Published, PublishedJob};
    let doc = doc();
    let job = PublishedJob {
        subscription: 0,
        id: JobId::from("j"),
        kind: "k".into(),
        queue: "q".into(),
        created: true,
    };
    let answer = Published {
        topic: "t".into(),
        matched: 1,
        duplicate: false,
        jobs: vec![job.clone()],
    };
    assert_eq!(
        properties(&doc, "Published"),
        keys(serde_json::to_value(&answer).unwrap())
    );
    assert_eq!(
        properties(&doc, "PublishedJob"),
        keys(serde_json::to_value(&job).unwrap())
    );
    assert!(doc["paths"]["/v1/publish"]["post"].is_object());
}
